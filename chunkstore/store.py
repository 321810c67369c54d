"""The composition root: one place builds the ``Store`` every part of chunkstore uses.

Each I/O concern is a narrow port (``chunkstore.eventlog``, ``blobs``, ``files``,
``locks``, ``tails``, ``tokens``); a backend implements one or more of them, and
optional capabilities are fields of the ``Store`` that are ``None`` (or empty) when the
chosen backends lack them, never probed for. ``open_store(settings)`` picks the backends
from two URLs:

- ``db_url``: the event log, its projections and the tokens: ``sqlite:///path`` (the
  embedded default, ``<data_dir>/chunkstore.sqlite3``) or ``memory://``;
- ``blobs_url``: blobs, final files, offset-stream tails and per-upload locks:
  ``file:///path`` (the embedded default, the data directory) or ``memory://``.

On ``file://`` the blobs are packs (``chunkstore.blobs.packs``) whose index lives where
``db_url`` says: in the log's SQLite database, or in memory beside a ``memory://`` log.

Only this module imports backend modules; everything else receives a ``Store``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from chunkstore.blobs import (
    BlobAgeing,
    BlobEvidence,
    BlobLocations,
    BlobMigration,
    BlobStaging,
    BlobStore,
    HeldStaging,
    PackedBlobs,
    StagedBlobs,
    TempFiles,
)
from chunkstore.blobs.packindex import PackIndex
from chunkstore.config import Settings
from chunkstore.eventlog import EventLog, SessionIndex, SweepGuard
from chunkstore.files import FileCopies, FileSink
from chunkstore.locks import Locker
from chunkstore.tails import TailStore
from chunkstore.tokens import TokenStore

log = logging.getLogger("chunkstore.store")


@dataclass(frozen=True)
class Store:
    log: EventLog
    index: SessionIndex
    blobs: BlobStore
    files: FileSink
    locks: Locker
    tails: TailStore
    tokens: TokenStore
    #: The log's write lock, under which gc deletes blobs (see ``chunkstore.gc``).
    sweep_guard: SweepGuard | None = None
    #: When each blob was written: gc never sweeps a blob younger than its grace.
    blob_ageing: BlobAgeing | None = None
    #: Setting a damaged blob aside as evidence, so audit's repair can restore it.
    blob_evidence: BlobEvidence | None = None
    #: Backends that keep half-written work a crash can leave behind.
    temp_files: tuple[TempFiles, ...] = ()
    #: Where a blob's bytes lie in a local file: kernel copies instead of reads.
    blob_locations: BlobLocations | None = None
    #: Moving blobs of the one-file-per-chunk layout into packs (``chunkstore repack``).
    blob_migration: BlobMigration | None = None
    #: Final files filled by kernel copies from ``blob_locations`` (with it only).
    file_copies: FileCopies | None = None
    #: The packs and their index under the blob port (repacking, auditing packs).
    packs: PackedBlobs | None = None
    #: Blobs written as a request's chunks complete, not held until its end.
    staged_blobs: StagedBlobs | None = None
    #: What was chosen, for the start-up log line: port -> backend.
    backends: dict[str, str] = field(default_factory=dict)
    #: Releases what the backends hold besides the log and tokens (open packs).
    closers: tuple[Callable[[], None], ...] = ()

    @property
    def capabilities(self) -> list[str]:
        named = {
            "sweep_guard": self.sweep_guard,
            "blob_ageing": self.blob_ageing,
            "blob_evidence": self.blob_evidence,
            "blob_locations": self.blob_locations,
            "blob_migration": self.blob_migration,
            "file_copies": self.file_copies,
            "packs": self.packs,
            "staged_blobs": self.staged_blobs,
        }
        found = [name for name, value in named.items() if value is not None]
        return found + (["temp_files"] if self.temp_files else [])

    def blob_staging(self) -> BlobStaging:
        """Where a request's blobs go as they complete (``BlobStaging``)."""
        if self.staged_blobs is not None:
            return self.staged_blobs.staging()
        return HeldStaging(self.blobs)

    def close(self) -> None:
        # The blobs first: sealing the active pack writes to the database.
        for close in self.closers:
            close()
        self.log.close()
        self.tokens.close()


def db_url(settings: Settings) -> str:
    return settings.db_url or f"sqlite://{settings.database_path}"


def blobs_url(settings: Settings) -> str:
    return settings.blobs_url or f"file://{settings.data_dir}"


def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"{parts.scheme}:// URLs name a local path: {parts.scheme}:///path")
    return Path(parts.path)


