"""Tails in a local directory: ``<root>/staging/<upload_id>.<base>``, fsynced."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from chunkstore.durable import fsync_directory, make_durable_dirs
from chunkstore.errors import ChunkstoreError, full_disk_guard


class LocalTails:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        make_durable_dirs(directory)

    def path(self, upload_id: str, base: int) -> Path:
        return self.directory / f"{upload_id}.{base}"

    def read(self, upload_id: str, base: int, size: int) -> bytes:
        if size == 0:
            return b""
        try:
            with open(self.path(upload_id, base), "rb") as staged:
                tail = staged.read(size)
        except FileNotFoundError:
            tail = b""  # gone: every acknowledged byte of it is lost
        if len(tail) != size:
            raise ChunkstoreError(f"the tail of upload {upload_id} lost acknowledged bytes")
        return tail

    def extend(self, upload_id: str, base: int, old_size: int, data: bytes) -> None:
        path = self.path(upload_id, base)
        created = not path.exists()
        with full_disk_guard("the upload's tail"):
            with open(path, "r+b" if not created else "xb") as staged:
                staged.seek(old_size)
                staged.write(data)
                staged.truncate()
                staged.flush()
                os.fsync(staged.fileno())
            if created:
                fsync_directory(self.directory)

    def write(self, upload_id: str, base: int, data: bytes) -> None:
        with full_disk_guard("the upload's tail"):
            with open(self.path(upload_id, base), "wb") as staged:
                staged.write(data)
                staged.flush()
                os.fsync(staged.fileno())
            fsync_directory(self.directory)

    def discard(self, upload_id: str, keep_base: int | None = None) -> int:
        """(A ``<upload_id>.lock`` left by versions that locked uploads here goes too.)"""
        removed = 0
        for entry in os.scandir(self.directory):
            name, _, suffix = entry.name.partition(".")
            if name != upload_id or suffix == str(keep_base):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
        return removed

    def uploads(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for entry in os.scandir(self.directory):
            upload_id = entry.name.partition(".")[0]
            found[upload_id] = found.get(upload_id, 0) + 1
        return found
