"""The upload service as a library: real SQLite log, real blob files, a clock we move."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from chunkstore import commands
from chunkstore.application import UploadService
from chunkstore.blobs.packfile import HEADER_SIZE
from chunkstore.commands import InitRequest
from chunkstore.config import Settings
from chunkstore.errors import (
    ChecksumMismatch,
    ChunkConflict,
    ChunkSizeMismatch,
    ChunkTooLarge,
    InvalidRequest,
    SessionExpired,
    TooLarge,
    TooManySessions,
    UploadIncomplete,
    UploadNotActive,
    UploadNotFound,
    ValidationFailed,
)
from chunkstore.events import (
    ChunkStored,
    ManifestWritten,
    UploadCancelled,
    UploadCompleted,
    UploadExpired,
    UploadInitiated,
)
from chunkstore.events import ValidationFailed as ValidationFailedEvent
from chunkstore.files import local as local_files
from chunkstore.intake import Checksum
from chunkstore.manifest import Manifest
from chunkstore.projections import project, session_row
from chunkstore.session import SessionState, replay
from chunkstore.views import state_summary
from tests.helpers import (
    FakeClock,
    all_stream_ids,
    blake3_hex,
    damage_blob,
    is_stored,
    pack_files,
    sha256_hex,
    split,
    stored_copy,
    stored_objects,
    temp_files,
    tiny_png,
)

KiB = 1024
TTL = 3600.0
OWNER = "alice"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def service(data_dir: Path, clock: FakeClock) -> Iterator[UploadService]:
    instance = UploadService.open(Settings(data_dir=data_dir, session_ttl=TTL), clock=clock)
    yield instance
    instance.close()


def start(
    service: UploadService,
    data: bytes,
    chunk_size: int = KiB,
    filename: str = "file.bin",
    mime_type: str = "application/octet-stream",
    owner: str = OWNER,
    file_hash: str | None = None,
) -> str:
    state = service.init_upload(
        owner,
        InitRequest(
            filename=filename,
            total_size=len(data),
            mime_type=mime_type,
            chunk_size=chunk_size,
            file_hash=file_hash,
        ),
    )
    return state.upload_id


def send_all(service: UploadService, upload_id: str, data: bytes, chunk_size: int = KiB) -> None:
    for index, piece in enumerate(split(data, chunk_size)):
        service.store_chunk(OWNER, upload_id, index, piece)


def events_of(service: UploadService, upload_id: str) -> list[object]:
    return [recorded.event for recorded in service.store.log.read(upload_id)]


# -- init and status --------------------------------------------------------------------


def test_init_records_one_upload_initiated_event_with_the_declared_facts(
    service: UploadService, clock: FakeClock
) -> None:
    upload_id = start(service, os.urandom(3 * KiB + 1), filename="a.bin")

    (event,) = events_of(service, upload_id)

    assert isinstance(event, UploadInitiated)
    assert (event.owner, event.filename, event.total_size) == (OWNER, "a.bin", 3 * KiB + 1)
    assert (event.chunk_size, event.total_chunks) == (KiB, 4)
    assert event.created_at == clock.now
    assert event.expires_at == clock.now + timedelta(seconds=TTL)


def test_init_refuses_a_chunk_count_too_large_to_track(tmp_path: Path, clock: FakeClock) -> None:
    # 64 GiB in 1-byte chunks: 68 billion chunks, each of which every status answer
    # would list. Refused up front, before any answer tries to list them.
    settings = Settings(data_dir=tmp_path)
    request = InitRequest(filename="a.bin", total_size=settings.max_file_size, chunk_size=1)

    with pytest.raises((InvalidRequest, TooLarge)):
        commands.decide_init("u1", OWNER, request, settings, clock(), open_sessions=0)


def test_a_new_session_is_active_with_every_chunk_missing(service: UploadService) -> None:
    upload_id = start(service, os.urandom(3 * KiB))

    state = service.status(OWNER, upload_id)

    assert state.status == "active"
    assert state.missing_chunks == [0, 1, 2]
    assert state.received_chunks == []
    assert state.progress == 0.0


def test_status_shows_expired_once_the_ttl_has_passed(
    service: UploadService, clock: FakeClock
) -> None:
    upload_id = start(service, os.urandom(KiB))

    clock.advance(TTL - 1)
    just_before = state_summary(service.status(OWNER, upload_id), clock())["status"]
    clock.advance(1)
    at_expiry = state_summary(service.status(OWNER, upload_id), clock())["status"]

    assert just_before == "active"
    assert at_expiry == "expired"


def test_an_expired_session_refuses_chunks(
    service: UploadService, clock: FakeClock, data_dir: Path
) -> None:
    data = os.urandom(2 * KiB)
    upload_id = start(service, data)
    service.store_chunk(OWNER, upload_id, 0, data[:KiB])
    clock.advance(TTL)

    with pytest.raises(SessionExpired):
        service.store_chunk(OWNER, upload_id, 1, data[KiB:])

    assert service.status(OWNER, upload_id).received_chunks == [0]
    assert not is_stored(data_dir, data[KiB:])


def test_an_expired_session_cannot_be_completed(service: UploadService, clock: FakeClock) -> None:
    data = os.urandom(KiB)
    upload_id = start(service, data)
    send_all(service, upload_id, data)
    clock.advance(TTL + 1)

    with pytest.raises(SessionExpired):
        service.complete_upload(OWNER, upload_id)


def test_an_expired_session_no_longer_counts_as_open(data_dir: Path, clock: FakeClock) -> None:
    settings = Settings(data_dir=data_dir, session_ttl=TTL, max_open_sessions=1)
    service = UploadService.open(settings, clock=clock)
    try:
        start(service, b"x")
        with pytest.raises(TooManySessions):
            start(service, b"y")
        clock.advance(TTL)

        assert start(service, b"z")
    finally:
        service.close()


def test_expire_upload_records_expiry_only_once_the_ttl_has_passed(
    service: UploadService, clock: FakeClock
) -> None:
    upload_id = start(service, os.urandom(KiB))

    clock.advance(TTL - 1)
    service.expire_upload(upload_id)
    before = [type(e) for e in events_of(service, upload_id)]
    clock.advance(1)
    service.expire_upload(upload_id)
    service.expire_upload(upload_id)

    assert before == [UploadInitiated]
    assert [type(e) for e in events_of(service, upload_id)] == [UploadInitiated, UploadExpired]
    assert service.status(OWNER, upload_id).status == "expired"


def test_another_owners_upload_is_not_found(service: UploadService) -> None:
    upload_id = start(service, os.urandom(KiB))

    with pytest.raises(UploadNotFound):
        service.status("mallory", upload_id)
    with pytest.raises(UploadNotFound):
        service.store_chunk("mallory", upload_id, 0, os.urandom(KiB))
    with pytest.raises(UploadNotFound):
        service.cancel_upload("mallory", upload_id)
    with pytest.raises(UploadNotFound):
        service.complete_upload("mallory", upload_id)


# -- chunks ----------------------------------------------------------------------------


def test_a_stored_chunk_appends_one_chunk_stored_event(service: UploadService) -> None:
    data = os.urandom(2 * KiB)
    upload_id = start(service, data)

    receipt = service.store_chunk(OWNER, upload_id, 1, data[KiB:])

    assert receipt.stored is True
    assert events_of(service, upload_id)[1:] == [
        ChunkStored(index=1, digest=blake3_hex(data[KiB:]), size=KiB)
    ]


def test_the_same_chunk_twice_appends_nothing_the_second_time(service: UploadService) -> None:
    data = os.urandom(2 * KiB)
    upload_id = start(service, data)

    first = service.store_chunk(OWNER, upload_id, 0, data[:KiB])
    second = service.store_chunk(OWNER, upload_id, 0, data[:KiB])

    assert (first.stored, second.stored) == (True, False)
    assert sum(isinstance(e, ChunkStored) for e in events_of(service, upload_id)) == 1


def test_the_same_index_with_other_bytes_is_a_conflict(
    service: UploadService, data_dir: Path
) -> None:
    data = os.urandom(2 * KiB)
    upload_id = start(service, data)
    service.store_chunk(OWNER, upload_id, 0, data[:KiB])
    other = os.urandom(KiB)

    with pytest.raises(ChunkConflict):
        service.store_chunk(OWNER, upload_id, 0, other)

    assert service.status(OWNER, upload_id).chunk(0) == (blake3_hex(data[:KiB]), KiB)
    assert not is_stored(data_dir, other)


def test_a_checksum_mismatch_stores_no_blob_and_no_event(
    service: UploadService, data_dir: Path
) -> None:
    data = os.urandom(KiB)
    upload_id = start(service, data)

    with pytest.raises(ChecksumMismatch):
        service.store_chunk(
            OWNER, upload_id, 0, data, Checksum("sha256", sha256_hex(os.urandom(KiB)))
        )

    assert len(events_of(service, upload_id)) == 1
    assert not is_stored(data_dir, data)
    assert temp_files(data_dir) == []


def test_a_blake3_checksum_is_checked_against_the_chunk(service: UploadService) -> None:
    data = os.urandom(KiB)
    upload_id = start(service, data)

    with pytest.raises(ChecksumMismatch):
        service.store_chunk(OWNER, upload_id, 0, data, Checksum("blake3", blake3_hex(b"other")))
    receipt = service.store_chunk(OWNER, upload_id, 0, data, Checksum("blake3", blake3_hex(data)))

    assert receipt.stored is True


def test_a_chunk_of_the_wrong_size_is_refused(service: UploadService) -> None:
    data = os.urandom(2 * KiB)
    upload_id = start(service, data)

    with pytest.raises(ChunkSizeMismatch):
        service.store_chunk(OWNER, upload_id, 0, data[: KiB - 1])
    with pytest.raises(ChunkTooLarge):
        service.store_chunk(OWNER, upload_id, 0, data[: KiB + 1])

    assert service.status(OWNER, upload_id).received_chunks == []


async def _pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for piece in split(data, size):
        yield piece


def test_a_streamed_chunk_is_stored_like_an_in_memory_one(
    service: UploadService, data_dir: Path
) -> None:
    chunk_size = 3 * 1024 * KiB  # larger than one flush, so the writer thread takes turns
    data = os.urandom(chunk_size)
    upload_id = start(service, data, chunk_size=chunk_size)

    receipt = asyncio.run(
        service.store_chunk_stream(
            OWNER,
            upload_id,
            0,
            _pieces(data, 64 * KiB),
            len(data),
            Checksum.parse(f"sha256={sha256_hex(data)}"),
        )
    )

    assert receipt.stored is True
    assert receipt.digest == blake3_hex(data)
    assert stored_copy(data_dir, data) == data


def test_a_streamed_chunk_longer_than_expected_stores_nothing(
    service: UploadService, data_dir: Path
) -> None:
    data = os.urandom(2 * KiB)
    upload_id = start(service, data)
    too_long = os.urandom(KiB + 10)

    with pytest.raises(ChunkTooLarge):
        asyncio.run(service.store_chunk_stream(OWNER, upload_id, 0, _pieces(too_long, 100)))

    assert service.status(OWNER, upload_id).received_chunks == []
    assert not is_stored(data_dir, too_long)
    assert temp_files(data_dir) == []


def test_identical_chunks_in_two_uploads_share_one_blob(
    service: UploadService, data_dir: Path
) -> None:
    data = os.urandom(KiB)
    first = start(service, data)
    second = start(service, data)

    service.store_chunk(OWNER, first, 0, data)
    receipt = service.store_chunk(OWNER, second, 0, data)

    assert receipt.stored is True  # recorded for this upload, even though the bytes existed
    assert stored_objects(data_dir) == {blake3_hex(data)}
    # One record in the packs: the second upload's bytes were not written again.
    assert sum(pack.stat().st_size for pack in pack_files(data_dir)) == HEADER_SIZE + len(data)


# -- completion ------------------------------------------------------------------------


def test_completion_refuses_while_chunks_are_missing_and_names_them(
    service: UploadService,
) -> None:
    data = os.urandom(4 * KiB)
    upload_id = start(service, data)
    service.store_chunk(OWNER, upload_id, 2, data[2 * KiB : 3 * KiB])

    with pytest.raises(UploadIncomplete) as refused:
        service.complete_upload(OWNER, upload_id)

    assert refused.value.extensions["missing_chunks"] == [0, 1, 3]


def test_completion_materializes_the_exact_file(service: UploadService, data_dir: Path) -> None:
    data = os.urandom(3 * KiB + 5)
    upload_id = start(service, data, file_hash=sha256_hex(data))
    for index in (3, 1, 0, 2):
        service.store_chunk(OWNER, upload_id, index, split(data, KiB)[index])

    completion = service.complete_upload(OWNER, upload_id)

    assert (data_dir / completion.file_path).read_bytes() == data
    assert (completion.size, completion.sha256) == (len(data), sha256_hex(data))
    assert completion.blake3 == blake3_hex(data)


def test_completion_writes_the_manifest_as_a_content_addressed_object(
    service: UploadService,
) -> None:
    data = os.urandom(2 * KiB + 1)
    upload_id = start(service, data)
    send_all(service, upload_id, data)

    completion = service.complete_upload(OWNER, upload_id)
    with service.store.blobs.open(completion.manifest_digest) as blob:
        raw = blob.read()
    manifest = Manifest.decode(raw)

    assert blake3_hex(raw) == completion.manifest_digest
    assert manifest.chunks == [(blake3_hex(piece), len(piece)) for piece in split(data, KiB)]
    assert (manifest.size, manifest.sha256) == (len(data), sha256_hex(data))


def test_completion_records_manifest_then_completed(service: UploadService) -> None:
    data = os.urandom(KiB)
    upload_id = start(service, data)
    send_all(service, upload_id, data)

    service.complete_upload(OWNER, upload_id)
    kinds = [type(e) for e in events_of(service, upload_id)]

    assert kinds == [UploadInitiated, ChunkStored, ManifestWritten, UploadCompleted]


def test_completing_twice_returns_the_same_answer_and_appends_nothing(
    service: UploadService,
) -> None:
    data = os.urandom(KiB)
    upload_id = start(service, data)
    send_all(service, upload_id, data)

    first = service.complete_upload(OWNER, upload_id)
    count = len(events_of(service, upload_id))
    second = service.complete_upload(OWNER, upload_id)

    assert second == first
    assert len(events_of(service, upload_id)) == count


def test_a_chunk_damaged_on_disk_fails_validation_and_no_file_appears(
    service: UploadService, data_dir: Path
) -> None:
    data = os.urandom(2 * KiB)
    upload_id = start(service, data)
    send_all(service, upload_id, data)
    damage_blob(data_dir, blake3_hex(data[KiB:]))

    with pytest.raises(ValidationFailed) as failed:
        service.complete_upload(OWNER, upload_id)

    assert failed.value.extensions["reason"] == "corrupt-chunk"
    assert service.status(OWNER, upload_id).status == "failed"
    assert not (data_dir / "files" / upload_id).exists()


def test_a_declared_type_contradicted_by_the_bytes_fails_and_keeps_the_chunks(
    service: UploadService, data_dir: Path
) -> None:
    data = Path("/bin/true").read_bytes()
    upload_id = start(service, data, chunk_size=16 * KiB, filename="pic.png", mime_type="image/png")
    send_all(service, upload_id, data, chunk_size=16 * KiB)

    with pytest.raises(ValidationFailed) as failed:
        service.complete_upload(OWNER, upload_id)

    state = service.status(OWNER, upload_id)
    assert failed.value.extensions["reason"] == "mime-mismatch"
    assert state.status == "failed"
    assert state.failure_reason == "mime-mismatch"
    assert isinstance(events_of(service, upload_id)[-1], ValidationFailedEvent)
    assert all(is_stored(data_dir, piece) for piece in split(data, 16 * KiB))


def test_a_real_png_declared_as_png_is_accepted(service: UploadService, data_dir: Path) -> None:
    png = tiny_png()
    upload_id = start(service, png, filename="pixel.png", mime_type="image/png")
    send_all(service, upload_id, png)

    completion = service.complete_upload(OWNER, upload_id)

    assert completion.detected_mime == "image/png"
    assert (data_dir / completion.file_path).read_bytes() == png


def test_an_empty_upload_completes_into_an_empty_file(
    service: UploadService, data_dir: Path
) -> None:
    upload_id = start(service, b"")

    completion = service.complete_upload(OWNER, upload_id)

    assert (data_dir / completion.file_path).read_bytes() == b""


def test_a_completion_interrupted_after_the_manifest_finishes_on_the_next_try(
    service: UploadService, data_dir: Path
) -> None:
    data = os.urandom(2 * KiB)
    upload_id = start(service, data, filename="a.bin")
    send_all(service, upload_id, data)
    # A regular file where the upload's directory must go makes publishing fail after
    # the manifest has been recorded, as a crash at that instant would.
    obstacle = data_dir / "files" / upload_id
    obstacle.write_bytes(b"in the way")
    with pytest.raises(OSError):
        service.complete_upload(OWNER, upload_id)
    assert service.status(OWNER, upload_id).status == "assembling"
    obstacle.unlink()

    completion = service.complete_upload(OWNER, upload_id)

    assert (data_dir / completion.file_path).read_bytes() == data
    kinds = [type(e) for e in events_of(service, upload_id)]
    assert kinds.count(ManifestWritten) == 1
    assert kinds[-1] is UploadCompleted
    assert temp_files(data_dir) == []


def test_a_completion_whose_final_event_is_refused_removes_the_file_it_published(
    service: UploadService, data_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(2 * KiB)
    upload_id = start(service, data)
    send_all(service, upload_id, data)
    # A writer that takes no lock (an older version sharing the data dir) cancels the
    # upload between the moment completion publishes the file and the moment it
    # records UploadCompleted.
    other = UploadService.open(Settings(data_dir=data_dir, session_ttl=TTL), clock=clock)
    publish = local_files.publish

    def publish_then_cancel_elsewhere(part: Path, final: Path) -> None:
        publish(part, final)
        state = other.load(upload_id)
        cancelled = [UploadCancelled("elsewhere")]
        other.store.log.append(
            upload_id, state.version, cancelled, project(replay(cancelled, state), cancelled)
        )

    monkeypatch.setattr(local_files, "publish", publish_then_cancel_elsewhere)
    try:
        with pytest.raises(UploadNotActive):
            service.complete_upload(OWNER, upload_id)
    finally:
        other.close()

    assert service.status(OWNER, upload_id).status == "cancelled"
    assert not (data_dir / "files" / upload_id).exists()
    assert temp_files(data_dir) == []


# -- cancel ----------------------------------------------------------------------------


def test_cancel_records_the_reason_and_refuses_further_chunks(service: UploadService) -> None:
    data = os.urandom(KiB)
    upload_id = start(service, data)

    state = service.cancel_upload(OWNER, upload_id, "no longer needed")

    assert state.status == "cancelled"
    assert events_of(service, upload_id)[-1] == UploadCancelled(reason="no longer needed")
    with pytest.raises(UploadNotActive):
        service.store_chunk(OWNER, upload_id, 0, data)


def test_cancelling_twice_appends_one_cancel_event(service: UploadService) -> None:
    upload_id = start(service, os.urandom(KiB))

    service.cancel_upload(OWNER, upload_id)
    service.cancel_upload(OWNER, upload_id)

    assert sum(isinstance(e, UploadCancelled) for e in events_of(service, upload_id)) == 1


def test_a_cancelled_session_frees_its_open_session_slot(data_dir: Path, clock: FakeClock) -> None:
    service = UploadService.open(Settings(data_dir=data_dir, max_open_sessions=1), clock=clock)
    try:
        upload_id = start(service, b"x")
        with pytest.raises(TooManySessions):
            start(service, b"y")
        service.cancel_upload(OWNER, upload_id)

        assert start(service, b"z")
    finally:
        service.close()


# -- state is the fold of the log --------------------------------------------------------


def test_a_second_service_on_the_same_data_dir_sees_the_same_state(
    service: UploadService, data_dir: Path, clock: FakeClock
) -> None:
    data = os.urandom(3 * KiB)
    upload_id = start(service, data)
    service.store_chunk(OWNER, upload_id, 2, data[2 * KiB :])

    other = UploadService.open(Settings(data_dir=data_dir, session_ttl=TTL), clock=clock)
    try:
        assert other.status(OWNER, upload_id) == service.status(OWNER, upload_id)
    finally:
        other.close()


def test_the_sessions_projection_equals_the_replayed_events_for_every_status(
    service: UploadService, clock: FakeClock
) -> None:
    completed = start(service, data := os.urandom(2 * KiB + 3))
    send_all(service, completed, data)
    service.complete_upload(OWNER, completed)

    cancelled = start(service, data := os.urandom(2 * KiB))
    service.store_chunk(OWNER, cancelled, 1, data[KiB:])
    service.cancel_upload(OWNER, cancelled, "stop")

    failed = start(service, data := os.urandom(KiB), file_hash=sha256_hex(b"not it"))
    send_all(service, failed, data)
    with pytest.raises(ValidationFailed):
        service.complete_upload(OWNER, failed)

    active = start(service, data := os.urandom(3 * KiB), owner="bob")
    service.store_chunk("bob", active, 0, data[:KiB])
    service.store_chunk("bob", active, 2, data[2 * KiB :])

    empty = start(service, b"")
    service.complete_upload(OWNER, empty)
    untouched = start(service, os.urandom(10))
    expired = start(service, os.urandom(10))
    clock.advance(TTL + 1)  # both are now past their expiry; gc records it for one
    service.expire_upload(expired)

    log, index = service.store.log, service.store.index
    stream_ids = list(all_stream_ids(log))
    assert set(stream_ids) == {completed, cancelled, failed, active, empty, untouched, expired}
    statuses = set()
    for stream_id in stream_ids:
        events = [recorded.event for recorded in log.read(stream_id)]
        expected = session_row(replay(events, SessionState.empty(stream_id)))
        assert index.session_row(stream_id) == expected
        statuses.add(expected["status"])
    assert statuses == {"completed", "cancelled", "failed", "active", "expired"}
    assert {row["upload_id"] for row in index.session_rows()} == set(stream_ids)
