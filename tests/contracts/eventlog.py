"""The event log's contracts: ``EventLog``, ``SessionIndex`` and ``SweepGuard``.

One backend object usually implements all three (``chunkstore.eventlog``), so each
contract asks the same ``make_log``; a backend's test class inherits the contracts of
the protocols it implements, ``SweepGuardContract`` only if it offers that capability.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import pytest

from chunkstore.errors import ConcurrencyConflict, TooManySessions
from chunkstore.eventlog import EventLog, RecordedEvent, SessionIndex, SweepGuard
from chunkstore.events import (
    ChunksDeclared,
    ChunkStored,
    KnownEvent,
    ManifestWritten,
    TusLengthDeclared,
    TusTailStaged,
    TusUploadCreated,
    UploadCancelled,
    UploadCompleted,
    UploadDeleted,
    UploadExpired,
    UploadInitiated,
    ValidationFailed,
)
from chunkstore.projections import (
    OwnerChunk,
    RowChanges,
    bytes_held,
    is_open,
    project,
    session_row,
)
from chunkstore.session import SessionState, replay
from tests.contracts.concurrency import THREADS, run_together
from tests.helpers import all_stream_ids

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
D0, D1, D2 = "0" * 64, "1" * 64, "2" * 64


class LogBackend(EventLog, SessionIndex, SweepGuard, Protocol):
    """The three protocols as one backend object implements them."""


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


def stream_created(owner: str = "alice") -> TusUploadCreated:
    """An offset-stream upload whose length is not known yet."""
    return TusUploadCreated(
        owner=owner,
        filename="s.bin",
        mime_type="application/octet-stream",
        created_at=NOW,
        expires_at=NOW + timedelta(hours=24),
    )


MANIFEST = ManifestWritten(manifest_digest=D2, size=2000, blake3="b" * 64, sha256="5" * 64)
BOTH_CHUNKS: list[KnownEvent] = [ChunkStored(0, D0, 1000), ChunkStored(1, D1, 1000)]


def state_of(log: EventLog, stream_id: str) -> SessionState:
    return replay([r.event for r in log.read(stream_id)], SessionState.empty(stream_id))


def append(
    log: EventLog,
    stream_id: str,
    events: list[KnownEvent],
    precondition: Callable[[], None] | None = None,
) -> SessionState:
    """Append at the stream's current version, with the matching row changes."""
    state = state_of(log, stream_id)
    new_state = replay(events, state)
    log.append(stream_id, state.version, events, project(new_state, events), precondition)
    return new_state


def changes_after(state: SessionState, events: list[KnownEvent]) -> RowChanges:
    return project(replay(events, state), events)


class LogContract(abc.ABC):
    @abc.abstractmethod
    def make_log(self, tmp_path: Path) -> LogBackend:
        """A new, empty log of the backend under test."""

    @pytest.fixture
    def log(self, tmp_path: Path) -> Iterator[LogBackend]:
        instance = self.make_log(tmp_path)
        yield instance
        instance.close()


