"""The files port's backends against its contract (``tests/contracts/files.py``), and
what only the local directory promises: where files and parts live on disk, and the
sweep of parts a crash left (its ``TempFiles`` capability)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from chunkstore.blobs import BlobLocation
from chunkstore.files.local import LocalFiles
from chunkstore.files.memory import MemoryFiles
from tests.contracts.files import (
    FileCopiesContract,
    FileSinkContract,
    materialize,
    read_file,
)


class TestMemoryFiles(FileSinkContract):
    def make_files(self, tmp_path: Path) -> MemoryFiles:
        return MemoryFiles()

    def test_a_quarantined_file_is_kept_as_evidence(self, files: MemoryFiles) -> None:
        location = materialize(files, "u1", "a.bin", b"damaged, say")

        where = files.quarantine(location, "quarantine")

        assert where is not None
        assert files.quarantined[where] == b"damaged, say"


class TestLocalFiles(FileSinkContract, FileCopiesContract):
    def make_files(self, tmp_path: Path) -> LocalFiles:
        return LocalFiles(tmp_path / "data")

    def make_copies(self, tmp_path: Path) -> LocalFiles:
        return LocalFiles(tmp_path / "data")

    def test_copies_go_through_the_kernel_on_one_filesystem(
        self, files: LocalFiles, tmp_path: Path
    ) -> None:
        source = tmp_path / "data" / "source.pack"
        data = os.urandom(2 * 1024 * 1024)
        source.write_bytes(data)
        part = files.copying_writer("u1", "a.bin")

        part.copy_from(BlobLocation(str(source), 0, len(data)))
        location = part.commit()

        assert read_file(files, location) == data
        assert (files.copied_by_kernel, files.copied_by_fallback) == (len(data), 0)
        assert files.kernel_copy

    def test_a_copy_across_filesystems_falls_back_to_writes_once(self, files: LocalFiles) -> None:
        # /dev/shm is a tmpfs on every Linux this runs on: another filesystem than the
        # data directory's, so copy_file_range refuses (EXDEV) and the writes take over.
        assert os.stat("/dev/shm").st_dev != os.stat(files.root).st_dev, "need two filesystems"
        data = os.urandom(3 * 1024 * 1024 + 5)
        with tempfile.NamedTemporaryFile(dir="/dev/shm") as source:
            source.write(data)
            source.flush()
            first = files.copying_writer("u1", "a.bin")
            first.copy_from(BlobLocation(source.name, 0, len(data)))
            first_location = first.commit()
            second = files.copying_writer("u2", "b.bin")
            second.copy_from(BlobLocation(source.name, 5, 1000))
            second_location = second.commit()

        assert read_file(files, first_location) == data
        assert read_file(files, second_location) == data[5:1005]
        assert not files.kernel_copy
        assert (files.copied_by_kernel, files.copied_by_fallback) == (0, len(data) + 1000)

    def test_a_final_file_lives_at_its_location_under_the_root(self, files: LocalFiles) -> None:
        location = materialize(files, "u1", "a.bin", b"bytes")

        assert (files.root / "files" / "u1" / "a.bin").read_bytes() == b"bytes"
        assert (files.root / location).read_bytes() == b"bytes"

    def test_a_part_is_written_under_tmp_files(self, files: LocalFiles) -> None:
        part = files.writer("u1", "a.bin")
        part.write(b"bytes")

        (name,) = os.listdir(files.root / "tmp" / "files")
        assert name.startswith("assemble-u1-") and name.endswith(".part")
        part.commit()
        assert os.listdir(files.root / "tmp" / "files") == []

    def test_removing_the_last_file_of_an_upload_removes_its_directory(
        self, files: LocalFiles
    ) -> None:
        first = materialize(files, "u1", "a.bin", b"a")
        second = materialize(files, "u1", "b.bin", b"b")

        files.remove(first)
        assert (files.root / "files" / "u1").is_dir()
        files.remove(second)

        assert not (files.root / "files" / "u1").exists()

    def test_a_quarantined_file_is_kept_as_evidence(self, files: LocalFiles) -> None:
        location = materialize(files, "u1", "a.bin", b"damaged, say")

        where = files.quarantine(location, "quarantine")

        assert where == "quarantine/u1/a.bin"
        assert (files.root / where).read_bytes() == b"damaged, say"

    def test_a_location_outside_the_final_files_is_refused(self, files: LocalFiles) -> None:
        (files.root / "secret").write_bytes(b"not a final file")

        for location in ("secret", "files/../secret", "files/u1/../../secret", "/etc/passwd"):
            with pytest.raises(ValueError):
                files.open(location)
            with pytest.raises(ValueError):
                files.remove(location)
        assert (files.root / "secret").exists()

    def test_sweep_temp_files_removes_parts_a_crash_left(self, files: LocalFiles) -> None:
        left = files.writer("u1", "a.bin")  # never committed nor aborted: a crash
        left.write(b"half")

        assert files.sweep_temp_files() == 1

        assert files.parts() == {}

    def test_sweep_temp_files_spares_parts_younger_than_the_grace_period(
        self, files: LocalFiles
    ) -> None:
        old, young = files.writer("u1", "a.bin"), files.writer("u2", "a.bin")
        an_hour_ago = os.stat(old.path).st_mtime - 3600
        os.utime(old.path, (an_hour_ago, an_hour_ago))

        assert files.sweep_temp_files(older_than=600) == 1

        assert files.parts() == {"u2": 1}
        assert read_file(files, young.commit()) == b""

    def test_a_second_sink_on_the_directory_sees_the_files(
        self, files: LocalFiles, tmp_path: Path
    ) -> None:
        location = materialize(files, "u1", "a.bin", b"kept on disk")

        other = LocalFiles(tmp_path / "data")

        assert [(entry.location, entry.size) for entry in other.scan()] == [(location, 12)]
