"""Upload client: send a file's chunks that the server lacks, resume after a crash.

One upload runs three things at once, then completes:

1. **scan**: a thread cuts the file into chunks (offset, size, BLAKE3) in one
   streaming pass, and another computes the whole-file SHA-256; the file is never held
   in memory.
2. **declare**: the session leaves its chunk count open and takes the chunk list in
   pages of ~16 MiB of chunks as they are cut. A small state file remembers the upload
   id for this (server, token, file version, chunker), so running the same command
   again after a crash or Ctrl-C declares the pages again (the server checks them
   against those it has) and sends only what is still missing.
3. **transfer**: the chunks each page needs are grouped into batches of ~8 MiB; N
   worker threads, each with its own connection, send them while the scan goes on. A
   failed batch is retried with backoff, and only the chunks the server still misses
   are resent.
4. **complete**: the server assembles and validates the file; its SHA-256 must be the
   one the scan computed; the state file goes.

The chunk (the dedup unit, ~64 KiB with CDC) is not the request (the transfer unit,
~8 MiB): a batch request carries many chunks as frames, ``>II`` (index, length) then
the bytes, and the server checks each against the digest declared at init.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import os
import queue
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import blake3
import httpx
import msgspec

from chunkstore import batch as wire
from chunkstore.chunking import CDC_AVG, ChunkerName, ChunkInfo, KiB, cdc_sizes, iter_chunks

MiB = 1024 * 1024
DEFAULT_SERVER = "http://127.0.0.1:8000"
API = "/api/v1"
#: Payload per batch request: large enough that per-request costs (one transaction,
#: one round trip) vanish, small enough that a failed request wastes little.
BATCH_BYTES = 8 * MiB
#: Chunks declared per request (init, then pages of the chunk list); a server that
#: takes fewer says so (``chunk_page_size``) and is then sent pages of its size.
CHUNK_PAGE = 10_000
#: Statuses of a remembered upload that can take no more chunks: start a new one.
DEAD_STATUSES = frozenset({"expired", "cancelled", "failed", "deleted"})
#: Statuses in which the chunks are all there and only completion is left.
COMPLETING_STATUSES = frozenset({"assembling", "completed"})
#: A body cut off in transit is a network failure, although the server that saw it
#: answers 400; the client sees it only when the answer still gets through.
RETRYABLE_PROBLEMS = frozenset({"incomplete-body"})
#: Refusals that waiting cannot fix unless the server says how long to wait: the open
#: sessions end only when the owner completes or cancels one, or when they expire.
RETRY_ONLY_IF_TOLD = frozenset({"too-many-sessions"})
#: Send-then-complete rounds. Complete answers 409 with the missing chunks when some
#: are still missing (e.g. a session expiry race); more rounds than this is a bug.
COMPLETION_ROUNDS = 3
#: Most requests are quick; completion re-reads and validates the whole file.
REQUEST_TIMEOUT = httpx.Timeout(60.0)
#: Size of the pieces a batch body is written in.
BODY_PIECE = 1024 * 1024
#: Read size of the scan's SHA-256 pass.
SCAN_BLOCK = 4 * MiB
#: Chunks the scan hands over at a time (one wake-up of the declaring thread each).
SCAN_GROUP = 2 * MiB
#: A page of the chunk list is declared once its chunks cover this many bytes (or it
#: holds a page's number of chunks): sending starts after the first few MiB are cut,
#: not after the whole file, and each declaration stays a small request.
PAGE_BYTES = 16 * MiB
COMPLETE_TIMEOUT = httpx.Timeout(60.0, read=3600.0)

T = TypeVar("T")


# -- results and errors ------------------------------------------------------------------


class UploadResult(msgspec.Struct, frozen=True):
    """What an upload did; ``--json`` prints exactly these fields."""

    upload_id: str
    status: str
    bytes_total: int
    #: Chunk payload bytes this run handed to the network (retries included).
    bytes_sent: int
    #: Bytes the server did not need to receive (from its completion answer).
    bytes_deduplicated: int
    sha256: str


class ClientError(Exception):
    """The upload or query could not be done; ``str()`` says why in one sentence."""

    exit_code = 1


class UsageError(ClientError):
    """The caller asked for something impossible (no token, no such file)."""

    exit_code = 2


class ServerError(ClientError):
    """The server refused a request with an error that retrying cannot fix."""

    def __init__(self, status: int, slug: str, detail: str, problem: dict[str, Any]) -> None:
        super().__init__(self.message(status, slug, detail))
        self.status = status
        self.slug = slug
        self.detail = detail
        self.problem = problem

    @staticmethod
    def message(status: int, slug: str, detail: str) -> str:
        return f"{detail} (HTTP {status} {slug})"


class OutOfStorage(ServerError):
    """The server's disk is full (507): retrying cannot help until its operator frees
    space. What the server acknowledged is kept; running the command again resumes."""

    @staticmethod
    def message(status: int, slug: str, detail: str) -> str:
        return f"the server is out of storage ({status} {slug}): {detail}"


class GaveUp(ClientError):
    """A request kept failing for transient reasons until the attempts ran out."""


class FileChanged(ClientError):
    """The file changed after it was scanned: what was declared is no longer true."""


class TransientError(Exception):
    """A failure worth retrying: network error, timeout, and the answers
    ``is_transient`` names."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


