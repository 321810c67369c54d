"""The benchmark suite: throughput, memory, dedup and the event log, each beside its
baseline, measured in the same run on the same machine.

    python -m benchmarks [--quick] [--out DIR] [--runs N]
    chunkstore bench [--quick] [--out DIR] [--runs N]

Starts every server it needs on 127.0.0.1 (each run of each case gets a fresh one and a
fresh data directory), stops them, and writes ``results.json``, ``results.md`` and PNG
plots to ``--out``. Every figure is the median of ``--runs`` runs; the throughput cases
take turns within each round, so a slow minute of the disk hits them all alike. Each
``ratio`` divides a figure by its baseline's median from the same run.

Cases:
- throughput of one upload of 1 GiB (256 MiB with ``--quick``) over loopback, end to end
  (first request to a verified, stored file), against a bare Litestar app on the same
  ASGI server that streams the body to disk while hashing it and fsyncs it (the
  ceiling), and against two tus servers people use, tuspyserver (FastAPI) and aiohttp-tus,
  driven by tuspy. Both peers are installed into a venv of their own with exact pins
  (``benchmarks/peers.py``); they write without fsync, chunkstore syncs every request.
- memory: the server's peak RSS for a small and a large upload (flat is the goal).
- dedup: consecutive releases of one public package's sdist, re-tarred uncompressed and
  cached, uploaded in order with ``chunkstore upload``: bytes sent and stored, fixed-size
  against CDC, each against the ideal that its chunker finds offline.
- event log: append rate (one transaction per chunk, as the server does for raw chunks)
  against bare SQLite inserts with the same pragmas; replay rate against reading and
  decoding the rows alone; audit's hashing rate against BLAKE3 of as many bytes in memory.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import httpx

from benchmarks import peers
from benchmarks.client_upload import client_upload
from benchmarks.common import (
    MiB,
    max_process_peak_rss,
    random_file,
    remove,
    scratch_dir,
    sha256_file,
)
from benchmarks.dedup_releases import blob_files, upload_all
from benchmarks.raw_upload import put_raw, start_session
from benchmarks.raw_upload import upload as raw_upload
from benchmarks.releases import DJANGO_RELEASES, release_tars
from benchmarks.tus_upload import tus_upload as chunkstore_tus_upload
from chunkstore import commands
from chunkstore.application import UploadService
from chunkstore.audit import replay_streams
from chunkstore.chunking import cdc_sizes, chunk_file
from chunkstore.config import Settings
from chunkstore.events import ChunkStored
from chunkstore.intake import Frame
from chunkstore.projections import project
from chunkstore.session import replay
from chunkstore.testing import (
    Server,
    answers_ok,
    free_port,
    start_group,
    stop_group,
    wait_until_ready,
)

GiB = 1024 * MiB
CHUNK = 8 * MiB
#: The latest full run's results are kept in the repository, with the README's table.
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: The seed's JSON transport carries base64, a third larger; the server's JSON body limit
#: is sized for the largest raw chunk, so JSON chunks are this size.
JSON_CHUNK = 4 * MiB


@dataclass
class Case:
    name: str
    group: str
    unit: str
    runs: list[float] = field(default_factory=list)
    #: Name of the case this one is divided by; None for a baseline.
    baseline: str | None = None
    note: str = ""
    #: True when a larger figure is worse (memory, bytes).
    lower_is_better: bool = False

    @property
    def figure(self) -> float:
        return statistics.median(self.runs)


@dataclass
class Profile:
    quick: bool
    runs: int
    size: int
    memory_sizes: tuple[int, int]
    releases: tuple[str, ...]
    log_events: int
    audit_bytes: int


def profile_for(quick: bool, runs: int | None) -> Profile:
    if quick:
        return Profile(
            True, runs or 2, 256 * MiB, (64 * MiB, 512 * MiB), DJANGO_RELEASES[:3], 2_000, 64 * MiB
        )
    return Profile(False, runs or 3, GiB, (256 * MiB, 4 * GiB), DJANGO_RELEASES, 10_000, 512 * MiB)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- servers ----------------------------------------------------------------------------


class CeilingServer:
    """benchmarks.ceiling_app on granian, as chunkstore is served."""

    def __init__(self, directory: Path, durable: bool = True) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CEILING_DIR": str(directory)}
        env["CEILING_FSYNC"] = "1" if durable else "0"
        self.process = start_group(
            [
                sys.executable,
                "-m",
                "granian",
                "--interface",
                "asgi",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--no-access-log",
                "benchmarks.ceiling_app:create_app",
            ],
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_ready(
            self.process, lambda: answers_ok(f"{self.url}/healthz"), 30, "the ceiling app"
        )

    def stop(self) -> None:
        stop_group(self.process)


def stream_file(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while piece := source.read(MiB):
            yield piece


# -- throughput -------------------------------------------------------------------------


def run_ceiling(work: Path, path: Path, expected_blake3: str, durable: bool = True) -> float:
    server = CeilingServer(work / "ceiling", durable)
    try:
        started = time.perf_counter()
        answer = httpx.put(f"{server.url}/upload/bench", content=stream_file(path), timeout=600)
        seconds = time.perf_counter() - started
        answer.raise_for_status()
        assert answer.json()["blake3"] == expected_blake3, "ceiling: hash differs"
        return seconds
    finally:
        server.stop()


#: The final file's making (CHUNKSTORE_MATERIALIZE): ``copy`` (the default) writes every
#: byte a second time, as a file beside the packs; ``none`` serves the file from its
#: chunks, one durable copy of each byte, as the ceiling and the peers keep.
NONE = {"CHUNKSTORE_MATERIALIZE": "none"}
NONE_SUFFIX = ", materialize none"


def chunkstore_server(work: Path, name: str, env: dict[str, str] | None = None) -> Server:
    return Server(work / f"data-{name}", env=env).start()


def run_raw(server: Server, path: Path, expected: str) -> float:
    timing = raw_upload(server, path, CHUNK)
    assert timing["sha256"] == expected, "raw: final file hash differs"
    return float(timing["chunks_seconds"] + timing["complete_seconds"])


def run_raw_parallel(server: Server, path: Path, expected: str, parallel: int = 4) -> float:
    """8 MiB raw PUTs over ``parallel`` connections, chunk i on connection i % parallel."""
    size = path.stat().st_size
    count = -(-size // CHUNK)
    failures: list[BaseException] = []
    with server.client("bench") as client:
        started = time.perf_counter()
        upload_id = start_session(client, size, CHUNK)

        def send(lane: int) -> None:
            try:
                with server.client("bench") as own, open(path, "rb") as source:
                    for index in range(lane, count, parallel):
                        source.seek(index * CHUNK)
                        put_raw(own, upload_id, index, source.read(CHUNK)).raise_for_status()
            except BaseException as error:  # reported by the caller
                failures.append(error)

        lanes = [threading.Thread(target=send, args=(lane,)) for lane in range(parallel)]
        for lane in lanes:
            lane.start()
        for lane in lanes:
            lane.join()
        if failures:
            raise failures[0]
        done = client.post("/api/v1/upload/complete", json={"upload_id": upload_id})
        seconds = time.perf_counter() - started
    assert done.json()["sha256"] == expected, "raw x4: final file hash differs"
    return seconds


def post_json(client: httpx.Client, upload_id: str, index: int, chunk: bytes) -> httpx.Response:
    """The seed's transport: the chunk base64 in a JSON body with its SHA-256."""
    return client.post(
        "/api/v1/upload/chunk",
        json={
            "upload_id": upload_id,
            "chunk_index": index,
            "chunk_data": base64.b64encode(chunk).decode(),
            "checksum": hashlib.sha256(chunk).hexdigest(),
        },
    )


