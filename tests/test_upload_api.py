"""The HTTP API, spoken to a real ``chunkstore serve`` process over 127.0.0.1."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from chunkstore.eventlog.sqlite import SQLiteLog
from chunkstore.events import ChunkStored, ValidationFailed
from chunkstore.projections import session_row
from chunkstore.session import SessionState, replay
from chunkstore.testing import MakeServer, Server
from chunkstore.tokens.sqlite import SQLiteTokens
from tests.helpers import (
    OCTET_STREAM,
    UPLOAD,
    all_stream_ids,
    assert_problem,
    blake3_hex,
    cancel,
    complete,
    init_upload,
    is_stored,
    post_chunk,
    put_chunk,
    recorded_events,
    sha256_hex,
    split,
    status_of,
    stored_copy,
    stored_objects,
    temp_files,
    tiny_png,
    upload_whole,
)

KiB = 1024


def final_bytes(server: Server, file_path: str) -> bytes:
    return (server.data_dir / file_path).read_bytes()


def _access_log_entries(server: Server, request_id: str) -> list[dict[str, object]]:
    """The server's access log lines for one request id."""
    entries = []
    for line in server.log().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # granian's own lines, or a line still being written
    return [
        entry
        for entry in entries
        if isinstance(entry, dict)
        and entry.get("request_id") == request_id
        and entry.get("logger") == "chunkstore.access"
    ]


def _access_log_entry(server: Server, request_id: str) -> dict[str, object]:
    (entry,) = _access_log_entries(server, request_id)
    return entry


# -- init ------------------------------------------------------------------------------


def test_init_returns_an_id_the_chunk_count_and_an_expiry_about_a_day_ahead(
    client: httpx.Client,
) -> None:
    before = datetime.now(UTC)
    response = client.post(
        f"{UPLOAD}/init",
        json={
            "filename": "report.pdf",
            "total_size": 10 * KiB + 1,
            "mime_type": "application/pdf",
            "chunk_size": KiB,
        },
    )
    after = datetime.now(UTC)

    assert response.status_code == 201
    answer = response.json()
    assert uuid.UUID(answer["upload_id"])
    assert answer["status"] == "active"
    assert answer["filename"] == "report.pdf"
    assert answer["total_chunks"] == 11
    assert answer["missing_chunks"] == list(range(11))
    expires_at = datetime.fromisoformat(answer["expires_at"])
    assert before + timedelta(hours=24) <= expires_at <= after + timedelta(hours=24)


def test_init_uses_the_default_chunk_size_when_none_is_given(client: httpx.Client) -> None:
    response = client.post(f"{UPLOAD}/init", json={"filename": "a.bin", "total_size": 100})

    assert response.status_code == 201
    assert response.json()["chunk_size"] == 8 * 1024 * 1024
    assert response.json()["total_chunks"] == 1


def test_init_refuses_a_total_chunks_that_does_not_match_the_sizes(client: httpx.Client) -> None:
    response = client.post(
        f"{UPLOAD}/init",
        json={"filename": "a.bin", "total_size": 10 * KiB, "chunk_size": KiB, "total_chunks": 3},
    )

    assert_problem(response, 400, "invalid-request")


def test_init_gives_each_upload_its_own_id(client: httpx.Client) -> None:
    data = os.urandom(100)

    first = init_upload(client, data, KiB)["upload_id"]
    second = init_upload(client, data, KiB)["upload_id"]

    assert first != second


@pytest.mark.parametrize(
    "filename",
    ["../../etc/passwd", "a/b", "..", "", "x\u0000y", "shell.php.jpg", "evil.exe", ".htaccess"],
    ids=["traversal", "separator", "dotdot", "empty", "nul", "inner-php", "exe", "htaccess"],
)
def test_init_refuses_an_unsafe_filename(client: httpx.Client, filename: str) -> None:
    response = client.post(
        f"{UPLOAD}/init", json={"filename": filename, "total_size": 10, "chunk_size": KiB}
    )

    assert_problem(response, 400, "invalid-filename")


@pytest.mark.parametrize(
    "filename",
    ["x\u202egnp.js", "x.exe\u200b", "a\u2215b.txt", "invoice\u2024exe"],
    ids=["bidi-override", "zero-width-space", "division-slash", "one-dot-leader"],
)
def test_init_refuses_a_filename_that_reads_as_something_it_is_not(
    client: httpx.Client, filename: str
) -> None:
    response = client.post(
        f"{UPLOAD}/init", json={"filename": filename, "total_size": 10, "chunk_size": KiB}
    )

    assert_problem(response, 400, "invalid-filename")


def test_init_accepts_an_ordinary_filename_with_spaces_and_unicode(client: httpx.Client) -> None:
    answer = init_upload(client, os.urandom(10), KiB, filename="Résumé 2024 (final).pdf")

    assert answer["filename"] == "Résumé 2024 (final).pdf"


@pytest.mark.parametrize(
    "body",
    [
        {"filename": "a.bin", "total_size": 10, "surprise": True},
        {"filename": "a.bin", "total_size": 10, "chunk_size": KiB, "chunk_sise": KiB},
    ],
    ids=["unknown-field", "misspelt-field"],
)
def test_init_refuses_unknown_fields(client: httpx.Client, body: dict[str, object]) -> None:
    response = client.post(f"{UPLOAD}/init", json=body)

    assert_problem(response, 400, "invalid-request")