# -- retries -----------------------------------------------------------------------------


class RetryPolicy(msgspec.Struct, frozen=True):
    """Bounded attempts with exponential backoff and full jitter.

    Full jitter (a uniform delay between 0 and the exponential cap) keeps parallel
    workers that failed together from retrying together.
    """

    attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 30.0
    #: Longest Retry-After obeyed, so a misconfigured server cannot park the client.
    max_retry_after: float = 600.0

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after ``failures`` consecutive failures (1 or more)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return random.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** (failures - 1)))


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header (delay in seconds, or an HTTP date) as seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def with_retries(policy: RetryPolicy, what: str, operation: Callable[[], T]) -> T:
    """Run ``operation`` until it succeeds, retrying only on TransientError."""
    failure: TransientError | None = None
    for attempt in range(policy.attempts):
        if failure is not None:
            time.sleep(policy.delay(attempt, failure.retry_after))
        try:
            return operation()
        except TransientError as error:
            failure = error
    raise GaveUp(f"{what} failed {policy.attempts} times; last error: {failure}")


# -- the HTTP API ------------------------------------------------------------------------


def answer_of(response: httpx.Response) -> Any:
    """The decoded JSON of a success, or the error it means (transient or not)."""
    if response.is_success:
        return response.json()
    status = response.status_code
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    slug = str(problem.get("type") or f"http-{status}").removeprefix("/problems/")
    detail = str(problem.get("detail") or response.reason_phrase or "request failed")
    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    if is_transient(status, slug, retry_after is not None):
        raise TransientError(f"HTTP {status} {slug}: {detail}", retry_after)
    if status == 507:
        raise OutOfStorage(status, slug, detail, problem)
    raise ServerError(status, slug, detail, problem)


def is_transient(status: int, slug: str, retry_after: bool) -> bool:
    """Whether an error answer is worth sending the request again for.

    5xx but 507 (a full disk stays full), 408 (the server stopped waiting for a slow
    body), 429 (but refusals that only the owner's own action ends, unless the server
    names a wait) and a body cut off on the way. Every other 4xx is final: the same
    request would be refused the same way.
    """
    if status == 507:
        return False
    if status >= 500 or status == 408 or slug in RETRYABLE_PROBLEMS:
        return True
    if status == 429:
        return retry_after or slug not in RETRY_ONLY_IF_TOLD
    return False


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The certificate-checking TLS context every connection shares. httpx builds one
    per client by default, loading the CA bundle each time (50-140 ms measured): with a
    client per upload thread that was up to a second of every upload's start."""
    return httpx.create_ssl_context()


