"""Acknowledged means durable, shown on the system calls (invariant 3).

kill -9 cannot reveal a missing sync: the page cache outlives the process. So this test
traces the server's worker with ``strace`` while one client at a time sends chunks
(raw PUTs, a batch, tus PATCHes, a completion) and checks, at every 2xx answer written to
a socket, that every byte written to a pack file before it was ``fdatasync``ed by a sync
that started after the write ended, that the same holds for the SQLite write-ahead log
(a commit is an ``fsync``/``fdatasync`` of the WAL under ``synchronous=FULL``), and that
a pack file created since was made durable in its directory (an ``fsync`` of
``packs/``). Removing any of those sync steps makes it fail.

Requests go one at a time, so "everything written so far is synced" is exactly "this
request's bytes are synced".
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from chunkstore.batch import MEDIA_TYPE as BATCH_MEDIA_TYPE
from chunkstore.batch import frame_header
from chunkstore.testing import MakeServer, Server
from tests.helpers import complete, init_upload, put_chunk, wait_for

KiB = 1024
MiB = 1024 * KiB
TRACED = "openat,pwrite64,pwritev,pwritev2,write,writev,sendto,sendmsg,fsync,fdatasync"
TUS = {"Tus-Resumable": "1.0.0"}

# 1234 10:00:00.000001 pwritev(7</d/packs/x.pack>, ...) = 10
_CALL = re.compile(r"^(\d+)\s+\S+\s+(\w+)\((?:(\d+)<([^>]*)>)?(.*)$")
# 1234 10:00:00.000002 <... fdatasync resumed>) = 0
_RESUMED = re.compile(r"^(\d+)\s+\S+\s+<\.\.\. (\w+) resumed>(.*)$")
_WRITES = {"pwrite64", "pwritev", "pwritev2", "write", "writev"}
_SYNCS = {"fsync", "fdatasync"}
_SENDS = {"write", "writev", "sendto", "sendmsg"}


@dataclass
class Durability:
    """Replays a trace in order and records every acknowledgement's verdict."""

    packs_dir: str
    #: path -> sequence number of the last write to it that ended.
    written: dict[str, int] = field(default_factory=dict)
    #: path -> sequence number at which the newest completed sync of it started.
    synced_from: dict[str, int] = field(default_factory=dict)
    #: Pack files created and not yet made durable in their directory: path -> seq.
    created: dict[str, int] = field(default_factory=dict)
    dir_synced_from: int = -1
    #: pid -> (syscall, path, seq at entry) of a call still under way.
    under_way: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    acknowledged: int = 0
    #: Acknowledgements with pack writes since the one before (the test did exercise it).
    acknowledged_after_pack_writes: int = 0
    pack_writes_since_answer: int = 0
    violations: list[str] = field(default_factory=list)

    def line(self, seq: int, text: str) -> None:
        if resumed := _RESUMED.match(text):
            pid, name, rest = resumed.groups()
            started = self.under_way.pop(pid, None)
            if started is not None and started[0] == name:
                self.ended(seq, name, started[1], started[2], rest)
            return
        call = _CALL.match(text)
        if call is None:
            return
        pid, name, _, path, rest = call.groups()
        path = path or ""
        if name in _SENDS and path.startswith("TCP:") and '"HTTP/1.1 2' in rest:
            self.answer(seq, rest)  # the answer's bytes leave at entry
        if rest.endswith("<unfinished ...>"):
            self.under_way[pid] = (name, path, seq)
        else:
            self.ended(seq, name, path, seq, rest)

    def ended(self, seq: int, name: str, path: str, started: int, rest: str) -> None:
        if name in _WRITES and self.tracked(path):
            self.written[path] = seq
            if path.endswith(".pack"):
                self.pack_writes_since_answer += 1
        elif name in _SYNCS:
            if self.tracked(path):
                self.synced_from[path] = max(self.synced_from.get(path, -1), started)
            elif path == self.packs_dir:
                self.dir_synced_from = max(self.dir_synced_from, started)
        elif name == "openat" and "O_CREAT" in rest:
            created = _opened(rest)
            if created is not None and created.endswith(".pack"):
                self.created[created] = seq

    @staticmethod
    def tracked(path: str) -> bool:
        return path.endswith(".pack") or path.endswith("-wal")

    def answer(self, seq: int, rest: str) -> None:
        self.acknowledged += 1
        if self.pack_writes_since_answer:
            self.acknowledged_after_pack_writes += 1
        self.pack_writes_since_answer = 0
        status = rest.split('"HTTP/1.1 ', 1)[1][:3]
        for path, last_write in self.written.items():
            if self.synced_from.get(path, -1) <= last_write:
                self.violations.append(f"{status} answered at #{seq} before {path} was synced")
        for path, made in self.created.items():
            if self.dir_synced_from <= made:
                self.violations.append(
                    f"{status} answered at #{seq}: {path} not durable in its dir"
                )


