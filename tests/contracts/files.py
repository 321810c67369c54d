"""The files port's contract: ``FileSink``, where completed uploads' final files go."""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from chunkstore.blobs import BlobLocation
from chunkstore.errors import CorruptBlob
from chunkstore.files import FileCopies, FileSink, location_of, upload_of
from tests.contracts.concurrency import THREADS, run_together

MiB = 1024 * 1024


def read_file(files: FileSink, location: str) -> bytes:
    with files.open(location) as opened:
        return opened.read()


def materialize(files: FileSink, upload_id: str, filename: str, data: bytes) -> str:
    part = files.writer(upload_id, filename)
    part.write(data)
    return part.commit()


class FileSinkContract(abc.ABC):
    """A final file appears whole at its location, atomically, or not at all."""

    @abc.abstractmethod
    def make_files(self, tmp_path: Path) -> FileSink:
        """A new, empty sink of the backend under test."""

    @pytest.fixture
    def files(self, tmp_path: Path) -> Iterator[FileSink]:
        yield self.make_files(tmp_path)

    def test_a_committed_part_is_read_back_at_its_location(self, files: FileSink) -> None:
        data = os.urandom(5000)
        part = files.writer("u1", "report.pdf")
        part.write(data[:100])
        part.write(memoryview(data)[100:])

        location = part.commit()

        assert location == location_of("u1", "report.pdf") == "files/u1/report.pdf"
        assert upload_of(location) == "u1"
        assert read_file(files, location) == data
        assert files.size(location) == 5000

    def test_a_part_is_invisible_until_it_is_committed(self, files: FileSink) -> None:
        part = files.writer("u1", "a.bin")
        part.write(b"not yet")
        location = location_of("u1", "a.bin")

        assert files.size(location) is None
        assert list(files.scan()) == []
        with pytest.raises(FileNotFoundError):
            files.open(location)
        assert files.parts() == {"u1": 1}

        part.commit()

        assert files.parts() == {}
        assert read_file(files, location) == b"not yet"

    def test_an_empty_file_is_a_file(self, files: FileSink) -> None:
        location = files.writer("u1", "empty").commit()

        assert files.size(location) == 0
        assert read_file(files, location) == b""

    def test_a_large_file_is_read_back_whole(self, files: FileSink) -> None:
        data = os.urandom(3 * MiB + 5)
        part = files.writer("u1", "big.bin")
        for offset in range(0, len(data), MiB):
            part.write(data[offset : offset + MiB])

        location = part.commit()

        assert read_file(files, location) == data

    def test_a_filename_is_kept_as_it_was_given(self, files: FileSink) -> None:
        location = materialize(files, "u1", "résumé final (2).txt", b"text")

        assert location == "files/u1/résumé final (2).txt"
        assert [entry.location for entry in files.scan()] == [location]
        assert read_file(files, location) == b"text"

    def test_a_second_commit_replaces_the_file_whole(self, files: FileSink) -> None:
        location = materialize(files, "u1", "a.bin", b"first version")
        reader = files.open(location)
        part = files.writer("u1", "a.bin")
        part.write(b"second, longer version")
        assert read_file(files, location) == b"first version"  # until the commit

        assert part.commit() == location

        assert read_file(files, location) == b"second, longer version"
        assert files.size(location) == len(b"second, longer version")
        with reader:  # a reader of the old file keeps reading the old file
            assert reader.read() == b"first version"
        assert [entry.location for entry in files.scan()] == [location]

    def test_an_aborted_part_leaves_nothing(self, files: FileSink) -> None:
        part = files.writer("u1", "a.bin")
        part.write(os.urandom(1000))

        part.abort()

        assert files.size(location_of("u1", "a.bin")) is None
        assert list(files.scan()) == []
        assert files.parts() == {}

    def test_an_aborted_replacement_keeps_the_old_file(self, files: FileSink) -> None:
        location = materialize(files, "u1", "a.bin", b"kept")
        part = files.writer("u1", "a.bin")
        part.write(b"dropped")

        part.abort()

        assert read_file(files, location) == b"kept"

    def test_a_missing_file_has_no_size_and_cannot_be_opened(self, files: FileSink) -> None:
        assert files.size("files/u1/a.bin") is None
        with pytest.raises(FileNotFoundError):
            files.open("files/u1/a.bin")

    def test_remove_removes_a_file_and_nothing_else(self, files: FileSink) -> None:
        gone = materialize(files, "u1", "a.bin", b"a")
        kept = materialize(files, "u1", "b.bin", b"b")

        files.remove(gone)

        assert files.size(gone) is None
        with pytest.raises(FileNotFoundError):
            files.open(gone)
        assert [entry.location for entry in files.scan()] == [kept]

    def test_removing_a_missing_file_does_nothing(self, files: FileSink) -> None:
        location = materialize(files, "u1", "a.bin", b"a")
        files.remove(location)

        files.remove(location)
        files.remove("files/u2/never.bin")

        assert list(files.scan()) == []

    def test_a_quarantined_file_leaves_the_final_files(self, files: FileSink) -> None:
        damaged = materialize(files, "u1", "a.bin", b"damaged, say")
        kept = materialize(files, "u2", "a.bin", b"fine")

        where = files.quarantine(damaged, "quarantine")

        assert where is not None
        assert files.size(damaged) is None
        assert [entry.location for entry in files.scan()] == [kept]
        # Rebuilt from its chunks, the file takes its place again.
        assert materialize(files, "u1", "a.bin", b"rebuilt") == damaged
        assert read_file(files, damaged) == b"rebuilt"

    def test_quarantining_a_missing_file_gives_none(self, files: FileSink) -> None:
        assert files.quarantine("files/u1/never.bin", "quarantine") is None

    def test_scan_lists_every_file_with_its_size_by_location(self, files: FileSink) -> None:
        made = {
            materialize(files, upload_id, name, os.urandom(size)): size
            for upload_id, name, size in [
                ("u2", "b.bin", 20),
                ("u1", "z.bin", 0),
                ("u10", "a.bin", 7),
                ("u1", "a.bin", 300),
            ]
        }

        entries = list(files.scan())

        assert [(entry.location, entry.size) for entry in entries] == sorted(made.items())
        assert all(entry.mtime > 0 for entry in entries)

    def test_parts_counts_each_uploads_uncommitted_parts(self, files: FileSink) -> None:
        first, second = files.writer("u1", "a.bin"), files.writer("u1", "a.bin")
        other = files.writer("u10", "a.bin")
        for part in (first, second, other):
            part.write(b"x")
        assert files.parts() == {"u1": 2, "u10": 1}

        first.commit()
        other.abort()

        assert files.parts() == {"u1": 1}

    def test_discard_parts_removes_only_that_uploads_parts(self, files: FileSink) -> None:
        for upload_id in ("u1", "u1", "u10"):
            files.writer(upload_id, "a.bin").write(b"left behind")
        survivor = files.writer("u2", "a.bin")
        survivor.write(b"still writing")

        assert files.discard_parts("u1") == 2

        assert files.parts() == {"u10": 1, "u2": 1}
        assert files.discard_parts("u1") == 0
        assert files.discard_parts("nobody") == 0
        assert read_file(files, survivor.commit()) == b"still writing"

    def test_concurrent_completions_of_different_uploads_all_land(self, files: FileSink) -> None:
        datas = [os.urandom(10_000) for _ in range(THREADS)]

        def complete(n: int) -> None:
            materialize(files, f"u{n}", "a.bin", datas[n])

        run_together(complete)

        assert files.parts() == {}
        for n in range(THREADS):
            assert read_file(files, location_of(f"u{n}", "a.bin")) == datas[n]

    def test_readers_see_one_whole_version_while_it_is_replaced(self, files: FileSink) -> None:
        versions = [bytes([n]) * 100_000 for n in range(THREADS)]
        location = materialize(files, "u1", "a.bin", versions[0])
        seen: set[bytes] = set()
        replacing = threading.Event()

        def replace_or_read(n: int) -> None:
            if n % 2:
                try:
                    materialize(files, "u1", "a.bin", versions[n])
                finally:
                    replacing.set()
            else:
                while not replacing.is_set():
                    seen.add(read_file(files, location))
                seen.add(read_file(files, location))

        run_together(replace_or_read)

        assert seen <= set(versions)
        assert read_file(files, location) in versions