class EventLogContract(LogContract):
    """Versioned appends with their row changes, atomically; reads of a stream; every
    event in gap-free position order (invariant 2)."""

    def test_appended_events_are_read_back_in_order_with_versions(self, log: LogBackend) -> None:
        append(log, "u1", [initiated()])
        append(log, "u1", [ChunkStored(1, D1, 1000), ChunkStored(0, D0, 1000)])

        recorded = log.read("u1")

        assert [r.version for r in recorded] == [1, 2, 3]
        assert [r.event for r in recorded] == [
            initiated(),
            ChunkStored(1, D1, 1000),
            ChunkStored(0, D0, 1000),
        ]
        assert [r.stream_id for r in recorded] == ["u1"] * 3
        assert [r.event for r in log.read("u1", after_version=2)] == [ChunkStored(0, D0, 1000)]
        assert log.read("u1", after_version=3) == []

    def test_an_append_returns_its_events_as_they_are_read_back(self, log: LogBackend) -> None:
        append(log, "u1", [initiated()])
        events: list[KnownEvent] = [ChunkStored(0, D0, 1000), ChunkStored(1, D1, 1000)]

        returned = log.append("u1", 1, events, changes_after(state_of(log, "u1"), events))

        assert returned == log.read("u1", after_version=1)
        assert [r.version for r in returned] == [2, 3]
        assert returned[1].position == returned[0].position + 1
        # One append, one moment, which says where it is in time.
        assert returned[0].recorded_at == returned[1].recorded_at
        assert returned[0].recorded_at.utcoffset() == timedelta(0)

    def test_every_event_type_is_read_back_as_it_was_appended(self, log: LogBackend) -> None:
        manifest_initiated = UploadInitiated(
            owner="alice",
            filename="m.bin",
            total_size=3000,
            mime_type="text/plain",
            chunk_size=1000,
            total_chunks=3,
            created_at=NOW,
            expires_at=NOW + timedelta(hours=1),
            mode="manifest",
            file_hash="f" * 64,
            chunk_list=[(D0, 1000)],
        )
        events: list[KnownEvent] = [
            manifest_initiated,
            ChunksDeclared(start=1, chunk_list=[(D1, 1000), (D2, 1000)]),
            ChunkStored(0, D0, 1000, reused=True),
            MANIFEST,
            ValidationFailed("mime-mismatch", "declared text/plain, found image/png"),
            UploadCompleted("files/u1/m.bin", "text/plain"),
            UploadCancelled("changed my mind"),
            UploadExpired(),
            UploadDeleted("by its owner"),
            TusUploadCreated(
                owner="alice",
                filename="t.bin",
                mime_type="application/octet-stream",
                created_at=NOW,
                expires_at=NOW + timedelta(hours=1),
                total_size=None,
                metadata="filename dC5iaW4=",
                concat="final",
                parts=["p1", "p2"],
            ),
            TusLengthDeclared(12345),
            TusTailStaged(17),
        ]
        # The log stores events whatever they mean; one stream holds every type here.
        log.append("u1", 0, events, changes_after(SessionState.empty("u1"), events))

        assert [r.event for r in log.read("u1")] == events
        assert [r.event for r in log.read_all()] == events

    def test_a_log_nobody_wrote_to_is_empty(self, log: LogBackend) -> None:
        assert log.read("u1") == []
        assert list(log.read_all()) == []
        assert log.last_position() == 0

    def test_an_append_of_no_events_writes_nothing(self, log: LogBackend) -> None:
        append(log, "u1", [initiated()])
        row_before = log.session_row("u1")

        assert log.append("u1", 1, [], changes_after(state_of(log, "u1"), [])) == []

        assert [r.version for r in log.read("u1")] == [1]
        assert log.last_position() == 1
        assert log.session_row("u1") == row_before

    @pytest.mark.parametrize("stale", [1, 3], ids=["behind", "ahead"])
    def test_an_append_at_another_version_raises_and_writes_nothing(
        self, log: LogBackend, stale: int
    ) -> None:
        append(log, "u1", [initiated()])
        append(log, "u1", [ChunkStored(0, D0, 1000)])
        row_before = log.session_row("u1")
        events: list[KnownEvent] = [ChunkStored(1, D1, 1000)]

        with pytest.raises(ConcurrencyConflict) as conflict:
            log.append("u1", stale, events, changes_after(state_of(log, "u1"), events))

        assert conflict.value.extensions["actual"] == 2
        assert conflict.value.extensions["expected"] == stale
        assert [r.version for r in log.read("u1")] == [1, 2]
        assert log.last_position() == 2
        assert log.session_row("u1") == row_before
        assert log.known_digests("alice", [D0, D1]) == {D0}

    def test_an_append_to_a_new_stream_must_expect_version_zero(self, log: LogBackend) -> None:
        with pytest.raises(ConcurrencyConflict):
            log.append("u1", 1, [initiated()], project(replay([initiated()]), [initiated()]))

        assert log.read("u1") == []
        assert log.session_row("u1") is None
        assert log.last_position() == 0

    def test_positions_order_every_stream_globally(self, log: LogBackend) -> None:
        append(log, "u1", [initiated()])
        append(log, "u2", [initiated("bob")])
        append(log, "u1", [ChunkStored(0, D0, 1000)])

        everything = list(log.read_all())

        assert [(r.stream_id, r.version) for r in everything] == [("u1", 1), ("u2", 1), ("u1", 2)]
        assert [r.position for r in everything] == sorted(r.position for r in everything)
        assert [r.stream_id for r in log.read_all(after_position=everything[0].position)] == [
            "u2",
            "u1",
        ]
        assert list(all_stream_ids(log)) == ["u1", "u2"]

    def test_read_all_is_gap_free_and_resumes_from_any_position(self, log: LogBackend) -> None:
        append(log, "u1", [initiated()])
        append(log, "u2", [initiated("bob"), ChunkStored(0, D0, 1000)])
        append(log, "u1", BOTH_CHUNKS)
        append(log, "u3", [initiated("carol")])

        everything = list(log.read_all())

        assert [r.position for r in everything] == [1, 2, 3, 4, 5, 6]
        assert everything == sorted(
            (r for stream in ("u1", "u2", "u3") for r in log.read(stream)),
            key=lambda r: r.position,
        )
        for seen in range(len(everything) + 1):
            assert list(log.read_all(after_position=seen)) == everything[seen:]
        assert list(log.read_all(after_position=100)) == []

    def test_read_all_pages_through_more_events_than_one_batch(self, log: LogBackend) -> None:
        append(log, "u1", [initiated()])
        for start in range(0, 2500, 500):
            append(log, "u1", [ChunkStored(i, f"{i:064x}", 1) for i in range(start, start + 500)])

        positions = [r.position for r in log.read_all()]

        assert positions == list(range(1, 2502))
        for seen in (999, 1000, 1001, 1999, 2000, 2001, 2500):
            assert [r.position for r in log.read_all(seen)] == list(range(seen + 1, 2502))

    def test_read_streams_gives_each_stream_whole_in_stream_id_order(self, log: LogBackend) -> None:
        append(log, "u2", [initiated("bob")])
        append(log, "u1", [initiated()])
        append(log, "u2", [ChunkStored(0, D0, 1000)])
        append(log, "u3", [initiated("carol")])

        streams = list(log.read_streams(log.last_position()))

        assert [[(r.stream_id, r.version) for r in s] for s in streams] == [
            [("u1", 1)],
            [("u2", 1), ("u2", 2)],
            [("u3", 1)],
        ]
        assert streams == [log.read(stream_id) for stream_id in ("u1", "u2", "u3")]

    def test_read_streams_stops_at_the_position_given(self, log: LogBackend) -> None:
        append(log, "u1", [initiated()])
        append(log, "u2", [initiated("bob")])
        seen = log.last_position()
        append(log, "u1", [ChunkStored(0, D0, 1000)])
        append(log, "u0", [initiated("carol")])

        streams = list(log.read_streams(seen))

        assert [[(r.stream_id, r.version) for r in s] for s in streams] == [
            [("u1", 1)],
            [("u2", 1)],
        ]

    def test_read_streams_pages_through_streams_longer_than_one_batch(
        self, log: LogBackend
    ) -> None:
        for stream_id in ("a", "b"):
            append(log, stream_id, [initiated()])
            for start in range(0, 2500, 500):
                chunks: list[KnownEvent] = [
                    ChunkStored(i, f"{i:064x}", 1) for i in range(start, start + 500)
                ]
                append(log, stream_id, chunks)

        streams = list(log.read_streams(log.last_position()))

        assert [[r.version for r in s] for s in streams] == [list(range(1, 2502))] * 2
        assert [s[0].stream_id for s in streams] == ["a", "b"]

    def test_last_position_is_the_newest_events(self, log: LogBackend) -> None:
        append(log, "u1", [initiated()])
        assert log.last_position() == 1
        recorded = log.append(
            "u2", 0, [initiated("bob")], project(replay([initiated("bob")]), [initiated("bob")])
        )

        assert log.last_position() == recorded[-1].position == 2
        assert log.last_position() == list(log.read_all())[-1].position

    def test_the_precondition_runs_once_before_anything_is_written(self, log: LogBackend) -> None:
        append(log, "u1", [initiated()])
        seen: list[tuple[int, int]] = []

        def precondition() -> None:
            seen.append((len(log.read("u1")), log.last_position()))

        append(log, "u1", [ChunkStored(0, D0, 1000)], precondition)

        assert seen == [(1, 1)]
        assert [r.version for r in log.read("u1")] == [1, 2]

    def test_a_refusing_precondition_refuses_the_append_and_writes_nothing(
        self, log: LogBackend
    ) -> None:
        append(log, "u1", [initiated()])
        row_before = log.session_row("u1")

        def refuse() -> None:
            raise TooManySessions("no more")

        with pytest.raises(TooManySessions):
            append(log, "u1", [ChunkStored(0, D0, 1000)], refuse)
        with pytest.raises(TooManySessions):
            append(log, "u2", [initiated("bob")], refuse)

        assert [r.version for r in log.read("u1")] == [1]
        assert log.read("u2") == []
        assert log.last_position() == 1
        assert log.session_row("u1") == row_before
        assert log.session_row("u2") is None
        assert log.known_digests("alice", [D0]) == set()

    def test_of_appends_racing_at_one_version_exactly_one_lands(self, log: LogBackend) -> None:
        state = append(log, "u1", [initiated()])
        outcomes: dict[int, str] = {}

        def race(n: int) -> None:
            events: list[KnownEvent] = [ChunkStored(n % 2, f"{n:064x}", 1000)]
            try:
                log.append("u1", state.version, events, changes_after(state, events))
                outcomes[n] = "appended"
            except ConcurrencyConflict:
                outcomes[n] = "conflict"

        run_together(race)

        assert sorted(outcomes.values()) == ["appended"] + ["conflict"] * (THREADS - 1)
        (winner,) = (n for n, outcome in outcomes.items() if outcome == "appended")
        recorded = log.read("u1")
        assert [r.version for r in recorded] == [1, 2]
        assert recorded[1].event == ChunkStored(winner % 2, f"{winner:064x}", 1000)
        assert log.last_position() == 2
        row = log.session_row("u1")
        assert row is not None and (row["version"], row["received_chunks"]) == (2, 1)

    def test_concurrent_appends_to_different_streams_are_gap_free_in_commit_order(
        self, log: LogBackend
    ) -> None:
        appends_each = 20
        total = THREADS * (1 + appends_each)
        writers_done = threading.Event()
        followed: list[list[int]] = [[], []]

        def follow(seen: list[int]) -> None:
            # A reader that keeps up from the last position it saw, as a projection
            # catching up does: anything committed after it must still come its way.
            position = 0
            while True:
                finished = writers_done.is_set()
                for recorded in log.read_all(position):
                    seen.append(recorded.position)
                    position = recorded.position
                if finished:
                    return
                time.sleep(0.001)

        readers = [threading.Thread(target=follow, args=(seen,)) for seen in followed]
        for reader in readers:
            reader.start()

        def write(n: int) -> None:
            append(log, f"u{n}", [initiated(f"owner{n}")])
            for index in range(appends_each):
                append(log, f"u{n}", [ChunkStored(index, f"{n:032x}{index:032x}", 10)])

        try:
            run_together(write)
        finally:
            writers_done.set()
            for reader in readers:
                reader.join(120)
        assert not any(reader.is_alive() for reader in readers)

        everything = list(log.read_all())
        assert [r.position for r in everything] == list(range(1, total + 1))
        for seen in followed:
            assert seen == list(range(1, total + 1))  # each event once, none skipped
        for n in range(THREADS):
            versions = [r.version for r in everything if r.stream_id == f"u{n}"]
            assert versions == list(range(1, appends_each + 2))

    def test_a_precondition_holds_against_concurrent_writers(self, log: LogBackend) -> None:
        limit = 3
        opened: list[int] = []
        refused: list[int] = []

        def open_one(n: int) -> None:
            def under_the_limit() -> None:
                if log.count_open_sessions("alice", NOW) >= limit:
                    raise TooManySessions("alice has enough open sessions")

            try:
                append(log, f"u{n}", [initiated()], under_the_limit)
                opened.append(n)
            except TooManySessions:
                refused.append(n)

        run_together(open_one)

        assert (len(opened), len(refused)) == (limit, THREADS - limit)
        assert sorted(all_stream_ids(log)) == sorted(f"u{n}" for n in opened)
        assert log.count_open_sessions("alice", NOW) == limit


