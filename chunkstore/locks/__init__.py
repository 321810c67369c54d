"""The lock port: one exclusive lock per upload, shared by everything serving a store.

A tus ``PATCH`` only tries an upload's lock (busy: 423); completion, cancel, delete and
expiry wait for it up to a bounded time, so none of them lands in the middle of another.
A lock dies with its holder (a crashed process never leaves a stale lock), and nothing
is kept per upload but while a lock is held: callers look an upload up and check its
owner before they lock it, so an id that does not exist never gets any lock state.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol


class HeldLock(Protocol):
    def release(self) -> None:
        """Let go (a second call does nothing)."""
        ...


class Locker(Protocol):
    def acquire(self, upload_id: str, wait: float = 0.0) -> HeldLock:
        """The upload's lock, waiting up to ``wait`` seconds for its holder to let go;
        ``UploadLocked`` when it is still held after that."""
        ...

    def hold(self, upload_id: str, wait: float = 0.0) -> AbstractContextManager[HeldLock]:
        """``acquire`` for the length of a ``with`` block."""
        ...

    def held(self) -> list[str]:
        """The upload ids whose locks exist now (held, or left by a dead holder)."""
        ...

    def sweep(self, dry_run: bool = False) -> int:
        """Remove what dead holders left behind; how many there were."""
        ...


class HoldsByAcquiring(abc.ABC):
    """``hold`` for a backend that implements ``acquire``."""

    @abc.abstractmethod
    def acquire(self, upload_id: str, wait: float = 0.0) -> HeldLock: ...

    @contextlib.contextmanager
    def hold(self, upload_id: str, wait: float = 0.0) -> Iterator[HeldLock]:
        lock = self.acquire(upload_id, wait)
        try:
            yield lock
        finally:
            lock.release()
