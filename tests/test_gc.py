"""``chunkstore gc``: expire stale sessions, sweep what nothing live references, and
never take a chunk from an upload in progress."""

from __future__ import annotations

import gc as python_gc
import hashlib
import json
import os
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chunkstore.application import UploadService
from chunkstore.commands import InitRequest
from chunkstore.config import Settings
from chunkstore.errors import ChunkSwept
from chunkstore.events import ChunkStored, UploadExpired
from chunkstore.gc import References, collect
from chunkstore.intake import Frame
from chunkstore.pacing import Pacer
from chunkstore.testing import MakeServer
from tests.helpers import (
    FakeClock,
    blake3_hex,
    blob_place,
    complete,
    init_upload,
    is_stored,
    lose_blob,
    put_chunk,
    recorded_events,
    split,
    status_of,
    stored_objects,
)
from tests.test_audit import (
    OWNER,
    TTL,
    KiB,
    Store,
    build_store,
    open_service,
    plant_orphans,
    run_cli,
    send,
    start,
)


def gc(data_dir: Path, *args: str) -> dict[str, Any]:
    result = run_cli("gc", "--data", str(data_dir), "--json", *args)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def snapshot(data_dir: Path) -> dict[str, tuple[int, str]]:
    """path -> (size, sha256) of every file under the data dir, the database included."""
    return {
        str(path.relative_to(data_dir)): (
            path.stat().st_size,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in sorted(data_dir.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return build_store(tmp_path / "data")


def ended_blobs(store: Store) -> set[str]:
    """The blobs only the failed and cancelled sessions reference (chunks and manifest)."""
    service = open_service(store.data_dir)
    try:
        doomed: set[str] = set()
        for upload_id in (store.failed, store.cancelled):
            state = service.load(upload_id)
            digests = {digest for _, digest, _ in state.stored_items()}
            if state.manifest is not None:
                digests.add(state.manifest.manifest_digest)
            doomed |= digests
        return doomed
    finally:
        service.close()


# -- what is kept, what is swept ------------------------------------------------------------


def test_recently_ended_sessions_keep_their_chunks(store: Store) -> None:
    objects_before = stored_objects(store.data_dir)

    answer = gc(store.data_dir, "--hours", "24", "--grace", "0")

    assert answer["blobs_swept"] == 0 and answer["bytes_freed"] == 0
    assert answer["blobs_examined"] == answer["blobs_referenced"] == 13
    assert answer["sessions_expired"] == 0
    assert stored_objects(store.data_dir) == objects_before


def test_chunks_of_sessions_ended_longer_ago_than_hours_are_swept(store: Store) -> None:
    doomed = ended_blobs(store)
    freed = sum(blob_place(store.data_dir, digest).length for digest in doomed)

    answer = gc(store.data_dir, "--hours", "0", "--grace", "0")

    assert answer["blobs_swept"] == len(doomed) == 4
    assert answer["bytes_freed"] == freed
    assert answer["sessions_released"] == 2
    assert not doomed & stored_objects(store.data_dir)
    audit = run_cli("audit", "--data", str(store.data_dir))
    assert audit.returncode == 0, audit.stdout  # completed and in-flight uploads intact


def test_young_blobs_are_spared_by_the_grace_period(store: Store) -> None:
    answer = gc(store.data_dir, "--hours", "0", "--grace", "3600")

    assert answer["blobs_swept"] == 0
    assert answer["blobs_in_grace"] == 4
    assert ended_blobs(store) <= stored_objects(store.data_dir)


def test_a_blob_no_event_names_is_swept(store: Store) -> None:
    service = open_service(store.data_dir)
    stray = service.store.blobs.put(b"written, but its event never was")
    service.close()

    answer = gc(store.data_dir, "--grace", "0", "--verbose")

    assert answer["swept"] == [stray.digest]


def test_dry_run_changes_no_byte_on_disk(store: Store) -> None:
    two_hours_ago = FakeClock(datetime.now(UTC) - timedelta(hours=2))
    service = open_service(store.data_dir, two_hours_ago)
    overdue = start(service, os.urandom(2 * KiB))
    service.close()
    (store.data_dir / "tmp" / "files" / f"assemble-{overdue}-abc.part").write_bytes(b"half")
    before = snapshot(store.data_dir)

    result = run_cli(
        "gc", "--data", str(store.data_dir), "--hours", "0", "--grace", "0", "--dry-run"
    )

    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout
    assert "1 sessions would be expired, 1 staging files would be removed" in result.stdout
    assert "4 of 13 blobs would be swept" in result.stdout
    assert snapshot(store.data_dir) == before


def test_dry_run_reports_what_the_real_run_does(store: Store) -> None:
    planned = gc(store.data_dir, "--hours", "0", "--grace", "0", "--dry-run", "--verbose")
    done = gc(store.data_dir, "--hours", "0", "--grace", "0", "--verbose")

    for field in ("sessions_expired", "blobs_swept", "bytes_freed", "swept"):
        assert planned[field] == done[field]
    assert planned["dry_run"] is True and done["dry_run"] is False


# -- expiry -------------------------------------------------------------------------------


def test_gc_expires_sessions_past_their_ttl_and_removes_their_staging_files(
    tmp_path: Path,
) -> None:
    clock = FakeClock(datetime.now(UTC))
    service = open_service(tmp_path / "data", clock)
    stale = start(service, os.urandom(2 * KiB))
    send(service, stale, os.urandom(KiB), 1)
    staging = service.settings.data_dir / "tmp" / "files" / f"assemble-{stale}-0123.part"
    staging.write_bytes(b"partial")
    tail = service.settings.data_dir / "staging" / f"{stale}.1024"
    tail.parent.mkdir(exist_ok=True)
    tail.write_bytes(b"acknowledged tail")
    clock.advance(TTL + 1)
    fresh = start(service, os.urandom(KiB))
    fresh_tail = tail.parent / f"{fresh}.0"
    fresh_tail.write_bytes(b"live")

    report = collect(service, hours=24, grace=3600)

    assert report.sessions_expired == 1 and report.expired == [stale]
    assert report.staging_files_removed == 2
    assert not staging.exists() and not tail.exists()
    assert fresh_tail.exists()
    assert isinstance(service.store.log.read(stale)[-1].event, UploadExpired)
    assert service.load(fresh).status == "active"
    assert service.store.index.session_row(stale)["status"] == "expired"  # type: ignore[index]
    service.close()


def test_a_dry_run_expires_nothing(tmp_path: Path) -> None:
    clock = FakeClock(datetime.now(UTC))
    service = open_service(tmp_path / "data", clock)
    stale = start(service, os.urandom(KiB))
    clock.advance(TTL + 1)

    report = collect(service, hours=24, grace=0, dry_run=True)

    assert report.sessions_expired == 1
    assert service.load(stale).status == "active"
    assert len(service.store.log.read(stale)) == 1
    service.close()


def test_the_human_summary_states_the_statistics(store: Store) -> None:
    result = run_cli("gc", "--data", str(store.data_dir), "--hours", "0", "--grace", "0")

    assert result.returncode == 0
    assert "0 sessions were expired" in result.stdout
    assert "4 of 13 blobs were swept" in result.stdout


def test_a_deleted_uploads_unshared_chunks_are_swept_at_once_and_shared_ones_kept(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    service = open_service(data_dir)
    shared = os.urandom(KiB)
    deleted_data, kept_data = shared + os.urandom(KiB), shared + os.urandom(KiB)
    ids = []
    for data in (deleted_data, kept_data):
        upload_id = start(service, data)
        send(service, upload_id, data)
        service.complete_upload(OWNER, upload_id)
        ids.append(upload_id)
    manifest = service.load(ids[0]).manifest
    assert manifest is not None
    service.delete_upload(OWNER, ids[0])
    service.close()

    # --hours 24: a cancelled or failed upload would keep its chunks for a day.
    answer = gc(data_dir, "--hours", "24", "--grace", "0", "--verbose")

    assert sorted(answer["swept"]) == sorted(
        [blake3_hex(deleted_data[KiB:]), manifest.manifest_digest]
    )
    assert answer["sessions_released"] == 1
    assert is_stored(data_dir, shared)
    assert is_stored(data_dir, kept_data[KiB:])
    audit = run_cli("audit", "--data", str(data_dir))
    assert audit.returncode == 0, audit.stdout


# -- orphan files and stale locks -----------------------------------------------------------


def test_orphan_files_are_removed_once_older_than_the_grace_period(store: Store) -> None:
    planted = plant_orphans(store)
    young = gc(store.data_dir, "--grace", "3600")
    assert young["orphan_files_removed"] == 0
    assert all((store.data_dir / relative).exists() for relative in planted)
    two_hours_ago = time.time() - 7200
    for relative in planted:
        os.utime(store.data_dir / relative, (two_hours_ago, two_hours_ago))

    answer = gc(store.data_dir, "--grace", "3600", "--verbose")

    assert answer["orphan_files_removed"] == 2
    assert answer["orphan_bytes_freed"] == 2 * KiB
    assert sorted(answer["orphans"]) == sorted(planted)
    assert not (store.data_dir / "files" / store.cancelled).exists()
    assert not (store.data_dir / "files" / "0123abcd").exists()
    assert (store.data_dir / "files" / store.completed / "file.bin").exists()
    audit = run_cli("audit", "--data", str(store.data_dir))
    assert audit.returncode == 0, audit.stdout


def test_a_dry_run_counts_orphan_files_and_keeps_them(store: Store) -> None:
    planted = plant_orphans(store)

    answer = gc(store.data_dir, "--grace", "0", "--dry-run")

    assert answer["orphan_files_removed"] == 2
    assert all((store.data_dir / relative).exists() for relative in planted)


def test_lock_files_nobody_holds_are_removed(store: Store) -> None:
    leftover = store.data_dir / "locks" / store.in_flight
    leftover.write_bytes(b"")

    answer = gc(store.data_dir)

    assert answer["lock_files_removed"] == 1
    assert not leftover.exists()


# -- races with uploads --------------------------------------------------------------------


def test_gc_during_an_upload_in_progress_loses_nothing_of_it(make_server: MakeServer) -> None:
    server = make_server()
    data = os.urandom(8 * KiB + 5)
    pieces = split(data, KiB)
    with server.client("alice") as client:
        abandoned = init_upload(client, os.urandom(2 * KiB), KiB)["upload_id"]
        assert put_chunk(client, abandoned, 0, os.urandom(KiB)).status_code == 200
        assert (
            client.post("/api/v1/upload/cancel", json={"upload_id": abandoned}).status_code == 200
        )
        upload_id = init_upload(client, data, KiB)["upload_id"]
        for index in range(0, len(pieces), 2):
            assert put_chunk(client, upload_id, index, pieces[index]).status_code == 200

        answer = gc(server.data_dir, "--hours", "0", "--grace", "0")

        assert answer["blobs_swept"] == 1  # the abandoned upload's chunk, nothing else
        for index in range(1, len(pieces), 2):
            assert put_chunk(client, upload_id, index, pieces[index]).status_code == 200
        assert complete(client, upload_id).status_code == 200
        assert client.get(f"/api/v1/files/{upload_id}").content == data
        assert status_of(client, upload_id)["status"] == "completed"
    final = server.data_dir / "files" / upload_id / "file.bin"
    assert final.read_bytes() == data


def test_a_swept_chunk_is_asked_for_again_not_assumed_held(tmp_path: Path) -> None:
    clock = FakeClock(datetime.now(UTC))
    service = open_service(tmp_path / "data", clock)
    data = os.urandom(2 * KiB)
    first = start(service, data)
    send(service, first, data)
    service.cancel_upload(OWNER, first)
    clock.advance(1)
    assert collect(service, hours=0, grace=0).blobs_swept == 2
    chunks = [(blake3_hex(piece), len(piece)) for piece in split(data, KiB)]

    again = service.init_upload(
        OWNER, InitRequest(filename="again.bin", total_size=len(data), chunks=chunks)
    )

    assert again.needed_chunks == [0, 1]
    service.close()


def test_an_append_naming_a_swept_blob_is_refused_under_the_lock(store: Store) -> None:
    # The one window gc leaves: a request found a chunk's blob, gc swept it, and the
    # request's event comes after. The service re-checks under the append's lock.
    service = open_service(store.data_dir)
    state = service.load(store.in_flight)
    piece = split(store.in_flight_data, KiB)[1]
    gone = ChunkStored(index=1, digest=blake3_hex(piece), size=KiB)
    lose_blob(store.data_dir, blake3_hex(piece))
    fresh = ChunkStored(index=2, digest=blake3_hex(split(store.in_flight_data, KiB)[0]), size=KiB)

    with pytest.raises(ChunkSwept):
        service.append(state, [gone])
    service.append(state, [fresh])

    assert len(recorded_events(store.data_dir, store.in_flight)) == state.version + 1
    service.close()


def test_gc_takes_the_sessions_one_at_a_time_not_all_their_states(tmp_path: Path) -> None:
    """What gc keeps while it walks the log is the set of digests and a few facts a
    session, not every session's folded state: 20 uploads of the same 1,000 chunks
    kept 1.3 MiB of states (compact ones), against 150 KiB for the 1,000 digests."""
    settings = Settings(data_dir=tmp_path / "data", max_open_sessions=100)
    service = UploadService.open(settings)
    try:
        pieces = [f"piece {number}".encode() for number in range(1000)]
        chunks = [(blake3_hex(piece), len(piece)) for piece in pieces]
        request = InitRequest(filename="a.bin", total_size=sum(map(len, pieces)), chunks=chunks)
        first = service.init_upload(OWNER, request).upload_id
        frames = [
            Frame(index, digest, size, [memoryview(pieces[index])])
            for index, (digest, size) in enumerate(chunks)
        ]
        service.intake.record_frames(OWNER, first, frames)
        for _ in range(19):  # the owner holds every chunk: each is stored at init
            assert service.init_upload(OWNER, request).needed_count == 0
        references = References(service, released_before=datetime.now(UTC) - timedelta(hours=1))

        python_gc.collect()
        tracemalloc.start()
        try:
            references.catch_up()
            python_gc.collect()
            kept, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        service.close()

    assert references.digests == {digest for digest, _ in chunks}
    assert kept < 512 * 1024


def test_gc_gives_way_between_sessions_and_blobs(store: Store) -> None:
    """The server's background gc rests at these calls so that requests get the GIL
    (``chunkstore.pacing``): there must be one between any two sessions or blobs."""
    service = open_service(store.data_dir)
    calls = 0

    def pace() -> None:
        nonlocal calls
        calls += 1

    try:
        sessions = sum(service.store.index.count_sessions_by_status().values())
        report = collect(service, pace=pace)
    finally:
        service.close()

    assert sessions > 1
    assert report.blobs_examined > 1
    # Sessions are paced while the expired ones are looked for and again while their
    # references are taken; blobs while they are examined.
    assert calls >= 2 * sessions + report.blobs_examined


def test_a_pacer_rests_once_its_slice_of_work_is_used_up() -> None:
    resting, working = Pacer(work=0.0, rest=0.0), Pacer(work=3600.0, rest=3600.0)

    for _ in range(3):
        resting()
        working()

    assert (resting.rests, working.rests) == (3, 0)
