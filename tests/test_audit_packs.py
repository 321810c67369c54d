"""``chunkstore audit`` over packs: damage to pack files and to the pack index named,
both ways, and ``--repair`` restoring what the evidence allows.

The store is built through the library (``tests.test_audit.build_store``: a completed
upload, one in flight, a failed and a cancelled one), damaged on disk or in the
database the way a disk or an operator would, and audited by the CLI.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore.blobs.packfile import HEADER_SIZE
from chunkstore.repack import PACKS_LOCK
from tests.helpers import (
    blake3_hex,
    blob_place,
    flip_byte,
    pack_files,
    read_blob,
    split,
)
from tests.test_audit import (
    OWNER,
    KiB,
    Store,
    audit,
    build_store,
    kinds,
    open_service,
    run_cli,
    send,
    start,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    yield build_store(tmp_path / "data")


def chunk_digests(data: bytes) -> list[str]:
    return [blake3_hex(piece) for piece in split(data, KiB)]


def pack_of(store: Store) -> Path:
    (pack,) = pack_files(store.data_dir)  # the default pack size: one pack holds all
    return pack


def repair(store: Store) -> dict[str, object]:
    code, answer = audit(store, "--repair")
    return answer


def test_a_clean_pack_store_audits_clean_and_counts_what_it_read(store: Store) -> None:
    code, answer = audit(store)

    assert code == 0 and answer["findings"] == []
    summary = answer["summary"]
    assert summary["packs"] == 1 and summary["pack_bytes"] == pack_of(store).stat().st_size
    assert summary["reclaimable_bytes"] == 0


def test_records_gc_swept_are_reclaimable_not_findings(store: Store) -> None:
    swept = run_cli(
        "gc", "--data", str(store.data_dir), "--hours", "0", "--grace", "0", "--repack-dead", "1"
    )
    assert swept.returncode == 0, swept.stderr  # sweeps, and repacks no pack: none is all dead

    code, answer = audit(store)

    assert code == 0 and answer["findings"] == []
    assert answer["summary"]["reclaimable_bytes"] > 0


def test_a_flipped_byte_in_a_pack_is_named_and_repaired_from_the_final_file(
    store: Store,
) -> None:
    digest = chunk_digests(store.completed_data)[2]
    place = blob_place(store.data_dir, digest)
    flip_byte(place.path, place.offset + 100)

    code, answer = audit(store)

    assert code == 1 and kinds(answer) == {("blob-corrupt", digest)}
    answer = repair(store)
    assert answer["findings"] == [], answer
    assert read_blob(store.data_dir, digest) == split(store.completed_data, KiB)[2]
    assert list((store.data_dir / "quarantine").rglob(f"{digest}.*"))  # the evidence


def test_a_damaged_record_header_is_named_and_the_records_after_it_still_checked(
    store: Store,
) -> None:
    digests = chunk_digests(store.completed_data)
    place = blob_place(store.data_dir, digests[1])
    flip_byte(place.path, place.offset - HEADER_SIZE)  # the magic: a scan stops here
    flip_byte(*last_payload_byte(store, digests[4]))  # a record after it

    code, answer = audit(store)

    assert kinds(answer) == {("blob-corrupt", digests[1]), ("blob-corrupt", digests[4])}
    answer = repair(store)
    assert answer["findings"] == [], answer


def last_payload_byte(store: Store, digest: str) -> tuple[Path, int]:
    place = blob_place(store.data_dir, digest)
    return place.path, place.offset + place.length - 1


def test_a_deleted_index_row_is_named_and_put_back_pointing_at_its_record(
    store: Store,
) -> None:
    digest = chunk_digests(store.completed_data)[3]
    place = blob_place(store.data_dir, digest)
    sql(store, "DELETE FROM blobs WHERE digest = ?", digest)

    code, answer = audit(store)

    assert code == 1
    assert {f["kind"] for f in answer["findings"]} == {"index-row-missing"}
    assert {f["subject"] for f in answer["findings"]} == {store.completed}
    assert digest in answer["findings"][0]["detail"]
    answer = repair(store)
    assert answer["findings"] == [], answer
    assert blob_place(store.data_dir, digest) == place  # the same record, no copy
    assert any("pointed the index row" in line for line in answer["repairs"])  # type: ignore[union-attr]


def test_a_repair_waits_for_the_packs_lock_a_repack_holds_then_refuses_changing_nothing(
    store: Store,
) -> None:
    digest = chunk_digests(store.completed_data)[3]
    sql(store, "DELETE FROM blobs WHERE digest = ?", digest)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKSTORE_")}
    service = open_service(store.data_dir)
    try:
        # As a repack (gc, or ``chunkstore repack``) holds it while it moves a pack.
        with service.store.locks.hold(PACKS_LOCK):
            refused = subprocess.run(
                [sys.executable, "-m", "chunkstore.cli", "audit", "--repair"]
                + ["--data", str(store.data_dir), "--json"],
                capture_output=True,
                text=True,
                env={**env, "CHUNKSTORE_LOCK_WAIT": "0.5"},
                timeout=120,
            )
    finally:
        service.close()

    assert refused.returncode == 2, refused.stderr
    assert "a repack is moving packs" in refused.stderr
    assert "changed nothing" in refused.stderr
    code, answer = audit(store)
    assert kinds(answer) == {("index-row-missing", store.completed)}
    assert repair(store)["findings"] == []  # the lock is free: the repair goes ahead


def test_a_row_pointing_at_the_wrong_offset_is_named_and_re_pointed(store: Store) -> None:
    first, second = chunk_digests(store.completed_data)[:2]
    wrong = blob_place(store.data_dir, second).offset - HEADER_SIZE
    sql(store, "UPDATE blobs SET offset = ? WHERE digest = ?", wrong, first)

    code, answer = audit(store)

    assert ("index-row-mismatch", first) in kinds(answer)
    answer = repair(store)
    assert answer["findings"] == [], answer
    assert read_blob(store.data_dir, first) == split(store.completed_data, KiB)[0]


def test_a_truncated_pack_is_named_and_what_an_intact_final_file_holds_restored(
    store: Store,
) -> None:
    completed = chunk_digests(store.completed_data)
    in_flight = chunk_digests(store.in_flight_data)[:2]  # the chunks it sent
    pack = pack_of(store)
    cut = blob_place(store.data_dir, completed[3]).offset - HEADER_SIZE
    os.truncate(pack, cut)

    code, answer = audit(store)

    found = kinds(answer)
    assert ("pack-truncated", pack.stem) in found
    for digest in completed[3:] + in_flight:
        assert ("blob-missing", digest) in found
    assert ("chunk-missing", store.in_flight) in found
    assert ("manifest-missing", store.completed) in found

    answer = repair(store)

    left = kinds(answer)
    # The completed upload's chunks came back from its final file, its manifest from
    # its events; the upload in flight has no other copy: still reported.
    assert not [kind for kind, subject in left if subject == store.completed]
    assert not [d for d in completed if ("blob-missing", d) in left]
    assert ("chunk-missing", store.in_flight) in left
    assert {kind for kind, _ in left} <= {"blob-missing", "chunk-missing"}
    for index, digest in enumerate(completed):
        assert read_blob(store.data_dir, digest) == split(store.completed_data, KiB)[index]


def test_a_missing_pack_is_named_and_what_an_intact_final_file_holds_restored(
    store: Store,
) -> None:
    completed = chunk_digests(store.completed_data)
    pack = pack_of(store)
    pack.unlink()

    code, answer = audit(store)

    found = kinds(answer)
    assert ("pack-missing", pack.stem) in found
    for digest in completed + chunk_digests(store.in_flight_data)[:2]:
        assert ("blob-missing", digest) in found
    assert ("chunk-missing", store.in_flight) in found

    answer = repair(store)

    left = kinds(answer)
    assert not [kind for kind, subject in left if subject == store.completed]
    assert ("chunk-missing", store.in_flight) in left
    assert ("pack-missing", pack.stem) in left  # the in-flight rows still point in
    for index, digest in enumerate(completed):
        assert read_blob(store.data_dir, digest) == split(store.completed_data, KiB)[index]


def test_a_missing_pack_whose_blobs_are_all_restored_is_forgotten(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    service = open_service(data_dir)
    data = os.urandom(6 * KiB)
    upload_id = start(service, data)
    send(service, upload_id, data)
    service.complete_upload(OWNER, upload_id)
    service.close()
    (pack,) = pack_files(data_dir)
    pack.unlink()
    store = Store(data_dir, upload_id, data, "", b"", "", "")

    code, answer = audit(store)
    assert code == 1 and ("pack-missing", pack.stem) in kinds(answer)
    answer = repair(store)

    assert answer["findings"] == [], answer
    assert any("forgot missing pack" in line for line in answer["repairs"])  # type: ignore[union-attr]
    assert pack.stem not in {path.stem for path in pack_files(data_dir)}


def sql(store: Store, statement: str, *params: object) -> None:
    with sqlite3.connect(store.data_dir / "chunkstore.sqlite3") as conn:
        conn.execute(statement, params)