def run_json(server: Server, path: Path, expected: str) -> float:
    timing = raw_upload(server, path, JSON_CHUNK, send=post_json)
    assert timing["sha256"] == expected, "json: final file hash differs"
    return float(timing["chunks_seconds"] + timing["complete_seconds"])


def run_tus(server: Server, path: Path, expected: str) -> float:
    result = chunkstore_tus_upload(server, path, CHUNK)
    assert result["sha256"] == expected, "tus: final file hash differs"
    return float(result["seconds"])


def run_peer(kind: str, work: Path, path: Path, expected: str) -> float:
    start = peers.start_tuspyserver if kind == "tuspyserver" else peers.start_aiohttp_tus
    directory = work / f"peer-{kind}"
    directory.mkdir(parents=True, exist_ok=True)
    with start(directory) as server:
        result = peers.tus_upload(server.url, path, CHUNK)
        stored = peers.find_uploaded_file(server, result.url, path.name)
        assert sha256_file(stored) == expected, f"{kind}: stored file differs"
    remove(directory)
    return result.seconds


def throughput(profile: Profile, work: Path) -> list[Case]:
    size = profile.size
    label = f"{size // MiB} MiB"
    path = random_file(size, work)
    expected = sha256_file(path)
    hasher = blake3.blake3()
    for piece in stream_file(path):
        hasher.update(piece)
    expected_blake3 = hasher.hexdigest()
    ceiling = "ceiling: bare Litestar, stream + BLAKE3 + fsync"
    cases: dict[str, tuple[Case, Callable[[Path], float]]] = {}

    def add(name: str, note: str, run: Callable[[Path], float]) -> None:
        baseline = None if name == ceiling else ceiling
        cases[name] = (Case(name, "throughput", "MB/s", baseline=baseline, note=note), run)

    def on_chunkstore(
        run: Callable[[Server], float], name: str, env: dict[str, str] | None = None
    ) -> Callable[[Path], float]:
        def measure(round_dir: Path) -> float:
            server = chunkstore_server(round_dir, name, env)
            try:
                return run(server)
            finally:
                server.stop()
                remove(server.data_dir)

        return measure

    add(ceiling, f"one PUT of {label}, granian", lambda d: run_ceiling(d, path, expected_blake3))
    add(
        "bare Litestar without fsync (as the peers write)",
        "the same app, the file left in the page cache",
        lambda d: run_ceiling(d, path, expected_blake3, durable=False),
    )
    add(
        "chunkstore raw chunks, 1 connection",
        "8 MiB PUTs, fsync each",
        on_chunkstore(lambda s: run_raw(s, path, expected), "raw1"),
    )
    add(
        "chunkstore raw chunks, 4 connections",
        "8 MiB PUTs over 4 connections",
        on_chunkstore(lambda s: run_raw_parallel(s, path, expected), "raw4"),
    )
    add(
        "chunkstore JSON/base64 (seed transport)",
        "4 MiB chunks as base64 in JSON, SHA-256 each",
        on_chunkstore(lambda s: run_json(s, path, expected), "json"),
    )
    add(
        "chunkstore tus (tuspy)",
        "8 MiB PATCHes, server-side CDC",
        on_chunkstore(lambda s: run_tus(s, path, expected), "tus"),
    )
    add(
        "chunkstore upload --parallel 4 (CDC)",
        "client CLI: scan, ~8 MiB batches of ~64 KiB chunks",
        on_chunkstore(lambda s: client_run(s, path, expected, work), "client"),
    )
    for label, note, run, short in (
        ("chunkstore raw chunks, 1 connection", "8 MiB PUTs",
         lambda s: run_raw(s, path, expected), "raw1"),
        ("chunkstore raw chunks, 4 connections", "8 MiB PUTs over 4 connections",
         lambda s: run_raw_parallel(s, path, expected), "raw4"),
        ("chunkstore tus (tuspy)", "8 MiB PATCHes, server-side CDC",
         lambda s: run_tus(s, path, expected), "tus"),
        ("chunkstore upload --parallel 4 (CDC)", "client CLI",
         lambda s: client_run(s, path, expected, work), "client"),
    ):  # fmt: skip
        add(
            label + NONE_SUFFIX, note + "; no final file", on_chunkstore(run, short + "-none", NONE)
        )
    add(
        "tuspyserver (FastAPI, granian) + tuspy",
        "8 MiB PATCHes, no fsync",
        lambda d: run_peer("tuspyserver", d, path, expected),
    )
    add(
        "aiohttp-tus + tuspy",
        "8 MiB PATCHes, no fsync",
        lambda d: run_peer("aiohttp-tus", d, path, expected),
    )
    for number in range(profile.runs):
        for name, (case, run) in cases.items():
            round_dir = work / f"round-{number}"
            round_dir.mkdir(exist_ok=True)
            seconds = run(round_dir)
            case.runs.append(size / seconds / 1e6)
            log(f"round {number + 1}/{profile.runs} {name}: {case.runs[-1]:.0f} MB/s")
            remove(round_dir)
    path.unlink()
    return [case for case, _ in cases.values()]