@pytest.mark.parametrize(
    "body",
    [
        {"filename": "a.bin", "total_size": "ten"},
        {"filename": 123, "total_size": 10},
        {"filename": "a.bin", "total_size": 10, "chunk_size": [1]},
        {"filename": "a.bin"},
        {"filename": "a.bin", "total_size": -1},
        {"filename": "a.bin", "total_size": 10, "chunk_size": 0},
        {"filename": "a.bin", "total_size": 10, "chunk_size": -5},
        {"filename": "a.bin", "total_size": 10, "file_hash": "not-a-hash"},
        ["filename", "a.bin"],
    ],
    ids=[
        "size-string",
        "name-number",
        "chunk-size-list",
        "size-missing",
        "size-negative",
        "chunk-size-zero",
        "chunk-size-negative",
        "bad-hash",
        "array",
    ],
)
def test_init_refuses_wrong_types_and_values_with_a_400_problem(
    client: httpx.Client, body: object
) -> None:
    response = client.post(f"{UPLOAD}/init", json=body)

    assert_problem(response, 400, "invalid-request")


def test_init_refuses_malformed_json_with_a_400_problem(client: httpx.Client) -> None:
    response = client.post(
        f"{UPLOAD}/init", content=b"{not json", headers={"Content-Type": "application/json"}
    )

    assert_problem(response, 400, "invalid-request")


def test_init_refuses_a_file_larger_than_the_limit_with_413(client: httpx.Client) -> None:
    response = client.post(
        f"{UPLOAD}/init", json={"filename": "huge.bin", "total_size": 64 * 1024**3 + 1}
    )

    body = assert_problem(response, 413, "too-large")
    assert body["limit"] == 64 * 1024**3


def test_init_honours_a_configured_file_size_limit(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_MAX_FILE_SIZE="1000")
    with server.client("limited") as client:
        refused = client.post(f"{UPLOAD}/init", json={"filename": "a.bin", "total_size": 1001})
        accepted = client.post(f"{UPLOAD}/init", json={"filename": "a.bin", "total_size": 1000})

    assert_problem(refused, 413, "too-large")
    assert accepted.status_code == 201


def test_init_refuses_a_chunk_size_above_the_limit_with_413(client: httpx.Client) -> None:
    response = client.post(
        f"{UPLOAD}/init",
        json={"filename": "a.bin", "total_size": 100, "chunk_size": 64 * 1024 * 1024 + 1},
    )

    assert_problem(response, 413, "too-large")


def test_too_many_open_sessions_are_refused_with_429(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_MAX_OPEN_SESSIONS="2")
    with server.client("busy") as client:
        init_upload(client, os.urandom(10), KiB)
        init_upload(client, os.urandom(10), KiB)
        response = client.post(f"{UPLOAD}/init", json={"filename": "c.bin", "total_size": 10})

    body = assert_problem(response, 429, "too-many-sessions")
    assert body["limit"] == 2


def test_the_open_session_limit_counts_each_owner_separately(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_MAX_OPEN_SESSIONS="1")
    with server.client("first") as first, server.client("second") as second:
        init_upload(first, os.urandom(10), KiB)
        response = second.post(f"{UPLOAD}/init", json={"filename": "b.bin", "total_size": 10})

    assert response.status_code == 201


def test_a_completed_upload_frees_its_open_session_slot(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_MAX_OPEN_SESSIONS="1")
    with server.client("finisher") as client:
        upload_id = upload_whole(client, os.urandom(100), KiB)
        assert complete(client, upload_id).status_code == 200
        response = client.post(f"{UPLOAD}/init", json={"filename": "b.bin", "total_size": 10})

    assert response.status_code == 201


# -- chunks: the JSON (base64) transport ------------------------------------------------


