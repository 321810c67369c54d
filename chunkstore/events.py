"""Events: the only facts about an upload session.

Each event is a frozen, tagged ``msgspec.Struct``; the tag is the event's ``type`` in
the log. History is never rewritten: new facts get new event types, and new fields get
defaults so that old records still decode. A reader that meets a type it does not know
(written by a newer version) gets an ``UnknownEvent`` instead of a crash.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class UploadInitiated(msgspec.Struct, frozen=True, tag=True):
    owner: str
    filename: str
    total_size: int
    mime_type: str
    chunk_size: int
    total_chunks: int
    created_at: datetime
    expires_at: datetime
    #: "fixed": every chunk but the last is ``chunk_size`` bytes.
    #: "manifest": the client declared each chunk's digest and size (see ``chunk_list``).
    mode: str = "fixed"
    file_hash: str | None = None
    #: For mode "manifest": the declared chunk list as [digest, size] pairs; when it is
    #: shorter than ``total_chunks``, its first page (``ChunksDeclared`` adds the rest).
    chunk_list: list[tuple[str, int]] | None = None
    #: For mode "manifest": the number of chunks was left open. ``total_chunks`` is
    #: then the length of ``chunk_list`` and grows with each ``ChunksDeclared``; the
    #: list is complete once the declared sizes add up to ``total_size``.
    chunk_list_open: bool = False


class ChunkStored(msgspec.Struct, frozen=True, tag=True):
    index: int
    digest: str
    size: int
    #: True when the bytes were not sent for this index: the owner already had the
    #: chunk (from an earlier upload, or another index of this one).
    reused: bool = False


class ChunksDeclared(msgspec.Struct, frozen=True, tag=True):
    """The next page of a manifest-mode session's chunk list: [digest, size] pairs for
    indexes ``start``, ``start + 1``, ... (``start`` is the number declared before)."""

    start: int
    chunk_list: list[tuple[str, int]]


class ManifestWritten(msgspec.Struct, frozen=True, tag=True):
    manifest_digest: str
    size: int
    blake3: str
    sha256: str


class ValidationFailed(msgspec.Struct, frozen=True, tag=True):
    #: Stable machine-readable reason, e.g. "mime-mismatch".
    reason: str
    detail: str = ""


class UploadCompleted(msgspec.Struct, frozen=True, tag=True):
    #: The final file, relative to the data directory.
    path: str
    detected_mime: str


class UploadCancelled(msgspec.Struct, frozen=True, tag=True):
    reason: str = ""


class UploadExpired(msgspec.Struct, frozen=True, tag=True):
    pass


class UploadDeleted(msgspec.Struct, frozen=True, tag=True):
    """The owner deleted a completed upload: its final file is removed, and its chunks
    are gc's to reclaim (those no other upload uses)."""

    reason: str = ""


class TusUploadCreated(msgspec.Struct, frozen=True, tag=True):
    """A tus upload was created (``POST /files/``): its bytes arrive as a stream, which
    the server cuts into content-defined chunks (``ChunkStored`` in order)."""

    owner: str
    filename: str
    mime_type: str
    created_at: datetime
    expires_at: datetime
    #: None while the client defers the length (``Upload-Defer-Length: 1``).
    total_size: int | None = None
    #: The ``Upload-Metadata`` header as sent, echoed back by ``HEAD``.
    metadata: str = ""
    #: "" for a plain upload, "partial" or "final" (concatenation extension).
    concat: str = ""
    #: For a final upload: the upload ids of its partial uploads, in order.
    parts: list[str] = []


class TusLengthDeclared(msgspec.Struct, frozen=True, tag=True):
    """A deferred length became known (``Upload-Length`` on a later ``PATCH``)."""

    total_size: int


class TusTailStaged(msgspec.Struct, frozen=True, tag=True):
    """How many bytes after the last chunk are durable in the upload's staging file:
    the acknowledged tail that has not reached a chunk boundary yet."""

    size: int


class UnknownEvent(msgspec.Struct, frozen=True):
    """An event of a type this version does not know; kept, shown, otherwise ignored."""

    type: str
    data: dict[str, Any]


KnownEvent = (
    UploadInitiated
    | ChunkStored
    | ManifestWritten
    | ValidationFailed
    | UploadCompleted
    | UploadCancelled
    | UploadExpired
    | UploadDeleted
    | TusUploadCreated
    | TusLengthDeclared
    | TusTailStaged
    | ChunksDeclared
)
Event = KnownEvent | UnknownEvent

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(KnownEvent)


def event_type(event: Event) -> str:
    if isinstance(event, UnknownEvent):
        return event.type
    return type(event).__name__


def encode(event: KnownEvent) -> bytes:
    """The JSON record stored in the log; it carries its own ``type`` tag."""
    return _encoder.encode(event)


def decode(data: bytes | str) -> Event:
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError:
        raw = msgspec.json.decode(data)
        if isinstance(raw, dict):
            return UnknownEvent(type=str(raw.pop("type", "?")), data=raw)
        raise


def to_dict(event: Event) -> dict[str, Any]:
    """Plain fields for display (replay timelines, JSON lines)."""
    if isinstance(event, UnknownEvent):
        return dict(event.data)
    return msgspec.to_builtins(event)  # type: ignore[no-any-return]
