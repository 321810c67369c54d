"""``chunkstore upload`` declares its chunk list as it cuts the file and sends meanwhile:
an open chunk list, pages as they are cut, and resume after a run that died mid-scan."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from chunkstore.client import (
    PAGE_BYTES,
    FileChanged,
    RetryPolicy,
    ServerApi,
    UploadClient,
    plain_http_context,
    scan_file,
    tls_context,
)
from chunkstore.events import ChunksDeclared, ChunkStored, UploadInitiated
from chunkstore.testing import MakeServer, Server
from tests.helpers import put_chunk, recorded_events, status_of
from tests.test_client import write_random

MiB = 1024 * 1024
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


def uploader(server: Server, tmp_path: Path, **options: object) -> UploadClient:
    return UploadClient(
        server.url,
        server.token("alice"),
        state_dir=tmp_path / "state",
        retry=FAST_RETRY,
        **options,  # type: ignore[arg-type]
    )


def stored_file(server: Server, upload_id: str, name: str) -> bytes:
    return (server.data_dir / "files" / upload_id / name).read_bytes()


def test_upload_declares_an_open_list_in_pages_as_it_cuts_and_stores_the_same_bytes(
    server: Server, tmp_path: Path
) -> None:
    path = write_random(tmp_path / "big.bin", 2 * PAGE_BYTES + 3 * MiB)

    result = uploader(server, tmp_path).upload(path)

    assert stored_file(server, result.upload_id, "big.bin") == path.read_bytes()
    events = recorded_events(server.data_dir, result.upload_id)
    [initiated] = [event for event in events if isinstance(event, UploadInitiated)]
    assert initiated.chunk_list_open
    assert initiated.file_hash is None  # the whole-file hash is known only at the end
    pages = [event for event in events if isinstance(event, ChunksDeclared)]
    chunks = scan_file(path, "cdc").chunks
    starts = [0, *(page.start for page in pages)]
    ends = [*starts[1:], len(chunks)]
    # Pages of about PAGE_BYTES each, cut where the scan cut the chunks.
    assert len(starts) == 3
    for start, end in zip(starts, ends, strict=True):
        covered = chunks[end - 1].offset + chunks[end - 1].size - chunks[start].offset
        assert covered >= PAGE_BYTES or end == len(chunks)
        assert covered - chunks[end - 1].size < PAGE_BYTES
    assert result.sha256 == scan_file(path, "cdc").sha256


def test_pages_follow_a_server_that_takes_fewer_chunks_per_page(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server(CHUNKSTORE_CHUNK_PAGE_SIZE="16")
    path = write_random(tmp_path / "file.bin", 5 * MiB)

    result = uploader(server, tmp_path).upload(path)

    assert stored_file(server, result.upload_id, "file.bin") == path.read_bytes()
    pages = [
        event
        for event in recorded_events(server.data_dir, result.upload_id)
        if isinstance(event, ChunksDeclared)
    ]
    total = len(scan_file(path, "cdc").chunks)
    assert [page.start for page in pages] == list(range(0, total, 16))


def test_an_upload_that_died_mid_scan_resumes_the_same_session(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server(CHUNKSTORE_CHUNK_PAGE_SIZE="16")
    path = write_random(tmp_path / "file.bin", 6 * MiB)
    client = uploader(server, tmp_path)
    scan = scan_file(path, "cdc")
    # What a run that died mid-scan leaves: the session remembered, the first two
    # pages declared, some of their chunks sent, the rest of the list never declared.
    api = client.open_api()
    try:
        upload_id, _ = client.open_session(
            api, client.state_key(scan), scan.size, scan.chunks[:16], "application/octet-stream"
        )
        client.declare_page(api, upload_id, 16, scan.chunks[16:32])
        data = path.read_bytes()
        for index, chunk in enumerate(scan.chunks[:20]):
            piece = data[chunk.offset : chunk.offset + chunk.size]
            assert put_chunk(api.http, upload_id, index, piece).status_code == 200
    finally:
        api.close()
    already = sum(chunk.size for chunk in scan.chunks[:20])

    result = client.upload(path)

    assert result.upload_id == upload_id
    assert result.bytes_sent == scan.size - already  # only what the server lacked
    assert stored_file(server, upload_id, "file.bin") == path.read_bytes()
    pages = [
        e for e in recorded_events(server.data_dir, upload_id) if isinstance(e, ChunksDeclared)
    ]
    # The two declared pages were declared again as repeats (nothing recorded); the
    # rest followed from where the server's list ended.
    assert [page.start for page in pages] == list(range(16, len(scan.chunks), 16))
    assert list((tmp_path / "state").iterdir()) == []


def test_a_remembered_session_whose_list_differs_is_replaced_by_a_new_one(
    server: Server, tmp_path: Path
) -> None:
    path = write_random(tmp_path / "file.bin", 3 * MiB)
    client = uploader(server, tmp_path)
    earlier = scan_file(path, "cdc")
    api = client.open_api()
    try:
        old_id, _ = client.open_session(
            api, client.state_key(earlier), earlier.size, earlier.chunks, "application/octet-stream"
        )
    finally:
        api.close()
    # The same size and modification time, other bytes: the remembered session is
    # found by its key, but its declared chunks are another file's.
    stat = path.stat()
    write_random(path, 3 * MiB)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    result = client.upload(path)

    assert result.upload_id != old_id
    assert stored_file(server, result.upload_id, "file.bin") == path.read_bytes()
    with server.client("alice") as http:
        assert status_of(http, old_id)["received_chunks"] == []


class AppendOnFirstSend:
    """A progress listener that appends to the file once the first bytes go out: the
    file changes while it is being uploaded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.appended = False

    def start(self, bytes_total: int, bytes_to_send: int) -> None:
        pass

    def advance(self, bytes_sent: int) -> None:
        if not self.appended:
            self.appended = True
            with open(self.path, "ab") as out:
                out.write(os.urandom(100_000))

    def finish(self) -> None:
        pass