def test_a_chunk_with_its_sha256_is_stored_over_the_json_endpoint(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(3 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]

    response = post_chunk(client, upload_id, 1, data[KiB : 2 * KiB])

    assert response.status_code == 200, response.text
    receipt = response.json()
    assert receipt["chunk_index"] == 1
    assert receipt["stored"] is True
    assert receipt["size"] == KiB
    assert receipt["digest"] == blake3_hex(data[KiB : 2 * KiB])
    assert stored_copy(server.data_dir, data[KiB : 2 * KiB]) == data[KiB : 2 * KiB]


def test_status_lists_the_received_chunks(client: httpx.Client) -> None:
    data = os.urandom(5 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]
    pieces = split(data, KiB)

    for index in (3, 0):
        assert post_chunk(client, upload_id, index, pieces[index]).status_code == 200

    assert status_of(client, upload_id)["received_chunks"] == [0, 3]


def test_status_lists_the_missing_chunks(client: httpx.Client) -> None:
    data = os.urandom(5 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]
    pieces = split(data, KiB)

    for index in (1, 4):
        assert post_chunk(client, upload_id, index, pieces[index]).status_code == 200

    assert status_of(client, upload_id)["missing_chunks"] == [0, 2, 3]


def test_status_reports_progress_as_a_percentage_of_bytes(client: httpx.Client) -> None:
    data = os.urandom(4 * KiB)  # four chunks of 1 KiB
    upload_id = init_upload(client, data, KiB)["upload_id"]
    assert status_of(client, upload_id)["percentage"] == 0

    assert post_chunk(client, upload_id, 2, data[2 * KiB : 3 * KiB]).status_code == 200
    assert status_of(client, upload_id)["percentage"] == 25.0
    assert post_chunk(client, upload_id, 0, data[:KiB]).status_code == 200
    status = status_of(client, upload_id)

    assert status["percentage"] == 50.0
    assert status["progress"]["percentage"] == 50.0
    assert status["bytes_received"] == 2 * KiB


def test_progress_counts_bytes_so_a_short_last_chunk_counts_less(client: httpx.Client) -> None:
    data = os.urandom(KiB + 24)  # a full chunk and a 24-byte last chunk
    upload_id = init_upload(client, data, KiB)["upload_id"]

    assert post_chunk(client, upload_id, 1, data[KiB:]).status_code == 200

    assert status_of(client, upload_id)["percentage"] == round(100 * 24 / (KiB + 24), 2)


def test_a_corrupted_chunk_is_refused_and_nothing_is_recorded(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]
    before = status_of(client, upload_id)
    objects_before = stored_objects(server.data_dir)
    damaged = bytes([data[0] ^ 0xFF]) + data[1:KiB]

    response = post_chunk(client, upload_id, 0, damaged, checksum=sha256_hex(data[:KiB]))

    assert_problem(response, 400, "checksum-mismatch")
    assert status_of(client, upload_id) == before
    assert stored_objects(server.data_dir) == objects_before
    assert not is_stored(server.data_dir, damaged)
    events = recorded_events(server.data_dir, upload_id)
    assert not any(isinstance(event, ChunkStored) for event in events)


def test_malformed_base64_is_refused_with_400(server: Server, client: httpx.Client) -> None:
    data = os.urandom(KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]

    response = client.post(
        f"{UPLOAD}/chunk",
        json={
            "upload_id": upload_id,
            "chunk_index": 0,
            "chunk_data": "this is *not* base64!",
            "checksum": sha256_hex(data),
        },
    )

    assert_problem(response, 400, "invalid-request")
    assert status_of(client, upload_id)["received_chunks"] == []


def test_a_json_chunk_of_the_wrong_size_is_refused_with_400(client: httpx.Client) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]

    response = post_chunk(client, upload_id, 0, data[: KiB - 1])

    assert_problem(response, 400, "chunk-size-mismatch")
    assert status_of(client, upload_id)["received_chunks"] == []


def test_a_chunk_index_outside_the_upload_is_refused_with_400(client: httpx.Client) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]

    response = post_chunk(client, upload_id, 2, data[:KiB])

    assert_problem(response, 400, "chunk-index-out-of-range")


@pytest.mark.parametrize("route", ["raw", "json", "batch"])
def test_chunks_by_index_for_a_tus_upload_are_refused_and_store_nothing(
    server: Server, client: httpx.Client, route: str
) -> None:
    created = client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "100"})
    assert created.status_code == 201, created.text
    upload_id = created.headers["Location"].rsplit("/", 1)[-1]
    data = os.urandom(100)
    objects_before = stored_objects(server.data_dir)

    if route == "raw":
        answer = put_chunk(client, upload_id, 0, data)
    elif route == "json":
        answer = post_chunk(client, upload_id, 0, data)
    else:
        answer = client.post(
            f"{UPLOAD}/{upload_id}/batch",
            content=struct.pack(">II", 0, len(data)) + data,
            headers={"Content-Type": "application/vnd.chunkstore.batch"},
        )

    assert_problem(answer, 409, "not-a-chunk-upload")
    assert [type(e).__name__ for e in recorded_events(server.data_dir, upload_id)] == [
        "TusUploadCreated"
    ]
    assert stored_objects(server.data_dir) == objects_before


def test_resending_the_same_chunk_succeeds_and_records_it_once(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]

    first = post_chunk(client, upload_id, 0, data[:KiB])
    second = post_chunk(client, upload_id, 0, data[:KiB])
    third = put_chunk(client, upload_id, 0, data[:KiB])

    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 200)
    assert first.json()["stored"] is True
    assert second.json()["stored"] is False
    assert third.json()["stored"] is False
    stored = [e for e in recorded_events(server.data_dir, upload_id) if isinstance(e, ChunkStored)]
    assert stored == [ChunkStored(index=0, digest=blake3_hex(data[:KiB]), size=KiB)]
    assert status_of(client, upload_id)["received_chunks"] == [0]


def test_the_same_index_with_other_bytes_is_a_409_conflict(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]
    assert put_chunk(client, upload_id, 0, data[:KiB]).status_code == 200
    other = os.urandom(KiB)

    response = put_chunk(client, upload_id, 0, other)

    assert_problem(response, 409, "chunk-conflict")
    assert not is_stored(server.data_dir, other)
    stored = [e for e in recorded_events(server.data_dir, upload_id) if isinstance(e, ChunkStored)]
    assert [e.digest for e in stored] == [blake3_hex(data[:KiB])]


# -- chunks: the raw (octet-stream) transport ------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "blake3"])
def test_a_raw_chunk_with_a_correct_checksum_header_is_stored(
    client: httpx.Client, algorithm: str
) -> None:
    data = os.urandom(KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]
    digest = sha256_hex(data) if algorithm == "sha256" else blake3_hex(data)

    response = put_chunk(client, upload_id, 0, data, {"X-Chunk-Checksum": f"{algorithm}={digest}"})

    assert response.status_code == 200, response.text
    assert response.json()["stored"] is True


