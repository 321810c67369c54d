"""Bounds on what a client sends and on what the server answers, over real HTTP."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.helpers import UPLOAD, assert_problem, init_upload, sha256_hex

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
    assert "characters" in response.json()["detail"]


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
