"""Commands decide which events happen, given the current state. Pure: no I/O, no clock.

The service does the I/O around them: it loads state, calls a ``decide_*`` function,
and appends what it returns at the version it loaded (retrying on a conflict).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec

from chunkstore.bounds import (
    MAX_CANCEL_REASON,
    MAX_FILENAME_INPUT,
    MAX_MIME_TYPE,
    check_count,
    check_length,
    shorten,
)
from chunkstore.config import Settings
from chunkstore.errors import (
    ChecksumMismatch,
    ChunkConflict,
    ChunkIndexOutOfRange,
    ChunkListPastSize,
    ChunkNotDeclared,
    ChunkSizeMismatch,
    ChunkTooLarge,
    DeclarationConflict,
    InvalidRequest,
    NotAChunkUpload,
    QuotaExceeded,
    SessionExpired,
    TooLarge,
    TooManySessions,
    UploadIncomplete,
    UploadNotActive,
    UploadNotFound,
    ValidationFailed,
)
from chunkstore.events import (
    ChunksDeclared,
    ChunkStored,
    KnownEvent,
    UploadCancelled,
    UploadDeleted,
    UploadExpired,
    UploadInitiated,
)
from chunkstore.listing import list_chunks
from chunkstore.policy import check_declared_type, clean_filename
from chunkstore.session import SessionState, Status

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class InitRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a client declares when it starts an upload."""

    filename: str
    total_size: int
    mime_type: str = "application/octet-stream"
    #: SHA-256 hex of the whole file, checked by the validator when given.
    file_hash: str | None = None
    chunk_size: int | None = None
    #: Optional cross-check: must equal ceil(total_size / chunk_size).
    total_chunks: int | None = None
    #: Manifest mode: the client cut the file itself and declares every chunk as
    #: (BLAKE3 hex digest, size), in order. Chunks may then have any sizes.
    chunks: list[tuple[str, int]] | None = None
    #: Manifest mode, declared in pages: how many chunks the file has; ``chunks`` is
    #: then the first page (``decide_declare`` takes the next ones).
    chunk_count: int | None = None
    #: Manifest mode, declared in pages whose number is left open: ``chunks`` is the
    #: first page, and the list is complete once the sizes add up to ``total_size``.
    chunk_list_open: bool = False


#: Most chunks one session may have.
MAX_CHUNKS = 4_000_000
_BLAKE3_HEX = re.compile(r"[0-9a-f]{64}")


def decide_init(
    upload_id: str,
    owner: str,
    request: InitRequest,
    settings: Settings,
    now: datetime,
    open_sessions: int,
    known_digests: frozenset[str] = frozenset(),
    bytes_held: int = 0,
) -> list[KnownEvent]:
    """``known_digests``: digests of the declared chunks that this owner already has
    stored (manifest mode); their indexes are recorded at once as reused. ``bytes_held``:
    what already counts towards the owner's quota."""
    check_length("filename", request.filename, MAX_FILENAME_INPUT)
    check_length("mime_type", request.mime_type, MAX_MIME_TYPE)
    filename = clean_filename(request.filename)
    mime_type = check_declared_type(request.mime_type, settings)
    if request.total_size < 0:
        raise InvalidRequest("total_size must not be negative")
    if request.total_size > settings.max_file_size:
        raise TooLarge(
            f"file of {request.total_size} bytes exceeds the limit of {settings.max_file_size}",
            limit=settings.max_file_size,
        )
    if request.chunk_list_open:
        mode = "manifest"
        chunk_list = _checked_open_page(request, settings)
        total_chunks = len(chunk_list)
        chunk_size = max((size for _, size in chunk_list), default=0)
    elif request.chunks is not None or request.chunk_count is not None:
        mode = "manifest"
        chunk_list = _checked_page(request.chunks or [], 0, settings)
        total_chunks = len(chunk_list) if request.chunk_count is None else request.chunk_count
        if total_chunks > MAX_CHUNKS:
            raise TooLarge(f"at most {MAX_CHUNKS} chunks may be declared", limit=MAX_CHUNKS)
        if total_chunks < len(chunk_list) or total_chunks < 0:
            raise InvalidRequest(
                f"chunk_count is {total_chunks}; it must be at least the {len(chunk_list)}"
                " chunks of this request"
            )
        _check_declared_sizes(
            request.total_size,
            total_chunks,
            len(chunk_list),
            sum(size for _, size in chunk_list),
            settings,
        )
        chunk_size = max((size for _, size in chunk_list), default=0)
    else:
        mode = "fixed"
        chunk_list = None
        chunk_size = _checked_chunk_size(request, settings)
        total_chunks = math.ceil(request.total_size / chunk_size)
        if total_chunks > MAX_CHUNKS:
            raise TooLarge(
                f"{request.total_size} bytes in chunks of {chunk_size} make {total_chunks}"
                f" chunks; at most {MAX_CHUNKS} are allowed: use larger chunks",
                limit=MAX_CHUNKS,
            )
        if request.total_chunks is not None and request.total_chunks != total_chunks:
            raise InvalidRequest(
                f"total_chunks is {request.total_chunks}, but {request.total_size} bytes in"
                f" chunks of {chunk_size} make {total_chunks}"
            )
    file_hash = request.file_hash.lower() if request.file_hash else None
    if file_hash is not None and not _SHA256_HEX.fullmatch(file_hash):
        raise InvalidRequest("file_hash must be a SHA-256 hex digest (64 hex characters)")
    check_open_sessions(open_sessions, settings)
    check_quota(bytes_held, request.total_size, settings)
    initiated = UploadInitiated(
        owner=owner,
        filename=filename,
        total_size=request.total_size,
        mime_type=mime_type,
        chunk_size=chunk_size,
        total_chunks=total_chunks,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.session_ttl),
        mode=mode,
        file_hash=file_hash,
        chunk_list=chunk_list,
        chunk_list_open=request.chunk_list_open,
    )
    reused: list[KnownEvent] = [
        ChunkStored(index=index, digest=digest, size=size, reused=True)
        for index, (digest, size) in enumerate(chunk_list or ())
        if digest in known_digests
    ]
    return [initiated, *reused]