@pytest.mark.parametrize("algorithm", ["sha256", "blake3"])
def test_a_raw_chunk_with_a_wrong_checksum_header_is_refused_and_not_stored(
    server: Server, client: httpx.Client, algorithm: str
) -> None:
    data = os.urandom(KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]
    other = os.urandom(KiB)
    wrong = sha256_hex(other) if algorithm == "sha256" else blake3_hex(other)

    response = put_chunk(client, upload_id, 0, data, {"X-Chunk-Checksum": f"{algorithm}={wrong}"})

    assert_problem(response, 400, "checksum-mismatch")
    assert not is_stored(server.data_dir, data)
    assert status_of(client, upload_id)["received_chunks"] == []


def test_a_malformed_checksum_header_is_refused_with_400(client: httpx.Client) -> None:
    data = os.urandom(KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]

    response = put_chunk(client, upload_id, 0, data, {"X-Chunk-Checksum": "md5=abc"})

    assert_problem(response, 400, "invalid-request")
    assert status_of(client, upload_id)["received_chunks"] == []


def test_a_raw_chunk_with_the_wrong_content_type_is_refused_with_415(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]

    response = client.put(
        f"{UPLOAD}/{upload_id}/chunks/0", content=data, headers={"Content-Type": "text/plain"}
    )

    assert_problem(response, 415, "unsupported-media-type")
    assert not is_stored(server.data_dir, data)
    assert status_of(client, upload_id)["received_chunks"] == []


def test_a_raw_body_declared_larger_than_the_chunk_is_refused_with_413(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]
    too_big = os.urandom(KiB + 1)

    response = put_chunk(client, upload_id, 0, too_big)

    assert_problem(response, 413, "chunk-too-large")
    assert not is_stored(server.data_dir, too_big)
    assert status_of(client, upload_id)["received_chunks"] == []


def test_a_streamed_raw_body_larger_than_the_chunk_is_refused_with_413(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]
    pieces = [os.urandom(KiB), os.urandom(KiB)]

    def body() -> Iterator[bytes]:
        yield from pieces  # no Content-Length: sent chunked, so only the bytes tell

    response = client.put(f"{UPLOAD}/{upload_id}/chunks/0", content=body(), headers=OCTET_STREAM)

    assert_problem(response, 413, "chunk-too-large")
    assert not is_stored(server.data_dir, b"".join(pieces))
    assert status_of(client, upload_id)["received_chunks"] == []


def test_a_raw_body_shorter_than_the_chunk_is_refused_with_400(client: httpx.Client) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]

    response = put_chunk(client, upload_id, 0, data[: KiB // 2])

    assert_problem(response, 400, "chunk-size-mismatch")
    assert status_of(client, upload_id)["received_chunks"] == []


def test_a_negative_chunk_index_is_refused_with_400(client: httpx.Client) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]

    response = put_chunk(client, upload_id, -1, data[:KiB])

    assert_problem(response, 400, "chunk-index-out-of-range")


def test_the_connection_stays_usable_after_a_refused_unread_body(client: httpx.Client) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]
    assert_problem(put_chunk(client, upload_id, 0, os.urandom(512 * KiB)), 413, "chunk-too-large")

    response = put_chunk(client, upload_id, 1, data[KiB:])

    assert response.status_code == 200, response.text
    assert status_of(client, upload_id)["received_chunks"] == [1]


class _ClientGaveUp(Exception):
    pass


def test_a_client_that_disconnects_mid_chunk_leaves_nothing_behind(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(4 * 1024 * KiB)
    upload_id = init_upload(client, data, len(data))["upload_id"]
    objects_before = stored_objects(server.data_dir)

    def three_quarters_then_give_up() -> Iterator[bytes]:
        yield data[: 3 * 1024 * KiB]
        raise _ClientGaveUp

    request_id = f"quitter-{uuid.uuid4().hex}"

    with pytest.raises(_ClientGaveUp):
        client.put(
            f"{UPLOAD}/{upload_id}/chunks/0",
            content=three_quarters_then_give_up(),
            headers={
                **OCTET_STREAM,
                "Content-Length": str(len(data)),
                "X-Request-ID": request_id,
            },
        )
    # The access log line is written once the server has finished with the request.
    deadline = time.monotonic() + 30
    while not _access_log_entries(server, request_id) and time.monotonic() < deadline:
        time.sleep(0.02)

    assert _access_log_entry(server, request_id)["status"] == 400
    assert temp_files(server.data_dir) == []
    assert stored_objects(server.data_dir) == objects_before
    assert status_of(client, upload_id)["received_chunks"] == []
    assert put_chunk(client, upload_id, 0, data).status_code == 200


# -- authentication and isolation --------------------------------------------------------


def test_a_request_without_a_token_is_refused_with_401_and_a_challenge(server: Server) -> None:
    with server.client(owner=None) as anonymous:
        response = anonymous.get(f"{UPLOAD}/status/{uuid.uuid4().hex}")

    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].lower().startswith("bearer")


def test_a_request_with_a_wrong_token_is_refused_with_401(server: Server) -> None:
    with server.client(owner=None, headers={"Authorization": "Bearer cs_wrong"}) as client:
        response = client.post(f"{UPLOAD}/init", json={"filename": "a.bin", "total_size": 1})

    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].lower().startswith("bearer")


def test_a_request_with_a_non_bearer_scheme_is_refused_with_401(server: Server) -> None:
    with server.client(owner=None, auth=("alice", "secret")) as client:
        response = client.post(f"{UPLOAD}/init", json={"filename": "a.bin", "total_size": 1})

    assert_problem(response, 401, "unauthorized")


