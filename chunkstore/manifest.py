"""Manifests: what a completed upload is made of, stored as a content-addressed object.

A manifest lists the chunk digests and sizes in order plus the whole file's size and
hashes. The final file is derived from it and can be rebuilt from it at any time.
``assemble`` is the one streaming pass that rebuilds a file: it re-hashes every chunk
against its name while computing the whole-file hashes and writing the bytes out;
``verify_file`` makes the same checks over a file that is already whole.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Protocol, cast

import blake3
import msgspec

from chunkstore.blobs import BlobLocation, BlobLocations, BlobRef, BlobStore, put_stream
from chunkstore.errors import CorruptBlob

READ_SIZE = 1024 * 1024
#: Chunks a manifest's encoding takes at a time (``Manifest.pieces``).
ENCODE_PAGE = 4096


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

    def pieces(self, chunks: Iterable[tuple[str, int]]) -> Iterator[bytes]:
        """The encoding of this manifest with ``chunks`` in place of its own, a page of
        chunks at a time: the same bytes as ``encode`` (so the same digest), without
        the whole list or its encoding in memory."""
        head = msgspec.json.encode(msgspec.structs.replace(self, chunks=[]))
        assert head.endswith(b"[]}")  # the chunks are the last field
        yield head[:-2]
        separator = b""
        remaining = iter(chunks)
        while page := list(itertools.islice(remaining, ENCODE_PAGE)):
            yield separator + msgspec.json.encode(page)[1:-1]
            separator = b","
        yield b"]}"

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        return msgspec.json.decode(data, type=cls)


def store_manifest(
    blobs: BlobStore, manifest: Manifest, chunks: Sequence[tuple[str, int]]
) -> BlobRef:
    """Store ``manifest`` with ``chunks`` as its chunk list (durable on return), encoded
    a page at a time: once to learn its size, so a store can stream it to disk as it
    is encoded again, and once more as it is written."""
    size = sum(len(piece) for piece in manifest.pieces(chunks))
    return put_stream(blobs, manifest.pieces(chunks), size)


class Assembled(msgspec.Struct, frozen=True):
    size: int
    blake3: str
    sha256: str
    #: The file's first ``head_size`` bytes (what libmagic reads to detect its type).
    head: bytes = b""


class Sink(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...


class Readable(Protocol):
    def readinto(self, buffer: memoryview) -> int: ...


# Hashing and writing release the GIL; a small pool lets the whole-file hashes and the
# write run beside the chunk checks instead of after them.
_pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="assemble")


def assemble(
    blobs: BlobStore,
    chunks: Sequence[tuple[str, int]],
    out: Sink | None = None,
    head_size: int = 0,
    locations: BlobLocations | None = None,
) -> Assembled:
    """Read the chunks once, in order, into ``out`` (if given), verifying each against
    its digest; the result keeps the first ``head_size`` bytes. With ``locations`` the
    chunks are read with ``pread`` straight from where they lie, their places looked up
    ``LOCATE_BATCH`` at a time (otherwise each ``blobs.open`` looks one up)."""
    reader = _ChunkReader(blobs, chunks, locations)
    try:
        return _verify(reader, chunks, out, head_size)
    finally:
        reader.close()


def verify_file(
    source: BinaryIO, chunks: Sequence[tuple[str, int]], head_size: int = 0
) -> Assembled:
    """Read a file made of ``chunks`` once, checking every chunk's bytes against its
    digest and computing the whole file's hashes: what ``assemble`` checks, for bytes
    already in one file (a final file made by kernel copies)."""
    expected = sum(size for _, size in chunks)
    return _verify(_Exactly(cast(Readable, source), expected), chunks, None, head_size)


def _verify(
    source: Readable, chunks: Sequence[tuple[str, int]], out: Sink | None, head_size: int
) -> Assembled:
    """One sequential pass over ``source`` in ``READ_BUFFER`` reads into two buffers
    used in turn: while the pool computes the whole file's SHA-256 and BLAKE3 (and
    writes ``out``) over one buffer, this thread BLAKE3-hashes each chunk's part of it
    and then reads the next buffer into the other. Nothing else is held, whatever the
    file's size."""
    whole_blake3 = blake3.blake3()
    whole_sha256 = hashlib.sha256()
    checker = _ChunkChecker(chunks)
    buffers = (bytearray(READ_BUFFER), bytearray(READ_BUFFER))
    pending: list[Future[object]] = []
    head = bytearray()
    size = 0
    turn = 0
    try:
        while True:
            view = memoryview(buffers[turn])
            filled = source.readinto(view)
            if filled == 0:
                break
            data = view[:filled]
            for job in pending:  # the whole-file hashes and writes stay in file order,
                job.result()  # and the other buffer is free again once they are done
            pending = [
                _pool.submit(whole_sha256.update, data),
                _pool.submit(whole_blake3.update, data),
            ]
            if out is not None:
                pending.append(_pool.submit(out.write, data))
            if len(head) < head_size:
                head.extend(data[: head_size - len(head)])
            checker.feed(data)
            size += filled
            turn = 1 - turn
        checker.finish()
    finally:
        for job in pending:
            job.result()
    return Assembled(size, whole_blake3.hexdigest(), whole_sha256.hexdigest(), bytes(head))


#: Chunks whose places one index look-up finds (a look-up each measured 130 us of the
#: 6 s a 1 GiB completion of 64 KiB chunks took: 2 s of it).
LOCATE_BATCH = 1024
#: Bytes one read of the verification pass asks for (two such buffers are in memory).
READ_BUFFER = 4 * 1024 * 1024


