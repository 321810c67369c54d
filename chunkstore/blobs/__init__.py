"""Blob stores: immutable bytes named by their BLAKE3-256 digest.

The library depends on the ``BlobStore`` protocol, never on a class. A store hands out
``BlobWriter``s: bytes are hashed while they are written to a private temporary place,
and ``commit`` makes them visible under their digest only once they are durable. Writing
a digest that already exists is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO, Protocol

import msgspec


class BlobRef(msgspec.Struct, frozen=True):
    digest: str
    size: int
    #: False when the store already held these bytes (nothing new was written).
    created: bool = True


class BlobWriter(Protocol):
    @property
    def size(self) -> int: ...

    def write(self, data: bytes) -> None:
        """Append bytes; hashes them as they pass."""

    def digest(self) -> str:
        """BLAKE3-256 hex of everything written so far."""

    def commit(self) -> BlobRef:
        """Make the bytes durable and visible under their digest."""

    def abort(self) -> None:
        """Forget everything written; leaves no trace."""


class BlobStore(Protocol):
    def writer(self, expected_digest: str | None = None, verified: bool = False) -> BlobWriter:
        """A writer for new bytes. With ``expected_digest`` of a blob the store already
        has, the writer may only hash (the bytes must still be verified, not stored).
        ``verified``: the caller has already checked the bytes hash to that digest."""

    def commit_many(self, writers: Sequence[BlobWriter]) -> list[BlobRef]:
        """Commit several writers at once; a store may make them durable together."""

    def put_stream(self, chunks: Iterable[bytes]) -> BlobRef: ...

    def put(self, data: bytes) -> BlobRef: ...

    def open(self, digest: str) -> BinaryIO:
        """The blob's bytes; raises ``CorruptBlob`` if it is absent."""

    def exists(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int | None: ...

    def delete(self, digest: str) -> bool: ...

    def digests(self) -> Iterator[str]:
        """Every stored digest (for audit and gc)."""