def test_a_revoked_token_is_refused_with_401(server: Server, owner: str) -> None:
    token = server.token(owner)
    SQLiteTokens(server.data_dir / "chunkstore.sqlite3").revoke(token)
    with server.client(owner=None, headers={"Authorization": f"Bearer {token}"}) as client:
        response = client.post(f"{UPLOAD}/init", json={"filename": "a.bin", "total_size": 1})

    assert_problem(response, 401, "unauthorized")


def test_an_unauthenticated_chunk_stores_no_byte_and_no_event(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(64 * KiB)
    upload_id = init_upload(client, data, 64 * KiB)["upload_id"]
    events_before = recorded_events(server.data_dir, upload_id)
    objects_before = stored_objects(server.data_dir)

    with server.client(owner=None, headers={"Authorization": "Bearer cs_wrong"}) as intruder:
        response = put_chunk(intruder, upload_id, 0, data)

    assert_problem(response, 401, "unauthorized")
    assert not is_stored(server.data_dir, data)
    assert stored_objects(server.data_dir) == objects_before
    assert recorded_events(server.data_dir, upload_id) == events_before


def _foreign_request(client: httpx.Client, operation: str, upload_id: str) -> httpx.Response:
    data = os.urandom(KiB)
    if operation == "status":
        return client.get(f"{UPLOAD}/status/{upload_id}")
    if operation == "json-chunk":
        return post_chunk(client, upload_id, 0, data)
    if operation == "raw-chunk":
        return put_chunk(client, upload_id, 0, data)
    if operation == "complete":
        return complete(client, upload_id)
    assert operation == "cancel"
    return cancel(client, upload_id)


def _comparable(response: httpx.Response, upload_id: str) -> tuple[int, str, str, str]:
    body = response.json()
    detail = body["detail"].replace(upload_id, "<id>")
    return response.status_code, response.headers["content-type"], body["type"], detail


@pytest.mark.parametrize("operation", ["status", "json-chunk", "raw-chunk", "complete", "cancel"])
def test_another_owners_upload_answers_exactly_like_a_missing_one(
    server: Server, client: httpx.Client, operation: str
) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]
    assert put_chunk(client, upload_id, 1, data[KiB:]).status_code == 200
    missing_id = uuid.uuid4().hex

    with server.client(f"stranger-{uuid.uuid4().hex}") as stranger:
        foreign = _foreign_request(stranger, operation, upload_id)
        missing = _foreign_request(stranger, operation, missing_id)

    assert_problem(foreign, 404, "upload-not-found")
    assert _comparable(foreign, upload_id) == _comparable(missing, missing_id)
    status = status_of(client, upload_id)
    assert status["status"] == "active"
    assert status["received_chunks"] == [1]


# -- completion ------------------------------------------------------------------------


def test_chunks_sent_out_of_order_complete_into_the_exact_file(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(4 * KiB + 100)  # five chunks, the last one short
    upload_id = init_upload(client, data, KiB, file_hash=sha256_hex(data))["upload_id"]
    pieces = split(data, KiB)

    for index in (0, 2, 1, 4, 3):
        assert post_chunk(client, upload_id, index, pieces[index]).status_code == 200
    response = complete(client, upload_id)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["sha256"] == sha256_hex(data)
    assert answer["blake3"] == blake3_hex(data)
    assert answer["size"] == len(data)
    assert final_bytes(server, answer["file_path"]) == data


def test_a_completed_upload_reports_completed_status(client: httpx.Client) -> None:
    data = os.urandom(3 * KiB)
    upload_id = upload_whole(client, data, KiB, filename="done.bin")

    answer = complete(client, upload_id).json()
    status = status_of(client, upload_id)

    assert status["status"] == "completed"
    assert status["percentage"] == 100.0
    assert status["missing_chunks"] == []
    assert status["file_path"] == answer["file_path"]
    assert status["sha256"] == sha256_hex(data)
    assert Path(status["file_path"]).name == "done.bin"


def test_completing_with_missing_chunks_is_a_409_that_names_them(client: httpx.Client) -> None:
    data = os.urandom(5 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]
    pieces = split(data, KiB)
    for index in (0, 3):
        assert put_chunk(client, upload_id, index, pieces[index]).status_code == 200

    response = complete(client, upload_id)

    body = assert_problem(response, 409, "upload-incomplete")
    assert body["missing_chunks"] == [1, 2, 4]
    assert status_of(client, upload_id)["status"] == "active"


def test_completion_is_idempotent(server: Server, client: httpx.Client) -> None:
    data = os.urandom(3 * KiB)
    upload_id = upload_whole(client, data, KiB)

    first = complete(client, upload_id)
    second = complete(client, upload_id)

    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert final_bytes(server, first.json()["file_path"]) == data


def test_a_zero_byte_file_completes(server: Server, client: httpx.Client) -> None:
    answer = init_upload(client, b"", KiB, filename="empty.txt")
    assert answer["total_chunks"] == 0

    response = complete(client, answer["upload_id"])

    assert response.status_code == 200, response.text
    assert response.json()["size"] == 0
    assert response.json()["sha256"] == sha256_hex(b"")
    assert final_bytes(server, response.json()["file_path"]) == b""


def test_a_png_declared_as_png_completes_with_the_detected_type(
    server: Server, client: httpx.Client
) -> None:
    png = tiny_png()
    upload_id = upload_whole(client, png, KiB, filename="pixel.png", mime_type="image/png")

    response = complete(client, upload_id)

    assert response.status_code == 200, response.text
    assert response.json()["detected_mime"] == "image/png"
    assert final_bytes(server, response.json()["file_path"]) == png


def test_a_wrong_whole_file_hash_fails_validation(server: Server, client: httpx.Client) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB, file_hash=sha256_hex(b"something else"))["upload_id"]
    for index, piece in enumerate(split(data, KiB)):
        assert put_chunk(client, upload_id, index, piece).status_code == 200

    response = complete(client, upload_id)

    body = assert_problem(response, 422, "validation-failed")
    assert body["reason"] == "hash-mismatch"
    assert not (server.data_dir / "files" / upload_id).exists()


