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
from typing import Any

import httpx

from chunkstore.config import Settings
from chunkstore.store import open_store


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


def start_group(command: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``command`` as the leader of a process group of its own, so that one signal
    reaches every process it starts (a server's workers included)."""
    return subprocess.Popen(command, start_new_session=True, **popen)


def wait_until_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    timeout: float,
    name: str,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``ready`` until it holds. A process that exits first, or is not ready within
    ``timeout`` seconds, is killed with its whole group before the error is raised, so
    that no failed start leaves a process behind; ``output`` says what it printed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            kill_group(process)  # what it started, if anything outlived it
            raise RuntimeError(f"{name} exited early:\n{output()}")
        if ready():
            return
        time.sleep(0.05)
    kill_group(process)
    raise RuntimeError(f"{name} did not start within {timeout} s:\n{output()}")


def answers_ok(url: str) -> bool:
    """True once ``GET url`` answers 200 (a health check)."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole process group: no shutdown handler runs."""
    with contextlib.suppress(ProcessLookupError):  # the group has already gone
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def stop_group(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM the process group and wait for its leader; SIGKILL the group if the
    leader lingers past ``timeout`` seconds, or is gone already (killed alone): whatever
    is left of its group goes too."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        kill_group(process)


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
        # Durability is the server's business (it creates what it needs durably); the
        # harness needs the directory only to exist, for a token made before start().
        data_dir.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 30) -> Server:
        """Start and wait until ``/healthz`` answers; a server that exits or does not
        answer within ``timeout`` seconds is killed (its whole process group) before
        the error is raised, so no test leaves a server behind."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = start_group(
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
        )
        log.close()
        try:
            wait_until_ready(
                self.process, lambda: answers_ok(f"{self.url}/healthz"), timeout, "server", self.log
            )
        except RuntimeError:
            self.process = None  # killed, group and all
            raise
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """SIGKILL the whole process group: no shutdown handler runs."""
        assert self.process is not None
        kill_group(self.process)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        stop_group(self.process)
        self.process = None

    @property
    def main_pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """The worker processes: the main process's children, found in /proc."""
        return child_pids(self.main_pid)

    def token(self, owner: str) -> str:
        """A bearer token that uploads as ``owner``: the one place the harness reaches
        into the library rather than drive the server through its CLI and HTTP API."""
        if self.command_prefix:
            return self.cli("token", "create", owner).stdout.strip()
        store = open_store(Settings(data_dir=self.data_dir))
        try:
            return store.tokens.create(owner)
        finally:
            store.close()

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

    def client(
        self, owner: str | None = "alice", headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Client:
        sent = {"Authorization": f"Bearer {self.token(owner)}"} if owner else {}
        sent.update(headers or {})
        return httpx.Client(base_url=self.url, headers=sent, timeout=60, **kwargs)


#: What the ``make_server`` fixture is: ``make_server(**env)`` starts a server with those
#: ``CHUNKSTORE_*`` settings and its own data directory.
MakeServer = Callable[..., Server]