class _ChunkChecker:
    """Splits the bytes of a file, fed in order, along its chunk list and checks each
    chunk's BLAKE3 against its digest as it ends."""

    def __init__(self, chunks: Sequence[tuple[str, int]]) -> None:
        self._chunks = iter(chunks)
        self._digest = ""
        self._left = 0
        self._hasher = blake3.blake3()
        self._open = False

    def feed(self, data: memoryview) -> None:
        position = 0
        while position < len(data):
            if not self._open:
                self._start()
            take = min(self._left, len(data) - position)
            self._hasher.update(data[position : position + take])
            position += take
            self._left -= take
            if self._left == 0:
                self._end()

    def finish(self) -> None:
        """Every chunk has been fed whole (chunks of no bytes are checked here too)."""
        if self._open:
            raise CorruptBlob(f"blob {self._digest} ends early", digest=self._digest)
        for digest, size in self._chunks:
            if size:
                raise CorruptBlob(f"blob {digest} is missing from the file", digest=digest)
            self._digest, self._left, self._open = digest, 0, True
            self._hasher = blake3.blake3()
            self._end()

    def _start(self) -> None:
        found = next(self._chunks, None)
        if found is None:
            raise CorruptBlob("the file holds more bytes than its chunks")
        self._digest, self._left = found
        self._hasher = blake3.blake3()
        self._open = True
        if self._left == 0:
            self._end()
            self._start()

    def _end(self) -> None:
        self._open = False
        if self._hasher.hexdigest() != self._digest:
            raise CorruptBlob(f"blob {self._digest} does not hash to its name", digest=self._digest)


class _ChunkReader:
    """The chunks' bytes in order, as one readable stream; a blob with more or fewer
    bytes than the chunk list says raises ``CorruptBlob``."""

    def __init__(
        self,
        blobs: BlobStore,
        chunks: Sequence[tuple[str, int]],
        locations: BlobLocations | None = None,
    ) -> None:
        self._blobs = blobs
        self._chunks = chunks
        self._next = 0
        self._locations = locations
        self._located: dict[str, BlobLocation] = {}
        #: The file the last located chunk was read from, and its descriptor.
        self._source: tuple[str, int] | None = None
        self._blob: BinaryIO | _Payload | None = None
        self._digest = ""
        self._size = 0
        self._left = 0

    def close(self) -> None:
        if self._blob is not None:
            self._blob.close()
            self._blob = None
        if self._source is not None:
            os.close(self._source[1])
            self._source = None

    def readinto(self, buffer: memoryview) -> int:
        filled = 0
        try:
            while filled < len(buffer):
                if self._blob is None and not self._open_next():
                    break
                assert self._blob is not None
                if self._left == 0:
                    self._close_checked()
                    continue
                want = min(self._left, len(buffer) - filled)
                got = cast(Readable, self._blob).readinto(buffer[filled : filled + want])
                if not got:
                    raise CorruptBlob(
                        f"blob {self._digest} has {self._size - self._left} bytes,"
                        f" the manifest says {self._size}",
                        digest=self._digest,
                    )
                filled += got
                self._left -= got
        except BaseException:
            if self._blob is not None:
                self._blob.close()
                self._blob = None
            raise
        return filled

    def _open_next(self) -> bool:
        if self._next == len(self._chunks):
            return False
        if self._locations is not None and self._next % LOCATE_BATCH == 0:
            batch = self._chunks[self._next : self._next + LOCATE_BATCH]
            self._located = self._locations.locate_many([digest for digest, _ in batch])
        self._digest, self._size = self._chunks[self._next]
        self._next += 1
        self._left = self._size
        self._blob = self._payload(self._located.get(self._digest))
        if self._blob is None:  # not located, or its file gone (a repack): the port
            self._blob = self._blobs.open(self._digest)
        return True

    def _payload(self, where: BlobLocation | None) -> _Payload | None:
        if where is None:
            return None
        if self._source is None or self._source[0] != where.path:
            if self._source is not None:
                os.close(self._source[1])
                self._source = None
            try:
                self._source = (where.path, os.open(where.path, os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                return None
        return _Payload(self._source[1], where.offset, where.length)

    def _close_checked(self) -> None:
        assert self._blob is not None
        blob, self._blob = self._blob, None
        with blob:
            extra = len(blob.read(1))
        if extra:
            raise CorruptBlob(
                f"blob {self._digest} has more bytes than the {self._size} the manifest says",
                digest=self._digest,
            )


class _Payload:
    """``length`` bytes at ``offset`` of an open file, read with ``pread``."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd = fd
        self._offset = offset
        self._left = length

    def readinto(self, buffer: memoryview) -> int:
        if self._left <= 0:
            return 0
        got = os.preadv(self._fd, [buffer[: self._left]], self._offset)
        self._offset += got
        self._left -= got
        return got

    def read(self, size: int) -> bytes:
        data = os.pread(self._fd, min(size, self._left), self._offset) if self._left > 0 else b""
        self._offset += len(data)
        self._left -= len(data)
        return data

    def close(self) -> None:
        """Nothing to release: the descriptor is the reader's."""

    def __enter__(self) -> _Payload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Exactly:
    """``source`` read to exactly ``size`` bytes: fewer is damage, more is ignored
    by the caller's checks (the chunk checker finds bytes past the last chunk)."""

    def __init__(self, source: Readable, size: int) -> None:
        self._source = source
        self._left = size

    def readinto(self, buffer: memoryview) -> int:
        filled = 0
        while filled < len(buffer):
            got = self._source.readinto(buffer[filled:])
            if not got:
                break
            filled += got
        self._left -= filled
        if filled < len(buffer) and self._left > 0:
            raise CorruptBlob(f"the file ended {self._left} bytes early")
        return filled
