"""The blob port's contracts: ``BlobStore``, and the capabilities ``BlobAgeing`` and
``BlobEvidence`` (a backend's test class inherits those it announces)."""

from __future__ import annotations

import abc
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from chunkstore.blobs import BlobAgeing, BlobEvidence, BlobRef, BlobStore, put_stream
from chunkstore.errors import CorruptBlob
from tests.contracts.concurrency import THREADS, run_together
from tests.helpers import blake3_hex

MiB = 1024 * 1024


class BlobBackend(BlobStore, BlobAgeing, BlobEvidence, Protocol):
    """The port and its capabilities as one backend object implements them."""


def read_blob(blobs: BlobStore, digest: str) -> bytes:
    with blobs.open(digest) as blob:
        return blob.read()


class BlobContract(abc.ABC):
    @abc.abstractmethod
    def make_blobs(self, tmp_path: Path) -> BlobBackend:
        """A new, empty blob store of the backend under test."""

    @pytest.fixture
    def blobs(self, tmp_path: Path) -> Iterator[BlobBackend]:
        yield self.make_blobs(tmp_path)


class BlobStoreContract(BlobContract):
    """Content-addressed, write-once bytes, visible only once committed (invariant 1)."""

    def test_a_blob_is_stored_under_its_blake3_digest(self, blobs: BlobBackend) -> None:
        data = os.urandom(1000)

        ref = blobs.put(data)

        digest = blake3_hex(data)
        assert (ref.digest, ref.size, ref.created) == (digest, 1000, True)
        assert blobs.exists(digest)
        assert blobs.size(digest) == 1000
        assert read_blob(blobs, digest) == data
        assert list(blobs.digests()) == [digest]

    def test_missing_names_the_digests_not_stored_and_no_others(self, blobs: BlobBackend) -> None:
        stored = [blobs.put(os.urandom(100 + n)).digest for n in range(3)]
        absent = [blake3_hex(os.urandom(50)) for _ in range(2)]
        blobs.delete(stored[1])

        assert blobs.missing([*stored, *absent, stored[0]]) == {stored[1], *absent}
        assert blobs.missing(stored[::2]) == set()
        assert blobs.missing([]) == set()

    def test_an_empty_blob_is_a_blob(self, blobs: BlobBackend) -> None:
        ref = blobs.put(b"")

        assert (ref.digest, ref.size) == (blake3_hex(b""), 0)
        assert blobs.size(ref.digest) == 0
        assert read_blob(blobs, ref.digest) == b""

    def test_putting_the_same_bytes_again_stores_them_once(self, blobs: BlobBackend) -> None:
        data = os.urandom(1000)
        first = blobs.put(data)

        second = blobs.put(data)

        assert (second.digest, second.size, second.created) == (first.digest, 1000, False)
        assert list(blobs.digests()) == [first.digest]
        assert read_blob(blobs, first.digest) == data

    def test_a_blob_written_in_pieces_is_named_by_its_whole_content(
        self, blobs: BlobBackend
    ) -> None:
        data = os.urandom(5000)

        ref = put_stream(blobs, [data[:1], data[1:4000], b"", data[4000:]])

        assert ref.digest == blake3_hex(data)
        assert blobs.size(ref.digest) == 5000
        assert read_blob(blobs, ref.digest) == data

    def test_a_large_blob_is_read_back_whole(self, blobs: BlobBackend) -> None:
        data = os.urandom(3 * MiB + 17)

        ref = put_stream(blobs, (data[i : i + MiB] for i in range(0, len(data), MiB)))

        assert read_blob(blobs, ref.digest) == data

    def test_a_writer_names_what_it_has_written_so_far(self, blobs: BlobBackend) -> None:
        writer = blobs.writer()
        writer.write(b"abc")
        assert (writer.digest(), writer.size) == (blake3_hex(b"abc"), 3)
        writer.write(memoryview(b"def"))
        assert (writer.digest(), writer.size) == (blake3_hex(b"abcdef"), 6)
        assert not blobs.exists(writer.digest())  # not before it is committed

        (ref,) = blobs.commit_many([writer])

        assert ref == BlobRef(blake3_hex(b"abcdef"), 6, created=True)

    def test_an_aborted_writer_leaves_no_trace(self, blobs: BlobBackend) -> None:
        data = os.urandom(1000)
        writer = blobs.writer()
        writer.write(data)

        writer.abort()

        assert not blobs.exists(blake3_hex(data))
        assert list(blobs.digests()) == []

    def test_a_writer_of_a_blob_already_stored_only_verifies(self, blobs: BlobBackend) -> None:
        data = os.urandom(1000)
        stored = blobs.put(data)
        matching, wrong = blobs.writer(stored.digest), blobs.writer(stored.digest)

        matching.write(data)
        wrong.write(os.urandom(1000))

        # Its digest is what was written, so the caller sees bytes that do not match.
        assert matching.digest() == stored.digest
        assert wrong.digest() != stored.digest
        wrong.abort()
        (ref,) = blobs.commit_many([matching])
        assert ref == BlobRef(stored.digest, 1000, created=False)
        assert list(blobs.digests()) == [stored.digest]
        assert read_blob(blobs, stored.digest) == data

    def test_a_writer_expecting_a_blob_not_stored_stores_it(self, blobs: BlobBackend) -> None:
        data = os.urandom(1000)
        writer = blobs.writer(blake3_hex(data))
        writer.write(data)

        (ref,) = blobs.commit_many([writer])

        assert ref == BlobRef(blake3_hex(data), 1000, created=True)
        assert read_blob(blobs, ref.digest) == data

    def test_a_verified_writer_trusts_the_digest_it_was_given(self, blobs: BlobBackend) -> None:
        # The caller hashed these bytes already (the batch path hashes frames as they
        # arrive): the writer takes its word, so a verified writer never hashes twice.
        named = blake3_hex(b"what the caller hashed")
        writer = blobs.writer(named, verified=True)
        writer.write(b"other bytes")

        assert writer.digest() == named
        (ref,) = blobs.commit_many([writer])

        assert ref == BlobRef(named, len(b"other bytes"), created=True)
        assert read_blob(blobs, named) == b"other bytes"

    def test_a_verified_writer_of_a_blob_already_stored_stores_nothing(
        self, blobs: BlobBackend
    ) -> None:
        data = os.urandom(100)
        stored = blobs.put(data)
        writer = blobs.writer(stored.digest, verified=True)
        writer.write(data)

        (ref,) = blobs.commit_many([writer])

        assert ref == BlobRef(stored.digest, 100, created=False)
        assert list(blobs.digests()) == [stored.digest]

    def test_commit_many_makes_every_writer_visible_in_order(self, blobs: BlobBackend) -> None:
        pieces = [os.urandom(size) for size in (10, 2000, 1, 300)]
        already = blobs.put(pieces[2])
        writers = [blobs.writer(blake3_hex(piece)) for piece in pieces]
        for writer, piece in zip(writers, pieces, strict=True):
            writer.write(piece)

        refs = blobs.commit_many(writers)

        assert refs == [
            BlobRef(blake3_hex(piece), len(piece), created=piece is not pieces[2])
            for piece in pieces
        ]
        assert already.digest == refs[2].digest
        for piece in pieces:
            assert read_blob(blobs, blake3_hex(piece)) == piece
        assert list(blobs.digests()) == sorted(blake3_hex(piece) for piece in pieces)

    def test_one_batch_naming_the_same_bytes_twice_stores_them_once(
        self, blobs: BlobBackend
    ) -> None:
        data = os.urandom(500)
        writers = [blobs.writer(), blobs.writer()]
        for writer in writers:
            writer.write(data)

        refs = blobs.commit_many(writers)

        assert [(ref.digest, ref.created) for ref in refs] == [
            (blake3_hex(data), True),
            (blake3_hex(data), False),
        ]
        assert list(blobs.digests()) == [blake3_hex(data)]

    def test_commit_many_of_no_writers_does_nothing(self, blobs: BlobBackend) -> None:
        assert blobs.commit_many([]) == []
        assert list(blobs.digests()) == []

    def test_opening_a_missing_blob_raises_corrupt_blob(self, blobs: BlobBackend) -> None:
        with pytest.raises(CorruptBlob):
            blobs.open("a" * 64)
        assert not blobs.exists("a" * 64)
        assert blobs.size("a" * 64) is None

    def test_delete_removes_a_blob_once(self, blobs: BlobBackend) -> None:
        ref = blobs.put(b"bytes")
        kept = blobs.put(b"other bytes")

        assert blobs.delete(ref.digest) is True
        assert blobs.delete(ref.digest) is False
        assert not blobs.exists(ref.digest)
        assert blobs.size(ref.digest) is None
        with pytest.raises(CorruptBlob):
            blobs.open(ref.digest)
        assert list(blobs.digests()) == [kept.digest]
        assert blobs.put(b"bytes").created  # and it can be stored again

    def test_digests_lists_every_blob_in_digest_order(self, blobs: BlobBackend) -> None:
        digests = [blobs.put(os.urandom(50)).digest for _ in range(40)]

        assert list(blobs.digests()) == sorted(digests)

    def test_concurrent_writers_of_the_same_bytes_store_one_blob(self, blobs: BlobBackend) -> None:
        data = os.urandom(64 * 1024)
        refs: list[BlobRef] = []

        def write(n: int) -> None:
            refs.append(put_stream(blobs, [data[:1000], data[1000:]]))

        run_together(write)

        digest = blake3_hex(data)
        assert [ref.digest for ref in refs] == [digest] * THREADS
        assert sorted(ref.created for ref in refs) == [False] * (THREADS - 1) + [True]
        assert list(blobs.digests()) == [digest]
        assert read_blob(blobs, digest) == data

    def test_concurrent_writers_of_different_bytes_store_every_blob(
        self, blobs: BlobBackend
    ) -> None:
        pieces = [os.urandom(4096) for _ in range(THREADS)]

        def write(n: int) -> None:
            for offset in range(0, 4096, 512):
                blobs.put(pieces[n][offset : offset + 512])

        run_together(write)

        expected = {p[o : o + 512] for p in pieces for o in range(0, 4096, 512)}
        assert list(blobs.digests()) == sorted(blake3_hex(piece) for piece in expected)
        for piece in expected:
            assert read_blob(blobs, blake3_hex(piece)) == piece


