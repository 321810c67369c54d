"""The pack index in this process's memory: for tests, and beside a ``memory://`` log."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence

from chunkstore.blobs.packindex import IndexRow, PackInfo, UnknownPack


class MemoryPackIndex:
    """``PackIndex`` in a dict, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, IndexRow] = {}
        self._packs: dict[str, PackInfo] = {}

    def lookup(self, digest: str) -> IndexRow | None:
        with self._lock:
            return self._rows.get(digest)

    def lookup_many(self, digests: Iterable[str]) -> dict[str, IndexRow]:
        with self._lock:
            return {d: row for d in digests if (row := self._rows.get(d)) is not None}

    def add(
        self, rows: Sequence[IndexRow], committed: Mapping[str, int], synced: bool = True
    ) -> list[bool]:
        with self._lock:
            self._check_known(committed)
            inserted = []
            for row in rows:
                new = row.digest not in self._rows
                if new:
                    self._rows[row.digest] = row
                inserted.append(new)
            self._raise_committed(committed)
            return inserted

    def _check_known(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self._packs:
                raise UnknownPack(f"no pack {name!r} in the index")

    def _raise_committed(self, committed: Mapping[str, int]) -> None:
        for name, length in committed.items():
            info = self._packs[name]
            if length > info.committed:
                self._packs[name] = info._replace(committed=length)

    def remove(self, digests: Iterable[str]) -> set[str]:
        with self._lock:
            return {d for d in digests if self._rows.pop(d, None) is not None}

    def scan(self, after: str = "") -> Iterator[IndexRow]:
        with self._lock:
            rows = sorted(row for digest, row in self._rows.items() if digest > after)
        yield from rows

    def rows_in(self, pack: str) -> Iterator[IndexRow]:
        with self._lock:
            rows = [row for row in self._rows.values() if row.pack == pack]
        yield from sorted(rows, key=lambda row: row.offset)

    def packs(self) -> list[PackInfo]:
        with self._lock:
            return sorted(self._packs.values())

    def pack(self, name: str) -> PackInfo | None:
        with self._lock:
            return self._packs.get(name)

    def live_bytes(self) -> dict[str, int]:
        with self._lock:
            live = dict.fromkeys(self._packs, 0)
            for row in self._rows.values():
                live[row.pack] = live.get(row.pack, 0) + row.record_bytes
            return live

    def move(self, rows: Sequence[IndexRow], from_pack: str, committed: Mapping[str, int]) -> int:
        with self._lock:
            self._check_known([from_pack, *committed])
            moved = 0
            for row in rows:
                current = self._rows.get(row.digest)
                if current is not None and current.pack == from_pack:
                    self._rows[row.digest] = row
                    moved += 1
            self._raise_committed(committed)
            self._packs[from_pack] = self._packs[from_pack]._replace(retired=True)
            return moved

    def register(self, name: str, created_at: float) -> None:
        with self._lock:
            self._packs.setdefault(name, PackInfo(name, 0, False, False, created_at))

    def seal(self, name: str) -> None:
        with self._lock:
            self._check_known([name])
            self._packs[name] = self._packs[name]._replace(sealed=True)

    def forget(self, name: str) -> None:
        with self._lock:
            if any(row.pack == name for row in self._rows.values()):
                raise ValueError(f"rows still point into pack {name!r}")
            self._packs.pop(name, None)
