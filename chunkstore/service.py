"""The upload service: loads state, asks a command what happens, does the I/O around it.

Every method takes the asking ``owner``; another owner's upload is "not found". Appends
state the version they decided on and, on a conflict, reload and decide again, so any
number of requests (threads or processes) may work on one session at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import secrets
import struct
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import blake3
import msgspec

from chunkstore import commands
from chunkstore.blobs import BlobStore, BlobWriter
from chunkstore.blobs.filesystem import (
    FileBlobStore,
    fsync_directory,
    is_digest,
    make_durable_dirs,
)
from chunkstore.bounds import (
    MAX_DIGESTS,
    MAX_FAILURE_DETAIL,
    MAX_LISTED_INDEXES,
    check_count,
    quote,
    shorten,
)
from chunkstore.config import Settings
from chunkstore.errors import (
    ChecksumMismatch,
    ChunkSizeMismatch,
    ChunkstoreError,
    ChunkSwept,
    ChunkTooLarge,
    ConcurrencyConflict,
    CorruptBlob,
    IncompleteBody,
    InvalidRequest,
    TooLarge,
    UploadNotActive,
    ValidationFailed,
    full_disk_guard,
)
from chunkstore.eventlog import EventStore, session_row
from chunkstore.eventlog.sqlite import SQLiteEventStore
from chunkstore.events import (
    ChunkStored,
    KnownEvent,
    ManifestWritten,
    UploadCompleted,
)
from chunkstore.events import (
    ValidationFailed as ValidationFailedEvent,
)
from chunkstore.listing import list_chunks
from chunkstore.locks import UploadLocks
from chunkstore.manifest import Manifest, assemble
from chunkstore.session import COMPLETED, SessionState, replay
from chunkstore.validator import detect_mime, find_problem

#: Session states kept in memory; a cached state is caught up from the log on every load.
STATE_CACHE_SIZE = 512
_APPEND_ATTEMPTS = 1000
_BLOB_WRITERS = 4
_blob_writers = ThreadPoolExecutor(max_workers=_BLOB_WRITERS, thread_name_prefix="blob-writer")


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        "received_chunks": len(state.chunks),
        "total_chunks": state.total_chunks,
        "missing_count": state.total_chunks - len(state.chunks),
        "bytes_total": state.total_size,
        "bytes_received": state.bytes_received,
        "bytes_deduplicated": state.bytes_deduplicated,
        "progress": state.progress,
        "percentage": state.progress,
    }


class Recorded(NamedTuple):
    state: SessionState
    #: (index, digest, size) of every chunk the request carried.
    chunks: list[tuple[int, str, int]]
    #: What was appended (empty for pure repeats).
    events: list[ChunkStored]


class Frame(NamedTuple):
    index: int
    digest: str
    size: int
    #: Views of the request's body pieces; nothing is copied.
    pieces: list[memoryview]


class BatchParser:
    """Cuts a batch body into frames as pieces arrive, hashing and verifying each one.

    It only hashes (BLAKE3 runs at GB/s); writing files happens later in a worker
    thread, so the event loop spends no time on per-chunk file creation. The frames of
    one request stay in memory until then, which ``max_batch_size`` bounds.
    """

    HEADER = struct.Struct(">II")

    def __init__(self, state: SessionState, limit: int, clock: Callable[[], datetime]) -> None:
        self.state = state
        self.limit = limit
        self.clock = clock
        self.received = 0
        self.completed: list[Frame] = []
        self._header = bytearray()
        self._index = -1
        self._size = 0
        self._remaining = 0
        self._hasher: blake3.blake3 | None = None
        self._pieces: list[memoryview] = []

    def feed(self, piece: bytes) -> None:
        self.received += len(piece)
        if self.received > self.limit:
            raise TooLarge(f"a batch may carry at most {self.limit} bytes", limit=self.limit)
        view = memoryview(piece)
        while view:
            if self._hasher is None:
                needed = self.HEADER.size - len(self._header)
                self._header += view[:needed]
                view = view[needed:]
                if len(self._header) == self.HEADER.size:
                    self._start_frame()
                continue
            take = view[: self._remaining]
            self._hasher.update(take)
            self._pieces.append(take)
            self._remaining -= len(take)
            view = view[len(take) :]
            if self._remaining == 0:
                self._finish_frame()

    def _start_frame(self) -> None:
        index, length = self.HEADER.unpack(self._header)
        self._header.clear()
        commands.check_chunk_target(self.state, index, self.clock(), length)
        self._index, self._size, self._remaining = index, length, length
        self._hasher, self._pieces = blake3.blake3(), []

    def _finish_frame(self) -> None:
        assert self._hasher is not None
        digest = self._hasher.hexdigest()
        self._hasher = None
        commands.check_chunk_bytes(self.state, self._index, digest, self._size)
        self.completed.append(Frame(self._index, digest, self._size, self._pieces))

    def finish(self) -> None:
        if self._hasher is not None or self._header:
            raise IncompleteBody("the batch body ended inside a frame")


class ChunkIntake:
    """One chunk's bytes on their way into the blob store, with size cap and checksum."""

    def __init__(self, writer: BlobWriter, expected_size: int, checksum: Checksum | None) -> None:
        self.writer = writer
        self.expected_size = expected_size
        self.checksum = checksum
        self._sha256 = hashlib.sha256() if checksum and checksum.algorithm == "sha256" else None

    def feed(self, pieces: Iterable[bytes]) -> None:
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


