"""Shared fixtures: real chunkstore servers on 127.0.0.1, real data directories."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from chunkstore.config import Settings
from chunkstore.durable import make_durable_dirs
from chunkstore.store import open_store

MiB = 1024 * 1024


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


def child_pids(parent: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat.rpartition(")")[2].split()[1]) == parent:
            found.append(int(entry.name))
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
        store = open_store(settings)
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

    def client(self, owner: str | None = "alice", **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(owner)}"} if owner else {}
        headers.update(kwargs.pop("headers", None) or {})  # type: ignore[arg-type]
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with default settings, shared by tests that need nothing special.
    Each test isolates itself by uploading as its own owner."""
    instance = Server(tmp_path_factory.mktemp("shared") / "data").start()
    yield instance
    instance.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[object]:
    """Factory for a server with its own data directory and ``CHUNKSTORE_*`` settings."""
    started: list[Server] = []

    def make(**env: str) -> Server:
        instance = Server(tmp_path / f"data{len(started)}", env).start()
        started.append(instance)
        return instance

    yield make
    for instance in started:
        instance.stop()


MakeServer = Callable[..., Server]


class SmallFilesystem:
    """A tmpfs of ``size`` bytes, to run out of space for real.

    It is mounted at ``mount_point`` in a mount namespace of its own (inside a user
    namespace when not root, so no privilege is needed), held by a sleeping process:
    nothing is ever left mounted on the host, whatever happens to the test. Processes
    that must see it at ``mount_point`` (a server, the CLI) run under ``enter()``; the
    test itself reads and writes plain files through ``path``, the holder's view of it.
    (Not SQLite, nor anything that resolves paths: they would follow ``/proc/PID/root``
    back to the host's directory.)
    """

    def __init__(self, mount_point: Path, size: int) -> None:
        self.mount_point = mount_point
        self.size = size
        self.holder: subprocess.Popen[str] | None = None
        self.path = mount_point
        self.user_namespace = os.geteuid() != 0

    def __enter__(self) -> SmallFilesystem:
        self.mount_point.mkdir(parents=True, exist_ok=True)
        namespaces = ["--mount", "--propagation", "private"]
        if self.user_namespace:
            namespaces = ["--user", "--map-root-user", *namespaces]
        script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && echo mounted && exec sleep infinity'
        try:
            self.holder = subprocess.Popen(
                [
                    "unshare",
                    *namespaces,
                    "sh",
                    "-c",
                    script,
                    "sh",
                    str(self.size),
                    str(self.mount_point),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except FileNotFoundError:
            pytest.fail("this test needs unshare (util-linux) to mount a small filesystem")
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "mounted":
            self.holder.kill()
            _, errors = self.holder.communicate(timeout=10)
            pytest.fail(
                "cannot mount a small tmpfs in a mount namespace (as root, or in a user"
                f" namespace without root) for this test: {errors.strip()}"
            )
        self.path = Path(f"/proc/{self.holder.pid}/root") / self.mount_point.relative_to("/")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.communicate(timeout=10)
            self.holder = None

    def enter(self) -> list[str]:
        """The command prefix that runs a command where the filesystem is mounted."""
        assert self.holder is not None
        namespaces = ["--user", "--preserve-credentials"] if self.user_namespace else []
        return ["nsenter", "--target", str(self.holder.pid), *namespaces, "--mount", "--"]

    def fill(self) -> Path:
        """Write a file until the filesystem has no room left; returns its path."""
        filler = self.path / "filler"
        with open(filler, "wb", buffering=0) as out:
            for block in (MiB, 64 * 1024, 4096, 512, 1):
                try:
                    while True:
                        out.write(b"\0" * block)
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
        return filler


@pytest.fixture
def owner() -> str:
    """An owner name of this test's own, so tests sharing a server never see each other."""
    return f"owner-{uuid.uuid4().hex}"


@pytest.fixture
def client(server: Server, owner: str) -> Iterator[httpx.Client]:
    """A client of the shared server, authenticated as this test's owner."""
    with server.client(owner) as instance:
        yield instance