class BlobAgeingContract(BlobContract):
    def test_a_blob_has_the_time_it_was_written(self, blobs: BlobBackend) -> None:
        before = time.time()
        ref = blobs.put(os.urandom(100))
        after = time.time()

        written = blobs.mtime(ref.digest)

        # A filesystem's clock may lag the process's by a tick: a second's leeway.
        assert written is not None and before - 1 <= written <= after + 1

    def test_a_missing_blob_has_no_time(self, blobs: BlobBackend) -> None:
        ref = blobs.put(b"gone")
        blobs.delete(ref.digest)

        assert blobs.mtime(ref.digest) is None
        assert blobs.mtime("b" * 64) is None


class BlobEvidenceContract(BlobContract):
    def test_a_blob_set_aside_leaves_the_store(self, blobs: BlobBackend) -> None:
        ref = blobs.put(b"damaged, say")
        kept = blobs.put(b"a neighbour")

        where = blobs.set_aside(ref.digest, "quarantine")

        assert where is not None
        assert not blobs.exists(ref.digest)
        assert list(blobs.digests()) == [kept.digest]
        with pytest.raises(CorruptBlob):
            blobs.open(ref.digest)

    def test_a_good_copy_takes_the_name_of_a_blob_set_aside(self, blobs: BlobBackend) -> None:
        ref = blobs.put(b"the bytes")
        blobs.set_aside(ref.digest, "quarantine")

        again = blobs.put(b"the bytes")

        assert (again.digest, again.created) == (ref.digest, True)
        assert read_blob(blobs, ref.digest) == b"the bytes"

    def test_setting_aside_the_same_digest_twice_keeps_both(self, blobs: BlobBackend) -> None:
        ref = blobs.put(b"the bytes")
        first = blobs.set_aside(ref.digest, "quarantine")
        blobs.put(b"the bytes")

        second = blobs.set_aside(ref.digest, "quarantine")

        assert first is not None and second is not None and first != second

    def test_setting_aside_a_missing_blob_gives_none(self, blobs: BlobBackend) -> None:
        assert blobs.set_aside("c" * 64, "quarantine") is None
