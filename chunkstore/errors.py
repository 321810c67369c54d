"""Every failure the library reports, each a specific class.

The HTTP layer maps each class to exactly one status code and problem type (see
``api/problems.py``); the CLI prints ``detail``. ``slug`` is the stable, machine-readable
name of the problem.
"""

from __future__ import annotations

import errno
from types import TracebackType
from typing import Any


class ChunkstoreError(Exception):
    slug = "error"
    title = "Request failed"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions


class InvalidRequest(ChunkstoreError):
    """The request is malformed: a field, header or parameter is missing, of the wrong type or out
    of range. ``detail`` (and ``errors``, when the framework found it) names what; fix the
    request and send it again."""

    slug = "invalid-request"
    title = "Invalid request"


class InvalidFilename(InvalidRequest):
    """The filename is refused: empty, a path or path component, control characters, a reserved
    device name, over 255 bytes, or an extension that runs code. Choose another name."""

    slug = "invalid-filename"
    title = "Filename not accepted"


class DisallowedType(InvalidRequest):
    """The declared MIME type is not accepted by this server's policy (executables and scripts, or
    not in ``CHUNKSTORE_ALLOWED_TYPES``). Nothing was stored."""

    slug = "disallowed-type"
    title = "File type not allowed"


class ChecksumMismatch(InvalidRequest):
    """The bytes received do not hash to the checksum sent with them; nothing was stored. Send the
    chunk again (a network or client fault corrupted it)."""

    slug = "checksum-mismatch"
    title = "Checksum does not match the bytes received"


class ChunkSizeMismatch(InvalidRequest):
    """The chunk's size is not the one the session expects at this index (every chunk but the last
    has ``chunk_size`` bytes, or the size declared in manifest mode). Nothing was stored."""

    slug = "chunk-size-mismatch"
    title = "Chunk has the wrong size"


class ChunkIndexOutOfRange(InvalidRequest):
    """The chunk index is outside ``0 .. total_chunks - 1`` of this upload. Nothing was stored."""

    slug = "chunk-index-out-of-range"
    title = "Chunk index out of range"


class IncompleteBody(InvalidRequest):
    """The request body ended before its declared length (the connection was cut). Whatever was
    acknowledged is kept; ask for the status and resume."""

    slug = "incomplete-body"
    title = "Request body ended early"


class FieldTooLong(InvalidRequest):
    """A text field is longer than its documented maximum (``limit``, in characters or,
    for a header, bytes); send a shorter value."""

    slug = "field-too-long"
    title = "Field longer than allowed"


class RequestTimeout(IncompleteBody):
    """The client sent no byte of the request body for ``CHUNKSTORE_BODY_IDLE_TIMEOUT``
    seconds, so the server stopped waiting. The request keeps what a body cut off at that
    point keeps (the whole frames of a batch, the received bytes of a tus PATCH without a
    checksum; nothing of a single chunk) and holds nothing any more: ask for the status
    (or HEAD the tus upload) and send the rest."""

    slug = "request-timeout"
    title = "Request body stalled"


class Unauthorized(ChunkstoreError):
    """No valid bearer token: send ``Authorization: Bearer <token>`` (a token comes from
    ``chunkstore token create NAME``)."""

    slug = "unauthorized"
    title = "Authentication required"


class UploadNotFound(ChunkstoreError):
    """No upload with this id belongs to the caller (another owner's upload answers the same).
    Check the id, or start a new upload."""

    slug = "upload-not-found"
    title = "Upload not found"


class ChunkConflict(ChunkstoreError):
    """This chunk index already holds other bytes; chunks are immutable. Sending the same bytes
    again is a success; different bytes need a new upload."""

    slug = "chunk-conflict"
    title = "Chunk already stored with other bytes"


class ChunkNotDeclared(ChunkstoreError):
    """The session's chunk list is declared in pages and this index is not declared
    yet (``declared_chunks`` are): declare its page first
    (``POST /api/v1/upload/{upload_id}/chunk-list``), then send it."""

    slug = "chunk-not-declared"
    title = "Chunk not declared yet"


class DeclarationConflict(ChunkstoreError):
    """A page of the chunk list does not follow the pages declared so far (the next one
    starts at ``declared_chunks``), repeats a declared page with other chunks, or the
    session has no declared chunk list. Ask the status and declare from there."""

    slug = "declaration-conflict"
    title = "Page does not fit the declared chunk list"


class ChunkListPastSize(ChunkstoreError):
    """The chunks declared would add up to more than the upload's ``total_size``
    (``declared_size`` says how much is declared already). Nothing was recorded: declare
    the file's own chunks, or start a new upload with the right size."""

    slug = "chunk-list-past-size"
    title = "Declared chunks pass the file's size"


class UploadNotActive(ChunkstoreError):
    """The upload is no longer in a state that accepts this request (completed, failed, cancelled
    or assembling); ``status`` in the body says which. Ask for its status."""

    slug = "upload-not-active"
    title = "Upload no longer accepts this"


