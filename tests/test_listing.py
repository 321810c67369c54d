"""Bounded chunk listings (chunkstore.listing), checked against the full lists."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from chunkstore.events import ChunkStored, Event, UploadInitiated
from chunkstore.listing import list_chunks
from chunkstore.session import SessionState, replay

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def fixed_session(total: int, stored: list[int]) -> SessionState:
    events: list[Event] = [
        UploadInitiated(
            owner="o",
            filename="f",
            total_size=total * 4,
            mime_type="application/octet-stream",
            chunk_size=4,
            total_chunks=total,
            created_at=NOW,
            expires_at=NOW + timedelta(days=1),
        )
    ]
    events += [ChunkStored(index=i, digest=f"{i:064x}", size=4) for i in stored]
    return replay(events, SessionState.empty("u"))


def manifest_session(digests: list[str], stored_digests: set[str]) -> SessionState:
    events: list[Event] = [
        UploadInitiated(
            owner="o",
            filename="f",
            total_size=len(digests),
            mime_type="application/octet-stream",
            chunk_size=1,
            total_chunks=len(digests),
            created_at=NOW,
            expires_at=NOW + timedelta(days=1),
            mode="manifest",
            chunk_list=[(d, 1) for d in digests],
        )
    ]
    # As the service records them: storing a digest stores every index declared with it.
    events += [
        ChunkStored(index=i, digest=d, size=1, reused=i != digests.index(d))
        for d in sorted(stored_digests)
        for i in sorted(i for i, x in enumerate(digests) if x == d)
    ]
    return replay(events, SessionState.empty("u"))


def runs(indexes: list[int]) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    for index in indexes:
        if found and found[-1][1] == index - 1:
            found[-1] = (found[-1][0], index)
        else:
            found.append((index, index))
    return found


@pytest.mark.parametrize("seed", range(20))
def test_every_list_is_the_full_list_cut_at_next_from(seed: int) -> None:
    rng = random.Random(seed)
    total = rng.randint(0, 300)
    stored = rng.sample(range(total), rng.randint(0, total))
    rng.shuffle(stored)
    state = fixed_session(total, stored)
    start = rng.randint(0, total + 2)
    caps = {"max_ranges": rng.randint(1, 8), "max_indexes": rng.randint(1, 40)}

    listing = list_chunks(state, start, **caps)

    received = sorted(i for i in stored if i >= start)
    missing = [i for i in range(start, total) if i not in set(stored)]
    cut = listing.next_from if listing.next_from is not None else total
    assert listing.chunks_truncated == (listing.next_from is not None)
    # Each list is a prefix of the full one that holds everything below next_from.
    assert listing.received_chunks == received[: len(listing.received_chunks)]
    assert listing.missing_chunks == missing[: len(listing.missing_chunks)]
    assert set(listing.received_chunks) >= {i for i in received if i < cut}
    assert set(listing.missing_chunks) >= {i for i in missing if i < cut}
    assert listing.needed_chunks == listing.missing_chunks  # fixed mode: the same
    assert listing.received_ranges == runs(received)[: caps["max_ranges"]]
    assert listing.missing_ranges == runs(missing)[: caps["max_ranges"]]
    assert len(listing.received_chunks) <= caps["max_indexes"]
    assert len(listing.missing_chunks) <= caps["max_indexes"]
    assert (listing.received_count, listing.missing_count) == (len(stored), total - len(stored))
    if listing.next_from is None:
        assert listing.received_chunks == received
        assert listing.missing_chunks == missing


@pytest.mark.parametrize("seed", range(20))
def test_needed_chunks_name_one_index_per_missing_digest(seed: int) -> None:
    rng = random.Random(seed)
    pool = [f"{n:064x}" for n in range(rng.randint(1, 30))]
    digests = [rng.choice(pool) for _ in range(rng.randint(1, 120))]
    stored = set(rng.sample(sorted(set(digests)), rng.randint(0, len(set(digests)))))
    state = manifest_session(digests, stored)
    limit = rng.randint(1, 50)

    listing = list_chunks(state, 0, max_indexes=limit)

    full = state.needed_chunks
    cut = listing.next_from if listing.next_from is not None else len(digests)
    assert listing.needed_chunks == full[: len(listing.needed_chunks)]
    assert set(listing.needed_chunks) >= {i for i in full if i < cut}
    assert listing.needed_count == len(full) == len(set(digests) - stored)


def test_a_session_of_four_million_chunks_lists_ten_thousand_and_two_ranges() -> None:
    state = fixed_session(4_000_000, [*range(100), *range(2_000_000, 2_000_050)])

    listing = list_chunks(state)

    assert listing.received_ranges == [(0, 99), (2_000_000, 2_000_049)]
    assert listing.missing_ranges == [(100, 1_999_999), (2_000_050, 3_999_999)]
    assert listing.received_chunks == [*range(100), *range(2_000_000, 2_000_050)]
    assert listing.missing_chunks == list(range(100, 10_100))
    assert listing.next_from == 10_100
    assert (listing.received_count, listing.missing_count) == (150, 3_999_850)
