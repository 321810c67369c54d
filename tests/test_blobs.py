"""The blob port's backends against its contracts (``tests/contracts/blobs.py``), and
what only one backend promises: for the one-file-per-chunk store, where blobs live and
its temp files (the ``TempFiles`` capability); for the pack store, its records, sealing,
group commit, start-up recovery with live and dead writers in other processes, reads
racing a repack, and reading and migrating the one-file-per-chunk layout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from chunkstore.blobs import Chunk
from chunkstore.blobs.filesystem import FileBlobStore
from chunkstore.blobs.memory import MemoryBlobStore
from chunkstore.blobs.packfile import HEADER_SIZE
from chunkstore.blobs.packindex import IndexRow
from chunkstore.blobs.packindex.memory import MemoryPackIndex
from chunkstore.blobs.packindex.sqlite import SQLitePackIndex
from chunkstore.blobs.packs import PACK_TARGET, PackBlobStore, PackStats, _PackHandle
from chunkstore.errors import CorruptBlob
from chunkstore.sqlitedb import Database
from tests.contracts.blobs import (
    BlobAgeingContract,
    BlobEvidenceContract,
    BlobStoreContract,
    read_blob,
)
from tests.contracts.concurrency import THREADS, run_together
from tests.helpers import blake3_hex, flip_byte


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


# -- packs -----------------------------------------------------------------------------------


def pack_store(root: Path, pack_size: int = PACK_TARGET) -> PackBlobStore:
    """A pack store on ``root`` with its index in ``root``'s SQLite database, as
    ``open_store`` builds it."""
    root.mkdir(parents=True, exist_ok=True)
    return PackBlobStore(root, SQLitePackIndex(Database(root / "chunkstore.sqlite3")), pack_size)


def run_python(script: str, *args: str) -> subprocess.Popen[str]:
    """``script`` in a new interpreter, as a real writer process of the data directory."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.01)


