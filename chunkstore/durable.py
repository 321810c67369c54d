"""Local files made durable: the few system-call recipes every local backend shares.

A write is durable once its bytes are fsynced; a new name is durable once the directory
that holds it is fsynced too. These helpers are for backends that keep data on a local
filesystem (blobs, final files, tails, locks); nothing outside a backend needs them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path

#: Largest single write() call. On the Linux hosts measured, single writes of 2 MiB or
#: more ran 4-5x slower than the same bytes in calls of 1 MiB or less.
WRITE_SLICE = 256 * 1024


def write_all(write: Callable[[memoryview], int | None], data: bytes | memoryview) -> None:
    """Write every byte of ``data`` in slices of at most ``WRITE_SLICE`` through
    ``write`` (a file's ``write``, or ``os.write`` bound to a descriptor)."""
    view = memoryview(data)
    while view:
        written = write(view[:WRITE_SLICE])
        view = view[written if written is not None else len(view[:WRITE_SLICE]) :]


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux; Python's ``os`` has no binding), or None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        call = ctypes.CDLL(name, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call


_sync_file_range = _libc_sync_file_range()
#: ``SYNC_FILE_RANGE_WRITE``: start writing the range's dirty pages back, do not wait.
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, count: int) -> None:
    """Ask the kernel to start writing ``count`` bytes at ``offset`` of ``fd`` back to the
    disk now, without waiting for them (where the system has ``sync_file_range``): a
    later ``fsync``/``fdatasync`` then has less left to wait for. It makes nothing
    durable by itself, and a failure here is left for that sync to report."""
    if _sync_file_range is not None and count > 0:
        _sync_file_range(fd, offset, count, _SYNC_FILE_RANGE_WRITE)


def fsync_directory(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_durable_dirs(path: Path) -> None:
    """``mkdir -p`` that also fsyncs each parent whose entry it created."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        fsync_directory(directory.parent)


def publish(part: Path, final: Path) -> None:
    """Move a fully written, fsynced file into place atomically and durably."""
    make_durable_dirs(final.parent)
    os.replace(part, final)
    fsync_directory(final.parent)


def remove_durably(path: Path) -> None:
    """Remove a file, and its directory once empty, durably."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(FileNotFoundError):
        fsync_directory(path.parent)
    with contextlib.suppress(OSError):  # not empty, or gone already
        path.parent.rmdir()
        fsync_directory(path.parent.parent)