def _checked_open_page(request: InitRequest, settings: Settings) -> list[tuple[str, int]]:
    """The first page of a chunk list whose count is left open."""
    if request.chunk_count is not None or request.chunk_size is not None:
        raise InvalidRequest(
            "chunk_list_open leaves the number of chunks open and the client cuts them:"
            " send neither chunk_count nor chunk_size with it"
        )
    if request.total_chunks is not None:
        raise InvalidRequest("chunk_list_open leaves the number of chunks open: no total_chunks")
    chunk_list = _checked_page(request.chunks or [], 0, settings)
    _check_open_sizes(request.total_size, 0, chunk_list)
    return chunk_list


def _check_open_sizes(total_size: int, declared_size: int, page: Sequence[tuple[str, int]]) -> None:
    """A page of an open chunk list may bring the declared sizes up to ``total_size``,
    not past it."""
    after = declared_size + sum(size for _, size in page)
    if after > total_size:
        raise ChunkListPastSize(
            f"the page would bring the declared chunks to {after} bytes, past total_size"
            f" {total_size} ({declared_size} are declared)",
            declared_size=declared_size,
            total_size=total_size,
        )


def check_open_sessions(open_sessions: int, settings: Settings) -> None:
    """Refuse one more session to an owner already at the limit."""
    if open_sessions >= settings.max_open_sessions:
        raise TooManySessions(
            f"{open_sessions} upload sessions are open; the limit is {settings.max_open_sessions}."
            " Complete or cancel one first.",
            limit=settings.max_open_sessions,
        )


def check_quota(bytes_held: int, adding: int, settings: Settings) -> None:
    """Refuse ``adding`` bytes to an owner whose quota they would overrun (0: no quota).
    A file may repeat its own content, but every repeat is written out in full, so a
    small upload can declare a huge file: this is what bounds it."""
    limit = settings.quota_bytes
    if limit and bytes_held + adding > limit:
        raise QuotaExceeded(
            f"{adding} more bytes would bring your uploads to {bytes_held + adding} bytes;"
            f" your quota is {limit} bytes, of which {bytes_held} are in use. Delete"
            " completed uploads or cancel open ones to make room.",
            quota="bytes per owner",
            used=bytes_held,
            limit=limit,
            requested=adding,
        )


def quota_room(bytes_held: int, settings: Settings) -> int | None:
    """Bytes the owner may still add; None without a quota."""
    return max(0, settings.quota_bytes - bytes_held) if settings.quota_bytes else None


