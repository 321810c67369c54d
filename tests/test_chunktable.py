"""A session's chunks held compactly (chunkstore.chunktable): the same answers as the
plain dicts and tuples they replace, states that never change once made, and a memory
bound per chunk."""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import blake3
import pytest

from chunkstore.application import UploadService
from chunkstore.chunktable import PAGE
from chunkstore.commands import InitRequest
from chunkstore.config import Settings
from chunkstore.events import (
    ChunksDeclared,
    ChunkStored,
    Event,
    TusUploadCreated,
    UploadCancelled,
    UploadInitiated,
)
from chunkstore.intake import Frame
from chunkstore.listing import list_chunks
from chunkstore.session import SessionState, replay

NOW = datetime(2030, 1, 1, tzinfo=UTC)


# -- the fold these tables replace, kept as the reference --------------------------------


@dataclass
class Reference:
    """The chunk fields of a session as the fold held them in dicts and tuples: every
    answer of the compact tables must equal this one's."""

    mode: str = "fixed"
    total_chunks: int = 0
    chunk_size: int = 0
    total_size: int = 0
    chunk_list: list[tuple[str, int]] = field(default_factory=list)
    digest_indexes: dict[str, list[int]] = field(default_factory=dict)
    chunks: dict[int, tuple[str, int]] = field(default_factory=dict)
    digests_stored: int = 0
    declared_size: int = 0
    bytes_received: int = 0
    bytes_deduplicated: int = 0

    def apply(self, event: Event) -> None:
        match event:
            case UploadInitiated():
                self.mode, self.total_chunks = event.mode, event.total_chunks
                self.chunk_size, self.total_size = event.chunk_size, event.total_size
                self.chunk_list = list(event.chunk_list or ())
                self.declared_size = sum(size for _, size in self.chunk_list)
                self.digest_indexes = {}
                self._index(self.chunk_list, 0)
            case ChunksDeclared(start=start, chunk_list=page):
                self.chunk_list += page
                self.declared_size += sum(size for _, size in page)
                self.chunk_size = max([self.chunk_size, *(size for _, size in page)])
                self._index(page, start)
            case ChunkStored(index=index, digest=digest, size=size, reused=reused):
                if index not in self.chunks:
                    if reused:
                        self.bytes_deduplicated += size
                    else:
                        self.bytes_received += size
                    if self.digest_indexes.get(digest, [None])[0] == index:
                        self.digests_stored += 1
                self.chunks[index] = (digest, size)
                if self.mode == "tus":
                    self.total_chunks = max(self.total_chunks, index + 1)
                    self.chunk_size = max(self.chunk_size, size)
            case TusUploadCreated():
                self.mode = "tus"

    def _index(self, page: list[tuple[str, int]], start: int) -> None:
        for index, (digest, _) in enumerate(page, start):
            self.digest_indexes.setdefault(digest, []).append(index)

    def answers(self, probe: range, digests: list[str]) -> dict[str, object]:
        missing = [i for i in range(self.total_chunks) if i not in self.chunks]
        needed, seen = [], set()
        for index in missing:
            if index >= len(self.chunk_list):
                break
            if self.chunk_list[index][0] not in seen:
                seen.add(self.chunk_list[index][0])
                needed.append(index)
        manifest = self.mode == "manifest"
        return {
            "chunk": [self.chunks.get(i) for i in probe],
            "has_chunk": [i in self.chunks for i in probe],
            "stored_items": [(i, *self.chunks[i]) for i in sorted(self.chunks)],
            "received_chunks": sorted(self.chunks),
            "received_count": len(self.chunks),
            "missing_count": self.total_chunks - len(self.chunks),
            "missing_chunks": missing,
            "needed_chunks": needed if manifest else missing,
            "needed_count": len(self.digest_indexes) - self.digests_stored
            if manifest
            else self.total_chunks - len(self.chunks),
            "is_needed": [self._is_needed(i) for i in probe],
            "indexes_of": [tuple(self.digest_indexes.get(d, ())) for d in digests],
            "declared_chunks": len(self.chunk_list) if manifest else self.total_chunks,
            "declared": list(self.chunk_list),
            "expected": [
                (self.chunk_list[i][0], self.chunk_list[i][1])
                for i in probe
                if manifest and 0 <= i < len(self.chunk_list)
            ],
            "counters": (
                self.digests_stored,
                self.declared_size,
                self.bytes_received,
                self.bytes_deduplicated,
                self.chunk_size,
                self.total_chunks,
            ),
        }

    def _is_needed(self, index: int) -> bool:
        if index in self.chunks:
            return False
        if self.mode != "manifest":
            return 0 <= index < self.total_chunks
        if not 0 <= index < len(self.chunk_list):
            return False
        return self.digest_indexes[self.chunk_list[index][0]][0] == index


