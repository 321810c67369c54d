"""Replay: a session's events as a readable timeline, and its state at any moment.

The log is the truth (invariant 2), so "what happened to this upload?" is answered by
reading it back: one line per event, and the state as a fold of the events recorded up
to a given time. Events of types this version does not know are shown, not skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from chunkstore import events as ev
from chunkstore.eventlog import RecordedEvent
from chunkstore.projections import iso
from chunkstore.session import SessionState, replay

#: Fields left out of the one-line details (shown elsewhere, or too long to read).
_HIDDEN_FIELDS = frozenset({"chunk_list"})


def parse_moment(text: str) -> datetime:
    """An ISO 8601 time as given on a command line; a time without zone is UTC."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def entry(recorded: RecordedEvent) -> dict[str, Any]:
    """One timeline entry as plain values (a JSON line: version, type, recorded_at, ...)."""
    fields = ev.to_dict(recorded.event)
    fields.pop("type", None)
    chunk_list = fields.get("chunk_list")
    if chunk_list is not None:
        fields["chunk_list"] = len(chunk_list)
    return {
        "upload_id": recorded.stream_id,
        "version": recorded.version,
        "position": recorded.position,
        "type": ev.event_type(recorded.event),
        "recorded_at": iso(recorded.recorded_at),
        **fields,
    }


def details(recorded: RecordedEvent) -> str:
    """The event's fields as ``name=value`` pairs, for the table view."""
    fields = ev.to_dict(recorded.event)
    fields.pop("type", None)
    parts = []
    for name, value in fields.items():
        if name in _HIDDEN_FIELDS:
            if value:
                parts.append(f"{name}=[{len(value)} chunks]")
            continue
        if value is None or value == "":
            continue
        parts.append(f"{name}={value}")
    return " ".join(parts)


def state_at(recorded: Sequence[RecordedEvent], moment: datetime | None) -> SessionState:
    """The session as it was at ``moment``: the fold of events recorded until then."""
    upload_id = recorded[0].stream_id if recorded else ""
    return replay(
        (item.event for item in recorded if moment is None or item.recorded_at <= moment),
        SessionState.empty(upload_id),
    )


def state_summary(state: SessionState) -> dict[str, Any]:
    """The fields of a state worth showing under a timeline."""
    return {
        "upload_id": state.upload_id,
        "version": state.version,
        "status": state.status,
        "owner": state.owner,
        "filename": state.filename,
        "mode": state.mode,
        "total_size": state.total_size,
        "total_chunks": state.total_chunks,
        "received_chunks": state.received_count,
        "missing_chunks": state.missing_count,
        "bytes_received": state.bytes_received,
        "bytes_deduplicated": state.bytes_deduplicated,
        "created_at": iso(state.created_at),
        "expires_at": iso(state.expires_at),
        "manifest_digest": state.manifest.manifest_digest if state.manifest else None,
        "sha256": state.manifest.sha256 if state.manifest else None,
        "file_path": state.file_path,
        "detected_mime": state.detected_mime,
        "failure_reason": state.failure_reason,
        "failure_detail": state.failure_detail,
        "cancel_reason": state.cancel_reason,
    }


def format_table(recorded: Sequence[RecordedEvent], state: SessionState) -> str:
    """A terminal view: one row per event, then the state."""
    rows = [
        (str(item.version), iso(item.recorded_at) or "", ev.event_type(item.event), details(item))
        for item in recorded
    ]
    headers = ("#", "recorded at (UTC)", "event", "details")
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers[:3])]
    lines = [_row(headers, widths)]
    lines.extend(_row(row, widths) for row in rows)
    lines.append("")
    lines.append("state:")
    for name, value in state_summary(state).items():
        if value is not None:
            lines.append(f"  {name:<19} {value}")
    return "\n".join(lines)


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
    return "  ".join([*padded, *cells[len(widths) :]]).rstrip()
