"""Memory that should not grow with the upload, and gc over a store of many uploads.

Measurements, each optional:

- ``server``: the server worker's peak RSS (VmHWM) for one upload of fresh random bytes
  per size, with ``chunkstore upload`` (content-defined chunks, ~64 KiB, sent in
  batches over ``--parallel`` connections) and with raw 8 MiB chunk PUTs, each into a
  fresh single-worker server;
- ``fold``: the memory a folded manifest-mode session keeps per chunk (tracemalloc),
  all events folded at once and, for a smaller session, folded as the service folds
  them: a page of the chunk list, or 128 chunks, an append;
- ``status``: a manifest-mode session of ``--status-chunks`` chunks written through the
  service's log (one in 1,000 left missing), then, in a fresh process: the time to load
  it (a replay of its log), the bytes its held state keeps per chunk (tracemalloc), the
  time of a status answer, and of an append of 128 chunks (fold and all);
- ``gc``: one gc run over a store of ``--gc-uploads`` small uploads, in a fresh process
  like a server's: seconds and peak RSS growth; then, with ``--latency``, the latency of
  status requests to a server while its background gc runs, against the same server
  with gc off.

    python -m benchmarks.memory [--only server,fold,status,gc,audit]
        [--sizes-mib 256,1024,4096] [--fold-chunks 1000000] [--status-chunks 1000000]
        [--gc-uploads 10000] [--gc-data DIR] [--latency] [--audit-uploads 1000,10000]
        [--audit-data DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import gc as python_gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import blake3

from benchmarks.client_upload import client_upload
from benchmarks.common import MiB, random_file, remove, scratch_dir
from benchmarks.raw_upload import upload as raw_upload
from chunkstore.events import ChunksDeclared, ChunkStored, Event, UploadInitiated
from chunkstore.session import SessionState, replay
from chunkstore.testing import Server

PAGE = 10_000
APPEND = 128


def status_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` figure in KiB (VmHWM, VmRSS), 0 if the process is gone."""
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


# -- server peak RSS ----------------------------------------------------------------------


def server_peaks(sizes_mib: list[int], parallel: int) -> None:
    work = scratch_dir()
    print("server worker peak RSS (VmHWM), one upload of fresh random bytes per server:")
    try:
        for size_mib in sizes_mib:
            path = random_file(size_mib * MiB, work)
            for name in ("cdc", "raw"):
                server = Server(work / f"{name}-{size_mib}").start()
                try:
                    (worker,) = server.worker_pids()
                    idle = status_kib(worker, "VmHWM")
                    started = time.perf_counter()
                    if name == "cdc":
                        client_upload(server, path, parallel, work / f"state-{size_mib}")
                    else:
                        raw_upload(server, path, 8 * MiB)
                    seconds = time.perf_counter() - started
                    peak = status_kib(worker, "VmHWM")
                finally:
                    server.stop()
                    remove(work / f"{name}-{size_mib}")
                label = (
                    f"chunkstore upload --parallel {parallel} (CDC)"
                    if name == "cdc"
                    else "raw PUT, 8 MiB chunks"
                )
                print(
                    f"  {size_mib:>5} MiB  {label:<38} peak {peak / 1024:6.1f} MiB"
                    f"  (idle {idle / 1024:5.1f}, +{(peak - idle) / 1024:6.1f})"
                    f"  {size_mib * MiB / seconds / 1e6:4.0f} MB/s",
                    flush=True,
                )
            path.unlink()
    finally:
        remove(work)


# -- a folded session's memory ------------------------------------------------------------


def session_chunks(chunks: int) -> tuple[list[bytes], list[int]]:
    """Raw digests and sizes of a session's chunks, all distinct (random data)."""
    rng = random.Random(7)
    digests = [blake3.blake3(index.to_bytes(8, "big")).digest() for index in range(chunks)]
    return digests, [rng.randint(16_384, 262_144) for _ in range(chunks)]


