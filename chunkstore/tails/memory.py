"""Tails in memory (``memory://``): for tests and quick experiments."""

from __future__ import annotations

import threading

from chunkstore.errors import ChunkstoreError


class MemoryTails:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tails: dict[tuple[str, int], bytes] = {}

    def read(self, upload_id: str, base: int, size: int) -> bytes:
        if size == 0:
            return b""
        with self._lock:
            tail = self._tails.get((upload_id, base), b"")[:size]
        if len(tail) != size:
            raise ChunkstoreError(f"the tail of upload {upload_id} lost acknowledged bytes")
        return tail

    def extend(self, upload_id: str, base: int, old_size: int, data: bytes) -> None:
        with self._lock:
            kept = self._tails.get((upload_id, base), b"")[:old_size]
            self._tails[(upload_id, base)] = kept + bytes(data)

    def write(self, upload_id: str, base: int, data: bytes) -> None:
        with self._lock:
            self._tails[(upload_id, base)] = bytes(data)

    def discard(self, upload_id: str, keep_base: int | None = None) -> int:
        with self._lock:
            gone = [key for key in self._tails if key[0] == upload_id and key[1] != keep_base]
            for key in gone:
                del self._tails[key]
        return len(gone)

    def uploads(self) -> dict[str, int]:
        found: dict[str, int] = {}
        with self._lock:
            for upload_id, _ in self._tails:
                found[upload_id] = found.get(upload_id, 0) + 1
        return found
