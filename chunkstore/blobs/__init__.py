"""The blob port: immutable bytes named by their BLAKE3-256 digest.

The library depends on the ``BlobStore`` protocol, never on a class. A store hands out
``BlobWriter``s: bytes are hashed while they are written to a private temporary place,
and ``commit_many`` makes them visible under their digests only once they are durable.
Writing a digest that already exists stores nothing.

Capabilities a backend may have, each its own small protocol announced in the ``Store``
(``chunkstore.store``), never probed for: ``BlobAgeing`` (when a blob was written: gc
spares young ones), ``BlobEvidence`` (set a damaged blob aside so a good copy can take
its name: audit's repair), ``TempFiles`` (sweep what a crash left half-written),
``BlobLocations`` (where a blob's bytes lie in a local file, for kernel copies),
``BlobMigration`` (move blobs of the one-file-per-chunk layout into packs) and
``PackedBlobs`` (the packs and their index, for repacking and auditing packs).

Backends: ``packs`` (the default on a local directory), ``memory``, and ``filesystem``
(the one-file-per-chunk layout, now only read, deleted from and migrated by ``packs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, Protocol

import blake3
import msgspec

if TYPE_CHECKING:
    from chunkstore.blobs.packfile import PackScan
    from chunkstore.blobs.packindex import IndexRow, PackIndex

DIGEST_LENGTH = 64
_HEX = frozenset("0123456789abcdef")


def is_digest(value: str) -> bool:
    """Whether ``value`` is a BLAKE3-256 digest as blobs are named: 64 lowercase hex."""
    return len(value) == DIGEST_LENGTH and set(value) <= _HEX


class BlobRef(msgspec.Struct, frozen=True):
    digest: str
    size: int
    #: False when the store already held these bytes (nothing new was written).
    created: bool = True


class HashingWriter:
    """What every blob writer shares: the size of the bytes written and their BLAKE3
    digest, hashed as they pass unless the caller already verified them
    (``verified_digest``: then that is the digest, and nothing is hashed again)."""

    __slots__ = ("_hasher", "_size", "_verified")

    def __init__(self, verified_digest: str | None = None) -> None:
        self._verified = verified_digest
        self._hasher = None if verified_digest else blake3.blake3()
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def _count(self, data: bytes | memoryview) -> None:
        """Hash (unless verified) and count ``data``, written by the subclass."""
        if self._hasher is not None:
            self._hasher.update(data)
        self._size += len(data)

    def digest(self) -> str:
        if self._hasher is None:
            assert self._verified is not None
            return self._verified
        return self._hasher.hexdigest()


class BlobWriter(Protocol):
    @property
    def size(self) -> int: ...

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes; hashes them as they pass."""
        ...

    def digest(self) -> str:
        """BLAKE3-256 hex of everything written so far."""
        ...

    def abort(self) -> None:
        """Forget everything written; leaves no trace."""
        ...


class BlobStore(Protocol):
    def writer(
        self, expected_digest: str | None = None, verified: bool = False, size: int | None = None
    ) -> BlobWriter:
        """A writer for new bytes. With ``expected_digest`` of a blob the store already
        has, the writer may only hash (the bytes must still be verified, not stored).
        ``verified``: the caller has already checked the bytes hash to that digest.
        ``size``: how many bytes will be written at most (a store may start writing
        them to disk before they have all arrived; the writer refuses more)."""
        ...

    def commit_many(
        self, writers: Sequence[BlobWriter], recorded_after: bool = False
    ) -> list[BlobRef]:
        """Make the writers' bytes durable and visible under their digests, together.

        ``recorded_after``: the caller appends events to the log right after, in a
        synced transaction, and acknowledges nothing before that. A store whose index
        lives in the log's database may leave its index rows' sync to that
        transaction (one sync instead of two per request; ``chunkstore.sqlitedb``)."""
        ...

    def put(self, data: bytes) -> BlobRef:
        """Store ``data`` (durable on return)."""
        ...

    def open(self, digest: str) -> BinaryIO:
        """The blob's bytes; raises ``CorruptBlob`` if it is absent."""
        ...

    def exists(self, digest: str) -> bool: ...

    def missing(self, digests: Iterable[str]) -> set[str]:
        """Those of ``digests`` the store does not have (one question for many: an
        append checks every chunk it names under the log's write lock)."""
        ...

    def size(self, digest: str) -> int | None: ...

    def delete(self, digest: str) -> bool: ...

    def digests(self) -> Iterator[str]:
        """Every stored digest, in digest order (audit and gc scan the store with it)."""
        ...


