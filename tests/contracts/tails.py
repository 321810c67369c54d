"""The tail port's contract: ``TailStore``, the durable end of an offset stream."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore.errors import ChunkstoreError
from chunkstore.tails import TailStore


class TailStoreContract(abc.ABC):
    """A tail per (upload, base): written whole, extended after what was acknowledged,
    read only as far as it is there."""

    @abc.abstractmethod
    def make_tails(self, tmp_path: Path) -> TailStore:
        """A new, empty tail store of the backend under test."""

    @pytest.fixture
    def tails(self, tmp_path: Path) -> Iterator[TailStore]:
        yield self.make_tails(tmp_path)

    def test_a_written_tail_is_read_back(self, tails: TailStore) -> None:
        tails.write("u1", 0, b"abcdef")

        assert tails.read("u1", 0, 6) == b"abcdef"
        assert tails.read("u1", 0, 3) == b"abc"

    def test_writing_a_tail_again_replaces_it(self, tails: TailStore) -> None:
        tails.write("u1", 0, b"a longer first tail")

        tails.write("u1", 0, b"short")

        assert tails.read("u1", 0, 5) == b"short"
        with pytest.raises(ChunkstoreError):
            tails.read("u1", 0, 6)

    def test_a_read_of_size_zero_is_empty_whether_or_not_a_tail_exists(
        self, tails: TailStore
    ) -> None:
        assert tails.read("u1", 0, 0) == b""
        tails.write("u1", 0, b"abc")
        assert tails.read("u1", 0, 0) == b""

    def test_reading_more_than_is_there_raises(self, tails: TailStore) -> None:
        tails.write("u1", 0, b"abc")

        with pytest.raises(ChunkstoreError):
            tails.read("u1", 0, 4)

    def test_reading_a_tail_that_is_not_there_raises(self, tails: TailStore) -> None:
        tails.write("u1", 0, b"abc")

        with pytest.raises(ChunkstoreError):
            tails.read("u1", 100, 3)  # another base
        with pytest.raises(ChunkstoreError):
            tails.read("u2", 0, 3)  # another upload

    def test_extend_appends_after_the_acknowledged_bytes(self, tails: TailStore) -> None:
        tails.extend("u1", 0, 0, b"abc")  # the first bytes make the tail
        tails.extend("u1", 0, 3, b"def")

        assert tails.read("u1", 0, 6) == b"abcdef"

    def test_extend_overwrites_leftovers_past_the_acknowledged_bytes(
        self, tails: TailStore
    ) -> None:
        tails.write("u1", 0, b"abcdef")  # "def" never acknowledged: a PATCH broke off

        tails.extend("u1", 0, 3, b"XY")

        assert tails.read("u1", 0, 5) == b"abcXY"
        with pytest.raises(ChunkstoreError):
            tails.read("u1", 0, 6)  # the leftover "f" went with the rest

    def test_extend_by_nothing_drops_the_leftovers(self, tails: TailStore) -> None:
        tails.write("u1", 0, b"abcdef")

        tails.extend("u1", 0, 4, b"")

        assert tails.read("u1", 0, 4) == b"abcd"
        with pytest.raises(ChunkstoreError):
            tails.read("u1", 0, 5)

    def test_tails_of_other_bases_and_uploads_are_their_own(self, tails: TailStore) -> None:
        tails.write("u1", 0, b"old")
        tails.write("u1", 4096, b"new")
        tails.write("u10", 0, b"other")

        tails.extend("u1", 4096, 3, b"er")

        assert tails.read("u1", 0, 3) == b"old"
        assert tails.read("u1", 4096, 5) == b"newer"
        assert tails.read("u10", 0, 5) == b"other"

    def test_discard_keeps_the_current_tail(self, tails: TailStore) -> None:
        tails.write("u1", 0, b"old")
        tails.write("u1", 4096, b"older")
        tails.write("u1", 8192, b"current")
        tails.write("u10", 0, b"not u1's")

        assert tails.discard("u1", keep_base=8192) == 2

        assert tails.read("u1", 8192, 7) == b"current"
        with pytest.raises(ChunkstoreError):
            tails.read("u1", 0, 3)
        assert tails.uploads() == {"u1": 1, "u10": 1}

    def test_discard_without_a_base_to_keep_removes_every_tail(self, tails: TailStore) -> None:
        tails.write("u1", 0, b"a")
        tails.write("u1", 10, b"b")

        assert tails.discard("u1") == 2

        assert tails.uploads() == {}
        assert tails.discard("u1") == 0
        assert tails.discard("nobody", keep_base=0) == 0

    def test_uploads_counts_the_tails_of_each_upload(self, tails: TailStore) -> None:
        assert tails.uploads() == {}
        tails.write("u1", 0, b"a")
        tails.write("u1", 10, b"b")
        tails.extend("u2", 0, 0, b"c")

        assert tails.uploads() == {"u1": 2, "u2": 1}
