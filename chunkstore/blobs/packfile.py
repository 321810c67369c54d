"""The pack file format: records of chunks, one after another, each naming itself.

A pack is a sequence of records with nothing between them. A record is a 48-byte header
(little-endian) and its payload::

    0  magic      4 bytes  b"CSKR"
    4  version    u8       1
    5  flags      u8       bit 0: payload is zstd-compressed (reserved; 0 now)
    6  reserved   u16      0
    8  length     u32      bytes of payload as stored
    12 size       u32      plain bytes (== length while uncompressed)
    16 digest     32 bytes BLAKE3-256 of the plain bytes (raw, not hex)
    48 payload

Because every record says what it is and how long it is, a pack can be read from its
start to rebuild a lost index (``scan_pack``), and a reader that trusts nothing (audit)
can check every record against its digest without the database.
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3

MAGIC = b"CSKR"
VERSION = 1
#: Payload is zstd-compressed (reserved: no record sets it yet).
FLAG_COMPRESSED = 0x01
KNOWN_FLAGS = FLAG_COMPRESSED
HEADER = struct.Struct("<4sBBHII32s")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 48
#: Largest payload a record can describe (the length fields are u32).
MAX_RECORD_PAYLOAD = 0xFFFFFFFF
PACK_SUFFIX = ".pack"
#: Bytes a verifying scan reads at a time, into one buffer it reuses: sequential reads,
#: and records hashed from views of the buffer (no copy, no call per record). 1 MiB
#: stays in the CPU's cache between the read's copy and the hash: a pack of 64 KiB
#: records re-hashed at 1.3 GB/s with it against 0.85 GB/s with 8 MiB (page cache warm,
#: AMD EPYC, 1 MiB of L2).
SCAN_READ_SIZE = 1024 * 1024


def encode_header(digest: str, size: int, length: int | None = None, flags: int = 0) -> bytes:
    """A record's header for ``size`` plain bytes hashing to ``digest`` (hex)."""
    length = size if length is None else length
    if not 0 <= length <= MAX_RECORD_PAYLOAD or not 0 <= size <= MAX_RECORD_PAYLOAD:
        raise ValueError(f"a record holds at most {MAX_RECORD_PAYLOAD} bytes")
    return HEADER.pack(MAGIC, VERSION, flags, 0, length, size, bytes.fromhex(digest))


@dataclass(frozen=True, slots=True)
class Record:
    """One record found in a pack."""

    #: Where its header starts in the pack.
    offset: int
    digest: str
    #: Payload bytes as stored, and plain bytes.
    length: int
    size: int
    flags: int
    #: Whether the payload hashes to ``digest``: None when the scan did not look.
    intact: bool | None = None

    @property
    def payload_offset(self) -> int:
        return self.offset + HEADER_SIZE

    @property
    def end(self) -> int:
        """Where the next record starts."""
        return self.offset + HEADER_SIZE + self.length


def decode_header(header: bytes | memoryview, offset: int) -> Record | str:
    """The record a 48-byte header at ``offset`` describes, or why it is not one."""
    if len(header) < HEADER_SIZE:
        return f"{len(header)} bytes at offset {offset}: shorter than a record header"
    magic, version, flags, reserved, length, size, raw_digest = HEADER.unpack(header)
    if magic != MAGIC:
        return f"no record magic at offset {offset}"
    if version != VERSION:
        return f"record version {version} at offset {offset} is not {VERSION}"
    if reserved != 0 or flags & ~KNOWN_FLAGS:
        return f"reserved bits set in the record header at offset {offset}"
    if not flags & FLAG_COMPRESSED and length != size:
        return f"uncompressed record at offset {offset} says {length} stored, {size} plain bytes"
    return Record(offset, raw_digest.hex(), length, size, flags)


