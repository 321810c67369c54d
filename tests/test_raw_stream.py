"""A raw chunk of known size is written into a pack while its body arrives: what reaches
the disk before the answer, and what is left of a body that is cut off or refused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from chunkstore.blobs.packfile import HEADER_SIZE
from chunkstore.testing import MakeServer, Server
from tests.helpers import (
    UPLOAD,
    assert_problem,
    complete,
    init_upload,
    pack_files,
    put_chunk,
    read_answer_and_close,
    start_request,
    status_of,
    stored_bytes,
    stored_copy,
    stored_objects,
    upload_locked,
    wait_for,
)

MiB = 1024 * 1024


def _packed(data_dir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in pack_files(data_dir))


def _head(server: Server, token_header: str, upload_id: str, length: int) -> str:
    return (
        f"PUT {UPLOAD}/{upload_id}/chunks/0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {token_header}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )


def test_a_raw_chunk_is_in_its_pack_before_its_body_has_all_arrived(
    make_server: MakeServer,
) -> None:
    server = make_server()
    chunk = os.urandom(4 * MiB)
    with server.client("alice") as client:
        upload_id = init_upload(client, chunk, len(chunk))["upload_id"]
        head = _head(server, client.headers["Authorization"], upload_id, len(chunk))
        with start_request(server.port, head, chunk[: 2 * MiB]) as sending:
            # Half the body sent and the client waiting: its first MiB is in a pack.
            wait_for(lambda: chunk[:MiB] in _packed(server.data_dir), "the first MiB on disk")
            assert stored_objects(server.data_dir) == set()  # on disk, not yet indexed
            sending.sendall(chunk[2 * MiB :])
            answer = read_answer_and_close(sending)
        assert answer.status == 200, answer
        assert stored_copy(server.data_dir, chunk) == chunk
        assert complete(client, upload_id).json()["sha256"] == hashlib.sha256(chunk).hexdigest()


def test_a_raw_body_cut_off_midway_leaves_nothing_once_the_pack_is_sealed(
    make_server: MakeServer,
) -> None:
    server = make_server()
    chunk = os.urandom(4 * MiB)
    with server.client("alice") as client:
        upload_id = init_upload(client, chunk, len(chunk))["upload_id"]
        head = _head(server, client.headers["Authorization"], upload_id, len(chunk))
        with start_request(server.port, head, chunk[: 3 * MiB]):
            wait_for(lambda: chunk[:MiB] in _packed(server.data_dir), "the first MiB on disk")
        # The client went away: nothing stored; the chunk sent again is whole.
        wait_for(lambda: not upload_locked(server.data_dir, upload_id), "the upload free")
        assert stored_objects(server.data_dir) == set()
        assert put_chunk(client, upload_id, 0, chunk).status_code == 200
    server.stop()

    # Sealed at stop: every pack holds exactly its records, none of the cut-off body.
    assert stored_copy(server.data_dir, chunk) == chunk
    records = len(stored_objects(server.data_dir))
    packed = sum(path.stat().st_size for path in pack_files(server.data_dir))
    assert packed == stored_bytes(server.data_dir) + records * HEADER_SIZE


def test_a_streamed_raw_chunk_with_a_wrong_checksum_stores_nothing(
    make_server: MakeServer,
) -> None:
    server = make_server()
    chunk = os.urandom(3 * MiB)
    with server.client("alice") as client:
        upload_id = init_upload(client, chunk, len(chunk))["upload_id"]
        wrong = {"X-Chunk-Checksum": "sha256=" + "0" * 64}

        assert_problem(put_chunk(client, upload_id, 0, chunk, wrong), 400, "checksum-mismatch")

        assert stored_objects(server.data_dir) == set()
        assert status_of(client, upload_id)["received_chunks"] == []
        assert put_chunk(client, upload_id, 0, chunk).status_code == 200
        assert stored_copy(server.data_dir, chunk) == chunk
