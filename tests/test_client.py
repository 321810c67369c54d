"""The upload client against real servers: dedup, resume, retries, CLI contract."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from chunkstore.blobs.packfile import HEADER_SIZE
from chunkstore.chunking import ChunkInfo, chunk_file
from chunkstore.cli import render_progress
from chunkstore.client import (
    BATCH_BYTES,
    ChunkReader,
    FileChanged,
    OutOfStorage,
    RetryPolicy,
    SentCounter,
    ServerError,
    TransientError,
    UploadClient,
    UploadResult,
    UsageError,
    answer_of,
    plan_batches,
    retry_after_seconds,
    scan_file,
)
from chunkstore.events import ManifestWritten
from chunkstore.testing import MakeServer, Server
from chunkstore.validator import detect_mime
from tests.flaky_proxy import FlakyProxy
from tests.helpers import (
    UPLOAD,
    assert_problem,
    frame,
    init_manifest,
    init_upload,
    pack_files,
    read_blob,
    recorded_events,
    send_frames,
    status_of,
    stored_objects,
)

MiB = 1024 * 1024
KiB = 1024
RESULT_KEYS = {"upload_id", "status", "bytes_total", "bytes_sent", "bytes_deduplicated", "sha256"}
#: Quick retries: the tests' failures are injected, not congestion to back off from.
FAST_RETRY = RetryPolicy(attempts=10, base_delay=0.05, max_delay=0.5)


# -- helpers -----------------------------------------------------------------------------


def write_random(path: Path, size: int) -> Path:
    """A file of random bytes that the server's type detection reads as plain data.

    libmagic takes about 1 in 100 random heads for a DOS COM executable, which the
    policy refuses; such a head is simply drawn again.
    """
    with open(path, "wb") as out:
        for _ in range(size // MiB):
            out.write(os.urandom(MiB))
        out.write(os.urandom(size % MiB))
    while detect_mime(path.read_bytes()) != "application/octet-stream":
        with open(path, "r+b") as out:
            out.write(os.urandom(min(size, 4096)))
    return path


def with_inserted_byte(source: Path, target: Path, offset: int) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[:offset] + b"\x5a" + data[offset:])
    return target


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while piece := stream.read(MiB):
            digest.update(piece)
    return digest.hexdigest()


def upload(
    server_url: str, token: str, path: Path, state_dir: Path, **options: Any
) -> UploadResult:
    client = UploadClient(server_url, token, state_dir=state_dir, retry=FAST_RETRY, **options)
    return client.upload(path)


def objects_footprint(data_dir: Path) -> tuple[int, int, set[str]]:
    """(blob count, bytes of the pack files on disk, digests) of the store."""
    disk = sum(pack.stat().st_size for pack in pack_files(data_dir))
    names = stored_objects(data_dir)
    return len(names), disk, names


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chunkstore.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def missing_bytes(status: dict[str, Any], chunks: list[ChunkInfo]) -> int:
    """Bytes of the chunks the server has not received, declared yet or not (the client
    declares its chunk list as it cuts it)."""
    received = set(status["received_chunks"])
    assert not status["chunks_truncated"]
    return sum(chunk.size for index, chunk in enumerate(chunks) if index not in received)


@pytest.fixture(scope="module")
def file_64mib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random(tmp_path_factory.mktemp("files") / "random-64mib.bin", 64 * MiB)


# -- dedup -------------------------------------------------------------------------------


@pytest.mark.slow
def test_cdc_resends_only_the_edited_region_where_fixed_chunking_resends_everything(
    server: Server, file_64mib: Path, tmp_path: Path
) -> None:
    edited = with_inserted_byte(file_64mib, tmp_path / "edited.bin", 1000)
    size, edited_size = file_64mib.stat().st_size, edited.stat().st_size
    sent: dict[str, tuple[int, int]] = {}
    for chunker in ("cdc", "fixed"):
        token = server.token(f"{chunker}-{tmp_path.name}")  # a fresh owner per chunker
        first = upload(server.url, token, file_64mib, tmp_path / chunker, chunker=chunker)
        second = upload(server.url, token, edited, tmp_path / chunker, chunker=chunker)
        assert first.bytes_sent == size
        assert second.sha256 == sha256_of(edited)
        sent[chunker] = (first.bytes_sent, second.bytes_sent)

    for chunker, (first_sent, second_sent) in sent.items():
        print(
            f"\n{chunker:>5}: original sent {first_sent} B; after inserting 1 byte at offset 1000:"
            f" sent {second_sent} B of {edited_size} ({100 * second_sent / edited_size:.2f}%)"
        )
    assert sent["cdc"][1] < 0.02 * edited_size
    assert sent["fixed"][1] > 0.90 * edited_size


@pytest.mark.slow
def test_another_owner_sends_everything_but_the_store_grows_only_by_the_manifest(
    make_server: MakeServer, file_64mib: Path, tmp_path: Path
) -> None:
    server = make_server()
    upload(server.url, server.token("first-owner"), file_64mib, tmp_path / "first")
    count_before, bytes_before, names_before = objects_footprint(server.data_dir)

    result = upload(server.url, server.token("second-owner"), file_64mib, tmp_path / "second")

    count_after, bytes_after, names_after = objects_footprint(server.data_dir)
    manifests = [
        event.manifest_digest
        for event in recorded_events(server.data_dir, result.upload_id)
        if isinstance(event, ManifestWritten)
    ]
    assert len(manifests) == 1
    manifest = read_blob(server.data_dir, manifests[0])
    new_names = names_after - names_before
    print(
        f"\nsecond owner sent {result.bytes_sent} B of {file_64mib.stat().st_size};"
        f" store: {count_before} -> {count_after} blobs, packs {bytes_before} -> {bytes_after} B;"
        f" new: {len(new_names)} blob(s), manifest {len(manifest)} B"
    )
    assert result.bytes_sent == file_64mib.stat().st_size
    assert manifests[0] in new_names
    assert count_after - count_before <= 2  # the manifest, and at most one chunk
    # Two records' headers, the manifest and at most one (largest) CDC chunk.
    growth_beyond_manifest = bytes_after - bytes_before - len(manifest) - 2 * HEADER_SIZE
    assert growth_beyond_manifest <= 256 * 1024


def test_a_file_that_repeats_itself_sends_each_distinct_chunk_once(
    server: Server, owner: str, tmp_path: Path
) -> None:
    block = write_random(tmp_path / "block.bin", 3 * MiB).read_bytes()
    path = tmp_path / "repeated.bin"
    path.write_bytes(block * 4)

    result = upload(server.url, server.token(owner), path, tmp_path / "state")

    # One copy of the block, plus the few chunks that straddle the seams between copies.
    assert result.bytes_sent < 2 * len(block)
    assert result.bytes_deduplicated == result.bytes_total - result.bytes_sent
    assert result.sha256 == sha256_of(path)


# -- resume ------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_upload_resumes_and_sends_only_what_was_missing(
    server: Server, owner: str, tmp_path: Path
) -> None:
    path = write_random(tmp_path / "big.bin", 32 * MiB)
    chunks = chunk_file(path, "cdc")
    token, state_dir = server.token(owner), tmp_path / "state"
    # Slow connections keep the upload in flight long enough to kill it midway.
    with FlakyProxy(server.port, bytes_per_second=4 * MiB) as proxy:
        command = [
            sys.executable,
            "-m",
            "chunkstore.cli",
            "upload",
            str(path),
            "--server",
            proxy.url,
            "--token",
            token,
            "--parallel",
            "2",
            "--json",
            "--state-dir",
            str(state_dir),
        ]
        first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with server.client(owner) as api:
            upload_id = wait_for_upload_id(state_dir, first)
            at_kill = wait_for_some_chunks(api, upload_id, first)
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=30)
        assert first.returncode == -signal.SIGKILL
        missing_at_kill = missing_bytes(at_kill, chunks)
        assert 0 < missing_at_kill < path.stat().st_size

        proxy.bytes_per_second = None
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    print(
        f"\nmissing at kill: {missing_at_kill} B of {path.stat().st_size};"
        f" second run sent {result['bytes_sent']} B"
    )
    assert result["upload_id"] == upload_id
    assert result["bytes_sent"] <= missing_at_kill + BATCH_BYTES
    assert result["sha256"] == sha256_of(path)
    assert list(state_dir.iterdir()) == []


#: How long a test waits for a client process to get somewhere before giving up on it.
CLIENT_WAIT = 120.0


def wait_for_upload_id(
    state_dir: Path, process: subprocess.Popen[bytes], timeout: float = CLIENT_WAIT
) -> str:
    """The upload id the client remembered, once it has started the upload."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        for record in state_dir.glob("*.json"):
            return str(json.loads(record.read_bytes())["upload_id"])
        time.sleep(0.02)
    raise AssertionError(client_gave_up(process, "started the upload", timeout))