def manifest_events(digests: list[bytes], sizes: list[int]) -> Iterator[Event]:
    """A manifest-mode session as the log holds it: the init with the first page, the
    other pages, then every chunk stored. Each event and its digests are made afresh (as
    decoding a record makes them), so what a fold keeps it owns."""
    chunks = len(digests)
    now = datetime(2024, 1, 1, tzinfo=UTC)
    yield UploadInitiated(
        owner="alice",
        filename="big.bin",
        total_size=sum(sizes),
        mime_type="application/octet-stream",
        chunk_size=max(sizes),
        total_chunks=chunks,
        created_at=now,
        expires_at=now + timedelta(days=1),
        mode="manifest",
        chunk_list=[(digests[i].hex(), sizes[i]) for i in range(min(PAGE, chunks))],
    )
    for start in range(PAGE, chunks, PAGE):
        page = range(start, min(start + PAGE, chunks))
        yield ChunksDeclared(start=start, chunk_list=[(digests[i].hex(), sizes[i]) for i in page])
    for index in range(chunks):
        yield ChunkStored(index, digests[index].hex(), sizes[index])


def fold_memory(chunks: int, appends: bool) -> tuple[float, float, float]:
    """(bytes kept per chunk, peak bytes per chunk, seconds) of folding a session."""
    digests, sizes = session_chunks(chunks)
    events = manifest_events(digests, sizes)
    python_gc.collect()
    tracemalloc.start()
    first = next(events)
    baseline = 0
    started = time.perf_counter()
    state = replay([first], SessionState.empty("u"))
    if appends:
        batch: list[Event] = []
        for event in events:
            batch.append(event)
            # A page of the chunk list is a request of its own, as chunks come in batches.
            if len(batch) == APPEND or isinstance(event, ChunksDeclared):
                state = replay(batch, state)
                batch = []
        state = replay(batch, state)
    else:
        state = replay(events, state)
    seconds = time.perf_counter() - started
    events.close()
    python_gc.collect()
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert state.received_count == chunks, state.received_count
    return (kept - baseline) / chunks, (peak - baseline) / chunks, seconds


def fold(chunks: int) -> None:
    print("a folded manifest-mode session (tracemalloc, the state alone):")
    for count, appends in ((chunks, False), (min(chunks, 200_000), True)):
        kept, peak, seconds = fold_memory(count, appends)
        how = f"in appends of {APPEND}" if appends else "at once"
        print(
            f"  {count:>9,} chunks folded {how:<17} keeps {kept:7.1f} B/chunk"
            f" ({kept * count / MiB:6.1f} MiB), peak {peak:7.1f} B/chunk, {seconds:5.1f} s",
            flush=True,
        )


# -- a large session's load and status ---------------------------------------------------


def build_session(data_dir: Path, chunks: int) -> None:
    """A manifest-mode session of ``chunks`` chunks, declared through the service and
    stored by appending ``ChunkStored`` to its log (a status needs no chunk bytes)."""
    from chunkstore.application import UploadService
    from chunkstore.commands import InitRequest
    from chunkstore.config import Settings
    from chunkstore.projections import project

    settings = Settings(data_dir=data_dir, max_file_size=1 << 50)
    service = UploadService.open(settings)
    try:
        digests, sizes = session_chunks(chunks)
        declared = [(digest.hex(), size) for digest, size in zip(digests, sizes, strict=True)]
        request = InitRequest(
            filename="big.bin",
            total_size=sum(sizes),
            chunks=declared[:PAGE],
            chunk_count=chunks,
        )
        upload_id = service.init_upload("alice", request).upload_id
        for start in range(PAGE, chunks, PAGE):
            service.declare_chunks("alice", upload_id, start, declared[start : start + PAGE])
        state = service.load(upload_id)
        for start in range(0, chunks, 1024):
            events = [
                ChunkStored(index, *declared[index])
                for index in range(start, min(start + 1024, chunks))
                if index % 1000 != 999
            ]
            new_state = replay(events, state)
            service.store.log.append(upload_id, state.version, events, project(new_state, events))
            state = new_state
        (data_dir / "upload-id").write_text(upload_id)
    finally:
        service.close()


def status_child(data_dir: Path) -> None:
    """Load, status and append timings and the held state's size; prints one line."""
    from chunkstore.application import UploadService
    from chunkstore.config import Settings
    from chunkstore.views import status_answer

    upload_id = (data_dir / "upload-id").read_text()
    settings = Settings(data_dir=data_dir, max_file_size=1 << 50)
    service = UploadService.open(settings)
    try:
        started = time.perf_counter()
        state = service.status("alice", upload_id)
        load = time.perf_counter() - started
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            status_answer(service.status("alice", upload_id), service.clock())
            timings.append(time.perf_counter() - started)
        missing = list(range(999, state.total_chunks, 1000))[:128]
        events: list[Event] = [
            ChunkStored(i, state.expected_digest(i) or "", state.expected_size(i)) for i in missing
        ]
        started = time.perf_counter()
        replay(events, state)
        append = time.perf_counter() - started
        count = state.total_chunks
        del state
        service.close()
        service = UploadService.open(settings)
        python_gc.collect()
        tracemalloc.start()
        held = service.status("alice", upload_id)
        python_gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert held.received_count == count - count // 1000
        print(f"{count} {load} {statistics.median(timings)} {append} {kept / count}")
    finally:
        service.close()


