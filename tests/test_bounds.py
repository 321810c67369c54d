"""Bounds on what a client sends and on what the server answers, over real HTTP."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from collections.abc import Iterator

import httpx
import pytest

from chunkstore.eventlog.sqlite import SQLiteLog
from chunkstore.testing import MakeServer, Server
from tests.helpers import (
    UPLOAD,
    assert_problem,
    blake3_hex,
    init_upload,
    recorded_events,
    sha256_hex,
    split,
    status_of,
)

KiB = 1024
MiB = 1024 * KiB
#: A problem body that quotes a client value must stay under this.
SMALL_ANSWER = 4 * KiB
#: Near the longest request line the server (granian) accepts; longer ones get its 414.
LONG_PATH_ID = "x" * 60_000


def assert_small_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert len(response.content) < SMALL_ANSWER, len(response.content)
    assert_problem(response, status, slug)


# -- errors never echo input back -----------------------------------------------------


def test_a_multi_megabyte_upload_id_in_a_json_body_gets_a_small_error(
    client: httpx.Client,
) -> None:
    chunk = b"data"
    response = client.post(
        f"{UPLOAD}/chunk",
        json={
            "upload_id": "x" * (5 * MiB),
            "chunk_index": 0,
            "chunk_data": base64.b64encode(chunk).decode(),
            "checksum": sha256_hex(chunk),
        },
    )

    assert_small_problem(response, 404, "upload-not-found")
    assert response.json()["detail"].startswith("no upload xxx")


@pytest.mark.parametrize(
    ("method", "path", "status", "slug"),
    [
        ("GET", f"{UPLOAD}/status/{LONG_PATH_ID}", 404, "upload-not-found"),
        ("PUT", f"{UPLOAD}/{LONG_PATH_ID}/chunks/0", 404, "upload-not-found"),
        ("PUT", f"{UPLOAD}/{LONG_PATH_ID}/chunks/not-a-number", 404, "not-found"),
        ("POST", f"{UPLOAD}/{LONG_PATH_ID}/batch", 404, "upload-not-found"),
        ("GET", f"/api/v1/files/{LONG_PATH_ID}", 404, "upload-not-found"),
        ("HEAD", f"/files/{LONG_PATH_ID}", 404, "upload-not-found"),
        ("GET", f"/problems/{LONG_PATH_ID}", 404, "not-found"),
    ],
)
def test_a_long_id_in_the_url_gets_a_small_error(
    client: httpx.Client, method: str, path: str, status: int, slug: str
) -> None:
    headers = {
        "Content-Type": "application/vnd.chunkstore.batch"
        if path.endswith("batch")
        else "application/octet-stream",
        "Tus-Resumable": "1.0.0",
    }
    response = client.request(method, path, content=b"", headers=headers)

    assert response.status_code == status, response.text
    if method == "HEAD":
        return  # no body to look at
    assert_small_problem(response, status, slug)
    assert len(response.json()["instance"]) < 300


def test_an_unknown_field_with_a_huge_name_gets_a_small_error(client: httpx.Client) -> None:
    name = "k" * (512 * KiB)
    response = client.post(
        f"{UPLOAD}/init",
        content=b'{"filename": "a.bin", "total_size": 1, "' + name.encode() + b'": 1}',
        headers={"Content-Type": "application/json"},
    )

    assert_small_problem(response, 400, "invalid-request")
    assert response.json()["errors"]  # still says what was wrong, in short


def test_a_huge_digest_gets_a_small_error(client: httpx.Client) -> None:
    response = client.post("/api/v1/chunks/missing", json={"digests": ["ab" * (256 * KiB)]})

    assert_small_problem(response, 400, "invalid-request")
    assert "abab" * 32 not in response.text


# -- deeply nested JSON ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"{UPLOAD}/init",
        f"{UPLOAD}/chunk",
        f"{UPLOAD}/complete",
        f"{UPLOAD}/cancel",
        "/api/v1/chunks/missing",
    ],
)
@pytest.mark.parametrize("prefix", [b"", b'{"upload_id": ', b'{"unknown": '])
def test_deeply_nested_json_is_a_400_on_every_json_route(
    client: httpx.Client, path: str, prefix: bytes
) -> None:
    response = client.post(
        path, content=prefix + b"[" * 10_000, headers={"Content-Type": "application/json"}
    )

    assert_small_problem(response, 400, "invalid-request")


def test_a_hundred_thousand_brackets_are_a_400(client: httpx.Client) -> None:
    response = client.post(
        f"{UPLOAD}/chunk", content=b"[" * 100_000, headers={"Content-Type": "application/json"}
    )

    assert_small_problem(response, 400, "invalid-request")


def test_nesting_within_the_limit_is_still_checked_as_usual(client: httpx.Client) -> None:
    answer = init_upload(client, b"abc", 3)
    response = client.post(
        f"{UPLOAD}/cancel",
        content=b'{"upload_id": "' + answer["upload_id"].encode() + b'", "reason": [[[]]]}',
        headers={"Content-Type": "application/json"},
    )

    assert_small_problem(response, 400, "invalid-request")


# -- request bodies: each route's limit, refused before the body is read ----------------


def raw_exchange(server: Server, head: str, body: bytes = b"") -> bytes:
    """Send a request by hand (headers may promise more body than is sent); the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not _whole(answer):
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    return answer


