"""The default blob store: chunks appended to pack files, found through a ``PackIndex``.

Layout: ``<root>/packs/<name>.pack`` (``chunkstore.blobs.packfile`` has the record
format); the index (digest -> pack, offset, length) and each pack's committed length are
in the database (``chunkstore.blobs.packindex``). Data directories of the older layout,
one file per chunk under ``objects/ab/cd/<digest>``, stay readable, and
``migrate_loose`` moves their blobs into packs.

Writing (invariants 1 and 3). A writer keeps the pieces it is given (views, no copy) and
touches no disk, so the event loop never waits on one. ``commit_many``, in a worker
thread: drops the digests the index has; appends the new records to this process's
active pack with ``pwritev`` under the append lock; makes them durable with one
``fdatasync`` of the pack that concurrent callers share (group commit: a leader syncs
everything written so far, a caller whose bytes that covered returns without a sync of
its own); then records the rows and the pack's new committed length in one index
transaction, which concurrent callers share too. Only then does it return, and only then
does the caller append the session's events. Writing a digest the index has stores
nothing. A request can also hand its blobs over as they complete (``PackStaging``): they
are appended then, and synced and indexed together at its commit, the same way.

Several processes may share a data directory: each appends only to packs it created and
holds an exclusive ``flock`` on each of them until it is sealed. At start-up
(``recover``), every unsealed pack whose lock can be taken (its writer died) is
truncated to its committed length (anything past it was never acknowledged) and sealed,
and every retired pack no row points into (a repack died before removing it) is removed.

Reading: ``open`` reads a record's payload with ``pread`` on a per-pack descriptor kept
open; ``locate`` gives (path, offset, length) for kernel copies.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import heapq
import io
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar, cast

import blake3

from chunkstore.blobs import (
    Appended,
    BlobLocation,
    BlobRef,
    BlobWriter,
    Chunk,
    HashingWriter,
    MigrationReport,
    is_digest,
)
from chunkstore.blobs.filesystem import FileBlobStore
from chunkstore.blobs.packfile import (
    FLAG_COMPRESSED,
    HEADER_SIZE,
    PACK_SUFFIX,
    PackScan,
    decode_header,
    encode_header,
    new_pack_name,
    scan_pack,
)
from chunkstore.blobs.packindex import IndexRow, PackIndex, merge_committed
from chunkstore.durable import fsync_directory, make_durable_dirs, start_writeback, write_all
from chunkstore.errors import CorruptBlob, full_disk_guard
from chunkstore.groupcommit import GroupCommit

log = logging.getLogger("chunkstore.blobs.packs")

MiB = 1024 * 1024
#: A pack is sealed once it reaches this size (``CHUNKSTORE_PACK_SIZE``): 32 files per
#: GiB stored, and a repack rewrites at most this much to reclaim a pack's dead records.
PACK_TARGET = 32 * MiB
#: Buffers one ``pwritev`` may take (Linux's IOV_MAX).
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
#: Bytes handed to one ``pwritev``. Long runs of small buffers are gathered into one
#: call; a large piece is cut into slices of this size (on the hosts measured, single
#: writes of 2 MiB or more ran several times slower than the same bytes in 1 MiB calls).
WRITE_BATCH = 1 * MiB
#: A writer told its blob's size streams the bytes into a pack as they arrive from this
#: size on (smaller ones are kept and written at commit, as before): the pack's
#: writeback then runs while the rest arrives, and the commit's ``fdatasync`` has only
#: the last piece left. Measured on 8 MiB raw chunks (1 GiB, 1 connection): the
#: ``fdatasync`` of a whole chunk written at commit took ~15 ms of its ~49 ms.
STREAM_FROM = 1 * MiB
#: A streaming writer hands its pieces to the pack's writer thread in runs of this many
#: bytes, and asks the kernel to start writing each run back (``sync_file_range``).
STREAM_FLUSH = 1 * MiB
#: Packs whose read descriptor stays open in this process.
OPEN_PACKS = 64
#: Loose blobs moved into packs per index transaction by ``migrate_loose``.
MIGRATE_BATCH_BYTES = 32 * MiB
MIGRATE_BATCH_COUNT = 2048

_T = TypeVar("_T")

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


# -- writers -------------------------------------------------------------------------------


class PackWriter(HashingWriter):
    """A blob on its way into a pack: the pieces it was given, hashed as they pass
    (unless the caller already did). Nothing reaches the disk before ``commit_many``;
    the caller must not change a piece's bytes until then."""

    __slots__ = ("_pieces",)

    def __init__(self, verified_digest: str | None = None) -> None:
        super().__init__(verified_digest)
        self._pieces: list[bytes | memoryview] = []

    @property
    def pieces(self) -> list[bytes | memoryview]:
        return self._pieces

    def write(self, data: bytes | memoryview) -> None:
        self._count(data)
        if len(data):
            self._pieces.append(data)

    def abort(self) -> None:
        self._pieces = []


