"""One upload through the raw chunk endpoint: throughput and the server's peak memory.

python -m benchmarks.raw_upload [--size-mib 1024] [--chunk-mib 8]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    MiB,
    max_process_peak_rss,
    random_file,
    remove,
    scratch_dir,
    sha256_file,
)
from chunkstore.testing import Server


def put_raw(client: httpx.Client, upload_id: str, index: int, chunk: bytes) -> httpx.Response:
    return client.put(
        f"/api/v1/upload/{upload_id}/chunks/{index}",
        content=chunk,
        headers={"Content-Type": "application/octet-stream"},
    )


def start_session(client: httpx.Client, size: int, chunk_size: int) -> str:
    """init for a fixed-size upload of ``size`` bytes; returns its upload id."""
    init = client.post(
        "/api/v1/upload/init",
        json={"filename": "bench.bin", "total_size": size, "chunk_size": chunk_size},
    )
    init.raise_for_status()
    return str(init.json()["upload_id"])


def upload(
    server: Server,
    path: Path,
    chunk_size: int,
    send: Callable[[httpx.Client, str, int, bytes], httpx.Response] = put_raw,
) -> dict[str, Any]:
    """One session, its chunks in order over one connection (``send`` carries each),
    then completion."""
    with server.client("bench") as client, open(path, "rb") as source:
        started = time.perf_counter()
        upload_id = start_session(client, path.stat().st_size, chunk_size)
        index = 0
        while chunk := source.read(chunk_size):
            send(client, upload_id, index, chunk).raise_for_status()
            index += 1
        chunks_done = time.perf_counter()
        done = client.post("/api/v1/upload/complete", json={"upload_id": upload_id})
        if done.is_error:
            raise RuntimeError(f"complete failed: {done.status_code} {done.text}")
        finished = time.perf_counter()
    return {
        "chunks_seconds": chunks_done - started,
        "complete_seconds": finished - chunks_done,
        "sha256": done.json()["sha256"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=8)
    args = parser.parse_args()
    work = scratch_dir()
    try:
        path = random_file(args.size_mib * MiB, work)
        expected = sha256_file(path)
        server = Server(work / "data").start()
        try:
            baseline_rss = max_process_peak_rss(server.main_pid)
            result = upload(server, path, args.chunk_mib * MiB)
            peak = max_process_peak_rss(server.main_pid)
        finally:
            server.stop()
        size = args.size_mib * MiB
        assert result["sha256"] == expected, "final file hash differs"
        print(f"file: {args.size_mib} MiB in {args.chunk_mib} MiB chunks (raw PUT, 1 connection)")
        print(
            f"chunks: {size / result['chunks_seconds'] / 1e6:.0f} MB/s "
            f"({result['chunks_seconds']:.2f} s)"
        )
        print(
            f"complete (assemble + validate + materialize): {result['complete_seconds']:.2f} s "
            f"({size / result['complete_seconds'] / 1e6:.0f} MB/s)"
        )
        total = result["chunks_seconds"] + result["complete_seconds"]
        print(f"end to end: {size / total / 1e6:.0f} MB/s")
        print(
            f"server worker peak RSS: {peak / MiB:.0f} MiB"
            f" (idle after start: {baseline_rss / MiB:.0f} MiB)"
        )
        print("final sha256 matches the source file")
    finally:
        remove(work)


if __name__ == "__main__":
    main()
