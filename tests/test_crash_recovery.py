"""kill -9 in the middle of an upload loses nothing acknowledged (invariant 3)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import httpx
import pytest

from chunkstore.testing import MakeServer
from tests.helpers import (
    OCTET_STREAM,
    UPLOAD,
    complete,
    init_upload,
    put_chunk,
    requests_in_progress,
    sha256_hex,
    split,
    status_of,
    temp_files,
    wait_for,
)

MiB = 1024 * 1024


@pytest.mark.slow
def test_kill_9_mid_chunk_loses_no_acknowledged_chunk_and_leaves_no_temp_file(
    make_server: MakeServer,
) -> None:
    server = make_server()
    data = os.urandom(48 * MiB)
    pieces = split(data, MiB)
    acknowledged: set[int] = set()

    with server.client("survivor") as client:
        upload_id = init_upload(client, data, MiB, file_hash=sha256_hex(data))["upload_id"]
        # Acknowledged chunks, deliberately not a prefix of the file.
        for index in [*range(0, 20), 30, 47, 25]:
            response = put_chunk(client, upload_id, index, pieces[index])
            assert response.status_code == 200, response.text
            acknowledged.add(index)

    # A chunk whose body is half sent when the server dies.
    in_flight = 21
    release = threading.Event()
    outcome: list[object] = []

    def half_then_wait() -> Iterator[bytes]:
        yield pieces[in_flight][: MiB // 2]
        release.wait(60)
        yield pieces[in_flight][MiB // 2 :]

    def send_in_flight() -> None:
        with server.client("survivor") as sender:
            try:
                outcome.append(
                    sender.put(
                        f"{UPLOAD}/{upload_id}/chunks/{in_flight}",
                        content=half_then_wait(),
                        headers={**OCTET_STREAM, "Content-Length": str(MiB)},
                    )
                )
            except httpx.TransportError as error:
                outcome.append(error)

    sender_thread = threading.Thread(target=send_in_flight)
    sender_thread.start()
    # Once a worker handles the request, its body is in flight (half of it sent).
    wait_for(
        lambda: requests_in_progress(server.url) >= 1, "the in-flight chunk reaching the server"
    )

    server.kill9()
    release.set()
    sender_thread.join(timeout=60)
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.TransportError), outcome

    server.start()
    assert temp_files(server.data_dir) == []
    with server.client("survivor") as client:
        status = status_of(client, upload_id)
        assert status["status"] == "active"
        assert status["received_chunks"] == sorted(acknowledged)

        for index in status["missing_chunks"]:
            response = put_chunk(client, upload_id, index, pieces[index])
            assert response.status_code == 200, response.text
        answer = complete(client, upload_id)
        assert answer.status_code == 200, answer.text

    final = server.data_dir / answer.json()["file_path"]
    assert answer.json()["sha256"] == sha256_hex(data)
    assert sha256_hex(final.read_bytes()) == sha256_hex(data)
    assert final.read_bytes() == data
