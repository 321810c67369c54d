"""Materialization: completion makes the final file with kernel copies out of the packs,
checks it, and publishes it whole or not at all."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from chunkstore.application import UploadService
from chunkstore.commands import InitRequest
from chunkstore.config import Settings
from chunkstore.files.local import LocalFiles
from chunkstore.testing import MakeServer, Server
from tests.helpers import (
    FakeClock,
    blake3_hex,
    complete,
    damage_blob,
    init_upload,
    put_chunk,
    sha256_hex,
    split,
    status_of,
)

KiB = 1024
MiB = 1024 * KiB
OWNER = "alice"
FILES = "/api/v1/files"


def open_service(data_dir: Path, materialize: str) -> UploadService:
    assert materialize == "copy"
    return UploadService.open(Settings(data_dir=data_dir), clock=FakeClock())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def upload(service: UploadService, data: bytes, chunk_size: int) -> str:
    request = InitRequest(
        filename="file.bin",
        total_size=len(data),
        mime_type="application/octet-stream",
        chunk_size=chunk_size,
    )
    upload_id = service.init_upload(OWNER, request).upload_id
    for index, piece in enumerate(split(data, chunk_size)):
        service.store_chunk(OWNER, upload_id, index, piece)
    return upload_id


def final_files(data_dir: Path) -> list[Path]:
    return sorted(path for path in (data_dir / "files").rglob("*") if path.is_file())


# -- copy: kernel copies from the packs ---------------------------------------------------


def test_copy_makes_a_byte_identical_file_with_kernel_copies(data_dir: Path) -> None:
    data = os.urandom(5 * MiB + 123)
    service = open_service(data_dir, "copy")
    try:
        upload_id = upload(service, data, 64 * KiB)

        completion = service.complete_upload(OWNER, upload_id)

        files = service.store.files
        assert isinstance(files, LocalFiles)
        assert (files.copied_by_kernel, files.copied_by_fallback) == (len(data), 0)
    finally:
        service.close()
    assert (data_dir / completion.file_path).read_bytes() == data
    assert (completion.sha256, completion.blake3) == (sha256_hex(data), blake3_hex(data))


def test_copy_checks_the_copied_bytes_and_publishes_nothing_damaged(data_dir: Path) -> None:
    data = os.urandom(1 * MiB)
    service = open_service(data_dir, "copy")
    try:
        upload_id = upload(service, data, 64 * KiB)
        damage_blob(data_dir, blake3_hex(data[128 * KiB : 192 * KiB]), 10)

        with pytest.raises(Exception, match="does not hash to its name"):
            service.complete_upload(OWNER, upload_id)

        assert service.status(OWNER, upload_id).status == "failed"
    finally:
        service.close()
    assert final_files(data_dir) == []
    assert list((data_dir / "tmp" / "files").iterdir()) == []


# -- kill -9 during completion ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["copy"])
def test_kill_9_during_completion_leaves_it_done_or_still_completable(
    make_server: MakeServer, mode: str
) -> None:
    data = os.urandom(64 * MiB)
    server = make_server()
    token = server.token(OWNER)
    # A completion left alone first: how long one takes spreads the kill points over it.
    began = time.monotonic()
    upload_and_complete(server, token, data)
    span = time.monotonic() - began
    kill_points = random.Random(12)
    for _ in range(8):
        upload_id = upload_chunks(server, data)
        completing = threading.Thread(target=_complete_quietly, args=(server.url, token, upload_id))
        completing.start()
        threading.Event().wait(kill_points.uniform(0.0, span))
        server.kill9()
        completing.join(timeout=60)

        server.start()
        with server.client(OWNER) as client:
            status = status_of(client, upload_id)["status"]
            assert status in ("active", "assembling", "completed")
            for path in final_files(server.data_dir):  # whole or absent, never half there
                assert path.stat().st_size == len(data)
            if status != "completed":
                assert complete(client, upload_id).status_code == 200
            assert client.get(f"{FILES}/{upload_id}").content == data
            final = server.data_dir / "files" / upload_id / "file.bin"
            assert final.exists() == (mode == "copy")
            if mode == "copy":
                assert final.read_bytes() == data
            assert client.delete(f"{FILES}/{upload_id}").status_code == 204
        audited = server.cli("audit", "--json")
        assert audited.returncode == 0, audited.stdout + audited.stderr
        assert json.loads(audited.stdout)["findings"] == []
    assert list((server.data_dir / "tmp" / "files").iterdir()) == []


def upload_chunks(server: Server, data: bytes) -> str:
    with server.client(OWNER) as client:
        upload_id = str(init_upload(client, data, MiB, file_hash=sha256_hex(data))["upload_id"])
        for index, piece in enumerate(split(data, MiB)):
            assert put_chunk(client, upload_id, index, piece).status_code == 200
    return upload_id


def upload_and_complete(server: Server, token: str, data: bytes) -> None:
    upload_id = upload_chunks(server, data)
    _complete_quietly(server.url, token, upload_id)
    with server.client(OWNER) as client:
        assert status_of(client, upload_id)["status"] == "completed"
        assert client.delete(f"{FILES}/{upload_id}").status_code == 204


def _complete_quietly(url: str, token: str, upload_id: str) -> None:
    """Ask for the completion; the server may die under the request."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            client.post("/api/v1/upload/complete", json={"upload_id": upload_id})
    except httpx.HTTPError:
        pass