class PackStreamWriter(HashingWriter):
    """A blob of known size on its way into a pack, its bytes written as they arrive.

    The first run of pieces leases a pack of this process (``_StreamLease``): no other
    writer appends to a leased pack, so this one's record can be laid down at the pack's
    end before its digest (in the header) is known. The writes, and the ``sync_file_range``
    that starts each run's writeback, happen on the store's stream thread: ``write`` and
    ``abort`` never wait on the disk. ``commit_many`` writes the header, waits for the
    runs, and makes the record durable and indexed as for any writer. The bytes of an
    aborted or duplicate record lie past the pack's end: the next append overwrites them,
    sealing or start-up recovery cuts them, and none is ever indexed."""

    __slots__ = ("_lease", "_pending", "_pending_size", "_store", "_written", "expected")

    def __init__(self, store: PackBlobStore, expected: int) -> None:
        super().__init__(None)
        self._store = store
        self.expected = expected
        self._lease: Future[_StreamLease] | None = None
        self._pending: list[bytes | memoryview] = []
        self._pending_size = 0
        #: The last run handed to the stream thread (runs complete in order).
        self._written: Future[None] | None = None

    def write(self, data: bytes | memoryview) -> None:
        if self._size + len(data) > self.expected:
            raise ValueError(f"a streamed blob takes at most {self.expected} bytes")
        self._count(data)
        if len(data):
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size >= STREAM_FLUSH:
                self._flush()

    def _flush(self) -> None:
        if self._lease is None:
            self._lease = self._store.stream_submit(self._store.lease, HEADER_SIZE + self.expected)
        offset = HEADER_SIZE + self._size - self._pending_size
        self._written = self._store.stream_submit(
            self._store.write_run, self._lease, self._pending, offset
        )
        self._pending, self._pending_size = [], 0

    def finish(self) -> _StreamLease:
        """Wait for every run to be written (in the calling worker thread) and write the
        record's header and last run; the lease, its record whole."""
        if self._pending or self._lease is None:
            self._flush()
        assert self._lease is not None and self._written is not None
        lease = self._lease.result()
        self._written.result()
        self._store.write_header(lease, self.digest(), self._size)
        self._lease = None  # the caller gives it back now
        return lease

    def give_back(self) -> None:
        """Wait for the runs under way, then give the lease back (in a worker thread:
        the next append finds the pack free)."""
        lease, self._lease, self._pending = self._lease, None, []
        if lease is not None:
            with contextlib.suppress(Exception):
                if self._written is not None:
                    self._written.result()
            self._store.give_back(lease)

    def abort(self) -> None:
        """Give the lease back once the runs under way are done (on the stream thread, so
        the caller does not wait)."""
        lease, self._lease, self._pending = self._lease, None, []
        if lease is None:
            return
        try:
            self._store.stream_submit(self._store.give_back, lease)
        except RuntimeError:  # the store is closed: its runs are all done
            self._store.give_back(lease)


@dataclass
class PackStats:
    """Counters of this process's store (what group commit saves shows here)."""

    commits: int = 0
    records: int = 0
    bytes: int = 0
    syncs: int = 0
    #: Index commits asked for, and the transactions they took.
    index_requests: int = 0
    index_transactions: int = 0
    packs_created: int = 0
    packs_sealed: int = 0


# -- the active packs (write side) ---------------------------------------------------------


class _WritablePack:
    """A pack this process appends to: its descriptor (holding the pack's flock), its end,
    how far it is synced and committed, and who still uses it."""

    def __init__(self, name: str, path: Path, fd: int) -> None:
        self.name = name
        self.path = path
        self.fd = fd
        #: Bytes written; only the append lock's holder moves it, once its writes are done.
        self.end = 0
        self.synced_upto = 0
        self.syncing = False
        #: The greatest length an index transaction has recorded for it.
        self.committed = 0
        self.failure: OSError | None = None
        self.cond = threading.Condition()
        #: The store's "active" reference plus one per ``commit_many`` under way.
        self.users = 1
        self.retired = False

    def sync(self, upto: int, stats: PackStats) -> None:
        """Return once bytes ``[0, upto)`` are durable. One caller at a time runs
        ``fdatasync`` for every byte written so far; callers it covered do not sync."""
        with self.cond:
            while self.synced_upto < upto:
                if self.failure is not None:
                    raise self.failure
                if self.syncing:
                    self.cond.wait()
                    continue
                self.syncing = True
                target = self.end
                self.cond.release()
                try:
                    os.fdatasync(self.fd)
                except OSError as error:
                    # Linux may forget a failed writeback once reported: this pack's
                    # unsynced bytes can never be trusted again.
                    self.failure = error
                    raise
                finally:
                    self.cond.acquire()
                    self.syncing = False
                    self.cond.notify_all()
                stats.syncs += 1
                self.synced_upto = max(self.synced_upto, target)


class _StreamLease(NamedTuple):
    """A pack leased to one streaming writer, its record to start at ``start``."""

    pack: _WritablePack
    start: int
    record: int


class _IndexCommits:
    """Group commit of index transactions: concurrent callers' rows go in one."""

    def __init__(self, index: PackIndex, stats: PackStats) -> None:
        self.index = index
        self.stats = stats
        self.group: GroupCommit[_IndexJob, list[bool]] = GroupCommit(self._commit)
        # Callers come from several threads: an unlocked += may lose a count.
        self._counting = threading.Lock()

    def add(self, rows: list[IndexRow], committed: dict[str, int], synced: bool) -> list[bool]:
        with self._counting:
            self.stats.index_requests += 1
        return self.group.submit(_IndexJob(rows, committed, synced))

    def _commit(self, batch: list[_IndexJob]) -> list[list[bool] | BaseException]:
        inserted = self.index.add(
            [row for job in batch for row in job.rows],
            merge_committed(*(job.committed for job in batch)),
            # Unsynced only if every caller in it commits a synced transaction after.
            synced=any(job.synced for job in batch),
        )
        self.stats.index_transactions += 1
        outcomes: list[list[bool] | BaseException] = []
        start = 0
        for job in batch:
            outcomes.append(inserted[start : start + len(job.rows)])
            start += len(job.rows)
        return outcomes