def _checked_chunk_size(request: InitRequest, settings: Settings) -> int:
    chunk_size = settings.default_chunk_size if request.chunk_size is None else request.chunk_size
    if chunk_size <= 0:
        raise InvalidRequest("chunk_size must be positive")
    if chunk_size > settings.max_chunk_size:
        raise TooLarge(
            f"chunk_size {chunk_size} exceeds the limit of {settings.max_chunk_size}",
            limit=settings.max_chunk_size,
        )
    return chunk_size


def _checked_page(
    page: Sequence[tuple[str, int]], start: int, settings: Settings
) -> list[tuple[str, int]]:
    """One page of declared chunks (indexes ``start`` on), each digest and size checked."""
    check_count("chunks", len(page), settings.chunk_page_size)
    chunk_list = [(digest.lower(), size) for digest, size in page]
    for index, (digest, size) in enumerate(chunk_list, start):
        if not _BLAKE3_HEX.fullmatch(digest):
            raise InvalidRequest(f"chunk {index}: digest must be BLAKE3-256 hex (64 characters)")
        if size <= 0:
            raise InvalidRequest(f"chunk {index}: size must be positive")
        if size > settings.max_chunk_size:
            raise TooLarge(
                f"chunk {index} of {size} bytes exceeds the limit of {settings.max_chunk_size}",
                limit=settings.max_chunk_size,
            )
    return chunk_list


def _check_declared_sizes(
    total_size: int, total_chunks: int, declared: int, declared_size: int, settings: Settings
) -> None:
    """The sizes declared so far must leave room for the chunks still to declare (each
    1 byte to ``max_chunk_size``), and add up to ``total_size`` once all are declared."""
    remaining, room = total_chunks - declared, total_size - declared_size
    if remaining == 0 and room != 0:
        raise InvalidRequest(
            f"the declared chunks add up to {declared_size} bytes, not total_size {total_size}"
        )
    if not remaining <= room <= remaining * settings.max_chunk_size:
        raise InvalidRequest(
            f"the {declared} chunks declared add up to {declared_size} bytes, which leaves"
            f" {room} of total_size {total_size} for the {remaining} still to declare"
            f" (each 1 to {settings.max_chunk_size} bytes)"
        )


def decide_declare(
    state: SessionState,
    start: int,
    page: Sequence[tuple[str, int]],
    settings: Settings,
    now: datetime,
    known_digests: frozenset[str] = frozenset(),
) -> list[KnownEvent]:
    """Events for a page of a manifest-mode session's chunk list, declared at ``start``.

    The next page (``start`` == the number declared) is recorded, and its chunks whose
    digest the owner already has (``known_digests``, or stored in this session) are
    recorded as reused at once, as at init. A repeat of a declared page with the same
    chunks is a success that records nothing; anything else is a DeclarationConflict.
    """
    check_accepting(state, now)
    declared = state.declared_chunks
    if state.mode != "manifest":
        raise DeclarationConflict(
            f"upload {state.upload_id} has no declared chunk list: its chunks are cut"
            " at a fixed size",
            declared_chunks=declared,
        )
    if start < 0:
        raise InvalidRequest("start must not be negative")
    chunk_list = _checked_page(page, start, settings)
    end = start + len(chunk_list)
    if start < declared:
        if end <= declared and state.declared_page(start, end) == chunk_list:
            return []
        raise DeclarationConflict(
            f"chunks {start} to {end - 1} differ from those already declared; the next page"
            f" starts at chunk {declared}",
            declared_chunks=declared,
        )
    if start > declared:
        raise DeclarationConflict(
            f"the next page starts at chunk {declared}, not {start}", declared_chunks=declared
        )
    if not chunk_list:
        return []
    if state.chunk_list_open:
        _check_open_sizes(state.total_size, state.declared_size, chunk_list)
        if end > MAX_CHUNKS:
            raise TooLarge(f"at most {MAX_CHUNKS} chunks may be declared", limit=MAX_CHUNKS)
    else:
        if end > state.total_chunks:
            raise InvalidRequest(
                f"the page would declare chunks up to {end - 1}, past the {state.total_chunks}"
                " chunks declared at init"
            )
        page_size = sum(size for _, size in chunk_list)
        _check_declared_sizes(
            state.total_size, state.total_chunks, end, state.declared_size + page_size, settings
        )
    reused: list[KnownEvent] = [
        ChunkStored(index=index, digest=digest, size=size, reused=True)
        for index, (digest, size) in enumerate(chunk_list, start)
        if digest in known_digests or _stored_in(state, digest)
    ]
    return [ChunksDeclared(start=start, chunk_list=chunk_list), *reused]


