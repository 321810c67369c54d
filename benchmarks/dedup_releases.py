"""Five consecutive Django releases uploaded in order with ``chunkstore upload``:
bytes sent and bytes stored, CDC against fixed-size chunking, against the ideal (the
unique bytes the chunker finds offline).

    python -m benchmarks.dedup_releases
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import msgspec

from benchmarks.common import MiB, remove, scratch_dir
from benchmarks.releases import release_tars
from chunkstore.chunking import chunk_file
from chunkstore.testing import Server


def objects_bytes(data_dir: Path) -> int:
    """Bytes the store takes on disk for blobs: its pack files (record headers included)
    and any blob stored one file each (the older layout)."""
    return sum(entry.stat().st_size for entry in blob_files(data_dir))


def blob_files(data_dir: Path) -> list[Path]:
    """The files holding blobs: packs, and loose blobs of the older layout."""
    found = [*(data_dir / "packs").glob("*.pack"), *(data_dir / "objects").rglob("*")]
    return [entry for entry in found if entry.is_file()]


def disk_bytes(data_dir: Path) -> int:
    """Blobs and final files: what the uploads take on disk (the database aside)."""
    finals = [entry for entry in (data_dir / "files").rglob("*") if entry.is_file()]
    return objects_bytes(data_dir) + sum(entry.stat().st_size for entry in finals)


class SeriesUpload(NamedTuple):
    sent: int
    #: Blob bytes on disk, and blobs plus final files.
    stored: int
    disk: int
    seconds: float


def upload_all(
    tars: list[Path],
    chunker: str,
    work: Path,
    cdc_avg_kib: int = 64,
    server_env: dict[str, str] | None = None,
    name: str = "",
) -> SeriesUpload:
    """Upload ``tars`` in order with ``chunkstore upload`` into a fresh server."""
    server = Server(work / f"data-{name or chunker}", env=server_env).start()
    try:
        token = server.token("bench")
        sent = 0
        seconds = 0.0
        for tar in tars:
            started = time.perf_counter()
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "chunkstore.cli",
                    "upload",
                    str(tar),
                    "--server",
                    server.url,
                    "--token",
                    token,
                    "--chunker",
                    chunker,
                    "--cdc-avg",
                    str(cdc_avg_kib),
                    "--json",
                    "--state-dir",
                    str(work / "state"),
                ],
                capture_output=True,
                check=True,
                env={**os.environ},
            )
            seconds += time.perf_counter() - started
            sent += msgspec.json.decode(done.stdout)["bytes_sent"]
        return SeriesUpload(
            sent, objects_bytes(server.data_dir), disk_bytes(server.data_dir), seconds
        )
    finally:
        server.stop()


def main() -> None:
    tars = release_tars()
    total = sum(t.stat().st_size for t in tars)
    work = scratch_dir()
    try:
        print(f"{len(tars)} releases, {total / MiB:.0f} MiB uploaded in order")
        for chunker in ("cdc", "fixed"):
            unique = {c.digest: c.size for t in tars for c in chunk_file(t, chunker)}
            ideal = sum(unique.values())
            sent, stored, _, _ = upload_all(tars, chunker, work)
            print(
                f"  {chunker:5s}: sent {sent / MiB:6.1f} MiB ({total / sent:.2f}x less than"
                f" the total), stored {stored / MiB:6.1f} MiB in packs (chunks +"
                f" manifests), ideal {ideal / MiB:6.1f} MiB ({total / ideal:.2f}x)"
            )
    finally:
        remove(work)


if __name__ == "__main__":
    main()
