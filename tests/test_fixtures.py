"""The suite's own fixtures keep their promises: no test leaves a server behind."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from chunkstore.testing import Server


def processes_using(data_dir: Path) -> list[int]:
    """Process ids whose command line names ``data_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if str(data_dir).encode() in arguments:
            found.append(int(entry.name))
    return found


def test_a_server_that_does_not_answer_in_time_is_killed_before_start_fails(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    server = Server(data_dir)
    # The health check goes to a socket that accepts connections and never answers, so
    # the server itself starts but start() never sees it healthy.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        server.url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        try:
            with pytest.raises(RuntimeError, match="did not start within 3 s"):
                server.start(timeout=3)

            deadline = time.monotonic() + 30
            while processes_using(data_dir) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert processes_using(data_dir) == []
            assert server.process is None
        finally:
            for pid in processes_using(data_dir):
                os.kill(pid, signal.SIGKILL)