def _stored_in(state: SessionState, digest: str) -> bool:
    """Whether this session stored ``digest`` already (then at its first index)."""
    first = state.first_index(digest)
    return first is not None and state.has_chunk(first)


def require_owned(state: SessionState, owner: str) -> SessionState:
    """Another owner's upload is answered exactly like a missing one."""
    if not state.exists or state.owner != owner:
        raise UploadNotFound(f"no upload {shorten(state.upload_id)}", upload_id=state.upload_id)
    return state


def check_accepting(state: SessionState, now: datetime) -> None:
    """Whether the session takes chunks now. Run before any body is read."""
    if state.is_expired(now):
        raise SessionExpired(
            f"upload {state.upload_id} expired at {state.expires_at}", upload_id=state.upload_id
        )
    if state.status != Status.ACTIVE:
        raise UploadNotActive(
            f"upload {state.upload_id} is {state.status} and takes no more chunks",
            status=state.status,
        )


def check_takes_chunks(state: SessionState, now: datetime) -> None:
    """Whether the session takes chunks by index now (the JSON, raw and batch routes).
    Run before any body is read."""
    if state.mode == "tus":
        # Its chunks are cut from the tus byte stream; an index sent here would be
        # recorded beside that stream's own.
        raise NotAChunkUpload(
            f"upload {state.upload_id} was created through tus; send its bytes with"
            f" PATCH /files/{state.upload_id}",
            upload_id=state.upload_id,
        )
    check_accepting(state, now)


def check_chunk_target(
    state: SessionState, index: int, now: datetime, declared_size: int | None = None
) -> int:
    """Whether chunk ``index`` may be sent now; returns the exact size it must have.

    ``declared_size``: what the request says it carries (Content-Length, a batch frame's
    length), refused before any byte of it is read when it cannot be right.
    """
    check_takes_chunks(state, now)
    if state.total_chunks <= index < MAX_CHUNKS and state.chunk_list_pending:
        # An open list: the index may be declared by a page still to come.
        raise ChunkNotDeclared(
            f"chunk {index} is not declared yet: declare the chunk list from chunk"
            f" {state.declared_chunks} on first",
            declared_chunks=state.declared_chunks,
        )
    if not 0 <= index < state.total_chunks:
        raise ChunkIndexOutOfRange(
            f"chunk index {index} is outside 0..{state.total_chunks - 1}",
            total_chunks=state.total_chunks,
        )
    if index >= state.declared_chunks:
        raise ChunkNotDeclared(
            f"chunk {index} is not declared yet: declare the chunk list from chunk"
            f" {state.declared_chunks} on first",
            declared_chunks=state.declared_chunks,
        )
    expected = state.expected_size(index)
    if declared_size is not None and declared_size != expected:
        error = ChunkTooLarge if declared_size > expected else ChunkSizeMismatch
        raise error(
            f"chunk {index} must be {expected} bytes, the request declares {declared_size}",
            expected=expected,
        )
    return expected


def check_chunk_bytes(state: SessionState, index: int, digest: str, size: int) -> None:
    """Whether received bytes may be chunk ``index`` (size, and digest in manifest mode)."""
    expected_size = state.expected_size(index)
    if size != expected_size:
        raise ChunkSizeMismatch(
            f"chunk {index} must be {expected_size} bytes, got {size}", expected=expected_size
        )
    expected_digest = state.expected_digest(index)
    if expected_digest is not None and digest != expected_digest:
        raise ChecksumMismatch(
            f"chunk {index} does not hash to its declared digest",
            index=index,
            expected=expected_digest,
        )


