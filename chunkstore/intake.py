"""Chunk intake: bytes arriving over any transport become verified, durable chunks.

Every transport (the seed's JSON/base64 chunk, a raw chunk PUT, a batch of frames) ends
in ``record_arrivals``: the chunks are decided once before any blob is committed, so a
refused request stores no byte; their blobs are made durable together; then their events
are appended in one transaction, so an acknowledged chunk is never lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

import blake3
import msgspec

from chunkstore import commands
from chunkstore.batch import FrameReader
from chunkstore.blobs import BlobStaging, BlobWriter
from chunkstore.bounds import MAX_LISTED_INDEXES
from chunkstore.errors import (
    ChecksumMismatch,
    ChunkSizeMismatch,
    ChunkstoreError,
    ChunkTooLarge,
    InvalidRequest,
    TooLarge,
)
from chunkstore.events import ChunkStored, KnownEvent
from chunkstore.session import SessionState
from chunkstore.views import BatchReceipt, ChunkReceipt, progress_fields

if TYPE_CHECKING:
    from chunkstore.application import UploadService


class Checksum(msgspec.Struct, frozen=True):
    algorithm: str  # "sha256" or "blake3"
    hex: str

    @classmethod
    def parse(cls, header: str) -> Checksum:
        """``sha256=<hex>`` or ``blake3=<hex>`` (as sent in ``X-Chunk-Checksum``)."""
        algorithm, sep, value = header.strip().partition("=")
        algorithm = algorithm.strip().lower().replace("-", "")
        value = value.strip().lower()
        if not sep or algorithm not in ("sha256", "blake3"):
            raise InvalidRequest("checksum must be 'sha256=<hex>' or 'blake3=<hex>'")
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise InvalidRequest(f"{algorithm} checksum must be 64 hex characters")
        return cls(algorithm, value)


class Recorded(NamedTuple):
    state: SessionState
    #: (index, digest, size) of every chunk the request carried.
    chunks: list[tuple[int, str, int]]
    #: What was appended (empty for pure repeats).
    events: list[ChunkStored]


#: Verified bytes of a batch that wait in memory before they are handed to the blob
#: store while the rest of the body arrives (4 connections of ~8 MiB batches held up to
#: ~100 MiB of bodies when each waited for its request's end).
STAGE_BYTES = 1024 * 1024


@dataclass(eq=False)
class Staged:
    """What one request has handed to the blob store's staging so far."""

    staging: BlobStaging
    #: (index, digest, size) of the chunks staged, in order.
    chunks: list[tuple[int, str, int]] = field(default_factory=list)
    #: Serializes a stage in a worker thread with giving up from the event loop's side.
    lock: threading.Lock = field(default_factory=threading.Lock)
    abandoned: bool = False
    #: A stage failed: the request cannot be committed.
    broken: bool = False


@dataclass(frozen=True, slots=True)
class Frame:
    index: int
    digest: str
    size: int
    #: Views of the request's body pieces; nothing is copied.
    pieces: list[memoryview]


class BatchParser(FrameReader):
    """Cuts a batch body into frames as pieces arrive, hashing and verifying each one.

    It only hashes (BLAKE3 runs at GB/s); writing the blobs happens in a worker thread,
    so the event loop spends no time on per-chunk storage. Verified frames wait in
    ``completed`` until they are taken (``take_completed``), every ``STAGE_BYTES``.
    """

    def __init__(self, state: SessionState, limit: int, clock: Callable[[], datetime]) -> None:
        super().__init__()
        self.state = state
        self.limit = limit
        self.clock = clock
        self.received = 0
        self.completed: list[Frame] = []
        #: Bytes of the frames in ``completed``.
        self.waiting = 0
        self._index = -1
        self._size = 0
        self._hasher = blake3.blake3()
        self._pieces: list[memoryview] = []

    def feed(self, piece: bytes | memoryview) -> None:
        self.received += len(piece)
        if self.received > self.limit:
            raise TooLarge(f"a batch may carry at most {self.limit} bytes", limit=self.limit)
        super().feed(piece)

    def frame_started(self, index: int, length: int) -> None:
        commands.check_chunk_target(self.state, index, self.clock(), length)
        self._index, self._size = index, length
        self._hasher, self._pieces = blake3.blake3(), []

    def frame_data(self, data: memoryview) -> None:
        self._hasher.update(data)
        self._pieces.append(data)

    def frame_ended(self) -> None:
        digest = self._hasher.hexdigest()
        commands.check_chunk_bytes(self.state, self._index, digest, self._size)
        self.completed.append(Frame(self._index, digest, self._size, self._pieces))
        self.waiting += self._size
        self._pieces = []

    def take_completed(self) -> list[Frame]:
        """The verified frames not taken yet (their pieces go with them)."""
        frames, self.completed, self.waiting = self.completed, [], 0
        return frames