def client_run(server: Server, path: Path, expected: str, work: Path) -> float:
    state_dir = work / f"client-state-{uuid.uuid4().hex[:8]}"
    try:
        return client_upload(server, path, 4, state_dir, expected_sha256=expected)
    finally:
        remove(state_dir)


# -- memory -----------------------------------------------------------------------------


def memory(profile: Profile, work: Path) -> list[Case]:
    """Server peak RSS for a small and a large upload, raw chunks and ``chunkstore
    upload`` (content-defined) alike, and the files the store keeps per GiB."""
    cases = []
    small, large = profile.memory_sizes
    files_case = Case(
        "files on disk per GiB stored",
        "memory",
        "files/GiB",
        lower_is_better=True,
        note="pack files (and loose blobs) after the largest content-defined upload",
    )
    for kind, note in (
        ("raw upload", "8 MiB PUTs, 1 connection"),
        ("chunkstore upload (CDC)", "~64 KiB chunks in ~8 MiB batches, 4 connections"),
    ):
        for size in (small, large):
            path = random_file(size, work)
            expected = sha256_file(path)
            name = f"server peak RSS, {size // MiB} MiB {kind}"
            case = Case(name, "memory", "MiB", lower_is_better=True, note=note)
            if size == large:
                case.baseline = f"server peak RSS, {small // MiB} MiB {kind}"
            for _ in range(profile.runs):
                server = chunkstore_server(work, f"mem-{size}")
                try:
                    if kind == "raw upload":
                        run_raw(server, path, expected)
                    else:
                        client_run(server, path, expected, work)
                    case.runs.append(max_process_peak_rss(server.process.pid) / MiB)  # type: ignore[union-attr]
                    if kind != "raw upload" and size == large:
                        files = blob_files(server.data_dir)
                        stored = sum(entry.stat().st_size for entry in files)
                        files_case.runs.append(len(files) / (stored / GiB))
                finally:
                    server.stop()
                    remove(server.data_dir)
            log(f"{name}: {case.figure:.0f} MiB")
            path.unlink()
            cases.append(case)
    log(f"files per GiB stored: {files_case.figure:.1f}")
    return [*cases, files_case]


