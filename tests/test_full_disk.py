"""A really full disk: every write path answers 507 insufficient-storage, keeps nothing of
the request that hit it, and the same uploads go on once space is freed. A small tmpfs
in a mount namespace of its own is the full disk (see ``SmallFilesystem``)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chunkstore.testing import Server
from tests.helpers import (
    UPLOAD,
    assert_problem,
    blake3_hex,
    complete,
    init_upload,
    post_chunk,
    put_chunk,
    status_of,
    temp_files,
)
from tests.small_filesystem import SmallFilesystem
from tests.test_client import cli, write_random
from tests.test_tus import create, offset_of, send

MiB = 1024 * 1024
BATCH_MEDIA_TYPE = "application/vnd.chunkstore.batch"


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[SmallFilesystem]:
    with SmallFilesystem(tmp_path / "data", 48 * MiB) as filesystem:
        yield filesystem


def start_server(filesystem: SmallFilesystem, **env: str) -> Server:
    settings = {"CHUNKSTORE_GC_INTERVAL": "0", **env}
    return Server(filesystem.mount_point, settings, command_prefix=filesystem.enter()).start()


@pytest.fixture
def full_disk_server(small_filesystem: SmallFilesystem) -> Iterator[Server]:
    server = start_server(small_filesystem)
    yield server
    server.stop()


def send_batch(client: httpx.Client, upload_id: str, pieces: list[bytes]) -> httpx.Response:
    body = b"".join(struct.pack(">II", i, len(piece)) + piece for i, piece in enumerate(pieces))
    return client.post(
        f"{UPLOAD}/{upload_id}/batch", content=body, headers={"Content-Type": BATCH_MEDIA_TYPE}
    )


def init_manifest(client: httpx.Client, pieces: list[bytes]) -> str:
    answer = client.post(
        f"{UPLOAD}/init",
        json={
            "filename": "batch.bin",
            "total_size": sum(map(len, pieces)),
            "chunks": [{"digest": blake3_hex(piece), "size": len(piece)} for piece in pieces],
        },
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["upload_id"])


def assert_audit_clean(server: Server) -> None:
    checked = server.cli("audit", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["findings"] == []


def test_every_write_path_answers_507_and_the_uploads_resume_once_space_is_freed(
    small_filesystem: SmallFilesystem, full_disk_server: Server
) -> None:
    server, view = full_disk_server, small_filesystem.path
    raw_chunk, json_chunk = os.urandom(256 * 1024), os.urandom(64 * 1024)
    pieces = [os.urandom(64 * 1024) for _ in range(4)]
    tus_data, whole = os.urandom(MiB), os.urandom(MiB)
    with server.client("alice") as client:
        raw_id = init_upload(client, raw_chunk, len(raw_chunk))["upload_id"]
        json_id = init_upload(client, json_chunk, len(json_chunk))["upload_id"]
        batch_id = init_manifest(client, pieces)
        tus_url = create(client, len(tus_data))
        tus_id = tus_url.rsplit("/", 1)[-1]
        done_id = init_upload(client, whole, 256 * 1024)["upload_id"]
        for index in range(4):
            part = whole[index * 256 * 1024 : (index + 1) * 256 * 1024]
            assert put_chunk(client, done_id, index, part).status_code == 200

        filler = small_filesystem.fill()

        assert_problem(put_chunk(client, raw_id, 0, raw_chunk), 507, "insufficient-storage")
        assert_problem(post_chunk(client, json_id, 0, json_chunk), 507, "insufficient-storage")
        assert_problem(send_batch(client, batch_id, pieces), 507, "insufficient-storage")
        refused = send(client, tus_url, 0, tus_data)
        assert_problem(refused, 507, "insufficient-storage")
        assert refused.headers["Tus-Resumable"] == "1.0.0"
        assert_problem(complete(client, done_id), 507, "insufficient-storage")

        # The requests that met the full disk kept nothing.
        for upload_id in (raw_id, json_id, batch_id):
            assert status_of(client, upload_id)["received_chunks"] == []
        assert offset_of(client, tus_url) == 0
        assert status_of(client, done_id)["status"] == "active"
        assert temp_files(view) == []

        filler.unlink()

        assert put_chunk(client, raw_id, 0, raw_chunk).status_code == 200
        assert post_chunk(client, json_id, 0, json_chunk).status_code == 200
        assert send_batch(client, batch_id, pieces).status_code == 200
        assert send(client, tus_url, 0, tus_data).status_code == 204
        for upload_id in (raw_id, json_id, batch_id, done_id):
            answer = complete(client, upload_id)
            assert answer.status_code == 200, answer.text
        expected = {
            raw_id: raw_chunk,
            json_id: json_chunk,
            batch_id: b"".join(pieces),
            tus_id: tus_data,
            done_id: whole,
        }
        for upload_id, data in expected.items():
            status = status_of(client, upload_id)
            assert status["status"] == "completed", status
            assert (view / status["file_path"]).read_bytes() == data
    server.stop()
    assert_audit_clean(server)


def test_a_full_database_answers_507_and_keeps_every_session_it_acknowledged(
    small_filesystem: SmallFilesystem,
) -> None:
    """Starting sessions writes only to the database: once its file and its WAL cannot
    grow, init is refused with 507 and every session acknowledged before is intact."""
    server = start_server(small_filesystem, CHUNKSTORE_MAX_OPEN_SESSIONS="1000000")
    try:
        with server.client("alice") as client:
            init_upload(client, b"x" * 1000, 1000)
            filler = small_filesystem.fill()
            acknowledged: list[str] = []
            for _ in range(20_000):
                answer = client.post(
                    f"{UPLOAD}/init",
                    json={"filename": "f.bin", "total_size": 1000, "chunk_size": 1000},
                )
                if answer.status_code != 201:
                    break
                acknowledged.append(answer.json()["upload_id"])
            assert_problem(answer, 507, "insufficient-storage")
            filler.unlink()
            for upload_id in acknowledged:
                assert status_of(client, upload_id)["status"] == "active"
            init_upload(client, b"x" * 1000, 1000)
        print(f"\n{len(acknowledged)} sessions started on the full disk before the first 507")
    finally:
        server.stop()
    assert_audit_clean(server)


def requests_seen(server: Server) -> list[tuple[str, str, int]]:
    """(method, path, status) of every request the server logged, in order."""
    seen = []
    for line in server.log().splitlines():
        if line.startswith("{") and '"message": "request"' in line:
            entry = json.loads(line)
            seen.append((entry["method"], entry["path"], entry["status"]))
    return seen


def test_upload_to_a_full_disk_stops_at_the_first_507_with_a_clear_message(
    small_filesystem: SmallFilesystem, full_disk_server: Server, tmp_path: Path
) -> None:
    server = full_disk_server
    path = write_random(tmp_path / "file.bin", 2 * MiB)
    token = server.token("alice")
    small_filesystem.fill()

    done = cli(
        "upload", str(path), "--server", server.url, "--token", token, "--parallel", "1",
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip

    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "the server is out of storage (507 insufficient-storage)" in done.stderr
    seen = requests_seen(server)
    refused = [request for request in seen if request[2] == 507]
    # One refusal, and nothing sent after it: no retry.
    assert refused == [seen[-1]], seen