def wait_for_some_chunks(
    api: httpx.Client,
    upload_id: str,
    process: subprocess.Popen[bytes],
    timeout: float = CLIENT_WAIT,
) -> dict[str, Any]:
    """The first status answer that shows chunks received."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        status = status_of(api, upload_id)
        if status["received_chunks"]:
            return status
        time.sleep(0.02)
    raise AssertionError(client_gave_up(process, "sent a chunk", timeout))


def client_gave_up(process: subprocess.Popen[bytes], what: str, timeout: float) -> str:
    """Why a wait for the client ended; a client still running is killed first, so a
    failed test leaves no process behind."""
    if process.poll() is None:
        process.kill()
        return f"the client had not {what} within {timeout} s: {process.communicate(timeout=30)}"
    return f"the client exited before it {what}: {process.communicate()}"


def test_waiting_for_a_client_that_never_gets_going_ends_at_the_deadline(
    server: Server, owner: str, tmp_path: Path
) -> None:
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        with pytest.raises(AssertionError, match="within 0.2 s"):
            wait_for_upload_id(tmp_path, silent, timeout=0.2)
        assert silent.poll() is not None  # killed, not left behind

        silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with server.client(owner) as api:
            upload_id = init_upload(api, b"x" * 10, 10)["upload_id"]
            with pytest.raises(AssertionError, match="within 0.2 s"):
                wait_for_some_chunks(api, upload_id, silent, timeout=0.2)
        assert silent.poll() is not None
    finally:
        if silent.poll() is None:
            silent.kill()
            silent.wait(timeout=30)


class InterruptAfter:
    """A progress listener that raises once enough bytes were sent, like a crash."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = 0

    def start(self, bytes_total: int, bytes_to_send: int) -> None:
        pass

    def advance(self, bytes_sent: int) -> None:
        self.sent += bytes_sent
        if self.sent >= self.limit:
            raise KeyboardInterrupt

    def finish(self) -> None:
        pass