# -- dedup ------------------------------------------------------------------------------


#: The dedup group's chunkings: (label, chunker, CDC average in KiB, server settings).
DEDUP_VARIANTS: tuple[tuple[str, str, int, dict[str, str]], ...] = (
    ("fixed", "fixed", 64, {}),
    ("cdc", "cdc", 64, {}),
    ("cdc 8K/32K/128K", "cdc", 32, {}),
    ("cdc" + NONE_SUFFIX, "cdc", 64, NONE),
)


def dedup(profile: Profile, work: Path) -> list[Case]:
    tars = release_tars(versions=profile.releases)
    total = sum(tar.stat().st_size for tar in tars)
    label = f"django {profile.releases[0]}-{profile.releases[-1]} ({len(tars)} sdists)"
    cases = [
        Case(
            "dedup: the releases' total size",
            "dedup",
            "MiB",
            runs=[total / MiB],
            lower_is_better=True,
            note=f"{label}, re-tarred uncompressed, uploaded in order",
        )
    ]
    for variant, chunker, avg_kib, env in DEDUP_VARIANTS:
        sizes = cdc_sizes(avg_kib * 1024) if chunker == "cdc" else {}
        unique = {c.digest: c.size for tar in tars for c in chunk_file(tar, chunker, **sizes)}  # type: ignore[arg-type]
        ideal = sum(unique.values()) / MiB
        ideal_case = Case(
            f"dedup {variant}: ideal (unique chunks, offline)",
            "dedup",
            "MiB",
            runs=[ideal],
            lower_is_better=True,
            note=f"{label}, {total / MiB:.1f} MiB; {total / MiB / ideal:.2f}x;"
            f" {len(unique):,} unique chunks",
        )

        sent_case, stored_case, disk_case = (
            Case(
                f"dedup {variant}: {what}",
                "dedup",
                "MiB",
                baseline=ideal_case.name,
                lower_is_better=True,
            )
            for what in (
                "bytes sent",
                "bytes stored (packs on disk)",
                "bytes on disk (packs + final files)",
            )
        )
        rate_case = Case(
            f"dedup {variant}: upload rate of the series",
            "dedup rate",
            "MB/s",
            note="chunkstore upload of each release in order, end to end",
        )
        # The bytes are deterministic: one run says all there is to say.
        series = upload_all(tars, chunker, work, avg_kib, env, name=variant.replace(" ", "-"))
        sent_case.runs.append(series.sent / MiB)
        stored_case.runs.append(series.stored / MiB)
        disk_case.runs.append(series.disk / MiB)
        rate_case.runs.append(total / series.seconds / 1e6)
        sent_case.note = f"{total / series.sent:.2f}x less than the total"
        stored_case.note = f"{total / series.stored:.2f}x; chunks and manifests"
        disk_case.note = (
            "no final files (materialization none)" if env else "final files included (copy)"
        )
        remove(work / f"data-{variant.replace(' ', '-')}")
        remove(work / "state")
        log(
            f"dedup {variant}: sent {series.sent / MiB:.1f} MiB, stored"
            f" {series.stored / MiB:.1f} MiB, on disk {series.disk / MiB:.1f} MiB, ideal"
            f" {ideal:.1f} MiB, {rate_case.figure:.0f} MB/s"
        )
        cases += [ideal_case, sent_case, stored_case, disk_case, rate_case]
    return cases


