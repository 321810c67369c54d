"""Status answers: small whatever the session's size, in the seed's shape, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from chunkstore.chunking import ChunkInfo
from chunkstore.client import UploadClient
from chunkstore.testing import MakeServer, Server
from tests.helpers import UPLOAD, assert_problem, cancel, complete, put_chunk, status_of

KiB = 1024
#: Far below the 62 MB a 4,000,000-chunk status answer used to be.
SMALL_STATUS = 256 * KiB
FOUR_MILLION = 4_000_000


def start_huge_session(client: httpx.Client) -> str:
    """A fixed session of 4,000,000 chunks of 16 KiB (no chunk is sent)."""
    response = client.post(
        f"{UPLOAD}/init",
        json={
            "filename": "huge.bin",
            "total_size": FOUR_MILLION * 16 * KiB,
            "chunk_size": 16 * KiB,
        },
    )
    assert response.status_code == 201, response.text
    assert len(response.content) < SMALL_STATUS, len(response.content)
    answer = response.json()
    assert answer["total_chunks"] == FOUR_MILLION
    assert answer["missing_chunks"] == list(range(10_000))
    assert (answer["missing_count"], answer["needed_count"]) == (FOUR_MILLION, FOUR_MILLION)
    assert (answer["chunks_truncated"], answer["next_from"]) == (True, 10_000)
    return str(answer["upload_id"])


def test_status_of_a_four_million_chunk_session_stays_small(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_MAX_FILE_SIZE=str(1 << 40))
    with server.client() as client:
        upload_id = start_huge_session(client)
        for index in (0, 1, 2, 3_999_999):
            assert put_chunk(client, upload_id, index, os.urandom(16 * KiB)).status_code == 200

        response = client.get(f"{UPLOAD}/status/{upload_id}")

        assert response.status_code == 200
        assert len(response.content) < SMALL_STATUS, len(response.content)
        status = response.json()
        assert status["received_ranges"] == [[0, 2], [3_999_999, 3_999_999]]
        assert status["missing_ranges"] == [[3, 3_999_998]]
        assert status["received_chunks"] == [0, 1, 2, 3_999_999]
        assert status["missing_chunks"] == list(range(3, 10_003))
        assert status["needed_chunks"] == status["missing_chunks"]
        assert (status["received_count"], status["missing_count"]) == (4, FOUR_MILLION - 4)
        assert status["needed_count"] == FOUR_MILLION - 4
        assert (status["chunks_truncated"], status["next_from"]) == (True, 10_003)
        assert status["progress"]["missing_chunks"] == status["missing_chunks"]
        assert status["progress"]["missing_count"] == FOUR_MILLION - 4

        refused = complete(client, upload_id)
        assert len(refused.content) < SMALL_STATUS, len(refused.content)
        problem = assert_problem(refused, 409, "upload-incomplete")
        assert problem["missing_chunks"] == list(range(3, 10_003))
        assert problem["missing_count"] == FOUR_MILLION - 4

        cancelled = cancel(client, upload_id)
        assert cancelled.status_code == 200
        assert len(cancelled.content) < SMALL_STATUS, len(cancelled.content)


def test_status_pages_through_a_session_from_next_from(client: httpx.Client) -> None:
    total = 25_000
    answer = client.post(
        f"{UPLOAD}/init", json={"filename": "p.bin", "total_size": total, "chunk_size": 1}
    ).json()
    upload_id = answer["upload_id"]
    stored = {0, 9_999, 10_000, 10_001, 17_500, 24_999}
    for index in sorted(stored):
        assert put_chunk(client, upload_id, index, b"x").status_code == 200

    missing: list[int] = []
    received: list[int] = []
    start: int | None = 0
    pages = 0
    while start is not None:
        page = client.get(f"{UPLOAD}/status/{upload_id}", params={"from": start}).json()
        cut = page["next_from"] if page["next_from"] is not None else total
        missing += [index for index in page["missing_chunks"] if index < cut]
        received += [index for index in page["received_chunks"] if index < cut]
        start, pages = page["next_from"], pages + 1

    assert pages == 3
    assert received == sorted(stored)
    assert missing == [index for index in range(total) if index not in stored]


def test_status_refuses_a_negative_from(client: httpx.Client) -> None:
    upload_id = client.post(f"{UPLOAD}/init", json={"filename": "a", "total_size": 1}).json()[
        "upload_id"
    ]

    response = client.get(f"{UPLOAD}/status/{upload_id}", params={"from": -1})

    assert_problem(response, 400, "invalid-request")


# -- the seed's own client -------------------------------------------------------------


def test_seed_client_flow_resumes_from_progress_missing_chunks(make_server: MakeServer) -> None:
    """The seed's documented client, step by step, with a plain HTTP client."""
    server = make_server(CHUNKSTORE_DEFAULT_CHUNK_SIZE=str(256 * KiB))
    data = os.urandom(5 * 256 * KiB + 1234)
    headers = {"Authorization": f"Bearer {server.token('seed')}"}

    def send_chunk(http: httpx.Client, upload_id: str, index: int, chunk_size: int) -> None:
        chunk = data[index * chunk_size : (index + 1) * chunk_size]
        response = http.post(
            f"{server.url}/api/v1/upload/chunk",
            json={
                "upload_id": upload_id,
                "chunk_index": index,
                "chunk_data": base64.b64encode(chunk).decode(),
                "checksum": hashlib.sha256(chunk).hexdigest(),
            },
        )
        assert response.status_code == 200, response.text

    with httpx.Client(headers=headers, timeout=60) as http:
        init = http.post(
            f"{server.url}/api/v1/upload/init",
            json={
                "filename": "seed.bin",
                "total_size": len(data),
                "mime_type": "application/octet-stream",
                "file_hash": hashlib.sha256(data).hexdigest(),
            },
        ).json()
        upload_id, chunk_size, total_chunks = (
            init["upload_id"],
            init["chunk_size"],
            init["total_chunks"],
        )
        assert total_chunks == 6
        for index in (0, 2, 3):
            send_chunk(http, upload_id, index, chunk_size)
    # Interrupted: a new process resumes from the status alone.
    with httpx.Client(headers=headers, timeout=60) as http:
        status: dict[str, Any] = http.get(f"{server.url}/api/v1/upload/status/{upload_id}").json()
        missing = status["progress"]["missing_chunks"]
        assert missing == [1, 4, 5]
        assert status["progress"]["percentage"] == status["percentage"] < 100
        for index in missing:
            send_chunk(http, upload_id, index, chunk_size)
        result = http.post(
            f"{server.url}/api/v1/upload/complete", json={"upload_id": upload_id}
        ).json()

    assert (server.data_dir / result["file_path"]).read_bytes() == data


