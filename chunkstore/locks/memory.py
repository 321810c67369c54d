"""Per-upload locks in memory (``memory://``): the threads of one process."""

from __future__ import annotations

import threading
import time

from chunkstore.errors import UploadLocked
from chunkstore.locks import HoldsByAcquiring

_POLL = 0.005


class MemoryHeld:
    def __init__(self, locks: MemoryLocks, upload_id: str) -> None:
        self._locks = locks
        self.upload_id = upload_id
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._locks.let_go(self.upload_id)


class MemoryLocks(HoldsByAcquiring):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[str] = set()

    def acquire(self, upload_id: str, wait: float = 0.0) -> MemoryHeld:
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                if upload_id not in self._held:
                    self._held.add(upload_id)
                    return MemoryHeld(self, upload_id)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UploadLocked(
                    f"another request is writing to, completing or ending upload {upload_id};"
                    " retry when it ends",
                    upload_id=upload_id,
                )
            time.sleep(min(_POLL, remaining))

    def let_go(self, upload_id: str) -> None:
        with self._lock:
            self._held.discard(upload_id)

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._held)

    def sweep(self, dry_run: bool = False) -> int:
        return 0  # a holder's death is its process's: nothing outlives it here
