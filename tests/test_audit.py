"""``chunkstore audit``: every kind of damage named, and ``--repair`` fixing what it can.

Each test builds a real store through the library (completed, in-flight, failed,
cancelled sessions), damages it the way a disk or an operator would, and runs the CLI.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from chunkstore.application import UploadService
from chunkstore.commands import InitRequest
from chunkstore.config import Settings
from chunkstore.errors import ValidationFailed
from tests.helpers import (
    FakeClock,
    blake3_hex,
    damage_blob,
    flip_byte,
    is_stored,
    lose_blob,
    split,
    stored_copy,
)

KiB = 1024
TTL = 3600.0
OWNER = "alice"


class Store(msgspec.Struct):
    """A data dir with one session in each interesting state, and what went into it."""

    data_dir: Path
    completed: str
    completed_data: bytes
    in_flight: str
    in_flight_data: bytes
    failed: str
    cancelled: str


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKSTORE_")}
    return subprocess.run(
        [sys.executable, "-m", "chunkstore.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def open_service(data_dir: Path, clock: FakeClock | None = None) -> UploadService:
    settings = Settings(data_dir=data_dir, session_ttl=TTL)
    return UploadService.open(settings, clock=clock or FakeClock(datetime.now(UTC)))


def start(service: UploadService, data: bytes, file_hash: str | None = None) -> str:
    request = InitRequest(
        filename="file.bin", total_size=len(data), chunk_size=KiB, file_hash=file_hash
    )
    return service.init_upload(OWNER, request).upload_id


def send(service: UploadService, upload_id: str, data: bytes, count: int | None = None) -> None:
    for index, piece in enumerate(split(data, KiB)[:count]):
        service.store_chunk(OWNER, upload_id, index, piece)


def build_store(data_dir: Path) -> Store:
    service = open_service(data_dir)
    try:
        completed_data = os.urandom(5 * KiB + 100)
        completed = start(service, completed_data)
        send(service, completed, completed_data)
        service.complete_upload(OWNER, completed)
        in_flight_data = os.urandom(4 * KiB)
        in_flight = start(service, in_flight_data)
        send(service, in_flight, in_flight_data, 2)
        failed_data = os.urandom(2 * KiB)
        failed = start(service, failed_data, file_hash="0" * 64)
        send(service, failed, failed_data)
        with pytest.raises(ValidationFailed):
            service.complete_upload(OWNER, failed)
        cancelled_data = os.urandom(2 * KiB)
        cancelled = start(service, cancelled_data)
        send(service, cancelled, cancelled_data, 1)
        service.cancel_upload(OWNER, cancelled, "changed my mind")
    finally:
        service.close()
    return Store(data_dir, completed, completed_data, in_flight, in_flight_data, failed, cancelled)


def final_file(store: Store) -> Path:
    return store.data_dir / "files" / store.completed / "file.bin"


def audit(store: Store, *extra: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("audit", "--data", str(store.data_dir), "--json", *extra)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def kinds(answer: dict[str, Any]) -> set[tuple[str, str]]:
    return {(finding["kind"], finding["subject"]) for finding in answer["findings"]}


def sql(data_dir: Path, statement: str, *params: object) -> None:
    with sqlite3.connect(data_dir / "chunkstore.sqlite3") as conn:
        conn.execute(statement, params)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    yield build_store(tmp_path / "data")


# -- a clean store ------------------------------------------------------------------------


def test_a_clean_store_audits_clean_with_a_summary_of_what_was_checked(store: Store) -> None:
    code, answer = audit(store)

    assert code == 0
    assert answer["clean"] is True and answer["findings"] == []
    summary = answer["summary"]
    assert summary["streams"] == 4
    assert summary["events"] == 9 + 3 + 5 + 3  # completed, in flight, failed, cancelled
    assert summary["blobs"] == (6 + 1) + 2 + (2 + 1) + 1  # chunks, and two manifests
    assert summary["files"] == 1
    assert summary["file_bytes"] == len(store.completed_data)
    assert summary["blob_bytes"] > len(store.completed_data)
    assert summary["seconds"] >= 0


def test_the_human_report_ends_with_the_summary_line(store: Store) -> None:
    result = run_cli("audit", "--data", str(store.data_dir))

    assert result.returncode == 0
    assert "checked 4 streams, 20 events, 13 blobs" in result.stdout
    assert "0 findings" in result.stdout
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


# -- each kind of damage, named -------------------------------------------------------------


def test_a_flipped_byte_in_a_blob_is_named(store: Store) -> None:
    piece = split(store.in_flight_data, KiB)[1]
    damage_blob(store.data_dir, blake3_hex(piece), 17)

    code, answer = audit(store)

    assert code == 1
    assert kinds(answer) == {("blob-corrupt", blake3_hex(piece))}


def test_a_deleted_blob_is_named_with_the_upload_that_needs_it(store: Store) -> None:
    piece = split(store.in_flight_data, KiB)[0]
    lose_blob(store.data_dir, blake3_hex(piece))

    code, answer = audit(store)

    assert code == 1
    assert kinds(answer) == {("chunk-missing", store.in_flight)}
    assert blake3_hex(piece) in answer["findings"][0]["detail"]


def test_a_deleted_final_file_is_named(store: Store) -> None:
    final_file(store).unlink()

    code, answer = audit(store)

    assert code == 1
    assert kinds(answer) == {("file-missing", store.completed)}


def test_a_truncated_final_file_is_named(store: Store) -> None:
    path = final_file(store)
    path.write_bytes(path.read_bytes()[:-1])

    code, answer = audit(store)

    assert code == 1
    assert kinds(answer) == {("file-size-mismatch", store.completed)}


def test_a_final_file_with_a_flipped_byte_is_named(store: Store) -> None:
    flip_byte(final_file(store), 3000)

    assert kinds(audit(store)[1]) == {("file-corrupt", store.completed)}


def test_a_tampered_sessions_row_is_named_with_the_column(store: Store) -> None:
    sql(
        store.data_dir, "UPDATE sessions SET status = 'completed' WHERE upload_id = ?", store.failed
    )

    code, answer = audit(store)

    assert code == 1
    assert kinds(answer) == {("projection-mismatch", store.failed)}
    assert "status: row 'completed', events 'failed'" in answer["findings"][0]["detail"]


def test_a_deleted_or_invented_sessions_row_is_named(store: Store) -> None:
    sql(store.data_dir, "DELETE FROM sessions WHERE upload_id = ?", store.cancelled)
    sql(
        store.data_dir,
        "INSERT INTO sessions (upload_id, owner, status, version)"
        " VALUES ('ghost', 'x', 'active', 1)",
    )

    assert kinds(audit(store)[1]) == {
        ("projection-missing", store.cancelled),
        ("projection-orphan", "ghost"),
    }


def test_a_tampered_owner_chunks_projection_is_named(store: Store) -> None:
    digest = blake3_hex(split(store.completed_data, KiB)[0])
    sql(store.data_dir, "DELETE FROM owner_chunks WHERE digest = ?", digest)
    sql(
        store.data_dir,
        "INSERT INTO owner_chunks (owner, digest, size) VALUES ('mallory', ?, 1024)",
        digest,
    )

    assert kinds(audit(store)[1]) == {
        ("owner-chunks-missing", digest),
        ("owner-chunks-extra", digest),
    }


def test_a_deleted_manifest_is_named(store: Store) -> None:
    service = open_service(store.data_dir)
    state = service.load(store.completed)
    service.close()
    assert state.manifest is not None
    digest = state.manifest.manifest_digest
    lose_blob(store.data_dir, digest)

    assert kinds(audit(store)[1]) == {("manifest-missing", store.completed)}


def plant_orphans(store: Store) -> list[str]:
    """A cancelled upload's file (a completion that lost to the cancel and died before
    removing it) and a file in a directory no upload has; returns their paths."""
    planted = [f"files/{store.cancelled}/file.bin", "files/0123abcd/stray.bin"]
    for relative in planted:
        path = store.data_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(KiB))
    return planted


def test_a_file_no_completed_upload_owns_is_named_as_an_orphan(store: Store) -> None:
    planted = plant_orphans(store)

    code, answer = audit(store)

    assert code == 1
    assert kinds(answer) == {("file-orphan", relative) for relative in planted}
    details = {finding["subject"]: finding["detail"] for finding in answer["findings"]}
    assert details[planted[0]] == f"upload {store.cancelled} is cancelled"


# -- repair -------------------------------------------------------------------------------


def test_repair_brings_every_repairable_damage_back_to_clean(store: Store) -> None:
    final_file(store).unlink()
    sql(store.data_dir, "UPDATE sessions SET status = 'expired' WHERE upload_id = ?", store.failed)
    sql(store.data_dir, "DELETE FROM owner_chunks")

    code, answer = audit(store, "--repair")

    assert code == 0, answer
    assert answer["clean"] is True
    assert {k for k, _ in kinds(answer["before_repair"])} == {
        "file-missing",
        "projection-mismatch",
        "owner-chunks-missing",
    }
    assert final_file(store).read_bytes() == store.completed_data
    assert audit(store)[0] == 0


def test_repair_replaces_a_truncated_file_and_keeps_the_damaged_one(store: Store) -> None:
    path = final_file(store)
    path.write_bytes(store.completed_data[:100])

    code, _ = audit(store, "--repair")

    assert code == 0
    assert path.read_bytes() == store.completed_data
    kept = list((store.data_dir / "quarantine").rglob("file.bin"))
    assert [p.read_bytes() for p in kept] == [store.completed_data[:100]]


def test_repair_restores_a_chunk_from_an_intact_final_file(store: Store) -> None:
    piece = split(store.completed_data, KiB)[2]
    damage_blob(store.data_dir, blake3_hex(piece))

    code, answer = audit(store, "--repair")

    assert code == 0, answer
    assert stored_copy(store.data_dir, piece) == piece
    assert len(list((store.data_dir / "quarantine").rglob(f"{blake3_hex(piece)}.*"))) == 1


def test_repair_restores_a_deleted_manifest_from_the_events(store: Store) -> None:
    service = open_service(store.data_dir)
    state = service.load(store.completed)
    service.close()
    assert state.manifest is not None
    digest = state.manifest.manifest_digest
    lose_blob(store.data_dir, digest)

    code, _ = audit(store, "--repair")

    assert code == 0


def test_a_lost_chunk_with_no_other_copy_stays_reported_after_repair(store: Store) -> None:
    # The in-flight upload's chunk exists nowhere else: repair cannot invent its bytes.
    flipped = split(store.in_flight_data, KiB)[0]
    deleted = split(store.in_flight_data, KiB)[1]
    damage_blob(store.data_dir, blake3_hex(flipped))
    lose_blob(store.data_dir, blake3_hex(deleted))

    code, answer = audit(store, "--repair")

    assert code == 1
    assert kinds(answer) == {
        ("blob-corrupt", blake3_hex(flipped)),
        ("chunk-missing", store.in_flight),
    }
    assert any("exist nowhere else" in action for action in answer["repairs"])
    assert is_stored(store.data_dir, flipped)  # evidence is kept


def test_a_chunk_lost_together_with_its_final_file_cannot_be_repaired(store: Store) -> None:
    damage_blob(store.data_dir, blake3_hex(split(store.completed_data, KiB)[0]))
    final_file(store).unlink()

    code, answer = audit(store, "--repair")

    assert code == 1
    assert {k for k, _ in kinds(answer)} == {"blob-corrupt", "file-missing"}
    assert not final_file(store).exists()


def test_audit_of_a_missing_data_dir_is_an_error(tmp_path: Path) -> None:
    result = run_cli("audit", "--data", str(tmp_path / "nothing"))

    assert result.returncode == 2
    assert "no chunkstore data" in result.stderr
