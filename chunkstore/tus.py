"""tus 1.0 uploads: one byte stream per session, cut into content-defined chunks.

A tus client sends a file as a stream at increasing offsets. The server cuts that stream
with the same FastCDC as everything else (``chunkstore.chunking``), so two tus uploads
of almost the same file share their chunks even though the client knows nothing of
chunks. FastCDC's cut points depend only on the bytes since the chunk's start, so when
the acknowledged tail plus new bytes are cut, every chunk but the last is final; the
last one is final only once the upload is complete. Until then it is the upload's
*tail*: kept durable by the tail port (``chunkstore.tails``; ``base`` is the stream offset
where the tail starts, i.e. the bytes already in chunks), and its length is recorded
as ``TusTailStaged``, so ``Upload-Offset`` is a replay of the log like everything else.

Crash safety of the tail: a new tail is written under its own base and made durable
before the events that make it current are appended; tails of other bases, and bytes
past the recorded tail length, are leftovers of an unfinished request and are ignored
(then removed or overwritten). A PATCH holds the upload's lock (``chunkstore.locks``: it
dies with its holder, so no stale lock survives a crash and the processes serving one
store never interleave bytes); the append still states the version it saw.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import uuid
from collections.abc import AsyncIterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import blake3
import msgspec

from chunkstore import commands
from chunkstore.application import UploadService
from chunkstore.blobs import BlobStore, BlobWriter
from chunkstore.bounds import (
    MAX_CONCAT_PARTS,
    MAX_MIME_TYPE,
    MAX_TUS_METADATA,
    check_count,
    check_length,
    quote,
    shorten,
)
from chunkstore.chunking import cdc_cutter
from chunkstore.config import MiB, Settings
from chunkstore.errors import (
    ChecksumMismatch,
    ChunkstoreError,
    IncompleteBody,
    InvalidRequest,
    NotATusUpload,
    SessionExpired,
    TooLarge,
    UploadNotActive,
    UploadNotFound,
)

# The per-upload lock's refusal (chunkstore.locks), answered 423 on tus routes too.
from chunkstore.errors import UploadLocked as UploadLocked
from chunkstore.events import (
    ChunkStored,
    KnownEvent,
    TusLengthDeclared,
    TusTailStaged,
    TusUploadCreated,
)
from chunkstore.policy import check_declared_type, clean_filename
from chunkstore.session import SessionState, Status

TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
)
CHECKSUM_ALGORITHMS = ("sha1", "sha256", "md5")
#: Bytes buffered before they are cut: big enough that cutting is cheap per byte,
#: small enough that a request holds only a few MiB whatever its body's size.
CUT_THRESHOLD = 4 * MiB
#: Blob writers committed together (one pack append and fdatasync, one index
#: transaction) while a long body streams in; their chunks wait in memory until then.
COMMIT_BATCH = 256


# -- errors (each has one status, see api/problems.py) ---------------------------------------


class OffsetMismatch(ChunkstoreError):
    """The request's Upload-Offset is not the upload's current offset, which the answer's
    Upload-Offset header (and ``offset``) gives: resume from there."""

    slug = "offset-mismatch"
    title = "Upload-Offset does not match the upload"


class UnsupportedChecksumAlgorithm(InvalidRequest):
    """Upload-Checksum names an algorithm this server does not compute; OPTIONS lists the
    supported ones in Tus-Checksum-Algorithm."""

    slug = "unsupported-checksum-algorithm"
    title = "Checksum algorithm not supported"


class TusChecksumMismatch(ChecksumMismatch):
    """The body does not match Upload-Checksum; none of its bytes were kept."""

    slug = "tus-checksum-mismatch"
    title = "Checksum mismatch"


class FinalUploadImmutable(ChunkstoreError):
    """A final (concatenated) upload takes no bytes of its own."""

    slug = "final-upload-immutable"
    title = "Final upload cannot be patched"


class UnsupportedTusVersion(ChunkstoreError):
    """The request's Tus-Resumable is missing or names a version this server does not speak;
    Tus-Version lists the supported ones. Nothing was processed."""

    slug = "unsupported-tus-version"
    title = "tus protocol version not supported"


# -- headers -----------------------------------------------------------------------------


def parse_metadata(header: str) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs (value optional)."""
    metadata: dict[str, str] = {}
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, encoded = pair.partition(" ")
        try:
            value = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidRequest(
                f"Upload-Metadata value of {quote(key)} is not base64 UTF-8"
            ) from None
        metadata[key] = value
    return metadata


