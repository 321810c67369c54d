"""Helpers shared by the benchmarks: servers, memory readings, test files."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from chunkstore.testing import descendants

MiB = 1024 * 1024


def _peak_rss(pid: int) -> int:
    """VmHWM (peak resident memory) of one process, 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def max_process_peak_rss(pid: int) -> int:
    """The largest single-process peak RSS in the tree (the worker that did the work)."""
    return max(_peak_rss(member) for member in [pid, *descendants(pid)])


def random_file(size: int, directory: Path | None = None) -> Path:
    """A file of fresh random bytes, written in pieces (never all in memory)."""
    handle, name = tempfile.mkstemp(prefix="bench-", suffix=".bin", dir=directory)
    with os.fdopen(handle, "wb") as out:
        remaining = size
        while remaining:
            piece = min(remaining, 8 * MiB)
            out.write(os.urandom(piece))
            remaining -= piece
    return Path(name)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while piece := source.read(8 * MiB):
            digest.update(piece)
    return digest.hexdigest()


def scratch_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="chunkstore-bench-"))
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