def status(data_dir: Path, chunks: int) -> None:
    if not (data_dir / "upload-id").exists():
        print(f"building a session of {chunks} chunks in {data_dir}", file=sys.stderr)
        build_session(data_dir, chunks)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--status-child", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    count, load, answer, append, per_chunk = done.stdout.split()
    print(
        f"a session of {int(count):,} chunks, a fresh process: load (replay) {float(load):.2f} s,"
        f" held state {float(per_chunk):.0f} B/chunk, status answer {float(answer) * 1e3:.1f} ms,"
        f" an append of 128 chunks {float(append) * 1e3:.1f} ms",
        flush=True,
    )


# -- gc over many uploads -----------------------------------------------------------------


def build_store(data_dir: Path, uploads: int) -> None:
    """``uploads`` small manifest-mode uploads through the library: 60% completed, 25%
    open, 15% cancelled, 4 chunks each."""
    from chunkstore.application import UploadService
    from chunkstore.commands import InitRequest
    from chunkstore.config import Settings
    from chunkstore.errors import ValidationFailed
    from chunkstore.intake import Frame

    settings = Settings(data_dir=data_dir, session_ttl=30 * 24 * 3600.0, max_open_sessions=10**6)
    service = UploadService.open(settings)
    rng = random.Random(3)
    started = time.perf_counter()
    try:
        for number in range(uploads):
            owner = f"owner-{number % 20}"
            # A text-like prefix so the validator takes the file as plain data.
            pieces = [b"chunk " + os.urandom(rng.randint(512, 4096)) for _ in range(4)]
            chunks = [(blake3.blake3(piece).hexdigest(), len(piece)) for piece in pieces]
            request = InitRequest(
                filename=f"file-{number}.bin", total_size=sum(map(len, pieces)), chunks=chunks
            )
            upload_id = service.init_upload(owner, request).upload_id
            frames = [
                Frame(index, digest, size, [memoryview(pieces[index])])
                for index, (digest, size) in enumerate(chunks)
            ]
            service.intake.record_frames(owner, upload_id, frames)
            kind = number % 20
            if kind < 12:
                with contextlib.suppress(ValidationFailed):
                    service.complete_upload(owner, upload_id)
            elif kind < 15:
                service.cancel_upload(owner, upload_id, "bench")
            if number % 1000 == 999:
                rate = (number + 1) / (time.perf_counter() - started)
                print(f"  built {number + 1} uploads ({rate:.0f}/s)", file=sys.stderr, flush=True)
    finally:
        service.close()


def gc_child(data_dir: Path) -> None:
    """One gc run as a server's worker runs it; prints seconds and RSS figures (KiB)."""
    from chunkstore.application import UploadService
    from chunkstore.config import Settings
    from chunkstore.gc import collect

    service = UploadService.open(Settings(data_dir=data_dir))
    try:
        python_gc.collect()
        before = status_kib(os.getpid(), "VmRSS")
        started = time.perf_counter()
        report = collect(service)
        seconds = time.perf_counter() - started
        peak = status_kib(os.getpid(), "VmHWM")
        print(f"{seconds} {before} {peak} {report.blobs_examined} {report.blobs_swept}")
    finally:
        service.close()


def gc_run(data_dir: Path, uploads: int) -> None:
    if not (data_dir / "chunkstore.sqlite3").exists():
        print(f"building a store of {uploads} uploads in {data_dir}", file=sys.stderr)
        build_store(data_dir, uploads)
    runs = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", "--gc-child", str(data_dir)],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds, before, peak, examined, swept = done.stdout.split()
        runs.append((float(seconds), int(before), int(peak), int(examined), int(swept)))
    seconds = statistics.median(run[0] for run in runs)
    growth = statistics.median(run[2] - run[1] for run in runs)
    _, before, peak, examined, _ = runs[0]
    print(
        f"gc of a store of {uploads} uploads ({examined} blobs), a fresh process, median of 3:"
        f" {seconds:.2f} s, peak RSS {peak / 1024:.1f} MiB"
        f" (+{growth / 1024:.1f} MiB over {before / 1024:.1f} after opening the store)",
        flush=True,
    )