def test_interrupted_upload_continues_the_same_session_and_forgets_it_when_done(
    server: Server, owner: str, tmp_path: Path
) -> None:
    path = write_random(tmp_path / "file.bin", 12 * MiB)
    token, state_dir = server.token(owner), tmp_path / "state"
    interrupted = UploadClient(
        server.url, token, parallel=1, state_dir=state_dir, progress=InterruptAfter(3 * MiB)
    )
    with pytest.raises(KeyboardInterrupt):
        interrupted.upload(path)
    [record] = state_dir.glob("*.json")
    upload_id = json.loads(record.read_bytes())["upload_id"]
    with server.client(owner) as api:
        left = missing_bytes(status_of(api, upload_id), chunk_file(path, "cdc"))

    result = upload(server.url, token, path, state_dir)

    assert result.upload_id == upload_id
    assert 0 < result.bytes_sent <= left
    assert list(state_dir.iterdir()) == []


def test_remembered_upload_that_was_cancelled_is_replaced_by_a_new_one(
    server: Server, owner: str, tmp_path: Path
) -> None:
    path = write_random(tmp_path / "file.bin", 4 * MiB)
    token, state_dir = server.token(owner), tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        UploadClient(
            server.url, token, parallel=1, state_dir=state_dir, progress=InterruptAfter(MiB)
        ).upload(path)
    [record] = state_dir.glob("*.json")
    cancelled_id = json.loads(record.read_bytes())["upload_id"]
    with server.client(owner) as api:
        response = api.post(f"{UPLOAD}/cancel", json={"upload_id": cancelled_id})
        assert response.status_code == 200, response.text

    result = upload(server.url, token, path, state_dir)

    assert result.upload_id != cancelled_id
    assert result.status == "completed"
    assert result.sha256 == sha256_of(path)


