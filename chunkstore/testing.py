"""Real chunkstore servers for tests and benchmarks: ``chunkstore serve`` started as a
process group of its own on 127.0.0.1, with a data directory of its own, stopped or
killed as a whole.

Shipped with the package (as ``litestar.testing`` is with Litestar) so that the test
suite and the benchmark suite share one harness. It imports no test framework:
``chunkstore bench`` runs without pytest installed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from chunkstore.auth import TokenStore
from chunkstore.blobs.filesystem import make_durable_dirs
from chunkstore.config import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_running(pid: int) -> bool:
    """True while any thread of the process has not exited. A process's first thread can
    be a zombie while others still run (and hold its files, sockets included)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False
    for thread in threads:
        try:
            stat = Path(f"/proc/{pid}/task/{thread}/stat").read_text()
        except FileNotFoundError:
            continue
        if stat.rpartition(")")[2].split()[0] not in ("Z", "X"):
            return True
    return False


def parent_pids() -> dict[int, int]:
    """Every process's parent, ``{pid: parent pid}``, from one scan of /proc. (Not
    /proc/PID/task/TID/children: it lists children reliably only while they are stopped
    or frozen, a child exiting meanwhile can hide others (proc_tid_children(5)), and it
    exists only with CONFIG_PROC_CHILDREN.)"""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    return parents


def child_pids(parent: int) -> list[int]:
    """The processes ``parent`` started that are still there."""
    return [pid for pid, ppid in parent_pids().items() if ppid == parent]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, depth first: each child followed by its own."""
    children: dict[int, list[int]] = {}
    for child, parent in parent_pids().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    pending = list(reversed(children.get(pid, [])))
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(reversed(children.get(current, [])))
    return found


class Server:
    """A ``chunkstore serve`` process group with its own data directory."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        workers: int = 1,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.workers = workers
        #: Runs the server and the CLI somewhere else (``SmallFilesystem.enter()``).
        self.command_prefix = list(command_prefix)
        self.env = {**os.environ, **(env or {})}
        self.env.pop("CHUNKSTORE_DATA", None)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        make_durable_dirs(data_dir)

    def start(self, timeout: float = 30) -> Server:
        """Start and wait until ``/healthz`` answers; a server that exits or does not
        answer within ``timeout`` seconds is killed (its whole process group) before
        the error is raised, so no test leaves a server behind."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [
                *self.command_prefix,
                sys.executable,
                "-m",
                "chunkstore.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data",
                str(self.data_dir),
                "--workers",
                str(self.workers),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.kill9()  # its workers, if any outlived it
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill9()
        raise RuntimeError(f"server did not start within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """SIGKILL the whole process group: no shutdown handler runs."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):  # the group has already gone
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            # The main process may be gone already (a test killed it alone): whatever is
            # left of its group goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    @property
    def main_pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """The worker processes: the main process's children, found in /proc."""
        return child_pids(self.main_pid)

    def token(self, owner: str) -> str:
        if self.command_prefix:
            return self.cli("token", "create", owner).stdout.strip()
        settings = Settings(data_dir=self.data_dir)
        return TokenStore(settings.database_path).create(owner)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A ``chunkstore`` command on this server's data directory (``--data`` added)."""
        return subprocess.run(
            [*self.command_prefix, sys.executable, "-m", "chunkstore.cli", *args,
             "--data", str(self.data_dir)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
        )  # fmt: skip

    def client(self, owner: str | None = "alice", **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(owner)}"} if owner else {}
        headers.update(kwargs.pop("headers", None) or {})  # type: ignore[arg-type]
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]


#: What the ``make_server`` fixture is: ``make_server(**env)`` starts a server with those
#: ``CHUNKSTORE_*`` settings and its own data directory.
MakeServer = Callable[..., Server]
