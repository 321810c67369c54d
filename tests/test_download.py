"""GET /api/v1/files/{upload_id}: a completed upload's bytes, whole or one range.

Every test runs against a server of each materialization: ``copy`` (a final file) and
``none`` (the bytes come from the chunks through the manifest)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import httpx
import pytest

from chunkstore import events
from chunkstore.testing import Server
from tests.helpers import (
    assert_problem,
    blake3_hex,
    cancel,
    complete,
    damage_blob,
    init_upload,
    put_chunk,
    recorded_events,
    sha256_hex,
    split,
    status_of,
    tiny_png,
    upload_whole,
)

KiB = 1024
FILES = "/api/v1/files"


@pytest.fixture(scope="module", params=["copy", "none"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server per materialization, shared by this module's tests."""
    mode = request.param
    env = {"CHUNKSTORE_MATERIALIZE": mode}
    instance = Server(tmp_path_factory.mktemp(f"download-{mode}") / "data", env).start()
    yield instance
    instance.stop()


def materialized(server: Server) -> bool:
    return server.env["CHUNKSTORE_MATERIALIZE"] == "copy"


def drop_final_file(server: Server, upload_id: str) -> None:
    """Remove an upload's final file (there is none without materialization)."""
    shutil.rmtree(server.data_dir / "files" / upload_id, ignore_errors=not materialized(server))


def completed_upload(client: httpx.Client, data: bytes, chunk_size: int = 4 * KiB) -> str:
    upload_id = upload_whole(client, data, chunk_size)
    response = complete(client, upload_id)
    assert response.status_code == 200, response.text
    return upload_id


@pytest.fixture
def upload(client: httpx.Client) -> tuple[str, bytes]:
    data = os.urandom(10 * KiB + 123)
    return completed_upload(client, data), data


def test_download_returns_the_whole_file_with_its_headers(
    client: httpx.Client, upload: tuple[str, bytes]
) -> None:
    upload_id, data = upload

    response = client.get(f"{FILES}/{upload_id}")

    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"] == f'"{sha256_hex(data)}"'
    assert response.headers["content-type"].startswith("application/octet-stream")