def audit_peak(data_dir: Path) -> tuple[float, int, int]:
    """(seconds, peak RSS in KiB, findings) of one ``chunkstore audit --json`` process."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "chunkstore.cli", "audit", "--data", str(data_dir), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert child.stdout is not None
    answer = json.loads(child.stdout.read())
    # wait4 rather than wait: the child's own peak RSS (ru_maxrss, KiB on Linux).
    _, _, usage = os.wait4(child.pid, 0)
    child.returncode = 0
    return time.perf_counter() - started, usage.ru_maxrss, len(answer["findings"])


def audit_run(base: Path, counts: list[int]) -> None:
    """Peak RSS of ``chunkstore audit`` over stores of ``counts`` small uploads each."""
    print("chunkstore audit, a fresh process per run, median of 3:")
    for uploads in counts:
        data_dir = base.with_name(f"{base.name}-{uploads}")
        if not (data_dir / "chunkstore.sqlite3").exists():
            print(f"building a store of {uploads} uploads in {data_dir}", file=sys.stderr)
            build_store(data_dir, uploads)
        runs = [audit_peak(data_dir) for _ in range(3)]
        seconds = statistics.median(run[0] for run in runs)
        peak = statistics.median(run[1] for run in runs)
        print(
            f"  {uploads:>7,} uploads: peak RSS {peak / 1024:6.1f} MiB, {seconds:5.2f} s,"
            f" {runs[0][2]} findings",
            flush=True,
        )


def latency(data_dir: Path, seconds: float = 20.0) -> None:
    """Status requests' latency to a server while its background gc runs, against the
    same server with gc off."""
    from chunkstore.config import Settings
    from chunkstore.store import open_store

    store = open_store(Settings(data_dir=data_dir))
    try:
        row = next(row for row in store.index.session_rows() if row["owner"] == "owner-0")
    finally:
        store.close()
    print(f"GET status latency over {seconds:.0f} s, one client, serial requests:")
    for label, interval in (("gc off", "0"), ("gc every 0.2 s", "0.2")):
        server = Server(data_dir, env={"CHUNKSTORE_GC_INTERVAL": interval}).start()
        try:
            timings = []
            stop = time.monotonic() + seconds
            with server.client("owner-0") as client:
                while time.monotonic() < stop:
                    began = time.perf_counter()
                    client.get(f"/api/v1/upload/status/{row['upload_id']}").raise_for_status()
                    timings.append(time.perf_counter() - began)
            runs = server.log().count('"gc"')
        finally:
            server.stop()
        timings.sort()
        print(
            f"  {label:<15} {len(timings):6} requests  p50 {_share(timings, 0.5) * 1e3:6.1f} ms"
            f"  p99 {_share(timings, 0.99) * 1e3:6.1f} ms  max {timings[-1] * 1e3:7.1f} ms"
            f"  (gc log lines: {runs})",
            flush=True,
        )


def _share(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="server,fold,status,gc,audit")
    parser.add_argument("--sizes-mib", default="256,1024,4096")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--fold-chunks", type=int, default=1_000_000)
    parser.add_argument("--status-chunks", type=int, default=1_000_000)
    parser.add_argument("--status-data", default="/tmp/chunkstore-status-bench")
    parser.add_argument("--status-child", help=argparse.SUPPRESS)
    parser.add_argument("--gc-uploads", type=int, default=10_000)
    parser.add_argument("--gc-data", default="/tmp/chunkstore-gc-bench")
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--audit-uploads", default="1000,10000")
    parser.add_argument("--audit-data", default="/tmp/chunkstore-audit-bench")
    parser.add_argument("--gc-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gc_child:
        gc_child(Path(args.gc_child))
        return
    if args.status_child:
        status_child(Path(args.status_child))
        return
    only = set(args.only.split(","))
    if "fold" in only:
        fold(args.fold_chunks)
    if "status" in only:
        status(Path(args.status_data).resolve(), args.status_chunks)
    if "gc" in only:
        gc_run(Path(args.gc_data).resolve(), args.gc_uploads)
        if args.latency:
            latency(Path(args.gc_data).resolve())
    if "audit" in only:
        counts = [int(count) for count in args.audit_uploads.split(",")]
        audit_run(Path(args.audit_data).resolve(), counts)
    if "server" in only:
        server_peaks([int(size) for size in args.sizes_mib.split(",")], args.parallel)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