# -- unreliable network ------------------------------------------------------------------


def test_upload_through_a_connection_dropping_proxy_completes_intact(
    server: Server, owner: str, tmp_path: Path
) -> None:
    path = write_random(tmp_path / "file.bin", 24 * MiB)
    token = server.token(owner)
    # Every connection is cut after a random number of bytes, until six have been: more
    # failures than any one request could absorb would make the outcome a matter of luck.
    with FlakyProxy(
        server.port, drop_probability=1.0, max_cut_after=2 * MiB, max_drops=6, seed=11
    ) as proxy:
        result = upload(proxy.url, token, path, tmp_path / "state", parallel=3)
    print(f"\nproxy: {proxy.connections} connections, {proxy.drops} cut")
    assert proxy.drops >= 1
    assert result.status == "completed"
    assert result.sha256 == sha256_of(path)
    with server.client(owner) as api:
        final = server.data_dir / status_of(api, result.upload_id)["file_path"]
    assert sha256_of(final) == sha256_of(path)


def test_overloaded_answers_503_and_429_are_retried(
    server: Server, owner: str, tmp_path: Path
) -> None:
    path = write_random(tmp_path / "file.bin", MiB)
    with FlakyProxy(server.port, refusals=[503, 429, 503]) as proxy:
        result = upload(proxy.url, server.token(owner), path, tmp_path / "state")
    assert proxy.refused == 3
    assert result.status == "completed"
    assert result.sha256 == sha256_of(path)


# -- the batch endpoint, spoken directly -------------------------------------------------


def test_batch_frame_whose_bytes_do_not_match_its_digest_is_refused_and_not_recorded(
    client: httpx.Client,
) -> None:
    pieces = [os.urandom(64 * 1024), os.urandom(64 * 1024)]
    upload_id = init_manifest(client, pieces)
    forged = bytes([pieces[0][0] ^ 0xFF]) + pieces[0][1:]

    response = send_frames(client, upload_id, frame(0, forged))

    assert_problem(response, 400, "checksum-mismatch")
    status = status_of(client, upload_id)
    assert status["received_chunks"] == []
    assert status["missing_chunks"] == [0, 1]


def test_batch_frames_before_a_forged_frame_are_kept(client: httpx.Client) -> None:
    pieces = [os.urandom(64 * 1024), os.urandom(64 * 1024)]
    upload_id = init_manifest(client, pieces)
    forged = pieces[1][:-1] + bytes([pieces[1][-1] ^ 0xFF])

    response = send_frames(client, upload_id, frame(0, pieces[0]) + frame(1, forged))

    assert_problem(response, 400, "checksum-mismatch")
    status = status_of(client, upload_id)
    assert status["received_chunks"] == [0]
    assert status["missing_chunks"] == [1]


# -- the command line --------------------------------------------------------------------