class FileCopiesContract(abc.ABC):
    """``FileCopies``: a part filled by copies of byte ranges of local files (where
    blobs lie), read back before it is committed."""

    @abc.abstractmethod
    def make_copies(self, tmp_path: Path) -> FileCopies:
        """A new files backend with kernel copies, of the backend under test."""

    @pytest.fixture
    def copies(self, tmp_path: Path) -> Iterator[FileCopies]:
        yield self.make_copies(tmp_path)

    def test_copies_and_writes_land_in_order(self, copies: FileCopies, tmp_path: Path) -> None:
        source = tmp_path / "source.pack"
        data = os.urandom(3 * MiB + 17)
        source.write_bytes(data)
        part = copies.copying_writer("u1", "a.bin")

        part.copy_from(BlobLocation(str(source), 100, MiB))
        part.write(b"between")
        part.copy_from(BlobLocation(str(source), 2 * MiB, MiB + 17))
        with part.open_written() as written:
            read_back = written.read()
        location = part.commit()

        expected = data[100 : 100 + MiB] + b"between" + data[2 * MiB :]
        assert read_back == expected
        assert read_file(cast(FileSink, copies), location) == expected

    def test_a_missing_source_is_file_not_found(self, copies: FileCopies, tmp_path: Path) -> None:
        part = copies.copying_writer("u1", "a.bin")

        with pytest.raises(FileNotFoundError):
            part.copy_from(BlobLocation(str(tmp_path / "gone.pack"), 0, 10))
        part.abort()

    def test_a_source_shorter_than_the_range_is_corrupt(
        self, copies: FileCopies, tmp_path: Path
    ) -> None:
        source = tmp_path / "short.pack"
        source.write_bytes(b"x" * 100)
        part = copies.copying_writer("u1", "a.bin")

        with pytest.raises(CorruptBlob):
            part.copy_from(BlobLocation(str(source), 50, 100))
        part.abort()

    def test_an_aborted_copying_part_leaves_no_trace(
        self, copies: FileCopies, tmp_path: Path
    ) -> None:
        source = tmp_path / "source.pack"
        source.write_bytes(b"y" * 1000)
        part = copies.copying_writer("u1", "a.bin")
        part.copy_from(BlobLocation(str(source), 0, 1000))

        part.abort()

        sink = cast(FileSink, copies)
        assert sink.parts() == {}
        assert sink.size(location_of("u1", "a.bin")) is None