def answers(state: SessionState, probe: range, digests: list[str]) -> dict[str, object]:
    """The same questions put to a folded state."""
    manifest = state.mode == "manifest"
    return {
        "chunk": [state.chunk(i) for i in probe],
        "has_chunk": [state.has_chunk(i) for i in probe],
        "stored_items": list(state.stored_items()),
        "received_chunks": state.received_chunks,
        "received_count": state.received_count,
        "missing_count": state.missing_count,
        "missing_chunks": state.missing_chunks,
        "needed_chunks": state.needed_chunks,
        "needed_count": state.needed_count,
        "is_needed": [state.is_needed(i) for i in probe],
        "indexes_of": [state.indexes_of(d) for d in digests],
        "declared_chunks": state.declared_chunks,
        "declared": list(state.declared),
        "expected": [
            (state.expected_digest(i), state.expected_size(i))
            for i in probe
            if manifest and 0 <= i < state.declared_chunks
        ],
        "counters": (
            state.digests_stored,
            state.declared_size,
            state.bytes_received,
            state.bytes_deduplicated,
            state.chunk_size,
            state.total_chunks,
        ),
    }


def reference_answers(events: list[Event], probe: range, digests: list[str]) -> dict[str, object]:
    reference = Reference()
    for event in events:
        reference.apply(event)
    return reference.answers(probe, digests)


# -- event streams ---------------------------------------------------------------------


def digest_of(number: int) -> str:
    return blake3.blake3(number.to_bytes(8, "big")).hexdigest()


def initiated(mode: str, chunks: list[tuple[str, int]] | None, total: int) -> UploadInitiated:
    return UploadInitiated(
        owner="o",
        filename="f",
        total_size=sum(size for _, size in chunks or ()) or total * 10,
        mime_type="application/octet-stream",
        chunk_size=10,
        total_chunks=total,
        created_at=NOW,
        expires_at=NOW + timedelta(days=1),
        mode=mode,
        chunk_list=chunks,
    )


def random_stream(rng: random.Random) -> tuple[list[Event], list[str]]:
    """A session's events, some as the service writes them and some as no writer of
    chunkstore would (digests in capitals or not hex, sizes past 4 bytes or negative,
    indexes out of range, a chunk stored again with other bytes, a second init)."""
    pool = [digest_of(rng.randrange(10_000)) for _ in range(rng.choice([3, 50, 3000]))]
    odd = ["A" * 64, "not a digest", "f" * 63]
    total = rng.choice([0, 1, 7, PAGE - 1, PAGE + 1, 2 * PAGE + 300])

    def chunk() -> tuple[str, int]:
        digest = rng.choice(odd) if rng.random() < 0.02 else rng.choice(pool)
        roll = rng.random()
        size = 2**40 if roll < 0.01 else -5 if roll < 0.02 else rng.randint(1, 70_000)
        return digest, size

    mode = rng.choice(["fixed", "manifest", "manifest", "tus"])
    declared = [chunk() for _ in range(total)]
    first = rng.randint(0, total)
    events: list[Event] = []
    if mode == "tus":
        events.append(
            TusUploadCreated(
                owner="o",
                filename="f",
                mime_type="application/octet-stream",
                created_at=NOW,
                expires_at=NOW + timedelta(days=1),
            )
        )
    else:
        events.append(initiated(mode, declared[:first] if mode == "manifest" else None, total))
    pages = [declared[at : at + 700] for at in range(first, total, 700)]
    count = first  # declared so far: a page starts there, as the service records it
    for _ in range(rng.randint(0, 3 * total + 5)):
        roll = rng.random()
        if mode == "manifest" and pages and roll < 0.05:
            events.append(ChunksDeclared(start=count, chunk_list=pages[0]))
            count += len(pages.pop(0))
        elif roll < 0.06:
            events.append(initiated("manifest", [chunk() for _ in range(5)], 5))
            count = 5
        else:
            index = rng.randrange(-2, total + 3)
            if mode == "manifest" and 0 <= index < total and rng.random() < 0.9:
                digest, size = declared[index]
            else:
                digest, size = chunk()
            events.append(ChunkStored(index, digest, size, reused=rng.random() < 0.3))
    for page in pages if mode == "manifest" else []:
        events.append(ChunksDeclared(start=count, chunk_list=page))
        count += len(page)
    return events, pool + odd + [digest_of(20_000)]