def test_cli_status_prints_the_percentage(server: Server, owner: str) -> None:
    with server.client(owner) as client:
        upload_id = client.post(
            f"{UPLOAD}/init", json={"filename": "a.bin", "total_size": 4, "chunk_size": 1}
        ).json()["upload_id"]
        assert put_chunk(client, upload_id, 1, b"x").status_code == 200
        assert status_of(client, upload_id)["percentage"] == 25.0

    result = subprocess.run(
        [sys.executable, "-m", "chunkstore.cli", "status", upload_id, "--server", server.url],
        env={**os.environ, "CHUNKSTORE_TOKEN": server.token(owner)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "active (25.0%, 1/4 chunks)" in result.stdout


def test_the_client_collects_needed_chunks_past_the_first_ten_thousand(
    server: Server, owner: str, tmp_path: Path
) -> None:
    total = 25_000
    with server.client(owner) as client:
        init = client.post(
            f"{UPLOAD}/init", json={"filename": "n.bin", "total_size": total, "chunk_size": 1}
        ).json()
        for index in (5, 20_000):
            assert put_chunk(client, init["upload_id"], index, b"x").status_code == 200
        status = status_of(client, init["upload_id"])
    uploader = UploadClient(server.url, server.token(owner), state_dir=tmp_path)
    chunks = [ChunkInfo(index, 1, f"{index:064x}") for index in range(total)]
    api = uploader.open_api()
    try:
        needed = uploader.needed(api, init["upload_id"], status, chunks)
    finally:
        api.close()

    assert status["chunks_truncated"]
    assert needed == [index for index in range(total) if index not in (5, 20_000)]
