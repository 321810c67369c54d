"""The session fold: state is ``replay(events)``, one pure step per event."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chunkstore import events as ev
from chunkstore.eventlog.sqlite import SQLiteLog
from chunkstore.events import (
    ChunkStored,
    ManifestWritten,
    UnknownEvent,
    UploadCancelled,
    UploadCompleted,
    UploadExpired,
    UploadInitiated,
    ValidationFailed,
)
from chunkstore.projections import project
from chunkstore.session import SessionState, apply, replay

CREATED = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
EXPIRES = CREATED + timedelta(hours=24)
D0, D1, D2 = "0" * 64, "1" * 64, "2" * 64


def initiated(total_size: int = 2500, chunk_size: int = 1000) -> UploadInitiated:
    return UploadInitiated(
        owner="alice",
        filename="a.bin",
        total_size=total_size,
        mime_type="application/octet-stream",
        chunk_size=chunk_size,
        total_chunks=-(-total_size // chunk_size),
        created_at=CREATED,
        expires_at=EXPIRES,
        file_hash="f" * 64,
    )


MANIFEST = ManifestWritten(manifest_digest=D2, size=2500, blake3="b" * 64, sha256="s" * 64)


def test_an_empty_state_does_not_exist_yet() -> None:
    state = SessionState.empty("u1")

    assert state.upload_id == "u1"
    assert not state.exists
    assert state.status == "new"
    assert state.version == 0


def test_upload_initiated_makes_an_active_session_with_every_chunk_missing() -> None:
    state = apply(SessionState.empty("u1"), initiated())

    assert state.exists
    assert state.version == 1
    assert state.status == "active"
    assert (state.owner, state.filename, state.file_hash) == ("alice", "a.bin", "f" * 64)
    assert (state.total_size, state.chunk_size, state.total_chunks) == (2500, 1000, 3)
    assert (state.created_at, state.expires_at) == (CREATED, EXPIRES)
    assert state.missing_chunks == [0, 1, 2]
    assert state.progress == 0.0


def test_chunk_stored_records_the_chunk_and_its_bytes() -> None:
    state = replay([initiated(), ChunkStored(2, D2, 500), ChunkStored(0, D0, 1000)])

    assert list(state.stored_items()) == [(0, D0, 1000), (2, D2, 500)]
    assert (state.chunk(0), state.chunk(1), state.chunk(2)) == ((D0, 1000), None, (D2, 500))
    assert state.received_chunks == [0, 2]
    assert state.missing_chunks == [1]
    assert state.bytes_received == 1500
    assert state.progress == 60.0
    assert state.version == 3


def test_a_repeated_chunk_stored_does_not_count_its_bytes_twice() -> None:
    state = replay([initiated(), ChunkStored(0, D0, 1000), ChunkStored(0, D0, 1000)])

    assert state.bytes_received == 1000
    assert state.received_chunks == [0]


def test_ordered_chunks_follow_the_index_not_the_arrival() -> None:
    state = replay(
        [initiated(), ChunkStored(2, D2, 500), ChunkStored(0, D0, 1000), ChunkStored(1, D1, 1000)]
    )

    assert state.ordered_chunks() == [(D0, 1000), (D1, 1000), (D2, 500)]


def test_manifest_written_moves_the_session_to_assembling() -> None:
    state = replay([initiated(), MANIFEST])

    assert state.status == "assembling"
    assert state.manifest == MANIFEST


def test_validation_failed_records_the_reason_and_detail() -> None:
    state = replay([initiated(), MANIFEST, ValidationFailed("mime-mismatch", "png vs elf")])

    assert state.status == "failed"
    assert (state.failure_reason, state.failure_detail) == ("mime-mismatch", "png vs elf")


def test_upload_completed_records_the_file_and_its_type() -> None:
    state = replay([initiated(), MANIFEST, UploadCompleted("files/u1/a.bin", "image/png")])

    assert state.status == "completed"
    assert (state.file_path, state.detected_mime) == ("files/u1/a.bin", "image/png")


def test_upload_cancelled_records_the_reason() -> None:
    state = replay([initiated(), UploadCancelled("user asked")])

    assert state.status == "cancelled"
    assert state.cancel_reason == "user asked"


def test_upload_expired_makes_the_session_expired_whatever_the_clock() -> None:
    state = replay([initiated(), UploadExpired()])

    assert state.status == "expired"
    assert state.is_expired(CREATED)


def test_an_active_session_is_expired_from_its_expiry_instant_on() -> None:
    state = replay([initiated()])

    assert state.effective_status(EXPIRES - timedelta(microseconds=1)) == "active"
    assert state.effective_status(EXPIRES) == "expired"
    assert state.status == "active"  # the stored status only changes with an event


def test_a_finished_session_is_never_reported_expired() -> None:
    state = replay([initiated(), MANIFEST, UploadCompleted("files/u1/a.bin", "text/plain")])

    assert state.effective_status(EXPIRES + timedelta(days=1)) == "completed"


def test_apply_leaves_the_state_it_was_given_unchanged() -> None:
    before = replay([initiated(), ChunkStored(0, D0, 1000)])
    snapshot = (list(before.stored_items()), before.bytes_received, before.version, before.status)

    after = apply(before, ChunkStored(1, D1, 1000))

    assert (
        list(before.stored_items()),
        before.bytes_received,
        before.version,
        before.status,
    ) == snapshot
    assert after.received_chunks == [0, 1]


def test_replay_equals_applying_one_event_at_a_time() -> None:
    history = [
        initiated(),
        ChunkStored(1, D1, 1000),
        ChunkStored(0, D0, 1000),
        ChunkStored(2, D2, 500),
        MANIFEST,
        UploadCompleted("files/u1/a.bin", "application/octet-stream"),
    ]
    stepwise = SessionState.empty("u1")
    for event in history:
        stepwise = apply(stepwise, event)

    assert replay(history, SessionState.empty("u1")) == stepwise


def test_replay_can_continue_from_an_earlier_state() -> None:
    history = [initiated(), ChunkStored(0, D0, 1000), ChunkStored(1, D1, 1000)]

    assert replay(history[1:], replay(history[:1])) == replay(history)


def test_an_unknown_event_counts_as_a_version_and_changes_nothing_else() -> None:
    known = replay([initiated(), ChunkStored(0, D0, 1000)])

    state = apply(known, UnknownEvent(type="FutureThing", data={"x": 1}))

    assert state.version == known.version + 1
    assert list(state.stored_items()) == list(known.stored_items())
    assert state.status == known.status


def test_expected_size_is_the_chunk_size_except_for_a_short_last_chunk() -> None:
    state = replay([initiated(total_size=2500, chunk_size=1000)])

    assert [state.expected_size(i) for i in range(3)] == [1000, 1000, 500]


def test_an_empty_file_has_no_chunks_and_is_fully_received() -> None:
    state = replay([initiated(total_size=0)])

    assert state.total_chunks == 0
    assert state.missing_chunks == []
    assert state.progress == 100.0


# -- event encoding --------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        initiated(),
        ChunkStored(3, D1, 42),
        MANIFEST,
        ValidationFailed("hash-mismatch", "detail"),
        UploadCompleted("files/u/a.bin", "text/plain"),
        UploadCancelled("why"),
        UploadExpired(),
    ],
    ids=lambda event: type(event).__name__,
)
def test_every_event_survives_encoding_and_carries_its_type(event: ev.KnownEvent) -> None:
    encoded = ev.encode(event)

    assert ev.decode(encoded) == event
    assert json.loads(encoded)["type"] == type(event).__name__


def test_an_event_with_a_field_added_by_a_newer_version_still_decodes() -> None:
    data = json.dumps({"type": "ChunkStored", "index": 1, "digest": D1, "size": 5, "new": "x"})

    assert ev.decode(data) == ChunkStored(1, D1, 5)


def test_an_event_of_an_unknown_type_decodes_to_unknown_event() -> None:
    event = ev.decode(json.dumps({"type": "FutureThing", "weight": 3}))

    assert event == UnknownEvent(type="FutureThing", data={"weight": 3})
    assert ev.event_type(event) == "FutureThing"


def test_an_unknown_event_row_in_the_log_is_read_back_and_replayed_without_a_crash(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite3"
    store = SQLiteLog(path)
    first = initiated()
    store.append("u1", 0, [first], project(replay([first], SessionState.empty("u1")), [first]))
    # What a newer version of chunkstore would have written: a type this one lacks.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO events (stream_id, version, position, type, data, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                "u1",
                2,
                2,
                "FutureThing",
                json.dumps({"type": "FutureThing", "colour": "blue"}),
                "2030-01-01T12:00:01.000000Z",
            ),
        )
    conn.close()
    later = ChunkStored(0, D0, 1000)
    so_far = replay([first, UnknownEvent("FutureThing", {})], SessionState.empty("u1"))
    store.append("u1", 2, [later], project(apply(so_far, later), [later]))

    recorded = store.read("u1")
    replayed = replay([r.event for r in recorded], SessionState.empty("u1"))
    store.close()

    assert [r.version for r in recorded] == [1, 2, 3]
    assert recorded[1].event == UnknownEvent(type="FutureThing", data={"colour": "blue"})
    assert replayed.version == 3
    assert replayed.status == "active"
    assert replayed.received_chunks == [0]