@pytest.mark.parametrize("seed", range(60))
def test_a_fold_answers_what_the_dicts_and_tuples_answered(seed: int) -> None:
    rng = random.Random(seed)
    events, digests = random_stream(rng)
    probe = range(-3, 2 * PAGE + 310)

    state = replay(events, SessionState.empty("u"))

    assert answers(state, probe, digests) == reference_answers(events, probe, digests)


@pytest.mark.parametrize("seed", range(20))
def test_folding_in_appends_gives_the_state_a_fold_at_once_gives(seed: int) -> None:
    rng = random.Random(seed)
    events, _ = random_stream(rng)
    state = SessionState.empty("u")
    at = 0
    while at < len(events):
        step = rng.randint(1, 40)
        state = replay(events[at : at + step], state)
        at += step

    assert state == replay(events, SessionState.empty("u"))


# -- states never change once made -------------------------------------------------------


def manifest_state(chunks: list[tuple[str, int]], total: int) -> SessionState:
    return replay([initiated("manifest", chunks, total)], SessionState.empty("u"))


def test_a_fold_leaves_the_state_it_started_from_as_it_was() -> None:
    digests = [digest_of(n % 900) for n in range(1500)]  # repeats, and a partly filled page
    base = manifest_state([(d, 7) for d in digests], 3000)
    base = replay([ChunkStored(i, digests[i], 7) for i in range(0, 1500, 3)], base)
    probe, asked = range(-1, 3001), [*digests[:1000:7], digest_of(5000)]
    before = answers(base, probe, asked)

    page = [(digest_of(n % 1200), 9) for n in range(1500, 3000)]
    later = replay(
        [
            ChunksDeclared(start=1500, chunk_list=page),
            *(ChunkStored(i, digests[i], 7) for i in range(1, 1500, 3)),
            ChunkStored(1600, page[100][0], 9),
            ChunkStored(3, "e" * 64, 7),  # stored again with other bytes
        ],
        base,
    )

    assert answers(base, probe, asked) == before
    assert later.declared_chunks == 3000 and later.received_count == 1001
    assert later.indexes_of(page[0][0]) == tuple(
        i for i, (d, _) in enumerate([*((d, 7) for d in digests), *page]) if d == page[0][0]
    )
    assert later.chunk(3) == ("e" * 64, 7) and base.chunk(3) == (digests[3], 7)


def test_two_folds_from_one_state_do_not_see_each_other() -> None:
    base = manifest_state([(digest_of(n), 5) for n in range(PAGE + 10)], 2 * PAGE)
    mine = [(digest_of(10_000 + n), 5) for n in range(PAGE - 10)]
    theirs = [(digest_of(n), 5) for n in range(PAGE - 10)]  # each repeats a declared one

    one = replay([ChunksDeclared(PAGE + 10, mine), ChunkStored(3, digest_of(3), 5)], base)
    other = replay([ChunksDeclared(PAGE + 10, theirs)], base)

    assert [one.expected_digest(i) for i in (PAGE + 10, 2 * PAGE - 1)] == [
        mine[0][0],
        mine[-1][0],
    ]
    assert other.indexes_of(digest_of(0)) == (0, PAGE + 10)
    assert one.indexes_of(digest_of(0)) == (0,)
    assert one.needed_count == 2 * PAGE - 1 and other.needed_count == PAGE + 10
    assert not other.has_chunk(3) and not base.has_chunk(3) and one.has_chunk(3)
    assert base.declared_chunks == PAGE + 10


