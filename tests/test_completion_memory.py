"""Completion holds no per-chunk list: its memory does not grow with the chunk count.

A list of a session's (digest, size) pairs cost ~200 bytes a chunk and its manifest's
encoding ~90 more (a 4 GiB content-defined upload: ~19 MiB); completion reads the chunk
table through a view and encodes the manifest a page at a time instead. Measured with
tracemalloc (allocations, not time) over real SQLite stores and packs.
"""

from __future__ import annotations

import gc as python_gc
import tracemalloc
from pathlib import Path

import blake3
import msgspec
import pytest

from chunkstore.application import UploadService
from chunkstore.commands import InitRequest
from chunkstore.config import Settings
from chunkstore.intake import Frame
from chunkstore.manifest import ENCODE_PAGE, Manifest, store_manifest
from chunkstore.session import OrderedChunks

CHUNK = 16
FEW, MANY = 10_000, 40_000


def manifest_of(chunks: list[tuple[str, int]]) -> Manifest:
    return Manifest(
        upload_id="u" * 32,
        filename='a "quoted" näme\n.bin',
        size=sum(size for _, size in chunks),
        blake3="b" * 64,
        sha256="c" * 64,
        chunks=chunks,
    )


@pytest.mark.parametrize(
    "count", [0, 1, ENCODE_PAGE - 1, ENCODE_PAGE, ENCODE_PAGE + 1, 2 * ENCODE_PAGE + 7]
)
def test_a_manifest_encoded_in_pages_is_the_same_bytes(count: int) -> None:
    chunks = [(blake3.blake3(str(n).encode()).hexdigest(), n % 70_000) for n in range(count)]
    whole = manifest_of(chunks)

    paged = b"".join(msgspec.structs.replace(whole, chunks=[]).pieces(iter(chunks)))

    assert paged == whole.encode()
    assert msgspec.json.decode(paged, type=Manifest) == whole


def test_a_manifest_stored_in_pages_has_the_digest_of_its_bytes(tmp_path: Path) -> None:
    service = UploadService.open(Settings(data_dir=tmp_path / "data"))
    try:
        chunks = [(blake3.blake3(str(n).encode()).hexdigest(), 1) for n in range(30_000)]
        encoded = manifest_of(chunks).encode()
        assert len(encoded) > 1024 * 1024  # large enough to be streamed into a pack

        head = msgspec.structs.replace(manifest_of(chunks), chunks=[])
        ref = store_manifest(service.store.blobs, head, chunks)

        assert ref.digest == blake3.blake3(encoded).hexdigest()
        with service.store.blobs.open(ref.digest) as stored:
            assert stored.read() == encoded
    finally:
        service.close()


def fixed_upload(service: UploadService, count: int) -> str:
    """An upload of ``count`` distinct chunks of ``CHUNK`` bytes, all stored."""
    request = InitRequest(filename="many.bin", total_size=count * CHUNK, chunk_size=CHUNK)
    upload_id = service.init_upload("alice", request).upload_id
    for start in range(0, count, 2_000):
        frames = []
        for index in range(start, min(count, start + 2_000)):
            piece = index.to_bytes(CHUNK, "big")
            frames.append(Frame(index, blake3.blake3(piece).hexdigest(), CHUNK, [piece]))
        service.intake.record_frames("alice", upload_id, frames)
    return upload_id


def test_the_ordered_view_is_the_list_and_refuses_a_gap(tmp_path: Path) -> None:
    service = UploadService.open(Settings(data_dir=tmp_path / "data"))
    try:
        upload_id = fixed_upload(service, 5_000)
        state = service.get("alice", upload_id)
        view = state.ordered_view()
        listed = state.ordered_chunks()
        assert isinstance(view, OrderedChunks)
        assert len(view) == 5_000
        assert list(view) == listed
        assert view[0] == listed[0] and view[-1] == listed[-1]
        assert view[1_020:1_030] == listed[1_020:1_030]
        with pytest.raises(IndexError):
            view[5_000]

        request = InitRequest(filename="gap.bin", total_size=3 * CHUNK, chunk_size=CHUNK)
        gap_id = service.init_upload("alice", request).upload_id
        piece = bytes(CHUNK)
        for index in (0, 2):
            frame = Frame(index, blake3.blake3(piece).hexdigest(), CHUNK, [piece])
            service.intake.record_frames("alice", gap_id, [frame])
        with pytest.raises(KeyError):
            service.get("alice", gap_id).ordered_view()
    finally:
        service.close()


def completion_peak(data_dir: Path, count: int) -> int:
    """Peak bytes allocated while completing an upload of ``count`` chunks."""
    service = UploadService.open(Settings(data_dir=data_dir, materialize="none"))
    try:
        upload_id = fixed_upload(service, count)
        python_gc.collect()
        tracemalloc.start()
        try:
            done = service.complete_upload("alice", upload_id)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert done.status == "completed"
        return peak
    finally:
        service.close()


@pytest.mark.slow
def test_completion_memory_does_not_grow_with_the_chunk_count(tmp_path: Path) -> None:
    growth = (completion_peak(tmp_path / "many", MANY) - completion_peak(tmp_path / "few", FEW)) / (
        MANY - FEW
    )

    # Per chunk: 195 bytes measured with the list and the whole manifest held.
    assert growth < 48, f"{growth:.0f} bytes more per chunk"
