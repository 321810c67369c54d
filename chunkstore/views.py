"""Typed views of a session's state: what answers, receipts and reports say of it.

One definition of each view, built from ``SessionState`` here and used by the HTTP API
(as its answer bodies), the CLI and the client (which read them back as JSON). Every
list in a view is bounded (``chunkstore.listing``), whatever the session's size.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from chunkstore.listing import list_chunks
from chunkstore.session import SessionState


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """What a chunk receipt says of the session: counts, as the seed's chunk answer."""

    upload_id: str
    received_chunks: int
    total_chunks: int
    missing_count: int
    bytes_total: int
    bytes_received: int
    bytes_deduplicated: int
    #: Percentage of the file's bytes stored (``percentage`` in every answer).
    progress: float
    percentage: float


class ChunkReceipt(Progress, frozen=True, kw_only=True):
    chunk_index: int
    digest: str
    size: int
    #: False when this index was already stored with these bytes (nothing appended).
    stored: bool


class BatchReceipt(Progress, frozen=True, kw_only=True):
    #: Indexes this request stored, including other indexes filled by the same digest:
    #: the first ``MAX_LISTED_INDEXES`` (one frame can fill millions of repeats).
    stored: list[int]
    stored_count: int


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    upload_id: str
    status: str
    #: ``files/<upload_id>/<name>``, or ``manifest:<digest>`` when no file was made
    #: (materialization ``none``).
    file_path: str
    size: int
    sha256: str
    blake3: str
    detected_mime: str
    manifest_digest: str
    bytes_total: int
    bytes_received: int
    bytes_deduplicated: int


def progress_fields(state: SessionState) -> dict[str, Any]:
    return {
        "upload_id": state.upload_id,
        "received_chunks": state.received_count,
        "total_chunks": state.total_chunks,
        "missing_count": state.missing_count,
        "bytes_total": state.total_size,
        "bytes_received": state.bytes_received,
        "bytes_deduplicated": state.bytes_deduplicated,
        "progress": state.progress,
        "percentage": state.progress,
    }


class InitAnswer(msgspec.Struct):
    upload_id: str
    status: str
    filename: str
    total_size: int
    chunk_size: int
    total_chunks: int
    expires_at: datetime
    #: The first missing indexes (at most 10,000; see ``chunks_truncated``).
    missing_chunks: list[int]
    #: What to send: one index per distinct digest the server still needs (at most
    #: 10,000; ``GET status?from=next_from`` lists the rest).
    needed_chunks: list[int]
    missing_count: int
    needed_count: int
    chunks_truncated: bool
    next_from: int | None
    #: Chunks with a declared digest and size (manifest mode: the pages so far).
    declared_chunks: int
    #: Most chunks one request may declare.
    chunk_page_size: int
    #: An open chunk list (``chunk_list_open`` at init) still takes pages: the declared
    #: sizes do not add up to ``total_size`` yet; ``total_chunks`` counts those declared.
    chunk_list_open: bool
    bytes_total: int
    bytes_received: int
    bytes_deduplicated: int


class ChunkPageAnswer(msgspec.Struct):
    upload_id: str
    status: str
    start: int
    declared_chunks: int
    total_chunks: int
    #: Indexes of this page still to send: one per digest neither you nor the session
    #: has (at most one page).
    needed_chunks: list[int]
    #: Indexes still to send in the whole session.
    needed_count: int
    chunk_page_size: int
    #: More pages are expected (see ``InitAnswer.chunk_list_open``).
    chunk_list_open: bool
    bytes_total: int
    bytes_received: int
    bytes_deduplicated: int


class QuotaAnswer(msgspec.Struct):
    #: Bytes counting towards the owner's quota: open sessions' declared sizes and
    #: completed (not deleted) files.
    used: int
    #: The quota (``CHUNKSTORE_QUOTA_BYTES``); null when there is none.
    limit: int | None


class StatusProgress(msgspec.Struct):
    """The seed's ``progress`` object: its clients resume from ``missing_chunks``."""

    percentage: float
    received_chunks: list[int]
    missing_chunks: list[int]
    total_chunks: int
    received_count: int
    missing_count: int


class StatusAnswer(msgspec.Struct):
    """A session's status. Its chunk lists and ranges are bounded and start at the
    ``from`` index asked for: each is complete up to ``next_from`` (None: to the end)."""

    upload_id: str
    status: str
    filename: str
    mime_type: str
    total_size: int
    chunk_size: int
    total_chunks: int
    #: ``[first, last]`` runs (inclusive), at most 1,000 each.
    received_ranges: list[tuple[int, int]]
    missing_ranges: list[tuple[int, int]]
    #: Index lists, at most 10,000 each.
    received_chunks: list[int]
    missing_chunks: list[int]
    needed_chunks: list[int]
    #: Full counts, whatever was cut.
    received_count: int
    missing_count: int
    needed_count: int
    chunks_truncated: bool
    next_from: int | None
    #: Chunks with a declared digest and size (manifest mode: the pages so far).
    declared_chunks: int
    #: More pages are expected (see ``InitAnswer.chunk_list_open``).
    chunk_list_open: bool
    bytes_total: int
    bytes_received: int
    bytes_deduplicated: int
    #: Percentage of the file's bytes stored, 0-100.
    percentage: float
    progress: StatusProgress
    created_at: datetime | None
    expires_at: datetime | None
    file_path: str | None = None
    sha256: str | None = None
    detected_mime: str | None = None
    failure_reason: str | None = None
    failure_detail: str | None = None
    #: The asking owner's quota use (all its uploads, not only this one).
    quota: QuotaAnswer | None = None