def test_upload_json_prints_exactly_one_object_with_the_six_result_fields(
    server: Server, owner: str, tmp_path: Path
) -> None:
    path = write_random(tmp_path / "report.bin", 3 * MiB)
    env = {"CHUNKSTORE_TOKEN": server.token(owner), "CHUNKSTORE_SERVER": server.url}

    done = cli("upload", str(path), "--json", "--state-dir", str(tmp_path / "state"), env=env)

    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n") and done.stdout.count("\n") == 1
    result = json.loads(done.stdout)
    assert set(result) == RESULT_KEYS
    assert result["status"] == "completed"
    assert result["bytes_total"] == result["bytes_sent"] == path.stat().st_size
    assert result["bytes_deduplicated"] == 0
    assert result["sha256"] == sha256_of(path)


def test_status_json_reports_a_completed_upload(server: Server, owner: str, tmp_path: Path) -> None:
    path = write_random(tmp_path / "file.bin", MiB)
    token = server.token(owner)
    result = upload(server.url, token, path, tmp_path / "state")

    done = cli("status", result.upload_id, "--server", server.url, "--token", token, "--json")

    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["upload_id"] == result.upload_id
    assert status["status"] == "completed"
    assert status["missing_chunks"] == []
    assert status["sha256"] == result.sha256


