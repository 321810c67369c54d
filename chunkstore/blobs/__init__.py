"""The blob port: immutable bytes named by their BLAKE3-256 digest.

The library depends on the ``BlobStore`` protocol, never on a class. A store hands out
``BlobWriter``s: bytes are hashed while they are written to a private temporary place,
and ``commit_many`` makes them visible under their digests only once they are durable.
Writing a digest that already exists stores nothing.

Capabilities a backend may have, each its own small protocol announced in the ``Store``
(``chunkstore.store``), never probed for: ``BlobAgeing`` (when a blob was written: gc
spares young ones), ``BlobEvidence`` (set a damaged blob aside so a good copy can take
its name: audit's repair) and ``TempFiles`` (sweep what a crash left half-written).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO, Protocol

import msgspec

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
    def writer(self, expected_digest: str | None = None, verified: bool = False) -> BlobWriter:
        """A writer for new bytes. With ``expected_digest`` of a blob the store already
        has, the writer may only hash (the bytes must still be verified, not stored).
        ``verified``: the caller has already checked the bytes hash to that digest."""
        ...

    def commit_many(self, writers: Sequence[BlobWriter]) -> list[BlobRef]:
        """Make the writers' bytes durable and visible under their digests, together."""
        ...

    def put(self, data: bytes) -> BlobRef:
        """Store ``data`` (durable on return)."""
        ...

    def open(self, digest: str) -> BinaryIO:
        """The blob's bytes; raises ``CorruptBlob`` if it is absent."""
        ...

    def exists(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int | None: ...

    def delete(self, digest: str) -> bool: ...

    def digests(self) -> Iterator[str]:
        """Every stored digest, in digest order (audit and gc scan the store with it)."""
        ...


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


def put_stream(blobs: BlobStore, pieces: Iterable[bytes]) -> BlobRef:
    """Store the concatenation of ``pieces`` through a writer (durable on return)."""
    writer = blobs.writer()
    try:
        for piece in pieces:
            writer.write(piece)
    except BaseException:
        writer.abort()
        raise
    return blobs.commit_many([writer])[0]
