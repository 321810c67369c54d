"""Audit holds one stream at a time: its memory does not grow with the number of uploads.

Holding every session's folded state cost 3-4 KiB an upload (10,000 uploads: tens of
MiB). Measured with tracemalloc (allocations, not time) over real SQLite stores.
"""

from __future__ import annotations

import gc as python_gc
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chunkstore.application import UploadService
from chunkstore.audit import audit
from chunkstore.config import Settings
from chunkstore.events import ChunkStored, KnownEvent, UploadCancelled, UploadInitiated
from chunkstore.projections import project
from chunkstore.session import SessionState, replay

#: The same four chunks in every upload: what the owner has stored stays the same size,
#: so only what audit keeps per upload can grow.
CHUNKS = [(f"{n:064x}", 1000) for n in range(4)]
FEW, MANY = 2_500, 5_000


def cancelled_uploads(data_dir: Path, count: int) -> None:
    """``count`` uploads of four chunks each, cancelled (audit checks no blob of them),
    appended from several threads so that the log commits them in groups."""
    service = UploadService.open(Settings(data_dir=data_dir))
    now = datetime.now(UTC)

    def append(number: int) -> None:
        upload_id = f"upload-{number:06}"
        events: list[KnownEvent] = [
            UploadInitiated(
                owner="alice",
                filename=f"file-{number}.bin",
                total_size=4000,
                mime_type="application/octet-stream",
                chunk_size=1000,
                total_chunks=4,
                created_at=now,
                expires_at=now + timedelta(days=1),
            ),
            *(ChunkStored(index, d, s) for index, (d, s) in enumerate(CHUNKS)),
            UploadCancelled("gave up"),
        ]
        state = replay(events, SessionState.empty(upload_id))
        service.store.log.append(upload_id, 0, events, project(state, events))

    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(append, range(count)))
    finally:
        service.close()


def audit_peak(data_dir: Path) -> int:
    """Peak bytes allocated during one audit, in a service opened for it."""
    service = UploadService.open(Settings(data_dir=data_dir))
    try:
        python_gc.collect()
        tracemalloc.start()
        try:
            report = audit(service)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert report.clean, report.findings
        assert report.summary.streams > 0
        return peak
    finally:
        service.close()


@pytest.mark.slow
def test_audit_memory_does_not_grow_with_the_number_of_uploads(tmp_path: Path) -> None:
    few, many = tmp_path / "few", tmp_path / "many"
    # More uploads than the log's read batches hold (2,000 rows), so that the batches
    # weigh the same in both.
    cancelled_uploads(few, FEW)
    cancelled_uploads(many, MANY)

    growth = (audit_peak(many) - audit_peak(few)) / (MANY - FEW)

    # Per upload: about 0 while audit holds one stream at a time, 3-4 KiB when it held
    # every session's state.
    assert growth < 512, f"{growth:.0f} bytes more per upload"