ELF_BYTES = Path("/bin/true").read_bytes()


def _spoofed_upload(client: httpx.Client) -> tuple[str, httpx.Response]:
    """An executable sent as "pic.png" with a declared type of image/png."""
    upload_id = upload_whole(client, ELF_BYTES, 16 * KiB, filename="pic.png", mime_type="image/png")
    return upload_id, complete(client, upload_id)


def test_an_executable_declared_as_png_fails_completion_with_a_reason(
    client: httpx.Client,
) -> None:
    _, response = _spoofed_upload(client)

    body = assert_problem(response, 422, "validation-failed")
    assert body["reason"] == "mime-mismatch"


def test_an_executable_declared_as_png_leaves_the_upload_failed(
    server: Server, client: httpx.Client
) -> None:
    upload_id, response = _spoofed_upload(client)

    status = status_of(client, upload_id)

    assert status["status"] == "failed"
    assert status["failure_reason"] == response.json()["reason"]
    assert status["file_path"] is None
    assert not (server.data_dir / "files" / upload_id).exists()


def test_an_executable_declared_as_png_records_a_validation_failed_event(
    server: Server, client: httpx.Client
) -> None:
    upload_id, response = _spoofed_upload(client)

    failures = [
        e for e in recorded_events(server.data_dir, upload_id) if isinstance(e, ValidationFailed)
    ]

    assert [e.reason for e in failures] == [response.json()["reason"]]


def test_completing_a_failed_upload_again_repeats_the_failure(client: httpx.Client) -> None:
    upload_id, first = _spoofed_upload(client)

    again = complete(client, upload_id)

    body = assert_problem(again, 422, "validation-failed")
    assert body["reason"] == first.json()["reason"]


def test_a_copy_of_an_elf_header_padded_with_zeros_is_not_accepted_as_png(
    client: httpx.Client,
) -> None:
    fake = b"\x7fELF\x02\x01\x01" + bytes(4 * KiB)
    upload_id = upload_whole(client, fake, KiB, filename="pic.png", mime_type="image/png")

    response = complete(client, upload_id)

    body = assert_problem(response, 422, "validation-failed")
    assert body["reason"] == "mime-mismatch"


# -- cancel ----------------------------------------------------------------------------


def test_cancel_marks_the_upload_cancelled(client: httpx.Client) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]

    response = cancel(client, upload_id, reason="changed my mind")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert status_of(client, upload_id)["status"] == "cancelled"


def test_a_cancelled_upload_refuses_chunks_with_409(client: httpx.Client) -> None:
    data = os.urandom(2 * KiB)
    upload_id = init_upload(client, data, KiB)["upload_id"]
    assert cancel(client, upload_id).status_code == 200

    json_chunk = post_chunk(client, upload_id, 0, data[:KiB])
    raw_chunk = put_chunk(client, upload_id, 1, data[KiB:])

    assert_problem(json_chunk, 409, "upload-not-active")
    assert_problem(raw_chunk, 409, "upload-not-active")
    assert status_of(client, upload_id)["received_chunks"] == []


def test_a_cancelled_upload_cannot_be_completed(client: httpx.Client) -> None:
    data = os.urandom(KiB)
    upload_id = upload_whole(client, data, KiB)
    assert cancel(client, upload_id).status_code == 200

    response = complete(client, upload_id)

    assert_problem(response, 409, "upload-not-active")


def test_a_completed_upload_cannot_be_cancelled(client: httpx.Client) -> None:
    upload_id = upload_whole(client, os.urandom(KiB), KiB)
    assert complete(client, upload_id).status_code == 200

    response = cancel(client, upload_id)

    assert_problem(response, 409, "upload-not-active")
    assert status_of(client, upload_id)["status"] == "completed"


def test_a_cancelled_upload_no_longer_counts_against_the_open_session_limit(
    make_server: MakeServer,
) -> None:
    server = make_server(CHUNKSTORE_MAX_OPEN_SESSIONS="1")
    with server.client("canceller") as client:
        upload_id = init_upload(client, os.urandom(10), KiB)["upload_id"]
        blocked = client.post(f"{UPLOAD}/init", json={"filename": "b.bin", "total_size": 10})
        assert_problem(blocked, 429, "too-many-sessions")
        assert cancel(client, upload_id).status_code == 200

        response = client.post(f"{UPLOAD}/init", json={"filename": "b.bin", "total_size": 10})

    assert response.status_code == 201


# -- expiry ----------------------------------------------------------------------------


def wait_until_expired(client: httpx.Client, upload_id: str, timeout: float = 60) -> None:
    """Ask status until the server itself says the session has expired."""
    deadline = time.monotonic() + timeout
    while status_of(client, upload_id)["status"] != "expired":
        assert time.monotonic() < deadline, f"{upload_id} did not expire within {timeout} s"
        time.sleep(0.05)


