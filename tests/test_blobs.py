"""The filesystem blob store: content-addressed, write-once, durable (invariant 1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkstore.blobs import put_stream
from chunkstore.blobs.filesystem import FileBlobStore
from chunkstore.errors import CorruptBlob
from tests.helpers import blake3_hex


@pytest.fixture
def store(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "data")


def test_a_blob_is_stored_under_its_blake3_digest(store: FileBlobStore) -> None:
    data = os.urandom(1000)

    ref = store.put(data)

    digest = blake3_hex(data)
    assert (ref.digest, ref.size, ref.created) == (digest, 1000, True)
    path = store.root / "objects" / digest[:2] / digest[2:4] / digest
    assert path.read_bytes() == data
    with store.open(digest) as blob:
        assert blob.read() == data


def test_putting_an_existing_digest_again_is_a_no_op(store: FileBlobStore) -> None:
    data = os.urandom(1000)
    first = store.put(data)
    path = store.path_for(first.digest)
    before = path.stat()

    second = store.put(data)

    after = path.stat()
    assert (second.digest, second.size, second.created) == (first.digest, 1000, False)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert list(store.digests()) == [first.digest]


def test_a_blob_written_in_pieces_is_named_by_its_whole_content(store: FileBlobStore) -> None:
    data = os.urandom(5000)

    ref = put_stream(store, [data[:1], data[1:4000], b"", data[4000:]])

    assert ref.digest == blake3_hex(data)
    assert store.size(ref.digest) == 5000


def test_an_aborted_writer_leaves_no_trace(store: FileBlobStore) -> None:
    data = os.urandom(1000)
    writer = store.writer()
    writer.write(data)

    writer.abort()

    assert not store.exists(blake3_hex(data))
    assert store.temp_files() == []


def test_a_committed_writer_leaves_no_temp_file(store: FileBlobStore) -> None:
    writer = store.writer()
    writer.write(os.urandom(100))

    store.commit_many([writer])

    assert store.temp_files() == []


def test_sweep_temp_files_removes_leftovers_of_a_crash(store: FileBlobStore) -> None:
    for name in ("blob-a.tmp", "blob-b.tmp", "assemble-x.part"):
        (store.tmp_dir / name).write_bytes(os.urandom(10))
    # A blob writer's file, in one of the spread directories under tmp/.
    Path(store.temp_path()).write_bytes(os.urandom(10))
    kept = store.put(os.urandom(10))

    removed = store.sweep_temp_files()

    assert removed == 4
    assert store.temp_files() == []
    assert store.exists(kept.digest)


def test_sweep_temp_files_spares_files_younger_than_the_grace_period(
    store: FileBlobStore,
) -> None:
    old = store.tmp_dir / "blob-old.tmp"
    young = store.tmp_dir / "blob-young.tmp"
    old.write_bytes(b"old")
    young.write_bytes(b"young")
    an_hour_ago = old.stat().st_mtime - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))

    removed = store.sweep_temp_files(older_than=600)

    assert removed == 1
    assert store.temp_files() == [young]


def test_opening_a_missing_blob_raises_corrupt_blob(store: FileBlobStore) -> None:
    with pytest.raises(CorruptBlob):
        store.open("a" * 64)


def test_a_name_that_is_not_a_digest_is_refused(store: FileBlobStore) -> None:
    with pytest.raises(ValueError):
        store.path_for("../../etc/passwd")


def test_delete_removes_a_blob_once(store: FileBlobStore) -> None:
    ref = store.put(b"bytes")

    assert store.delete(ref.digest) is True
    assert store.delete(ref.digest) is False
    assert not store.exists(ref.digest)
