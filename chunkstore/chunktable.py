"""A session's chunks held compactly: tens of bytes a chunk, copied page by page.

A content-defined upload has a chunk every ~64 KiB: 65,536 for 4 GiB, up to
``MAX_CHUNKS`` (4,000,000) in one session. Held as Python objects (a dict of index ->
(hex digest, size), the declared list as tuples, a dict of digest -> indexes) a chunk
cost ~400 bytes, and every append copied the dict, so with a few requests in flight
the server's worker grew by 1.7 KiB a chunk (a 4 GiB upload: 102 -> 235 MiB). Here:

- a declared chunk (manifest mode) is its digest as 32 raw bytes, its size in an
  ``array`` of 4-byte integers, one byte saying whether it is the first index of its
  digest, and 11-21 bytes of a hash table that finds a digest's first index;
- a stored chunk is one byte of a presence map and, unless it is exactly the chunk
  declared at its index (as every stored chunk of a manifest-mode session is), its own
  digest and size in the same layout (fixed-size and tus uploads).

Everything lives in pages of ``PAGE`` indexes, in dicts keyed by page number; a page
grows to the last index it holds (a session of 4 chunks keeps ~2.4 KiB, not 41-49 KiB of
empty pages). It is copy-on-write: a fold (``chunkstore.session``) works on a builder
of the state it starts from, which copies a page the first time it writes to it. An
append of 128 chunks copies a page or two of the presence map, not the session (a
session of 100,000 chunks: 7 KiB against 2.6 MiB for the dict), and a state another
caller holds never changes. The hash table is copied whole, but only by a fold that
declares chunks (a page of up to ``chunk_page_size`` chunks a request).

A log may hold digests in another form than 64 lowercase hex characters or sizes that
do not fit 4 bytes (no writer of chunkstore records either, but a fold takes any log):
such digests are kept as text in a side dict, and such a size widens its page, so a
replay answers exactly what the events say.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeAlias

#: Indexes a page: 32 KiB of digests, 4 KiB of sizes, 1 KiB of flags.
SHIFT = 10
PAGE = 1 << SHIFT
_SLOT = PAGE - 1
DIGEST = 32
_HEX = 2 * DIGEST
#: A hash table entry is (index << 32) | the low 32 bits of the digest's hash.
_TAG = 0xFFFF_FFFF

# array is generic for type checkers only (subscriptable at run time from Python 3.12).
Sizes: TypeAlias = "array[int] | list[int]"
Key: TypeAlias = bytes | str


def pack(digest: str) -> bytes | None:
    """The 32 raw bytes of a digest in the canonical form (64 lowercase hex characters),
    or None for any other text."""
    if len(digest) != _HEX:
        return None
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        return None
    return raw if len(raw) == DIGEST and raw.hex() == digest else None


def pack_many(digests: Sequence[str]) -> list[bytes | None]:
    """``pack`` of each digest, in one conversion when all are canonical (as always)."""
    if digests and set(map(len, digests)) == {_HEX}:
        joined = "".join(digests)
        try:
            blob = bytes.fromhex(joined)
        except ValueError:
            blob = b""
        if len(blob) == DIGEST * len(digests) and blob.hex() == joined:
            return [blob[at : at + DIGEST] for at in range(0, len(blob), DIGEST)]
    return [pack(digest) for digest in digests]


def key_of(digest: str) -> Key:
    """How a digest is keyed here: its raw bytes, or its text when not canonical."""
    raw = pack(digest)
    return digest if raw is None else raw


def _fit(page: bytearray, length: int) -> bytearray:
    """``page`` zero-filled up to ``length`` bytes. Pages grow to what they hold, so a
    session of a few chunks costs bytes, not a whole page (37 KiB)."""
    if len(page) < length:
        page.extend(bytes(length - len(page)))
    return page


def _fit_sizes(sizes: Sizes, length: int) -> Sizes:
    """``sizes`` zero-filled up to ``length`` entries."""
    if len(sizes) < length:
        sizes.extend([0] * (length - len(sizes)))
    return sizes


def _set_size(sizes: Sizes, slot: int, size: int) -> Sizes:
    """``sizes[slot] = size``, widening the page when the value does not fit."""
    try:
        sizes[slot] = size
        return sizes
    except OverflowError:
        wider: Sizes = (
            array("q", sizes) if isinstance(sizes, array) and sizes.typecode == "I" else list(sizes)
        )
        return _set_size(wider, slot, size)


def _set_sizes(sizes: Sizes, slot: int, values: list[int]) -> Sizes:
    """``sizes[slot : slot + len(values)] = values``, widening the page if need be."""
    try:
        if isinstance(sizes, array):
            sizes[slot : slot + len(values)] = array(sizes.typecode, values)
        else:
            sizes[slot : slot + len(values)] = values
        return sizes
    except OverflowError:
        for offset, size in enumerate(values):
            sizes = _set_size(sizes, slot + offset, size)
        return sizes


class _Columns:
    """(digest, size) records by index, in pages: the layout of a declared list and of
    the stored chunks kept for themselves. A builder's copy (``thawed``) copies a page
    the first time it writes to it; a frozen one is never written."""

    __slots__ = ("_digests", "_odd", "_owned", "_sizes")

    def __init__(self) -> None:
        self._digests: dict[int, bytearray] = {}
        self._sizes: dict[int, Sizes] = {}
        #: index -> digest text, for digests not in the canonical form.
        self._odd: dict[int, str] = {}
        #: Pages this builder made or copied (None: frozen).
        self._owned: set[int] | None = None

    def thawed(self) -> _Columns:
        copy = _Columns.__new__(_Columns)
        copy._digests, copy._sizes, copy._odd = self._digests, self._sizes, self._odd
        copy._owned = set()
        return copy

    def freeze(self) -> None:
        self._owned = None

    def _writable(self, page: int) -> None:
        owned = self._owned
        assert owned is not None, "a frozen table is never written"
        if not owned:
            # This builder's first write: its own page dicts (they hold pointers only).
            self._digests, self._sizes = dict(self._digests), dict(self._sizes)
            self._odd = dict(self._odd)
        if page not in owned:
            digests, sizes = self._digests.get(page), self._sizes.get(page)
            self._digests[page] = bytearray() if digests is None else bytearray(digests)
            self._sizes[page] = array("I") if sizes is None else sizes[:]
            owned.add(page)

    def put(self, index: int, digest: str, size: int, raw: bytes | None) -> None:
        page, slot = index >> SHIFT, index & _SLOT
        self._writable(page)
        if raw is None:
            self._odd[index] = digest
            raw = bytes(DIGEST)
        elif self._odd:
            self._odd.pop(index, None)
        _fit(self._digests[page], (slot + 1) * DIGEST)[slot * DIGEST : (slot + 1) * DIGEST] = raw
        self._sizes[page] = _set_size(_fit_sizes(self._sizes[page], slot + 1), slot, size)

    def put_many(
        self, start: int, digests: list[str], raws: list[bytes | None], sizes: list[int]
    ) -> None:
        """Records for indexes ``start`` on that have none yet, a page at a time."""
        done = 0
        while done < len(digests):
            index = start + done
            page, slot = index >> SHIFT, index & _SLOT
            end = done + min(PAGE - slot, len(digests) - done)
            self._writable(page)
            part = raws[done:end]
            for offset, raw in enumerate(part):
                if raw is None:
                    self._odd[index + offset] = digests[done + offset]
                    part[offset] = bytes(DIGEST)
            pages = _fit(self._digests[page], (slot + len(part)) * DIGEST)
            pages[slot * DIGEST : (slot + len(part)) * DIGEST] = b"".join(
                part  # type: ignore[arg-type]
            )
            fitted = _fit_sizes(self._sizes[page], slot + len(part))
            self._sizes[page] = _set_sizes(fitted, slot, sizes[done:end])
            done = end

    def is_digest(self, index: int, digest: str, raw: bytes | None) -> bool:
        """Whether the record at ``index`` has ``digest`` (``raw``: ``pack(digest)``)."""
        if raw is None or (self._odd and index in self._odd):
            return self.digest(index) == digest
        return self._digests[index >> SHIFT].startswith(raw, (index & _SLOT) * DIGEST)

    def digest(self, index: int) -> str:
        odd = self._odd.get(index) if self._odd else None
        if odd is not None:
            return odd
        offset = (index & _SLOT) * DIGEST
        return self._digests[index >> SHIFT][offset : offset + DIGEST].hex()

    def size(self, index: int) -> int:
        return self._sizes[index >> SHIFT][index & _SLOT]


class ChunkList:
    """A manifest-mode session's declared chunks: (digest, size) of indexes 0 to
    ``count - 1``, which index of each digest is its first, and which digests repeat.

    The first index of a digest is found without a dict entry per digest: a table of
    8-byte slots, open addressing with linear probing, holds (first index, 32 bits of
    the digest's ``hash()``) of each distinct digest; a match is confirmed against the
    digest stored at that index. ``hash()`` is randomized per process, so a client,
    which chooses the declared digests freely, cannot pick ones that collide. Only
    digests declared more than once get a dict entry (``_repeats``)."""

    __slots__ = ("_columns", "_first", "_odd_first", "_repeats", "_table", "count", "unique")

    def __init__(self) -> None:
        self.count = 0
        #: Distinct digests declared.
        self.unique = 0
        self._columns = _Columns()
        #: page -> one byte an index, 1 where the index is the first of its digest.
        self._first: dict[int, bytearray] = {}
        #: The hash table: (first index << 32) | hash tag per canonical digest; -1 empty.
        self._table: array[int] = array("q")
        #: First index of each distinct non-canonical digest.
        self._odd_first: dict[str, int] = {}
        #: Every index of each digest declared more than once, in order.
        self._repeats: dict[Key, array[int]] = {}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[str, int]:
        self._check(index)
        return self._columns.digest(index), self._columns.size(index)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return self.slice(0, self.count)

    def slice(self, start: int, end: int) -> Iterator[tuple[str, int]]:
        """(digest, size) of indexes ``start`` to ``end - 1`` (clipped to the list)."""
        columns = self._columns
        for index in range(max(0, start), min(end, self.count)):
            yield columns.digest(index), columns.size(index)

    def digest(self, index: int) -> str:
        self._check(index)
        return self._columns.digest(index)

    def size(self, index: int) -> int:
        self._check(index)
        return self._columns.size(index)

    def _check(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise IndexError(f"chunk {index} is not declared ({self.count} are)")

    def is_first(self, index: int) -> bool:
        """Whether ``index`` is declared and the first index of its digest."""
        return 0 <= index < self.count and self._first[index >> SHIFT][index & _SLOT] == 1

    def has_digest(self, index: int, digest: str, raw: bytes | None) -> bool:
        """Whether ``index`` is declared with ``digest`` (``raw``: ``pack(digest)``)."""
        return 0 <= index < self.count and self._columns.is_digest(index, digest, raw)

    def holds(self, index: int, digest: str, size: int, raw: bytes | None) -> bool:
        """Whether ``index`` is declared as exactly (``digest``, ``size``)."""
        return (
            0 <= index < self.count
            and self._columns.size(index) == size
            and self._columns.is_digest(index, digest, raw)
        )

    def first_index(self, digest: str) -> int | None:
        """The first index declared with ``digest``, None if none is."""
        raw = pack(digest)
        if raw is None:
            return self._odd_first.get(digest)
        found = self._find(raw, hash(raw) & _TAG)
        return None if found < 0 else found >> 32

    def indexes_of(self, digest: str) -> tuple[int, ...]:
        """Every index declared with ``digest``, in order."""
        repeated = self._repeats.get(key_of(digest)) if self._repeats else None
        if repeated is not None:
            return tuple(repeated)
        first = self.first_index(digest)
        return () if first is None else (first,)

    def _find(self, raw: bytes, tag: int) -> int:
        """The table entry of ``raw`` (its hash tag: ``tag``), or -1 - the empty slot
        where it would go (-1 for an empty table)."""
        table = self._table
        if not table:
            return -1
        mask = len(table) - 1
        slot = tag & mask
        pages = self._columns._digests
        while True:
            entry = table[slot]
            if entry < 0:
                return -1 - slot
            if entry & _TAG == tag:
                index = entry >> 32
                if pages[index >> SHIFT].startswith(raw, (index & _SLOT) * DIGEST):
                    return entry
            slot = (slot + 1) & mask

    def builder(self) -> ChunkListBuilder:
        return ChunkListBuilder(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChunkList):
            return NotImplemented
        return self.count == other.count and all(
            mine == theirs for mine, theirs in zip(self, other, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ChunkList(count={self.count}, unique={self.unique})"


class ChunkListBuilder:
    """Appends declared chunks to a copy of a ``ChunkList`` that shares the source's
    pages until it writes to them (of those, only the last, partly filled one)."""

    def __init__(self, source: ChunkList) -> None:
        self._source = source
        self._list: ChunkList | None = None
        #: Flag pages and repeat arrays this builder made (the others are shared).
        self._owned_flags: set[int] = set()
        self._owned_repeats: set[Key] = set()

    def view(self) -> ChunkList:
        """The list as it stands (the source itself until something is appended)."""
        return self._list if self._list is not None else self._source

    def finish(self) -> ChunkList:
        result = self.view()
        result._columns.freeze()
        return result

    def _own(self) -> ChunkList:
        if self._list is None:
            source = self._source
            own = ChunkList.__new__(ChunkList)
            own.count, own.unique = source.count, source.unique
            own._columns = source._columns.thawed()
            own._first = dict(source._first)
            own._table = array("q", source._table)
            own._odd_first = dict(source._odd_first)
            own._repeats = dict(source._repeats)
            self._list = own
        return self._list

    def extend(self, page: Iterable[tuple[str, int]]) -> tuple[int, int | None]:
        """Declare ``page`` after the chunks declared so far; returns (the sum of its
        sizes, its largest size or None for an empty page)."""
        items = list(page)
        digests = [digest for digest, _ in items]
        sizes = [size for _, size in items]
        if not digests:
            return 0, None
        own = self._own()
        start = own.count
        raws = pack_many(digests)
        own._columns.put_many(start, digests, raws, sizes)
        own.count += len(digests)
        firsts = bytearray(len(digests))
        for offset, raw in enumerate(raws):
            index = start + offset
            first = self._first_index(own, index, digests[offset], raw)
            if first == index:
                firsts[offset] = 1
                own.unique += 1
            else:
                self._repeat(own, digests[offset] if raw is None else raw, first, index)
        self._write_flags(own, start, firsts)
        return sum(sizes), max(sizes)

    def _first_index(self, own: ChunkList, index: int, digest: str, raw: bytes | None) -> int:
        """The first index of ``index``'s digest, recording ``index`` if it is."""
        if raw is None:
            return own._odd_first.setdefault(digest, index)
        if (own.unique - len(own._odd_first) + 1) * 4 > len(own._table) * 3:
            self._grow(own)
        tag = hash(raw) & _TAG
        found = own._find(raw, tag)
        if found >= 0:
            return found >> 32
        own._table[-1 - found] = (index << 32) | tag
        return index

    def _repeat(self, own: ChunkList, key: Key, first: int, index: int) -> None:
        if key not in self._owned_repeats:
            # A copy, appended to from now on: the source's list holds the old one.
            repeated = own._repeats.get(key)
            own._repeats[key] = array("I", [first]) if repeated is None else repeated[:]
            self._owned_repeats.add(key)
        own._repeats[key].append(index)

    def _write_flags(self, own: ChunkList, start: int, firsts: bytearray) -> None:
        done = 0
        while done < len(firsts):
            index = start + done
            page, slot = index >> SHIFT, index & _SLOT
            end = done + min(PAGE - slot, len(firsts) - done)
            if page not in self._owned_flags:
                flags = own._first.get(page)
                own._first[page] = bytearray() if flags is None else bytearray(flags)
                self._owned_flags.add(page)
            _fit(own._first[page], slot + end - done)[slot : slot + end - done] = firsts[done:end]
            done = end

    @staticmethod
    def _grow(own: ChunkList) -> None:
        """Double the table (8 slots at first) and place every entry again by its
        tag: no digest is read or hashed again."""
        size = max(8, 2 * len(own._table))
        table = array("q", [-1]) * size
        mask = size - 1
        for entry in own._table:
            if entry < 0:
                continue
            slot = entry & mask
            while table[slot] >= 0:
                slot = (slot + 1) & mask
            table[slot] = entry
        own._table = table


class StoredChunks:
    """The chunks stored so far, by index: a presence map of one byte an index and, for
    a chunk that is not exactly the one declared at its index, its own record."""

    __slots__ = ("_has", "_present", "_records", "count")

    def __init__(self) -> None:
        #: Distinct indexes stored.
        self.count = 0
        #: page -> one byte an index: 1 stored, 0 not.
        self._present: dict[int, bytearray] = {}
        #: Records of the chunks stored for themselves, and page -> one byte an index,
        #: 1 where the index has one (a chunk stored as declared has none).
        self._records = _Columns()
        self._has: dict[int, bytearray] = {}

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int):
            return False
        page, slot = self._present.get(index >> SHIFT), index & _SLOT
        return page is not None and slot < len(page) and page[slot] == 1

    def get(self, index: int, declared: ChunkList) -> tuple[str, int] | None:
        """(digest, size) stored at ``index``, None if none is."""
        if index not in self:
            return None
        return self._record(index, declared)

    def _record(self, index: int, declared: ChunkList) -> tuple[str, int]:
        has, slot = self._has.get(index >> SHIFT) if self._has else None, index & _SLOT
        if has is not None and slot < len(has) and has[slot]:
            return self._records.digest(index), self._records.size(index)
        return declared[index]

    def items(
        self, declared: ChunkList, start: int | None = None
    ) -> Iterator[tuple[int, str, int]]:
        """(index, digest, size) of every stored index from ``start`` on (None: from
        the lowest), in order."""
        for first, last in self.runs(start):
            for index in range(first, last + 1):
                yield index, *self._record(index, declared)

    def runs(self, start: int | None = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        """Runs of consecutive stored indexes in ``[start, end)`` as (first, last), in
        order, found with ``bytearray.find`` a page at a time (no per-index work).
        ``start`` None: from the lowest index stored (a log may hold negative ones)."""
        run_first: int | None = None  # the open run's first index
        run_next = 0  # the index after the open run's last
        for number in sorted(self._present):
            base = number << SHIFT
            if end is not None and base >= end:
                break
            position = 0 if start is None else max(start, base) - base
            page = self._present[number]
            # A page holds bytes up to its last index stored: the rest are not stored.
            stop = min(len(page), PAGE if end is None else end - base)
            while position < stop:
                if run_first is None or run_next != base + position:
                    if run_first is not None:
                        yield run_first, run_next - 1
                        run_first = None
                    found = page.find(1, position, stop)
                    if found < 0:
                        break
                    run_first, position = base + found, found
                gap = page.find(0, position, stop)
                if gap < 0:
                    run_next, position = base + stop, stop
                else:
                    yield run_first, base + gap - 1
                    run_first, position = None, gap
        if run_first is not None:
            yield run_first, run_next - 1

    def builder(self) -> StoredChunksBuilder:
        return StoredChunksBuilder(self)

    def equal(self, other: StoredChunks, declared: ChunkList, their_declared: ChunkList) -> bool:
        """Whether both hold the same (index, digest, size) records."""
        return self.count == other.count and all(
            mine == theirs
            for mine, theirs in zip(self.items(declared), other.items(their_declared), strict=True)
        )

    def __repr__(self) -> str:
        return f"StoredChunks(count={self.count})"


class StoredChunksBuilder:
    """Stores chunks into a copy of a ``StoredChunks`` that shares the source's pages
    until it writes to them."""

    def __init__(self, source: StoredChunks) -> None:
        self._source = source
        self._chunks: StoredChunks | None = None
        self._owned_present: set[int] = set()
        self._owned_has: set[int] = set()

    def view(self) -> StoredChunks:
        return self._chunks if self._chunks is not None else self._source

    def finish(self) -> StoredChunks:
        result = self.view()
        result._records.freeze()
        return result

    def _own(self) -> StoredChunks:
        if self._chunks is None:
            source = self._source
            own = StoredChunks.__new__(StoredChunks)
            own.count = source.count
            own._present = dict(source._present)
            own._records = source._records.thawed()
            own._has = dict(source._has)
            self._chunks = own
        return self._chunks

    def put(self, index: int, digest: str, size: int, raw: bytes | None, as_declared: bool) -> bool:
        """Store (``digest``, ``size``) at ``index``; ``raw``: ``pack(digest)``;
        ``as_declared``: it is exactly the chunk declared at ``index`` (then it needs no
        record of its own). A repeat overwrites, as the events say. True when the index
        was not stored before."""
        own = self._own()
        number, slot = index >> SHIFT, index & _SLOT
        if number not in self._owned_present:
            present = own._present.get(number)
            own._present[number] = bytearray() if present is None else bytearray(present)
            self._owned_present.add(number)
        page = _fit(own._present[number], slot + 1)
        added = page[slot] == 0
        if added:
            page[slot] = 1
            own.count += 1
        if not as_declared:
            own._records.put(index, digest, size, raw)
            _fit(self._has_page(number), slot + 1)[slot] = 1
        elif (
            own._has and (has := own._has.get(number)) is not None and slot < len(has) and has[slot]
        ):
            self._has_page(number)[slot] = 0
        return added

    def _has_page(self, number: int) -> bytearray:
        own = self._own()
        if number not in self._owned_has:
            has = own._has.get(number)
            own._has[number] = bytearray() if has is None else bytearray(has)
            self._owned_has.add(number)
        return own._has[number]

    def keep_apart_from(self, declared: ChunkList) -> None:
        """Give every chunk stored as declared its own record, as ``declared`` is about
        to be replaced."""
        for index, digest, size in list(self.view().items(declared)):
            self.put(index, digest, size, pack(digest), as_declared=False)
