"""Per-upload locks on a local directory: ``flock`` on ``locks/<upload_id>``, shared by
every process of a data directory.

A lock is an ``flock`` on ``locks/<upload_id>``. It excludes other processes and other
threads alike (each holder opens its own file description), and the kernel drops it
when the holder's process dies, so a crash never leaves a stale lock behind. A tus
``PATCH`` only tries it (busy: 423); completion, cancel, delete and expiry wait for it
up to a bounded time, so none of them lands in the middle of another.

The file exists only while the lock is held or waited for: the holder unlinks it before
letting go. A waiter that then gets the lock on the unlinked file sees that the path no
longer names the file it locked and starts over, so two holders never hold two files
of one name. Nothing is kept in memory per upload, and callers look an upload up and
check its owner before they lock it: an id that does not exist, or is not the caller's,
never gets a lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from pathlib import Path

from chunkstore.errors import UploadLocked, full_disk_guard
from chunkstore.locks import HoldsByAcquiring

#: Waits start short (a PATCH of a few MiB holds the lock for milliseconds) and back off.
_FIRST_DELAY = 0.005
_MAX_DELAY = 0.1
#: Upload ids name files here; the service makes them (hex), so anything else is a bug.
_LOCKABLE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class FlockHeld:
    """A held per-upload lock; ``release`` removes its file and lets go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def release(self) -> None:
        if self.fd < 0:
            return
        # Unlinked while still held: whoever locks the old file next notices it is gone.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1


class FlockLocks(HoldsByAcquiring):
    """``Locker``: the per-upload locks of one data directory (``<data>/locks``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, upload_id: str) -> Path:
        if not _LOCKABLE_ID.fullmatch(upload_id):
            raise ValueError(f"not a lockable upload id: {upload_id[:40]!r}")
        return self.directory / upload_id

    def acquire(self, upload_id: str, wait: float = 0.0) -> FlockHeld:
        """The upload's lock, waiting up to ``wait`` seconds for its holder to let go;
        raises ``UploadLocked`` when it is still held after that."""
        path = self.path(upload_id)
        deadline = time.monotonic() + wait
        delay = _FIRST_DELAY
        while True:
            with full_disk_guard("the upload's lock file"):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UploadLocked(
                        f"another request is writing to, completing or ending upload"
                        f" {upload_id}{f' (waited {wait:g} s)' if wait else ''};"
                        " retry when it ends",
                        upload_id=upload_id,
                    ) from None
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, _MAX_DELAY)
                continue
            except BaseException:
                os.close(fd)
                raise
            if _names(path, fd):
                return FlockHeld(path, fd)
            os.close(fd)  # the previous holder removed this file meanwhile: start over

    def held(self) -> list[str]:
        """The upload ids whose lock files are present (locked or being locked)."""
        return sorted(entry.name for entry in os.scandir(self.directory) if entry.is_file())

    def sweep(self, dry_run: bool = False) -> int:
        """Remove lock files nobody holds (left by a process that died between creating
        and removing one); returns how many there were."""
        removed = 0
        for name in self.held():
            path = self.directory / name
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if _names(path, fd):
                removed += 1
                if dry_run:
                    os.close(fd)
                else:
                    FlockHeld(path, fd).release()
            else:
                os.close(fd)
        return removed


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)
