"""Small helpers shared by the test modules: talking to the API, looking at a data dir."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import blake3
import httpx

from chunkstore.batch import MEDIA_TYPE as BATCH_MEDIA_TYPE
from chunkstore.blobs.packfile import HEADER_SIZE
from chunkstore.config import Settings
from chunkstore.eventlog import EventLog
from chunkstore.events import Event
from chunkstore.store import open_store

UPLOAD = "/api/v1/upload"
PROBLEM_JSON = "application/problem+json"
OCTET_STREAM = {"Content-Type": "application/octet-stream"}


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blake3_hex(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def split(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


def tiny_png() -> bytes:
    """A valid 1x1 greyscale PNG, built by hand."""

    def png_chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + png_chunk(b"IEND", b"")
    )


def init_upload(
    client: httpx.Client,
    data: bytes,
    chunk_size: int,
    filename: str = "file.bin",
    mime_type: str = "application/octet-stream",
    **extra: Any,
) -> dict[str, Any]:
    """Start an upload of ``data``; returns the init answer (asserts 201)."""
    response = client.post(
        f"{UPLOAD}/init",
        json={
            "filename": filename,
            "total_size": len(data),
            "mime_type": mime_type,
            "chunk_size": chunk_size,
            **extra,
        },
    )
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def put_chunk(
    client: httpx.Client,
    upload_id: str,
    index: int,
    data: bytes,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Send a chunk's raw bytes (the fast path)."""
    return client.put(
        f"{UPLOAD}/{upload_id}/chunks/{index}",
        content=data,
        headers={**OCTET_STREAM, **(headers or {})},
    )


def post_chunk(
    client: httpx.Client,
    upload_id: str,
    index: int,
    data: bytes,
    checksum: str | None = None,
) -> httpx.Response:
    """Send a chunk as base64 in JSON with its SHA-256 (the seed's transport)."""
    return client.post(
        f"{UPLOAD}/chunk",
        json={
            "upload_id": upload_id,
            "chunk_index": index,
            "chunk_data": base64.b64encode(data).decode(),
            "checksum": checksum if checksum is not None else sha256_hex(data),
        },
    )


def status_of(client: httpx.Client, upload_id: str) -> dict[str, Any]:
    response = client.get(f"{UPLOAD}/status/{upload_id}")
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def complete(client: httpx.Client, upload_id: str) -> httpx.Response:
    return client.post(f"{UPLOAD}/complete", json={"upload_id": upload_id})


def cancel(client: httpx.Client, upload_id: str, reason: str = "") -> httpx.Response:
    return client.post(f"{UPLOAD}/cancel", json={"upload_id": upload_id, "reason": reason})


def upload_whole(
    client: httpx.Client,
    data: bytes,
    chunk_size: int,
    filename: str = "file.bin",
    mime_type: str = "application/octet-stream",
) -> str:
    """Init and send every chunk over the raw endpoint; returns the upload id."""
    upload_id = init_upload(client, data, chunk_size, filename, mime_type)["upload_id"]
    for index, piece in enumerate(split(data, chunk_size)):
        response = put_chunk(client, upload_id, index, piece)
        assert response.status_code == 200, response.text
    return str(upload_id)


def frame(index: int, data: bytes) -> bytes:
    """One frame of a batch body: u32 index, u32 length (big-endian), the bytes."""
    return struct.pack(">II", index, len(data)) + data


def init_manifest(api: httpx.Client, pieces: list[bytes], filename: str = "pieces.bin") -> str:
    """Start an upload that declares ``pieces`` as its chunks; returns the upload id."""
    response = api.post(
        f"{UPLOAD}/init",
        json={
            "filename": filename,
            "total_size": sum(len(piece) for piece in pieces),
            "chunks": [{"digest": blake3_hex(piece), "size": len(piece)} for piece in pieces],
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["upload_id"])


def send_frames(api: httpx.Client, upload_id: str, body: Any) -> httpx.Response:
    """POST a batch body (bytes, or an iterator of bytes, which httpx sends chunked)."""
    return api.post(
        f"{UPLOAD}/{upload_id}/batch", content=body, headers={"Content-Type": BATCH_MEDIA_TYPE}
    )


def access_log_entry(log: Callable[[], str], request_id: str, timeout: float = 60) -> Any:
    """The server's access log line for one request, once the server has finished with
    it (the line is written then); ``log`` reads the server's log."""
    deadline = time.monotonic() + timeout
    while True:
        for line in log().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # granian's own lines, or a line still being written
            if (
                isinstance(entry, dict)
                and entry.get("logger") == "chunkstore.access"
                and entry.get("request_id") == request_id
            ):
                return entry
        assert time.monotonic() < deadline, f"request {request_id} not logged in {timeout} s"
        time.sleep(0.02)


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem of the given status and type; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert body["type"] == f"/problems/{slug}", body
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"]
    return body


def _index_rows(data_dir: Path) -> list[tuple[str, str, int, int]]:
    """(digest, pack, payload offset, length) of every row of the data dir's pack index,
    read straight from its database (the server may be running: WAL lets us)."""
    database = data_dir / "chunkstore.sqlite3"
    if not database.exists():
        return []
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'blobs'").fetchone():
            return []
        rows = conn.execute("SELECT digest, pack, offset, length FROM blobs").fetchall()
    finally:
        conn.close()
    return [(digest, pack, offset + HEADER_SIZE, length) for digest, pack, offset, length in rows]


def _loose_files(data_dir: Path) -> list[Path]:
    return [path for path in (data_dir / "objects").rglob("*") if path.is_file()]


def stored_objects(data_dir: Path) -> set[str]:
    """Digests of every blob in the store: the pack index's rows and loose blobs."""
    return {row[0] for row in _index_rows(data_dir)} | {p.name for p in _loose_files(data_dir)}


def stored_bytes(data_dir: Path) -> int:
    """Payload bytes of every blob in the store (each digest once)."""
    return sum(row[3] for row in _index_rows(data_dir)) + sum(
        p.stat().st_size for p in _loose_files(data_dir)
    )


def pack_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "packs").glob("*.pack"))


