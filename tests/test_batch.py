"""POST /api/v1/upload/{id}/batch: its size limit, and what a body cut off midway keeps."""

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
    frame,
    init_manifest,
    is_stored,
    recorded_events,
    send_frames,
    status_of,
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
