"""The per-upload lock: its backends against the lock contract (``tests/contracts/locks.py``);
what only flock promises (exclusive across processes, gone with its holder, a file only
while held); and, in the service, no lock created nor any other per-upload state kept for
ids that are not the caller's."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from chunkstore.application import UploadService
from chunkstore.commands import InitRequest
from chunkstore.config import Settings
from chunkstore.errors import UploadLocked, UploadNotFound
from chunkstore.locks.flock import FlockLocks
from chunkstore.locks.memory import MemoryLocks
from chunkstore.testing import MakeServer, descendants
from chunkstore.tus import TusUploads
from tests.contracts.locks import LockerContract
from tests.helpers import FakeClock, cancel, complete

KiB = 1024
TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_BODY = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}


# -- the lock: its contract, and what only flock promises --------------------------------


class TestMemoryLocks(LockerContract):
    def make_locks(self, tmp_path: Path) -> MemoryLocks:
        return MemoryLocks()


HOLD_AND_WAIT = """
import sys, time
from pathlib import Path
from chunkstore.locks.flock import FlockLocks
lock = FlockLocks(Path(sys.argv[1])).acquire("u1")
print("held", flush=True)
time.sleep(600)
"""


class TestFlockLocks(LockerContract):
    def make_locks(self, tmp_path: Path) -> FlockLocks:
        return FlockLocks(tmp_path / "locks")

    def test_the_lock_file_exists_only_while_the_lock_is_held(self, locks: FlockLocks) -> None:
        with locks.hold("u1"):
            assert (locks.directory / "u1").is_file()
        assert list(locks.directory.iterdir()) == []

    def test_a_bounded_wait_says_how_long_it_waited(self, locks: FlockLocks) -> None:
        with locks.hold("u1"), pytest.raises(UploadLocked) as refused:
            locks.acquire("u1", wait=0.05)
        assert "waited" in refused.value.detail

    def test_an_id_that_cannot_name_a_lock_file_is_refused(self, locks: FlockLocks) -> None:
        for upload_id in ("", "../u1", "u1/x", "x" * 129, "u1\x00"):
            with pytest.raises(ValueError):
                locks.acquire(upload_id)
        assert list(locks.directory.iterdir()) == []

    def test_the_lock_of_a_killed_process_is_free_and_its_file_swept(
        self, locks: FlockLocks
    ) -> None:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_AND_WAIT, str(locks.directory)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == b"held"
            with pytest.raises(UploadLocked):
                locks.acquire("u1")
            assert locks.sweep() == 0  # held: not stale
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(30)
        assert locks.held() == ["u1"]  # the dead holder never removed it
        with locks.hold("u1"):
            pass
        assert locks.held() == []
        os.close(os.open(locks.directory / "u2", os.O_CREAT | os.O_RDWR))  # another leftover
        assert locks.sweep(dry_run=True) == 1
        assert locks.sweep() == 1
        assert locks.held() == []


# -- no per-upload state for ids that are not the caller's ----------------------------------


@pytest.fixture
def service(tmp_path: Path) -> Iterator[UploadService]:
    clock = FakeClock(datetime.now(UTC))
    instance = UploadService.open(Settings(data_dir=tmp_path / "data"), clock=clock)
    yield instance
    instance.close()


async def never_read() -> AsyncIterator[bytes]:
    raise AssertionError("the body of a refused PATCH was read")
    yield b""  # pragma: no cover - makes this an async generator


def test_made_up_and_foreign_ids_leave_no_lock_file_and_no_cached_state(
    service: UploadService,
) -> None:
    tus = TusUploads(service)
    theirs = service.init_upload("bob", InitRequest(filename="b.bin", total_size=10)).upload_id
    their_tus = tus.create("bob", 10).upload_id
    cached_before = set(service.cached_upload_ids())
    made_up = [f"{n:04d}".ljust(64 * KiB, "x") for n in range(20)]
    for upload_id in [*made_up, theirs, their_tus]:
        with pytest.raises(UploadNotFound):
            service.complete_upload("alice", upload_id)
        with pytest.raises(UploadNotFound):
            service.cancel_upload("alice", upload_id)
        with pytest.raises(UploadNotFound):
            tus.head("alice", upload_id)
        with pytest.raises(UploadNotFound):
            tus.terminate("alice", upload_id)
        with pytest.raises(UploadNotFound):
            asyncio.run(tus.patch("alice", upload_id, 0, never_read()))
    assert service.store.locks.held() == []
    assert set(service.cached_upload_ids()) == cached_before
    assert not set(made_up) & set(service.cached_upload_ids())


# -- the same on a real server, measured on its worker ---------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def made_up_requests(client: httpx.Client, tag: str, count: int) -> None:
    """complete and cancel with 64 KiB ids (a body limit may refuse those bodies: 413),
    tus PATCH, HEAD and DELETE with 256-byte ones: Litestar keeps its last 1024 routed
    paths (an lru_cache), which long made-up paths would fill for reasons of its own."""
    for n in range(count):
        body_id = f"{tag}{n:06d}".ljust(64 * KiB, "x")
        path_id = f"{tag}{n:06d}".ljust(256, "y")
        assert complete(client, body_id).status_code in (404, 413)
        assert cancel(client, body_id).status_code in (404, 413)
        url = f"/files/{path_id}"
        assert client.patch(url, content=b"x", headers=OFFSET_BODY).status_code == 404
        assert client.head(url, headers=TUS).status_code == 404
        assert client.delete(url, headers=TUS).status_code == 404


def test_requests_with_made_up_ids_grow_no_state_in_the_worker(make_server: MakeServer) -> None:
    server = make_server()
    (worker,) = descendants(server.main_pid)
    count = 300
    with server.client("alice") as client:
        made_up_requests(client, "warm", 50)  # the allocator's pools settle first
        before = rss_kib(worker)
        made_up_requests(client, "leak", count)
        after = rss_kib(worker)
    # Keeping a quarter of every 64 KiB id would grow the worker by 4.7 MiB here; keeping
    # each id as the key of a lock object (what completion did) grew it by ~20 MiB.
    assert after - before < count * 64 // 4, (before, after)
    assert list((server.data_dir / "locks").iterdir()) == []
