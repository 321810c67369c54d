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
    slug = "invalid-request"
    title = "Invalid request"


class InvalidFilename(InvalidRequest):
    slug = "invalid-filename"
    title = "Filename not accepted"


class DisallowedType(InvalidRequest):
    slug = "disallowed-type"
    title = "File type not allowed"


class ChecksumMismatch(InvalidRequest):
    slug = "checksum-mismatch"
    title = "Checksum does not match the bytes received"


class ChunkSizeMismatch(InvalidRequest):
    slug = "chunk-size-mismatch"
    title = "Chunk has the wrong size"


class ChunkIndexOutOfRange(InvalidRequest):
    slug = "chunk-index-out-of-range"
    title = "Chunk index out of range"


class IncompleteBody(InvalidRequest):
    slug = "incomplete-body"
    title = "Request body ended early"


class RequestTimeout(IncompleteBody):
    """The client sent no byte of the request body for ``CHUNKSTORE_BODY_IDLE_TIMEOUT``
    seconds, so the server stopped waiting. The request keeps what a body cut off at that
    point keeps (the whole frames of a batch, the received bytes of a tus PATCH without a
    checksum; nothing of a single chunk) and holds nothing any more: ask for the status
    (or HEAD the tus upload) and send the rest."""

    slug = "request-timeout"
    title = "Request body stalled"


class Unauthorized(ChunkstoreError):
    slug = "unauthorized"
    title = "Authentication required"


class UploadNotFound(ChunkstoreError):
    slug = "upload-not-found"
    title = "Upload not found"


class ChunkConflict(ChunkstoreError):
    slug = "chunk-conflict"
    title = "Chunk already stored with other bytes"


class UploadNotActive(ChunkstoreError):
    slug = "upload-not-active"
    title = "Upload no longer accepts this"


class UploadIncomplete(ChunkstoreError):
    slug = "upload-incomplete"
    title = "Upload has missing chunks"


class SessionExpired(ChunkstoreError):
    slug = "upload-expired"
    title = "Upload session expired"


class TooLarge(ChunkstoreError):
    slug = "too-large"
    title = "Payload too large"


class ChunkTooLarge(TooLarge):
    slug = "chunk-too-large"
    title = "Chunk larger than expected"


class TooManySessions(ChunkstoreError):
    slug = "too-many-sessions"
    title = "Too many open upload sessions"


class UnsupportedMediaType(ChunkstoreError):
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class ValidationFailed(ChunkstoreError):
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


class ConcurrencyConflict(ChunkstoreError):
    """An append stated an expected version that is no longer current."""

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
