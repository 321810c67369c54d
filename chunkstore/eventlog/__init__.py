"""Event stores: append-only logs of session events, plus the ``sessions`` projection.

Invariant 2: an append states the version it expects the stream to be at and raises
``ConcurrencyConflict`` when another writer got there first; the caller reloads and
decides again. The projection row is written in the same transaction as the events,
and ``session_row`` (a pure function of state) is the one definition of it, so a
projection can always be rebuilt from, and checked against, the events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from chunkstore.events import Event, KnownEvent
from chunkstore.session import SessionState

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def iso(moment: datetime | None) -> str | None:
    """Fixed-width UTC text, so that string order is time order in SQL."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_iso(text: str) -> datetime:
    # fromisoformat reads the "Z" form since Python 3.11 and takes a tenth of the time
    # of strptime, which was the largest cost of replaying the whole log.
    return datetime.fromisoformat(text)


class RecordedEvent(msgspec.Struct, frozen=True):
    stream_id: str
    version: int
    position: int
    recorded_at: datetime
    event: Event


SESSION_COLUMNS = (
    "upload_id",
    "owner",
    "filename",
    "status",
    "mode",
    "mime_type",
    "detected_mime",
    "total_size",
    "total_chunks",
    "chunk_size",
    "received_chunks",
    "bytes_received",
    "created_at",
    "expires_at",
    "file_path",
    "sha256",
    "manifest_digest",
    "failure_reason",
    "version",
)


def session_row(state: SessionState) -> dict[str, Any]:
    """The ``sessions`` projection row of a state (stored status, not effective)."""
    return {
        "upload_id": state.upload_id,
        "owner": state.owner,
        "filename": state.filename,
        "status": state.status,
        "mode": state.mode,
        "mime_type": state.mime_type,
        "detected_mime": state.detected_mime,
        "total_size": state.total_size,
        "total_chunks": state.total_chunks,
        "chunk_size": state.chunk_size,
        "received_chunks": len(state.chunks),
        "bytes_received": state.bytes_received,
        "created_at": iso(state.created_at),
        "expires_at": iso(state.expires_at),
        "file_path": state.file_path,
        "sha256": state.manifest.sha256 if state.manifest else None,
        "manifest_digest": state.manifest.manifest_digest if state.manifest else None,
        "failure_reason": state.failure_reason,
        "version": state.version,
    }


class EventStore(Protocol):
    def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[KnownEvent],
        projection: dict[str, Any],
        precondition: Callable[[], None] | None = None,
    ) -> list[RecordedEvent]:
        """Append atomically with the new projection row, or raise ConcurrencyConflict.

        ``precondition`` runs under the write lock before anything is written and may
        raise to refuse the append (a limit that concurrent writers must not overrun).
        """

    def read(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]: ...

    def read_all(self, after_position: int = 0) -> Iterator[RecordedEvent]:
        """Every event of every stream in global order."""

    def stream_ids(self) -> Iterator[str]: ...

    def session_row(self, upload_id: str) -> dict[str, Any] | None: ...

    def session_rows(self) -> Iterator[dict[str, Any]]: ...

    def count_open_sessions(self, owner: str, now: datetime) -> int: ...

    def bytes_held(self, owner: str, now: datetime) -> int:
        """What counts towards the owner's quota: each open session's declared size (or
        the bytes it received, if more: a tus upload of deferred length) and each
        completed upload's size. Cancelled, failed, expired and deleted ones count 0."""

    def known_digests(self, owner: str, digests: Iterable[str]) -> set[str]:
        """Which of ``digests`` this owner has stored before (the owner_chunks projection)."""

    def replace_session_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Overwrite projection rows (projection rebuild)."""

    # -- whole-store views (audit, gc, metrics) ------------------------------------------

    def last_position(self) -> int: ...

    def owner_chunk_rows(self) -> Iterator[tuple[str, str, int]]: ...

    def count_sessions_by_status(self) -> dict[str, int]: ...

    def rebuild_projections(
        self,
        rows: Sequence[dict[str, Any]],
        owner_chunks: Iterable[tuple[str, str, int]],
        built_at_position: int,
    ) -> None:
        """Replace both projections, or raise ConcurrencyConflict if the log moved on."""

    def write_locked(self) -> AbstractContextManager[None]:
        """Hold the write lock: no append commits meanwhile (gc's deletion batches)."""

    def close(self) -> None: ...
