"""kill -9 in the middle of an upload loses nothing acknowledged (invariant 3)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from random import Random

import httpx
import pytest

from chunkstore.batch import MEDIA_TYPE as BATCH_MEDIA_TYPE
from chunkstore.batch import frame_header
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


def send_batches(
    url: str, token: str, upload_id: str, pieces: list[bytes], acknowledged: set[int]
) -> None:
    """Send the pieces not yet acknowledged in batches of 8 over 2 connections, until
    the server goes away; every 200 adds its frames to ``acknowledged``."""
    todo = [index for index in range(len(pieces)) if index not in acknowledged]
    groups = [todo[at : at + 8] for at in range(0, len(todo), 8)]
    lock = threading.Lock()

    def sender(share: list[list[int]]) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            for group in share:
                body = b"".join(frame_header(i, len(pieces[i])) + pieces[i] for i in group)
                try:
                    answer = client.post(
                        f"{UPLOAD}/{upload_id}/batch",
                        content=body,
                        headers={"Content-Type": BATCH_MEDIA_TYPE},
                        timeout=60,
                    )
                except httpx.TransportError:
                    return
                if answer.status_code == 200:
                    with lock:
                        acknowledged.update(group)

    threads = [threading.Thread(target=sender, args=(groups[n::2],)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)


@pytest.mark.slow
def test_kill_9_at_random_instants_during_batch_appends_loses_nothing_acknowledged(
    make_server: MakeServer,
) -> None:
    """Eight kill -9s, each at a random instant while batches are being appended to
    packs; after each restart every acknowledged chunk is there, and at the end the
    file completes byte-identical and audit finds nothing."""
    server = make_server()
    data = os.urandom(40 * MiB)
    pieces = split(data, 64 * 1024)
    acknowledged: set[int] = set()
    random = Random(1201)
    token = server.token("survivor")
    with server.client("survivor") as client:
        upload_id = init_upload(client, data, 64 * 1024, file_hash=sha256_hex(data))["upload_id"]
    for _ in range(8):
        sender = threading.Thread(
            target=send_batches, args=(server.url, token, upload_id, pieces, acknowledged)
        )
        sender.start()
        time.sleep(random.uniform(0.05, 0.6))
        server.kill9()
        sender.join(timeout=120)
        server.start()
        with server.client("survivor") as client:
            received = set(status_of(client, upload_id)["received_chunks"])
        assert acknowledged <= received, sorted(acknowledged - received)[:10]
    send_batches(server.url, token, upload_id, pieces, acknowledged)
    assert acknowledged == set(range(len(pieces)))
    with server.client("survivor") as client:
        assert complete(client, upload_id).status_code == 200
        assert client.get(f"/api/v1/files/{upload_id}").content == data
    server.stop()
    audit = server.cli("audit", "--json")
    assert audit.returncode == 0, audit.stdout
