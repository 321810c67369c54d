"""The SQLite event store: versioned appends, reads, and the sessions projection."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chunkstore.errors import ConcurrencyConflict
from chunkstore.eventlog.sqlite import SQLiteLog
from chunkstore.events import ChunkStored, KnownEvent, UploadCancelled, UploadInitiated
from chunkstore.projections import project, session_row
from chunkstore.session import SessionState, replay
from tests.helpers import all_stream_ids

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
D0, D1 = "0" * 64, "1" * 64


def initiated(owner: str = "alice", ttl_hours: int = 24) -> UploadInitiated:
    return UploadInitiated(
        owner=owner,
        filename="a.bin",
        total_size=2000,
        mime_type="application/octet-stream",
        chunk_size=1000,
        total_chunks=2,
        created_at=NOW,
        expires_at=NOW + timedelta(hours=ttl_hours),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteLog]:
    instance = SQLiteLog(tmp_path / "events.sqlite3")
    yield instance
    instance.close()


def append(store: SQLiteLog, stream_id: str, events: list[KnownEvent]) -> SessionState:
    """Append at the stream's current version, with the matching projection row."""
    state = replay([r.event for r in store.read(stream_id)], SessionState.empty(stream_id))
    new_state = replay(events, state)
    store.append(stream_id, state.version, events, project(new_state, events))
    return new_state


def test_appended_events_are_read_back_in_order_with_versions(store: SQLiteLog) -> None:
    append(store, "u1", [initiated()])
    append(store, "u1", [ChunkStored(1, D1, 1000), ChunkStored(0, D0, 1000)])

    recorded = store.read("u1")

    assert [r.version for r in recorded] == [1, 2, 3]
    assert [r.event for r in recorded] == [
        initiated(),
        ChunkStored(1, D1, 1000),
        ChunkStored(0, D0, 1000),
    ]
    assert [r.event for r in store.read("u1", after_version=2)] == [ChunkStored(0, D0, 1000)]


def test_an_append_with_a_stale_expected_version_raises_and_writes_nothing(
    store: SQLiteLog,
) -> None:
    append(store, "u1", [initiated()])
    append(store, "u1", [ChunkStored(0, D0, 1000)])
    row_before = store.session_row("u1")

    with pytest.raises(ConcurrencyConflict) as conflict:
        store.append("u1", 1, [ChunkStored(1, D1, 1000)], {**row_before, "version": 3})

    assert conflict.value.extensions["actual"] == 2
    assert [r.version for r in store.read("u1")] == [1, 2]
    assert store.session_row("u1") == row_before


def test_an_append_to_a_new_stream_must_expect_version_zero(store: SQLiteLog) -> None:
    with pytest.raises(ConcurrencyConflict):
        store.append("u1", 1, [initiated()], project(replay([initiated()]), [initiated()]))

    assert store.read("u1") == []
    assert store.session_row("u1") is None


def test_positions_order_every_stream_globally(store: SQLiteLog) -> None:
    append(store, "u1", [initiated()])
    append(store, "u2", [initiated("bob")])
    append(store, "u1", [ChunkStored(0, D0, 1000)])

    everything = list(store.read_all())

    assert [(r.stream_id, r.version) for r in everything] == [("u1", 1), ("u2", 1), ("u1", 2)]
    assert [r.position for r in everything] == sorted(r.position for r in everything)
    assert [r.stream_id for r in store.read_all(after_position=everything[0].position)] == [
        "u2",
        "u1",
    ]
    assert list(all_stream_ids(store)) == ["u1", "u2"]


def test_the_projection_row_is_written_with_the_events(store: SQLiteLog) -> None:
    state = append(store, "u1", [initiated(), ChunkStored(0, D0, 1000)])

    row = store.session_row("u1")

    assert row == session_row(state)
    assert (row["status"], row["received_chunks"], row["version"]) == ("active", 1, 2)


def test_open_sessions_count_only_live_ones_of_that_owner(store: SQLiteLog) -> None:
    append(store, "live", [initiated()])
    append(store, "cancelled", [initiated(), UploadCancelled("x")])
    append(store, "expired", [initiated(ttl_hours=1)])
    append(store, "bob's", [initiated("bob")])

    assert store.count_open_sessions("alice", NOW) == 2
    assert store.count_open_sessions("alice", NOW + timedelta(hours=2)) == 1
    assert store.count_open_sessions("bob", NOW) == 1


def test_a_second_store_on_the_same_file_sees_the_events(store: SQLiteLog, tmp_path: Path) -> None:
    append(store, "u1", [initiated()])

    other = SQLiteLog(tmp_path / "events.sqlite3")
    try:
        assert [r.event for r in other.read("u1")] == [initiated()]
    finally:
        other.close()