def test_download_content_type_is_the_detected_type(client: httpx.Client) -> None:
    png = tiny_png()
    upload_id = init_upload(client, png, KiB, filename="dot.png", mime_type="image/png")[
        "upload_id"
    ]
    assert put_chunk(client, upload_id, 0, png).status_code == 200
    assert complete(client, upload_id).status_code == 200

    response = client.get(f"{FILES}/{upload_id}")

    assert response.headers["content-type"].startswith("image/png")
    assert response.content == png


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=0-4095", 0, 4095),
        ("bytes=4095-4096", 4095, 4096),
        ("bytes=-1", -1, -1),
        ("bytes=-100", -100, -1),
        ("bytes=10000-", 10000, -1),
        ("bytes=10362-10362", 10362, 10362),
        ("bytes=100-999999", 100, -1),
        ("bytes=-999999", 0, -1),
    ],
)
def test_range_requests_are_byte_exact_at_the_edges(
    client: httpx.Client, upload: tuple[str, bytes], header: str, first: int, last: int
) -> None:
    upload_id, data = upload
    size = len(data)
    start, end = first % size, last % size

    response = client.get(f"{FILES}/{upload_id}", headers={"Range": header})

    assert response.status_code == 206
    assert response.content == data[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{size}"
    assert response.headers["content-length"] == str(end - start + 1)


@pytest.mark.parametrize("header", ["bytes=10363-", "bytes=20000-30000", "bytes=-0"])
def test_an_unsatisfiable_range_is_416_with_the_size(
    client: httpx.Client, upload: tuple[str, bytes], header: str
) -> None:
    upload_id, data = upload

    response = client.get(f"{FILES}/{upload_id}", headers={"Range": header})

    assert_problem(response, 416, "range-not-satisfiable")
    assert response.headers["content-range"] == f"bytes */{len(data)}"


def test_a_multi_range_request_gets_the_whole_file(
    client: httpx.Client, upload: tuple[str, bytes]
) -> None:
    upload_id, data = upload

    response = client.get(f"{FILES}/{upload_id}", headers={"Range": "bytes=0-1,5-9"})

    assert response.status_code == 200
    assert response.content == data


def test_if_range_with_another_etag_gets_the_whole_file(
    client: httpx.Client, upload: tuple[str, bytes]
) -> None:
    upload_id, data = upload

    response = client.get(
        f"{FILES}/{upload_id}", headers={"Range": "bytes=0-9", "If-Range": '"other"'}
    )

    assert response.status_code == 200
    assert response.content == data


def test_if_none_match_with_the_etag_is_304(
    client: httpx.Client, upload: tuple[str, bytes]
) -> None:
    upload_id, data = upload

    response = client.get(
        f"{FILES}/{upload_id}", headers={"If-None-Match": f'"{sha256_hex(data)}"'}
    )

    assert response.status_code == 304
    assert response.content == b""


def test_another_owners_file_is_404_like_a_missing_one(
    server: Server, upload: tuple[str, bytes]
) -> None:
    upload_id, _ = upload
    with server.client("mallory-download") as other:
        assert_problem(other.get(f"{FILES}/{upload_id}"), 404, "upload-not-found")
        assert_problem(other.get(f"{FILES}/{'0' * 32}"), 404, "upload-not-found")


def test_download_needs_a_token(server: Server, upload: tuple[str, bytes]) -> None:
    upload_id, _ = upload
    with server.client(None) as anonymous:
        assert_problem(anonymous.get(f"{FILES}/{upload_id}"), 401, "unauthorized")


def test_an_upload_not_completed_is_409(client: httpx.Client) -> None:
    data = os.urandom(3 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]

    body = assert_problem(client.get(f"{FILES}/{upload_id}"), 409, "file-not-ready")

    assert body["status"] == 409


def test_without_the_final_file_bytes_come_from_the_chunks(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(9 * KiB + 7)
    upload_id = completed_upload(client, data, chunk_size=2 * KiB)
    drop_final_file(server, upload_id)

    whole = client.get(f"{FILES}/{upload_id}")
    middle = client.get(f"{FILES}/{upload_id}", headers={"Range": "bytes=2047-6144"})
    tail = client.get(f"{FILES}/{upload_id}", headers={"Range": "bytes=-3"})

    assert whole.status_code == 200 and whole.content == data
    assert blake3_hex(whole.content) == blake3_hex(data)
    assert middle.status_code == 206 and middle.content == data[2047:6145]
    assert tail.status_code == 206 and tail.content == data[-3:]


def test_an_empty_file_downloads_as_zero_bytes(client: httpx.Client) -> None:
    upload_id = init_upload(client, b"", KiB)["upload_id"]
    assert complete(client, upload_id).status_code == 200

    whole = client.get(f"{FILES}/{upload_id}")
    ranged = client.get(f"{FILES}/{upload_id}", headers={"Range": "bytes=0-"})

    assert whole.status_code == 200 and whole.content == b""
    assert_problem(ranged, 416, "range-not-satisfiable")


def read_download(client: httpx.Client, url: str, **headers: str) -> tuple[int, bytes, bool]:
    """(status, the body bytes that arrived, whether the body ended as announced)."""
    received = bytearray()
    try:
        with client.stream("GET", url, headers=headers) as response:
            for piece in response.iter_bytes():
                received += piece
    except httpx.TransportError:
        return response.status_code, bytes(received), False
    return response.status_code, bytes(received), True


def damaged_download(server: Server, client: httpx.Client, data: bytes, damaged: int) -> str:
    """A completed upload in 2 KiB chunks whose final file is gone and whose chunk
    ``damaged`` has one byte flipped on disk; returns its download URL."""
    upload_id = completed_upload(client, data, chunk_size=2 * KiB)
    drop_final_file(server, upload_id)
    damage_blob(server.data_dir, blake3_hex(split(data, 2 * KiB)[damaged]), 1000)
    return f"{FILES}/{upload_id}"


@pytest.mark.parametrize("damaged", [2, 4], ids=["middle-chunk", "last-chunk"])
def test_a_damaged_chunk_cuts_the_body_short_before_any_of_its_bytes(
    server: Server, client: httpx.Client, damaged: int
) -> None:
    data = os.urandom(9 * KiB + 7)
    url = damaged_download(server, client, data, damaged)

    status, received, whole = read_download(client, url)

    assert status == 200  # sent with the first chunk's bytes, which were sound
    assert not whole
    assert received == data[: damaged * 2 * KiB]


def test_a_damaged_first_chunk_is_a_corrupt_blob_problem(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(9 * KiB + 7)
    url = damaged_download(server, client, data, 0)

    assert_problem(client.get(url), 500, "corrupt-blob")


def test_a_range_inside_a_damaged_chunk_is_a_corrupt_blob_problem(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(9 * KiB + 7)
    url = damaged_download(server, client, data, -1)

    assert_problem(client.get(url, headers={"Range": "bytes=-3"}), 500, "corrupt-blob")


# -- deleting a completed upload -------------------------------------------------------------


def test_deleting_a_completed_upload_removes_its_file_and_answers_204(
    server: Server, client: httpx.Client, upload: tuple[str, bytes]
) -> None:
    upload_id, _ = upload
    final = server.data_dir / "files" / upload_id / "file.bin"
    assert final.exists() == materialized(server)

    response = client.delete(f"{FILES}/{upload_id}")

    assert response.status_code == 204
    assert not final.exists()
    assert not final.parent.exists()
    assert status_of(client, upload_id)["status"] == "deleted"
    assert_problem(client.get(f"{FILES}/{upload_id}"), 404, "upload-not-found")
    assert isinstance(recorded_events(server.data_dir, upload_id)[-1], events.UploadDeleted)


def test_deleting_twice_answers_404_the_second_time(
    client: httpx.Client, upload: tuple[str, bytes]
) -> None:
    upload_id, _ = upload
    assert client.delete(f"{FILES}/{upload_id}").status_code == 204

    assert_problem(client.delete(f"{FILES}/{upload_id}"), 404, "upload-not-found")


def test_another_owners_or_a_missing_upload_cannot_be_deleted(
    server: Server, client: httpx.Client, upload: tuple[str, bytes]
) -> None:
    upload_id, data = upload
    with server.client("mallory") as stranger:
        assert_problem(stranger.delete(f"{FILES}/{upload_id}"), 404, "upload-not-found")
    assert_problem(client.delete(f"{FILES}/{'0' * 32}"), 404, "upload-not-found")
    assert client.get(f"{FILES}/{upload_id}").content == data


def test_an_unfinished_upload_is_not_deleted_but_cancelled(client: httpx.Client) -> None:
    upload_id = init_upload(client, os.urandom(2 * KiB), KiB)["upload_id"]

    assert_problem(client.delete(f"{FILES}/{upload_id}"), 409, "upload-not-active")

    assert status_of(client, upload_id)["status"] == "active"


def test_a_completed_upload_cannot_be_cancelled_and_says_to_delete_it(
    client: httpx.Client, upload: tuple[str, bytes]
) -> None:
    upload_id, _ = upload

    body = assert_problem(cancel(client, upload_id), 409, "upload-not-active")

    assert "delete it instead" in body["detail"]


def test_options_on_a_file_url_lists_get_and_delete(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        answer = anonymous.options("/api/v1/files/0123456789abcdef")

    assert answer.status_code == 204
    assert set(answer.headers["Allow"].replace(" ", "").split(",")) == {"DELETE", "GET", "OPTIONS"}


def test_an_empty_file_is_served_as_octet_stream_not_as_libmagic_names_it(
    server: Server,
) -> None:
    tus_headers = {"Tus-Resumable": "1.0.0"}
    with server.client("empty-download") as client:
        created = client.post("/files/", headers={**tus_headers, "Upload-Length": "0"})
        assert created.status_code == 201
        answer = client.get(created.headers["Location"])

    assert answer.status_code == 200
    assert answer.content == b""
    assert answer.headers["Content-Type"] == "application/octet-stream"
