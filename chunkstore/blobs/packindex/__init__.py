"""The pack index port: where each chunk lives in the packs, and how far each pack is
known to be durable.

A row says digest -> (pack, offset of the record's header, payload length, plain size,
flags, when it was written). A pack's ``committed`` length is the prefix of its file
known durable: it only ever grows, it is raised in the same transaction as the rows
that lie below it, and bytes past it are a crash's leftover (truncated at start-up).

Backends: SQLite (``sqlite.py``, the same database file as the event log, so gc's
deletions can share the log's write lock) and memory (``memory.py``). The contract
suite is ``tests/contracts/packindex.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol

from chunkstore.blobs.packfile import HEADER_SIZE


class UnknownPack(ValueError):
    """A pack name the index has no row for (never registered, or forgotten)."""


class IndexRow(NamedTuple):
    digest: str
    pack: str
    #: Where the record's header starts; its payload starts ``HEADER_SIZE`` later.
    offset: int
    #: Payload bytes as stored, and plain bytes.
    length: int
    size: int
    flags: int
    #: When the chunk was written (seconds since the epoch): gc's grace period.
    created_at: float

    @property
    def payload_offset(self) -> int:
        return self.offset + HEADER_SIZE

    @property
    def record_bytes(self) -> int:
        """What the record takes in its pack, header included."""
        return HEADER_SIZE + self.length


class PackInfo(NamedTuple):
    name: str
    #: Bytes of the pack known durable (everything an index row points into lies below).
    committed: int
    #: No more records will be appended (its writer rolled over, or died and was recovered).
    sealed: bool
    #: Its live records were moved elsewhere (a repack); its file is due for removal.
    retired: bool
    created_at: float


class PackIndex(Protocol):
    def lookup(self, digest: str) -> IndexRow | None: ...

    def lookup_many(self, digests: Iterable[str]) -> dict[str, IndexRow]:
        """The rows of those ``digests`` the index has."""
        ...

    def add(
        self, rows: Sequence[IndexRow], committed: Mapping[str, int], synced: bool = True
    ) -> list[bool]:
        """In one transaction: insert ``rows`` (a digest the index has already keeps its
        row: the first writer wins, also within ``rows``) and raise each named pack's
        committed length to at least the given one (it never shrinks). Per row, whether
        it was inserted. ``UnknownPack``, with nothing changed, if a pack is not
        registered. ``synced=False``: the caller commits a synced transaction of the same
        database (the session's events) before it acknowledges anything, and that sync
        may make this one durable too."""
        ...

    def remove(self, digests: Iterable[str]) -> set[str]:
        """Delete these digests' rows (their bytes stay in the pack until a repack);
        the digests that had one."""
        ...

    def scan(self, after: str = "") -> Iterator[IndexRow]:
        """Every row with a digest greater than ``after``, in digest order, read a page
        at a time (the index may not fit in memory)."""
        ...

    def rows_in(self, pack: str) -> Iterator[IndexRow]:
        """The rows pointing into ``pack``, in offset order."""
        ...

    def packs(self) -> list[PackInfo]:
        """Every registered pack, by name (so by age)."""
        ...

    def pack(self, name: str) -> PackInfo | None: ...

    def live_bytes(self) -> dict[str, int]:
        """Registered pack -> bytes of its records that rows point to (headers
        included); 0 for a pack no row points into. A repack compares this with the
        pack's committed length."""
        ...

    def move(self, rows: Sequence[IndexRow], from_pack: str, committed: Mapping[str, int]) -> int:
        """A repack's switch, in one transaction: each of ``rows`` (already durable in
        its new pack) replaces the row of its digest if that row still points into
        ``from_pack`` (one deleted or moved meanwhile is left alone), the new packs'
        committed lengths are raised as ``add`` does, and ``from_pack`` is marked
        retired. How many rows moved."""
        ...

    def register(self, name: str, created_at: float) -> None:
        """A new, empty, unsealed pack (its file exists and its writer holds it)."""
        ...

    def seal(self, name: str) -> None:
        """No more appends to ``name``: start-up recovery leaves it alone."""
        ...

    def forget(self, name: str) -> None:
        """Drop a pack's row once its file is gone. ``ValueError`` while rows point
        into it."""
        ...


def merge_committed(*lengths: Mapping[str, int]) -> dict[str, int]:
    """Pack -> the greatest committed length any of ``lengths`` names."""
    merged: dict[str, int] = {}
    for mapping in lengths:
        for name, length in mapping.items():
            merged[name] = max(length, merged.get(name, 0))
    return merged
