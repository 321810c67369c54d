"""A session's own rules, checked on what its stream holds (``audit.stream_findings``),
and the protocol checks that keep each upload to the routes of its own protocol."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chunkstore import commands, tus
from chunkstore.audit import stream_findings
from chunkstore.errors import NotAChunkUpload, NotATusUpload
from chunkstore.eventlog.sqlite import SQLiteLog
from chunkstore.events import (
    ChunkStored,
    Event,
    KnownEvent,
    ManifestWritten,
    TusLengthDeclared,
    TusTailStaged,
    TusUploadCreated,
    UnknownEvent,
    UploadCancelled,
    UploadCompleted,
    UploadDeleted,
    UploadExpired,
    UploadInitiated,
    ValidationFailed,
)
from chunkstore.projections import project
from chunkstore.session import SessionState, replay
from tests.test_audit import run_cli

NOW = datetime(2030, 1, 1, tzinfo=UTC)
A, B, C = "a" * 64, "b" * 64, "c" * 64


def fixed(total_size: int = 250, chunk_size: int = 100) -> UploadInitiated:
    """Chunks of 100, 100 and 50 bytes."""
    return UploadInitiated(
        owner="alice",
        filename="f.bin",
        total_size=total_size,
        mime_type="application/octet-stream",
        chunk_size=chunk_size,
        total_chunks=-(-total_size // chunk_size),
        created_at=NOW,
        expires_at=NOW + timedelta(days=1),
    )


def manifest_mode() -> UploadInitiated:
    """Two chunks declared: A (10 bytes), B (20 bytes)."""
    return UploadInitiated(
        owner="alice",
        filename="f.bin",
        total_size=30,
        mime_type="application/octet-stream",
        chunk_size=20,
        total_chunks=2,
        created_at=NOW,
        expires_at=NOW + timedelta(days=1),
        mode="manifest",
        chunk_list=[(A, 10), (B, 20)],
    )


def tus_created(total_size: int | None = 100) -> TusUploadCreated:
    return TusUploadCreated(
        owner="alice",
        filename="f.bin",
        mime_type="application/octet-stream",
        created_at=NOW,
        expires_at=NOW + timedelta(days=1),
        total_size=total_size,
    )


MANIFEST = ManifestWritten(manifest_digest=C, size=250, blake3=C, sha256=C)
WHOLE = [fixed(), ChunkStored(0, A, 100), ChunkStored(1, B, 100), ChunkStored(2, C, 50)]


def kinds(events: list[Event]) -> list[str]:
    return [finding.kind for finding in stream_findings("u1", events)]


# -- streams the code writes are clean --------------------------------------------------------


@pytest.mark.parametrize(
    "events",
    [
        [*WHOLE, MANIFEST, UploadCompleted("files/u1/f.bin", "application/octet-stream")],
        [*WHOLE, ValidationFailed("hash-mismatch"), UploadCancelled("gave up")],
        [fixed(), ChunkStored(1, B, 100), ChunkStored(1, B, 100), UploadExpired()],
        [manifest_mode(), ChunkStored(1, B, 20, reused=True), ChunkStored(0, A, 10)],
        [tus_created(), ChunkStored(0, A, 60), TusTailStaged(40), ChunkStored(1, B, 40)],
        [tus_created(None), TusTailStaged(30), TusLengthDeclared(80), TusTailStaged(80)],
        [fixed(), UnknownEvent("FromTheFuture", {"x": 1}), ChunkStored(0, A, 100)],
        [*WHOLE, MANIFEST, UploadCompleted("files/u1/f.bin", "x"), UploadDeleted("gone")],
    ],
)
def test_streams_the_service_writes_have_no_findings(events: list[Event]) -> None:
    assert kinds(events) == []


# -- each rule ------------------------------------------------------------------------------


def test_a_stream_that_does_not_begin_with_its_creation_is_named() -> None:
    assert kinds([ChunkStored(0, A, 100)]) == ["stream-start"]


def test_a_second_creation_event_is_named() -> None:
    assert kinds([fixed(), fixed()]) == ["stream-start"]


def test_a_chunk_index_outside_the_upload_is_named() -> None:
    assert kinds([fixed(), ChunkStored(3, A, 100), ChunkStored(-1, A, 100)]) == [
        "chunk-index-out-of-range",
        "chunk-index-out-of-range",
    ]


def test_a_chunk_of_the_wrong_size_for_its_index_is_named() -> None:
    assert kinds([fixed(), ChunkStored(2, A, 100)]) == ["chunk-wrong-size"]


def test_a_chunk_that_is_not_its_declared_digest_is_named() -> None:
    assert kinds([manifest_mode(), ChunkStored(0, C, 10)]) == ["chunk-digest-mismatch"]


def test_one_index_stored_twice_with_different_digests_is_named() -> None:
    assert kinds([fixed(), ChunkStored(0, A, 100), ChunkStored(0, B, 100)]) == ["chunk-conflict"]


def test_tus_bytes_past_the_declared_length_are_named() -> None:
    assert kinds([tus_created(100), ChunkStored(0, A, 80), TusTailStaged(30)]) == [
        "bytes-past-size"
    ]
    assert kinds([tus_created(100), ChunkStored(0, A, 120)]) == ["bytes-past-size"]
    assert kinds([tus_created(None), TusTailStaged(50), TusLengthDeclared(40)]) == [
        "bytes-past-size"
    ]


def test_tus_chunks_out_of_stream_order_are_named() -> None:
    assert kinds([tus_created(), ChunkStored(1, A, 10)]) == ["chunk-index-out-of-range"]


def test_stream_bytes_patched_into_a_json_upload_are_named() -> None:
    # What a tus PATCH on a JSON-API upload once appended: chunks cut from the stream,
    # numbered after the upload's own, and a tail.
    events: list[Event] = [*WHOLE[:2], ChunkStored(3, A, 60), ChunkStored(4, B, 70)]
    assert kinds([*events, TusTailStaged(5)]) == [
        "chunk-index-out-of-range",
        "chunk-index-out-of-range",
        "event-out-of-order",
    ]


def test_events_after_a_final_status_are_named() -> None:
    cancelled = [fixed(), UploadCancelled("no")]
    assert kinds([*cancelled, ChunkStored(0, A, 100)]) == ["event-after-end"]
    assert kinds([*cancelled, UploadExpired()]) == ["event-after-end"]
    completed = [*WHOLE, MANIFEST, UploadCompleted("files/u1/f.bin", "x")]
    assert kinds([*completed, UploadCancelled("late")]) == ["event-after-end"]


def test_deleting_an_upload_that_never_completed_is_named() -> None:
    assert kinds([*WHOLE, UploadDeleted("early")]) == ["event-out-of-order"]
    deleted = [*WHOLE, MANIFEST, UploadCompleted("files/u1/f.bin", "x"), UploadDeleted()]
    assert kinds([*deleted, UploadDeleted()]) == ["event-after-end"]


def test_a_manifest_before_every_chunk_is_there_is_named() -> None:
    assert kinds([*WHOLE[:3], MANIFEST]) == ["event-out-of-order"]


def test_a_completion_without_a_manifest_is_named() -> None:
    assert kinds([*WHOLE, UploadCompleted("files/u1/f.bin", "x")]) == ["event-out-of-order"]


def test_a_chunk_after_the_manifest_is_named() -> None:
    assert kinds([*WHOLE, MANIFEST, ChunkStored(0, A, 100)]) == ["event-out-of-order"]


def test_a_finding_names_the_stream_and_the_event() -> None:
    (finding,) = stream_findings("u1", [fixed(), ChunkStored(7, A, 100)])
    assert finding.subject == "u1"
    assert finding.detail.startswith("event 2 (ChunkStored): chunk 7")


# -- audit reports a broken stream, whoever wrote it -------------------------------------------


def append_raw(store: SQLiteLog, stream_id: str, events: list[KnownEvent]) -> None:
    """Append as a writer that checks nothing would (bypassing the commands)."""
    state = SessionState.empty(stream_id)
    for event in events:
        new_state = replay([event], state)
        store.append(stream_id, state.version, [event], project(new_state, [event]))
        state = new_state


def test_chunkstore_audit_reports_a_stream_that_breaks_its_rules(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = SQLiteLog(data_dir / "chunkstore.sqlite3")
    try:
        # A tus PATCH's bytes recorded in a JSON-API upload of one 100-byte chunk.
        append_raw(store, "u1", [fixed(100), ChunkStored(1, A, 64), TusTailStaged(36)])
    finally:
        store.close()

    result = run_cli("audit", "--data", str(data_dir), "--json")

    assert result.returncode == 1, result.stdout + result.stderr
    findings = {(f["kind"], f["subject"]) for f in json.loads(result.stdout)["findings"]}
    # (and chunk-missing: the bytes of the chunk it names were never stored)
    assert {("chunk-index-out-of-range", "u1"), ("event-out-of-order", "u1")} <= findings


# -- each protocol keeps to its own routes (checked before any body is read) ----------------------


def test_a_tus_patch_on_an_upload_of_the_json_api_is_refused() -> None:
    state = replay([fixed()], SessionState.empty("u1"))
    with pytest.raises(NotATusUpload):
        tus.check_patchable(state, state.stream_offset, NOW)


def test_chunks_by_index_for_a_tus_upload_are_refused() -> None:
    state = replay([tus_created(100)], SessionState.empty("u1"))
    with pytest.raises(NotAChunkUpload):
        commands.check_takes_chunks(state, NOW)
    with pytest.raises(NotAChunkUpload):
        commands.check_chunk_target(state, 0, NOW, 100)
    with pytest.raises(NotAChunkUpload):
        commands.decide_chunks(state, [(0, A, 100)], NOW)