def _opened(rest: str) -> str | None:
    """The path an ``openat`` returned a descriptor for (``= 7</path>``)."""
    found = re.search(r"= \d+<([^>]*)>\s*$", rest)
    return found.group(1) if found else None


def check_trace(trace: Path, packs_dir: Path) -> Durability:
    durability = Durability(str(packs_dir))
    with open(trace, errors="replace") as lines:
        for seq, text in enumerate(lines):
            durability.line(seq, text.rstrip("\n"))
    return durability


class Tracer:
    """``strace -f`` attached to a running process (all its threads), writing to a file."""

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        self.process = subprocess.Popen(
            ["strace", "-f", "-tt", "-yy", "-s", "24", "-e", f"trace={TRACED}",
             "-o", str(output), "-p", str(pid)],
            stderr=subprocess.PIPE,
        )  # fmt: skip
        # strace says "Process N attached" for each thread once it traces it.
        wait_for(
            lambda: output.exists() and output.stat().st_size > 0 or self._attached(), "strace"
        )

    def _attached(self) -> bool:
        return self.process.poll() is None and Path(f"/proc/{self.process.pid}").exists()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)  # detaches, the traced process lives on
        self.process.wait(timeout=60)


def traced_server(make_server: MakeServer, tmp_path: Path) -> tuple[Server, Tracer]:
    server = make_server(CHUNKSTORE_GC_INTERVAL="86400")
    (worker,) = server.worker_pids()
    tracer = Tracer(worker, tmp_path / "trace.txt")
    # A request the tracer certainly saw: strace attaches thread by thread.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        httpx.get(f"{server.url}/healthz", timeout=10)
        if tracer.output.exists() and "HTTP/1.1 200" in tracer.output.read_text(errors="replace"):
            break
        time.sleep(0.1)
    else:
        tracer.stop()
        raise AssertionError("strace never saw an answer: " + tracer.output.read_text()[-2000:])
    return server, tracer


def test_every_acknowledged_chunk_is_synced_before_its_answer(
    make_server: MakeServer, tmp_path: Path
) -> None:
    # ./run test installs strace; without it this test fails, it is never skipped.
    assert shutil.which("strace"), "strace is not installed (./run test installs it)"
    server, tracer = traced_server(make_server, tmp_path)
    try:
        with server.client("alice") as client:
            data = os.urandom(6 * 256 * KiB)
            pieces = [data[at : at + 256 * KiB] for at in range(0, len(data), 256 * KiB)]
            upload_id = init_upload(client, data, 256 * KiB)["upload_id"]
            for index in (0, 1):
                assert put_chunk(client, upload_id, index, pieces[index]).status_code == 200
            body = b"".join(frame_header(i, len(pieces[i])) + pieces[i] for i in (2, 3, 4))
            answer = client.post(
                f"/api/v1/upload/{upload_id}/batch",
                content=body,
                headers={"Content-Type": BATCH_MEDIA_TYPE},
            )
            assert answer.status_code == 200, answer.text
            assert put_chunk(client, upload_id, 5, pieces[5]).status_code == 200
            assert complete(client, upload_id).status_code == 200
            # A raw chunk of a MiB or more is written into its pack as its body arrives.
            large = os.urandom(3 * MiB)
            large_id = init_upload(client, large, len(large))["upload_id"]
            assert put_chunk(client, large_id, 0, large).status_code == 200

            stream = os.urandom(3 * MiB)
            created = client.post("/files/", headers={**TUS, "Upload-Length": str(len(stream))})
            assert created.status_code == 201, created.text
            url = created.headers["Location"]
            for offset in (0, MiB, 2 * MiB):
                patched = client.patch(
                    url,
                    content=stream[offset : offset + MiB],
                    headers={
                        **TUS,
                        "Content-Type": "application/offset+octet-stream",
                        "Upload-Offset": str(offset),
                    },
                )
                assert patched.status_code == 204, patched.text
    finally:
        tracer.stop()

    durability = check_trace(tracer.output, server.data_dir / "packs")
    print(
        f"\n{durability.acknowledged} answers traced, {durability.acknowledged_after_pack_writes}"
        f" of them after pack writes; {len(durability.violations)} violations"
    )
    assert durability.violations == []
    # The requests above wrote chunks: the raw PUTs (one streamed), the batch, the manifest,
    # the PATCHes.
    assert durability.acknowledged_after_pack_writes >= 7
    assert durability.created, "no pack file was created while traced"