class UploadChecksum(msgspec.Struct, frozen=True):
    algorithm: str
    digest: bytes

    @classmethod
    def parse(cls, header: str) -> UploadChecksum:
        """``Upload-Checksum: <algorithm> <base64 digest>``."""
        algorithm, _, encoded = header.strip().partition(" ")
        algorithm = algorithm.lower()
        if algorithm not in CHECKSUM_ALGORITHMS:
            raise UnsupportedChecksumAlgorithm(
                f"checksum algorithm {quote(algorithm)} is not supported; use one of"
                f" {', '.join(CHECKSUM_ALGORITHMS)}"
            )
        try:
            digest = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            raise InvalidRequest("Upload-Checksum digest is not base64") from None
        return cls(algorithm, digest)

    def hasher(self) -> Any:
        return hashlib.new(self.algorithm)


def parse_concat(header: str) -> tuple[str, list[str]]:
    """``Upload-Concat``: ``partial``, or ``final;<url> <url> ...`` (the ids of parts)."""
    header = header.strip()
    if header == "partial":
        return "partial", []
    kind, _, urls = header.partition(";")
    if kind.strip() != "final" or not urls.strip():
        raise InvalidRequest("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    parts = urls.split()
    # Each part is a session to load and check: a bounded number per request.
    check_count("Upload-Concat", len(parts), MAX_CONCAT_PARTS)
    return "final", [url.rstrip("/").rsplit("/", 1)[-1] for url in parts]


# -- decisions (pure) ----------------------------------------------------------------------


def decide_create(
    upload_id: str,
    owner: str,
    length: int | None,
    metadata_header: str,
    settings: Settings,
    now: datetime,
    open_sessions: int,
    concat: str = "",
    parts: Sequence[SessionState] = (),
    bytes_held: int = 0,
) -> list[KnownEvent]:
    """A new tus upload; a final one (``parts`` given) is born with its parts' chunks.
    ``bytes_held``: what already counts towards the owner's quota."""
    # The header is kept in the event and echoed by HEAD, so it is bounded as sent.
    check_length("Upload-Metadata", metadata_header, MAX_TUS_METADATA)
    metadata = parse_metadata(metadata_header)
    filetype = metadata.get("filetype") or ""
    check_length("filetype", filetype, MAX_MIME_TYPE)
    filename = clean_filename(metadata.get("filename") or upload_id)
    mime_type = check_declared_type(filetype, settings)
    if parts:
        length = sum(check_part_complete(part) for part in parts)
    if length is not None and length < 0:
        raise InvalidRequest("Upload-Length must not be negative")
    if length is not None and length > settings.max_file_size:
        raise TooLarge(
            f"file of {length} bytes exceeds the limit of {settings.max_file_size}",
            limit=settings.max_file_size,
        )
    commands.check_open_sessions(open_sessions, settings)
    # A final upload may list one partial upload many times: each copy is written out.
    commands.check_quota(bytes_held, length or 0, settings)
    created = TusUploadCreated(
        owner=owner,
        filename=filename,
        mime_type=mime_type,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.session_ttl),
        total_size=length,
        metadata=metadata_header,
        concat=concat,
        parts=[part.upload_id for part in parts],
    )
    chunks = [chunk for part in parts for chunk in part.ordered_chunks()]
    reused: list[KnownEvent] = [
        ChunkStored(index=index, digest=digest, size=size, reused=True)
        for index, (digest, size) in enumerate(chunks)
    ]
    return [created, *reused]


def check_part_complete(part: SessionState) -> int:
    """A partial upload that may go into a final one; returns its length."""
    if part.mode != "tus" or part.stream.concat != "partial":
        raise InvalidRequest(f"upload {part.upload_id} is not a partial upload")
    if part.stream.length_deferred or part.stream_offset != part.total_size or part.stream.tail:
        raise InvalidRequest(f"partial upload {part.upload_id} is not complete")
    return part.total_size