@functools.cache
def plain_http_context() -> ssl.SSLContext:
    """The context given to connections to an ``http://`` server, which never use TLS:
    it trusts no certificate, so TLS there would fail closed, and it costs nothing to
    build, where loading the CA bundle took 64 ms of every upload's start (more while
    the scan thread competes for the interpreter)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class ServerApi:
    """The upload endpoints over one httpx.Client.

    One instance per thread: each worker keeps its own connection, so parallel
    batches really travel over parallel connections.
    """

    def __init__(self, server: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=server,
            headers={"Authorization": f"Bearer {token}"},
            timeout=REQUEST_TIMEOUT,
            verify=tls_context() if server.startswith("https://") else plain_http_context(),
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise TransientError(f"{type(error).__name__}: {error}") from error
        return answer_of(response)

    def init(self, body: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self.request(
            "POST",
            f"{API}/upload/init",
            content=msgspec.json.encode(body),
            headers={"Content-Type": "application/json"},
        )
        return answer

    def declare(self, upload_id: str, start: int, chunks: Sequence[ChunkInfo]) -> dict[str, Any]:
        """Declare the page of the chunk list that starts at index ``start``."""
        body = {"start": start, "chunks": declared(chunks)}
        answer: dict[str, Any] = self.request(
            "POST",
            f"{API}/upload/{upload_id}/chunk-list",
            content=msgspec.json.encode(body),
            headers={"Content-Type": "application/json"},
        )
        return answer

    def status(self, upload_id: str, start: int = 0) -> dict[str, Any]:
        """The status answer; its chunk lists start at index ``start``."""
        params = {"from": start} if start else None
        answer: dict[str, Any] = self.request(
            "GET", f"{API}/upload/status/{upload_id}", params=params
        )
        return answer

    def send_batch(self, upload_id: str, body: Iterable[bytes], length: int) -> dict[str, Any]:
        answer: dict[str, Any] = self.request(
            "POST",
            f"{API}/upload/{upload_id}/batch",
            content=body,
            # An explicit length lets the server refuse an oversized body before reading
            # it, and keeps httpx from switching to chunked transfer encoding.
            headers={"Content-Type": wire.MEDIA_TYPE, "Content-Length": str(length)},
        )
        return answer

    def complete(self, upload_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request(
            "POST",
            f"{API}/upload/complete",
            json={"upload_id": upload_id},
            timeout=COMPLETE_TIMEOUT,
        )
        return answer


def declared(chunks: Sequence[ChunkInfo]) -> list[dict[str, Any]]:
    """Chunks as a request declares them."""
    return [{"digest": chunk.digest, "size": chunk.size} for chunk in chunks]


def fetch_status(
    api: ServerApi, policy: RetryPolicy, upload_id: str, start: int = 0
) -> dict[str, Any]:
    """An upload's status, retried: it is asked right after failures, when the network
    is most likely still misbehaving."""
    return with_retries(policy, "asking the upload status", lambda: api.status(upload_id, start))


# -- scanning the file -------------------------------------------------------------------


class FileScan(msgspec.Struct, frozen=True):
    """A file version as the upload declares it."""

    path: Path
    size: int
    mtime_ns: int
    sha256: str
    chunks: list[ChunkInfo]


def scan_file(path: Path, chunker: ChunkerName, cdc_avg: int = CDC_AVG) -> FileScan:
    """Chunk list and whole-file SHA-256, streaming: memory stays flat. ``cdc_avg``: the
    FastCDC average (min a quarter of it, max four times it)."""
    before = os.stat(path)
    scanner = Scanner(path, before.st_size, chunker, cdc_avg).start()
    try:
        return scanner.finished(before)
    finally:
        scanner.stop()


class Scanner:
    """Cuts a file into chunks in a thread while the upload goes on.

    One thread cuts (FastCDC or fixed size) and hashes each chunk (BLAKE3), appending to
    ``chunks`` as it goes; ``page`` waits for the next page of them. SHA-256 of the whole
    file reads it a second time in another thread: both release the GIL and the second
    read comes from the page cache, so the scan takes about as long as chunking alone.
    """

    def __init__(self, path: Path, size: int, chunker: ChunkerName, cdc_avg: int) -> None:
        self.path = path
        #: The file's size when the upload began: a chunk past it means the file grew.
        self.size = size
        self.chunker: ChunkerName = chunker
        self.sizes = cdc_sizes(cdc_avg)
        #: Every chunk cut so far, in order; only ever appended to, so threads may read
        #: the indexes ``page`` handed out while the cutter appends.
        self.chunks: list[ChunkInfo] = []
        self.done = False
        self.error: BaseException | None = None
        self.sha256: str | None = None
        self.cut = threading.Condition()
        self.hashed = threading.Event()
        self.stopped = threading.Event()

    def start(self) -> Scanner:
        # Daemon threads: Ctrl-C or an error ends the process without finishing the scan.
        threading.Thread(target=self._cut, name="chunkstore-scan", daemon=True).start()
        threading.Thread(target=self._hash, name="chunkstore-sha256", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _cut(self) -> None:
        try:
            with open(self.path, "rb") as stream:
                cut: list[ChunkInfo] = []
                cut_bytes = 0
                for offset, data in iter_chunks(stream, self.chunker, **self.sizes):
                    if self.stopped.is_set():
                        return
                    if offset + len(data) > self.size:
                        raise FileChanged(f"{self.path} grew while it was being read; try again")
                    cut.append(ChunkInfo(offset, len(data), blake3.blake3(data).hexdigest()))
                    cut_bytes += len(data)
                    if cut_bytes >= SCAN_GROUP:  # one wake-up per group, not per chunk
                        self._publish(cut, False)
                        cut, cut_bytes = [], 0
                self._publish(cut, True)
        except BaseException as error:  # handed to the waiting thread
            with self.cut:
                self.error, self.done = error, True
                self.cut.notify_all()

    def _publish(self, cut: list[ChunkInfo], done: bool) -> None:
        with self.cut:
            self.chunks.extend(cut)
            self.done = done
            self.cut.notify_all()

    def _hash(self) -> None:
        try:
            self.sha256 = _sha256_of(self.path, self.stopped)
        except BaseException as error:  # handed to the waiting thread
            self.error = error
        finally:
            self.hashed.set()

    def page(self, start: int, most: int, boundary: int | None = None) -> list[ChunkInfo]:
        """The next page from index ``start``: at most ``most`` chunks covering about
        ``PAGE_BYTES``, ending at index ``boundary`` when that is past ``start``. Waits
        until they are cut; empty once every chunk is cut and ``start`` is the end."""
        limit = most if boundary is None or boundary <= start else min(most, boundary - start)
        with self.cut:
            while True:
                if self.error is not None:
                    raise self.error
                end = self._page_end(start, limit)
                if end is not None or self.done:
                    break
                self.cut.wait()
            return self.chunks[start : end if end is not None else start + limit]

    def _page_end(self, start: int, limit: int) -> int | None:
        """Where a page from ``start`` ends once enough is cut for it, else None."""
        chunks = self.chunks
        if len(chunks) - start >= limit:
            return start + limit
        if len(chunks) <= start:
            return None
        first = chunks[start].offset
        if chunks[-1].offset + chunks[-1].size - first < PAGE_BYTES:
            return None
        for end in range(start, len(chunks)):
            if chunks[end].offset + chunks[end].size - first >= PAGE_BYTES:
                return end + 1
        return None  # unreachable: the last chunk reaches PAGE_BYTES

    def finished(self, before: os.stat_result) -> FileScan:
        """The whole scan, once both threads are done; FileChanged if the file's size or
        modification time moved since ``before`` or its chunks do not add up to it."""
        with self.cut:
            while not self.done:
                self.cut.wait()
        self.hashed.wait()
        if self.error is not None:
            raise self.error
        assert self.sha256 is not None
        after = os.stat(self.path)
        size = sum(chunk.size for chunk in self.chunks)
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or (
            size != after.st_size
        ):
            raise FileChanged(f"{self.path} changed while it was being read; try again")
        return FileScan(self.path, size, after.st_mtime_ns, self.sha256, self.chunks)


def _sha256_of(path: Path, stopped: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as stream:
        while block := stream.read(SCAN_BLOCK):
            if stopped is not None and stopped.is_set():
                break
            digest.update(block)
    return digest.hexdigest()


class ChunkReader:
    """Reads chunks back from the file by offset, for any number of threads.

    ``os.pread`` has no shared file position, so one descriptor serves every worker.
    A chunk is not re-hashed here: the server hashes every frame against the digest
    declared for it and refuses one that differs (``checksum-mismatch``), so a file
    edited since the scan cannot slip through; ``explain`` then turns that refusal
    into a clear message. (Re-hashing cost the client a BLAKE3 pass over every byte
    it sent, on the cores the server needs too.)
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, chunk: ChunkInfo) -> bytes:
        data = os.pread(self.fd, chunk.size, chunk.offset)
        if len(data) != chunk.size:
            raise self.changed(chunk)
        return data

    def changed(self, chunk: ChunkInfo) -> FileChanged:
        return FileChanged(
            f"{self.path} changed during the upload (bytes at offset {chunk.offset});"
            " run the command again to upload the new version"
        )

    def explain(self, error: ServerError, chunks: Sequence[ChunkInfo]) -> ClientError:
        """A ``checksum-mismatch`` refusal of ``chunks``: ``FileChanged`` naming the
        first chunk whose bytes on disk no longer hash to its scanned digest, else the
        server's own error (the bytes were damaged on the way)."""
        for chunk in chunks:
            data = os.pread(self.fd, chunk.size, chunk.offset)
            if len(data) != chunk.size or blake3.blake3(data).hexdigest() != chunk.digest:
                return self.changed(chunk)
        return error

    def close(self) -> None:
        os.close(self.fd)


