"""The event log port: append-only streams of session events, and the projections.

Invariant 2: an append states the version it expects the stream to be at and raises
``ConcurrencyConflict`` when another writer got there first; the caller reloads and
decides again. The row changes of an append (``chunkstore.projections``) are written in
the same transaction as its events. Every event also gets a global position: readers
follow ``read_all`` from a position and never miss an event committed after it.

Three narrow protocols, which one backend object usually implements together:
``EventLog`` (the streams), ``SessionIndex`` (reads of the projections) and, as an
optional capability, ``SweepGuard`` (a write lock gc deletes blobs under).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

import msgspec

from chunkstore.events import Event, KnownEvent
from chunkstore.projections import OwnerChunk, RowChanges, SessionRow


class RecordedEvent(msgspec.Struct, frozen=True):
    stream_id: str
    version: int
    position: int
    recorded_at: datetime
    event: Event


class EventLog(Protocol):
    def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[KnownEvent],
        changes: RowChanges,
        precondition: Callable[[], None] | None = None,
    ) -> list[RecordedEvent]:
        """Append ``events`` after version ``expected_version`` of the stream, with their
        row changes, atomically; or raise ``ConcurrencyConflict``. ``precondition`` runs
        under the write lock before anything is written and may raise to refuse the
        append (a limit that concurrent writers must not overrun)."""
        ...

    def read(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        """The stream's events after ``after_version``, in version order."""
        ...

    def read_all(self, after_position: int = 0) -> Iterator[RecordedEvent]:
        """Every event of every stream after ``after_position``, in position order."""
        ...

    def read_streams(self, up_to_position: int) -> Iterator[list[RecordedEvent]]:
        """Every stream's events at positions up to ``up_to_position``, one stream at a
        time (each in version order), streams in stream id order: a reader that checks
        the whole log holds one stream, never the log. A stream with no event that old
        is left out."""
        ...

    def last_position(self) -> int:
        """The position of the newest event (0 for an empty log)."""
        ...

    def close(self) -> None: ...


class SessionIndex(Protocol):
    """Reads of the projections (``chunkstore.projections`` defines their rows)."""

    def session_row(self, upload_id: str) -> SessionRow | None: ...

    def session_rows(self) -> Iterator[SessionRow]:
        """Every ``sessions`` row, by upload id."""
        ...

    def count_open_sessions(self, owner: str, now: datetime) -> int:
        """Sessions of ``owner`` that are open now (``projections.is_open``)."""
        ...

    def bytes_held(self, owner: str, now: datetime) -> int:
        """What ``owner``'s sessions count towards its quota (``projections.bytes_held``)."""
        ...

    def known_digests(self, owner: str, digests: Iterable[str]) -> set[str]:
        """Which of ``digests`` this owner has stored before (``owner_chunks``)."""
        ...

    def owner_chunk_rows(self) -> Iterator[OwnerChunk]:
        """Every ``owner_chunks`` row, by owner and digest."""
        ...

    def count_sessions_by_status(self) -> dict[str, int]: ...

    def rebuild(
        self, rows: Iterable[SessionRow], chunks: Iterable[OwnerChunk], built_at_position: int
    ) -> None:
        """Replace both projections with ones rebuilt from the events up to
        ``built_at_position``, at once; ``ConcurrencyConflict`` if the log moved since.
        ``rows`` and ``chunks`` may be generators that read this log as they go (made
        one stream at a time): they are consumed before the write lock is taken, and a
        chunk given twice is stored once."""
        ...


class SweepGuard(Protocol):
    """The log's write lock, held while gc deletes blobs: an append that names a chunk
    is then wholly before the deletion (and gc sees it) or wholly after it (and its
    precondition finds the chunk gone)."""

    def write_locked(self) -> AbstractContextManager[None]: ...