def test_request_the_server_refuses_exits_1_with_its_reason(server: Server, tmp_path: Path) -> None:
    path = write_random(tmp_path / "file.bin", 1024)

    done = cli(
        "upload", str(path), "--server", server.url, "--token", "not-a-token",
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip

    assert done.returncode == 1
    assert done.stdout == ""
    assert "401" in done.stderr and "unauthorized" in done.stderr


def test_upload_without_a_token_is_a_usage_error(tmp_path: Path) -> None:
    path = write_random(tmp_path / "file.bin", 1024)
    env = {key: value for key, value in os.environ.items() if key != "CHUNKSTORE_TOKEN"}

    done = subprocess.run(
        [sys.executable, "-m", "chunkstore.cli", "upload", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert "token" in done.stderr


# -- pure parts --------------------------------------------------------------------------


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Tue, 01 Jan 2030 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Tue, 01 Jan 2030 11:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def problem_answer(status: int, slug: str, **headers: str) -> httpx.Response:
    body = {"type": f"/problems/{slug}", "status": status, "detail": f"{slug} happened"}
    return httpx.Response(
        status, json=body, headers={"Content-Type": "application/problem+json", **headers}
    )


@pytest.mark.parametrize(
    ("status", "slug", "headers"),
    [
        (500, "internal-error", {}),
        (502, "http-502", {}),
        (503, "concurrency-conflict", {}),
        (408, "request-timeout", {}),
        (400, "incomplete-body", {}),
        (429, "http-429", {}),
        (429, "too-many-sessions", {"Retry-After": "5"}),
    ],
)
def test_answers_that_waiting_can_fix_are_retried(
    status: int, slug: str, headers: dict[str, str]
) -> None:
    with pytest.raises(TransientError):
        answer_of(problem_answer(status, slug, **headers))


@pytest.mark.parametrize(
    ("status", "slug"),
    [
        (400, "checksum-mismatch"),
        (401, "unauthorized"),
        (404, "upload-not-found"),
        (409, "chunk-conflict"),
        (410, "upload-expired"),
        (413, "too-large"),
        (415, "unsupported-media-type"),
        (422, "validation-failed"),
        (429, "too-many-sessions"),
        (507, "insufficient-storage"),
    ],
)
def test_answers_that_waiting_cannot_fix_fail_at_once(status: int, slug: str) -> None:
    with pytest.raises(ServerError) as refused:
        answer_of(problem_answer(status, slug))
    assert refused.value.status == status
    assert refused.value.slug == slug


def test_a_full_disk_fails_with_a_message_that_says_so() -> None:
    with pytest.raises(OutOfStorage) as refused:
        answer_of(problem_answer(507, "insufficient-storage"))
    assert str(refused.value) == (
        "the server is out of storage (507 insufficient-storage): insufficient-storage happened"
    )


def test_backoff_is_full_jitter_under_a_growing_cap_and_obeys_retry_after() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, max_retry_after=60.0)
    for failures, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        assert all(0.0 <= policy.delay(failures) <= cap for _ in range(200))
    assert policy.delay(1, retry_after=12.0) == 12.0
    assert policy.delay(1, retry_after=3600.0) == 60.0


def test_batches_stay_under_the_limit_and_a_larger_chunk_travels_alone() -> None:
    sizes = [3, 3, 3, 10, 2, 2]
    chunks = [ChunkInfo(0, size, f"{index}") for index, size in enumerate(sizes)]

    batches = plan_batches(range(len(sizes)), chunks, limit=6)

    assert batches == [[0, 1], [2], [3], [4, 5]]


def test_progress_line_shows_bytes_sent_and_skipped_rate_and_eta() -> None:
    line = render_progress(sent=16 * MiB, to_send=64 * MiB, skipped=8 * MiB, elapsed=2.0)

    assert "25.0%" in line
    assert "16.0 MiB/64.0 MiB sent" in line
    assert "8.0 MiB skipped" in line
    assert "8.0 MiB/s" in line
    assert "ETA 0:06" in line


def test_a_smaller_cdc_average_cuts_more_chunks_and_is_another_upload(
    server: Server, owner: str, tmp_path: Path
) -> None:
    path = write_random(tmp_path / "data.bin", 4 * MiB)
    default = upload(server.url, server.token(owner), path, tmp_path / "state")
    smaller = upload(server.url, server.token(owner), path, tmp_path / "state", cdc_avg=16 * KiB)

    assert smaller.upload_id != default.upload_id  # not a resume of the first
    assert smaller.sha256 == default.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with server.client(owner) as client:
        chunks = [
            client.get(f"/api/v1/upload/status/{result.upload_id}").json()["total_chunks"]
            for result in (default, smaller)
        ]
    # About 4 MiB / 64 KiB and 4 MiB / 16 KiB chunks.
    assert chunks[1] > 2 * chunks[0], chunks


def test_a_cdc_average_fastcdc_cannot_take_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="power of two"):
        UploadClient("http://127.0.0.1:1", "token", cdc_avg=48 * KiB, state_dir=tmp_path)
    answer = cli("upload", str(tmp_path), "--cdc-avg", "3")
    assert answer.returncode == 2 and "--cdc-avg" in answer.stderr


def test_a_file_edited_after_its_scan_stops_the_upload_with_a_clear_message(
    server: Server, owner: str, tmp_path: Path
) -> None:
    # The client does not re-hash what it sends; the server refuses a frame that does
    # not hash to its declared digest, and the client says which bytes changed.
    path = write_random(tmp_path / "edited.bin", 2 * MiB)
    client = UploadClient(server.url, server.token(owner), state_dir=tmp_path / "state")
    scan = scan_file(path, "cdc")
    with open(path, "r+b") as out:  # same size, other bytes, after the scan
        out.seek(MiB)
        out.write(os.urandom(1000))
    api = client.open_api()
    reader = ChunkReader(path)
    try:
        upload_id, answer = client.start(
            api, client.state_key(scan), scan, "application/octet-stream"
        )
        with pytest.raises(FileChanged, match="changed during the upload"):
            client.finish(api, upload_id, answer, scan, reader, SentCounter(None))
    finally:
        reader.close()
        api.close()
    with server.client(owner) as http:
        status = http.get(f"/api/v1/upload/status/{upload_id}").json()
    assert status["status"] == "active"
    assert len(status["received_chunks"]) < len(scan.chunks)  # the batch with it was refused
