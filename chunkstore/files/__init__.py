"""The files port: where completed uploads' final files are materialized.

A final file is derived data (invariant 5): the manifest and its chunks are the truth,
and a final file can always be rebuilt from them. Completion streams the assembled bytes
into a ``FilePart`` and commits it only once the validator has accepted them: the file
then appears whole under its location, atomically and durably, or not at all. A
location is what ``UploadCompleted.path`` records (``files/<upload_id>/<filename>``).

With materialization ``none`` there is no final file: ``UploadCompleted.path`` is then
``manifest:<manifest digest>`` (``manifest_location``), which names no place of the
files port, and readers stream the bytes from the chunks (``is_materialized``).

``FileCopies`` is a capability a files port may announce (a field of the ``Store``):
parts filled by kernel copies (``copy_file_range``) from where blobs lie in local files
(``chunkstore.blobs.BlobLocations``), instead of bytes passing through Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Protocol

import msgspec

from chunkstore.blobs import BlobLocation

#: How ``UploadCompleted.path`` starts for a file that was not materialized.
MANIFEST_PREFIX = "manifest:"


def location_of(upload_id: str, filename: str) -> str:
    """Where an upload's final file lives, as ``UploadCompleted.path`` records it."""
    return f"files/{upload_id}/{filename}"


def upload_of(location: str) -> str:
    """The upload id a location belongs to ("" for one outside any upload's place)."""
    parts = location.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "files" else ""


def manifest_location(manifest_digest: str) -> str:
    """What ``UploadCompleted.path`` records for a file left as its manifest."""
    return f"{MANIFEST_PREFIX}{manifest_digest}"


def is_materialized(location: str) -> bool:
    """Whether a recorded location is a final file of the files port (not a manifest)."""
    return not location.startswith(MANIFEST_PREFIX)


class FileEntry(msgspec.Struct, frozen=True):
    location: str
    size: int
    #: When it was written (seconds since the epoch).
    mtime: float


class FilePart(Protocol):
    """A final file being written: invisible until committed."""

    def write(self, data: bytes | memoryview) -> None: ...

    def commit(self) -> str:
        """Make the bytes durable and visible at the file's location; returns it."""
        ...

    def abort(self) -> None:
        """Forget the bytes; leaves no trace."""
        ...


class FileSink(Protocol):
    def writer(self, upload_id: str, filename: str) -> FilePart:
        """A part that becomes ``location_of(upload_id, filename)`` when committed,
        replacing what was there."""
        ...

    def open(self, location: str) -> BinaryIO:
        """The file's bytes; ``FileNotFoundError`` if there is none."""
        ...

    def size(self, location: str) -> int | None:
        """The file's size, or None if there is none."""
        ...

    def remove(self, location: str) -> None:
        """Remove the file, durably (nothing if there is none)."""
        ...

    def quarantine(self, location: str, into: str) -> str | None:
        """Move a (damaged) file into the quarantine named ``into``, as evidence; where
        it went, or None if there was no such file."""
        ...

    def scan(self) -> Iterator[FileEntry]:
        """Every final file, by location (audit and gc look for orphans with it)."""
        ...

    def parts(self) -> dict[str, int]:
        """Upload id -> how many parts it has (completions under way, or interrupted)."""
        ...

    def discard_parts(self, upload_id: str) -> int:
        """Remove parts an interrupted completion of ``upload_id`` left behind; how many."""
        ...


class CopyingFilePart(FilePart, Protocol):
    """A part that can also be filled by a kernel copy and read back before its commit."""

    def copy_from(self, source: BlobLocation) -> None:
        """Append ``source.length`` bytes of ``source.path`` from ``source.offset``;
        ``FileNotFoundError`` if that file is gone (a repack moved the bytes)."""
        ...

    def open_written(self) -> BinaryIO:
        """The bytes written so far, from the start (to verify them before the commit)."""
        ...


class FileCopies(Protocol):
    def copying_writer(self, upload_id: str, filename: str) -> CopyingFilePart:
        """Like ``FileSink.writer``, a part that takes kernel copies as well as writes."""
        ...
