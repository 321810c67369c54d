"""Projections: what the events say, as rows a backend stores and queries.

Pure functions of state and events, defined once here: the ``sessions`` table (one row
per upload, for listing, counting and filtering) and ``owner_chunks`` (which chunks
each owner has stored: "do you already have these?" is answered only from there, so
nobody can probe for another owner's content). An event log backend writes the
``RowChanges`` of an append in the same transaction as its events and otherwise only
stores and reads rows, so a projection can always be rebuilt from, and checked against,
the events (invariant 2).

The meaning of the queries backends answer from these rows is defined here too
(``is_open``, ``bytes_held``): the SQL of a backend restates them with the statuses
passed in as parameters, and the memory backend calls them as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec

from chunkstore.events import ChunkStored, Event
from chunkstore.session import OPEN_STATUSES, SessionState, Status

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


#: The ``sessions`` table: column -> type. ``upload_id`` is the key.
SESSION_SCHEMA: dict[str, type] = {
    "upload_id": str,
    "owner": str,
    "filename": str,
    "status": str,
    "mode": str,
    "mime_type": str,
    "detected_mime": str,
    "total_size": int,
    "total_chunks": int,
    "chunk_size": int,
    "received_chunks": int,
    "bytes_received": int,
    "created_at": str,
    "expires_at": str,
    "file_path": str,
    "sha256": str,
    "manifest_digest": str,
    "failure_reason": str,
    "version": int,
}
SESSION_COLUMNS = tuple(SESSION_SCHEMA)
#: The ``owner_chunks`` table: (owner, digest) is the key.
OWNER_CHUNK_SCHEMA: dict[str, type] = {"owner": str, "digest": str, "size": int}

SessionRow = dict[str, Any]
OwnerChunk = tuple[str, str, int]


def session_row(state: SessionState) -> SessionRow:
    """The ``sessions`` row of a state (the stored status, not the effective one)."""
    return {
        "upload_id": state.upload_id,
        "owner": state.owner,
        "filename": state.filename,
        "status": state.status.value,
        "mode": state.mode,
        "mime_type": state.mime_type,
        "detected_mime": state.detected_mime,
        "total_size": state.total_size,
        "total_chunks": state.total_chunks,
        "chunk_size": state.chunk_size,
        "received_chunks": state.received_count,
        "bytes_received": state.bytes_received,
        "created_at": iso(state.created_at),
        "expires_at": iso(state.expires_at),
        "file_path": state.file_path,
        "sha256": state.manifest.sha256 if state.manifest else None,
        "manifest_digest": state.manifest.manifest_digest if state.manifest else None,
        "failure_reason": state.failure_reason,
        "version": state.version,
    }


def owner_chunks(owner: str, events: Iterable[Event]) -> list[OwnerChunk]:
    """The ``owner_chunks`` rows some events of ``owner``'s session add."""
    return [(owner, event.digest, event.size) for event in events if isinstance(event, ChunkStored)]


class RowChanges(msgspec.Struct, frozen=True):
    """What an append changes in the projections: the session's row as it now is, and
    the owner's chunks it adds (a backend ignores those it already has)."""

    session: SessionRow
    owner_chunks: list[OwnerChunk]


def project(state: SessionState, events: Iterable[Event]) -> RowChanges:
    """The row changes of appending ``events``, where ``state`` is the state after them."""
    return RowChanges(session_row(state), owner_chunks(state.owner, events))


# -- the queries' meaning (restated in SQL by the SQL backends) ---------------------------

#: Statuses whose sessions count as open while unexpired (``count_open_sessions``).
OPEN_STATUS_VALUES = tuple(sorted(status.value for status in OPEN_STATUSES))
#: Completed files count towards the quota whatever their age.
HELD_STATUS_VALUES = (Status.COMPLETED.value,)


def is_open(row: SessionRow, now: datetime) -> bool:
    """Whether a session counts against its owner's open-session limit now."""
    expires_at = row["expires_at"]
    return row["status"] in OPEN_STATUS_VALUES and expires_at is not None and expires_at > iso(now)


def bytes_held(row: SessionRow, now: datetime) -> int:
    """What a session counts towards its owner's quota now: a completed file, or an open
    session's declared size (or more, if a deferred-length stream has received more)."""
    if row["status"] in HELD_STATUS_VALUES or is_open(row, now):
        return max(int(row["total_size"]), int(row["bytes_received"]))
    return 0
