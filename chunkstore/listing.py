"""Bounded views of a session's chunks, for answers that must stay small.

A session may have 4,000,000 chunks; listing every received and missing index made
each status answer 62 MB. An answer carries instead, from an index ``start`` on:

- ``received_ranges`` and ``missing_ranges``: ``[first, last]`` runs (inclusive), at
  most ``MAX_LISTED_RANGES`` each, so a few ranges describe a whole large session;
- ``received_chunks``, ``missing_chunks`` and ``needed_chunks``: index lists, at most
  ``MAX_LISTED_INDEXES`` each (the seed's lists, kept for its clients);
- the full ``received_count``, ``missing_count`` and ``needed_count``;
- ``chunks_truncated`` and ``next_from``: every list and range list is complete from
  ``start`` up to ``next_from`` (exclusive; some reach further), and asking again from
  ``next_from`` continues. ``next_from`` is None when nothing was cut.

Work is bounded too: runs are found in the session's presence map (one byte per
index, in pages) with ``bytearray.find``, never by walking indexes one by one, and
lists stop at their caps. Sorting the stored indexes instead took 1.9 s for 2,000,000 indexes stored
in random order out of 4,000,000.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import msgspec

from chunkstore.bounds import MAX_LISTED_INDEXES, MAX_LISTED_RANGES
from chunkstore.session import SessionState

Span = tuple[int, int]


class ChunkListing(msgspec.Struct, frozen=True, kw_only=True):
    received_ranges: list[Span]
    missing_ranges: list[Span]
    received_chunks: list[int]
    missing_chunks: list[int]
    needed_chunks: list[int]
    received_count: int
    missing_count: int
    needed_count: int
    chunks_truncated: bool
    next_from: int | None


def list_chunks(
    state: SessionState,
    start: int = 0,
    max_ranges: int = MAX_LISTED_RANGES,
    max_indexes: int = MAX_LISTED_INDEXES,
) -> ChunkListing:
    """The bounded view of ``state``'s chunks from index ``start`` on."""
    start = max(0, start)
    runs = StoredRuns(state)
    received_ranges, received_ranges_cut = first_spans(runs.received(start), max_ranges)
    received_chunks, received_cut = first_indexes(runs.received(start), max_indexes)
    missing_ranges, missing_ranges_cut = first_spans(runs.missing(start), max_ranges)
    missing_chunks, needed_chunks, missing_cut = missing_and_needed(
        state, runs.missing(start), max_indexes
    )
    cuts = [
        cut
        for cut in (received_ranges_cut, received_cut, missing_ranges_cut, missing_cut)
        if cut is not None
    ]
    next_from = min(cuts) if cuts else None
    return ChunkListing(
        received_ranges=received_ranges,
        missing_ranges=missing_ranges,
        received_chunks=received_chunks,
        missing_chunks=missing_chunks,
        needed_chunks=needed_chunks,
        received_count=state.received_count,
        missing_count=state.missing_count,
        needed_count=state.needed_count,
        chunks_truncated=next_from is not None,
        next_from=next_from,
    )


# -- runs of stored indexes ------------------------------------------------------------


class StoredRuns:
    """The runs of consecutive stored indexes of a session, below ``total_chunks``
    (``SessionState.stored_runs``: C speed, no per-index work)."""

    def __init__(self, state: SessionState) -> None:
        self.total = state.total_chunks
        self.state = state

    def received(self, start: int = 0) -> Iterator[Span]:
        """Runs of stored indexes in ``[start, total_chunks)``, in order."""
        return self.state.stored_runs(start)

    def missing(self, start: int = 0) -> Iterator[Span]:
        """The gaps between stored runs in ``[start, total_chunks)``, in order."""
        cursor = start
        for first, last in self.received(start):
            if first > cursor:
                yield cursor, first - 1
            cursor = last + 1
        if cursor < self.total:
            yield cursor, self.total - 1


# -- cutting to the caps ---------------------------------------------------------------


def first_spans(spans: Iterator[Span], limit: int) -> tuple[list[Span], int | None]:
    """At most ``limit`` spans, and where the first one left out starts (None: none)."""
    kept = list(itertools.islice(spans, limit))
    following = next(spans, None)
    return kept, following[0] if following is not None else None


def first_indexes(spans: Iterator[Span], limit: int) -> tuple[list[int], int | None]:
    """At most ``limit`` indexes of ``spans``, and the first one left out (None: none)."""
    indexes: list[int] = []
    for first, last in spans:
        room = limit - len(indexes)
        if last - first + 1 > room:
            indexes.extend(range(first, first + room))
            return indexes, first + room
        indexes.extend(range(first, last + 1))
    return indexes, None


def missing_and_needed(
    state: SessionState, missing_runs: Iterator[Span], limit: int
) -> tuple[list[int], list[int], int | None]:
    """Missing and needed indexes of ``missing_runs``, and where the lists stop being
    complete. Needed indexes are among the missing ones, so one walk gives both."""
    if state.mode != "manifest":
        indexes, cut = first_indexes(missing_runs, limit)
        return indexes, list(indexes), cut
    missing: list[int] = []
    needed: list[int] = []
    for first, last in missing_runs:
        for index in range(first, last + 1):
            if len(missing) == limit:
                return missing, needed, index
            missing.append(index)
            if state.is_needed(index):
                needed.append(index)
    return missing, needed, None
