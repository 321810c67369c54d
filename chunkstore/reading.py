"""Reading a completed upload's bytes: whole or a byte range, never all in memory.

The materialized file is derived data (invariant 5): when it is there with the size the
manifest states, bytes come from it; when it is gone, or was never made (materialization
``none``), they come from the chunks, in the manifest's order, each chunk re-hashed
against its name as it streams by. A range starts at the chunk holding its first byte,
found by bisecting the chunks' cumulative offsets: nothing before it is read.
"""

from __future__ import annotations

import array
import bisect
import itertools
from collections.abc import Iterator

import blake3
import msgspec

from chunkstore.blobs import BlobStore
from chunkstore.errors import CorruptBlob, UploadNotActive, UploadNotFound
from chunkstore.files import FileSink, is_materialized
from chunkstore.manifest import Manifest
from chunkstore.session import SessionState, Status

READ_SIZE = 1024 * 1024


class FileNotReady(UploadNotActive):
    """The upload is not completed, so there is no file to download yet."""

    slug = "file-not-ready"
    title = "Upload not completed"


class StoredFile(msgspec.Struct, frozen=True, kw_only=True):
    upload_id: str
    filename: str
    size: int
    sha256: str
    blake3: str
    mime_type: str
    manifest_digest: str
    #: The materialized file's location, when it is present and has the right size.
    location: str | None


def load_manifest(blobs: BlobStore, digest: str) -> Manifest:
    """Decode a manifest object; raises ``CorruptBlob`` if it is missing or unreadable."""
    with blobs.open(digest) as blob:
        data = blob.read()
    if blake3.blake3(data).hexdigest() != digest:
        raise CorruptBlob(f"manifest {digest} does not hash to its name", digest=digest)
    try:
        return Manifest.decode(data)
    except msgspec.DecodeError as error:
        raise CorruptBlob(f"manifest {digest} does not decode: {error}", digest=digest) from None


def served_type(detected: str | None) -> str:
    """The Content-Type a file is served with: what libmagic detected, but never its
    name for an empty file (``application/x-empty``, or ``inode/x-empty`` from a file
    on disk), which is no media type."""
    if not detected or detected.startswith("inode/") or detected == "application/x-empty":
        return "application/octet-stream"
    return detected


def stored_file(state: SessionState, files: FileSink) -> StoredFile:
    """What there is to read of a session; raises ``FileNotReady`` unless completed,
    ``UploadNotFound`` once deleted (the file is gone, as for a missing upload)."""
    if state.status == Status.DELETED:
        raise UploadNotFound(f"no upload {state.upload_id}", upload_id=state.upload_id)
    if state.status != Status.COMPLETED or state.manifest is None or state.file_path is None:
        raise FileNotReady(
            f"upload {state.upload_id} is {state.status}; only a completed upload has a file",
            status=state.status,
        )
    present = (
        is_materialized(state.file_path) and files.size(state.file_path) == state.manifest.size
    )
    return StoredFile(
        upload_id=state.upload_id,
        filename=state.filename,
        size=state.manifest.size,
        sha256=state.manifest.sha256,
        blake3=state.manifest.blake3,
        mime_type=served_type(state.detected_mime),
        manifest_digest=state.manifest.manifest_digest,
        location=state.file_path if present else None,
    )


def read_range(
    file: StoredFile, blobs: BlobStore, files: FileSink, start: int, end: int
) -> Iterator[bytes]:
    """Bytes ``start`` to ``end`` inclusive (HTTP range arithmetic), piece by piece."""
    if end < start:
        return
    if file.location is not None:
        yield from _file_range(files, file.location, start, end)
    else:
        chunks = load_manifest(blobs, file.manifest_digest).chunks
        yield from chunks_range(blobs, chunks, start, end)


def _file_range(files: FileSink, location: str, start: int, end: int) -> Iterator[bytes]:
    with files.open(location) as source:
        source.seek(start)
        remaining = end - start + 1
        while remaining > 0:
            piece = source.read(min(READ_SIZE, remaining))
            if not piece:
                raise CorruptBlob(f"{location.rsplit('/', 1)[-1]} ended early")
            remaining -= len(piece)
            yield piece


def chunks_range(
    blobs: BlobStore, chunks: list[tuple[str, int]], start: int, end: int
) -> Iterator[bytes]:
    """The range out of the chunks. Each chunk the range touches is read whole and
    re-hashed, so damage ends the stream with ``CorruptBlob`` instead of passing on
    silently; at most one read piece is in memory."""
    # ends[i]: the offset just past chunk i (8 bytes a chunk); the first chunk whose end
    # is past ``start`` holds it (chunks of no bytes end where they start: skipped).
    ends = array.array("q", itertools.accumulate(size for _, size in chunks))
    first = bisect.bisect_right(ends, start)
    for index in range(first, len(chunks)):
        digest, size = chunks[index]
        chunk_start = ends[index] - size
        if chunk_start > end:
            return
        if size:
            yield from _chunk_slice(blobs, digest, size, start - chunk_start, end - chunk_start)


def _chunk_slice(
    blobs: BlobStore, digest: str, size: int, first: int, last: int
) -> Iterator[bytes]:
    """Bytes ``first`` to ``last`` of one chunk. The last piece is held back until the
    whole chunk has been re-hashed: a damaged chunk then never completes a response
    (the body ends short), and a chunk of up to ``READ_SIZE`` bytes, which is every
    content-defined chunk, sends none of its bytes at all."""
    hasher = blake3.blake3()
    position = 0
    held: bytes | None = None
    with blobs.open(digest) as blob:
        while piece := blob.read(READ_SIZE):
            hasher.update(piece)
            piece_start, piece_end = position, position + len(piece) - 1
            position += len(piece)
            if piece_end >= first and piece_start <= last:
                if held is not None:
                    yield held
                held = piece[max(0, first - piece_start) : last - piece_start + 1]
    if position != size or hasher.hexdigest() != digest:
        raise CorruptBlob(f"blob {digest} is damaged", digest=digest)
    if held is not None:
        yield held