def check_readable(state: SessionState, now: datetime) -> None:
    """HEAD: a terminated upload is gone (404), an expired one is Gone (410)."""
    if state.status in (Status.CANCELLED, Status.DELETED):
        raise UploadNotFound(f"no upload {shorten(state.upload_id)}", upload_id=state.upload_id)
    if state.is_expired(now):
        raise SessionExpired(
            f"upload {state.upload_id} expired at {state.expires_at}", upload_id=state.upload_id
        )


def check_patchable(state: SessionState, offset: int, now: datetime) -> None:
    """Checks made before a PATCH's body is read."""
    if state.mode != "tus":
        # Its chunks are indexed by the JSON API; stream bytes would be recorded as
        # chunks past its last index.
        raise NotATusUpload(
            f"upload {state.upload_id} was started through the JSON API; send its chunks"
            f" with PUT /api/v1/upload/{state.upload_id}/chunks/{{index}}",
            upload_id=state.upload_id,
        )
    if state.stream.concat == "final":
        raise FinalUploadImmutable(f"upload {state.upload_id} is a final upload")
    check_readable(state, now)
    commands.check_accepting(state, now)
    if offset != state.stream_offset:
        raise OffsetMismatch(
            f"Upload-Offset is {offset}, the upload is at {state.stream_offset}",
            offset=state.stream_offset,
        )


def decide_length(
    state: SessionState, length: int | None, settings: Settings, bytes_held: int = 0
) -> int | None:
    """The upload's length after this PATCH (which may declare a deferred one).
    ``bytes_held``: what counts towards the owner's quota, this upload included."""
    if length is None or not state.stream.length_deferred:
        if length is not None and length != state.total_size:
            raise InvalidRequest(f"Upload-Length is already {state.total_size}")
        return None if state.stream.length_deferred else state.total_size
    if length < state.stream_offset:
        raise InvalidRequest(f"Upload-Length {length} is below the offset {state.stream_offset}")
    if length > settings.max_file_size:
        raise TooLarge(
            f"file of {length} bytes exceeds the limit of {settings.max_file_size}",
            limit=settings.max_file_size,
        )
    commands.check_quota(bytes_held, declared_growth(state, length), settings)
    return length


def declared_growth(state: SessionState, length: int) -> int:
    """What declaring a deferred ``length`` adds to the owner's quota use: until then
    the upload counted the bytes it had received."""
    return length - min(length, state.bytes_received)


def decide_append(
    state: SessionState,
    chunks: Sequence[tuple[str, int]],
    tail: int,
    declared_length: int | None = None,
) -> list[KnownEvent]:
    """Events for new final chunks (cut in stream order) and the new tail length."""
    new_events: list[KnownEvent] = []
    if declared_length is not None and state.stream.length_deferred:
        new_events.append(TusLengthDeclared(declared_length))
    new_events.extend(
        ChunkStored(index=state.total_chunks + position, digest=digest, size=size)
        for position, (digest, size) in enumerate(chunks)
    )
    if tail != state.stream.tail:
        new_events.append(TusTailStaged(tail))
    return new_events


# -- cutting -------------------------------------------------------------------------------


