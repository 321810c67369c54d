"""Dedup must not cost throughput on data that does not dedup.

Uploads one file of fresh random bytes with ``chunkstore upload`` (FastCDC chunks in
~8 MiB batches over ``--parallel`` connections) and through the raw chunk endpoint
(8 MiB chunks, one connection), each into a fresh server, alternating, and prints the
median of each and their ratio.

    python -m benchmarks.client_upload [--size-mib 1024] [--runs 3] [--parallel 4]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from benchmarks.common import MiB, max_process_peak_rss, random_file, remove, scratch_dir
from benchmarks.raw_upload import upload as raw_upload
from chunkstore.testing import Server


def client_upload(
    server: Server,
    path: Path,
    parallel: int,
    state_dir: Path,
    expected_sha256: str | None = None,
) -> float:
    """Seconds for ``chunkstore upload`` as a user runs it (a separate process)."""
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chunkstore.cli",
            "upload",
            str(path),
            "--server",
            server.url,
            "--token",
            server.token("bench"),
            "--parallel",
            str(parallel),
            "--json",
            "--state-dir",
            str(state_dir),
        ],
        capture_output=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    result = msgspec.json.decode(done.stdout)
    assert result["status"] == "completed", result
    if expected_sha256 is not None:
        assert result["sha256"] == expected_sha256, "client: final file hash differs"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    size = args.size_mib * MiB
    work = scratch_dir()
    try:
        path = random_file(size, work)
        figures: dict[str, list[float]] = {"client": [], "raw": []}
        peaks: dict[str, list[int]] = {"client": [], "raw": []}
        for run in range(args.runs):
            for name in ("client", "raw"):
                server = Server(work / f"{name}{run}").start()
                try:
                    if name == "client":
                        seconds = client_upload(server, path, args.parallel, work / f"st{run}")
                    else:
                        timing = raw_upload(server, path, 8 * MiB)
                        seconds = timing["chunks_seconds"] + timing["complete_seconds"]
                    peaks[name].append(max_process_peak_rss(server.main_pid))
                finally:
                    server.stop()
                    remove(work / f"{name}{run}")
                figures[name].append(size / seconds / 1e6)
        client = statistics.median(figures["client"])
        raw = statistics.median(figures["raw"])
        print(
            f"{args.size_mib} MiB of fresh random bytes, end to end (init to completed),"
            f" median of {args.runs}:"
        )
        print(
            f"  chunkstore upload --parallel {args.parallel} (CDC, batches): {client:.0f} MB/s"
            f"  runs {[round(x) for x in figures['client']]}"
            f"  server peak RSS {max(peaks['client']) / MiB:.0f} MiB"
        )
        print(
            f"  raw PUT chunks, 8 MiB, 1 connection:          {raw:.0f} MB/s"
            f"  runs {[round(x) for x in figures['raw']]}"
            f"  server peak RSS {max(peaks['raw']) / MiB:.0f} MiB"
        )
        print(f"  ratio client / raw: {client / raw:.2f}")
    finally:
        remove(work)


if __name__ == "__main__":
    main()