class BlobStaging(Protocol):
    """One request's blobs on their way in: handed over as they complete (``add``),
    then made durable and visible together (``commit``), or given up (``abort``)."""

    def add(self, writers: Sequence[BlobWriter]) -> None:
        """Take these finished writers' bytes (the writers are spent afterwards)."""
        ...

    def commit(self, recorded_after: bool = False) -> list[BlobRef]:
        """Every added blob durable and visible; their refs in the order added
        (``recorded_after`` as in ``BlobStore.commit_many``)."""
        ...

    def abort(self) -> None:
        """Nothing added becomes visible."""
        ...


class StagedBlobs(Protocol):
    def staging(self) -> BlobStaging:
        """A staging that stores bytes as they are added, so they need not wait in the
        caller's memory until the commit."""
        ...


class HeldStaging:
    """Staging for a store without ``StagedBlobs``: the writers (and the bytes they
    keep) wait until ``commit`` hands them all to ``commit_many``."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._writers: list[BlobWriter] = []

    def add(self, writers: Sequence[BlobWriter]) -> None:
        self._writers.extend(writers)

    def commit(self, recorded_after: bool = False) -> list[BlobRef]:
        writers, self._writers = self._writers, []
        return self._blobs.commit_many(writers, recorded_after)

    def abort(self) -> None:
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.abort()


class BlobAgeing(Protocol):
    def mtime(self, digest: str) -> float | None:
        """When the blob was written (seconds since the epoch); None if it is absent."""
        ...


class BlobEvidence(Protocol):
    def set_aside(self, digest: str, into: str) -> str | None:
        """Move a (damaged) blob out of the store into the quarantine named ``into``,
        keeping it as evidence; where it went, or None if there was no such blob."""
        ...


class TempFiles(Protocol):
    def sweep_temp_files(self, older_than: float = 0.0) -> int:
        """Remove what writers left half-written (a crash), older than ``older_than``
        seconds so a live writer's work is spared; how many were removed."""
        ...


class BlobLocation(NamedTuple):
    """Where a blob's bytes lie: ``length`` bytes at ``offset`` of the local file ``path``."""

    path: str
    offset: int
    length: int


class BlobLocations(Protocol):
    def locate(self, digest: str) -> BlobLocation | None:
        """Where the blob's plain bytes can be read (``os.copy_file_range``, ``sendfile``)
        straight from a file; None if it is absent or not stored plain."""
        ...

    def locate_many(self, digests: Sequence[str]) -> dict[str, BlobLocation]:
        """``locate`` for many blobs in one look-up; those absent or not stored plain
        are left out."""
        ...


class MigrationReport(msgspec.Struct, kw_only=True):
    #: Loose blobs now in packs whose files were removed, and their bytes.
    moved: int = 0
    bytes: int = 0
    #: Of those, the ones the packs held already (a migration cut short before).
    already_packed: int = 0
    #: Loose blobs that do not hash to their names: left where they are, for audit.
    damaged: int = 0


class BlobMigration(Protocol):
    def migrate_loose(self) -> MigrationReport:
        """Move blobs stored one file each into packs; killed at any point, nothing is
        lost (the loose file goes only once its record is durable and indexed)."""
        ...


class Chunk(NamedTuple):
    """A record to append to a pack: its digest (trusted: the caller has verified it),
    plain size, the pieces of its bytes, and when it was first written (gc's grace)."""

    digest: str
    size: int
    pieces: Sequence[bytes | memoryview]
    created_at: float


class Appended(NamedTuple):
    """Records written to packs and made durable, not yet in the index: their rows, and
    each pack's committed length once they are (what ``PackIndex.add``/``move`` take)."""

    rows: list[IndexRow]
    committed: dict[str, int]


class PackedBlobs(Protocol):
    """The packs under a pack store, for the work that goes beneath the blob port:
    repacking (gc) and checking packs against the index both ways (audit)."""

    @property
    def index(self) -> PackIndex: ...

    def pack_path(self, name: str) -> Path:
        """The file of pack ``name``."""
        ...

    def scan(self, name: str, verify: bool = False) -> PackScan:
        """Pack ``name``'s records read from its file, re-hashed with ``verify``."""
        ...

    def append_durably(self, chunks: Sequence[Chunk]) -> Appended:
        """Append records to this process's active pack and fdatasync them, leaving the
        index alone (a repack then switches rows with ``PackIndex.move``)."""
        ...


def put_stream(blobs: BlobStore, pieces: Iterable[bytes], size: int | None = None) -> BlobRef:
    """Store the concatenation of ``pieces`` through a writer (durable on return);
    ``size``, if known, lets the store write them to disk as they come."""
    writer = blobs.writer(size=size)
    try:
        for piece in pieces:
            writer.write(piece)
    except BaseException:
        writer.abort()
        raise
    return blobs.commit_many([writer])[0]