# -- lookups ---------------------------------------------------------------------------


def test_a_digest_declared_many_times_is_needed_once_at_its_first_index() -> None:
    a, b = digest_of(1), digest_of(2)
    state = manifest_state([(a, 3), (b, 4), (a, 3), (a, 3), (b, 4)], 6)

    assert state.indexes_of(a) == (0, 2, 3)
    assert state.first_index(b) == 1 and state.first_index(digest_of(3)) is None
    assert [state.is_needed(i) for i in range(6)] == [True, True, False, False, False, False]
    assert state.needed_chunks == [0, 1] and state.needed_count == 2

    state = replay([ChunkStored(i, a, 3, reused=i != 0) for i in (0, 2, 3)], state)

    assert state.needed_chunks == [1] and state.needed_count == 1
    assert state.missing_chunks == [1, 4, 5]
    assert list(list_chunks(state).received_ranges) == [(0, 0), (2, 3)]


def test_runs_of_stored_indexes_cross_pages_and_skip_empty_ones() -> None:
    stored = [*range(5, PAGE + 3), *range(3 * PAGE - 2, 3 * PAGE + 2), 5 * PAGE]
    events: list[Event] = [initiated("fixed", None, 6 * PAGE)]
    events += [ChunkStored(i, digest_of(i), 10) for i in stored]
    state = replay(events, SessionState.empty("u"))

    assert list(state.stored_runs()) == [
        (5, PAGE + 2),
        (3 * PAGE - 2, 3 * PAGE + 1),
        (5 * PAGE, 5 * PAGE),
    ]
    assert list(state.stored_runs(PAGE)) == [
        (PAGE, PAGE + 2),
        (3 * PAGE - 2, 3 * PAGE + 1),
        (5 * PAGE, 5 * PAGE),
    ]
    assert state.received_chunks == stored


def test_the_chunks_of_a_complete_session_come_in_index_order() -> None:
    chunks = [(digest_of(n % 4), 10 + n % 4) for n in range(2 * PAGE + 5)]
    state = manifest_state(chunks, len(chunks))
    state = replay(
        [ChunkStored(i, d, s, reused=i >= 4) for i, (d, s) in reversed(list(enumerate(chunks)))],
        state,
    )

    assert state.ordered_chunks() == chunks


def test_ordered_chunks_of_an_incomplete_session_name_the_first_missing_index() -> None:
    state = manifest_state([(digest_of(n), 1) for n in range(5)], 5)
    state = replay([ChunkStored(i, digest_of(i), 1) for i in (0, 1, 3, 4)], state)

    with pytest.raises(KeyError, match="2"):
        state.ordered_chunks()


# -- a log recorded by the service -----------------------------------------------------


def recorded_streams(data_dir: Path) -> Iterator[list[Event]]:
    """Sessions written through the service: a manifest upload with repeated chunks
    declared in pages and stored in batches, a fixed-size one, a cancelled one."""
    settings = Settings(data_dir=data_dir, chunk_page_size=300, max_file_size=10**9)
    service = UploadService.open(settings)
    rng = random.Random(5)
    try:
        pieces = [rng.randbytes(rng.randint(1, 64)) for _ in range(40)]
        order = [pieces[rng.randrange(40)] for _ in range(1000)]
        chunks = [(blake3.blake3(p).hexdigest(), len(p)) for p in order]
        request = InitRequest(
            filename="a.bin",
            total_size=sum(size for _, size in chunks),
            chunks=chunks[:300],
            chunk_count=len(chunks),
        )
        manifest = service.init_upload("alice", request).upload_id
        for start in range(300, len(chunks), 300):
            service.declare_chunks("alice", manifest, start, chunks[start : start + 300])
        for start in range(0, len(chunks), 128):
            frames = [
                Frame(i, chunks[i][0], chunks[i][1], [memoryview(order[i])])
                for i in range(start, min(start + 128, len(chunks)))
                if service.status("alice", manifest).is_needed(i)
            ]
            service.intake.record_frames("alice", manifest, frames)
        fixed = service.init_upload(
            "alice", InitRequest(filename="b.bin", total_size=5000, chunk_size=1000)
        ).upload_id
        for index in (4, 0, 2):
            service.store_chunk("alice", fixed, index, rng.randbytes(1000))
        service.cancel_upload("alice", fixed, "gone")
        for upload_id in (manifest, fixed):
            yield [recorded.event for recorded in service.store.log.read(upload_id)]
    finally:
        service.close()