# -- event log --------------------------------------------------------------------------


def event_log(profile: Profile, work: Path) -> list[Case]:
    count = profile.log_events
    append = Case(
        "event log append, 1 transaction per chunk",
        "event log",
        "events/s",
        baseline="bare SQLite insert, 1 transaction each",
    )
    bare = Case(
        "bare SQLite insert, 1 transaction each",
        "event log",
        "events/s",
        note="same pragmas: WAL, synchronous=FULL",
    )
    replay_case = Case(
        "replay (read + decode + fold every stream)",
        "event log",
        "events/s",
        baseline="read + decode rows only",
    )
    read_only = Case("read + decode rows only", "event log", "events/s")
    audit_case = Case(
        "audit re-hash of blobs", "event log", "GB/s", baseline="BLAKE3 of the same bytes in memory"
    )
    cold_case = Case(
        "audit re-hash of blobs, cold cache",
        "event log",
        "GB/s",
        baseline="BLAKE3 of the same bytes in memory",
        note="the page cache dropped first",
    )
    plain = Case(
        "BLAKE3 of the same bytes in memory", "event log", "GB/s", note="one thread, one buffer"
    )
    for number in range(profile.runs):
        data_dir = work / f"log-{number}"
        append.runs.append(count / time_appends(work / f"append-{number}", count))
        remove(work / f"append-{number}")
        bare.runs.append(count / time_bare_inserts(work / f"bare-{number}.sqlite3", count))
        fill_store(data_dir, profile.audit_bytes)
        events, seconds = time_replay(data_dir)
        replay_case.runs.append(events / seconds)
        rows, seconds = time_read(data_dir)
        read_only.runs.append(rows / seconds)
        time_audit(data_dir)  # the first read warms the cache (as the suite says)
        hashed, seconds = time_audit(data_dir)
        audit_case.runs.append(hashed / seconds / 1e9)
        if drop_page_cache():
            hashed, seconds = time_audit(data_dir)
            cold_case.runs.append(hashed / seconds / 1e9)
        plain.runs.append(hashed / time_blake3(hashed) / 1e9)
        remove(data_dir)
        log(
            f"event log round {number + 1}: append {append.runs[-1]:,.0f}/s, bare"
            f" {bare.runs[-1]:,.0f}/s, replay {replay_case.runs[-1]:,.0f}/s, audit"
            f" {audit_case.runs[-1]:.2f} GB/s, BLAKE3 {plain.runs[-1]:.2f} GB/s"
        )
    audit_case.note = f"{profile.audit_bytes // MiB} MiB in 64 KiB blobs, page cache warm"
    cold = [cold_case] if cold_case.runs else []
    if not cold:
        log("audit cold: the page cache cannot be dropped here (needs root)")
    return [append, bare, replay_case, read_only, audit_case, *cold, plain]


