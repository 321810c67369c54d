"""Audit throughput and replay speed on a store of >= 1 GiB of blobs and >= 100,000 events.

Builds the store through the library (manifest-mode sessions with small, CDC-like
chunks of varied sizes, written in batches as the batch endpoint would), completes a
share of the sessions so there are final files to re-hash too, then times:
- a full replay of every stream (read the whole log, fold each session): events/s;
- ``chunkstore audit --json`` as a subprocess: bytes re-hashed per second.

    .venv/bin/python -m benchmarks.audit_store --data /tmp/audit-bench

A store already built at ``--data`` is reused (delete the directory to rebuild).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import blake3

from chunkstore.application import UploadService
from chunkstore.audit import replay_streams
from chunkstore.commands import InitRequest
from chunkstore.config import Settings
from chunkstore.errors import ValidationFailed
from chunkstore.intake import Frame

MiB = 1024 * 1024
GiB = 1024 * MiB
#: Chunk sizes like FastCDC's with a small average: 4-20 KiB, 12 KiB on average.
MIN_CHUNK, MAX_CHUNK = 4 * 1024, 20 * 1024
BATCH = 180


def build(data_dir: Path, sessions: int, chunks_per_session: int, complete_every: int) -> None:
    settings = Settings(data_dir=data_dir, session_ttl=30 * 24 * 3600.0, max_open_sessions=10**6)
    service = UploadService.open(settings)
    rng = random.Random(1)
    started = time.perf_counter()
    written = 0
    try:
        for number in range(sessions):
            sizes = [rng.randint(MIN_CHUNK, MAX_CHUNK) for _ in range(chunks_per_session)]
            pieces = [os.urandom(size) for size in sizes]
            chunks = [(blake3.blake3(piece).hexdigest(), len(piece)) for piece in pieces]
            request = InitRequest(
                filename=f"file-{number}.bin", total_size=sum(sizes), chunks=chunks
            )
            upload_id = service.init_upload(f"owner-{number % 10}", request).upload_id
            owner = f"owner-{number % 10}"
            for start in range(0, len(pieces), BATCH):
                frames = [
                    Frame(index, chunks[index][0], sizes[index], [memoryview(pieces[index])])
                    for index in range(start, min(start + BATCH, len(pieces)))
                ]
                service.intake.record_frames(owner, upload_id, frames)
            written += sum(sizes)
            if number % complete_every == 0:
                # Random bytes are now and then taken for a DOS executable and refused;
                # a failed session is as good a part of the store as a completed one.
                with contextlib.suppress(ValidationFailed):
                    service.complete_upload(owner, upload_id)
            if number % 50 == 0:
                rate = written / (time.perf_counter() - started) / MiB
                print(
                    f"  built {number + 1}/{sessions} sessions, {written / GiB:.2f} GiB"
                    f" ({rate:.0f} MiB/s)",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        service.close()


def time_replay(data_dir: Path) -> tuple[int, int, float]:
    """(streams, events, seconds) of reading the whole log and folding every stream."""
    service = UploadService.open(Settings(data_dir=data_dir))
    try:
        started = time.perf_counter()
        log = service.store.log
        streams = events = 0
        for recorded, _ in replay_streams(log, log.last_position()):
            streams += 1
            events += len(recorded)
        return streams, events, time.perf_counter() - started
    finally:
        service.close()


def time_audit(data_dir: Path) -> tuple[dict[str, object], float]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "chunkstore.cli", "audit", "--data", str(data_dir), "--json"],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"audit found problems or failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout), elapsed


def drop_caches() -> bool:
    """Drop the page cache so the audit reads from disk (root only); False if not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/tmp/chunkstore-audit-bench")
    parser.add_argument("--sessions", type=int, default=560)
    parser.add_argument("--chunks", type=int, default=180, help="chunks per session")
    parser.add_argument("--complete-every", type=int, default=5, help="complete every Nth session")
    args = parser.parse_args()
    data_dir = Path(args.data).resolve()
    if not (data_dir / "chunkstore.sqlite3").exists():
        print(f"building the store in {data_dir}", file=sys.stderr)
        build(data_dir, args.sessions, args.chunks, args.complete_every)

    streams, events, seconds = time_replay(data_dir)
    print(
        f"replay: {streams} streams, {events} events in {seconds:.2f} s"
        f" = {events / seconds:,.0f} events/s"
    )
    for label, cold in (("cold cache", True), ("warm cache", False)):
        if cold and not drop_caches():
            print("audit (cold cache): skipped, cannot drop the page cache here")
            continue
        report, elapsed = time_audit(data_dir)
        summary = report["summary"]
        assert isinstance(summary, dict)
        hashed = summary["blob_bytes"] + summary["file_bytes"]
        print(
            f"audit ({label}): {summary['events']} events, {summary['blobs']} blobs"
            f" ({summary['blob_bytes'] / GiB:.2f} GiB), {summary['files']} files"
            f" ({summary['file_bytes'] / GiB:.2f} GiB): {hashed / GiB:.2f} GiB re-hashed in"
            f" {summary['seconds']:.1f} s = {hashed / summary['seconds'] / 1e9:.2f} GB/s"
            f" ({elapsed:.1f} s wall with start-up); clean={report['clean']}"
        )


if __name__ == "__main__":
    main()