class _IndexJob(NamedTuple):
    rows: list[IndexRow]
    committed: dict[str, int]
    synced: bool


class _Appending:
    """Records one caller appended and has not committed yet: their rows, each pack's
    end after them, and the packs they are in (each with a use of the caller's)."""

    __slots__ = ("rows", "ends", "used")

    def __init__(self) -> None:
        self.rows: list[IndexRow] = []
        self.ends: dict[str, int] = {}
        self.used: dict[str, _WritablePack] = {}


class PackStaging:
    """One request's blobs written to packs as they are handed over (``add``), made
    durable and indexed together by ``commit``: a request's bytes need not wait in
    memory for its end (a 4-connection content-defined upload held up to ~100 MiB of
    batch bodies that way). Until ``commit`` the records are only bytes past what the
    index points at: ``abort`` (or a crash) leaves them dead, for a repack or the
    start-up cut to drop. A digest the index has, or that an earlier ``add`` carried,
    is not written again."""

    def __init__(self, store: PackBlobStore) -> None:
        self._store = store
        self._appending = _Appending()
        #: Per writer handed over: (digest, size, its row's position in the appended
        #: rows, or None for a blob stored already or earlier in this request).
        self._blobs: list[tuple[str, int, int | None]] = []
        #: Streamed blobs (already in their packs) by their place in ``_blobs``.
        self._streams: list[tuple[int, PackStreamWriter]] = []
        self._seen: set[str] = set()

    def add(self, writers: Sequence[BlobWriter]) -> None:
        store = self._store
        fresh: dict[str, PackWriter | PackStreamWriter] = {}
        for writer in writers:
            assert isinstance(writer, PackWriter | PackStreamWriter), "a writer of another store"
            digest = writer.digest()
            if digest not in self._seen and digest not in fresh:
                fresh[digest] = writer
        known = store.index.lookup_many(fresh) if fresh else {}
        now = store.clock()
        chunks: list[Chunk] = []
        row = len(self._appending.rows)
        try:
            for writer in writers:
                digest = writer.digest()
                stored = digest in known or (store.loose is not None and store.loose.exists(digest))
                new = fresh.get(digest) is writer and not stored
                if new and isinstance(writer, PackStreamWriter):
                    # Already in its pack: synced and indexed on its own at the commit.
                    self._streams.append((len(self._blobs), writer))
                    self._blobs.append((digest, writer.size, None))
                elif new:
                    assert isinstance(writer, PackWriter)
                    chunks.append(Chunk(digest, writer.size, writer.pieces, now))
                    self._blobs.append((digest, writer.size, row))
                    row += 1
                else:  # stored already, or earlier in this request
                    self._blobs.append((digest, writer.size, None))
            self._seen.update(fresh)
            if chunks:
                store._append(chunks, self._appending)
        finally:
            for writer in writers:
                if not isinstance(writer, PackStreamWriter):
                    writer.abort()  # drops the pieces
                elif all(writer is not kept for _, kept in self._streams):
                    writer.give_back()  # stored already: its lease is not needed

    def commit(self, recorded_after: bool = False) -> list[BlobRef]:
        """Make every added blob durable and indexed; their refs, in the order added.
        With ``recorded_after``, see ``BlobStore.commit_many``."""
        store = self._store
        streamed: dict[int, bool] = {}
        try:
            inserted: list[bool] = []
            if self._appending.rows:
                _, inserted = store._make_durable(self._appending, True, not recorded_after)
            now = store.clock()
            for position, writer in self._streams:
                streamed[position] = store._commit_stream(writer, now, not recorded_after)
        finally:
            self.abort()
        store.stats.commits += 1
        return [
            BlobRef(
                digest,
                size,
                created=streamed.get(position, False) or (row is not None and inserted[row]),
            )
            for position, (digest, size, row) in enumerate(self._blobs)
        ]

    def abort(self) -> None:
        """Give up: nothing added is indexed (its records are dead bytes)."""
        self._store._let_go(self._appending)
        streams, self._streams = self._streams, []
        for _, writer in streams:
            writer.give_back()  # a lease its commit did not end


# -- the read side -------------------------------------------------------------------------


class _PackHandle:
    """A read-only descriptor of one pack, shared by its readers; closed once it has
    been evicted and its last reader is done."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.fd = fd
        self.readers = 0
        self.evicted = False


class _PackHandles:
    def __init__(self, packs_dir: Path, limit: int = OPEN_PACKS) -> None:
        self.packs_dir = packs_dir
        self.limit = limit
        self.lock = threading.Lock()
        self.open: OrderedDict[str, _PackHandle] = OrderedDict()

    def acquire(self, name: str) -> _PackHandle:
        """The pack's handle with one more reader; ``FileNotFoundError`` if it is gone."""
        with self.lock:
            handle = self.open.get(name)
            if handle is not None and os.fstat(handle.fd).st_nlink == 0:
                # Removed by a repack since: its rows have moved; the caller looks again.
                self._evict(handle)
                handle = None
            if handle is None:
                fd = os.open(self.packs_dir / f"{name}{PACK_SUFFIX}", os.O_RDONLY | os.O_CLOEXEC)
                handle = _PackHandle(name, fd)
                self.open[name] = handle
                while len(self.open) > self.limit:
                    self._evict(next(iter(self.open.values())))
            self.open.move_to_end(name)
            handle.readers += 1
            return handle

    def release(self, handle: _PackHandle) -> None:
        with self.lock:
            handle.readers -= 1
            if handle.evicted and handle.readers == 0:
                os.close(handle.fd)

    def _evict(self, handle: _PackHandle) -> None:
        if self.open.get(handle.name) is handle:
            del self.open[handle.name]
        handle.evicted = True
        if handle.readers == 0:
            os.close(handle.fd)

    def close(self) -> None:
        with self.lock:
            for handle in list(self.open.values()):
                self._evict(handle)