def test_a_recorded_log_replays_to_the_answers_the_dicts_gave(tmp_path: Path) -> None:
    for events in recorded_streams(tmp_path / "data"):
        digests = [event.digest for event in events if isinstance(event, ChunkStored)]
        probe = range(-1, 1002)

        state = replay(events, SessionState.empty("u"))

        assert answers(state, probe, digests) == reference_answers(events, probe, digests)
        assert state.missing_count == 0 or isinstance(events[-1], UploadCancelled)


# -- memory ----------------------------------------------------------------------------


def test_a_folded_session_of_200000_chunks_keeps_under_100_bytes_a_chunk() -> None:
    """The compact tables' reason to exist: the dicts and tuples kept ~530 bytes a chunk
    (1,000,000 chunks: 504 MiB). Measured with tracemalloc: the state alone, after its
    events are gone."""
    count, page = 200_000, 10_000
    rng = random.Random(1)
    digests = [blake3.blake3(n.to_bytes(8, "big")).digest() for n in range(count)]
    sizes = [rng.randint(16_384, 262_144) for _ in range(count)]

    def events() -> Iterator[Event]:
        yield initiated(
            "manifest",
            [(d.hex(), s) for d, s in zip(digests[:page], sizes[:page], strict=True)],
            count,
        )
        for start in range(page, count, page):
            chunk_list = [(digests[i].hex(), sizes[i]) for i in range(start, start + page)]
            yield ChunksDeclared(start=start, chunk_list=chunk_list)
        for index in range(count):
            yield ChunkStored(index, digests[index].hex(), sizes[index])

    gc.collect()
    tracemalloc.start()
    try:
        state = replay(events(), SessionState.empty("u"))
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert state.received_count == count and state.needed_count == 0
    assert kept / count < 100


def test_an_append_to_a_large_session_copies_a_page_not_the_session() -> None:
    """A fold of a request's chunks onto a session of 100,000 (50,000 stored) keeps the
    pages it writes to, not a copy of every chunk: the dicts it replaces copied the
    whole chunk map on every append (~2.6 MiB here)."""
    count = 100_000
    chunks = [(digest_of(n), 1000 + n % 7) for n in range(count)]
    state = manifest_state(chunks, count)
    state = replay([ChunkStored(i, *chunks[i]) for i in range(0, count, 2)], state)
    arrivals = [ChunkStored(i, *chunks[i]) for i in range(50_001, 50_257, 2)]

    gc.collect()
    tracemalloc.start()
    try:
        later = replay(arrivals, state)
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert later.received_count == state.received_count + 128
    assert not state.has_chunk(50_001) and later.has_chunk(50_001)
    assert kept < 64 * 1024


@pytest.mark.parametrize("mode", ["manifest", "fixed"])
def test_a_session_of_a_few_chunks_costs_a_few_kib_not_whole_pages(mode: str) -> None:
    """Pages grow to what they hold: a session of 4 chunks keeps ~2.4 KiB (whole pages
    of 1,024 indexes kept 41-49 KiB, and the service caches up to 512 states)."""
    chunks = [(digest_of(n), 1000) for n in range(4)]
    events: list[Event] = [initiated(mode, chunks if mode == "manifest" else None, 4)]
    events += [ChunkStored(index, *chunk) for index, chunk in enumerate(chunks)]

    gc.collect()
    tracemalloc.start()
    try:
        states = [replay(events, SessionState.empty("u")) for _ in range(100)]
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert all(state.ordered_chunks() == chunks for state in states)
    assert kept / len(states) < 8 * 1024
