"""The tail port's backends against its contract (``tests/contracts/tails.py``), and what
only the local directory promises: one file per tail under ``staging/``."""

from __future__ import annotations

from pathlib import Path

from chunkstore.tails.local import LocalTails
from chunkstore.tails.memory import MemoryTails
from tests.contracts.tails import TailStoreContract


class TestMemoryTails(TailStoreContract):
    def make_tails(self, tmp_path: Path) -> MemoryTails:
        return MemoryTails()


class TestLocalTails(TailStoreContract):
    def make_tails(self, tmp_path: Path) -> LocalTails:
        return LocalTails(tmp_path / "staging")

    def test_a_tail_is_a_file_named_by_its_upload_and_base(self, tails: LocalTails) -> None:
        tails.write("u1", 4096, b"bytes")
        tails.extend("u1", 8192, 0, b"more")

        assert sorted(path.name for path in tails.directory.iterdir()) == ["u1.4096", "u1.8192"]
        assert tails.path("u1", 4096).read_bytes() == b"bytes"

    def test_discard_removes_a_lock_file_left_by_older_versions(self, tails: LocalTails) -> None:
        tails.write("u1", 0, b"current")
        (tails.directory / "u1.lock").write_bytes(b"")

        assert tails.discard("u1", keep_base=0) == 1

        assert [path.name for path in tails.directory.iterdir()] == ["u1.0"]

    def test_a_second_store_on_the_directory_reads_the_tails(
        self, tails: LocalTails, tmp_path: Path
    ) -> None:
        tails.write("u1", 0, b"kept on disk")

        assert LocalTails(tmp_path / "staging").read("u1", 0, 12) == b"kept on disk"