def decide_chunks(
    state: SessionState, arrivals: Sequence[tuple[int, str, int]], now: datetime
) -> list[KnownEvent]:
    """Events for chunks that arrived as (index, digest, size), in order.

    An index already stored with the same digest is an idempotent repeat and adds
    nothing; with another digest it is a conflict. Storing a digest also fills every
    other missing index declared with that digest.
    """
    check_takes_chunks(state, now)
    taken: dict[int, str] = {}
    new_events: list[KnownEvent] = []
    for index, digest, size in arrivals:
        check_chunk_target(state, index, now)
        check_chunk_bytes(state, index, digest, size)
        stored = state.chunk(index)
        existing = stored[0] if stored is not None else taken.get(index)
        if existing is not None:
            if existing == digest:
                continue
            raise ChunkConflict(
                f"chunk {index} is already stored with other bytes", index=index, digest=existing
            )
        for target in (index, *state.indexes_of(digest)):
            if target in taken or state.has_chunk(target):
                continue
            taken[target] = digest
            new_events.append(
                ChunkStored(index=target, digest=digest, size=size, reused=target != index)
            )
    return new_events


def decide_chunk(
    state: SessionState, index: int, digest: str, size: int, now: datetime
) -> list[KnownEvent]:
    """One chunk arrived (see ``decide_chunks``)."""
    return decide_chunks(state, [(index, digest, size)], now)


def check_completable(state: SessionState, now: datetime) -> None:
    """Refuse completion of a session that cannot become a file now."""
    if state.status == Status.FAILED:
        raise ValidationFailed(
            state.failure_detail or state.failure_reason or "validation failed",
            reason=state.failure_reason,
        )
    if state.status == Status.CANCELLED:
        raise UploadNotActive(f"upload {state.upload_id} was cancelled", status=state.status)
    if state.is_expired(now):
        raise SessionExpired(f"upload {state.upload_id} expired", upload_id=state.upload_id)
    if state.mode == "tus" and (
        state.stream.length_deferred or state.stream_offset < state.total_size
    ):
        # A tus upload's chunks are cut from its stream; it is whole only at its length.
        raise UploadIncomplete(
            f"tus upload {state.upload_id} is at offset {state.stream_offset}"
            f" of {'an undeclared length' if state.stream.length_deferred else state.total_size}",
            offset=state.stream_offset,
        )
    if state.chunk_list_pending:
        raise UploadIncomplete(
            f"the chunks declared so far add up to {state.declared_size} of {state.total_size}"
            f" bytes; declare the rest of the chunk list from chunk {state.declared_chunks} on",
            declared_chunks=state.declared_chunks,
        )
    if state.declared_chunks < state.total_chunks:
        raise UploadIncomplete(
            f"{state.total_chunks - state.declared_chunks} of {state.total_chunks} chunks are"
            f" not declared yet; declare the chunk list from chunk {state.declared_chunks} on",
            declared_chunks=state.declared_chunks,
        )
    if state.missing_count:
        listing = list_chunks(state)
        missing = listing.missing_chunks
        shown = ", ".join(map(str, missing[:20])) + (" ..." if listing.missing_count > 20 else "")
        raise UploadIncomplete(
            f"{listing.missing_count} of {state.total_chunks} chunks are missing: {shown}",
            missing_chunks=missing,
            missing_count=listing.missing_count,
        )


def decide_expire(state: SessionState, now: datetime) -> list[KnownEvent]:
    """Record that an active session passed its TTL (run by gc, not by clients)."""
    if state.status in (Status.ACTIVE, Status.ASSEMBLING) and state.is_expired(now):
        return [UploadExpired()]
    return []


def decide_cancel(state: SessionState, reason: str) -> list[KnownEvent]:
    check_length("reason", reason, MAX_CANCEL_REASON)
    if state.status == Status.COMPLETED:
        raise UploadNotActive(
            f"upload {state.upload_id} is completed; it can no longer be cancelled:"
            f" delete it instead (DELETE /api/v1/files/{state.upload_id})",
            status=state.status,
        )
    if state.status == Status.DELETED:
        raise UploadNotActive(f"upload {state.upload_id} was deleted", status=state.status)
    if state.status == Status.CANCELLED:
        return []
    return [UploadCancelled(reason=reason)]


def decide_delete(state: SessionState, reason: str) -> list[KnownEvent]:
    """Delete a completed upload. A deleted one is gone (404, as a missing one); an
    unfinished one is cancelled, not deleted."""
    if state.status == Status.DELETED:
        raise UploadNotFound(f"no upload {state.upload_id}", upload_id=state.upload_id)
    if state.status != Status.COMPLETED:
        raise UploadNotActive(
            f"upload {state.upload_id} is {state.status}, not completed: there is no file"
            " to delete (cancel an unfinished upload instead)",
            status=state.status,
        )
    return [UploadDeleted(reason=reason)]