class UploadIncomplete(ChunkstoreError):
    """``complete`` was called while chunks are missing; ``missing_chunks`` lists them. Send them,
    then complete again."""

    slug = "upload-incomplete"
    title = "Upload has missing chunks"


class SessionExpired(ChunkstoreError):
    """The upload's session passed its ``expires_at`` and accepts nothing more. Start a new upload
    (chunks you sent are reused by content)."""

    slug = "upload-expired"
    title = "Upload session expired"


class TooLarge(ChunkstoreError):
    """The request, file or list is larger than this server allows; ``limit`` names the bound when
    there is one. Nothing was stored."""

    slug = "too-large"
    title = "Payload too large"


class ChunkTooLarge(TooLarge):
    """The chunk's body carries more bytes than the chunk may have. Nothing was stored."""

    slug = "chunk-too-large"
    title = "Chunk larger than expected"


class ListTooLong(TooLarge):
    """A list in the request has more items than one request may carry (``limit``);
    split it over several requests."""

    slug = "list-too-long"
    title = "List longer than allowed"


class TooManySessions(ChunkstoreError):
    """The caller has as many open upload sessions as allowed (``CHUNKSTORE_MAX_OPEN_SESSIONS``).
    Complete or cancel one, then start again."""

    slug = "too-many-sessions"
    title = "Too many open upload sessions"


class QuotaExceeded(ChunkstoreError):
    """The upload would take the owner past its byte quota (open uploads' declared sizes
    plus completed files). Delete completed uploads or cancel open ones to make room;
    retrying the same request does not help."""

    slug = "quota-exceeded"
    title = "Storage quota exceeded"


class UploadLocked(ChunkstoreError):
    """Another request is writing to, completing or ending this upload right now; retry
    after it ends (a tus client: HEAD for the offset, then PATCH again)."""

    slug = "upload-locked"
    title = "Upload is busy"


class WrongUploadProtocol(ChunkstoreError):
    """The upload was started through another protocol than the one this request uses."""

    slug = "wrong-upload-protocol"
    title = "Upload belongs to another protocol"


class NotATusUpload(WrongUploadProtocol):
    """The upload was started through the JSON API: send its chunks there
    (``PUT /api/v1/upload/{upload_id}/chunks/{index}``), not with tus ``PATCH``."""

    slug = "not-a-tus-upload"
    title = "Upload was not created through tus"


class NotAChunkUpload(WrongUploadProtocol):
    """The upload was created through tus: send its bytes with tus ``PATCH /files/{id}``;
    it takes no chunks by index."""

    slug = "not-a-chunk-upload"
    title = "Upload takes its bytes through tus"


class UnsupportedMediaType(ChunkstoreError):
    """The body's ``Content-Type`` is not the one this route reads; ``detail`` names the right one.
    Nothing was read."""

    slug = "unsupported-media-type"
    title = "Unsupported media type"


class ValidationFailed(ChunkstoreError):
    """The assembled file failed validation (``reason``: e.g. ``mime-mismatch``, ``disallowed-
    type``, ``hash-mismatch``). The chunks are kept, the file is not published."""

    slug = "validation-failed"
    title = "File failed validation"


class InsufficientStorage(ChunkstoreError):
    """The server's storage is full (or the data directory's quota is used up). The
    request that hit it stored nothing; everything acknowledged before is kept. Retrying
    does not help until an operator frees space: then send the same request again."""

    slug = "insufficient-storage"
    title = "Insufficient storage"


class CorruptBlob(ChunkstoreError):
    """A stored blob is missing or its bytes do not hash to its name."""

    slug = "corrupt-blob"
    title = "Stored chunk is damaged"


class ChunkSwept(ChunkstoreError):
    """gc removed a blob between the moment a request found it and the moment its event
    was to be appended; sending the chunk again stores it afresh."""

    slug = "chunk-swept"
    title = "Chunk was removed meanwhile; send it again"


class RangeNotSatisfiable(ChunkstoreError):
    """The ``Range`` asks for bytes the file does not have; ``Content-Range: bytes */<size>``
    and ``size`` give its length. Ask for a range inside it, or for the whole file."""

    slug = "range-not-satisfiable"
    title = "Range not satisfiable"


class ConcurrencyConflict(ChunkstoreError):
    """Too many requests changed this upload at the same moment and this one gave up
    after its retries. Nothing of it was recorded; send it again."""

    slug = "concurrency-conflict"
    title = "Concurrent update"


#: errno values that mean there is no room to write: the filesystem is full, or the quota
#: of the user the server runs as is used up.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class FullDiskGuard:
    """``with full_disk_guard("the chunk"):`` turns a full filesystem met inside the
    block into ``InsufficientStorage``; every other error passes unchanged. A class, not
    a generator: it wraps every write of a request body."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            raise InsufficientStorage(
                f"no space left on the server to write {self.what}; nothing of this request"
                " was kept. Send it again once the operator has freed space.",
            ) from error


def full_disk_guard(what: str) -> FullDiskGuard:
    return FullDiskGuard(what)
