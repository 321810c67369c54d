"""Shared fixtures: real chunkstore servers on 127.0.0.1, real data directories."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# Re-exported: test modules import the harness from here as well as from chunkstore.testing.
from chunkstore.testing import MakeServer, Server, free_port, is_running  # noqa: F401


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with default settings, shared by tests that need nothing special.
    Each test isolates itself by uploading as its own owner."""
    instance = Server(tmp_path_factory.mktemp("shared") / "data").start()
    yield instance
    instance.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[MakeServer]:
    """Factory for a server with its own data directory and ``CHUNKSTORE_*`` settings."""
    started: list[Server] = []

    def make(**env: str) -> Server:
        instance = Server(tmp_path / f"data{len(started)}", env).start()
        started.append(instance)
        return instance

    yield make
    for instance in started:
        instance.stop()


@pytest.fixture
def owner() -> str:
    """An owner name of this test's own, so tests sharing a server never see each other."""
    return f"owner-{uuid.uuid4().hex}"


@pytest.fixture
def client(server: Server, owner: str) -> Iterator[httpx.Client]:
    """A client of the shared server, authenticated as this test's owner."""
    with server.client(owner) as instance:
        yield instance
