"""Repacking packs and moving loose blobs into them: the space of swept blobs comes
back, nothing live is lost, readers racing a repack get the right bytes, and a repack
or migration killed at any instant loses nothing.

Real data directories (SQLite file, pack files) built through the library, the CLI run
as its own process, kill -9 where a crash is claimed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chunkstore.application import UploadService
from chunkstore.blobs.filesystem import FileBlobStore
from chunkstore.blobs.packfile import HEADER_SIZE
from chunkstore.commands import InitRequest
from chunkstore.config import Settings
from chunkstore.errors import ChunkSwept
from chunkstore.repack import PACKS_LOCK, repack
from tests.helpers import FakeClock, blake3_hex, blob_place, pack_files, split, stored_objects
from tests.test_audit import run_cli

KiB = 1024
OWNER = "alice"
#: The smallest pack size the settings allow: a few dozen 1 KiB chunks fill a pack.
PACK_SIZE = 64 * KiB
RECORD = HEADER_SIZE + KiB


def settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, session_ttl=3600.0, pack_size=PACK_SIZE)


def open_service(data_dir: Path) -> UploadService:
    return UploadService.open(settings(data_dir), clock=FakeClock(datetime.now(UTC)))


def upload(service: UploadService, data: bytes, finish: str = "complete") -> str:
    """An upload of ``data`` in 1 KiB chunks; then completed, cancelled or left open."""
    request = InitRequest(filename="file.bin", total_size=len(data), chunk_size=KiB)
    upload_id = service.init_upload(OWNER, request).upload_id
    for index, piece in enumerate(split(data, KiB)):
        service.store_chunk(OWNER, upload_id, index, piece)
    if finish == "complete":
        service.complete_upload(OWNER, upload_id)
    elif finish == "cancel":
        service.cancel_upload(OWNER, upload_id)
    return upload_id


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKSTORE_")}
    return {**env, "CHUNKSTORE_PACK_SIZE": str(PACK_SIZE)}


def cli(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "chunkstore.cli", *args, "--json"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def gc(data_dir: Path, *args: str) -> dict[str, Any]:
    return cli("gc", "--data", str(data_dir), "--hours", "0", "--grace", "0", *args)


def audit_clean(data_dir: Path) -> dict[str, Any]:
    result = run_cli("audit", "--data", str(data_dir), "--json")
    answer: dict[str, Any] = json.loads(result.stdout)
    assert answer["findings"] == [] and result.returncode == 0, answer["findings"]
    return answer


def disk_bytes(data_dir: Path) -> int:
    return sum(path.stat().st_size for path in pack_files(data_dir))


def assert_reads_back(data_dir: Path, pieces: dict[str, bytes]) -> None:
    """Every blob reads back through the store, byte-identical (so it verifies)."""
    service = open_service(data_dir)
    try:
        for digest, data in pieces.items():
            with service.store.blobs.open(digest) as blob:
                assert blob.read() == data, digest
    finally:
        service.close()


def chunks_of(data: bytes) -> dict[str, bytes]:
    return {blake3_hex(piece): piece for piece in split(data, KiB)}


# -- reclaiming space ----------------------------------------------------------------------


def test_a_pack_past_the_threshold_is_repacked_and_one_under_it_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    service = open_service(data_dir)
    doomed = os.urandom(30 * KiB)  # with the next file's first chunks: the first pack
    kept = os.urandom(100 * KiB)
    few = os.urandom(5 * KiB)  # a few dead records in a pack of live ones
    more = os.urandom(100 * KiB)
    upload(service, doomed, "cancel")
    kept_id = upload(service, kept)
    upload(service, few, "cancel")
    more_id = upload(service, more)
    service.close()
    mostly_dead = blob_place(data_dir, blake3_hex(doomed[:KiB])).path
    little_dead = blob_place(data_dir, blake3_hex(few[:KiB])).path
    assert mostly_dead != little_dead
    before = disk_bytes(data_dir)

    answer = gc(data_dir)

    assert answer["blobs_swept"] == 35
    assert answer["packs_repacked"] == 1 and answer["packs_removed"] == 0
    assert not mostly_dead.exists() and little_dead.exists()
    # The doomed file's 30 records are gone from disk; the few others wait (under 20%).
    assert before - disk_bytes(data_dir) == answer["bytes_reclaimed"] == 30 * RECORD
    assert_reads_back(data_dir, chunks_of(kept) | chunks_of(more))
    service = open_service(data_dir)
    for upload_id, data in ((kept_id, kept), (more_id, more)):
        state = service.load(upload_id)
        assert state.file_path is not None
        with service.store.files.open(state.file_path) as final:
            assert final.read() == data
    service.close()
    audit_clean(data_dir)
    # Under the threshold until told otherwise: a lower one takes the second pack too.
    assert gc(data_dir)["packs_repacked"] == 0
    assert gc(data_dir, "--repack-dead", "0.05")["packs_repacked"] == 1
    assert not little_dead.exists()
    audit_clean(data_dir)


def test_a_pack_with_nothing_live_is_removed_without_copying(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    service = open_service(data_dir)
    upload(service, os.urandom(62 * KiB), "cancel")  # fills one pack and starts the next
    service.close()
    assert len(pack_files(data_dir)) == 2
    before = disk_bytes(data_dir)

    answer = gc(data_dir)

    assert (answer["packs_removed"], answer["packs_repacked"]) == (2, 0)
    assert pack_files(data_dir) == [] and answer["bytes_reclaimed"] == before == 62 * RECORD
    assert stored_objects(data_dir) == set()
    audit_clean(data_dir)


def test_a_pack_is_left_for_the_next_run_while_a_repair_holds_the_packs(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    service = open_service(data_dir)
    upload(service, os.urandom(62 * KiB), "cancel")  # fills one pack and starts the next
    service.close()
    service = open_service(data_dir)
    try:
        # As ``audit --repair`` holds it for its whole run.
        with service.store.locks.hold(PACKS_LOCK):
            busy = gc(data_dir)
    finally:
        service.close()

    assert (busy["packs_busy"], busy["packs_removed"], busy["packs_repacked"]) == (2, 0, 0)
    assert len(pack_files(data_dir)) == 2
    assert gc(data_dir)["packs_removed"] == 2  # the lock is free again
    assert pack_files(data_dir) == []


def test_a_repack_that_fills_more_than_one_new_pack_keeps_every_record(tmp_path: Path) -> None:
    # The copies roll the active pack over: the pack left behind is sealed while its
    # records are not yet indexed, and must keep them.
    data_dir = tmp_path / "data"
    service = open_service(data_dir)
    kept: dict[str, bytes] = {}
    for _ in range(4):
        upload(service, os.urandom(30 * KiB), "cancel")
        data = os.urandom(31 * KiB)
        upload(service, data, "open")
        kept.update(chunks_of(data))
    service.close()

    answer = gc(data_dir)

    assert answer["packs_repacked"] >= 3
    assert_reads_back(data_dir, kept)
    audit_clean(data_dir)


def test_the_repack_command_and_a_dry_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    service = open_service(data_dir)
    upload(service, os.urandom(40 * KiB), "cancel")
    kept = os.urandom(40 * KiB)
    upload(service, kept)
    service.close()
    gc(data_dir, "--repack-dead", "1")  # sweeps; no pack is wholly dead
    files = pack_files(data_dir)

    dry = gc(data_dir, "--dry-run")
    assert dry["packs_repacked"] == 1 and pack_files(data_dir) == files
    answer = cli("repack", "--data", str(data_dir), "--dead", "0.2")

    assert answer["packs_repacked"] == 1 and answer["loose_migrated"] == 0
    assert answer["bytes_reclaimed"] == 40 * RECORD
    assert_reads_back(data_dir, chunks_of(kept))
    audit_clean(data_dir)


def test_a_dead_share_out_of_range_is_refused(tmp_path: Path) -> None:
    for value in ("0", "1.5", "-1"):
        result = run_cli("repack", "--data", str(tmp_path), "--dead", value)
        assert result.returncode == 2 and "--dead" in result.stderr


# -- races -----------------------------------------------------------------------------------


def test_gc_and_repacks_racing_uploads_lose_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    service = open_service(data_dir)
    acknowledged: dict[str, bytes] = {}  # chunks of uploads that stay live
    stop = threading.Event()
    failures: list[BaseException] = []

    def uploads() -> None:
        try:
            number = 0
            while not stop.is_set() or number < 4:
                data = os.urandom(random.randint(8, 40) * KiB)
                finish = "cancel" if number % 2 else random.choice(["complete", "open"])
                upload_with_retries(service, data, finish)
                if finish != "cancel":
                    acknowledged.update(chunks_of(data))
                number += 1
        except BaseException as error:
            failures.append(error)

    uploader = threading.Thread(target=uploads)
    uploader.start()
    try:
        runs = [gc(data_dir, "--repack-dead", "0.1") for _ in range(4)]
    finally:
        stop.set()
        uploader.join(300)
    service.close()

    assert not failures, failures
    assert sum(run["blobs_swept"] for run in runs) > 0
    assert sum(run["packs_repacked"] + run["packs_removed"] for run in runs) > 0
    assert_reads_back(data_dir, acknowledged)
    gc(data_dir, "--repack-dead", "0.1")
    assert_reads_back(data_dir, acknowledged)
    audit_clean(data_dir)


def upload_with_retries(service: UploadService, data: bytes, finish: str) -> str:
    """An upload whose chunk a concurrent gc swept before its event is sent again, as
    a client told ``chunk-swept`` does."""
    request = InitRequest(filename="file.bin", total_size=len(data), chunk_size=KiB)
    upload_id = service.init_upload(OWNER, request).upload_id
    for index, piece in enumerate(split(data, KiB)):
        for _ in range(10):
            try:
                service.store_chunk(OWNER, upload_id, index, piece)
                break
            except ChunkSwept:
                continue
    if finish == "complete":
        service.complete_upload(OWNER, upload_id)
    elif finish == "cancel":
        service.cancel_upload(OWNER, upload_id)
    return upload_id


def test_readers_racing_a_repack_get_the_right_bytes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    service = open_service(data_dir)
    upload(service, os.urandom(40 * KiB), "cancel")
    kept = os.urandom(20 * KiB)
    upload(service, kept)
    service.close()
    pieces = chunks_of(kept)
    gc(data_dir, "--repack-dead", "1")  # sweep only
    reader_service = open_service(data_dir)
    blobs = reader_service.store.blobs
    digests = sorted(pieces)
    old_pack = blob_place(data_dir, digests[0]).path
    # One reader mid-blob, and the pack's descriptor cached for the others.
    held = blobs.open(digests[0])
    first_half = held.read(KiB // 2)
    with blobs.open(digests[1]) as warm:
        assert warm.read() == pieces[digests[1]]

    # Another process repacks and removes the pack.
    assert gc(data_dir)["packs_repacked"] == 1
    assert not old_pack.exists()

    assert first_half + held.read() == pieces[digests[0]]
    held.close()
    for digest in digests:  # looked up before? no matter: the new place is found
        with blobs.open(digest) as blob:
            assert blob.read() == pieces[digest]
    # And in this process, a repack while a reader holds the old pack open.
    service_packs = reader_service.store.packs
    assert service_packs is not None
    held = blobs.open(digests[2])
    upload(reader_service, os.urandom(40 * KiB), "cancel")
    reader_service.close()
    gc(data_dir, "--repack-dead", "1")
    reader_service = open_service(data_dir)
    packs = reader_service.store.packs
    assert packs is not None
    repack(packs, 0.01)
    assert held.read() == pieces[digests[2]]
    held.close()
    for digest in digests:
        with reader_service.store.blobs.open(digest) as blob:
            assert blob.read() == pieces[digest]
    reader_service.close()
    audit_clean(data_dir)


# -- crashes ---------------------------------------------------------------------------------

#: gc (sweep, migration, repack) with tiny copy batches: many instants to be killed at.
GC_IN_SMALL_STEPS = """
    import sys
    import chunkstore.repack
    import chunkstore.blobs.packs
    from chunkstore.cli import main
    chunkstore.repack.REPACK_BATCH_BYTES = 4096
    chunkstore.blobs.packs.MIGRATE_BATCH_COUNT = 8
    sys.exit(main(sys.argv[1:]))
