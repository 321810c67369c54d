"""The blob port's backends against its contracts (``tests/contracts/blobs.py``), and
what only the filesystem store promises: where blobs live, its durable single write,
and its temp files (the ``TempFiles`` capability)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkstore.blobs.filesystem import FileBlobStore
from chunkstore.blobs.memory import MemoryBlobStore
from tests.contracts.blobs import BlobAgeingContract, BlobEvidenceContract, BlobStoreContract
from tests.helpers import blake3_hex


class TestMemoryBlobStore(BlobStoreContract, BlobAgeingContract, BlobEvidenceContract):
    def make_blobs(self, tmp_path: Path) -> MemoryBlobStore:
        return MemoryBlobStore()

    def test_a_blob_set_aside_is_kept_as_evidence(self, blobs: MemoryBlobStore) -> None:
        ref = blobs.put(b"damaged, say")

        where = blobs.set_aside(ref.digest, "quarantine")

        assert where is not None and where.startswith("quarantine/")
        assert blobs.quarantined[where] == (ref.digest, b"damaged, say")


class TestFileBlobStore(BlobStoreContract, BlobAgeingContract, BlobEvidenceContract):
    def make_blobs(self, tmp_path: Path) -> FileBlobStore:
        return FileBlobStore(tmp_path / "data")

    def test_a_blob_is_a_file_named_by_its_digest(self, blobs: FileBlobStore) -> None:
        data = os.urandom(1000)

        ref = blobs.put(data)

        path = blobs.root / "objects" / ref.digest[:2] / ref.digest[2:4] / ref.digest
        assert ref.digest == blake3_hex(data)
        assert path.read_bytes() == data
        assert blobs.path_for(ref.digest) == path

    def test_putting_an_existing_digest_again_leaves_its_file_alone(
        self, blobs: FileBlobStore
    ) -> None:
        data = os.urandom(1000)
        first = blobs.put(data)
        path = blobs.path_for(first.digest)
        before = path.stat()

        second = blobs.put(data)

        after = path.stat()
        assert second.created is False
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    def test_a_blob_set_aside_is_kept_as_evidence(self, blobs: FileBlobStore) -> None:
        ref = blobs.put(b"damaged, say")

        where = blobs.set_aside(ref.digest, "quarantine")

        assert where is not None
        assert Path(where).parent == Path("quarantine")
        assert (blobs.root / where).read_bytes() == b"damaged, say"
        assert not blobs.path_for(ref.digest).exists()

    def test_an_aborted_writer_leaves_no_temp_file(self, blobs: FileBlobStore) -> None:
        writer = blobs.writer()
        writer.write(os.urandom(1000))
        assert len(blobs.temp_files()) == 1

        writer.abort()

        assert blobs.temp_files() == []

    def test_a_committed_writer_leaves_no_temp_file(self, blobs: FileBlobStore) -> None:
        writer = blobs.writer()
        writer.write(os.urandom(100))

        blobs.commit_many([writer])

        assert blobs.temp_files() == []

    def test_a_committed_batch_leaves_no_temp_file(self, blobs: FileBlobStore) -> None:
        writers = [blobs.writer() for _ in range(5)]
        for writer in writers:
            writer.write(os.urandom(100))

        blobs.commit_many(writers)

        assert blobs.temp_files() == []

    def test_a_writer_of_a_blob_already_stored_writes_no_file(self, blobs: FileBlobStore) -> None:
        data = os.urandom(100)
        stored = blobs.put(data)

        writer = blobs.writer(stored.digest)
        writer.write(data)

        assert blobs.temp_files() == []

    def test_sweep_temp_files_removes_leftovers_of_a_crash(self, blobs: FileBlobStore) -> None:
        for name in ("blob-a.tmp", "blob-b.tmp", "assemble-x.part"):
            (blobs.tmp_dir / name).write_bytes(os.urandom(10))
        # A blob writer's file, in one of the spread directories under tmp/.
        Path(blobs.temp_path()).write_bytes(os.urandom(10))
        kept = blobs.put(os.urandom(10))

        removed = blobs.sweep_temp_files()

        assert removed == 4
        assert blobs.temp_files() == []
        assert blobs.exists(kept.digest)

    def test_sweep_temp_files_spares_files_younger_than_the_grace_period(
        self, blobs: FileBlobStore
    ) -> None:
        old = blobs.tmp_dir / "blob-old.tmp"
        young = blobs.tmp_dir / "blob-young.tmp"
        old.write_bytes(b"old")
        young.write_bytes(b"young")
        an_hour_ago = old.stat().st_mtime - 3600
        os.utime(old, (an_hour_ago, an_hour_ago))

        removed = blobs.sweep_temp_files(older_than=600)

        assert removed == 1
        assert blobs.temp_files() == [young]

    def test_a_name_that_is_not_a_digest_is_refused(self, blobs: FileBlobStore) -> None:
        with pytest.raises(ValueError):
            blobs.path_for("../../etc/passwd")
        with pytest.raises(ValueError):
            blobs.exists("../../etc/passwd")

    def test_a_second_store_on_the_directory_sees_the_blobs(
        self, blobs: FileBlobStore, tmp_path: Path
    ) -> None:
        ref = blobs.put(b"kept on disk")

        other = FileBlobStore(tmp_path / "data")

        assert list(other.digests()) == [ref.digest]
        with other.open(ref.digest) as blob:
            assert blob.read() == b"kept on disk"
