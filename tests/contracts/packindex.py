"""The pack index port's contract (``chunkstore.blobs.packindex.PackIndex``)."""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore.blobs.packfile import HEADER_SIZE
from chunkstore.blobs.packindex import IndexRow, PackIndex, UnknownPack
from tests.contracts.concurrency import THREADS, run_together


def digest_of(n: int) -> str:
    return f"{n:064x}"


def row(n: int, pack: str = "p1", offset: int | None = None, size: int = 100) -> IndexRow:
    return IndexRow(
        digest_of(n), pack, offset if offset is not None else n * 1000, size, size, 0, 1000.0 + n
    )


def end_of(*rows: IndexRow) -> int:
    return max(r.offset + HEADER_SIZE + r.length for r in rows)


class PackIndexContract(abc.ABC):
    @abc.abstractmethod
    def make_index(self, tmp_path: Path) -> PackIndex:
        """A new, empty pack index of the backend under test."""

    @pytest.fixture
    def index(self, tmp_path: Path) -> Iterator[PackIndex]:
        index = self.make_index(tmp_path)
        index.register("p1", 1.0)
        index.register("p2", 2.0)
        yield index

    def test_a_digest_never_added_is_not_found(self, index: PackIndex) -> None:
        assert index.lookup(digest_of(1)) is None
        assert index.lookup_many([digest_of(1), digest_of(2)]) == {}

    def test_added_rows_are_found_with_everything_they_said(self, index: PackIndex) -> None:
        rows = [row(1), row(2, "p2", offset=0)]

        inserted = index.add(rows, {"p1": end_of(rows[0]), "p2": end_of(rows[1])})

        assert inserted == [True, True]
        assert index.lookup(digest_of(1)) == rows[0]
        assert index.lookup_many([digest_of(2), digest_of(1), digest_of(3)]) == {
            digest_of(1): rows[0],
            digest_of(2): rows[1],
        }

    def test_the_first_writer_of_a_digest_wins(self, index: PackIndex) -> None:
        first = row(1, "p1", offset=0)
        index.add([first], {"p1": end_of(first)})

        inserted = index.add([row(1, "p2", offset=0)], {"p2": end_of(row(1, "p2", offset=0))})

        assert inserted == [False]
        assert index.lookup(digest_of(1)) == first

    def test_within_one_add_the_first_row_of_a_digest_wins(self, index: PackIndex) -> None:
        rows = [row(1, offset=0), row(1, offset=500)]

        assert index.add(rows, {"p1": 1000}) == [True, False]
        assert index.lookup(digest_of(1)) == rows[0]

    def test_a_committed_length_only_grows(self, index: PackIndex) -> None:
        index.add([], {"p1": 5000})
        index.add([], {"p1": 3000})

        info = index.pack("p1")
        assert info is not None and info.committed == 5000

    def test_an_add_naming_an_unknown_pack_changes_nothing(self, index: PackIndex) -> None:
        with pytest.raises(UnknownPack):
            index.add([row(1)], {"p1": 9000, "nowhere": 10})

        assert index.lookup(digest_of(1)) is None
        info = index.pack("p1")
        assert info is not None and info.committed == 0

    def test_remove_deletes_rows_once(self, index: PackIndex) -> None:
        index.add([row(1), row(2)], {"p1": 5000})

        assert index.remove([digest_of(1), digest_of(3)]) == {digest_of(1)}
        assert index.remove([digest_of(1)]) == set()
        assert index.lookup(digest_of(1)) is None
        assert index.lookup(digest_of(2)) == row(2)

    def test_scan_lists_every_row_in_digest_order(self, index: PackIndex) -> None:
        numbers = list(range(1, 4500, 3))  # more than one page
        rows = [row(n) for n in reversed(numbers)]
        index.add(rows, {"p1": end_of(*rows)})

        assert [r.digest for r in index.scan()] == [digest_of(n) for n in numbers]
        assert [r.digest for r in index.scan(after=digest_of(4000))] == [
            digest_of(n) for n in numbers if n > 4000
        ]

    def test_rows_in_a_pack_come_in_offset_order(self, index: PackIndex) -> None:
        rows = [row(3, offset=2000), row(1, offset=0), row(2, "p2", offset=0), row(4, offset=1000)]
        index.add(rows, {"p1": 3000, "p2": 1000})

        assert [r.digest for r in index.rows_in("p1")] == [digest_of(n) for n in (1, 4, 3)]
        assert [r.digest for r in index.rows_in("p2")] == [digest_of(2)]
        assert list(index.rows_in("p3")) == []

    def test_registered_packs_are_listed_by_name(self, index: PackIndex) -> None:
        index.register("p0", 3.0)

        packs = index.packs()

        assert [(p.name, p.committed, p.sealed, p.retired) for p in packs] == [
            ("p0", 0, False, False),
            ("p1", 0, False, False),
            ("p2", 0, False, False),
        ]
        assert [p.created_at for p in packs] == [3.0, 1.0, 2.0]

    def test_registering_a_pack_again_changes_nothing(self, index: PackIndex) -> None:
        index.add([], {"p1": 100})

        index.register("p1", 50.0)

        assert index.pack("p1") == index.packs()[0]
        info = index.pack("p1")
        assert info is not None and (info.committed, info.created_at) == (100, 1.0)

    def test_a_sealed_pack_says_so(self, index: PackIndex) -> None:
        index.add([row(1)], {"p1": 2000})

        index.seal("p1")

        info = index.pack("p1")
        assert info is not None and info.sealed and info.committed == 2000
        with pytest.raises(UnknownPack):
            index.seal("nowhere")

    def test_live_bytes_count_the_records_rows_point_to(self, index: PackIndex) -> None:
        rows = [row(1, size=100), row(2, size=50), row(3, "p2", offset=0, size=7)]
        index.add(rows, {"p1": 5000, "p2": 1000})
        index.register("p3", 3.0)
        index.remove([digest_of(2)])

        assert index.live_bytes() == {"p1": HEADER_SIZE + 100, "p2": HEADER_SIZE + 7, "p3": 0}

    def test_move_points_rows_at_their_new_place_and_retires_the_old_pack(
        self, index: PackIndex
    ) -> None:
        index.add([row(1), row(2), row(3)], {"p1": 5000})
        index.remove([digest_of(2)])  # deleted before the repack switched
        moved = [row(1, "p2", offset=0), row(2, "p2", offset=200), row(3, "p2", offset=400)]

        count = index.move(moved, "p1", {"p2": 600})

        assert count == 2
        assert index.lookup(digest_of(1)) == moved[0]
        assert index.lookup(digest_of(2)) is None  # stays deleted
        assert index.lookup(digest_of(3)) == moved[2]
        old, new = index.pack("p1"), index.pack("p2")
        assert old is not None and old.retired
        assert new is not None and new.committed == 600 and not new.retired
        assert list(index.rows_in("p1")) == []

    def test_move_leaves_a_row_that_points_elsewhere_alone(self, index: PackIndex) -> None:
        index.register("p3", 3.0)
        elsewhere = row(1, "p3", offset=0)
        index.add([elsewhere], {"p3": 500})

        assert index.move([row(1, "p2", offset=0)], "p1", {"p2": 500}) == 0
        assert index.lookup(digest_of(1)) == elsewhere

    def test_a_pack_is_forgotten_only_once_no_row_points_into_it(self, index: PackIndex) -> None:
        index.add([row(1)], {"p1": 2000})

        with pytest.raises(ValueError):
            index.forget("p1")
        index.remove([digest_of(1)])
        index.forget("p1")

        assert index.pack("p1") is None
        assert [p.name for p in index.packs()] == ["p2"]

    def test_concurrent_adds_keep_one_row_per_digest(self, index: PackIndex) -> None:
        # Every thread adds the same 40 digests at its own offsets: each digest ends up
        # with exactly one row, and exactly one thread was told it inserted it.
        won: list[list[bool]] = [[] for _ in range(THREADS)]

        def add(n: int) -> None:
            rows = [row(d, "p1", offset=(n * 40 + d) * 200) for d in range(40)]
            won[n] = index.add(rows, {"p1": end_of(*rows)})

        run_together(add)

        assert [sum(w[d] for w in won) for d in range(40)] == [1] * 40
        for d in range(40):
            found = index.lookup(digest_of(d))
            assert found is not None
            winner = next(n for n in range(THREADS) if won[n][d])
            assert found.offset == (winner * 40 + d) * 200
        info = index.pack("p1")
        assert info is not None and info.committed == ((THREADS - 1) * 40 + 39) * 200 + 148

    def test_many_digests_are_looked_up_at_once(self, index: PackIndex) -> None:
        rows = [row(n) for n in range(1200)]  # more than one IN (...) batch
        index.add(rows, {"p1": end_of(*rows)})
        wanted = [digest_of(n) for n in range(0, 2400, 2)]

        found = index.lookup_many(wanted)

        assert sorted(found) == [digest_of(n) for n in range(0, 1200, 2)]

    def test_random_digests_are_kept_verbatim(self, index: PackIndex) -> None:
        digest = os.urandom(32).hex()
        stored = IndexRow(digest, "p1", 48, 7, 7, 0, 1234.5)

        index.add([stored], {"p1": 103})

        assert index.lookup(digest) == stored