class _Buffers:
    """Read buffers of verifying scans, kept for the next scan: a fresh buffer costs
    page faults, and the next scan finds a kept one in the cache."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.lock = threading.Lock()
        self.free: list[memoryview] = []

    def take(self) -> memoryview:
        with self.lock:
            if self.free:
                return self.free.pop()
        return memoryview(bytearray(SCAN_READ_SIZE))

    def give_back(self, view: memoryview) -> None:
        with self.lock:
            if len(self.free) < self.keep:
                self.free.append(view)


_BUFFERS = _Buffers()


class PackScan(Iterator[Record]):
    """Iterates over a pack's records from its start. Stops at the end of the file or at
    the first header that is not a whole valid record; then ``end`` is where the valid
    records end and ``problem`` says what was found there (None: the file ends cleanly
    after its last record).

    With ``verify``, the file is read from start to end in ``SCAN_READ_SIZE`` pieces and
    every payload re-hashed (``Record.intact``); without, only the headers are read, so
    a scan costs one small read per record."""

    def __init__(self, path: Path | str, verify: bool = False) -> None:
        self.path = Path(path)
        self.verify = verify
        self.end = 0
        self.problem: str | None = None
        self._fd: int | None = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self.file_size = os.fstat(self._fd).st_size
        #: The verifying scan's window: file bytes [_start, _start + _filled) in _view.
        self._view = _BUFFERS.take() if verify else memoryview(bytearray(0))
        if verify and hasattr(os, "posix_fadvise"):
            # Read from start to end: a larger readahead when the pack is not cached.
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self._start = 0
        self._filled = 0

    def __iter__(self) -> PackScan:
        return self

    def __next__(self) -> Record:
        if self._fd is None:
            raise StopIteration
        if self.end >= self.file_size:
            self.close()
            raise StopIteration
        header: bytes | memoryview | None = (
            self._window(self.end, HEADER_SIZE) if self.verify else None
        )
        if header is None or len(header) < HEADER_SIZE:
            header = os.pread(self._fd, HEADER_SIZE, self.end)
        found = decode_header(header, self.end)
        if isinstance(found, Record) and found.end > self.file_size:
            found = (
                f"record at offset {self.end} needs {found.end - self.end} bytes,"
                f" the pack ends {self.file_size - self.end} bytes after its start"
            )
        if isinstance(found, str):
            self.problem = found
            self.close()
            raise StopIteration
        if self.verify:
            intact = self._hashes_to(found)
            found = Record(
                found.offset, found.digest, found.length, found.size, found.flags, intact
            )
        self.end = found.end
        return found

    def _hashes_to(self, record: Record) -> bool:
        assert self._fd is not None
        if record.flags & FLAG_COMPRESSED:
            return False  # no reader of compressed payloads yet: never call them intact
        hasher = blake3.blake3()
        position, remaining = record.payload_offset, record.length
        while remaining:
            piece = self._window(position, min(len(self._view), remaining))
            if not piece:
                return False
            hasher.update(piece)
            position += len(piece)
            remaining -= len(piece)
        return hasher.hexdigest() == record.digest

    def _window(self, position: int, wanted: int) -> memoryview:
        """Up to ``wanted`` bytes of the file from ``position`` (fewer only at its end),
        as a view of the buffer, which is refilled from ``position`` when they are not
        all in it. The view is valid until the next call."""
        assert self._fd is not None
        offset = position - self._start
        if offset < 0 or offset + wanted > self._filled:
            self._start, offset = position, 0
            self._filled = os.preadv(self._fd, [self._view], position)
        return self._view[offset : offset + min(wanted, self._filled - offset)]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if self.verify:
                _BUFFERS.give_back(self._view)
            self._view = memoryview(bytearray(0))

    def __del__(self) -> None:
        self.close()


def scan_pack(path: Path | str, verify: bool = False) -> PackScan:
    """The records of the pack at ``path``, in order (see ``PackScan``)."""
    return PackScan(path, verify)


def new_pack_name(now: float | None = None) -> str:
    """A fresh pack name: creation time (UTC) then 16 random hex digits, so that names
    sort by age and two processes never pick the same one."""
    moment = time.gmtime(time.time() if now is None else now)
    return f"{time.strftime('%Y%m%dT%H%M%S', moment)}-{secrets.token_hex(8)}"


def is_pack_name(name: str) -> bool:
    """Whether ``name`` is a pack name as ``new_pack_name`` makes them (no path parts)."""
    stamp, dash, token = name.partition("-")
    return (
        len(stamp) == 15
        and stamp[8] == "T"
        and (stamp[:8] + stamp[9:]).isdigit()
        and dash == "-"
        and len(token) == 16
        and all(c in "0123456789abcdef" for c in token)
    )
