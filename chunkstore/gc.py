"""Garbage collection: expire sessions past their TTL, then sweep unreferenced blobs.

A blob is kept when anything live names it:
- a chunk of an active, assembling or completed session (the ``ChunkStored`` events);
- a completed session's manifest, and every chunk that manifest lists;
- the chunks and manifest of a cancelled, failed or expired session that ended less
  than ``hours`` ago (so a recent failure can still be looked into). A deleted upload's
  are released at once: its owner asked for them to go.
Anything else is swept, but only once its file is older than ``grace`` seconds.

gc also removes files under ``files/`` that no completed upload owns (left by a
completion whose final event never made it, or a process that died while deleting one),
once they are older than ``grace``, and lock files nobody holds (``chunkstore.locks``).

Races with a live server, and how each is closed:
- A new chunk is committed (blob linked, fresh mtime) a moment *before* its event is
  appended. The mtime grace covers that moment.
- A chunk whose bytes the store already holds is *not* rewritten (the service only
  verifies the bytes, or finds the name taken): an old, unreferenced blob can become
  referenced again with its old mtime. gc therefore deletes each batch while holding the
  event log's write lock, after catching its reference set up with every event appended
  so far: no append can land between that last look and the deletion. An append that
  checked ``blobs.exists`` *before* the batch and commits *after* it is the one window
  left; the service closes it by checking, inside the append's write lock, that every
  chunk the events name still exists (``UploadService._append``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path

import msgspec

from chunkstore.blobs import BlobStore
from chunkstore.errors import CorruptBlob, UploadLocked
from chunkstore.events import Event
from chunkstore.files import load_manifest
from chunkstore.service import UploadService, remove_final
from chunkstore.session import (
    ACTIVE,
    ASSEMBLING,
    COMPLETED,
    DELETED,
    FINAL_STATUSES,
    SessionState,
    replay,
)

#: Blobs deleted per write-lock hold: small, so appends wait only milliseconds.
SWEEP_BATCH = 256
_LIVE_STATUSES = frozenset({ACTIVE, ASSEMBLING, COMPLETED})


class GcReport(msgspec.Struct, kw_only=True):
    dry_run: bool
    hours: float
    grace: float
    sessions_expired: int = 0
    staging_files_removed: int = 0
    #: Ended sessions (cancelled, failed, expired) whose chunks no longer count.
    sessions_released: int = 0
    blobs_examined: int = 0
    blobs_referenced: int = 0
    blobs_in_grace: int = 0
    blobs_swept: int = 0
    bytes_freed: int = 0
    #: Files under ``files/`` that no completed upload owns, removed, and their bytes.
    orphan_files_removed: int = 0
    orphan_bytes_freed: int = 0
    #: Per-upload lock files nobody held (their holder died before removing them).
    lock_files_removed: int = 0
    seconds: float = 0.0
    #: Upload ids expired and digests swept (or that would be, with ``dry_run``).
    expired: list[str] = msgspec.field(default_factory=list)
    swept: list[str] = msgspec.field(default_factory=list)
    #: Orphan files removed, relative to the data directory.
    orphans: list[str] = msgspec.field(default_factory=list)


class References:
    """The set of referenced digests, caught up from the log incrementally.

    Events are append-only, so catching up only ever adds references; a session that
    ends during a run keeps its chunks for this run (gc errs on the side of keeping).
    """

    def __init__(
        self,
        service: UploadService,
        released_before: datetime,
        ending_now: frozenset[str] = frozenset(),
        ended_at: datetime | None = None,
    ) -> None:
        self.service = service
        self.released_before = released_before
        #: Sessions a dry run would expire: counted as ended at ``ended_at``.
        self.ending_now = ending_now
        self.ended_at = ended_at
        self.position = 0
        self.states: dict[str, SessionState] = {}
        self.last_recorded: dict[str, datetime] = {}
        self.digests: set[str] = set()
        self.released: set[str] = set()

    def catch_up(self) -> None:
        pending: dict[str, list[Event]] = {}
        for recorded in self.service.events.read_all(self.position):
            pending.setdefault(recorded.stream_id, []).append(recorded.event)
            self.last_recorded[recorded.stream_id] = recorded.recorded_at
            self.position = recorded.position
        for stream_id, new_events in pending.items():
            previous = self.states.get(stream_id) or SessionState.empty(stream_id)
            state = replay(new_events, previous)
            self.states[stream_id] = state
            self._add(state)

    def _add(self, state: SessionState) -> None:
        if self._keeps(state):
            self.released.discard(state.upload_id)
            self.digests.update(digest for digest, _ in state.chunks.values())
            if state.manifest is not None:
                self.digests.add(state.manifest.manifest_digest)
                if state.status == COMPLETED:
                    self.digests.update(self._manifest_chunks(state.manifest.manifest_digest))
        else:
            # An ended session takes no more chunks, so nothing it names is in flight.
            self.released.add(state.upload_id)

    def _keeps(self, state: SessionState) -> bool:
        if state.status == DELETED:
            # Its owner asked for the bytes to go: released at once, not after ``hours``.
            return False
        if state.upload_id in self.ending_now and self.ended_at is not None:
            return self.ended_at > self.released_before
        if state.status not in FINAL_STATUSES or state.status in _LIVE_STATUSES:
            return True
        return self.last_recorded[state.upload_id] > self.released_before

    def _manifest_chunks(self, digest: str) -> Iterator[str]:
        with contextlib.suppress(CorruptBlob):
            yield from (chunk for chunk, _ in load_manifest(self.service.blobs, digest).chunks)


def expirable(service: UploadService, now: datetime) -> list[str]:
    """Sessions still open in the log but past their TTL."""
    found = []
    for row in service.events.session_rows():
        if row["status"] in (ACTIVE, ASSEMBLING):
            state = service.load(row["upload_id"])
            if state.status in (ACTIVE, ASSEMBLING) and state.is_expired(now):
                found.append(state.upload_id)
    return found


def staging_files(service: UploadService, upload_ids: Iterable[str]) -> list[str]:
    """Files that belong to these (ended) sessions and to nothing else: a half-assembled
    final file in ``tmp/`` (``<kind>-<upload_id>-<random>``) and a tus upload's staged
    tail in ``staging/`` (``<upload_id>.<offset>``)."""
    wanted = set(upload_ids)
    found: list[str] = []
    if not wanted:
        return found
    data_dir = service.settings.data_dir
    for directory, owner_of in (
        (data_dir / "tmp", lambda name: name.split("-")[1] if name.count("-") >= 2 else ""),
        (data_dir / "staging", lambda name: name.split(".")[0]),
    ):
        if not directory.is_dir():
            continue
        for entry in os.scandir(directory):
            if entry.is_file() and owner_of(entry.name) in wanted:
                found.append(entry.path)
    return sorted(found)


def orphan_candidates(service: UploadService, states: Mapping[str, SessionState]) -> list[Path]:
    """Files under ``files/`` that no completed upload in ``states`` owns."""
    owned = {
        service.settings.data_dir / state.file_path
        for state in states.values()
        if state.status == COMPLETED and state.file_path is not None
    }
    found = []
    for directory, _, names in os.walk(service.files_dir):
        for name in names:
            path = Path(directory) / name
            if path not in owned:
                found.append(path)
    return sorted(found)


def confirm_orphan(service: UploadService, path: Path, remove: bool = False) -> str | None:
    """Why ``path`` is an orphan (no completed upload owns it), or None if it is not one
    after all. Checked against the log under the upload's lock, so that a completion
    publishing it right now is never mistaken for a leftover (a busy upload: None);
    ``remove`` removes it under that lock too."""
    relative = path.relative_to(service.settings.data_dir)
    upload_id = relative.parts[1] if len(relative.parts) > 2 else ""
    state = service.load(upload_id) if upload_id else SessionState.empty()
    if not state.exists:
        if remove:
            remove_final(path)
        return f"no upload {upload_id[:40]!r}" if upload_id else "outside any upload's directory"
    try:
        with service.locks.hold(upload_id):
            state = service.load(upload_id)
            if state.status == COMPLETED and state.file_path == str(relative):
                return None
            if remove:
                remove_final(path)
    except UploadLocked:
        return None
    return f"upload {upload_id} is {state.status}"


def _remove_orphans(
    service: UploadService,
    states: Mapping[str, SessionState],
    grace: float,
    wall_now: float,
    dry_run: bool,
    report: GcReport,
) -> None:
    for path in orphan_candidates(service, states):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        # A completion writes its file before it records it: spare young ones.
        if wall_now - stat.st_mtime < grace:
            continue
        if confirm_orphan(service, path, remove=not dry_run) is None:
            continue
        report.orphan_files_removed += 1
        report.orphan_bytes_freed += stat.st_size
        report.orphans.append(str(path.relative_to(service.settings.data_dir)))


def _expire(service: UploadService, upload_id: str) -> bool:
    """Expire one session; a busy one (a completion under way holds its lock) is left
    to a later run."""
    try:
        service.expire_upload(upload_id)
    except UploadLocked:
        return False
    return True


def collect(
    service: UploadService,
    hours: float | None = None,
    grace: float | None = None,
    dry_run: bool = False,
    wall_clock: Callable[[], float] = time.time,
) -> GcReport:
    """One gc run. ``hours`` and ``grace`` default to the settings."""
    started = time.perf_counter()
    hours = service.settings.gc_hours if hours is None else hours
    grace = service.settings.gc_grace if grace is None else grace
    report = GcReport(dry_run=dry_run, hours=hours, grace=grace)
    now = service.clock()
    expiring = expirable(service, now)
    if not dry_run:
        expiring = [upload_id for upload_id in expiring if _expire(service, upload_id)]
    report.expired = expiring
    report.sessions_expired = len(expiring)
    references = References(
        service,
        released_before=now - timedelta(hours=hours),
        ending_now=frozenset(expiring) if dry_run else frozenset(),
        ended_at=now,
    )
    references.catch_up()
    ended = {u for u, state in references.states.items() if state.status in FINAL_STATUSES}
    staging = staging_files(service, ended | set(expiring))
    report.staging_files_removed = len(staging)
    if not dry_run:
        for path in staging:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    report.sessions_released = len(references.released)
    _remove_orphans(service, references.states, grace, wall_clock(), dry_run, report)
    report.lock_files_removed = service.locks.sweep(dry_run=dry_run)
    candidates = _candidates(service.blobs, references, grace, wall_clock(), report)
    for batch in _batches(candidates, SWEEP_BATCH):
        if dry_run:
            for digest in batch:
                report.blobs_swept += 1
                report.bytes_freed += service.blobs.size(digest) or 0
                report.swept.append(digest)
            continue
        _sweep(service, references, batch, grace, wall_clock, report)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _candidates(
    blobs: BlobStore, references: References, grace: float, wall_now: float, report: GcReport
) -> list[str]:
    candidates = []
    for digest in blobs.digests():
        report.blobs_examined += 1
        if digest in references.digests:
            report.blobs_referenced += 1
            continue
        mtime = blobs.mtime(digest)  # type: ignore[attr-defined]
        if mtime is None:
            continue
        if wall_now - mtime < grace:
            report.blobs_in_grace += 1
            continue
        candidates.append(digest)
    return candidates


def _sweep(
    service: UploadService,
    references: References,
    batch: list[str],
    grace: float,
    wall_clock: Callable[[], float],
    report: GcReport,
) -> None:
    """Delete one batch under the log's write lock, after a last look at the log."""
    with service.events.write_locked():
        references.catch_up()
        wall_now = wall_clock()
        for digest in batch:
            if digest in references.digests:
                continue
            mtime = service.blobs.mtime(digest)  # type: ignore[attr-defined]
            if mtime is None or wall_now - mtime < grace:
                continue
            size = service.blobs.size(digest) or 0
            if service.blobs.delete(digest):
                report.blobs_swept += 1
                report.bytes_freed += size
                report.swept.append(digest)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
