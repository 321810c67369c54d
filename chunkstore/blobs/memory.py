"""Blobs in memory (``memory://``): for tests and quick experiments."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

from chunkstore.blobs import BlobRef, BlobWriter, HashingWriter, is_digest
from chunkstore.errors import CorruptBlob


class MemoryBlobWriter(HashingWriter):
    __slots__ = ("_keep", "_pieces", "aborted")

    def __init__(self, verified_digest: str | None = None, keep: bool = True) -> None:
        super().__init__(verified_digest)
        self._keep = keep
        self._pieces: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes | memoryview) -> None:
        self._count(data)
        if self._keep:
            self._pieces.append(bytes(data))

    def data(self) -> bytes:
        return b"".join(self._pieces)

    def abort(self) -> None:
        self._pieces = []
        self.aborted = True


class MemoryBlobStore:
    """``BlobStore``, ``BlobAgeing`` and ``BlobEvidence`` in this process's memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[str, tuple[bytes, float]] = {}
        #: Blobs set aside as evidence: quarantine name -> (digest, bytes).
        self.quarantined: dict[str, tuple[str, bytes]] = {}

    def writer(
        self, expected_digest: str | None = None, verified: bool = False, size: int | None = None
    ) -> MemoryBlobWriter:
        if expected_digest is not None and self.exists(expected_digest):
            # Hash (unless verified) to check the bytes, but keep nothing.
            writer = MemoryBlobWriter(expected_digest if verified else None, keep=False)
            return writer
        return MemoryBlobWriter(expected_digest if verified else None)

    def commit_many(
        self, writers: Sequence[BlobWriter], recorded_after: bool = False
    ) -> list[BlobRef]:
        refs = []
        with self._lock:
            for writer in writers:
                assert isinstance(writer, MemoryBlobWriter)
                digest = writer.digest()
                if digest in self._blobs:
                    refs.append(BlobRef(digest, writer.size, created=False))
                    continue
                data = writer.data()
                if len(data) != writer.size:
                    raise CorruptBlob(f"blob {digest} vanished while it was being verified")
                self._blobs[digest] = (data, time.time())
                refs.append(BlobRef(digest, writer.size, created=True))
        return refs

    def put(self, data: bytes) -> BlobRef:
        writer = self.writer()
        writer.write(data)
        return self.commit_many([writer])[0]

    def open(self, digest: str) -> BinaryIO:
        with self._lock:
            found = self._blobs.get(digest)
        if found is None:
            raise CorruptBlob(f"blob {digest} is missing", digest=digest)
        return io.BytesIO(found[0])

    def exists(self, digest: str) -> bool:
        with self._lock:
            return digest in self._blobs

    def missing(self, digests: Iterable[str]) -> set[str]:
        with self._lock:
            return {digest for digest in digests if digest not in self._blobs}

    def size(self, digest: str) -> int | None:
        with self._lock:
            found = self._blobs.get(digest)
        return len(found[0]) if found is not None else None

    def delete(self, digest: str) -> bool:
        with self._lock:
            return self._blobs.pop(digest, None) is not None

    def digests(self) -> Iterator[str]:
        with self._lock:
            digests = sorted(self._blobs)
        yield from digests

    def mtime(self, digest: str) -> float | None:
        with self._lock:
            found = self._blobs.get(digest)
        return found[1] if found is not None else None

    def set_aside(self, digest: str, into: str) -> str | None:
        with self._lock:
            found = self._blobs.pop(digest, None)
            if found is None:
                return None
            name = f"{into}/{digest}.{len(self.quarantined)}"
            self.quarantined[name] = (digest, found[0])
        return name

    def replace_bytes(self, digest: str, data: bytes) -> None:
        """Overwrite a blob's bytes in place: damage, for tests of readers that re-hash."""
        if not is_digest(digest):
            raise ValueError(f"not a digest: {digest!r}")
        with self._lock:
            self._blobs[digest] = (data, self._blobs.get(digest, (b"", time.time()))[1])