# -- resume state ------------------------------------------------------------------------


class StateKey(msgspec.Struct, frozen=True):
    """What makes two runs the same upload: same server, owner, file version, chunker."""

    server: str
    #: SHA-256 of the token, so that two owners uploading one file keep apart.
    token_sha256: str
    path: str
    size: int
    mtime_ns: int
    chunker: str


class UploadState(msgspec.Struct, frozen=True):
    key: StateKey
    upload_id: str
    #: Written by earlier versions, which hashed the whole file before init; a resumed
    #: run now checks the chunks it declares again against those the server has.
    sha256: str | None = None


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/chunkstore``, else ``~/.local/state/chunkstore``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "chunkstore"


class StateStore:
    """Resume records, one small JSON file per StateKey."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, key: StateKey) -> Path:
        name = hashlib.sha256(msgspec.json.encode(key)).hexdigest()[:32]
        return self.directory / f"{name}.json"

    def load(self, key: StateKey) -> UploadState | None:
        """The record for ``key``; an unreadable or foreign file counts as none."""
        try:
            state = msgspec.json.decode(self.path_for(key).read_bytes(), type=UploadState)
        except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
            return None
        return state if state.key == key else None

    def save(self, state: UploadState) -> None:
        """Write atomically and durably: a crash leaves the old record or the new one."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self.path_for(state.key)
        part = final.with_suffix(f".{os.getpid()}.part")
        with open(part, "wb") as out:
            out.write(msgspec.json.encode(state))
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, final)

    def remove(self, key: StateKey) -> None:
        self.path_for(key).unlink(missing_ok=True)


# -- planning ----------------------------------------------------------------------------


def indexes_to_send(answer: dict[str, Any], chunks: Sequence[ChunkInfo]) -> list[int]:
    """The chunks to send, from an init or status answer, in file order.

    The server names one index per digest it still needs (``needed_chunks``); sending
    that index fills every other index with the same digest. An answer without that
    field (a server without dedup) gets one index per missing digest, chosen here.
    """
    needed = answer.get("needed_chunks")
    if needed is not None:
        return sorted(int(index) for index in needed)
    seen: set[str] = set()
    chosen: list[int] = []
    for index in sorted(int(index) for index in answer.get("missing_chunks", [])):
        if chunks[index].digest not in seen:
            seen.add(chunks[index].digest)
            chosen.append(index)
    return chosen