def populate(log: EventLog) -> dict[str, SessionState]:
    """Sessions in every state that counts differently: upload id -> state."""
    completed: list[KnownEvent] = [
        initiated(),
        *BOTH_CHUNKS,
        MANIFEST,
        UploadCompleted("files/completed/a.bin", "application/octet-stream"),
    ]
    histories: dict[str, list[KnownEvent]] = {
        "active": [initiated(), ChunkStored(0, D0, 1000)],
        "short": [initiated(ttl_hours=1)],
        "assembling": [initiated(), *BOTH_CHUNKS, MANIFEST],
        "stream": [stream_created(), ChunkStored(0, D2, 1500)],
        "completed": completed,
        "deleted": [*completed, UploadDeleted("by its owner")],
        "failed": [initiated(), *BOTH_CHUNKS, MANIFEST, ValidationFailed("mime-mismatch")],
        "cancelled": [initiated(), UploadCancelled("x")],
        "expired": [initiated(), UploadExpired()],
        "bobs": [initiated("bob"), ChunkStored(0, D1, 1000)],
    }
    return {upload_id: append(log, upload_id, events) for upload_id, events in histories.items()}


class SessionIndexContract(LogContract):
    """The projections as the appends' row changes left them, and the queries whose
    meaning ``chunkstore.projections`` defines (``is_open``, ``bytes_held``)."""

    def test_the_session_row_is_written_with_the_events(self, log: LogBackend) -> None:
        state = append(log, "u1", [initiated(), ChunkStored(0, D0, 1000)])

        row = log.session_row("u1")

        assert row == session_row(state)
        assert row is not None
        assert (row["status"], row["received_chunks"], row["version"]) == ("active", 1, 2)

    def test_every_row_is_the_projection_of_its_sessions_state(self, log: LogBackend) -> None:
        states = populate(log)

        for upload_id, state in states.items():
            assert log.session_row(upload_id) == session_row(state), upload_id
        assert log.session_row("nobody's") is None

    def test_session_rows_lists_every_row_by_upload_id(self, log: LogBackend) -> None:
        states = populate(log)

        rows = list(log.session_rows())

        assert [row["upload_id"] for row in rows] == sorted(states)
        assert rows == [session_row(states[upload_id]) for upload_id in sorted(states)]

    def test_open_sessions_count_only_live_ones_of_that_owner(self, log: LogBackend) -> None:
        append(log, "live", [initiated()])
        append(log, "cancelled", [initiated(), UploadCancelled("x")])
        append(log, "expired", [initiated(ttl_hours=1)])
        append(log, "bob's", [initiated("bob")])

        assert log.count_open_sessions("alice", NOW) == 2
        assert log.count_open_sessions("alice", NOW + timedelta(hours=2)) == 1
        assert log.count_open_sessions("bob", NOW) == 1
        assert log.count_open_sessions("carol", NOW) == 0

    @pytest.mark.parametrize(
        ("later", "open_sessions", "held"),
        [
            # active, short, assembling and stream are open; completed holds its file;
            # stream has received more than its (deferred, so 0) declared size.
            (timedelta(0), 4, 2000 + 2000 + 2000 + 1500 + 2000),
            # short expires exactly now: no longer open.
            (timedelta(hours=1), 3, 2000 + 2000 + 1500 + 2000),
            (timedelta(hours=48), 0, 2000),
        ],
        ids=["now", "at-short-expiry", "after-all-expire"],
    )
    def test_open_sessions_and_bytes_held_follow_the_projections_meaning(
        self, log: LogBackend, later: timedelta, open_sessions: int, held: int
    ) -> None:
        populate(log)
        now = NOW + later
        rows = list(log.session_rows())

        for owner in ("alice", "bob", "carol"):
            owned = [row for row in rows if row["owner"] == owner]
            assert log.count_open_sessions(owner, now) == sum(is_open(r, now) for r in owned)
            assert log.bytes_held(owner, now) == sum(bytes_held(r, now) for r in owned)
        assert log.count_open_sessions("alice", now) == open_sessions
        assert log.bytes_held("alice", now) == held
        assert log.bytes_held("carol", now) == 0

    def test_known_digests_are_the_owners_own(self, log: LogBackend) -> None:
        append(log, "a", [initiated("alice"), *BOTH_CHUNKS])
        append(log, "b", [initiated("bob"), ChunkStored(0, D1, 1000)])

        assert log.known_digests("alice", [D0, D1, D2]) == {D0, D1}
        assert log.known_digests("bob", [D0, D1, D2]) == {D1}
        assert log.known_digests("bob", [D0]) == set()
        assert log.known_digests("carol", [D0, D1]) == set()
        assert log.known_digests("alice", []) == set()
        assert log.known_digests("alice", iter([D0, D0, D2])) == {D0}

    def test_known_digests_answers_for_many_digests_at_once(self, log: LogBackend) -> None:
        stored = [f"{i:064x}" for i in range(0, 1200, 3)]
        append(log, "a", [initiated()])
        append(log, "a", [ChunkStored(i, digest, 1) for i, digest in enumerate(stored)])

        asked = [f"{i:064x}" for i in range(1200)]

        assert log.known_digests("alice", asked) == set(stored)
        assert log.known_digests("bob", asked) == set()

    def test_owner_chunk_rows_hold_each_owners_chunk_once(self, log: LogBackend) -> None:
        append(log, "a1", [initiated("alice"), *BOTH_CHUNKS])
        append(log, "a2", [initiated("alice"), ChunkStored(0, D1, 1000)])
        append(log, "b", [initiated("bob"), ChunkStored(0, D0, 1000)])

        assert list(log.owner_chunk_rows()) == [
            ("alice", D0, 1000),
            ("alice", D1, 1000),
            ("bob", D0, 1000),
        ]

    def test_sessions_are_counted_by_status(self, log: LogBackend) -> None:
        assert log.count_sessions_by_status() == {}
        populate(log)

        assert log.count_sessions_by_status() == {
            "active": 4,
            "assembling": 1,
            "completed": 1,
            "deleted": 1,
            "failed": 1,
            "cancelled": 1,
            "expired": 1,
        }

    def test_rebuild_replaces_both_projections(self, log: LogBackend) -> None:
        states = populate(log)
        rows = [session_row(states[upload_id]) for upload_id in ("stream", "bobs", "active")]
        rows[2] = {**rows[2], "status": "cancelled"}
        chunks: list[OwnerChunk] = [("carol", D2, 5), ("bob", D1, 1000)]

        log.rebuild(rows, iter(chunks), log.last_position())

        assert list(log.session_rows()) == sorted(rows, key=lambda row: row["upload_id"])
        assert log.session_row("completed") is None
        assert list(log.owner_chunk_rows()) == sorted(chunks)
        assert log.known_digests("alice", [D0, D1, D2]) == set()
        assert log.known_digests("carol", [D0, D1, D2]) == {D2}
        assert log.count_open_sessions("alice", NOW) == 1
        assert log.count_sessions_by_status() == {"active": 2, "cancelled": 1}

    def test_rebuild_refuses_when_the_log_moved_and_changes_nothing(self, log: LogBackend) -> None:
        states = populate(log)
        built_at = log.last_position()
        append(log, "late", [initiated("carol"), ChunkStored(0, D2, 10)])
        rows_before = list(log.session_rows())
        chunks_before = list(log.owner_chunk_rows())

        with pytest.raises(ConcurrencyConflict) as conflict:
            log.rebuild([session_row(states["active"])], [], built_at)

        assert conflict.value.extensions == {"expected": built_at, "actual": built_at + 2}
        assert list(log.session_rows()) == rows_before
        assert list(log.owner_chunk_rows()) == chunks_before

    def test_appends_after_a_rebuild_keep_the_rebuilt_rows_current(self, log: LogBackend) -> None:
        append(log, "u1", [initiated()])
        log.rebuild([], [], log.last_position())
        assert log.session_row("u1") is None

        state = append(log, "u1", [ChunkStored(0, D0, 1000)])

        assert log.session_row("u1") == session_row(state)
        assert log.known_digests("alice", [D0]) == {D0}