def kill_9(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(30)


#: A writer that stores three blobs, then appends bytes no commit covers (as a crash in
#: the middle of an append leaves them), says so and waits to be killed.
WRITER_WITH_LEFTOVER = """
    import sys, time
    from pathlib import Path
    from tests.test_blobs import pack_store
    blobs = pack_store(Path(sys.argv[1]))
    for n in range(3):
        blobs.put(bytes([n]) * 1000)
    (info,) = blobs.index.packs()
    with open(blobs.pack_path(info.name), "ab") as pack:
        pack.write(b"half a record" * 100)
    print(info.name, flush=True)
    time.sleep(600)
"""


class TestPackBlobStore(BlobStoreContract, BlobAgeingContract, BlobEvidenceContract):
    def make_blobs(self, tmp_path: Path) -> PackBlobStore:
        return pack_store(tmp_path / "data")

    def test_records_scan_back_from_their_pack(self, blobs: PackBlobStore) -> None:
        pieces = [os.urandom(size) for size in (1, 5000, 0, 70_000)]
        writers = [blobs.writer() for _ in pieces]
        for writer, piece in zip(writers, pieces, strict=True):
            writer.write(piece)
        blobs.commit_many(writers)

        (info,) = blobs.index.packs()
        scan = blobs.scan(info.name, verify=True)
        records = list(scan)

        assert [(r.digest, r.size, r.intact) for r in records] == [
            (blake3_hex(piece), len(piece), True) for piece in pieces
        ]
        assert scan.problem is None and scan.end == info.committed
        assert info.committed == sum(HEADER_SIZE + len(piece) for piece in pieces)
        for record in records:
            assert blobs.index.lookup(record.digest) == IndexRow(
                record.digest,
                info.name,
                record.offset,
                record.size,
                record.size,
                0,
                blobs.mtime(record.digest) or 0,
            )

    def test_a_scan_stops_at_a_record_cut_short_and_says_where(self, blobs: PackBlobStore) -> None:
        blobs.put(b"whole")
        blobs.put(b"cut short" * 100)
        (info,) = blobs.index.packs()
        path = blobs.pack_path(info.name)
        os.truncate(path, info.committed - 10)

        scan = blobs.scan(info.name)

        assert [record.size for record in scan] == [5]
        assert scan.end == HEADER_SIZE + 5
        assert scan.problem is not None and "offset 53" in scan.problem

    def test_a_flipped_byte_makes_its_record_not_intact(self, blobs: PackBlobStore) -> None:
        kept = blobs.put(b"kept")
        damaged = blobs.put(b"damaged" * 10)
        location = blobs.locate(damaged.digest)
        assert location is not None
        flip_byte(Path(location.path), location.offset + 3)

        (info,) = blobs.index.packs()
        intact = {record.digest: record.intact for record in blobs.scan(info.name, verify=True)}

        assert intact == {kept.digest: True, damaged.digest: False}

    def test_a_blob_is_read_with_pread_only_as_far_as_asked(self, blobs: PackBlobStore) -> None:
        data = os.urandom(100_000)
        ref = blobs.put(data)

        with blobs.open(ref.digest) as blob:
            assert blob.read(10) == data[:10]
            buffer = bytearray(20)
            assert blob.readinto(buffer) == 20 and bytes(buffer) == data[10:30]
            blob.seek(99_990)
            assert blob.read() == data[99_990:]
            assert blob.read(5) == b""

    def test_locate_names_the_payloads_place_in_its_pack(self, blobs: PackBlobStore) -> None:
        blobs.put(b"before")
        data = os.urandom(3000)
        ref = blobs.put(data)

        location = blobs.locate(ref.digest)

        assert location is not None
        with open(location.path, "rb") as pack:
            pack.seek(location.offset)
            assert pack.read(location.length) == data
        assert location.offset == 2 * HEADER_SIZE + len(b"before")
        assert blobs.locate("d" * 64) is None

    def test_locate_many_finds_what_locate_finds_in_one_look_up(self, blobs: PackBlobStore) -> None:
        digests = [blobs.put(os.urandom(100 + n)).digest for n in range(5)]
        absent = "d" * 64

        found = blobs.locate_many([*digests, absent])

        assert found == {digest: blobs.locate(digest) for digest in digests}

    def test_deleting_a_blob_drops_its_row_and_leaves_its_bytes_for_a_repack(
        self, blobs: PackBlobStore
    ) -> None:
        gone = blobs.put(b"x" * 500)
        kept = blobs.put(b"y" * 100)
        (info,) = blobs.index.packs()
        size = blobs.pack_path(info.name).stat().st_size

        assert blobs.delete(gone.digest)

        assert blobs.pack_path(info.name).stat().st_size == size
        assert blobs.index.live_bytes() == {info.name: HEADER_SIZE + 100}
        assert list(blobs.digests()) == [kept.digest]

    def test_a_pack_is_sealed_once_it_reaches_the_target_size(self, tmp_path: Path) -> None:
        target = 64 * 1024
        blobs = pack_store(tmp_path / "data", pack_size=target)
        record = HEADER_SIZE + 10_000
        pieces = [os.urandom(10_000) for _ in range(20)]
        for piece in pieces:
            blobs.put(piece)

        # Names sort by age to the second; these were all made within one.
        packs = sorted(blobs.index.packs(), key=lambda info: info.created_at)

        per_pack = target // record  # 6 records fit; a 7th would pass the target
        assert [p.committed for p in packs] == [per_pack * record] * 3 + [2 * record]
        assert [p.sealed for p in packs] == [True, True, True, False]
        assert all(blobs.pack_path(p.name).stat().st_size == p.committed for p in packs)
        for piece in pieces:
            assert read_blob(blobs, blake3_hex(piece)) == piece

    def test_a_record_larger_than_the_target_gets_a_pack_of_its_own(self, tmp_path: Path) -> None:
        blobs = pack_store(tmp_path / "data", pack_size=64 * 1024)
        small = blobs.put(b"small")
        large = blobs.put(os.urandom(100_000))
        after = blobs.put(b"after")

        rows = [blobs.index.lookup(ref.digest) for ref in (small, large, after)]

        assert [r.pack for r in rows if r] == [
            rows[0].pack if rows[0] else "",
            rows[1].pack if rows[1] else "",
            rows[2].pack if rows[2] else "",
        ]
        assert len({r.pack for r in rows if r}) == 3
        assert [r.offset for r in rows if r] == [0, 0, 0]
        assert read_blob(blobs, large.digest) == read_blob(blobs, large.digest)

    def test_one_commit_many_spanning_two_packs_stores_every_blob(self, tmp_path: Path) -> None:
        blobs = pack_store(tmp_path / "data", pack_size=64 * 1024)
        pieces = [os.urandom(20_000) for _ in range(7)]
        writers = [blobs.writer() for _ in pieces]
        for writer, piece in zip(writers, pieces, strict=True):
            writer.write(piece)

        blobs.commit_many(writers)

        packs = sorted(blobs.index.packs(), key=lambda info: info.created_at)
        assert len(packs) == 3 and [p.sealed for p in packs] == [True, True, False]
        reopened = pack_store(tmp_path / "data", pack_size=64 * 1024)
        for piece in pieces:
            assert read_blob(reopened, blake3_hex(piece)) == piece

    def test_closing_seals_the_active_pack(self, tmp_path: Path) -> None:
        blobs = pack_store(tmp_path / "data")
        ref = blobs.put(b"sealed on close")

        blobs.close()

        (info,) = blobs.index.packs()
        assert info.sealed
        assert read_blob(pack_store(tmp_path / "data"), ref.digest) == b"sealed on close"

    def test_a_store_that_wrote_nothing_leaves_no_pack(self, tmp_path: Path) -> None:
        blobs = pack_store(tmp_path / "data")
        blobs.close()

        assert blobs.index.packs() == []
        assert list((tmp_path / "data" / "packs").iterdir()) == []

    def test_a_crash_leftover_past_the_committed_length_is_cut_at_start_up(
        self, tmp_path: Path
    ) -> None:
        root = tmp_path / "data"
        writer = run_python(WRITER_WITH_LEFTOVER, str(root))
        assert writer.stdout is not None
        name = writer.stdout.readline().strip()
        assert name, writer.stderr.read() if writer.stderr else ""
        kill_9(writer)
        path = root / "packs" / f"{name}.pack"
        committed = 3 * (HEADER_SIZE + 1000)
        assert path.stat().st_size == committed + 1300

        blobs = pack_store(root)

        info = blobs.index.pack(name)
        assert info is not None and info.sealed and info.committed == committed
        assert path.stat().st_size == committed
        for n in range(3):
            assert read_blob(blobs, blake3_hex(bytes([n]) * 1000)) == bytes([n]) * 1000
        assert blobs.scan(name).problem is None

    def test_a_live_writers_pack_is_left_alone_at_start_up(self, tmp_path: Path) -> None:
        root = tmp_path / "data"
        writer = run_python(WRITER_WITH_LEFTOVER, str(root))
        try:
            assert writer.stdout is not None
            name = writer.stdout.readline().strip()
            assert name, writer.stderr.read() if writer.stderr else ""
            path = root / "packs" / f"{name}.pack"
            size = path.stat().st_size

            blobs = pack_store(root)

            info = blobs.index.pack(name)
            assert info is not None and not info.sealed
            assert path.stat().st_size == size  # its bytes past the end may be in flight
            assert read_blob(blobs, blake3_hex(bytes([2]) * 1000)) == bytes([2]) * 1000
        finally:
            kill_9(writer)
        assert pack_store(root).recover() == [] and path.stat().st_size < size

    def test_a_pack_shorter_than_its_committed_length_is_left_as_found(
        self, tmp_path: Path
    ) -> None:
        root = tmp_path / "data"
        writer = run_python(WRITER_WITH_LEFTOVER, str(root))
        assert writer.stdout is not None
        name = writer.stdout.readline().strip()
        kill_9(writer)
        path = root / "packs" / f"{name}.pack"
        committed = 3 * (HEADER_SIZE + 1000)
        os.truncate(path, committed - 100)  # the last record lost its end

        blobs = pack_store(root)

        info = blobs.index.pack(name)
        assert info is not None and info.sealed and info.committed == committed
        assert path.stat().st_size == committed - 100
        assert read_blob(blobs, blake3_hex(bytes([0]) * 1000)) == bytes([0]) * 1000
        with pytest.raises(CorruptBlob):
            read_blob(blobs, blake3_hex(bytes([2]) * 1000))

    def test_concurrent_commits_share_fdatasyncs_and_lose_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        blobs = pack_store(tmp_path / "data")
        blobs.put(b"the pack exists")
        syncs_before = blobs.stats.syncs
        records_before = blobs.stats.records
        real_fdatasync = os.fdatasync
        calls: list[int] = []

        def first_waits_for_every_append(fd: int) -> None:
            calls.append(fd)
            if len(calls) == 1:
                # The first sync holds on until every thread has appended: those then
                # wait for it, and one sync of everything after it covers them all.
                wait_for(lambda: blobs.stats.records == records_before + THREADS, "every append")
            real_fdatasync(fd)

        monkeypatch.setattr(os, "fdatasync", first_waits_for_every_append)
        pieces = [os.urandom(50_000) for _ in range(THREADS)]

        run_together(lambda n: blobs.put(pieces[n]) and None)

        assert blobs.stats.syncs - syncs_before == len(calls) == 2
        monkeypatch.undo()
        reopened = pack_store(tmp_path / "data")
        for piece in pieces:
            assert read_blob(reopened, blake3_hex(piece)) == piece

    def test_concurrent_commits_share_index_transactions(self, tmp_path: Path) -> None:
        root = tmp_path / "data"
        root.mkdir()
        stats: list[PackStats] = []

        class FirstAddWaits(SQLitePackIndex):
            adds = 0

            def add(
                self, rows: Sequence[IndexRow], committed: Mapping[str, int], synced: bool = True
            ) -> list[bool]:
                FirstAddWaits.adds += 1
                if FirstAddWaits.adds == 1:
                    wait_for(lambda: stats[0].index_requests == THREADS, "every commit queued")
                return super().add(rows, committed, synced)

        blobs = PackBlobStore(root, FirstAddWaits(Database(root / "chunkstore.sqlite3")))
        stats.append(blobs.stats)
        pieces = [os.urandom(1000) for _ in range(THREADS)]

        run_together(lambda n: blobs.put(pieces[n]) and None)

        assert FirstAddWaits.adds == blobs.stats.index_transactions == 2
        for piece in pieces:
            assert read_blob(pack_store(root), blake3_hex(piece)) == piece

    def test_a_reader_racing_a_repack_finds_the_record_at_its_new_place(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        root = tmp_path / "data"
        first = pack_store(root)
        data = os.urandom(5000)
        ref = first.put(data)
        first.close()
        row = first.index.lookup(ref.digest)
        assert row is not None
        reader = pack_store(root)
        assert read_blob(reader, ref.digest) == data  # its pack's descriptor is cached
        repacker = pack_store(root)

        # The reader has looked the blob up (old pack) when the repack moves it and
        # removes the old pack; only then does it go to the pack.
        looked_up, repacked = threading.Event(), threading.Event()
        acquire = reader._handles.acquire

        def acquire_after_the_repack(name: str) -> _PackHandle:
            looked_up.set()
            assert repacked.wait(30)
            return acquire(name)

        monkeypatch.setattr(reader._handles, "acquire", acquire_after_the_repack)
        found: list[bytes] = []
        thread = threading.Thread(target=lambda: found.append(read_blob(reader, ref.digest)))
        thread.start()
        assert looked_up.wait(30)
        appended = repacker.append_durably([Chunk(ref.digest, len(data), [data], row.created_at)])
        assert repacker.index.move(appended.rows, row.pack, appended.committed) == 1
        repacker.pack_path(row.pack).unlink()
        repacked.set()
        thread.join(30)

        assert found == [data]
        moved = reader.index.lookup(ref.digest)
        assert moved is not None and moved.pack != row.pack

    def test_a_store_reopened_sees_the_blobs(self, tmp_path: Path) -> None:
        blobs = pack_store(tmp_path / "data")
        ref = blobs.put(b"kept on disk")

        other = pack_store(tmp_path / "data")

        assert list(other.digests()) == [ref.digest]
        assert read_blob(other, ref.digest) == b"kept on disk"


class TestPackBlobStoreWithMemoryIndex(BlobStoreContract, BlobAgeingContract):
    def make_blobs(self, tmp_path: Path) -> PackBlobStore:
        return PackBlobStore(tmp_path / "data", MemoryPackIndex())


# -- the one-file-per-chunk layout under packs -----------------------------------------------


def loose_blobs(root: Path, count: int, size: int = 3000) -> dict[str, bytes]:
    """A data directory of the one-file-per-chunk layout with ``count`` blobs (written
    in place: how they got there durably is not what these tests are about)."""
    legacy = FileBlobStore(root)
    stored = {}
    for _ in range(count):
        data = os.urandom(size)
        digest = blake3_hex(data)
        path = legacy.path_for(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        stored[digest] = data
    return stored


def test_loose_blobs_are_read_through_the_pack_store(tmp_path: Path) -> None:
    root = tmp_path / "data"
    stored = loose_blobs(root, 5)
    old = time.time() - 7200
    for digest in stored:
        os.utime(FileBlobStore(root).path_for(digest), (old, old))

    blobs = pack_store(root)
    packed = blobs.put(b"new, in a pack")

    assert list(blobs.digests()) == sorted([*stored, packed.digest])
    for digest, data in stored.items():
        assert blobs.exists(digest) and blobs.size(digest) == len(data)
        assert read_blob(blobs, digest) == data
        assert blobs.mtime(digest) == pytest.approx(old)
        location = blobs.locate(digest)
        assert location is not None and location.offset == 0 and location.length == len(data)
    assert not blobs.put(next(iter(stored.values()))).created  # not stored twice


def test_migrating_moves_loose_blobs_into_packs_and_removes_objects(tmp_path: Path) -> None:
    root = tmp_path / "data"
    stored = loose_blobs(root, 40)
    old = time.time() - 7200
    for digest in stored:
        os.utime(FileBlobStore(root).path_for(digest), (old, old))
    blobs = pack_store(root)

    report = blobs.migrate_loose()

    assert (report.moved, report.bytes, report.damaged) == (40, 40 * 3000, 0)
    assert not (root / "objects").exists() and blobs.loose is None
    assert [row.digest for row in blobs.index.scan()] == sorted(stored)
    reopened = pack_store(root)
    for digest, data in stored.items():
        assert read_blob(reopened, digest) == data
        assert reopened.mtime(digest) == pytest.approx(old)  # gc's grace keeps its meaning
    assert reopened.migrate_loose().moved == 0


def test_a_loose_blob_that_does_not_hash_to_its_name_is_left_for_audit(tmp_path: Path) -> None:
    root = tmp_path / "data"
    stored = loose_blobs(root, 3)
    damaged = sorted(stored)[1]
    flip_byte(FileBlobStore(root).path_for(damaged))
    blobs = pack_store(root)

    report = blobs.migrate_loose()

    assert (report.moved, report.damaged) == (2, 1)
    assert FileBlobStore(root).path_for(damaged).exists()
    assert blobs.index.lookup(damaged) is None
    assert list(blobs.digests()) == sorted(stored)


MIGRATOR = """
    import sys
    from pathlib import Path
    import chunkstore.blobs.packs as packs
    from tests.test_blobs import pack_store
    packs.MIGRATE_BATCH_COUNT = 20  # many commits: many instants to be killed at
    pack_store(Path(sys.argv[1])).migrate_loose()
"""


def test_a_migration_killed_midway_loses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "data"
    stored = loose_blobs(root, 600, size=2000)
    objects = FileBlobStore(root)

    killed_midway: list[bool] = []
    for packed_at_least in (1, 100, 300):
        migrator = run_python(MIGRATOR, str(root))
        index = SQLitePackIndex(Database(root / "chunkstore.sqlite3"))

        def migrated(
            index: SQLitePackIndex = index,
            enough: int = packed_at_least,
            migrator: subprocess.Popen[str] = migrator,
        ) -> bool:
            return len(list(index.scan())) >= enough or migrator.poll() is not None

        wait_for(migrated, f"{packed_at_least} blobs migrated")
        killed_midway.append(migrator.poll() is None)
        kill_9(migrator)
        index.db.close()

        blobs = pack_store(root)  # recovers the killed migrator's pack
        assert set(blobs.digests()) == set(stored)
        for digest, data in stored.items():
            assert read_blob(blobs, digest) == data
        left = {digest for digest, _ in objects.entries()} if (root / "objects").exists() else set()
        assert len(left) < len(stored)
        blobs.close()

    assert killed_midway[0], "the first migrator finished before it could be killed"
    final = pack_store(root)
    final.migrate_loose()
    assert not (root / "objects").exists()
    assert {row.digest for row in final.index.scan()} == set(stored)
    for digest, data in stored.items():
        assert read_blob(final, digest) == data


# -- streaming writers (a blob of known size written as it arrives) --------------------------

STREAMED = 3 * 1024 * 1024 + 17


def _pack_bytes(blobs: PackBlobStore) -> bytes:
    """The bytes of the store's packs, one after another."""
    return b"".join(blobs.pack_path(info.name).read_bytes() for info in blobs.index.packs())


def test_a_blob_of_known_size_reaches_its_pack_before_it_is_committed(tmp_path: Path) -> None:
    blobs = pack_store(tmp_path / "data")
    data = os.urandom(STREAMED)
    writer = blobs.writer(size=len(data))
    for start in range(0, len(data), 64 * 1024):
        writer.write(data[start : start + 64 * 1024])

    # The first MiB-runs are on disk (past the pack's end, not indexed) before commit.
    wait_for(lambda: data[: 1024 * 1024] in _pack_bytes(blobs), "the first run on disk")
    assert blobs.index.lookup(blake3_hex(data)) is None

    (ref,) = blobs.commit_many([writer])

    assert ref.created and ref.digest == blake3_hex(data) and read_blob(blobs, ref.digest) == data
    (info,) = blobs.index.packs()
    records = list(blobs.scan(info.name, verify=True))
    assert [(r.digest, r.size, r.intact) for r in records] == [(ref.digest, len(data), True)]
    assert info.committed == HEADER_SIZE + len(data)
    blobs.close()


def test_an_aborted_stream_leaves_no_record_and_the_next_blob_takes_its_place(
    tmp_path: Path,
) -> None:
    blobs = pack_store(tmp_path / "data")
    first = blobs.put(b"before")
    aborted = blobs.writer(size=STREAMED)
    aborted.write(os.urandom(2 * 1024 * 1024))
    aborted.abort()
    data = os.urandom(STREAMED)
    writer = blobs.writer(size=len(data))
    writer.write(data)

    (ref,) = blobs.commit_many([writer])

    (info,) = blobs.index.packs()
    records = list(blobs.scan(info.name, verify=True))
    assert [(r.digest, r.intact) for r in records] == [(first.digest, True), (ref.digest, True)]
    assert read_blob(blobs, ref.digest) == data
    blobs.close()
    # Sealing cut the pack to what was committed: nothing of the aborted stream is left.
    assert blobs.pack_path(info.name).stat().st_size == info.committed


def test_a_streamed_duplicate_stores_nothing(tmp_path: Path) -> None:
    blobs = pack_store(tmp_path / "data")
    data = os.urandom(STREAMED)
    stored = blobs.put(data)
    writer = blobs.writer(size=len(data))
    writer.write(data)

    (ref,) = blobs.commit_many([writer])
    later = blobs.put(b"after")

    assert not ref.created and ref.digest == stored.digest
    (info,) = blobs.index.packs()
    assert [r.digest for r in blobs.scan(info.name, verify=True)] == [stored.digest, later.digest]
    blobs.close()


def test_a_stream_refuses_more_than_its_size(tmp_path: Path) -> None:
    blobs = pack_store(tmp_path / "data")
    writer = blobs.writer(size=STREAMED)
    writer.write(b"x" * STREAMED)

    with pytest.raises(ValueError, match="at most"):
        writer.write(b"y")
    writer.abort()
    blobs.close()


def test_concurrent_streams_each_get_a_pack_of_their_own_and_all_are_kept(
    tmp_path: Path,
) -> None:
    blobs = pack_store(tmp_path / "data")
    datas = [os.urandom(STREAMED) for _ in range(3)]
    writers = [blobs.writer(size=len(data)) for data in datas]
    # Interleaved as concurrent requests' pieces arrive: no stream writes into another's.
    for start in range(0, STREAMED, 256 * 1024):
        for writer, data in zip(writers, datas, strict=True):
            writer.write(data[start : start + 256 * 1024])
    refs = [blobs.commit_many([writer])[0] for writer in writers]

    assert [read_blob(blobs, ref.digest) for ref in refs] == datas
    packs = blobs.index.packs()
    assert len(packs) == 3
    for info in packs:
        assert all(record.intact for record in blobs.scan(info.name, verify=True))
    blobs.close()