"""


#: A repack in small batches that says when it has copied one and pauses after each, so
#: that a kill lands in the middle of a repack however fast the machine is.
REPACK_IN_PACED_STEPS = """
    import sys
    import time
    import chunkstore.repack
    import chunkstore.blobs.packs as packs
    from chunkstore.cli import main
    chunkstore.repack.REPACK_BATCH_BYTES = 4096
    append_durably = packs.PackBlobStore.append_durably
    def paced(self, chunks):
        appended = append_durably(self, chunks)
        print("copied", flush=True)
        time.sleep(0.02)
        return appended
    packs.PackBlobStore.append_durably = paced
    sys.exit(main(sys.argv[1:]))
"""


def start_python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=Path(__file__).parent.parent,
    )


def kill_9(process: subprocess.Popen[str]) -> bool:
    """Kill ``process``; whether it was still running (killed midway)."""
    running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    return running


@pytest.mark.slow
def test_repacks_killed_at_many_instants_lose_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    live: dict[str, bytes] = {}
    killed_midway = 0
    rounds = random.Random(12)
    for _ in range(12):
        service = open_service(data_dir)
        upload(service, os.urandom(30 * KiB), "cancel")
        kept = os.urandom(30 * KiB)
        upload(service, kept)
        live.update(chunks_of(kept))
        service.close()
        gc(data_dir, "--repack-dead", "1")  # sweep: leaves packs half dead
        runner = start_python(
            REPACK_IN_PACED_STEPS, "repack", "--data", str(data_dir), "--dead", "0.01"
        )
        # Once the first batch is copied, kill at a random instant of what follows:
        # another copy, the switch of the rows, the removal of the old pack.
        assert runner.stdout is not None
        if runner.stdout.readline():
            time.sleep(rounds.uniform(0.0, 0.3))
        killed_midway += kill_9(runner)
        assert_reads_back(data_dir, live)  # start-up after the crash, then every read

    print(f"\nrepacks killed midway: {killed_midway} of 12")
    assert killed_midway >= 3, "the repacks finished before they could be killed"
    gc(data_dir, "--repack-dead", "0.01")  # finishes what the killed runs left retired
    service = open_service(data_dir)
    packs = service.store.packs
    assert packs is not None
    assert not [info.name for info in packs.index.packs() if info.retired]
    service.close()
    assert_reads_back(data_dir, live)
    audit_clean(data_dir)


DIE_AS_THE_OLD_PACK_IS_REMOVED = """
    import os
    import signal
    import sys
    import chunkstore.repack
    from chunkstore.cli import main
    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)
    chunkstore.repack._remove_pack = die
    sys.exit(main(sys.argv[1:]))