class ChunkIntake:
    """One chunk's bytes on their way into the blob store, with size cap and checksum."""

    def __init__(self, writer: BlobWriter, expected_size: int, checksum: Checksum | None) -> None:
        self.writer = writer
        self.expected_size = expected_size
        self.checksum = checksum
        self._sha256 = hashlib.sha256() if checksum and checksum.algorithm == "sha256" else None

    def feed(self, pieces: Iterable[bytes | memoryview]) -> None:
        for piece in pieces:
            if self.writer.size + len(piece) > self.expected_size:
                raise ChunkTooLarge(
                    f"chunk is larger than the expected {self.expected_size} bytes",
                    expected=self.expected_size,
                )
            self.writer.write(piece)
            if self._sha256 is not None:
                self._sha256.update(piece)

    def verified_digest(self) -> str:
        if self.writer.size != self.expected_size:
            raise ChunkSizeMismatch(
                f"chunk must be {self.expected_size} bytes, got {self.writer.size}",
                expected=self.expected_size,
            )
        digest = self.writer.digest()
        if self.checksum is not None:
            actual = self._sha256.hexdigest() if self._sha256 is not None else digest
            if actual != self.checksum.hex:
                raise ChecksumMismatch(
                    f"{self.checksum.algorithm} of the chunk is {actual},"
                    f" the request said {self.checksum.hex}",
                    algorithm=self.checksum.algorithm,
                )
        return digest


class _Stager:
    """Hands a batch's verified frames to the staging in a worker thread, one hand-over
    at a time, while the event loop goes on reading the body."""

    def __init__(self, intake: Intake, staged: Staged) -> None:
        self.intake = intake
        self.staged = staged
        self._pending: asyncio.Future[None] | None = None

    async def hand_over(self, frames: list[Frame]) -> None:
        await self.settle()
        self._pending = asyncio.ensure_future(
            asyncio.to_thread(self.intake.stage_frames, self.staged, frames)
        )

    async def settle(self) -> None:
        """Wait for the hand-over under way; raises what stopped it."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    def abandon(self) -> None:
        """Give up the staging without waiting (the request failed or was cancelled): a
        worker thread does it once any stage under way is done."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.add_done_callback(_retrieved)
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, self.intake.abandon, self.staged)


def _retrieved(future: asyncio.Future[None]) -> None:
    """Mark a failed hand-over's exception as seen (the request raised its own)."""
    if not future.cancelled():
        future.exception()