def test_a_chunk_sent_after_the_session_expired_is_refused_with_410(
    make_server: MakeServer,
) -> None:
    data = os.urandom(2 * KiB)
    pieces = split(data, KiB)
    # Chunk 0 must be in the session before it expires, whatever the machine's pace: it
    # is stored first under the default TTL, then the server restarts with a 1 s TTL and
    # the new session is born holding it (init with the chunk list reuses held chunks).
    server = make_server()
    with server.client("late") as client:
        holder = init_upload(client, pieces[0], KiB)["upload_id"]
        assert put_chunk(client, holder, 0, pieces[0]).status_code == 200
    server.stop()
    server.env["CHUNKSTORE_SESSION_TTL"] = "1"
    server.start()
    with server.client("late") as client:
        started = client.post(
            f"{UPLOAD}/init",
            json={
                "filename": "late.bin",
                "total_size": len(data),
                "chunks": [{"digest": blake3_hex(p), "size": len(p)} for p in pieces],
            },
        )
        assert started.status_code == 201, started.text
        upload_id = started.json()["upload_id"]
        wait_until_expired(client, upload_id)

        json_chunk = post_chunk(client, upload_id, 1, data[KiB:])
        raw_chunk = put_chunk(client, upload_id, 1, data[KiB:])
        status = status_of(client, upload_id)

    assert_problem(json_chunk, 410, "upload-expired")
    assert_problem(raw_chunk, 410, "upload-expired")
    assert status["status"] == "expired"
    assert status["received_chunks"] == [0]
    assert not is_stored(server.data_dir, data[KiB:])


# -- concurrency -----------------------------------------------------------------------


def test_eight_chunks_sent_at_once_over_eight_connections_all_land(
    server: Server, owner: str
) -> None:
    chunk_size = 64 * KiB
    data = os.urandom(8 * chunk_size)
    pieces = split(data, chunk_size)
    with server.client(owner) as client:
        upload_id = init_upload(client, data, chunk_size)["upload_id"]
    clients = [server.client(owner) for _ in pieces]
    start = threading.Barrier(len(pieces))
    responses: dict[int, httpx.Response] = {}

    def send(index: int) -> None:
        start.wait()
        responses[index] = put_chunk(clients[index], upload_id, index, pieces[index])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(pieces))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for each in clients:
        each.close()

    assert sorted(responses) == list(range(8))
    assert all(r.status_code == 200 for r in responses.values()), [
        r.text for r in responses.values()
    ]
    assert all(r.json()["stored"] for r in responses.values())
    with server.client(owner) as client:
        assert status_of(client, upload_id)["received_chunks"] == list(range(8))
        answer = complete(client, upload_id).json()
    assert final_bytes(server, answer["file_path"]) == data
    assert answer["sha256"] == sha256_hex(data)