def _whole(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def problem_of(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head.lower(), head
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.mark.parametrize(
    ("path", "limit"),
    [
        (f"{UPLOAD}/complete", 16 * KiB),
        (f"{UPLOAD}/cancel", 16 * KiB),
        ("/api/v1/chunks/missing", 10_000 * 80 + 16 * KiB),
        (f"{UPLOAD}/chunk", 4 * ((64 * MiB + 2) // 3) + 16 * KiB),
        (f"{UPLOAD}/init", 10_000 * 128 + 64 * KiB),
        (f"{UPLOAD}/{'0' * 32}/chunk-list", 10_000 * 128 + 64 * KiB),
    ],
)
def test_a_body_over_the_routes_limit_is_refused_with_413_before_it_is_read(
    server: Server, owner: str, path: str, limit: int
) -> None:
    # The body is announced but never sent: only a refusal that reads nothing answers.
    answer = raw_exchange(
        server,
        f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {server.token(owner)}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n",
    )

    status, problem = problem_of(answer)
    assert status == 413
    assert problem["type"] == "/problems/too-large"
    assert problem["limit"] == limit
    assert str(limit) in str(problem["detail"])


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(client: httpx.Client) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"upload_id": "'
        for _ in range(64):
            yield b"x" * KiB

    response = client.post(
        f"{UPLOAD}/complete", content=body(), headers={"Content-Type": "application/json"}
    )

    body_of_problem = assert_problem(response, 413, "too-large")
    assert body_of_problem["limit"] == 16 * KiB


def test_a_control_route_still_takes_an_ordinary_body(client: httpx.Client) -> None:
    upload_id = init_upload(client, b"abc", 3)["upload_id"]
    response = client.post(f"{UPLOAD}/cancel", json={"upload_id": upload_id, "reason": "r" * 1000})

    assert response.status_code == 200, response.text


def test_a_chunked_batch_cut_off_at_its_limit_keeps_its_whole_frames(
    make_server: MakeServer,
) -> None:
    server = make_server(CHUNKSTORE_MAX_BATCH_SIZE=str(40 * KiB))
    with server.client() as client:
        data = os.urandom(64 * KiB)
        upload_id = init_upload(client, data, 8 * KiB)["upload_id"]

        def frames() -> Iterator[bytes]:  # chunked: no Content-Length to refuse early
            for index, piece in enumerate(split(data, 8 * KiB)):
                yield struct.pack(">II", index, len(piece)) + piece  # frame 4 passes 40 KiB

        response = client.post(
            f"{UPLOAD}/{upload_id}/batch",
            content=frames(),
            headers={"Content-Type": "application/vnd.chunkstore.batch"},
        )

        assert_problem(response, 413, "too-large")
        assert status_of(client, upload_id)["received_chunks"] == [0, 1, 2, 3]


# -- lists a client sends: each has a maximum -----------------------------------------


def test_more_digests_than_one_request_may_ask_about_is_a_413_naming_the_maximum(
    client: httpx.Client,
) -> None:
    digests = [blake3_hex(str(n).encode()) for n in range(10_001)]

    response = client.post("/api/v1/chunks/missing", json={"digests": digests})

    body = assert_problem(response, 413, "list-too-long")
    assert body["limit"] == 10_000
    assert client.post("/api/v1/chunks/missing", json={"digests": digests[:10_000]}).is_success


def test_a_tus_final_upload_naming_too_many_parts_is_refused(client: httpx.Client) -> None:
    parts = " ".join(f"/files/{n:032x}" for n in range(101))
    response = client.post(
        "/files/",
        headers={"Tus-Resumable": "1.0.0", "Upload-Concat": f"final;{parts}"},
    )

    body = assert_problem(response, 413, "list-too-long")
    assert body["limit"] == 100


# -- free text that reaches an event: each string has a maximum -----------------------


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("filename", "a" * 1025 + ".txt", 1024),
        ("mime_type", "text/" + "x" * 251, 255),
    ],
)
def test_init_refuses_a_string_over_its_bound_naming_the_bound(
    client: httpx.Client, field: str, value: str, limit: int
) -> None:
    body = {"filename": "a.txt", "total_size": 3, "mime_type": "text/plain", field: value}

    response = client.post(f"{UPLOAD}/init", json=body)

    problem = assert_problem(response, 400, "field-too-long")
    assert (problem["field"], problem["limit"]) == (field, limit)
    assert len(response.content) < SMALL_ANSWER


def test_a_cancel_reason_over_its_bound_is_refused_and_nothing_is_recorded(
    server: Server, client: httpx.Client
) -> None:
    upload_id = init_upload(client, b"abc", 3)["upload_id"]

    response = client.post(f"{UPLOAD}/cancel", json={"upload_id": upload_id, "reason": "r" * 1025})

    problem = assert_problem(response, 400, "field-too-long")
    assert problem["limit"] == 1024
    assert status_of(client, upload_id)["status"] == "active"
    assert [type(e).__name__ for e in recorded_events(server.data_dir, upload_id)] == [
        "UploadInitiated"
    ]


def test_a_cancel_reason_at_its_bound_is_kept(client: httpx.Client) -> None:
    upload_id = init_upload(client, b"abc", 3)["upload_id"]

    response = client.post(f"{UPLOAD}/cancel", json={"upload_id": upload_id, "reason": "r" * 1024})

    assert response.status_code == 200, response.text


def tus_metadata(**values: str) -> str:
    return ",".join(f"{key} {base64.b64encode(v.encode()).decode()}" for key, v in values.items())


@pytest.mark.parametrize(
    ("metadata", "field", "limit"),
    [
        (tus_metadata(filename="a.bin", note="n" * 4000), "Upload-Metadata", 4096),
        (tus_metadata(filename="a.bin", filetype="text/" + "x" * 300), "filetype", 255),
    ],
)
def test_tus_creation_refuses_metadata_over_its_bound_and_creates_nothing(
    server: Server, owner: str, metadata: str, field: str, limit: int
) -> None:
    with server.client(owner) as client:
        response = client.post(
            "/files/",
            headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3", "Upload-Metadata": metadata},
        )

        problem = assert_problem(response, 400, "field-too-long")
        assert (problem["field"], problem["limit"]) == (field, limit)
    assert sessions_of(server, owner) == []


def sessions_of(server: Server, owner: str) -> list[dict[str, object]]:
    store = SQLiteLog(server.data_dir / "chunkstore.sqlite3")
    try:
        return [row for row in store.session_rows() if row["owner"] == owner]
    finally:
        store.close()
