"""Chunk intake: bytes arriving over any transport become verified, durable chunks.

Every transport (the seed's JSON/base64 chunk, a raw chunk PUT, a batch of frames) ends
in ``record_arrivals``: the chunks are decided once before any blob is committed, so a
refused request stores no byte; their blobs are made durable together; then their events
are appended in one transaction, so an acknowledged chunk is never lost.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

import blake3
import msgspec

from chunkstore import commands
from chunkstore.batch import FrameReader
from chunkstore.blobs import BlobWriter
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


@dataclass(frozen=True, slots=True)
class Frame:
    index: int
    digest: str
    size: int
    #: Views of the request's body pieces; nothing is copied.
    pieces: list[memoryview]


class BatchParser(FrameReader):
    """Cuts a batch body into frames as pieces arrive, hashing and verifying each one.

    It only hashes (BLAKE3 runs at GB/s); writing the blobs happens later in a worker
    thread, so the event loop spends no time on per-chunk storage. The frames of one
    request stay in memory until then, which ``max_batch_size`` bounds.
    """

    def __init__(self, state: SessionState, limit: int, clock: Callable[[], datetime]) -> None:
        super().__init__()
        self.state = state
        self.limit = limit
        self.clock = clock
        self.received = 0
        self.completed: list[Frame] = []
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

        Each frame is verified (size, and digest in manifest mode) as it completes. All
        events of the request are appended in one transaction. If the body breaks off
        or a frame is bad, the whole frames before it are still recorded, then the
        error is raised.
        """
        limit = self.app.settings.max_batch_size
        if content_length is not None and content_length > limit:
            raise TooLarge(f"a batch may carry at most {limit} bytes", limit=limit)
        state = await asyncio.to_thread(self.app.get, owner, upload_id)
        commands.check_takes_chunks(state, self.app.clock())
        parser = BatchParser(state, limit, self.app.clock)
        failure: ChunkstoreError | None = None
        try:
            async for piece in body:
                parser.feed(piece)
            parser.finish()
        except ChunkstoreError as error:
            failure = error
        recorded = await asyncio.to_thread(self.record_frames, owner, upload_id, parser.completed)
        if failure is not None:
            raise failure
        stored = [event.index for event in recorded.events]
        return BatchReceipt(
            **progress_fields(recorded.state),
            stored=stored[:MAX_LISTED_INDEXES],
            stored_count=len(stored),
        )

    def record_frames(self, owner: str, upload_id: str, frames: Sequence[Frame]) -> Recorded:
        """Hand verified frames to blob writers, then record them (``record_arrivals``).
        A writer keeps the frame's views (no copy, no disk): the bytes reach the disk
        together when the writers are committed."""
        arrivals: list[tuple[int, ChunkIntake]] = []
        try:
            for frame in frames:
                writer = self.app.store.blobs.writer(frame.digest, verified=True)
                intake = ChunkIntake(writer, frame.size, None)
                arrivals.append((frame.index, intake))
                intake.feed(frame.pieces)
        except BaseException:
            for _, intake in arrivals:
                intake.writer.abort()
            raise
        return self.record_arrivals(owner, upload_id, arrivals)

    def record_arrivals(
        self, owner: str, upload_id: str, arrivals: Sequence[tuple[int, ChunkIntake]]
    ) -> Recorded:
        """Make verified chunks durable, then append their events in one transaction.

        Decided once before any blob is committed, so a refused request stores no byte;
        the events are appended only after the blobs are durable, so an acknowledged
        chunk is never lost.
        """
        writers = [intake.writer for _, intake in arrivals]
        try:
            candidates = [(i, intake.writer.digest(), intake.writer.size) for i, intake in arrivals]
            state = self.app.get(owner, upload_id)
            if arrivals:
                commands.decide_chunks(state, candidates, self.app.clock())
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        if not arrivals:
            return Recorded(state, [], [])
        # The events follow in a synced transaction before the answer (see BlobStore).
        refs = self.app.store.blobs.commit_many(writers, recorded_after=True)
        chunks = [
            (index, ref.digest, ref.size) for (index, _), ref in zip(arrivals, refs, strict=True)
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
