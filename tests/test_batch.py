"""POST /api/v1/upload/{id}/batch: its size limit, what a body cut off midway keeps, and
frames that reach the packs before the body ends."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import httpx

from chunkstore.batch import MEDIA_TYPE as BATCH_MEDIA_TYPE
from chunkstore.events import ChunkStored
from chunkstore.testing import MakeServer, Server
from tests.helpers import (
    UPLOAD,
    access_log_entry,
    assert_problem,
    cancel,
    complete,
    frame,
    init_manifest,
    is_stored,
    pack_files,
    read_answer_and_close,
    recorded_events,
    send_frames,
    start_request,
    status_of,
    stored_copy,
    wait_for,
)

KiB = 1024
LIMIT = 64 * KiB


def in_pieces(body: bytes, size: int = 16 * KiB) -> Iterator[bytes]:
    """The body as an iterator: httpx then sends it chunked, with no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def stored_indexes(server: Server, upload_id: str) -> list[int]:
    return [
        e.index for e in recorded_events(server.data_dir, upload_id) if isinstance(e, ChunkStored)
    ]


def test_a_batch_over_the_limit_with_a_content_length_is_413_and_stores_nothing(
    make_server: MakeServer,
) -> None:
    server = make_server(CHUNKSTORE_MAX_BATCH_SIZE=str(LIMIT))
    big = os.urandom(LIMIT + KiB)
    with server.client("batcher") as client:
        upload_id = init_manifest(client, [big])

        response = send_frames(client, upload_id, frame(0, big))

        assert_problem(response, 413, "too-large")
        assert status_of(client, upload_id)["received_chunks"] == []
    assert stored_indexes(server, upload_id) == []
    assert not is_stored(server.data_dir, big)


def test_a_chunked_batch_that_runs_over_the_limit_is_413_and_stores_nothing(
    make_server: MakeServer,
) -> None:
    server = make_server(CHUNKSTORE_MAX_BATCH_SIZE=str(LIMIT))
    big = os.urandom(LIMIT + KiB)
    with server.client("batcher") as client:
        upload_id = init_manifest(client, [big])

        response = send_frames(client, upload_id, in_pieces(frame(0, big)))

        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert_problem(response, 413, "too-large")
        assert status_of(client, upload_id)["received_chunks"] == []
    assert stored_indexes(server, upload_id) == []
    assert not is_stored(server.data_dir, big)


def test_a_chunked_batch_that_runs_over_the_limit_keeps_its_whole_frames_before(
    make_server: MakeServer,
) -> None:
    # The limit is found only as the body arrives; whole frames before it are kept, as
    # for a body cut off midway.
    server = make_server(CHUNKSTORE_MAX_BATCH_SIZE=str(LIMIT))
    small, big = os.urandom(16 * KiB), os.urandom(LIMIT)
    with server.client("batcher") as client:
        upload_id = init_manifest(client, [small, big])

        response = send_frames(client, upload_id, in_pieces(frame(0, small) + frame(1, big)))

        assert_problem(response, 413, "too-large")
        assert status_of(client, upload_id)["received_chunks"] == [0]
    assert stored_indexes(server, upload_id) == [0]
    assert not is_stored(server.data_dir, big)


def test_a_batch_cut_off_inside_its_third_frame_keeps_the_first_two(
    server: Server, client: httpx.Client
) -> None:
    pieces = [os.urandom(64 * KiB) for _ in range(3)]
    upload_id = init_manifest(client, pieces)
    body = b"".join(frame(index, piece) for index, piece in enumerate(pieces))
    cut = len(frame(0, pieces[0])) * 2 + 8 + 30 * KiB  # 30 KiB into frame 2's bytes
    request_id = f"cut-{uuid.uuid4().hex}"
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        head = (
            f"POST {UPLOAD}/{upload_id}/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {client.headers['Authorization']}\r\n"
            f"Content-Type: {BATCH_MEDIA_TYPE}\r\nContent-Length: {len(body)}\r\n"
            f"X-Request-ID: {request_id}\r\n\r\n"
        )
        raw.sendall(head.encode() + body[:cut])

    access_log_entry(server.log, request_id)  # the server has finished with it

    status = status_of(client, upload_id)
    assert status["received_chunks"] == [0, 1]
    assert status["missing_chunks"] == [2]
    assert stored_indexes(server, upload_id) == [0, 1]
    assert is_stored(server.data_dir, pieces[1])
    assert not is_stored(server.data_dir, pieces[2])


# -- frames reach the packs while the body is still arriving -------------------------------

MiB = 1024 * KiB


