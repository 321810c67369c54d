"""Shared fixtures: real chunkstore servers on 127.0.0.1, real data directories."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from chunkstore.auth import TokenStore
from chunkstore.blobs.filesystem import make_durable_dirs
from chunkstore.config import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A ``chunkstore serve`` process group with its own data directory."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, workers: int = 1) -> None:
        self.data_dir = data_dir
        self.workers = workers
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
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def token(self, owner: str) -> str:
        settings = Settings(data_dir=self.data_dir)
        return TokenStore(settings.database_path).create(owner)

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


@pytest.fixture
def owner() -> str:
    """An owner name of this test's own, so tests sharing a server never see each other."""
    return f"owner-{uuid.uuid4().hex}"


@pytest.fixture
def client(server: Server, owner: str) -> Iterator[httpx.Client]:
    """A client of the shared server, authenticated as this test's owner."""
    with server.client(owner) as instance:
        yield instance