class UploadService:
    def __init__(
        self,
        settings: Settings,
        blobs: BlobStore,
        events: EventStore,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.blobs = blobs
        self.events = events
        self.clock = clock
        self.files_dir = settings.data_dir / "files"
        self.tmp_dir = settings.data_dir / "tmp"
        self.locks = UploadLocks(settings.data_dir / "locks")
        # The only per-upload state kept in memory: a bounded cache of sessions that exist.
        self._states: OrderedDict[str, SessionState] = OrderedDict()
        self._states_lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings, clock: Callable[[], datetime] = utcnow) -> UploadService:
        """The embedded default: filesystem blobs and SQLite events in ``data_dir``."""
        make_durable_dirs(settings.data_dir)
        blobs = FileBlobStore(settings.data_dir)
        events = SQLiteEventStore(settings.database_path)
        service = cls(settings, blobs, events, clock)
        make_durable_dirs(service.files_dir)
        return service

    def close(self) -> None:
        self.events.close()

    # -- state ---------------------------------------------------------------------------

    def load(self, upload_id: str) -> SessionState:
        """Current state: the cached fold caught up with whatever the log has since."""
        with self._states_lock:
            cached = self._states.get(upload_id)
        after = cached.version if cached else 0
        new_events = [recorded.event for recorded in self.events.read(upload_id, after)]
        if not new_events and cached is not None:
            return cached
        state = replay(new_events, cached or SessionState.empty(upload_id))
        if state.exists:
            self._remember(state)
        return state

    def _remember(self, state: SessionState) -> None:
        with self._states_lock:
            current = self._states.get(state.upload_id)
            if current is None or current.version < state.version:
                self._states[state.upload_id] = state
                self._states.move_to_end(state.upload_id)
                while len(self._states) > STATE_CACHE_SIZE:
                    self._states.popitem(last=False)

    def cached_upload_ids(self) -> list[str]:
        """Upload ids this process keeps state of in memory (at most STATE_CACHE_SIZE, and
        only of uploads that exist)."""
        with self._states_lock:
            return list(self._states)

    def get(self, owner: str, upload_id: str) -> SessionState:
        return commands.require_owned(self.load(upload_id), owner)

    def _append(
        self,
        state: SessionState,
        new_events: Sequence[KnownEvent],
        precondition: Callable[[], None] | None = None,
    ) -> SessionState:
        """Append at ``state.version``; raises ConcurrencyConflict if the log moved on.
        ``precondition`` runs under the store's write lock before anything is written."""
        if not new_events:
            return state
        new_state = replay(new_events, state)

        def guard() -> None:
            # gc deletes blobs under the same write lock: a chunk this append names
            # that is still there now stays there until the append is committed.
            for event in new_events:
                if isinstance(event, ChunkStored) and not self.blobs.exists(event.digest):
                    raise ChunkSwept(
                        f"chunk {event.index} was removed by gc meanwhile; send it again",
                        digest=event.digest,
                    )
            if precondition is not None:
                precondition()

        self.events.append(
            state.upload_id, state.version, new_events, session_row(new_state), guard
        )
        # The append succeeded at the expected version, so the new state is exactly the
        # fold of the log: no need to read back and decode what was just written.
        self._remember(new_state)
        return new_state

    def _decide_and_append(
        self, owner: str, upload_id: str, decide: Callable[[SessionState], list[KnownEvent]]
    ) -> SessionState:
        for _ in range(_APPEND_ATTEMPTS):
            state = self.get(owner, upload_id)
            try:
                return self._append(state, decide(state))
            except ConcurrencyConflict:
                continue
        raise ConcurrencyConflict(f"upload {upload_id} is too busy; retry", upload_id=upload_id)

    # -- commands ------------------------------------------------------------------------

    def init_upload(self, owner: str, request: commands.InitRequest) -> SessionState:
        upload_id = uuid.uuid4().hex
        now = self.clock()
        # Bounded before the digests are looked up (decide_init checks it again).
        check_count("chunks", len(request.chunks or ()), self.settings.chunk_page_size)
        known = (
            frozenset(self.held_digests(owner, [digest for digest, _ in request.chunks]))
            if request.chunks
            else frozenset()
        )
        new_events = commands.decide_init(
            upload_id,
            owner,
            request,
            self.settings,
            now,
            self.events.count_open_sessions(owner, now),
            known,
            self.events.bytes_held(owner, now),
        )
        return self._append(
            SessionState.empty(upload_id),
            new_events,
            lambda: self._check_owner_limits(owner, now, request.total_size),
        )

    def declare_chunks(
        self, owner: str, upload_id: str, start: int, page: Sequence[tuple[str, int]]
    ) -> tuple[SessionState, list[int]]:
        """Declare the page of a manifest-mode session's chunk list that starts at index
        ``start`` (a repeat of a declared page is a success). Returns the state and the
        page's indexes still to send: one per digest neither this owner nor the session
        has (``needed_chunks`` semantics)."""
        check_count("chunks", len(page), self.settings.chunk_page_size)
        self.get(owner, upload_id)  # another owner's upload: 404 before any lookup
        page = [(digest.lower(), size) for digest, size in page]
        known = frozenset(self.held_digests(owner, [digest for digest, _ in page]))
        state = self._decide_and_append(
            owner,
            upload_id,
            lambda current: commands.decide_declare(
                current, start, page, self.settings, self.clock(), known
            ),
        )
        end = min(start + len(page), state.declared_chunks)
        return state, [index for index in range(start, end) if state.is_needed(index)]

    def _check_open_sessions(self, owner: str, now: datetime) -> None:
        """decide_init counted already; counting again under the write lock is what
        keeps inits arriving at once from each seeing room for one more."""
        commands.check_open_sessions(self.events.count_open_sessions(owner, now), self.settings)

    def _check_quota(self, owner: str, now: datetime, adding: int) -> None:
        """Likewise for the quota: concurrent inits never add up past it."""
        commands.check_quota(self.events.bytes_held(owner, now), adding, self.settings)

    def _check_owner_limits(self, owner: str, now: datetime, adding: int) -> None:
        """A new session's checks under the write lock: open sessions and quota."""
        self._check_open_sessions(owner, now)
        self._check_quota(owner, now, adding)

    def quota_usage(self, owner: str) -> tuple[int, int | None]:
        """(bytes counting towards the owner's quota, the quota or None for none)."""
        used = self.events.bytes_held(owner, self.clock())
        return used, self.settings.quota_bytes or None

    def held_digests(self, owner: str, digests: Sequence[str]) -> set[str]:
        """Digests this owner has stored before and the store still holds."""
        return {
            digest
            for digest in self.events.known_digests(owner, digests)
            if self.blobs.exists(digest)
        }

    def missing_digests(self, owner: str, digests: Sequence[str]) -> list[str]:
        """Which of ``digests`` this owner would have to send (order kept, no repeats).
        At most ``MAX_DIGESTS`` per call: a million cost 7 s of CPU."""
        check_count("digests", len(digests), MAX_DIGESTS)
        wanted = list(dict.fromkeys(d.lower() for d in digests))
        for digest in wanted:
            if not is_digest(digest):
                raise InvalidRequest(f"{quote(digest)} is not a BLAKE3-256 hex digest")
        held = self.held_digests(owner, wanted)
        return [digest for digest in wanted if digest not in held]

    def chunk_target(
        self, owner: str, upload_id: str, index: int, content_length: int | None = None
    ) -> tuple[int, str | None]:
        """Checks made before a chunk's body is read: (exact size, declared digest)."""
        state = self.get(owner, upload_id)
        expected = commands.check_chunk_target(state, index, self.clock(), content_length)
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
        size, digest = self.chunk_target(owner, upload_id, index)
        intake = ChunkIntake(self.blobs.writer(digest), size, checksum)
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

        Each piece is hashed and written as it arrives, so only the piece in hand is in
        memory. This runs in the event loop: handing every piece to a worker thread
        measured slower here (a GIL hand-off per piece) than the hashing it offloads.
        The durable part (fsync, link, event append) runs in a worker thread.
        """
        size, digest = await asyncio.to_thread(
            self.chunk_target, owner, upload_id, index, content_length
        )
        intake = ChunkIntake(self.blobs.writer(digest), size, checksum)
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
        limit = self.settings.max_batch_size
        if content_length is not None and content_length > limit:
            raise TooLarge(f"a batch may carry at most {limit} bytes", limit=limit)
        state = await asyncio.to_thread(self.get, owner, upload_id)
        commands.check_takes_chunks(state, self.clock())
        parser = BatchParser(state, limit, self.clock)
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
        """Write verified frames to blob writers, then record them (``record_arrivals``)."""

        def write(group: Sequence[Frame]) -> list[tuple[int, ChunkIntake]]:
            written: list[tuple[int, ChunkIntake]] = []
            try:
                for frame in group:
                    writer = self.blobs.writer(frame.digest, verified=True)
                    intake = ChunkIntake(writer, frame.size, None)
                    written.append((frame.index, intake))
                    intake.feed(frame.pieces)
            except BaseException:
                for _, intake in written:
                    intake.writer.abort()
                raise
            return written

        # File creation dominates small chunks and runs in the kernel without the GIL,
        # so a few threads write a batch's blobs side by side, each a share of them.
        shares = [frames[n::_BLOB_WRITERS] for n in range(_BLOB_WRITERS)]
        jobs = [_blob_writers.submit(write, share) for share in shares if share]
        written: list[list[tuple[int, ChunkIntake]]] = []
        failure: BaseException | None = None
        for job in jobs:
            try:
                written.append(job.result())
            except BaseException as error:
                failure = failure or error
        if failure is not None:
            for share in written:
                for _, intake in share:
                    intake.writer.abort()
            raise failure
        # Back into the body's order: share n holds frames n, n + 4, n + 8...
        rows = itertools.zip_longest(*written)
        arrivals = [arrival for row in rows for arrival in row if arrival is not None]
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
            state = self.get(owner, upload_id)
            if arrivals:
                commands.decide_chunks(state, candidates, self.clock())
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        if not arrivals:
            return Recorded(state, [], [])
        refs = self.blobs.commit_many(writers)
        chunks = [
            (index, ref.digest, ref.size) for (index, _), ref in zip(arrivals, refs, strict=True)
        ]
        appended: list[KnownEvent] = []

        def decide(current: SessionState) -> list[KnownEvent]:
            appended[:] = commands.decide_chunks(current, chunks, self.clock())
            return appended

        state = self._decide_and_append(owner, upload_id, decide)
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

    def cancel_upload(self, owner: str, upload_id: str, reason: str = "") -> SessionState:
        """Cancel under the upload's lock, so that a completion is either wholly before
        (and the cancel is refused) or wholly after (and refused itself)."""
        state = self.get(owner, upload_id)
        if not commands.decide_cancel(state, reason):
            return state
        with self.locks.hold(upload_id, self.settings.lock_wait):
            return self._decide_and_append(
                owner, upload_id, lambda state: commands.decide_cancel(state, reason)
            )

    def delete_upload(self, owner: str, upload_id: str, reason: str = "") -> SessionState:
        """Delete a completed upload: record ``UploadDeleted``, then remove its final file
        (a file outliving a crash in between is an orphan gc removes). Its chunks are
        released at gc's next run."""
        state = self.get(owner, upload_id)
        commands.decide_delete(state, reason)
        with self.locks.hold(upload_id, self.settings.lock_wait):
            file_path = self.get(owner, upload_id).file_path
            state = self._decide_and_append(
                owner, upload_id, lambda state: commands.decide_delete(state, reason)
            )
            if file_path is not None:
                remove_final(self.settings.data_dir / file_path)
        return state

    def expire_upload(self, upload_id: str) -> SessionState:
        """Record ``UploadExpired`` for a session past its TTL (an operator's action:
        no owner check). A session not yet past its TTL is left as it is. A session
        whose lock is held (a completion under way) raises ``UploadLocked``: a later
        gc run expires it if it is still open then."""
        state = self.load(upload_id)
        if not commands.decide_expire(state, self.clock()):
            return state
        with self.locks.hold(upload_id):
            return self._decide_and_append(
                state.owner, upload_id, lambda state: commands.decide_expire(state, self.clock())
            )

    def status(self, owner: str, upload_id: str) -> SessionState:
        return self.get(owner, upload_id)

    # -- completion ----------------------------------------------------------------------

    def complete_upload(self, owner: str, upload_id: str) -> Completion:
        """Write the manifest, validate, and materialize the final file (idempotent).

        Runs under the upload's lock (waiting for a PATCH or another completion to end),
        after the upload was found and its owner checked: no per-upload state, not even
        a lock file, exists for an id that is not the caller's."""
        state = self.get(owner, upload_id)
        if state.status == COMPLETED:
            return completion_of(state)
        commands.check_completable(state, self.clock())
        with self.locks.hold(upload_id, self.settings.lock_wait):
            state = self.get(owner, upload_id)
            if state.status == COMPLETED:
                return completion_of(state)
            commands.check_completable(state, self.clock())
            part = self.tmp_dir / f"assemble-{upload_id}-{secrets.token_hex(6)}.part"
            try:
                return self._complete(state, part)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()

    def _complete(self, state: SessionState, part: Path) -> Completion:
        chunks = state.ordered_chunks()
        try:
            with full_disk_guard("the assembled file"), open(part, "xb") as out:
                assembled = assemble(self.blobs, chunks, out)
                out.flush()
                os.fsync(out.fileno())
        except CorruptBlob as error:
            self._fail(state, "corrupt-chunk", error.detail)
        if state.manifest is None:
            manifest = Manifest(
                upload_id=state.upload_id,
                filename=state.filename,
                size=assembled.size,
                blake3=assembled.blake3,
                sha256=assembled.sha256,
                chunks=chunks,
            )
            ref = self.blobs.put(manifest.encode())
            state = self._append_or_settle(
                state,
                [ManifestWritten(ref.digest, assembled.size, assembled.blake3, assembled.sha256)],
            )
        elif (state.manifest.blake3, state.manifest.size) != (assembled.blake3, assembled.size):
            self._fail(state, "corrupt-chunk", "stored chunks no longer match the manifest")
        detected = detect_mime(part)
        problem = find_problem(state, assembled, detected, self.settings)
        if problem is not None:
            self._fail(state, *problem)
        relative = Path("files") / state.upload_id / state.filename
        final = self.settings.data_dir / relative
        with full_disk_guard("the completed file"):
            publish(part, final)
        try:
            state = self._append_or_settle(state, [UploadCompleted(str(relative), detected)])
        except BaseException:
            # Under the lock nothing else ends the upload meanwhile; a writer that took
            # no lock (a crash leftover's retry, an older version) may have. Never leave
            # a file for an upload the log does not call completed.
            self._withdraw(state.upload_id, final, str(relative))
            raise
        return completion_of(state)

    def _withdraw(self, upload_id: str, final: Path, relative: str) -> None:
        """Remove a published final file unless the log says the upload completed into it."""
        with contextlib.suppress(Exception):  # the log unreadable: the file goes
            current = self.load(upload_id)
            if current.status == COMPLETED and current.file_path == relative:
                return
        remove_final(final)

    def _fail(self, state: SessionState, reason: str, detail: str) -> None:
        # Our own text, but it may quote a stored name or a blob's error: kept bounded.
        detail = shorten(detail, MAX_FAILURE_DETAIL)
        self._append_or_settle(state, [ValidationFailedEvent(reason=reason, detail=detail)])
        raise ValidationFailed(detail, reason=reason)

    def _append_or_settle(self, state: SessionState, new_events: list[KnownEvent]) -> SessionState:
        try:
            return self._append(state, new_events)
        except ConcurrencyConflict:
            # Only another process completing or cancelling the same upload gets here.
            current = self.load(state.upload_id)
            raise UploadNotActive(
                f"upload {state.upload_id} changed during completion (now {current.status})",
                status=current.status,
            ) from None

    # -- tus (see chunkstore.tus) --------------------------------------------------------

    def append_decided(
        self,
        state: SessionState,
        new_events: Sequence[KnownEvent],
        new_session_of: str | None = None,
        adds_bytes: int = 0,
    ) -> SessionState:
        """Append events decided on ``state``, at its version; ConcurrencyConflict if
        the log moved on. tus decisions cover bytes already staged, so they are not
        re-decided on a conflict. ``new_session_of``: the owner of a session being
        created, whose open sessions are recounted under the write lock. ``adds_bytes``:
        what the events add to the owner's quota use (a declared length), checked there
        too."""
        now = self.clock()
        if new_session_of is not None:
            owner = new_session_of
            return self._append(
                state, new_events, lambda: self._check_owner_limits(owner, now, adds_bytes)
            )
        if adds_bytes:
            owner = state.owner
            return self._append(
                state, new_events, lambda: self._check_quota(owner, now, adds_bytes)
            )
        return self._append(state, new_events)


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


def publish(part: Path, final: Path) -> None:
    """Move a fully written, fsynced file into place atomically and durably."""
    make_durable_dirs(final.parent)
    os.replace(part, final)
    fsync_directory(final.parent)


def remove_final(final: Path) -> None:
    """Remove a final file, and its upload's directory once empty, durably."""
    with contextlib.suppress(FileNotFoundError):
        final.unlink()
    with contextlib.suppress(FileNotFoundError):
        fsync_directory(final.parent)
    with contextlib.suppress(OSError):  # not empty, or gone already
        final.parent.rmdir()
        fsync_directory(final.parent.parent)


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