@dataclass(frozen=True)
class _Database:
    log: EventLog
    index: SessionIndex
    sweep_guard: SweepGuard | None
    tokens: TokenStore
    #: Where a pack store on local files keeps its index.
    pack_index: PackIndex
    described: str


@dataclass(frozen=True)
class _Storage:
    blobs: BlobStore
    files: FileSink
    locks: Locker
    tails: TailStore
    blob_ageing: BlobAgeing | None
    blob_evidence: BlobEvidence | None
    temp_files: tuple[TempFiles, ...]
    described: str
    blob_locations: BlobLocations | None = None
    blob_migration: BlobMigration | None = None
    file_copies: FileCopies | None = None
    packs: PackedBlobs | None = None
    staged_blobs: StagedBlobs | None = None
    closers: tuple[Callable[[], None], ...] = ()


def _open_database(url: str) -> _Database:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from chunkstore.blobs.packindex.sqlite import SQLitePackIndex
        from chunkstore.eventlog.sqlite import SQLiteLog
        from chunkstore.tokens.sqlite import SQLiteTokens

        path = _local_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        sqlite_log = SQLiteLog(path)
        return _Database(
            sqlite_log,
            sqlite_log,
            sqlite_log,
            SQLiteTokens(path),
            # The log's connections: gc deletes index rows under the log's write lock.
            SQLitePackIndex(sqlite_log.db),
            f"sqlite {path}",
        )
    if scheme == "memory":
        from chunkstore.blobs.packindex.memory import MemoryPackIndex
        from chunkstore.eventlog.memory import MemoryLog
        from chunkstore.tokens.memory import MemoryTokens

        memory_log = MemoryLog()
        return _Database(
            memory_log, memory_log, memory_log, MemoryTokens(), MemoryPackIndex(), "memory"
        )
    raise ValueError(f"unknown event log URL scheme {scheme!r}: use sqlite:// or memory://")


def _open_storage(url: str, pack_index: PackIndex, settings: Settings) -> _Storage:
    scheme = urlsplit(url).scheme
    if scheme == "file":
        from chunkstore.blobs.packs import PackBlobStore
        from chunkstore.files.local import LocalFiles
        from chunkstore.locks.flock import FlockLocks
        from chunkstore.tails.local import LocalTails

        root = _local_path(url)
        pack_blobs = PackBlobStore(root, pack_index, settings.pack_size)
        local_files = LocalFiles(root)
        return _Storage(
            blobs=pack_blobs,
            files=local_files,
            locks=FlockLocks(root / "locks"),
            tails=LocalTails(root / "staging"),
            blob_ageing=pack_blobs,
            blob_evidence=pack_blobs,
            temp_files=(pack_blobs, local_files),
            blob_locations=pack_blobs,
            blob_migration=pack_blobs,
            file_copies=local_files,
            packs=pack_blobs,
            staged_blobs=pack_blobs,
            closers=(pack_blobs.close,),
            described=f"packs in local directory {root}",
        )
    if scheme == "memory":
        from chunkstore.blobs.memory import MemoryBlobStore
        from chunkstore.files.memory import MemoryFiles
        from chunkstore.locks.memory import MemoryLocks
        from chunkstore.tails.memory import MemoryTails

        memory_blobs = MemoryBlobStore()
        return _Storage(
            blobs=memory_blobs,
            files=MemoryFiles(),
            locks=MemoryLocks(),
            tails=MemoryTails(),
            blob_ageing=memory_blobs,
            blob_evidence=memory_blobs,
            temp_files=(),
            described="memory",
        )
    raise ValueError(f"unknown blobs URL scheme {scheme!r}: use file:// or memory://")


def open_store(settings: Settings) -> Store:
    """The store ``settings`` name (see the module's docstring); logs what it chose."""
    database = _open_database(db_url(settings))
    storage = _open_storage(blobs_url(settings), database.pack_index, settings)
    store = Store(
        log=database.log,
        index=database.index,
        blobs=storage.blobs,
        files=storage.files,
        locks=storage.locks,
        tails=storage.tails,
        tokens=database.tokens,
        sweep_guard=database.sweep_guard,
        blob_ageing=storage.blob_ageing,
        blob_evidence=storage.blob_evidence,
        temp_files=storage.temp_files,
        blob_locations=storage.blob_locations,
        blob_migration=storage.blob_migration,
        file_copies=storage.file_copies,
        packs=storage.packs,
        staged_blobs=storage.staged_blobs,
        closers=storage.closers,
        backends={
            "log, projections, tokens": database.described,
            "blobs, files, tails, locks": storage.described,
        },
    )
    log.info("store", extra={"backends": store.backends, "capabilities": store.capabilities})
    return store
