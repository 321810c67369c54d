"""The event log in memory (``memory://``): for tests and quick experiments.

Everything lives in this process and is gone when it ends. One lock stands for the
database's write lock, so appends, rebuilds and gc's deletion batches exclude each other
exactly as they do on SQLite.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime

from chunkstore import events as ev
from chunkstore.errors import ConcurrencyConflict
from chunkstore.eventlog import RecordedEvent
from chunkstore.projections import (
    OwnerChunk,
    RowChanges,
    SessionRow,
    bytes_held,
    is_open,
)


class MemoryLog:
    """``EventLog``, ``SessionIndex`` and ``SweepGuard`` in this process's memory."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._events: list[RecordedEvent] = []
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._sessions: dict[str, SessionRow] = {}
        self._owner_chunks: set[OwnerChunk] = set()
        self._owner_digests: set[tuple[str, str]] = set()

    def close(self) -> None:
        pass

    # -- EventLog ------------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[ev.KnownEvent],
        changes: RowChanges,
        precondition: Callable[[], None] | None = None,
    ) -> list[RecordedEvent]:
        if not events:
            return []
        now = datetime.now(UTC)
        with self._lock:
            if precondition is not None:
                precondition()
            stream = self._streams.get(stream_id, [])
            if len(stream) != expected_version:
                raise ConcurrencyConflict(
                    f"stream {stream_id} is at version {len(stream)}, not {expected_version}",
                    stream_id=stream_id,
                    expected=expected_version,
                    actual=len(stream),
                )
            position = len(self._events)
            # Stored decoded from their encoding, as a database would give them back.
            recorded = [
                RecordedEvent(
                    stream_id, expected_version + n, position + n, now, ev.decode(ev.encode(event))
                )
                for n, event in enumerate(events, start=1)
            ]
            self._streams[stream_id] = [*stream, *recorded]
            self._events.extend(recorded)
            self._sessions[changes.session["upload_id"]] = dict(changes.session)
            self._add_owner_chunks(changes.owner_chunks)
        return recorded

    def _add_owner_chunks(self, chunks: Iterable[OwnerChunk]) -> None:
        for owner, digest, size in chunks:
            if (owner, digest) not in self._owner_digests:
                self._owner_digests.add((owner, digest))
                self._owner_chunks.add((owner, digest, size))

    def read(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        with self._lock:
            return list(self._streams.get(stream_id, [])[after_version:])

    def read_all(self, after_position: int = 0) -> Iterator[RecordedEvent]:
        position = after_position
        while True:
            with self._lock:
                batch = self._events[position : position + 1000]
            if not batch:
                return
            yield from batch
            position = batch[-1].position

    def read_streams(self, up_to_position: int) -> Iterator[list[RecordedEvent]]:
        with self._lock:
            stream_ids = sorted(self._streams)
        for stream_id in stream_ids:
            stream = [r for r in self.read(stream_id) if r.position <= up_to_position]
            if stream:
                yield stream

    def last_position(self) -> int:
        with self._lock:
            return len(self._events)

    # -- SessionIndex --------------------------------------------------------------------

    def session_row(self, upload_id: str) -> SessionRow | None:
        with self._lock:
            row = self._sessions.get(upload_id)
            return dict(row) if row is not None else None

    def session_rows(self) -> Iterator[SessionRow]:
        with self._lock:
            rows = [dict(self._sessions[key]) for key in sorted(self._sessions)]
        yield from rows

    def _rows_of(self, owner: str) -> list[SessionRow]:
        with self._lock:
            return [row for row in self._sessions.values() if row["owner"] == owner]

    def count_open_sessions(self, owner: str, now: datetime) -> int:
        return sum(1 for row in self._rows_of(owner) if is_open(row, now))

    def bytes_held(self, owner: str, now: datetime) -> int:
        return sum(bytes_held(row, now) for row in self._rows_of(owner))

    def known_digests(self, owner: str, digests: Iterable[str]) -> set[str]:
        with self._lock:
            return {digest for digest in digests if (owner, digest) in self._owner_digests}

    def owner_chunk_rows(self) -> Iterator[OwnerChunk]:
        with self._lock:
            rows = sorted(self._owner_chunks)
        yield from rows

    def count_sessions_by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._lock:
            for row in self._sessions.values():
                counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts

    def rebuild(
        self, rows: Iterable[SessionRow], chunks: Iterable[OwnerChunk], built_at_position: int
    ) -> None:
        rows, chunks = [dict(row) for row in rows], sorted(set(chunks))
        with self._lock:
            if len(self._events) != built_at_position:
                raise ConcurrencyConflict(
                    f"the log moved from position {built_at_position} to {len(self._events)}",
                    expected=built_at_position,
                    actual=len(self._events),
                )
            self._sessions = {row["upload_id"]: dict(row) for row in rows}
            self._owner_chunks, self._owner_digests = set(), set()
            self._add_owner_chunks(chunks)

    # -- SweepGuard ----------------------------------------------------------------------

    @contextlib.contextmanager
    def write_locked(self) -> Iterator[None]:
        with self._lock:
            yield