def drop_page_cache() -> bool:
    """Write back and drop the page cache (root only); whether it was dropped."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def open_service(data_dir: Path) -> UploadService:
    settings = Settings(data_dir=data_dir, session_ttl=30 * 24 * 3600.0, max_open_sessions=10**6)
    return UploadService.open(settings)


def time_appends(data_dir: Path, count: int) -> float:
    """``count`` ChunkStored events, each in its own transaction with the session
    projection, as the raw chunk endpoint appends them."""
    service = open_service(data_dir)
    try:
        request = commands.InitRequest(filename="log.bin", total_size=count, chunk_size=1)
        state = service.init_upload("bench", request)
        digests = [blake3.blake3(index.to_bytes(8, "big")).hexdigest() for index in range(count)]
        started = time.perf_counter()
        for index, digest in enumerate(digests):
            event = ChunkStored(index, digest, 1)
            new_state = replay([event], state)
            changes = project(new_state, [event])
            service.store.log.append(state.upload_id, state.version, [event], changes)
            state = new_state
        return time.perf_counter() - started
    finally:
        service.close()


def time_bare_inserts(path: Path, count: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE events (stream_id TEXT, version INTEGER, data TEXT,"
        " PRIMARY KEY (stream_id, version))"
    )
    payload = json.dumps({"index": 0, "digest": "0" * 64, "size": 1})
    started = time.perf_counter()
    for version in range(count):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events VALUES (?, ?, ?)", ("s", version, payload))
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return seconds


def fill_store(data_dir: Path, total: int, chunk: int = 64 * 1024) -> None:
    """Sessions of 128 random 64 KiB chunks recorded as the batch endpoint does."""
    service = open_service(data_dir)
    try:
        per_session = 128
        sessions = max(1, total // (chunk * per_session))
        for number in range(sessions):
            pieces = [os.urandom(chunk) for _ in range(per_session)]
            chunks = [(blake3.blake3(piece).hexdigest(), chunk) for piece in pieces]
            request = commands.InitRequest(
                filename=f"f{number}.bin", total_size=chunk * per_session, chunks=chunks
            )
            upload_id = service.init_upload("bench", request).upload_id
            frames = [
                Frame(index, digest, chunk, [memoryview(piece)])
                for index, ((digest, _), piece) in enumerate(zip(chunks, pieces, strict=True))
            ]
            service.intake.record_frames("bench", upload_id, frames)
    finally:
        service.close()


def time_replay(data_dir: Path) -> tuple[int, float]:
    service = open_service(data_dir)
    try:
        started = time.perf_counter()
        log = service.store.log
        events = sum(len(recorded) for recorded, _ in replay_streams(log, log.last_position()))
        return events, time.perf_counter() - started
    finally:
        service.close()


def time_read(data_dir: Path) -> tuple[int, float]:
    service = open_service(data_dir)
    try:
        started = time.perf_counter()
        count = sum(1 for _ in service.store.log.read_all())
        return count, time.perf_counter() - started
    finally:
        service.close()


def time_audit(data_dir: Path) -> tuple[int, float]:
    """(bytes re-hashed, seconds of hashing) as ``chunkstore audit --json`` reports them."""
    done = subprocess.run(
        [sys.executable, "-m", "chunkstore.cli", "audit", "--data", str(data_dir), "--json"],
        capture_output=True,
        text=True,
    )
    report = json.loads(done.stdout)
    assert report["clean"], done.stdout[:2000]
    summary = report["summary"]
    return summary["blob_bytes"] + summary["file_bytes"], summary["seconds"]


def time_blake3(total: int) -> float:
    buffer = os.urandom(64 * MiB)
    started = time.perf_counter()
    hashed = 0
    while hashed < total:
        blake3.blake3(buffer[: min(len(buffer), total - hashed)]).digest()
        hashed += min(len(buffer), total - hashed)
    return time.perf_counter() - started


# -- output -----------------------------------------------------------------------------


def finish(cases: list[Case]) -> list[dict[str, object]]:
    by_name = {case.name: case for case in cases}
    rows = []
    for case in cases:
        ratio = None
        if case.baseline is not None:
            ratio = case.figure / by_name[case.baseline].figure
        rows.append(
            {
                "name": case.name,
                "group": case.group,
                "figure": round(case.figure, 4),
                "unit": case.unit,
                "ratio": None if ratio is None else round(ratio, 4),
                "baseline": case.baseline,
                "runs": [round(run, 4) for run in case.runs],
                "note": case.note,
            }
        )
    return rows


CEILING = "ceiling: bare Litestar, stream + BLAKE3 + fsync"
#: The performance targets: (what, case, divided by (None: the figure itself), goal,
#: whether the figure must stay at or below the goal rather than reach it).
#: (what, case, divided by, goal, at most) for the default materialization (copy) and,
#: suffixed, for ``none``.
_MODE_TARGETS: tuple[tuple[str, str, str | None, float, bool], ...] = (
    ("raw chunks, 4 connections, against tuspyserver (no fsync)",
     "chunkstore raw chunks, 4 connections", "tuspyserver (FastAPI, granian) + tuspy", 1.0,
     False),
    ("raw chunks, 1 connection, against the durable ceiling",
     "chunkstore raw chunks, 1 connection", CEILING, 0.85, False),
    ("tus (tuspy) against raw chunks, 1 connection",
     "chunkstore tus (tuspy)", "chunkstore raw chunks, 1 connection", 0.85, False),
    ("chunkstore upload --parallel 4 against raw chunks, 4 connections",
     "chunkstore upload --parallel 4 (CDC)", "chunkstore raw chunks, 4 connections", 0.9,
     False),
)  # fmt: skip


def _suffixed(name: str | None) -> str | None:
    return name + NONE_SUFFIX if name and name.startswith("chunkstore") else name


TARGETS: tuple[tuple[str, str, str | None, float, bool], ...] = (
    *_MODE_TARGETS,
    *(
        (what + NONE_SUFFIX, _suffixed(case) or case, _suffixed(baseline), goal, at_most)
        for what, case, baseline, goal, at_most in _MODE_TARGETS
    ),
    ("files on disk per GiB stored", "files on disk per GiB stored", None, 64, True),
    ("audit re-hash against BLAKE3 in memory (warm)",
     "audit re-hash of blobs", "BLAKE3 of the same bytes in memory", 0.7, False),
    ("bytes on disk after the Django series, materialize none, against the CDC ideal",
     f"dedup cdc{NONE_SUFFIX}: bytes on disk (packs + final files)",
     f"dedup cdc{NONE_SUFFIX}: ideal (unique chunks, offline)", 1.05, True),
)  # fmt: skip


def memory_targets(rows: list[dict[str, object]]) -> list[tuple[str, str, str | None, float, bool]]:
    """Peak RSS under 150 MiB for every memory case, and flat: the large upload's at most
    1.1x the small one's."""
    found: list[tuple[str, str, str | None, float, bool]] = []
    for row in rows:
        name = str(row["name"])
        if row["group"] == "memory" and name.startswith("server peak RSS"):
            found.append((f"{name} under 150 MiB", name, None, 150, True))
            if row["baseline"]:
                found.append((f"{name}: flat", name, str(row["baseline"]), 1.1, True))
    return found