class SweepGuardContract(LogContract):
    """The log's write lock: while it is held no append commits, and the holder sees
    every append committed before it."""

    def test_an_append_waits_while_the_log_is_write_locked(self, log: LogBackend) -> None:
        append(log, "u1", [initiated()])
        started, precondition_ran = threading.Event(), threading.Event()
        failures: list[BaseException] = []

        def writer() -> None:
            started.set()
            try:
                append(log, "u1", [ChunkStored(0, D0, 1000)], precondition_ran.set)
            except BaseException as error:
                failures.append(error)

        thread = threading.Thread(target=writer)
        with log.write_locked():
            thread.start()
            assert started.wait(60)
            # Not a timing window: on a log that holds the writer back this wait always
            # runs out; one that let it through is caught unless the writer is slower.
            assert not precondition_ran.wait(0.2)
            assert log.last_position() == 1
        thread.join(60)

        assert not thread.is_alive() and failures == []
        assert precondition_ran.is_set()
        assert [r.version for r in log.read("u1")] == [1, 2]

    def test_the_holder_reads_every_committed_event_under_the_lock(self, log: LogBackend) -> None:
        append(log, "u1", [initiated()])
        append(log, "u2", [initiated("bob"), ChunkStored(0, D0, 1000)])
        before: list[RecordedEvent] = list(log.read_all())

        with log.write_locked():
            assert list(log.read_all()) == before
            assert log.last_position() == 3
            assert log.known_digests("bob", [D0]) == {D0}
