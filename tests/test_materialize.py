"""Materialization, the files port's setting: ``copy`` makes the final file with kernel
copies out of the packs; ``none`` leaves the manifest as the file, and everything that
reads a completed upload (downloads, status, audit, gc) streams from its chunks."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chunkstore.application import UploadService
from chunkstore.blobs.memory import MemoryBlobStore
from chunkstore.commands import InitRequest
from chunkstore.config import Settings
from chunkstore.errors import ValidationFailed
from chunkstore.events import UploadCompleted
from chunkstore.files.local import LocalFiles
from chunkstore.reading import chunks_range, read_range, stored_file
from chunkstore.testing import MakeServer, Server
from tests.helpers import (
    FakeClock,
    assert_problem,
    blake3_hex,
    blob_place,
    complete,
    damage_blob,
    init_upload,
    put_chunk,
    recorded_events,
    sha256_hex,
    split,
    status_of,
    upload_whole,
)

KiB = 1024
MiB = 1024 * KiB
OWNER = "alice"
FILES = "/api/v1/files"


def open_service(data_dir: Path, materialize: str) -> UploadService:
    return UploadService.open(
        Settings(data_dir=data_dir, materialize=materialize), clock=FakeClock()
    )


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


@pytest.mark.parametrize("mode", ["copy", "none"])
def test_a_damaged_chunk_fails_completion_and_publishes_nothing(data_dir: Path, mode: str) -> None:
    data = os.urandom(1 * MiB)
    service = open_service(data_dir, mode)
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


@pytest.mark.parametrize("mode", ["copy", "none"])
def test_a_pack_cut_short_fails_completion(data_dir: Path, mode: str) -> None:
    data = os.urandom(1 * MiB)
    service = open_service(data_dir, mode)
    try:
        upload_id = upload(service, data, 64 * KiB)
        last = blob_place(data_dir, blake3_hex(data[-64 * KiB :]))
        os.truncate(last.path, last.offset + 1000)

        with pytest.raises(ValidationFailed) as failed:
            service.complete_upload(OWNER, upload_id)

        assert failed.value.extensions["reason"] == "corrupt-chunk"
    finally:
        service.close()
    assert final_files(data_dir) == []


# -- none: the manifest is the file --------------------------------------------------------


def test_none_records_the_manifest_as_the_file_and_writes_no_file(data_dir: Path) -> None:
    data = os.urandom(2 * MiB + 5)
    service = open_service(data_dir, "none")
    try:
        upload_id = upload(service, data, 64 * KiB)

        completion = service.complete_upload(OWNER, upload_id)

        state = service.get(OWNER, upload_id)
        file = stored_file(state, service.store.files)
        read_back = b"".join(
            read_range(file, service.store.blobs, service.store.files, 0, len(data) - 1)
        )
    finally:
        service.close()
    assert completion.file_path == f"manifest:{completion.manifest_digest}"
    completed = recorded_events(data_dir, upload_id)[-1]
    assert isinstance(completed, UploadCompleted)
    assert completed.path == completion.file_path
    assert file.location is None
    assert read_back == data
    assert final_files(data_dir) == []


@pytest.fixture
def none_server(make_server: MakeServer) -> Server:
    return make_server(CHUNKSTORE_MATERIALIZE="none")


@pytest.fixture
def none_client(none_server: Server) -> Iterator[httpx.Client]:
    with none_server.client(OWNER) as client:
        yield client


def test_none_ranges_start_at_the_chunk_that_holds_them(none_client: httpx.Client) -> None:
    data = os.urandom(10 * 4 * KiB + 77)
    upload_id = upload_whole(none_client, data, 4 * KiB)
    assert complete(none_client, upload_id).status_code == 200
    size = len(data)
    ranges = {
        "bytes=0-0": (0, 0),
        "bytes=4095-4096": (4095, 4096),
        "bytes=4000-12400": (4000, 12400),
        "bytes=8192-": (8192, size - 1),
        f"bytes={size - 1}-{size - 1}": (size - 1, size - 1),
        "bytes=-1": (size - 1, size - 1),
        "bytes=-4173": (size - 4173, size - 1),
    }

    for header, (first, last) in ranges.items():
        response = none_client.get(f"{FILES}/{upload_id}", headers={"Range": header})
        assert response.status_code == 206, header
        assert response.content == data[first : last + 1], header
        assert response.headers["content-range"] == f"bytes {first}-{last}/{size}"
    whole = none_client.get(f"{FILES}/{upload_id}")
    assert whole.status_code == 200 and whole.content == data


def test_none_upload_is_completed_audited_clean_and_kept_by_gc(
    none_server: Server, none_client: httpx.Client
) -> None:
    data = os.urandom(300 * KiB)
    upload_id = upload_whole(none_client, data, 64 * KiB)
    assert complete(none_client, upload_id).status_code == 200

    status = status_of(none_client, upload_id)
    swept = none_server.cli("gc", "--hours", "0", "--grace", "0", "--json")
    audited = none_server.cli("audit", "--json")

    assert status["status"] == "completed"
    assert status["file_path"].startswith("manifest:")
    assert swept.returncode == 0, swept.stderr
    assert json.loads(swept.stdout)["orphan_files_removed"] == 0
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert json.loads(audited.stdout)["findings"] == []
    assert none_client.get(f"{FILES}/{upload_id}").content == data
    assert final_files(none_server.data_dir) == []


def test_none_deleting_an_upload_answers_204_without_a_file_to_remove(
    none_client: httpx.Client,
) -> None:
    upload_id = upload_whole(none_client, os.urandom(5 * KiB), KiB)
    assert complete(none_client, upload_id).status_code == 200

    assert none_client.delete(f"{FILES}/{upload_id}").status_code == 204

    assert status_of(none_client, upload_id)["status"] == "deleted"
    assert_problem(none_client.get(f"{FILES}/{upload_id}"), 404, "upload-not-found")


def test_an_unknown_materialization_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNKSTORE_MATERIALIZE", "reflink")

    with pytest.raises(ValueError, match="CHUNKSTORE_MATERIALIZE"):
        Settings.from_env()


# -- kill -9 during completion ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["copy", "none"])
def test_kill_9_during_completion_leaves_it_done_or_still_completable(
    make_server: MakeServer, mode: str
) -> None:
    data = os.urandom(64 * MiB)
    server = make_server(CHUNKSTORE_MATERIALIZE=mode)
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


# -- ranges out of the chunks ----------------------------------------------------------------


def test_a_range_reads_only_the_chunks_it_touches_whatever_their_sizes() -> None:
    blobs = MemoryBlobStore()
    sizes = [3, 0, 5, 1, 0, 0, 7, 2]
    pieces = [os.urandom(size) for size in sizes]
    chunks = [(blobs.put(piece).digest, len(piece)) for piece in pieces]
    data = b"".join(pieces)
    # Gone chunks before and after the range: reading them would fail.
    blobs.delete(chunks[0][0])
    blobs.delete(chunks[-1][0])

    for start in range(3, 16):  # bytes 3 to 15: past the first chunk, before the last
        for end in range(start, 16):
            read = b"".join(chunks_range(blobs, chunks, start, end))
            assert read == data[start : end + 1], (start, end)