def targets(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Each target that this run measured: its figure, the goal, and whether it is met."""
    by_name = {str(row["name"]): float(row["figure"]) for row in rows}  # type: ignore[arg-type]
    found = []
    for what, case, baseline, goal, at_most in (*TARGETS, *memory_targets(rows)):
        if case not in by_name or (baseline is not None and baseline not in by_name):
            continue
        figure = by_name[case] / by_name[baseline] if baseline else by_name[case]
        met = figure <= goal if at_most else figure >= goal
        found.append(
            {
                "target": what,
                "figure": round(figure, 3),
                "goal": f"{'<=' if at_most else '>='} {goal}",
                "met": met,
            }
        )
    return found


def markdown(rows: list[dict[str, object]], meta: dict[str, object]) -> str:
    lines = [
        f"Run {meta['finished']} on {meta['machine']}; {meta['mode']} run, median of"
        f" {meta['runs']} runs, upload size {meta['upload_mib']} MiB.",
        "",
        "| group | case | figure | ratio | against | note |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        figure = float(row["figure"])  # type: ignore[arg-type]
        shown = f"{figure:,.2f}" if figure < 100 else f"{figure:,.0f}"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(
            f"| {row['group']} | {row['name']} | {shown} {row['unit']} | {ratio} |"
            f" {row['baseline'] or ''} | {row['note']} |"
        )
    goals = targets(rows)
    if goals:
        lines += ["", "| target | figure | goal | met |", "|---|---|---|---|"]
        for goal in goals:
            lines.append(
                f"| {goal['target']} | {goal['figure']} | {goal['goal']} |"
                f" {'yes' if goal['met'] else '**no**'} |"
            )
    versions_of = meta["versions"]
    assert isinstance(versions_of, dict)
    versions = ", ".join(f"{name} {version}" for name, version in versions_of.items())
    lines += ["", f"Peers and clients: {versions}.", ""]
    return "\n".join(lines)


def plots(rows: list[dict[str, object]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    written = []
    for group, filename, xlabel in (
        ("throughput", "throughput.png", "MB/s (median), higher is better"),
        ("memory", "memory.png", "server peak RSS, MiB (median)"),
        ("dedup", "dedup.png", "MiB, lower is better"),
        ("event log", "eventlog.png", "ratio to its baseline"),
    ):
        chosen = [row for row in rows if row["group"] == group]
        if not chosen:
            continue
        if group == "event log":
            chosen = [row for row in chosen if row["ratio"] is not None]
            values = [float(row["ratio"]) for row in chosen]  # type: ignore[arg-type]
        else:
            values = [float(row["figure"]) for row in chosen]  # type: ignore[arg-type]
        labels = [str(row["name"]) for row in chosen]
        figure, axes = pyplot.subplots(figsize=(10, 0.55 * len(chosen) + 1.4))
        colours = [
            "#4c72b0" if "chunkstore" in label or group != "throughput" else "#999999"
            for label in labels
        ]
        bars = axes.barh(labels[::-1], values[::-1], color=colours[::-1])
        axes.bar_label(bars, fmt="%.2f" if group == "event log" else "%.0f", padding=3)
        axes.set_xlabel(xlabel)
        axes.set_title(f"chunkstore benchmark: {group}")
        axes.margins(x=0.15)
        figure.tight_layout()
        path = out / filename
        figure.savefig(path, dpi=110)
        pyplot.close(figure)
        written.append(path)
    return written


# -- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="256 MiB uploads, fewer runs")
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help="directory for the results (default %(default)s)"
    )
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, quick 2)")
    parser.add_argument(
        "--only",
        choices=("throughput", "memory", "dedup", "eventlog"),
        action="append",
        help="run only these groups (repeatable)",
    )
    args = parser.parse_args(argv)
    profile = profile_for(args.quick, args.runs)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    groups = args.only or ["throughput", "memory", "dedup", "eventlog"]
    # Only the throughput group needs the peers (and their venv, built on first use).
    versions = peers.ensure_peer_env() if "throughput" in groups else {}
    versions = {**versions, **peers.local_versions()}
    work = scratch_dir()
    cases: list[Case] = []
    try:
        if "throughput" in groups:
            cases += throughput(profile, work)
        if "memory" in groups:
            cases += memory(profile, work)
        if "dedup" in groups:
            cases += dedup(profile, work)
        if "eventlog" in groups:
            cases += event_log(profile, work)
    finally:
        remove(work)
    rows = finish(cases)
    meta: dict[str, object] = {
        "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()},"
        f" Python {platform.python_version()}",
        "mode": "quick" if profile.quick else "full",
        "runs": profile.runs,
        "upload_mib": profile.size // MiB,
        "seconds": round(time.perf_counter() - started, 1),
        "versions": versions,
    }
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "cases": rows, "targets": targets(rows)}, indent=2) + "\n"
    )
    table = markdown(rows, meta)
    (out / "results.md").write_text(table)
    written = plots(rows, out)
    print(table)
    print(
        f"wrote {out / 'results.json'}, {out / 'results.md'},"
        f" {', '.join(path.name for path in written)} in {meta['seconds']} s"
    )
    return 0
