"""Manifests: what a completed upload is made of, stored as a content-addressed object.

A manifest lists the chunk digests and sizes in order plus the whole file's size and
hashes. The final file is derived from it and can be rebuilt from it at any time.
``assemble`` is the one streaming pass that rebuilds a file: it re-hashes every chunk
against its name while computing the whole-file hashes and writing the bytes out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import blake3
import msgspec

from chunkstore.blobs import BlobStore
from chunkstore.errors import CorruptBlob

READ_SIZE = 1024 * 1024
HANDOFF_SIZE = 4 * 1024 * 1024


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    format: int = 1
    upload_id: str
    filename: str
    size: int
    blake3: str
    sha256: str
    #: [digest, size] of every chunk, in file order.
    chunks: list[tuple[str, int]]

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        return msgspec.json.decode(data, type=cls)


class Assembled(msgspec.Struct, frozen=True):
    size: int
    blake3: str
    sha256: str
    #: The file's first ``head_size`` bytes (what libmagic reads to detect its type).
    head: bytes = b""


class Sink(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...


# Hashing and writing release the GIL; a small pool lets the whole-file hashes and the
# write run beside the chunk checks instead of after them.
_pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="assemble")


def assemble(
    blobs: BlobStore,
    chunks: Sequence[tuple[str, int]],
    out: Sink | None = None,
    head_size: int = 0,
) -> Assembled:
    """Stream the chunks in order into ``out`` (if given), verifying each against its
    digest; the result keeps the first ``head_size`` bytes.

    This thread reads and BLAKE3-hashes each chunk; the whole file's SHA-256 and BLAKE3
    and the writes of the previous few MiB run meanwhile in the pool. Handing work over in
    ``HANDOFF_SIZE`` buffers, not per chunk, keeps small chunks from paying a thread
    round trip each. At most two buffers are in memory.
    """
    whole_blake3 = blake3.blake3()
    whole_sha256 = hashlib.sha256()
    size = 0
    pending: list[Future[object]] = []
    buffer: list[bytes] = []
    buffered = 0
    head = bytearray()

    def hand_off() -> None:
        nonlocal pending, buffer, buffered
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        for job in pending:  # keep the whole-file hash updates and writes in file order
            job.result()
        pending = [
            _pool.submit(whole_sha256.update, data),
            _pool.submit(whole_blake3.update, data),
        ]
        if out is not None:
            pending.append(_pool.submit(out.write, data))
        if len(head) < head_size:
            head.extend(memoryview(data)[: head_size - len(head)])
        buffer, buffered = [], 0

    try:
        for digest, expected_size in chunks:
            chunk_hash = blake3.blake3()
            chunk_size = 0
            with blobs.open(digest) as blob:
                while piece := blob.read(READ_SIZE):
                    chunk_hash.update(piece)
                    buffer.append(piece)
                    buffered += len(piece)
                    chunk_size += len(piece)
                    if buffered >= HANDOFF_SIZE:
                        hand_off()
            if chunk_hash.hexdigest() != digest:
                raise CorruptBlob(f"blob {digest} does not hash to its name", digest=digest)
            if chunk_size != expected_size:
                raise CorruptBlob(
                    f"blob {digest} has {chunk_size} bytes, the manifest says {expected_size}",
                    digest=digest,
                )
            size += chunk_size
        if buffer:
            hand_off()
    finally:
        for job in pending:
            job.result()
    return Assembled(size, whole_blake3.hexdigest(), whole_sha256.hexdigest(), bytes(head))