def plan_batches(
    indexes: Sequence[int], chunks: Sequence[ChunkInfo], limit: int = BATCH_BYTES
) -> list[list[int]]:
    """Group indexes, in the given order, into batches of at most ``limit`` payload bytes.

    A chunk larger than the limit travels alone; a batch is never empty.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for index in indexes:
        size = chunks[index].size
        if current and current_bytes + size > limit:
            batches.append(current)
            current, current_bytes = [], 0
        current.append(index)
        current_bytes += size
    if current:
        batches.append(current)
    return batches


# -- progress ----------------------------------------------------------------------------


class ProgressListener(Protocol):
    """Told about the transfer; ``advance`` is called from worker threads."""

    def start(self, bytes_total: int, bytes_to_send: int) -> None: ...

    def advance(self, bytes_sent: int) -> None: ...

    def finish(self) -> None: ...


class SentCounter:
    """Payload bytes handed to the network, summed across worker threads."""

    def __init__(self, listener: ProgressListener | None) -> None:
        self.listener = listener
        self.bytes_sent = 0
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.bytes_sent += count
        if self.listener is not None:
            self.listener.advance(count)


# -- the transfer ------------------------------------------------------------------------


class Transfer:
    """Sends chunks of one upload over N connections, each batch retried on its own."""

    def __init__(
        self,
        upload_id: str,
        chunks: Sequence[ChunkInfo],
        reader: ChunkReader,
        counter: SentCounter,
        policy: RetryPolicy,
        open_api: Callable[[], ServerApi],
    ) -> None:
        self.upload_id = upload_id
        #: The file's chunks; it may still grow while batches of those cut are sent.
        self.chunks = chunks
        self.reader = reader
        self.counter = counter
        self.policy = policy
        self.open_api = open_api

    def run(self, batches: list[list[int]], parallel: int) -> None:
        """Send every batch; the first fatal error stops the other workers."""
        sender = Sender(self, min(parallel, len(batches)))
        for batch in batches:
            sender.put(batch)
        sender.finish()

    def send(self, api: ServerApi, batch: list[int]) -> None:
        """Send one batch until the server has all of it.

        After a failure the server may have kept some frames (whole frames of a cut
        body are kept; a lost answer may hide a full success), so status says which
        of these indexes are still missing and only those go again.
        """
        pending = batch
        failure: TransientError | None = None
        for attempt in range(self.policy.attempts):
            if failure is not None:
                time.sleep(self.policy.delay(attempt, failure.retry_after))
                pending = self.still_missing(api, pending)
                if not pending:
                    return
            try:
                api.send_batch(self.upload_id, self.frames(pending), self.body_length(pending))
                return
            except TransientError as error:
                failure = error
            except ServerError as error:
                if error.slug != "checksum-mismatch":
                    raise
                raise self.reader.explain(error, [self.chunks[i] for i in pending]) from error
        raise GaveUp(
            f"sending {len(pending)} chunks failed {self.policy.attempts} times;"
            f" last error: {failure}"
        )

    def still_missing(self, api: ServerApi, indexes: list[int]) -> list[int]:
        """Which of ``indexes`` the server still misses. The status lists are complete
        only up to its ``next_from``; indexes past it are sent again (harmless)."""
        status = fetch_status(api, self.policy, self.upload_id, min(indexes))
        missing = set(status["missing_chunks"])
        cut = status.get("next_from")
        return [
            index for index in indexes if index in missing or (cut is not None and index >= cut)
        ]

    def body_length(self, indexes: list[int]) -> int:
        return wire.batch_length([self.chunks[index].size for index in indexes])

    def frames(self, indexes: list[int]) -> Iterator[bytes]:
        """The batch body, read from the file on demand, in pieces of about 1 MiB.

        Pieces are gathered because each one becomes a socket write and, on the
        server, a receive event: one per 64 KiB chunk measured several times slower.
        A chunk is counted as sent once the piece holding it was handed to httpx.
        """
        piece = bytearray()
        counted = 0
        for index in indexes:
            data = self.reader.read(self.chunks[index])
            piece += wire.frame_header(index, len(data))
            piece += data
            counted += len(data)
            if len(piece) >= BODY_PIECE:
                yield bytes(piece)
                self.counter.add(counted)
                piece.clear()
                counted = 0
        if piece:
            yield bytes(piece)
            self.counter.add(counted)


class Sender:
    """N worker threads, each with its own connection, sending the batches ``put`` to
    them as they come; the first fatal error stops the others and is raised to the
    caller (by ``put``, ``check`` or ``finish``)."""

    def __init__(self, transfer: Transfer, parallel: int) -> None:
        self.transfer = transfer
        self.work: queue.SimpleQueue[list[int] | None] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        # Daemon threads: on Ctrl-C the process exits without waiting for requests in
        # flight; whole frames that reached the server are kept, the rest resent later.
        self.threads = [
            threading.Thread(target=self.worker, name=f"chunkstore-upload-{number}", daemon=True)
            for number in range(max(1, parallel))
        ]
        for thread in self.threads:
            thread.start()

    def worker(self) -> None:
        api: ServerApi | None = None
        try:
            while not self.stop.is_set():
                batch = self.work.get()
                if batch is None or self.stop.is_set():
                    return
                if api is None:
                    api = self.transfer.open_api()
                self.transfer.send(api, batch)
        except BaseException as error:  # handed to the caller's thread
            self.failures.append(error)
            self.stop.set()
        finally:
            if api is not None:
                api.close()

    def check(self) -> None:
        if self.failures:
            raise self.failures[0]

    def put(self, batch: list[int]) -> None:
        self.check()
        self.work.put(batch)

    def finish(self) -> None:
        """Wait until every batch put is sent (or a worker failed)."""
        for _ in self.threads:
            self.work.put(None)
        try:
            for thread in self.threads:
                thread.join()
        except BaseException:
            self.stop.set()
            raise
        self.check()

    def abandon(self) -> None:
        """Stop the workers after the requests in flight; what is queued is not sent."""
        self.stop.set()
        for _ in self.threads:
            self.work.put(None)


class BatchPlanner:
    """Groups the indexes to send, page after page, into batches of about
    ``limit`` bytes for a Sender; the last, partial one goes with ``flush``."""

    def __init__(self, sender: Sender, chunks: Sequence[ChunkInfo], limit: int) -> None:
        self.sender = sender
        self.chunks = chunks
        self.limit = limit
        self.pending: list[int] = []
        self.pending_bytes = 0

    def add(self, indexes: Iterable[int]) -> None:
        for index in indexes:
            self.pending.append(index)
            self.pending_bytes += self.chunks[index].size
        if self.pending_bytes >= self.limit:
            *full, rest = plan_batches(self.pending, self.chunks, self.limit)
            for batch in full:
                self.sender.put(batch)
            self.pending = rest
            self.pending_bytes = sum(self.chunks[index].size for index in rest)
        self.sender.check()

    def flush(self) -> None:
        if self.pending:
            self.sender.put(self.pending)
        self.pending, self.pending_bytes = [], 0


class ListMismatch(Exception):
    """A remembered upload's declared chunk list differs from the file's chunks."""


# -- the client --------------------------------------------------------------------------


class UploadClient:
    """Resumable, deduplicating uploads to one chunkstore server as one owner.

    ``state_dir`` (default: :func:`default_state_dir`) holds the resume records.
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        token: str = "",
        *,
        parallel: int = 4,
        chunker: ChunkerName = "cdc",
        state_dir: Path | None = None,
        retry: RetryPolicy | None = None,
        progress: ProgressListener | None = None,
        batch_bytes: int = BATCH_BYTES,
        cdc_avg: int = CDC_AVG,
    ) -> None:
        if not token:
            raise UsageError("no token: pass --token or set CHUNKSTORE_TOKEN")
        if not server.startswith(("http://", "https://")):
            raise UsageError(f"server must be an http:// or https:// URL, not {server!r}")
        if parallel < 1:
            raise UsageError("parallel must be at least 1")
        if chunker not in ("cdc", "fixed"):
            raise UsageError(f"chunker must be 'cdc' or 'fixed', not {chunker!r}")
        try:
            cdc_sizes(cdc_avg)
        except ValueError as error:
            raise UsageError(str(error)) from None
        self.cdc_avg = cdc_avg
        self.server = server.rstrip("/")
        self.token = token
        self.parallel = parallel
        self.chunker: ChunkerName = chunker
        self.states = StateStore(state_dir or default_state_dir())
        self.retry = retry or RetryPolicy()
        self.progress = progress
        self.batch_bytes = batch_bytes

    def open_api(self) -> ServerApi:
        return ServerApi(self.server, self.token)

    def status(self, upload_id: str) -> dict[str, Any]:
        """The server's status answer for one upload."""
        api = self.open_api()
        try:
            return fetch_status(api, self.retry, upload_id)
        finally:
            api.close()

    def upload(
        self, path: str | os.PathLike[str], mime_type: str = "application/octet-stream"
    ) -> UploadResult:
        """Upload one file, resuming an earlier interrupted run of the same upload.

        The file is cut in a thread while the chunks cut so far are declared and sent:
        the scan overlaps the transfer instead of preceding it. ``mime_type`` defaults to
        declaring nothing: the server detects the type from the content, and a guess
        from the extension could only cause a mismatch.
        """
        file = Path(path).resolve()
        if not file.is_file():
            raise UsageError(f"{path}: not a regular file")
        try:
            before = os.stat(file)
            reader = ChunkReader(file)
        except OSError as error:
            raise ClientError(f"cannot read {file}: {error.strerror or error}") from error
        key = self.key_of(file, before.st_size, before.st_mtime_ns)
        scanner = Scanner(file, before.st_size, self.chunker, self.cdc_avg).start()
        counter = SentCounter(self.progress)
        if self.progress is not None:
            self.progress.start(before.st_size, before.st_size)
        api = self.open_api()
        try:
            upload_id, answer = self.send_while_scanning(
                api, key, scanner, reader, counter, mime_type
            )
            scan = scanner.finished(before)
            completion = self.finish(api, upload_id, answer, scan, reader, counter)
        except OSError as error:
            raise ClientError(f"cannot read {file}: {error.strerror or error}") from error
        finally:
            scanner.stop()
            reader.close()
            api.close()
            if self.progress is not None:
                self.progress.finish()
        self.states.remove(key)
        if completion.get("sha256") != scan.sha256:
            # The chunks were hashed by one read and the whole file by another: they
            # disagree only if the file changed between them.
            raise FileChanged(
                f"{file} changed during the upload: the server assembled a file with SHA-256"
                f" {completion.get('sha256')} (upload {upload_id}), but {file} has"
                f" {scan.sha256} now; run the command again to upload the new version"
            )
        return UploadResult(
            upload_id=upload_id,
            status=str(completion["status"]),
            bytes_total=int(completion.get("bytes_total", scan.size)),
            bytes_sent=counter.bytes_sent,
            bytes_deduplicated=int(completion.get("bytes_deduplicated", 0)),
            sha256=str(completion["sha256"]),
        )

    def state_key(self, scan: FileScan) -> StateKey:
        return self.key_of(scan.path, scan.size, scan.mtime_ns)

    def key_of(self, path: Path, size: int, mtime_ns: int) -> StateKey:
        return StateKey(
            server=self.server,
            token_sha256=hashlib.sha256(self.token.encode()).hexdigest(),
            path=str(path),
            size=size,
            mtime_ns=mtime_ns,
            # Another average cuts other chunks: another upload (the default keeps the
            # name older resume records have).
            chunker=self.chunker
            if self.chunker != "cdc" or self.cdc_avg == CDC_AVG
            else f"cdc-{self.cdc_avg // KiB}k",
        )

    def resume(self, api: ServerApi, key: StateKey) -> tuple[str, dict[str, Any]] | None:
        """The remembered upload and its status, if it can still be continued. Whether
        it is this file's is checked as its chunk list is declared again."""
        state = self.states.load(key)
        if state is None:
            return None
        try:
            status = fetch_status(api, self.retry, state.upload_id)
        except ServerError as error:
            if error.status in (404, 410):  # gone, or expired: start afresh
                return None
            raise
        if status.get("status") in DEAD_STATUSES:
            return None
        return state.upload_id, status

    def start(
        self, api: ServerApi, key: StateKey, scan: FileScan, mime_type: str
    ) -> tuple[str, dict[str, Any]]:
        """A new upload session for a scanned file, its first page declared at init."""
        return self.open_session(api, key, scan.size, scan.chunks[:CHUNK_PAGE], mime_type)

    def open_session(
        self,
        api: ServerApi,
        key: StateKey,
        size: int,
        first_page: Sequence[ChunkInfo],
        mime_type: str,
    ) -> tuple[str, dict[str, Any]]:
        """A new upload session with its chunk count left open, remembered before any
        chunk is sent. ``first_page`` goes with the init if the server takes a page that
        long; otherwise the init declares none and its answer says the page size."""
        body = {
            "filename": Path(key.path).name,
            "total_size": size,
            "mime_type": mime_type,
            "chunk_list_open": True,
            "chunks": declared(first_page),
        }
        # A retried init whose first answer was lost leaves one unused session behind;
        # it expires on its own.
        try:
            answer = with_retries(self.retry, "starting the upload", lambda: api.init(body))
        except ServerError as error:
            if error.status != 413 or not body["chunks"]:
                raise
            body["chunks"] = []
            answer = with_retries(self.retry, "starting the upload", lambda: api.init(body))
        upload_id = str(answer["upload_id"])
        try:
            self.states.save(UploadState(key, upload_id))
        except OSError as error:
            raise ClientError(
                f"cannot write the resume state in {self.states.directory}:"
                f" {error.strerror or error}"
            ) from error
        return upload_id, answer

    def send_while_scanning(
        self,
        api: ServerApi,
        key: StateKey,
        scanner: Scanner,
        reader: ChunkReader,
        counter: SentCounter,
        mime_type: str,
    ) -> tuple[str, dict[str, Any]]:
        """Declare the chunk list page by page as the scanner cuts it, and send each
        page's needed chunks meanwhile. Returns the upload and its status once every
        chunk is declared and every batch sent.

        A remembered upload is continued by declaring its pages again from the first:
        the server takes a repeat of a declared page as a success and names what it
        still needs, and refuses one that differs (the file is not what was declared,
        though its size and time are): then a new upload starts.
        """
        remembered = self.resume(api, key)
        if remembered is not None and remembered[1].get("status") in COMPLETING_STATUSES:
            return remembered
        while True:
            if remembered is None:
                first = scanner.page(0, CHUNK_PAGE)
                upload_id, answer = self.open_session(api, key, key.size, first, mime_type)
                start = int(answer["declared_chunks"])
                page_size, declared_before = int(answer["chunk_page_size"]), 0
            else:
                upload_id, status = remembered
                start, declared_before = 0, int(status.get("declared_chunks", 0))
                page_size = int(self.declare_page(api, upload_id, 0, [])["chunk_page_size"])
            transfer = Transfer(
                upload_id, scanner.chunks, reader, counter, self.retry, self.open_api
            )
            sender = Sender(transfer, self.parallel)
            planner = BatchPlanner(sender, scanner.chunks, self.batch_bytes)
            try:
                if remembered is None:
                    planner.add(int(index) for index in answer["needed_chunks"])
                self.declare_pages(
                    api,
                    upload_id,
                    scanner,
                    planner,
                    start,
                    min(page_size, CHUNK_PAGE),
                    declared_before,
                )
                planner.flush()
                sender.finish()
            except ListMismatch:
                sender.abandon()
                remembered = None
                continue
            except BaseException:
                sender.abandon()
                raise
            return upload_id, fetch_status(api, self.retry, upload_id)

    def declare_pages(
        self,
        api: ServerApi,
        upload_id: str,
        scanner: Scanner,
        planner: BatchPlanner,
        start: int,
        page_size: int,
        declared_before: int,
    ) -> None:
        """Declare pages from index ``start`` as they are cut, each page's needed
        chunks to ``planner``. Below ``declared_before`` (a remembered upload) pages end
        where the server's list does, so each is a repeat it can compare."""
        while page := scanner.page(start, page_size, declared_before):
            try:
                answer = self.declare_page(api, upload_id, start, page)
            except ServerError as error:
                if error.slug == "declaration-conflict" and start < declared_before:
                    raise ListMismatch(error.detail) from error
                if error.slug == "chunk-list-past-size":
                    raise FileChanged(
                        f"{scanner.path} grew during the upload; run the command again"
                    ) from error
                raise
            planner.add(int(index) for index in answer["needed_chunks"])
            start += len(page)

    def finish(
        self,
        api: ServerApi,
        upload_id: str,
        answer: dict[str, Any],
        scan: FileScan,
        reader: ChunkReader,
        counter: SentCounter,
    ) -> dict[str, Any]:
        """Send what the server needs, then complete; resend if completion finds gaps."""
        transfer = Transfer(upload_id, scan.chunks, reader, counter, self.retry, self.open_api)
        for _ in range(COMPLETION_ROUNDS):
            if answer.get("status", "active") not in COMPLETING_STATUSES:
                answer = self.declare_rest(api, upload_id, answer, scan.chunks)
                self.send(transfer, self.needed(api, upload_id, answer, scan.chunks), scan)
            try:
                completion: dict[str, Any] = with_retries(
                    self.retry, "completing the upload", lambda: api.complete(upload_id)
                )
                return completion
            except ServerError as error:
                if error.slug != "upload-incomplete":
                    raise
            answer = fetch_status(api, self.retry, upload_id)
        raise GaveUp(
            f"upload {upload_id} still had missing chunks after {COMPLETION_ROUNDS} rounds"
        )

    def declare_rest(
        self, api: ServerApi, upload_id: str, answer: dict[str, Any], chunks: Sequence[ChunkInfo]
    ) -> dict[str, Any]:
        """Declare the pages of the chunk list the server does not have yet; returns the
        answer to plan from (a fresh status once pages were declared)."""
        declared_count = int(answer.get("declared_chunks", len(chunks)))
        if declared_count >= len(chunks):
            return answer
        page_size = answer.get("chunk_page_size")
        if page_size is None:  # a status answer: an empty page asks the server's size
            page_size = self.declare_page(api, upload_id, declared_count, [])["chunk_page_size"]
        for start in range(declared_count, len(chunks), int(page_size)):
            self.declare_page(api, upload_id, start, chunks[start : start + int(page_size)])
        return fetch_status(api, self.retry, upload_id)

    def declare_page(
        self, api: ServerApi, upload_id: str, start: int, chunks: Sequence[ChunkInfo]
    ) -> dict[str, Any]:
        # A page repeated after a lost answer is a success: declaring is idempotent.
        return with_retries(
            self.retry, "declaring the chunk list", lambda: api.declare(upload_id, start, chunks)
        )

    def needed(
        self, api: ServerApi, upload_id: str, answer: dict[str, Any], chunks: Sequence[ChunkInfo]
    ) -> list[int]:
        """The indexes to send: those of ``answer`` and, when its lists were cut (at
        10,000), those of the following status pages."""
        indexes = set(indexes_to_send(answer, chunks))
        while answer.get("next_from") is not None:
            answer = fetch_status(api, self.retry, upload_id, int(answer["next_from"]))
            indexes.update(indexes_to_send(answer, chunks))
        return sorted(indexes)

    def send(self, transfer: Transfer, indexes: list[int], scan: FileScan) -> None:
        if indexes:
            transfer.run(plan_batches(indexes, scan.chunks, self.batch_bytes), self.parallel)