class StreamCutter:
    """Cuts arriving bytes into FastCDC chunks and writes each final one as a blob.

    Holds at most ``CUT_THRESHOLD`` plus one piece in memory. Blobs are committed in
    batches; nothing is recorded here, so a refused body leaves at most unreferenced
    blobs (gc sweeps those after its grace period).
    """

    def __init__(self, blobs: BlobStore, tail: bytes) -> None:
        self.blobs = blobs
        self.buffer = bytearray(tail)
        self.cutter = cdc_cutter()
        self.pending: list[BlobWriter] = []
        self.chunks: list[tuple[str, int]] = []

    def feed(self, piece: bytes) -> None:
        self.buffer += piece

    @property
    def full(self) -> bool:
        return len(self.buffer) >= CUT_THRESHOLD

    def cut(self, final: bool) -> None:
        """Write out every finished chunk; with ``final``, the last one too."""
        found = list(self.cutter.cut_buf(self.buffer))
        finished = found if final else found[:-1]
        # One after another in this (worker) thread: hashing a 64 KiB chunk holds the
        # GIL (two threads hashed 2.56 GB/s, one 2.47), and a pack writer only keeps
        # the view, so threads would add hand-offs and save nothing.
        try:
            for chunk in finished:
                self.pending.append(self._write(chunk.data))
        except BaseException:
            self.abort()
            raise
        consumed = sum(chunk.length for chunk in finished)
        del found, finished
        self.buffer = bytearray(memoryview(self.buffer)[consumed:])
        if len(self.pending) >= COMMIT_BATCH:
            self.commit()

    def _write(self, data: memoryview) -> BlobWriter:
        # Hashed here already, so the writer need not hash the bytes again.
        writer = self.blobs.writer(blake3.blake3(data).hexdigest(), verified=True)
        try:
            writer.write(data)  # a view: the bytes are not copied
        except BaseException:
            writer.abort()
            raise
        return writer

    def commit(self) -> None:
        """Make the pending blobs durable, together."""
        pending, self.pending = self.pending, []
        try:
            # An offset is acknowledged only from the events recorded after (synced).
            refs = self.blobs.commit_many(pending, recorded_after=True)
        except BaseException:
            for writer in pending:
                writer.abort()
            raise
        self.chunks.extend((ref.digest, ref.size) for ref in refs)

    def abort(self) -> None:
        for writer in self.pending:
            writer.abort()
        self.pending = []


# -- the uploads ---------------------------------------------------------------------------