class Intake:
    """The chunk-storing commands of an ``UploadService``."""

    def __init__(self, app: UploadService) -> None:
        self.app = app

    def target(
        self, owner: str, upload_id: str, index: int, content_length: int | None = None
    ) -> tuple[int, str | None]:
        """Checks made before a chunk's body is read: (exact size, declared digest)."""
        state = self.app.get(owner, upload_id)
        expected = commands.check_chunk_target(state, index, self.app.clock(), content_length)
        return expected, state.expected_digest(index)

    def store_chunk(
        self,
        owner: str,
        upload_id: str,
        index: int,
        data: bytes,
        checksum: Checksum | None = None,
    ) -> ChunkReceipt:
        """Store one chunk whose bytes are already in memory (the JSON/base64 path)."""
        size, digest = self.target(owner, upload_id, index)
        intake = ChunkIntake(self.app.store.blobs.writer(digest), size, checksum)
        try:
            intake.feed((data,))
            intake.verified_digest()
        except BaseException:
            intake.writer.abort()
            raise
        return self._chunk_receipt(self.record_arrivals(owner, upload_id, [(index, intake)]))

    async def store_chunk_stream(
        self,
        owner: str,
        upload_id: str,
        index: int,
        body: AsyncIterable[bytes],
        content_length: int | None = None,
        checksum: Checksum | None = None,
    ) -> ChunkReceipt:
        """Store one chunk from a streamed body.

        Each piece is hashed as it arrives and handed to the blob writer, which keeps it
        (the chunk's bytes, ``max_chunk_size`` at most, wait in memory) and touches no
        disk. This runs in the event loop: handing every piece to a worker thread
        measured slower here (a GIL hand-off per piece) than the hashing it offloads.
        The durable part (append to a pack, fdatasync, the index and event
        transactions) runs in a worker thread.
        """
        size, digest = await asyncio.to_thread(self.target, owner, upload_id, index, content_length)
        writer = self.app.store.blobs.writer(digest, size=size)
        intake = ChunkIntake(writer, size, checksum)
        try:
            async for piece in body:
                intake.feed((piece,))
            intake.verified_digest()
        except BaseException:
            intake.writer.abort()
            raise
        arrivals = [(index, intake)]
        recorded = await asyncio.to_thread(self.record_arrivals, owner, upload_id, arrivals)
        return self._chunk_receipt(recorded)

    async def store_batch_stream(
        self,
        owner: str,
        upload_id: str,
        body: AsyncIterable[bytes],
        content_length: int | None = None,
    ) -> BatchReceipt:
        """Store a batch body: frames of (u32 index, u32 length, bytes), big-endian.

        Each frame is verified (size, and digest in manifest mode) as it completes, and
        the verified frames go to the blob store's staging every ``STAGE_BYTES`` while
        the rest of the body arrives, so the request's bytes do not wait in memory for
        its end. All events of the request are appended in one transaction, after its
        blobs are durable. If the body breaks off or a frame is bad, the whole frames
        before it are still recorded, then the error is raised.
        """
        limit = self.app.settings.max_batch_size
        if content_length is not None and content_length > limit:
            raise TooLarge(f"a batch may carry at most {limit} bytes", limit=limit)
        state = await asyncio.to_thread(self.app.get, owner, upload_id)
        commands.check_takes_chunks(state, self.app.clock())
        parser = BatchParser(state, limit, self.app.clock)
        stager = _Stager(self, Staged(self.app.store.blob_staging()))
        try:
            failure = await self._receive_frames(parser, body, stager)
            await stager.settle()
            recorded = await asyncio.to_thread(
                self.record_frames, owner, upload_id, parser.take_completed(), stager.staged
            )
        except BaseException:
            stager.abandon()
            raise
        if failure is not None:
            raise failure
        stored = [event.index for event in recorded.events]
        return BatchReceipt(
            **progress_fields(recorded.state),
            stored=stored[:MAX_LISTED_INDEXES],
            stored_count=len(stored),
        )

    @staticmethod
    async def _receive_frames(
        parser: BatchParser, body: AsyncIterable[bytes], stager: _Stager
    ) -> ChunkstoreError | None:
        """Read the body into ``parser``, handing verified frames to ``stager`` as they
        add up. A bad frame or a broken body ends it and is returned (the frames before
        it are kept); a failure to store is raised."""
        pieces = aiter(body)
        while True:
            try:
                piece = await anext(pieces)
                parser.feed(piece)
            except StopAsyncIteration:
                break
            except ChunkstoreError as error:
                return error
            if parser.waiting >= STAGE_BYTES:
                await stager.hand_over(parser.take_completed())
        try:
            parser.finish()
        except ChunkstoreError as error:
            return error
        return None

    def stage_frames(self, staged: Staged, frames: Sequence[Frame]) -> None:
        """Hand verified frames' bytes to the staging (in a worker thread)."""
        with staged.lock:
            if staged.abandoned:
                return
            writers = self._frame_writers(frames)
            try:
                staged.staging.add(writers)
            except BaseException:
                staged.broken = True
                raise
            staged.chunks.extend((frame.index, frame.digest, frame.size) for frame in frames)

    def abandon(self, staged: Staged) -> None:
        """Give up what was staged (after a stage under way, if any, is done)."""
        with staged.lock:
            staged.abandoned = True
            staged.staging.abort()

    def _frame_writers(self, frames: Sequence[Frame]) -> list[BlobWriter]:
        writers: list[BlobWriter] = []
        try:
            for frame in frames:
                writer = self.app.store.blobs.writer(frame.digest, verified=True)
                writers.append(writer)
                for piece in frame.pieces:
                    writer.write(piece)
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        return writers

    def record_frames(
        self, owner: str, upload_id: str, frames: Sequence[Frame], staged: Staged | None = None
    ) -> Recorded:
        """Hand verified frames to blob writers, then record them with what ``staged``
        holds already (``record_arrivals``)."""
        writers = self._frame_writers(frames)
        arrivals = [
            (frame.index, ChunkIntake(writer, frame.size, None))
            for frame, writer in zip(frames, writers, strict=True)
        ]
        return self.record_arrivals(owner, upload_id, arrivals, staged)

    def record_arrivals(
        self,
        owner: str,
        upload_id: str,
        arrivals: Sequence[tuple[int, ChunkIntake]],
        staged: Staged | None = None,
    ) -> Recorded:
        """Make verified chunks (and those ``staged`` holds) durable, then append their
        events in one transaction.

        Decided once before anything more is staged or committed, so a refused request
        makes no blob visible (bytes staged before are dead, for a repack to drop); the
        events are appended only after the blobs are durable, so an acknowledged chunk
        is never lost.
        """
        staged = staged or Staged(self.app.store.blob_staging())
        # Held throughout: a request given up meanwhile (``abandon``) waits for this.
        with staged.lock:
            return self._record(owner, upload_id, arrivals, staged)

    def _record(
        self,
        owner: str,
        upload_id: str,
        arrivals: Sequence[tuple[int, ChunkIntake]],
        staged: Staged,
    ) -> Recorded:
        writers = [intake.writer for _, intake in arrivals]
        try:
            if staged.broken or staged.abandoned:
                raise RuntimeError("a stage of this request failed or it was given up")
            candidates = staged.chunks + [
                (i, intake.writer.digest(), intake.writer.size) for i, intake in arrivals
            ]
            state = self.app.get(owner, upload_id)
            if candidates:
                commands.decide_chunks(state, candidates, self.app.clock())
        except BaseException:
            for writer in writers:
                writer.abort()
            staged.staging.abort()
            raise
        if not candidates:
            staged.staging.abort()
            return Recorded(state, [], [])
        try:
            staged.staging.add(writers)
        except BaseException:
            staged.staging.abort()
            raise
        # The events follow in a synced transaction before the answer (see BlobStore).
        refs = staged.staging.commit(recorded_after=True)
        chunks = [
            (index, ref.digest, ref.size)
            for (index, _, _), ref in zip(candidates, refs, strict=True)
        ]
        appended: list[KnownEvent] = []

        def decide(current: SessionState) -> list[KnownEvent]:
            appended[:] = commands.decide_chunks(current, chunks, self.app.clock())
            return appended

        state = self.app.decide_and_append(owner, upload_id, decide)
        return Recorded(state, chunks, [e for e in appended if isinstance(e, ChunkStored)])

    @staticmethod
    def _chunk_receipt(recorded: Recorded) -> ChunkReceipt:
        index, digest, size = recorded.chunks[0]
        return ChunkReceipt(
            **progress_fields(recorded.state),
            chunk_index=index,
            digest=digest,
            size=size,
            stored=any(event.index == index for event in recorded.events),
        )
