"""Clients that go silent: every request body has an idle deadline, and what a stalled
request held (a temp file, the tus upload's lock) is released. Real servers, raw sockets
playing the silent clients."""

from __future__ import annotations

import base64
import hashlib
import os
import struct

import pytest

from chunkstore.config import Settings
from chunkstore.testing import MakeServer, Server
from tests.helpers import (
    PROBLEM_JSON,
    UPLOAD,
    RawAnswer,
    init_upload,
    read_answer_and_close,
    start_request,
    status_of,
    stored_objects,
    temp_files,
    upload_locked,
    wait_for,
)
from tests.test_tus import OFFSET_BODY, create, final_bytes, offset_of, send

MiB = 1024 * 1024
BATCH_MEDIA_TYPE = "application/vnd.chunkstore.batch"


def request_head(method: str, path: str, token_header: str, length: int, **headers: str) -> str:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: {token_header}",
        f"Content-Length: {length}",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def assert_request_timeout(answer: RawAnswer) -> None:
    assert answer.status == 408, answer
    assert answer.headers["content-type"].startswith(PROBLEM_JSON)
    assert answer.json()["type"] == "/problems/request-timeout"
    assert answer.headers["connection"] == "close"


@pytest.fixture
def impatient(make_server: MakeServer) -> Server:
    """A server that waits one second for the next piece of a body."""
    return make_server(CHUNKSTORE_BODY_IDLE_TIMEOUT="1")


def test_a_silent_tus_patch_releases_the_upload_and_keeps_the_bytes_that_arrived(
    impatient: Server,
) -> None:
    data = os.urandom(MiB)
    sent = 300_000
    with impatient.client("alice") as client:
        url = create(client, len(data))
        head = request_head(
            "PATCH", url, client.headers["Authorization"], len(data),
            Tus_Resumable="1.0.0", Content_Type=OFFSET_BODY["Content-Type"], Upload_Offset="0",
        )  # fmt: skip
        with start_request(impatient.port, head, data[:sent]) as silent:
            # The client neither sends nor closes: the server gives up on it.
            assert_request_timeout(read_answer_and_close(silent))
            # Another connection finds the upload free, with every byte that arrived.
            assert offset_of(client, url) == sent
            answer = send(client, url, sent, data[sent:])
            assert answer.status_code == 204, answer.text
        assert final_bytes(impatient, client, url) == data


def test_a_silent_tus_patch_with_a_checksum_keeps_nothing(impatient: Server) -> None:
    data = os.urandom(MiB)
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    with impatient.client("alice") as client:
        url = create(client, len(data))
        head = request_head(
            "PATCH", url, client.headers["Authorization"], len(data),
            Tus_Resumable="1.0.0", Content_Type=OFFSET_BODY["Content-Type"], Upload_Offset="0",
            Upload_Checksum=f"sha256 {digest}",
        )  # fmt: skip
        with start_request(impatient.port, head, data[:300_000]) as silent:
            assert_request_timeout(read_answer_and_close(silent))
            assert offset_of(client, url) == 0
            assert send(client, url, 0, data).status_code == 204
        assert final_bytes(impatient, client, url) == data


def test_a_silent_raw_put_leaves_no_temp_file_and_stores_nothing(impatient: Server) -> None:
    chunk = os.urandom(MiB)
    with impatient.client("alice") as client:
        upload_id = init_upload(client, chunk, len(chunk))["upload_id"]
        head = request_head(
            "PUT", f"{UPLOAD}/{upload_id}/chunks/0", client.headers["Authorization"], len(chunk),
            Content_Type="application/octet-stream",
        )  # fmt: skip
        with start_request(impatient.port, head, chunk[:100_000]) as silent:
            assert_request_timeout(read_answer_and_close(silent))
            assert temp_files(impatient.data_dir) == []
            assert stored_objects(impatient.data_dir) == set()
            assert status_of(client, upload_id)["received_chunks"] == []


def test_a_silent_batch_keeps_its_whole_frames(impatient: Server) -> None:
    pieces = [os.urandom(64 * 1024) for _ in range(3)]
    frames = [struct.pack(">II", index, len(piece)) + piece for index, piece in enumerate(pieces)]
    with impatient.client("alice") as client:
        upload_id = init_upload(client, b"".join(pieces), 64 * 1024)["upload_id"]
        head = request_head(
            "POST", f"{UPLOAD}/{upload_id}/batch", client.headers["Authorization"],
            sum(map(len, frames)), Content_Type=BATCH_MEDIA_TYPE,
        )  # fmt: skip
        body = frames[0] + frames[1] + frames[2][:1000]
        with start_request(impatient.port, head, body) as silent:
            assert_request_timeout(read_answer_and_close(silent))
            status = status_of(client, upload_id)
            assert status["received_chunks"] == [0, 1]
            assert status["missing_chunks"] == [2]


def test_a_silent_json_body_is_timed_out_too(impatient: Server) -> None:
    """Litestar reads JSON bodies itself: the same deadline covers it."""
    with impatient.client("alice") as client:
        head = request_head(
            "POST", f"{UPLOAD}/init", client.headers["Authorization"], 200,
            Content_Type="application/json",
        )  # fmt: skip
        with start_request(impatient.port, head, b'{"filename": "a.bin", ') as silent:
            assert_request_timeout(read_answer_and_close(silent))


def test_a_silent_creation_with_upload_answers_408_with_its_location(impatient: Server) -> None:
    data = os.urandom(300_000)
    with impatient.client("alice") as client:
        head = request_head(
            "POST", "/files/", client.headers["Authorization"], len(data),
            Tus_Resumable="1.0.0", Content_Type=OFFSET_BODY["Content-Type"],
            Upload_Length=str(len(data)),
        )  # fmt: skip
        with start_request(impatient.port, head, data[:100_000]) as silent:
            answer = read_answer_and_close(silent)
        assert_request_timeout(answer)
        url = answer.headers["location"]
        assert answer.headers["upload-offset"] == "100000"
        assert offset_of(client, url) == 100_000
        assert send(client, url, 100_000, data[100_000:]).status_code == 204
        assert final_bytes(impatient, client, url) == data


def test_a_busy_upload_answers_423_with_retry_after(make_server: MakeServer) -> None:
    server = make_server()
    data = os.urandom(6 * MiB)
    with server.client("alice") as client:
        url = create(client, len(data))
        head = request_head(
            "PATCH", url, client.headers["Authorization"], len(data),
            Tus_Resumable="1.0.0", Content_Type=OFFSET_BODY["Content-Type"], Upload_Offset="0",
        )  # fmt: skip
        # The PATCH takes the upload's lock before it reads the body, and stays silent.
        with start_request(server.port, head, data[: 5 * MiB]):
            wait_for(
                lambda: upload_locked(server.data_dir, url.rsplit("/", 1)[-1]), "the PATCH's lock"
            )
            locked = send(client, url, 0, b"")
    assert locked.status_code == 423, locked.text
    assert locked.headers["Content-Type"].startswith(PROBLEM_JSON)
    assert locked.json()["type"] == "/problems/upload-locked"
    assert 1 <= int(locked.headers["Retry-After"]) <= 10


def test_the_body_idle_timeout_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNKSTORE_BODY_IDLE_TIMEOUT", "0")
    with pytest.raises(ValueError, match="CHUNKSTORE_BODY_IDLE_TIMEOUT"):
        Settings.from_env()
    monkeypatch.setenv("CHUNKSTORE_BODY_IDLE_TIMEOUT", "2.5")
    assert Settings.from_env().body_idle_timeout == 2.5
