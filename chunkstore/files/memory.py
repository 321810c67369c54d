"""Final files in memory (``memory://``): for tests and quick experiments."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

from chunkstore.files import FileEntry, location_of


class MemoryFilePart:
    def __init__(self, sink: MemoryFiles, upload_id: str, filename: str) -> None:
        self._sink = sink
        self.upload_id = upload_id
        self.location = location_of(upload_id, filename)
        self._pieces: list[bytes] | None = []
        sink.add_part(self)

    def write(self, data: bytes | memoryview) -> None:
        assert self._pieces is not None, "part already finished"
        self._pieces.append(bytes(data))

    def commit(self) -> str:
        assert self._pieces is not None, "part already finished"
        self._sink.put(self.location, b"".join(self._pieces))
        self.abort()
        return self.location

    def abort(self) -> None:
        self._pieces = None
        self._sink.drop_part(self)


class MemoryFiles:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[bytes, float]] = {}
        self._parts: set[MemoryFilePart] = set()
        #: Files set aside as evidence: quarantine location -> bytes.
        self.quarantined: dict[str, bytes] = {}

    def add_part(self, part: MemoryFilePart) -> None:
        with self._lock:
            self._parts.add(part)

    def drop_part(self, part: MemoryFilePart) -> None:
        with self._lock:
            self._parts.discard(part)

    def put(self, location: str, data: bytes) -> None:
        with self._lock:
            self._files[location] = (data, time.time())

    def writer(self, upload_id: str, filename: str) -> MemoryFilePart:
        return MemoryFilePart(self, upload_id, filename)

    def open(self, location: str) -> BinaryIO:
        with self._lock:
            found = self._files.get(location)
        if found is None:
            raise FileNotFoundError(location)
        return io.BytesIO(found[0])

    def size(self, location: str) -> int | None:
        with self._lock:
            found = self._files.get(location)
        return len(found[0]) if found is not None else None

    def remove(self, location: str) -> None:
        with self._lock:
            self._files.pop(location, None)

    def quarantine(self, location: str, into: str) -> str | None:
        with self._lock:
            found = self._files.pop(location, None)
            if found is None:
                return None
            target = f"{into}/{location}"
            self.quarantined[target] = found[0]
        return target

    def scan(self) -> Iterator[FileEntry]:
        with self._lock:
            entries = [
                FileEntry(location, len(data), mtime)
                for location, (data, mtime) in sorted(self._files.items())
            ]
        yield from entries

    def parts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        with self._lock:
            for part in self._parts:
                found[part.upload_id] = found.get(part.upload_id, 0) + 1
        return found

    def discard_parts(self, upload_id: str) -> int:
        with self._lock:
            parts = [part for part in self._parts if part.upload_id == upload_id]
        for part in parts:
            part.abort()
        return len(parts)