"""


def retired_packs(data_dir: Path) -> set[str]:
    """Packs the index marks retired, read straight from the database (opening a store
    would recover them)."""
    with sqlite3.connect(data_dir / "chunkstore.sqlite3") as conn:
        return {name for (name,) in conn.execute("SELECT name FROM packs WHERE retired")}


def test_a_pack_a_killed_repack_left_retired_is_removed_at_start_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    service = open_service(data_dir)
    upload(service, os.urandom(30 * KiB), "cancel")
    kept = os.urandom(30 * KiB)
    upload(service, kept)
    service.close()
    gc(data_dir, "--repack-dead", "1")  # sweep: leaves the pack half dead
    # Killed after the rows moved to the copies, as the old pack was to be removed.
    runner = start_python(
        DIE_AS_THE_OLD_PACK_IS_REMOVED, "repack", "--data", str(data_dir), "--dead", "0.01"
    )
    runner.communicate(timeout=120)
    assert runner.returncode == -signal.SIGKILL
    (retired,) = retired_packs(data_dir)
    old_pack = data_dir / "packs" / f"{retired}.pack"
    assert old_pack.exists()

    service = open_service(data_dir)  # a new process's start-up: nothing has it open
    service.close()

    assert not old_pack.exists()
    assert retired_packs(data_dir) == set()
    assert_reads_back(data_dir, chunks_of(kept))
    audit_clean(data_dir)


# -- loose blobs -----------------------------------------------------------------------------


def loosen(data_dir: Path) -> set[str]:
    """Turn a data directory into the one-file-per-chunk layout: every blob to
    ``objects/ab/cd/<digest>`` (as ``FileBlobStore`` names them, written durably by it),
    the packs and their index emptied. The digests moved."""
    service = open_service(data_dir)
    pieces = {}
    for digest in stored_objects(data_dir):
        with service.store.blobs.open(digest) as blob:
            pieces[digest] = blob.read()
    service.close()
    legacy = FileBlobStore(data_dir)
    for data in pieces.values():
        legacy.put(data)
    old = time.time() - 7200
    for digest in pieces:
        os.utime(legacy.path_for(digest), (old, old))
    shutil.rmtree(data_dir / "packs")
    with sqlite3.connect(data_dir / "chunkstore.sqlite3") as conn:
        conn.execute("DELETE FROM blobs")
        conn.execute("DELETE FROM packs")
    return set(pieces)


@pytest.fixture
def old_layout(tmp_path: Path) -> Iterator[tuple[Path, dict[str, bytes], set[str]]]:
    data_dir = tmp_path / "data"
    service = open_service(data_dir)
    files = {}
    for _ in range(3):
        data = os.urandom(120 * KiB + 17)
        files[upload(service, data)] = data
    in_flight = os.urandom(20 * KiB)
    upload(service, in_flight, "open")
    service.close()
    digests = loosen(data_dir)
    assert len(digests) > 300 and not pack_files(data_dir)
    chunks: dict[str, bytes] = {}
    for data in [*files.values(), in_flight]:
        chunks.update(chunks_of(data))
    yield data_dir, chunks, digests


def test_an_old_data_directory_is_read_as_is_and_moved_by_repack_loose(
    old_layout: tuple[Path, dict[str, bytes], set[str]],
) -> None:
    data_dir, chunks, digests = old_layout
    audit_clean(data_dir)  # read as it is
    assert_reads_back(data_dir, chunks)

    answer = cli("repack", "--data", str(data_dir), "--loose")

    assert answer["loose_migrated"] == len(digests) and answer["loose_damaged"] == 0
    assert answer["packs_repacked"] == 0
    assert not (data_dir / "objects").exists()
    assert stored_objects(data_dir) == digests and pack_files(data_dir)
    assert_reads_back(data_dir, chunks)
    audit_clean(data_dir)


def test_gc_moves_loose_blobs_into_packs(
    old_layout: tuple[Path, dict[str, bytes], set[str]],
) -> None:
    data_dir, chunks, digests = old_layout

    answer = cli("gc", "--data", str(data_dir))  # the default grace: nothing is swept

    assert answer["loose_migrated"] == len(digests)
    assert not (data_dir / "objects").exists()
    assert_reads_back(data_dir, chunks)
    audit_clean(data_dir)


def test_repack_loose_killed_midway_loses_nothing(
    old_layout: tuple[Path, dict[str, bytes], set[str]],
) -> None:
    data_dir, chunks, digests = old_layout
    killed_midway = []
    for enough in (1, 60, 200):
        runner = start_python(GC_IN_SMALL_STEPS, "repack", "--data", str(data_dir), "--loose")
        deadline = time.monotonic() + 120
        while len(packed_digests(data_dir)) < enough and runner.poll() is None:
            assert time.monotonic() < deadline, "the migration made no progress"
            time.sleep(0.01)
        killed_midway.append(kill_9(runner))
        assert stored_objects(data_dir) == digests
        assert_reads_back(data_dir, chunks)

    assert killed_midway[0], "the migration finished before it could be killed"
    answer = cli("repack", "--data", str(data_dir), "--loose")
    assert answer["loose_migrated"] + len(packed_digests(data_dir)) >= len(digests)
    assert not (data_dir / "objects").exists()
    assert packed_digests(data_dir) == digests
    assert_reads_back(data_dir, chunks)
    audit_clean(data_dir)


def packed_digests(data_dir: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{data_dir / 'chunkstore.sqlite3'}?mode=ro", uri=True)
    try:
        return {digest for (digest,) in conn.execute("SELECT digest FROM blobs")}
    except sqlite3.OperationalError:
        return set()
    finally:
        conn.close()