def open_batch(server: Server, client: httpx.Client, upload_id: str, length: int) -> socket.socket:
    """A batch request whose body (``length`` bytes) the caller sends as it likes."""
    head = (
        f"POST {UPLOAD}/{upload_id}/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {client.headers['Authorization']}\r\n"
        f"Content-Type: {BATCH_MEDIA_TYPE}\r\nContent-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    )
    return start_request(server.port, head)


def packed_bytes(server: Server) -> int:
    return sum(path.stat().st_size for path in pack_files(server.data_dir))


def wait_until_packed(server: Server, before: int, wanted: int) -> None:
    """Wait until ``wanted`` more bytes than ``before`` are in the packs."""
    wait_for(lambda: packed_bytes(server) >= before + wanted, "the first frames in a pack")


def test_a_batch_body_reaches_the_packs_while_it_is_still_arriving(
    server: Server, client: httpx.Client
) -> None:
    # Verified frames go to the packs every MiB or so: a request's bytes do not wait in
    # the server's memory for its end. They are acknowledged only with the answer.
    pieces = [os.urandom(512 * KiB) for _ in range(8)]
    upload_id = init_manifest(client, pieces)
    frames = [frame(index, piece) for index, piece in enumerate(pieces)]
    before = packed_bytes(server)
    sock = open_batch(server, client, upload_id, sum(len(f) for f in frames))
    try:
        sock.sendall(b"".join(frames[:6]))

        wait_until_packed(server, before, 2 * MiB)
        assert status_of(client, upload_id)["received_chunks"] == []

        sock.sendall(b"".join(frames[6:]))
        answer = read_answer_and_close(sock)
    finally:
        sock.close()

    assert answer.status == 200, answer.body
    assert answer.json()["stored_count"] == 8
    assert status_of(client, upload_id)["received_chunks"] == list(range(8))
    assert all(stored_copy(server.data_dir, piece) == piece for piece in pieces)
    assert complete(client, upload_id).status_code == 200
    downloaded = client.get(f"/api/v1/files/{upload_id}")
    assert downloaded.content == b"".join(pieces)


def test_a_batch_cut_off_after_frames_were_packed_keeps_every_whole_frame(
    server: Server, client: httpx.Client
) -> None:
    pieces = [os.urandom(512 * KiB) for _ in range(8)]
    upload_id = init_manifest(client, pieces)
    frames = [frame(index, piece) for index, piece in enumerate(pieces)]
    request_id = f"cut-{uuid.uuid4().hex}"
    head = (
        f"POST {UPLOAD}/{upload_id}/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {client.headers['Authorization']}\r\n"
        f"Content-Type: {BATCH_MEDIA_TYPE}\r\nContent-Length: {sum(len(f) for f in frames)}\r\n"
        f"X-Request-ID: {request_id}\r\n\r\n"
    )
    before = packed_bytes(server)
    with start_request(server.port, head) as sock:
        sock.sendall(b"".join(frames[:5]))
        wait_until_packed(server, before, 2 * MiB)
        sock.sendall(frames[5][: 100 * KiB])  # then the client goes away inside frame 5

    access_log_entry(server.log, request_id)

    assert status_of(client, upload_id)["received_chunks"] == [0, 1, 2, 3, 4]
    assert stored_indexes(server, upload_id) == [0, 1, 2, 3, 4]
    assert all(stored_copy(server.data_dir, piece) == piece for piece in pieces[:5])
    assert not is_stored(server.data_dir, pieces[5])

    response = send_frames(client, upload_id, b"".join(frames[5:]))
    assert response.status_code == 200, response.text
    assert complete(client, upload_id).status_code == 200
    assert client.get(f"/api/v1/files/{upload_id}").content == b"".join(pieces)


def test_a_batch_whose_upload_was_cancelled_midway_records_nothing(
    server: Server, client: httpx.Client
) -> None:
    # Frames already in a pack when the upload is cancelled stay dead bytes there: no
    # event names them and the index does not point at them.
    pieces = [os.urandom(512 * KiB) for _ in range(8)]
    upload_id = init_manifest(client, pieces)
    frames = [frame(index, piece) for index, piece in enumerate(pieces)]
    before = packed_bytes(server)
    sock = open_batch(server, client, upload_id, sum(len(f) for f in frames))
    try:
        sock.sendall(b"".join(frames[:6]))
        wait_until_packed(server, before, 2 * MiB)
        assert cancel(client, upload_id).status_code == 200

        sock.sendall(b"".join(frames[6:]))
        answer = read_answer_and_close(sock)
    finally:
        sock.close()

    assert answer.status == 409, answer.body
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert stored_indexes(server, upload_id) == []
    assert not any(is_stored(server.data_dir, piece) for piece in pieces)