def _at_once(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Run each call in its own thread, released together; answers in call order."""
    start = threading.Barrier(len(calls))
    answers: list[httpx.Response | None] = [None] * len(calls)

    def run(position: int) -> None:
        start.wait()
        answers[position] = calls[position]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


def test_the_same_chunk_sent_twice_at_once_is_recorded_once(server: Server, owner: str) -> None:
    data = os.urandom(256 * KiB)
    with server.client(owner) as first, server.client(owner) as second:
        upload_id = init_upload(first, data, len(data))["upload_id"]

        answers = _at_once(
            [
                lambda: put_chunk(first, upload_id, 0, data),
                lambda: put_chunk(second, upload_id, 0, data),
            ]
        )

    assert [a.status_code for a in answers] == [200, 200]
    assert sorted(a.json()["stored"] for a in answers) == [False, True]
    stored = [e for e in recorded_events(server.data_dir, upload_id) if isinstance(e, ChunkStored)]
    assert len(stored) == 1


def test_two_completions_at_once_give_the_same_answer(server: Server, owner: str) -> None:
    data = os.urandom(512 * KiB)
    with server.client(owner) as first, server.client(owner) as second:
        upload_id = upload_whole(first, data, 64 * KiB)

        answers = _at_once(
            [lambda: complete(first, upload_id), lambda: complete(second, upload_id)]
        )

    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert answers[0].json() == answers[1].json()
    assert final_bytes(server, answers[0].json()["file_path"]) == data


def test_the_sessions_projection_matches_the_log_after_concurrent_http_traffic(
    make_server: MakeServer,
) -> None:
    server = make_server()
    with server.client("projector") as client:
        completed = upload_whole(client, os.urandom(8 * 16 * KiB), 16 * KiB)
        assert complete(client, completed).status_code == 200
        cancelled = init_upload(client, os.urandom(2 * KiB), KiB)["upload_id"]
        assert cancel(client, cancelled).status_code == 200
        failed = upload_whole(
            client, b"\x7fELF\x02\x01\x01" + bytes(KiB), KiB, "p.png", "image/png"
        )
        assert complete(client, failed).status_code == 422
        data = os.urandom(8 * 16 * KiB)
        active = init_upload(client, data, 16 * KiB)["upload_id"]
        pieces = split(data, 16 * KiB)
        clients = [server.client("projector") for _ in range(6)]
        try:
            answers = _at_once(
                [
                    (lambda c=c, i=i: put_chunk(c, active, i, pieces[i]))
                    for i, c in enumerate(clients)
                ]
            )
        finally:
            for each in clients:
                each.close()
        assert all(a.status_code == 200 for a in answers)

    store = SQLiteLog(server.data_dir / "chunkstore.sqlite3")
    try:
        stream_ids = list(all_stream_ids(store))
        assert set(stream_ids) == {completed, cancelled, failed, active}
        for stream_id in stream_ids:
            events = [recorded.event for recorded in store.read(stream_id)]
            expected = session_row(replay(events, SessionState.empty(stream_id)))
            assert store.session_row(stream_id) == expected
        statuses = {row["upload_id"]: row["status"] for row in store.session_rows()}
    finally:
        store.close()
    assert statuses == {
        completed: "completed",
        cancelled: "cancelled",
        failed: "failed",
        active: "active",
    }


def test_the_open_session_limit_holds_when_inits_arrive_at_once(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_MAX_OPEN_SESSIONS="2")
    accepted_per_owner = []
    for round_number in range(5):
        owner = f"rush-{round_number}"
        clients = [server.client(owner) for _ in range(16)]
        try:
            answers = _at_once(
                [
                    (
                        lambda c=c: c.post(
                            f"{UPLOAD}/init", json={"filename": "a.bin", "total_size": 1}
                        )
                    )
                    for c in clients
                ]
            )
        finally:
            for each in clients:
                each.close()
        assert {a.status_code for a in answers} <= {201, 429}
        accepted_per_owner.append(sum(a.status_code == 201 for a in answers))

    assert accepted_per_owner == [2] * 5


# -- protocol details ------------------------------------------------------------------


def test_every_answer_carries_a_request_id(client: httpx.Client) -> None:
    ok = client.get("/healthz")
    problem = client.get(f"{UPLOAD}/status/{uuid.uuid4().hex}")

    assert ok.headers["x-request-id"]
    assert problem.headers["x-request-id"]
    assert ok.headers["x-request-id"] != problem.headers["x-request-id"]
    assert problem.json()["request_id"] == problem.headers["x-request-id"]


def test_a_problem_answer_carries_its_request_id_in_header_and_body(
    client: httpx.Client,
) -> None:
    response = client.get(f"{UPLOAD}/status/{uuid.uuid4().hex}")

    assert response.status_code == 404
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_a_401_answer_carries_its_request_id_in_header_and_body(server: Server) -> None:
    with server.client(owner=None) as anonymous:
        response = anonymous.get(f"{UPLOAD}/status/{uuid.uuid4().hex}")

    assert response.status_code == 401
    assert response.json()["request_id"] == response.headers.get("x-request-id")


def test_the_access_log_records_the_status_that_was_sent(
    client: httpx.Client, server: Server
) -> None:
    request_id = f"log-{uuid.uuid4().hex}"

    response = client.get(
        f"{UPLOAD}/status/{uuid.uuid4().hex}", headers={"X-Request-ID": request_id}
    )

    assert response.status_code == 404
    assert _access_log_entry(server, request_id)["status"] == 404


def test_the_access_log_records_a_401_as_401(server: Server) -> None:
    request_id = f"log-{uuid.uuid4().hex}"
    with server.client(owner=None) as anonymous:
        response = anonymous.get("/api/v1/upload/status/x", headers={"X-Request-ID": request_id})

    assert response.status_code == 401
    assert _access_log_entry(server, request_id)["status"] == 401


def test_a_valid_client_request_id_is_echoed(client: httpx.Client) -> None:
    response = client.get(f"{UPLOAD}/status/{uuid.uuid4().hex}", headers={"X-Request-ID": "abc-1"})

    assert response.headers["x-request-id"] == "abc-1"
    assert response.json()["request_id"] == "abc-1"


def test_an_invalid_client_request_id_is_replaced(client: httpx.Client) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "no spaces allowed"})

    assert response.headers["x-request-id"] != "no spaces allowed"
    assert response.headers["x-request-id"]


def test_the_openapi_schema_describes_the_upload_routes(server: Server) -> None:
    with server.client(owner=None) as anonymous:
        response = anonymous.get("/schema/openapi.json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    assert f"{UPLOAD}/init" in paths
    assert f"{UPLOAD}/{{upload_id}}/chunks/{{index}}" in paths


def test_a_problem_type_uri_is_documented(server: Server) -> None:
    with server.client(owner=None) as anonymous:
        response = anonymous.get("/problems/chunk-conflict")

    assert response.status_code == 200
    assert response.json()["status"] == 409


def test_a_large_file_over_several_raw_chunks_completes_byte_exact(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(5 * 1024 * KiB + 7)
    upload_id = upload_whole(client, data, 1024 * KiB)

    answer = complete(client, upload_id).json()

    assert answer["size"] == len(data), answer
    assert final_bytes(server, answer["file_path"]) == data
    assert temp_files(server.data_dir) == [], temp_files(server.data_dir)


def test_a_text_file_declared_as_text_completes_with_the_detected_type(
    server: Server, client: httpx.Client
) -> None:
    text = "".join(f"line {n}: the quick brown fox jumps over the lazy dog\n" for n in range(40))
    data = text.encode()
    upload_id = upload_whole(client, data, 512, filename="notes.txt", mime_type="text/plain")

    answer = complete(client, upload_id).json()

    assert answer["detected_mime"] == "text/plain"
    assert final_bytes(server, answer["file_path"]) == data