class PackBlobReader(io.RawIOBase):
    """A blob's payload, read with ``pread`` from its pack: nothing is read before it is
    asked for, and no more than asked."""

    def __init__(
        self, handle: _PackHandle, start: int, length: int, release: Callable[[], None]
    ) -> None:
        super().__init__()
        self._handle = handle
        self._start = start
        self._length = length
        self._position = 0
        self._release: Callable[[], None] | None = release

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._length - self._position
        wanted = remaining if size is None or size < 0 else min(size, remaining)
        if wanted <= 0:
            return b""
        data = os.pread(self._handle.fd, wanted, self._start + self._position)
        self._check_short(len(data), wanted)
        self._position += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._length - self._position)
        if wanted <= 0:
            return 0
        got = os.preadv(self._handle.fd, [view[:wanted]], self._start + self._position)
        self._check_short(got, wanted)
        self._position += got
        return got

    def _check_short(self, got: int, wanted: int) -> None:
        if got < wanted:
            raise CorruptBlob(
                f"pack {self._handle.name} ends inside a blob's record (truncated pack)"
            )

    def close(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()
        super().close()


# -- the store -----------------------------------------------------------------------------


class PackBlobStore:
    """``BlobStore`` in packs, with ``BlobAgeing``, ``BlobEvidence``, ``TempFiles`` (the
    legacy layout's temp files), ``BlobLocations``, ``BlobMigration`` and ``PackedBlobs``."""

    def __init__(
        self,
        root: Path,
        index: PackIndex,
        pack_size: int = PACK_TARGET,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if pack_size <= 0:
            raise ValueError("the pack size must be positive")
        self.root = Path(root)
        self.packs_dir = self.root / "packs"
        self.index = index
        self.pack_size = pack_size
        self.clock = clock
        self.stats = PackStats()
        make_durable_dirs(self.packs_dir)
        #: The one-file-per-chunk layout, when the data directory has one.
        self.loose: FileBlobStore | None = (
            FileBlobStore(self.root) if (self.root / "objects").is_dir() else None
        )
        self._append_lock = threading.Lock()
        self._active: _WritablePack | None = None
        #: Packs of this process no appender holds now, with room left: a streaming
        #: writer leases one (or the active pack) and gives it back here.
        self._idle: list[_WritablePack] = []
        #: One thread writes streamed runs, in the order they were handed over.
        self._streams = ThreadPoolExecutor(1, thread_name_prefix="chunkstore-pack-stream")
        self._closed = False
        self._index_commits = _IndexCommits(index, self.stats)
        self._handles = _PackHandles(self.packs_dir)
        self.recover()

    def pack_path(self, name: str) -> Path:
        return self.packs_dir / f"{name}{PACK_SUFFIX}"

    def scan(self, name: str, verify: bool = False) -> PackScan:
        """The records of pack ``name`` read from its file (see ``scan_pack``)."""
        return scan_pack(self.pack_path(name), verify)

    # -- writing -----------------------------------------------------------------------

    def writer(
        self, expected_digest: str | None = None, verified: bool = False, size: int | None = None
    ) -> PackWriter | PackStreamWriter:
        """No lookup here: whether the index has the digest already is asked once per
        ``commit_many`` for all its writers, and a digest it has stores nothing then.
        ``verified``: the caller checked that the bytes hash to ``expected_digest``.
        A blob of a known ``size`` (at least ``STREAM_FROM``) and no expected digest
        (nothing suggests the store has it) is streamed into a pack as it arrives."""
        if expected_digest is not None and not is_digest(expected_digest):
            raise ValueError(f"not a BLAKE3 hex digest: {expected_digest!r}")
        if expected_digest is None and size is not None and size >= STREAM_FROM:
            return PackStreamWriter(self, size)
        return PackWriter(expected_digest if verified else None)

    def commit_many(
        self, writers: Sequence[BlobWriter], recorded_after: bool = False
    ) -> list[BlobRef]:
        """Make the writers' bytes durable and indexed (see the module's docstring). Must
        not be called inside a write transaction of the index's database. With
        ``recorded_after`` the index rows' transaction is not synced on its own: the
        caller's synced event transaction, right after, covers it (``BlobStore``)."""
        staging = self.staging()
        try:
            staging.add(writers)
        except BaseException:
            staging.abort()
            raise
        return staging.commit(recorded_after)

    def staging(self) -> PackStaging:
        """Writers' bytes appended as they are handed over, made durable and indexed
        together by ``commit`` (``BlobStaging``)."""
        return PackStaging(self)

    def store_chunks(self, chunks: Sequence[Chunk], synced_index: bool = True) -> list[bool]:
        """Append, sync and index ``chunks`` (digests trusted, none known to the index);
        per chunk, whether its row was inserted (another writer of the same digest may
        have won meanwhile: then its record is dead bytes a repack drops)."""
        return self._append_durably(chunks, True, synced_index)[1]

    def append_durably(self, chunks: Sequence[Chunk]) -> Appended:
        """Append ``chunks`` and make them durable, but add no rows: a repack then
        switches the rows with ``PackIndex.move``. The packs' committed lengths are
        raised (no rows) before the packs are let go: a pack sealed meanwhile is cut to
        its committed length, which would otherwise take these records with it."""
        return self._append_durably(chunks, False, True)[0]

    def _append_durably(
        self, chunks: Sequence[Chunk], with_rows: bool, synced: bool
    ) -> tuple[Appended, list[bool]]:
        """Append and sync ``chunks``, then commit the packs' new committed lengths,
        with the chunks' rows if ``with_rows``; per row, whether it was inserted."""
        appending = _Appending()
        try:
            self._append(chunks, appending)
            return self._make_durable(appending, with_rows, synced)
        finally:
            self._let_go(appending)

    def _make_durable(
        self, appending: _Appending, with_rows: bool, synced: bool
    ) -> tuple[Appended, list[bool]]:
        """Sync what ``appending`` wrote, then commit the packs' new committed lengths
        (with its rows if ``with_rows``); per row, whether it was inserted."""
        appended = Appended(appending.rows, appending.ends)
        self._sync(appended, list(appending.used.values()))
        rows = appended.rows if with_rows else []
        inserted = self._index_commits.add(rows, appended.committed, synced)
        for pack in appending.used.values():
            with pack.cond:
                pack.committed = max(pack.committed, appended.committed[pack.name])
        return appended, inserted

    def _let_go(self, appending: _Appending) -> None:
        """Give back the packs ``appending`` used (the last user seals a retired one)."""
        used, appending.used = list(appending.used.values()), {}
        for pack in used:
            self._release(pack)

    def _append(self, chunks: Sequence[Chunk], appending: _Appending) -> None:
        """Write the records (under the append lock), rolling over to a new pack where
        the target size says so; each pack written to is added to ``appending`` with a
        use, which the caller gives back (``_let_go``) once the records are committed
        or abandoned."""
        with self._append_lock:
            if self._closed:
                raise RuntimeError("the pack store is closed")
            pack: _WritablePack | None = None
            buffers: list[bytes | memoryview] = []
            position = 0
            for chunk in chunks:
                record = HEADER_SIZE + chunk.size
                if pack is None or self._full(position, record):
                    if pack is not None:
                        self._write(pack, buffers, position)
                        buffers = []
                        self._retire(pack)
                    pack = self._active_pack(record)
                    position = pack.end
                    if pack.name not in appending.used:
                        appending.used[pack.name] = pack
                        pack.users += 1
                buffers.append(encode_header(chunk.digest, chunk.size))
                buffers.extend(chunk.pieces)
                appending.rows.append(
                    IndexRow(
                        chunk.digest,
                        pack.name,
                        position,
                        chunk.size,
                        chunk.size,
                        0,
                        chunk.created_at,
                    )
                )
                position += record
                appending.ends[pack.name] = position
            if pack is not None:
                self._write(pack, buffers, position)
                if position >= self.pack_size:
                    self._retire(pack)
            self.stats.records += len(chunks)
            self.stats.bytes += sum(chunk.size for chunk in chunks)

    # -- streaming writers (see PackStreamWriter) ----------------------------------

    def stream_submit(self, work: Callable[..., _T], *args: object) -> Future[_T]:
        """Run ``work`` on the stream thread, after the runs handed over before it."""
        return self._streams.submit(work, *args)

    def lease(self, record: int) -> _StreamLease:
        """A pack no one else appends to until it is given back, with room for a record
        of ``record`` bytes at its end (on the stream thread: creating a pack touches the
        disk and the index)."""
        with self._append_lock:
            if self._closed:
                raise RuntimeError("the pack store is closed")
            candidates = [self._active] if self._active is not None else []
            candidates += self._idle
            for pack in candidates:
                if pack.failure is None and not self._full(pack.end, record):
                    if pack is self._active:
                        self._active = None
                    else:
                        self._idle.remove(pack)
                    return _StreamLease(pack, pack.end, record)
            return _StreamLease(self._create_pack(), 0, record)

    def write_run(
        self, lease: Future[_StreamLease], pieces: list[bytes | memoryview], offset: int
    ) -> None:
        """Write a run of a streamed record at ``offset`` into it and start its writeback
        (on the stream thread)."""
        held = lease.result()
        at = held.start + offset
        with full_disk_guard("chunks"):
            for batch in _write_batches(pieces):
                _pwritev_all(held.pack.fd, batch, at)
                at += sum(len(piece) for piece in batch)
        start_writeback(held.pack.fd, held.start + offset, at - held.start - offset)

    def write_header(self, lease: _StreamLease, digest: str, size: int) -> None:
        with full_disk_guard("chunks"):
            _pwritev_all(lease.pack.fd, [encode_header(digest, size)], lease.start)

    def give_back(self, lease: Future[_StreamLease] | _StreamLease, end: int | None = None) -> None:
        """End a lease. ``end``: the leased record is whole and the pack's end moves
        past it; the pack then keeps a use for the record's commit (``_make_durable``)."""
        try:
            held = lease.result() if isinstance(lease, Future) else lease
        except Exception:
            return  # no pack was leased
        pack = held.pack
        with self._append_lock:
            if end is not None:
                pack.end = end
                with pack.cond:
                    pack.users += 1
            if self._closed or pack.failure is not None or pack.end >= self.pack_size:
                self._retire(pack)
            elif self._active is None:
                self._active = pack
            else:
                self._idle.append(pack)

    def _commit_stream(self, writer: PackStreamWriter, now: float, synced_index: bool) -> bool:
        """Durably append and index a streamed record; whether its row was inserted."""
        lease = writer.finish()
        end = lease.start + HEADER_SIZE + writer.size
        pack = lease.pack
        row = IndexRow(writer.digest(), pack.name, lease.start, writer.size, writer.size, 0, now)
        self.give_back(lease, end)
        self.stats.records += 1
        self.stats.bytes += writer.size
        appending = _Appending()
        appending.rows.append(row)
        appending.ends[pack.name] = end
        appending.used[pack.name] = pack  # the use ``give_back`` left for this commit
        try:
            _, inserted = self._make_durable(appending, True, synced_index)
        finally:
            self._let_go(appending)
        return inserted[0]

    def _full(self, end: int, record: int) -> bool:
        """Whether a pack ``end`` bytes long takes no record of ``record`` bytes more: it
        has reached the target, or the record would take it past (a record larger than
        the target gets a pack of its own)."""
        return end >= self.pack_size or (end > 0 and end + record > self.pack_size)

    def _active_pack(self, record: int) -> _WritablePack:
        """This process's active pack, a new one if there is none or it is full or
        broken (under the append lock)."""
        active = self._active
        if active is not None and (active.failure is not None or self._full(active.end, record)):
            self._retire(active)
            active = None
        if active is None and self._idle:
            active = self._active = self._idle.pop()
            return self._active_pack(record)
        if active is None:
            active = self._active = self._create_pack()
        return active

    def _create_pack(self) -> _WritablePack:
        now = self.clock()
        name = new_pack_name(now)
        path = self.pack_path(name)
        with full_disk_guard("a new pack"):
            fd = os.open(path, _OPEN_FLAGS, 0o644)
        try:
            # Held until the pack is sealed: a starting process that can take it knows
            # the pack's writer is dead.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fsync_directory(self.packs_dir)
            self.index.register(name, now)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self.stats.packs_created += 1
        return _WritablePack(name, path, fd)

    def _write(self, pack: _WritablePack, buffers: list[bytes | memoryview], end: int) -> None:
        """Write ``buffers`` at ``pack.end`` (under the append lock); the pack's end moves
        to ``end`` only once every byte is written."""
        offset = pack.end
        try:
            with full_disk_guard("chunks"):
                for batch in _write_batches(buffers):
                    _pwritev_all(pack.fd, batch, offset)
                    offset += sum(len(buffer) for buffer in batch)
        except OSError:
            # Give back what the partial write took; the bytes past the end are never
            # indexed, and are overwritten by the next append or cut at sealing.
            with contextlib.suppress(OSError):
                os.ftruncate(pack.fd, pack.end)
            raise
        assert offset == end, (offset, end)
        pack.end = end

    def _sync(self, appended: Appended, packs: list[_WritablePack]) -> None:
        for pack in packs:
            with full_disk_guard("chunks"):
                pack.sync(appended.committed[pack.name], self.stats)

    def _retire(self, pack: _WritablePack) -> None:
        """No more appends to ``pack`` (under the append lock); sealed once its last
        commit is done."""
        if self._active is pack:
            self._active = None
        pack.retired = True
        self._release(pack)

    def _release(self, pack: _WritablePack) -> None:
        with pack.cond:
            pack.users -= 1
            last = pack.users == 0
        if last:
            self._seal(pack)

    def _seal(self, pack: _WritablePack) -> None:
        """Cut what no commit recorded, seal the pack in the index (or forget it if it
        holds nothing), and let go of its lock."""
        try:
            if os.fstat(pack.fd).st_size > pack.committed:
                os.ftruncate(pack.fd, pack.committed)
                os.fdatasync(pack.fd)
            if pack.committed == 0:
                pack.path.unlink()
                self.index.forget(pack.name)
            else:
                self.index.seal(pack.name)
                self.stats.packs_sealed += 1
        except Exception:
            # Left unsealed: the next start-up recovers it like any dead writer's pack.
            log.exception("sealing pack %s failed", pack.name)
        finally:
            os.close(pack.fd)

    # -- recovery ----------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Seal the unsealed packs whose writers died, truncating each to its committed
        length first, and remove the retired packs nothing points into; the names of the
        packs recovered."""
        recovered = []
        for info in self.index.packs():
            if info.retired:
                self._remove_retired(info.name)
                continue
            if info.sealed:
                continue
            path = self.pack_path(info.name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                if info.committed == 0:
                    self.index.forget(info.name)  # died between removing and forgetting it
                else:
                    log.warning("pack %s is missing (committed %d)", info.name, info.committed)
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer's
                self._recover(info.name, fd)
                recovered.append(info.name)
            finally:
                os.close(fd)
        return recovered

    def _remove_retired(self, name: str) -> None:
        """A retired pack's file, once no row points into it: a repack moved its rows and
        died before removing it (otherwise it would wait for the next gc). Safe at any
        time, in a new process as in another one still reading: a reader that has the
        file open keeps reading it (its bytes stay until the last descriptor closes), one
        that opens it later finds it gone and looks the digest up again, at its new place.
        A pack a row still points into (a damaged record a repack would not copy) stays,
        for audit."""
        if next(iter(self.index.rows_in(name)), None) is not None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.pack_path(name).unlink()
            log.info("pack %s: removed, retired by a repack that did not finish", name)
        fsync_directory(self.packs_dir)
        with contextlib.suppress(ValueError):
            self.index.forget(name)  # or another process did

    def _recover(self, name: str, fd: int) -> None:
        info = self.index.pack(name)  # read again: its writer may have committed more
        if info is None or info.sealed:
            return
        size = os.fstat(fd).st_size
        if size > info.committed:
            log.info("pack %s: cutting %d bytes a crash left", name, size - info.committed)
            os.ftruncate(fd, info.committed)
            os.fdatasync(fd)
        elif size < info.committed:
            # Bytes the index counts on are gone: left as found, for audit to name.
            log.warning("pack %s is %d bytes short of its committed length", name, size)
        if info.committed == 0:
            self.pack_path(name).unlink()
            self.index.forget(name)
        else:
            self.index.seal(name)

    def close(self) -> None:
        """Seal the active pack once its commits are done; close the read descriptors."""
        self._streams.shutdown(wait=True)
        with self._append_lock:
            self._closed = True
            if self._active is not None:
                self._retire(self._active)
            for pack in self._idle:
                self._retire(pack)
            self._idle.clear()
        self._handles.close()

    # -- reading -----------------------------------------------------------------------

    def open(self, digest: str) -> BinaryIO:
        for attempt in range(2):
            row = self.index.lookup(digest)
            if row is None:
                if self.loose is not None:
                    with contextlib.suppress(CorruptBlob):
                        return self.loose.open(digest)
                if attempt == 0:
                    continue  # migrated into a pack between the two looks
                raise CorruptBlob(f"blob {digest} is missing", digest=digest)
            try:
                handle = self._handles.acquire(row.pack)
            except FileNotFoundError:
                if attempt == 0:
                    continue  # a repack moved it and removed the pack: look again
                raise CorruptBlob(
                    f"pack {row.pack} holding blob {digest} is missing", digest=digest
                ) from None
            try:
                self._check_record(handle, row)
            except BaseException:
                self._handles.release(handle)
                raise
            release = functools.partial(self._handles.release, handle)
            reader = PackBlobReader(handle, row.payload_offset, row.length, release)
            return cast(BinaryIO, reader)
        raise AssertionError("unreachable")

    @staticmethod
    def _check_record(handle: _PackHandle, row: IndexRow) -> None:
        """The index and the pack agree on the record (one 48-byte read)."""
        found = decode_header(os.pread(handle.fd, HEADER_SIZE, row.offset), row.offset)
        if isinstance(found, str) or found.digest != row.digest or found.length != row.length:
            what = found if isinstance(found, str) else f"the record there is {found.digest}"
            raise CorruptBlob(
                f"blob {row.digest}: pack {row.pack} disagrees with the index ({what})",
                digest=row.digest,
            )
        if found.flags & FLAG_COMPRESSED:
            raise CorruptBlob(f"blob {row.digest} is compressed; this version cannot read it")

    def locate(self, digest: str) -> BlobLocation | None:
        row = self.index.lookup(digest)
        if row is not None:
            if row.flags:
                return None
            return BlobLocation(str(self.pack_path(row.pack)), row.payload_offset, row.length)
        if self.loose is not None:
            size = self.loose.size(digest)
            if size is not None:
                return BlobLocation(str(self.loose.path_for(digest)), 0, size)
        return None

    def locate_many(self, digests: Sequence[str]) -> dict[str, BlobLocation]:
        paths: dict[str, str] = {}  # a file's chunks mostly share a few packs
        found = {
            digest: BlobLocation(
                paths.get(row.pack) or paths.setdefault(row.pack, str(self.pack_path(row.pack))),
                row.payload_offset,
                row.length,
            )
            for digest, row in self.index.lookup_many(digests).items()
            if not row.flags
        }
        if self.loose is not None:
            for digest in digests:
                if digest not in found and (where := self.locate(digest)) is not None:
                    found[digest] = where
        return found

    def put(self, data: bytes) -> BlobRef:
        writer = self.writer()
        writer.write(data)
        return self.commit_many([writer])[0]

    def exists(self, digest: str) -> bool:
        if self.index.lookup(digest) is not None:
            return True
        return self.loose is not None and self.loose.exists(digest)

    def missing(self, digests: Iterable[str]) -> set[str]:
        wanted = set(digests)
        absent = wanted - self.index.lookup_many(wanted).keys()
        return absent if self.loose is None else self.loose.missing(absent)

    def size(self, digest: str) -> int | None:
        row = self.index.lookup(digest)
        if row is not None:
            return row.size
        return self.loose.size(digest) if self.loose is not None else None

    def delete(self, digest: str) -> bool:
        """Removes the index row (the bytes go at the pack's next repack), and a loose
        copy if there is one."""
        removed = bool(self.index.remove([digest]))
        if self.loose is not None:
            removed = self.loose.delete(digest) or removed
        return removed

    def digests(self) -> Iterator[str]:
        indexed = (row.digest for row in self.index.scan())
        if self.loose is None:
            yield from indexed
            return
        previous = None
        for digest in heapq.merge(indexed, self.loose.digests()):
            if digest != previous:
                yield digest
                previous = digest

    # -- capabilities ------------------------------------------------------------------

    def mtime(self, digest: str) -> float | None:
        row = self.index.lookup(digest)
        if row is not None:
            return row.created_at
        return self.loose.mtime(digest) if self.loose is not None else None

    def set_aside(self, digest: str, into: str) -> str | None:
        """Copy the record's payload to ``<root>/<into>/<digest>.<random>`` durably, then
        drop its index row (a loose blob is moved there instead)."""
        row = self.index.lookup(digest)
        if row is None:
            return self.loose.set_aside(digest, into) if self.loose is not None else None
        directory = self.root / into
        make_durable_dirs(directory)
        target = directory / f"{digest}.{secrets.token_hex(4)}"
        with full_disk_guard("evidence"), open(target, "xb") as out:
            self._copy_payload(row, out)
            out.flush()
            os.fsync(out.fileno())
        fsync_directory(directory)
        self.index.remove([digest])
        return str(target.relative_to(self.root))

    def _copy_payload(self, row: IndexRow, out: BinaryIO) -> None:
        """What is left of a record's payload (a pack may be short or gone), into ``out``."""
        with contextlib.suppress(FileNotFoundError), open(self.pack_path(row.pack), "rb") as pack:
            pack.seek(row.payload_offset)
            remaining = row.length
            while remaining and (piece := pack.read(min(MiB, remaining))):
                write_all(out.write, piece)
                remaining -= len(piece)

    def sweep_temp_files(self, older_than: float = 0.0) -> int:
        """Packs leave no temp files; the one-file-per-chunk layout's writers did."""
        return self.loose.sweep_temp_files(older_than) if self.loose is not None else 0

    def migrate_loose(self) -> MigrationReport:
        """Move every loose blob into packs: append, sync and index a batch, and only then
        remove its loose files, so a migration killed at any point loses nothing (run it
        again to finish). A loose blob that does not hash to its name stays where it is,
        for audit. Once ``objects/`` is empty it is removed."""
        report = MigrationReport()
        if self.loose is None:
            return report
        batch: list[tuple[Chunk, str]] = []
        batch_bytes = 0
        for digest, path in self.loose.entries():
            try:
                with open(path, "rb") as loose:
                    data = loose.read()
                    mtime = os.fstat(loose.fileno()).st_mtime
            except FileNotFoundError:
                continue  # deleted meanwhile (gc)
            if blake3.blake3(data).hexdigest() != digest:
                report.damaged += 1
                continue
            batch.append((Chunk(digest, len(data), [data], mtime), path))
            batch_bytes += len(data)
            if batch_bytes >= MIGRATE_BATCH_BYTES or len(batch) >= MIGRATE_BATCH_COUNT:
                self._migrate(batch, report)
                batch, batch_bytes = [], 0
        if batch:
            self._migrate(batch, report)
        if self._remove_empty_loose_dirs():
            self.loose = None
        return report

    def _migrate(self, batch: list[tuple[Chunk, str]], report: MigrationReport) -> None:
        known = self.index.lookup_many(chunk.digest for chunk, _ in batch)
        new = [chunk for chunk, _ in batch if chunk.digest not in known]
        if new:
            self.store_chunks(new)
        for chunk, path in batch:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            report.moved += 1
            report.bytes += chunk.size
        report.already_packed += len(batch) - len(new)

    def _remove_empty_loose_dirs(self) -> bool:
        """Remove ``objects/``'s empty directories; whether ``objects/`` itself went."""
        objects = self.root / "objects"
        for directory, _, _ in sorted(os.walk(objects), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        if objects.exists():
            return False
        for spread in (self.root / "tmp").glob("blobs-*"):
            with contextlib.suppress(OSError):
                spread.rmdir()
        fsync_directory(self.root)
        return True


def _write_batches(buffers: list[bytes | memoryview]) -> Iterator[list[bytes | memoryview]]:
    """``buffers`` regrouped for ``pwritev``: at most ``IOV_MAX`` buffers and about
    ``WRITE_BATCH`` bytes a call; a larger buffer is cut into views of that size."""
    batch: list[bytes | memoryview] = []
    size = 0
    for buffer in buffers:
        if len(buffer) > WRITE_BATCH:
            view = memoryview(buffer)
            pieces: list[bytes | memoryview] = [
                view[start : start + WRITE_BATCH] for start in range(0, len(view), WRITE_BATCH)
            ]
        else:
            pieces = [buffer]
        for piece in pieces:
            batch.append(piece)
            size += len(piece)
            if size >= WRITE_BATCH or len(batch) >= IOV_MAX:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _pwritev_all(fd: int, buffers: list[bytes | memoryview], offset: int) -> None:
    """``pwritev`` every byte of ``buffers`` at ``offset``, resuming after short writes."""
    while buffers:
        written = os.pwritev(fd, buffers, offset)
        offset += written
        while buffers and written >= len(buffers[0]):
            written -= len(buffers[0])
            buffers = buffers[1:]
        if buffers and written:
            buffers = [memoryview(buffers[0])[written:], *buffers[1:]]