def test_a_file_that_grows_during_the_upload_stops_it_with_file_changed(
    server: Server, tmp_path: Path
) -> None:
    path = write_random(tmp_path / "file.bin", 12 * MiB)
    client = uploader(server, tmp_path, progress=AppendOnFirstSend(path), parallel=1)

    with pytest.raises(FileChanged, match="changed|grew"):
        client.upload(path)


def test_a_second_upload_of_the_same_bytes_sends_nothing(server: Server, tmp_path: Path) -> None:
    path = write_random(tmp_path / "file.bin", 2 * PAGE_BYTES)
    first = uploader(server, tmp_path).upload(path)
    copy = tmp_path / "copy.bin"
    copy.write_bytes(path.read_bytes())

    second = uploader(server, tmp_path).upload(copy)

    assert first.bytes_sent == path.stat().st_size
    assert (second.bytes_sent, second.bytes_deduplicated) == (0, path.stat().st_size)
    assert stored_file(server, second.upload_id, "copy.bin") == path.read_bytes()
    events = recorded_events(server.data_dir, second.upload_id)
    assert all(event.reused for event in events if isinstance(event, ChunkStored))


def test_an_empty_file_uploads_with_an_open_list_of_no_chunks(
    server: Server, tmp_path: Path
) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")

    result = uploader(server, tmp_path).upload(path)

    assert (result.status, result.bytes_total, result.bytes_sent) == ("completed", 0, 0)
    assert result.sha256 == scan_file(path, "cdc").sha256
    assert stored_file(server, result.upload_id, "empty.bin") == b""


def test_a_plain_http_server_costs_no_ca_bundle_and_tls_there_would_fail_closed() -> None:
    tls_context.cache_clear()

    api = ServerApi("http://127.0.0.1:1", "token")
    api.close()

    assert tls_context.cache_info().currsize == 0  # the CA bundle was not loaded
    context = plain_http_context()
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert context.cert_store_stats()["x509_ca"] == 0  # trusts nothing
