"""Five consecutive Django releases uploaded in order with ``chunkstore upload``:
bytes sent and bytes stored, CDC against fixed-size chunking, against the ideal (the
unique bytes the chunker finds offline).

    python -m benchmarks.dedup_releases
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec

from benchmarks.common import MiB, remove, scratch_dir
from benchmarks.releases import release_tars
from chunkstore.chunking import chunk_file
from chunkstore.testing import Server


def objects_bytes(data_dir: Path) -> int:
    """Bytes the store takes on disk for blobs: its pack files (record headers included)
    and any blob stored one file each (the older layout)."""
    files = [*(data_dir / "packs").glob("*.pack"), *(data_dir / "objects").rglob("*")]
    return sum(entry.stat().st_size for entry in files if entry.is_file())


def upload_all(tars: list[Path], chunker: str, work: Path) -> tuple[int, int]:
    server = Server(work / f"data-{chunker}").start()
    try:
        token = server.token("bench")
        sent = 0
        for tar in tars:
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
                    "--json",
                    "--state-dir",
                    str(work / "state"),
                ],
                capture_output=True,
                check=True,
                env={**os.environ},
            )
            sent += msgspec.json.decode(done.stdout)["bytes_sent"]
        return sent, objects_bytes(server.data_dir)
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
            sent, stored = upload_all(tars, chunker, work)
            print(
                f"  {chunker:5s}: sent {sent / MiB:6.1f} MiB ({total / sent:.2f}x less than"
                f" the total), stored {stored / MiB:6.1f} MiB in packs (chunks +"
                f" manifests), ideal {ideal / MiB:6.1f} MiB ({total / ideal:.2f}x)"
            )
    finally:
        remove(work)


if __name__ == "__main__":
    main()