class BlobPlace(NamedTuple):
    """Where a blob's payload lies: ``length`` bytes at ``offset`` of ``path``."""

    path: Path
    offset: int
    length: int


def blob_place(data_dir: Path, digest: str) -> BlobPlace:
    """Where the blob ``digest`` lies (its record's payload in a pack, or a loose file)."""
    for row_digest, pack, offset, length in _index_rows(data_dir):
        if row_digest == digest:
            return BlobPlace(data_dir / "packs" / f"{pack}.pack", offset, length)
    loose = data_dir / "objects" / digest[:2] / digest[2:4] / digest
    assert loose.is_file(), f"blob {digest} is not in the store"
    return BlobPlace(loose, 0, loose.stat().st_size)


def is_stored(data_dir: Path, data: bytes) -> bool:
    """Whether the store holds a blob of ``data``."""
    return blake3_hex(data) in stored_objects(data_dir)


def stored_copy(data_dir: Path, data: bytes) -> bytes:
    """The bytes the store holds for the blob of ``data``, read where they lie."""
    return read_blob(data_dir, blake3_hex(data))


def read_blob(data_dir: Path, digest: str) -> bytes:
    place = blob_place(data_dir, digest)
    with open(place.path, "rb") as file:
        file.seek(place.offset)
        return file.read(place.length)


def flip_byte(path: Path, offset: int = 0) -> None:
    """Damage a file on disk: the byte at ``offset`` XOR 0xFF, so it always changes."""
    with open(path, "r+b") as file:
        file.seek(offset)
        (byte,) = file.read(1)
        file.seek(offset)
        file.write(bytes([byte ^ 0xFF]))


def damage_blob(data_dir: Path, digest: str, at: int = 0) -> None:
    """Flip byte ``at`` of the blob's stored bytes, where they lie."""
    place = blob_place(data_dir, digest)
    flip_byte(place.path, place.offset + at)


def lose_blob(data_dir: Path, digest: str) -> None:
    """The blob is gone for good: its index row deleted and its bytes in the pack zeroed
    (so no rescan of the pack can bring it back), or its loose file removed."""
    place = blob_place(data_dir, digest)
    if place.path.suffix != ".pack":
        place.path.unlink()
        return
    with open(place.path, "r+b") as file:
        file.seek(place.offset)
        file.write(bytes(place.length))
    conn = sqlite3.connect(data_dir / "chunkstore.sqlite3")
    try:
        with conn:
            conn.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
    finally:
        conn.close()


def requests_in_progress(url: str) -> int:
    """Requests the server at ``url`` is handling, the one asking excluded (from
    ``/metrics``: a request counts from the moment a worker takes it)."""
    answer = httpx.get(f"{url}/metrics", timeout=30)
    assert answer.status_code == 200, answer.text
    for line in answer.text.splitlines():
        if line.startswith("chunkstore_http_requests_in_progress "):
            return int(float(line.split()[1])) - 1
    raise AssertionError("/metrics has no chunkstore_http_requests_in_progress")


def wait_for(condition: Callable[[], bool], what: str, deadline: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``deadline`` s."""
    ends = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < ends, f"{what} not within {deadline} s"
        time.sleep(0.02)


def upload_locked(data_dir: Path, upload_id: str) -> bool:
    """Whether a request holds the upload's lock (its lock file exists only then)."""
    return (data_dir / "locks" / upload_id).exists()


def temp_files(data_dir: Path) -> list[Path]:
    """Every file under the data dir's ``tmp/``, in its spread directories too."""
    return sorted(path for path in (data_dir / "tmp").rglob("*") if path.is_file())


def all_stream_ids(log: EventLog) -> list[str]:
    """Every stream the log holds, in order (from the whole log, as a reader sees it)."""
    return sorted({recorded.stream_id for recorded in log.read_all()})


def recorded_events(data_dir: Path, upload_id: str) -> list[Event]:
    """The events of one upload, read straight from the data dir's log."""
    store = open_store(Settings(data_dir=data_dir))
    try:
        return [recorded.event for recorded in store.log.read(upload_id)]
    finally:
        store.close()


# -- raw HTTP/1.1 over a socket: clients that misbehave as no library would ---------------


def start_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    """Open a connection and send ``head`` (a request line and headers, ending in an empty
    line) and ``body``, which may be only part of what the headers announce. The caller
    keeps the socket open and silent for as long as it likes."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head.encode("latin-1") + body)
    return sock


class RawAnswer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer_and_close(sock: socket.socket, deadline: float = 60.0) -> RawAnswer:
    """Read until the server closes the connection, at most ``deadline`` seconds, and
    parse the one HTTP/1.1 answer it sent. Fails if the connection stays open."""
    received = bytearray()
    ends = time.monotonic() + deadline
    while True:
        remaining = ends - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"connection still open after {deadline} s: {bytes(received)!r}")
        sock.settimeout(remaining)
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            continue
        if not piece:
            break
        received += piece
    if not received:
        raise AssertionError("the server closed the connection without an answer")
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(int(status_line.split()[1]), headers, body)
