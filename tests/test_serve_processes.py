"""``chunkstore serve`` as processes: its workers never outlive the main process, and
SIGTERM stops them all in bounded time, even with a client holding a request open."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from chunkstore.testing import Server, is_running
from tests.helpers import UPLOAD, init_upload, requests_in_progress, start_request

#: The deadline of every wait here, never a measured limit.
DEADLINE = 60.0


def wait_until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    ends = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < ends, f"{what} not within {deadline} s"
        time.sleep(0.05)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@contextmanager
def request_in_flight(server: Server) -> Iterator[None]:
    """A raw PUT whose client sent part of the chunk and stays silent, holding the
    request open (the server is told to wait an hour for the rest)."""
    with server.client("alice") as client:
        chunk = b"x" * 1_000_000
        upload_id = init_upload(client, chunk, len(chunk))["upload_id"]
        head = (
            f"PUT {UPLOAD}/{upload_id}/chunks/0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {client.headers['Authorization']}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(chunk)}\r\n\r\n"
        )
    with start_request(server.port, head, chunk[:1000]):
        wait_until(lambda: requests_in_progress(server.url) >= 1, "the request reaching a worker")
        yield


def started_workers(server: Server) -> list[int]:
    """The pids of the server's workers, once all of them have been started."""
    wait_until(lambda: len(server.worker_pids()) == server.workers, "every worker starting")
    return server.worker_pids()


@pytest.fixture
def patient_server(tmp_path: Path) -> Iterator[Server]:
    """Two workers, and an hour's patience for a silent body."""
    server = Server(tmp_path / "data", {"CHUNKSTORE_BODY_IDLE_TIMEOUT": "3600"}, workers=2)
    server.start()
    yield server
    server.stop()


def test_workers_exit_when_the_main_process_is_killed(patient_server: Server) -> None:
    server = patient_server
    workers = started_workers(server)
    with request_in_flight(server):
        os.kill(server.main_pid, signal.SIGKILL)  # the main process alone, not its group
        server.process.wait(timeout=DEADLINE)  # type: ignore[union-attr]

        wait_until(lambda: not any(map(is_running, workers)), "every worker exiting")
        wait_until(lambda: refuses_connections(server.port), "the port refusing connections")


def test_sigterm_to_the_main_process_stops_every_worker(patient_server: Server) -> None:
    server = patient_server
    workers = started_workers(server)
    with request_in_flight(server):
        os.kill(server.main_pid, signal.SIGTERM)

        server.process.wait(timeout=DEADLINE)  # type: ignore[union-attr]
        wait_until(lambda: not any(map(is_running, workers)), "every worker exiting")
        wait_until(lambda: refuses_connections(server.port), "the port refusing connections")