class TusUploads:
    """tus operations on top of ``UploadService`` (same event log and blob store)."""

    def __init__(self, service: UploadService) -> None:
        self.service = service
        self.settings = service.settings
        self.tails = service.store.tails

    def create(
        self,
        owner: str,
        length: int | None,
        metadata_header: str = "",
        concat: str = "",
        part_ids: Sequence[str] = (),
    ) -> SessionState:
        upload_id = uuid.uuid4().hex
        now = self.service.clock()
        parts = [self.service.get(owner, part_id) for part_id in part_ids]
        new_events = decide_create(
            upload_id,
            owner,
            length,
            metadata_header,
            self.settings,
            now,
            self.service.store.index.count_open_sessions(owner, now),
            concat,
            parts,
            self.service.store.index.bytes_held(owner, now),
        )
        created = new_events[0]
        assert isinstance(created, TusUploadCreated)
        return self.service.append_decided(
            SessionState.empty(upload_id),
            new_events,
            new_session_of=owner,
            adds_bytes=created.total_size or 0,
        )

    def head(self, owner: str, upload_id: str) -> SessionState:
        state = self.service.get(owner, upload_id)
        check_readable(state, self.service.clock())
        return state

    def needs_completion(self, state: SessionState) -> bool:
        """Whole, not a partial, not yet turned into a file."""
        return (
            state.status == Status.ACTIVE
            and state.stream.concat != "partial"
            and not state.stream.length_deferred
            and state.stream_offset == state.total_size
        )

    def complete(self, owner: str, state: SessionState) -> SessionState:
        """Reaching Upload-Length completes through the manifest and validator path."""
        self.service.complete_upload(owner, state.upload_id)
        self.tails.discard(state.upload_id)
        return self.service.get(owner, state.upload_id)

    async def patch(
        self,
        owner: str,
        upload_id: str,
        offset: int,
        body: AsyncIterable[bytes],
        checksum: UploadChecksum | None = None,
        content_length: int | None = None,
        declared_length: int | None = None,
    ) -> SessionState:
        """Append a body at ``offset``. Without a checksum, the bytes that arrived before
        a broken body are kept; with one, all or nothing."""
        # Refused before any lock or byte when it cannot be right: not the owner's, not
        # live, not a tus upload, or not at this offset. Then checked again under the lock.
        state = await asyncio.to_thread(self.head, owner, upload_id)
        check_patchable(state, offset, self.service.clock())
        lock = await asyncio.to_thread(self.service.store.locks.acquire, upload_id)
        try:
            state = await asyncio.to_thread(self.service.get, owner, upload_id)
            now = self.service.clock()
            check_patchable(state, offset, now)
            held = 0
            if state.stream.length_deferred:
                held = await asyncio.to_thread(self.service.store.index.bytes_held, owner, now)
            length = decide_length(state, declared_length, self.settings, held)
            limit = (length if length is not None else self.settings.max_file_size) - offset
            if content_length is not None and content_length > limit:
                raise TooLarge(f"the body would go {content_length - limit} bytes past the end")
            # Of unknown length still: its bytes count towards the quota as they arrive.
            room = commands.quota_room(held, self.settings) if length is None else None
            if room is not None and content_length is not None and content_length > room:
                commands.check_quota(held, content_length, self.settings)
            base = state.stream_offset - state.stream.tail
            tail = await asyncio.to_thread(self.tails.read, upload_id, base, state.stream.tail)
            cutter = StreamCutter(self.service.store.blobs, tail)
            hasher = checksum.hasher() if checksum is not None else None
            received = 0
            broken: IncompleteBody | None = None
            try:
                async for piece in body:
                    received += len(piece)
                    if received > limit:
                        raise TooLarge("the body goes past the upload's length")
                    if room is not None and received > room:
                        commands.check_quota(held, received, self.settings)
                    cutter.feed(piece)
                    if hasher is not None:
                        hasher.update(piece)
                    if cutter.full:
                        await asyncio.to_thread(cutter.cut, False)
            except IncompleteBody as error:
                broken = error
            except BaseException:
                cutter.abort()
                raise
            if checksum is not None and hasher is not None:
                if broken is None and hasher.digest() != checksum.digest:
                    cutter.abort()
                    raise TusChecksumMismatch(
                        f"the body's {checksum.algorithm} does not match Upload-Checksum",
                        algorithm=checksum.algorithm,
                    )
                if broken is not None:
                    cutter.abort()
                    raise broken
            complete = length is not None and offset + received == length
            new_length = length if state.stream.length_deferred else None
            state = await asyncio.to_thread(self._settle, state, cutter, complete, new_length)
        finally:
            lock.release()
        if broken is not None:
            raise broken
        return state

    def _settle(
        self,
        state: SessionState,
        cutter: StreamCutter,
        complete: bool,
        declared_length: int | None,
    ) -> SessionState:
        """Blobs durable, then the tail durable, then the events; then old tails go."""
        try:
            cutter.cut(final=complete)
            cutter.commit()
        except BaseException:
            cutter.abort()
            raise
        tail = bytes(cutter.buffer)
        old_base = state.stream_offset - state.stream.tail
        new_base = old_base + sum(size for _, size in cutter.chunks)
        if new_base == old_base:
            self.tails.extend(
                state.upload_id, old_base, state.stream.tail, tail[state.stream.tail :]
            )
        elif tail:
            self.tails.write(state.upload_id, new_base, tail)
        new_events = decide_append(state, cutter.chunks, len(tail), declared_length)
        adds = declared_growth(state, declared_length) if declared_length is not None else 0
        state = self.service.append_decided(state, new_events, adds_bytes=adds)
        if new_base != old_base:
            self.tails.discard(state.upload_id, keep_base=new_base)
        return state

    def terminate(self, owner: str, upload_id: str) -> None:
        """Termination: an unfinished upload is cancelled, a completed one deleted (its
        file removed), each waiting for a PATCH or a completion under way to end."""
        reason = "terminated by the client (tus)"
        state = self.head(owner, upload_id)
        if state.status != Status.COMPLETED:
            try:
                self.service.cancel_upload(owner, upload_id, reason)
            except UploadNotActive:
                # A completion got there first: the upload now has a file to delete.
                state = self.service.get(owner, upload_id)
                if state.status != Status.COMPLETED:
                    raise
        if state.status == Status.COMPLETED:
            self.service.delete_upload(owner, upload_id, reason)
        self.tails.discard(upload_id)
