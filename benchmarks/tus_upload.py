"""tus upload throughput with a stock client (tuspy), against the raw chunk endpoint in
the same run, on the same file and a fresh server each.

python -m benchmarks.tus_upload [--size-mib 1024] [--chunk-mib 8]

Both figures are end to end (creation, every request, completion with the validator);
the server cuts the tus stream into content-defined chunks, the raw path stores the
client's 8 MiB chunks as they are. The machine's load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from tusclient import client as tus_client

from benchmarks.common import (
    MiB,
    max_process_peak_rss,
    random_file,
    remove,
    scratch_dir,
    sha256_file,
)
from benchmarks.raw_upload import upload as raw_upload
from chunkstore.testing import Server


def tus_upload(server: Server, path: Path, chunk_size: int) -> dict[str, float | str]:
    token = server.token("bench")
    client = tus_client.TusClient(
        f"{server.url}/files/", headers={"Authorization": f"Bearer {token}"}
    )
    started = time.perf_counter()
    uploader = client.uploader(str(path), chunk_size=chunk_size, metadata={"filename": "bench.bin"})
    uploader.upload()
    finished = time.perf_counter()
    assert uploader.url is not None
    upload_id = uploader.url.rstrip("/").rsplit("/", 1)[-1]
    with server.client("bench") as api:
        status = api.get(f"/api/v1/upload/status/{upload_id}").json()
    if status["status"] != "completed":
        raise RuntimeError(f"tus upload ended {status['status']}")
    return {"seconds": finished - started, "sha256": status["sha256"]}


def measure(work: Path, name: str, run: object) -> tuple[dict[str, float | str], int]:
    server = Server(work / f"data-{name}").start()
    try:
        result = run(server)  # type: ignore[operator]
        peak = max_process_peak_rss(server.process.pid)  # type: ignore[union-attr]
    finally:
        server.stop()
        remove(work / f"data-{name}")
    return result, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=8)
    args = parser.parse_args()
    size, chunk = args.size_mib * MiB, args.chunk_mib * MiB
    work = scratch_dir()
    try:
        path = random_file(size, work)
        expected = sha256_file(path)
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        raw, raw_peak = measure(work, "raw", lambda s: raw_upload(s, path, chunk))
        raw_seconds = float(raw["chunks_seconds"]) + float(raw["complete_seconds"])
        tus, tus_peak = measure(work, "tus", lambda s: tus_upload(s, path, chunk))
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        assert raw["sha256"] == expected, "raw: final file hash differs"
        assert tus["sha256"] == expected, "tus: final file hash differs"
        print(f"file: {args.size_mib} MiB, {args.chunk_mib} MiB per request, one connection")
        print(
            f"raw PUT chunks, end to end: {size / raw_seconds / 1e6:.0f} MB/s"
            f" ({raw_seconds:.2f} s; peak RSS {raw_peak / MiB:.0f} MiB)"
        )
        tus_seconds = float(tus["seconds"])
        print(
            f"tus (tuspy), end to end: {size / tus_seconds / 1e6:.0f} MB/s"
            f" ({tus_seconds:.2f} s; peak RSS {tus_peak / MiB:.0f} MiB)"
        )
        print(f"tus / raw: {raw_seconds / tus_seconds:.2f}")
        print("both final files match the source's sha256")
    finally:
        remove(work)


if __name__ == "__main__":
    main()