def init_answer(state: SessionState, chunk_page_size: int) -> InitAnswer:
    """What ``init`` answers: the new session and the (first) chunks still to send."""
    assert state.expires_at is not None
    listing = list_chunks(state)
    return InitAnswer(
        upload_id=state.upload_id,
        status=state.status,
        filename=state.filename,
        total_size=state.total_size,
        chunk_size=state.chunk_size,
        total_chunks=state.total_chunks,
        expires_at=state.expires_at,
        missing_chunks=listing.missing_chunks,
        needed_chunks=listing.needed_chunks,
        missing_count=listing.missing_count,
        needed_count=listing.needed_count,
        chunks_truncated=listing.chunks_truncated,
        next_from=listing.next_from,
        declared_chunks=state.declared_chunks,
        chunk_page_size=chunk_page_size,
        chunk_list_open=state.chunk_list_pending,
        bytes_total=state.total_size,
        bytes_received=state.bytes_received,
        bytes_deduplicated=state.bytes_deduplicated,
    )


def page_answer(
    state: SessionState, start: int, needed: list[int], chunk_page_size: int
) -> ChunkPageAnswer:
    """What declaring a page of the chunk list answers."""
    return ChunkPageAnswer(
        upload_id=state.upload_id,
        status=state.status,
        start=start,
        declared_chunks=state.declared_chunks,
        total_chunks=state.total_chunks,
        needed_chunks=needed,
        needed_count=state.needed_count,
        chunk_page_size=chunk_page_size,
        chunk_list_open=state.chunk_list_pending,
        bytes_total=state.total_size,
        bytes_received=state.bytes_received,
        bytes_deduplicated=state.bytes_deduplicated,
    )


def status_answer(
    state: SessionState, now: datetime, start: int = 0, quota: QuotaAnswer | None = None
) -> StatusAnswer:
    """What ``status`` (and ``cancel``) answers; lists start at index ``start``."""
    summary = state_summary(state, now, start)
    return StatusAnswer(
        **{**summary, "progress": StatusProgress(**summary["progress"])}, quota=quota
    )


def completion_of(state: SessionState) -> Completion:
    assert state.manifest is not None and state.file_path is not None
    return Completion(
        bytes_total=state.total_size,
        bytes_received=state.bytes_received,
        bytes_deduplicated=state.bytes_deduplicated,
        upload_id=state.upload_id,
        status=state.status,
        file_path=state.file_path,
        size=state.manifest.size,
        sha256=state.manifest.sha256,
        blake3=state.manifest.blake3,
        detected_mime=state.detected_mime or "",
        manifest_digest=state.manifest.manifest_digest,
    )


def state_summary(state: SessionState, now: datetime, start: int = 0) -> dict[str, Any]:
    """Everything a status answer reports, as plain values; the chunk lists and ranges
    are bounded and start at index ``start`` (see ``chunkstore.listing``)."""
    listing = list_chunks(state, start)
    return {
        "upload_id": state.upload_id,
        "status": state.effective_status(now),
        "filename": state.filename,
        "mime_type": state.mime_type,
        "total_size": state.total_size,
        "chunk_size": state.chunk_size,
        "total_chunks": state.total_chunks,
        **msgspec.structs.asdict(listing),
        "declared_chunks": state.declared_chunks,
        "chunk_list_open": state.chunk_list_pending,
        "bytes_total": state.total_size,
        "bytes_received": state.bytes_received,
        "bytes_deduplicated": state.bytes_deduplicated,
        "percentage": state.progress,
        # The seed's shape: its clients resume from progress["missing_chunks"].
        "progress": {
            "percentage": state.progress,
            "received_chunks": listing.received_chunks,
            "missing_chunks": listing.missing_chunks,
            "total_chunks": state.total_chunks,
            "received_count": listing.received_count,
            "missing_count": listing.missing_count,
        },
        "created_at": state.created_at,
        "expires_at": state.expires_at,
        "file_path": state.file_path,
        "sha256": state.manifest.sha256 if state.manifest else None,
        "detected_mime": state.detected_mime,
        "failure_reason": state.failure_reason,
        "failure_detail": state.failure_detail,
    }
