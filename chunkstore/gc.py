"""Garbage collection: expire sessions past their TTL, sweep unreferenced blobs, then
move loose blobs into packs and repack packs whose dead share passed the threshold.

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
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import datetime, timedelta

import msgspec

from chunkstore.application import UploadService
from chunkstore.blobs import BlobAgeing, BlobStore
from chunkstore.errors import CorruptBlob, UploadLocked
from chunkstore.eventlog import SweepGuard
from chunkstore.files import FileEntry, upload_of
from chunkstore.pacing import Pace, no_pause
from chunkstore.reading import load_manifest
from chunkstore.repack import repack
from chunkstore.session import FINAL_STATUSES, SessionState, Status, replay

#: Blobs deleted per write-lock hold: small, so appends wait only milliseconds.
SWEEP_BATCH = 256
_LIVE_STATUSES = frozenset({Status.ACTIVE, Status.ASSEMBLING, Status.COMPLETED})


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
    #: Blobs of the one-file-per-chunk layout moved into packs.
    loose_migrated: int = 0
    #: Packs rewritten without their dead records, packs removed with nothing left to
    #: copy, and the disk bytes that freed (``chunkstore.repack``).
    packs_repacked: int = 0
    packs_removed: int = 0
    bytes_reclaimed: int = 0
    #: Live records a repack found damaged: left in place for audit.
    records_damaged: int = 0
    #: Packs left for the next run: ``audit --repair`` held the packs lock.
    packs_busy: int = 0
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
    Sessions are taken one at a time: each one with new events is folded from its own
    stream, its references are added and its state is dropped. What the run needs of
    it later is kept apart, and small: whether it ended, and a completed one's file.
    Holding every session's state and every pending event instead cost 3-4 KiB an
    upload (10,000 small uploads: +29 MiB).
    """

    def __init__(
        self,
        service: UploadService,
        released_before: datetime,
        ending_now: frozenset[str] = frozenset(),
        ended_at: datetime | None = None,
        pace: Pace = no_pause,
    ) -> None:
        self.service = service
        self.pace = pace
        self.released_before = released_before
        #: Sessions a dry run would expire: counted as ended at ``ended_at``.
        self.ending_now = ending_now
        self.ended_at = ended_at
        self.position = 0
        self.digests: set[str] = set()
        self.released: set[str] = set()
        #: Sessions in a final status (cancelled, failed, expired, completed, deleted).
        self.ended: set[str] = set()
        #: upload id -> final file of every completed session.
        self.files: dict[str, str] = {}

    def catch_up(self) -> None:
        touched: dict[str, None] = {}
        for recorded in self.service.store.log.read_all(self.position):
            touched[recorded.stream_id] = None
            self.position = recorded.position
            self.pace()
        for stream_id in touched:
            self._take(stream_id)
            self.pace()

    def _take(self, stream_id: str) -> None:
        """Fold one session from its stream (it may hold events past ``position``; they
        are looked at again next time, which adds nothing new) and take what it names."""
        recorded = self.service.store.log.read(stream_id)
        if not recorded:
            return
        state = replay((item.event for item in recorded), SessionState.empty(stream_id))
        self._add(state, recorded[-1].recorded_at)
        if state.status in FINAL_STATUSES:
            self.ended.add(stream_id)
        if state.status == Status.COMPLETED and state.file_path is not None:
            self.files[stream_id] = state.file_path
        else:
            self.files.pop(stream_id, None)

    def _add(self, state: SessionState, last_recorded: datetime) -> None:
        if self._keeps(state, last_recorded):
            self.released.discard(state.upload_id)
            self.digests.update(digest for _, digest, _ in state.stored_items())
            if state.manifest is not None:
                self.digests.add(state.manifest.manifest_digest)
                if state.status == Status.COMPLETED:
                    self.digests.update(self._manifest_chunks(state.manifest.manifest_digest))
        else:
            # An ended session takes no more chunks, so nothing it names is in flight.
            self.released.add(state.upload_id)

    def _keeps(self, state: SessionState, last_recorded: datetime) -> bool:
        if state.status == Status.DELETED:
            # Its owner asked for the bytes to go: released at once, not after ``hours``.
            return False
        if state.upload_id in self.ending_now and self.ended_at is not None:
            return self.ended_at > self.released_before
        if state.status not in FINAL_STATUSES or state.status in _LIVE_STATUSES:
            return True
        return last_recorded > self.released_before

    def _manifest_chunks(self, digest: str) -> Iterator[str]:
        with contextlib.suppress(CorruptBlob):
            yield from (
                chunk for chunk, _ in load_manifest(self.service.store.blobs, digest).chunks
            )


def expirable(service: UploadService, now: datetime, pace: Pace = no_pause) -> list[str]:
    """Sessions still open in the log but past their TTL."""
    found = []
    for row in service.store.index.session_rows():
        pace()
        if row["status"] in (Status.ACTIVE, Status.ASSEMBLING):
            state = service.load(row["upload_id"])
            if state.status in (Status.ACTIVE, Status.ASSEMBLING) and state.is_expired(now):
                found.append(state.upload_id)
    return found


def leftovers(service: UploadService, upload_ids: Iterable[str]) -> dict[str, int]:
    """Upload id -> how many things belong to it, of these (ended) sessions, and to
    nothing else: half-assembled final files (parts) and offset-stream tails."""
    ended = set(upload_ids)
    found: dict[str, int] = {}
    for owners in (service.store.files.parts(), service.store.tails.uploads()):
        for upload_id, count in owners.items():
            if upload_id in ended:
                found[upload_id] = found.get(upload_id, 0) + count
    return found


def _discard_leftovers(service: UploadService, upload_ids: Iterable[str]) -> None:
    for upload_id in upload_ids:
        service.store.files.discard_parts(upload_id)
        service.store.tails.discard(upload_id)


def unowned_files(service: UploadService, owned: Collection[str]) -> list[FileEntry]:
    """Final files not in ``owned`` (the files of completed uploads)."""
    return [entry for entry in service.store.files.scan() if entry.location not in owned]


def confirm_orphan(service: UploadService, location: str, remove: bool = False) -> str | None:
    """Why the file at ``location`` is an orphan (no completed upload owns it), or None if
    it is not one after all. Checked against the log under the upload's lock, so that a
    completion publishing it right now is never mistaken for a leftover (a busy upload:
    None); ``remove`` removes it under that lock too."""
    upload_id = upload_of(location)
    state = service.load(upload_id) if upload_id else SessionState.empty()
    if not state.exists:
        if remove:
            service.store.files.remove(location)
        return f"no upload {upload_id[:40]!r}" if upload_id else "outside any upload's directory"
    try:
        with service.store.locks.hold(upload_id):
            state = service.load(upload_id)
            if state.status == Status.COMPLETED and state.file_path == location:
                return None
            if remove:
                service.store.files.remove(location)
    except UploadLocked:
        return None
    return f"upload {upload_id} is {state.status}"


def _remove_orphans(
    service: UploadService,
    owned: Collection[str],
    grace: float,
    wall_now: float,
    dry_run: bool,
    report: GcReport,
    pace: Pace = no_pause,
) -> None:
    for entry in unowned_files(service, owned):
        pace()
        # A completion writes its file before it records it: spare young ones.
        if wall_now - entry.mtime < grace:
            continue
        if confirm_orphan(service, entry.location, remove=not dry_run) is None:
            continue
        report.orphan_files_removed += 1
        report.orphan_bytes_freed += entry.size
        report.orphans.append(entry.location)


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
    repack_dead: float | None = None,
    pace: Pace = no_pause,
) -> GcReport:
    """One gc run. ``hours``, ``grace`` and ``repack_dead`` default to the settings.
    ``pace`` is called between small steps (``chunkstore.pacing``): a server's
    background gc rests there so that requests get the GIL."""
    started = time.perf_counter()
    hours = service.settings.gc_hours if hours is None else hours
    grace = service.settings.gc_grace if grace is None else grace
    repack_dead = service.settings.repack_dead if repack_dead is None else repack_dead
    report = GcReport(dry_run=dry_run, hours=hours, grace=grace)
    now = service.clock()
    expiring = expirable(service, now, pace)
    if not dry_run:
        expiring = [upload_id for upload_id in expiring if _expire(service, upload_id)]
    report.expired = expiring
    report.sessions_expired = len(expiring)
    references = References(
        service,
        released_before=now - timedelta(hours=hours),
        ending_now=frozenset(expiring) if dry_run else frozenset(),
        ended_at=now,
        pace=pace,
    )
    references.catch_up()
    found = leftovers(service, references.ended | set(expiring))
    report.staging_files_removed = sum(found.values())
    if not dry_run:
        _discard_leftovers(service, found)
    report.sessions_released = len(references.released)
    owned = set(references.files.values())
    _remove_orphans(service, owned, grace, wall_clock(), dry_run, report, pace)
    report.lock_files_removed = service.store.locks.sweep(dry_run=dry_run)
    _sweep_unreferenced(service, references, grace, dry_run, wall_clock, report)
    _pack_loose_and_repack(service, repack_dead, dry_run, report, pace)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _sweep_unreferenced(
    service: UploadService,
    references: References,
    grace: float,
    dry_run: bool,
    wall_clock: Callable[[], float],
    report: GcReport,
) -> None:
    blobs, ageing, guard = service.store.blobs, service.store.blob_ageing, service.store.sweep_guard
    if ageing is None or guard is None:
        # Without blob ages nothing tells an unreferenced blob from one a request just
        # wrote, and without the log's write lock an append could race a deletion.
        return
    candidates = _candidates(blobs, ageing, references, grace, wall_clock(), report)
    for batch in _batches(candidates, SWEEP_BATCH):
        references.pace()
        if dry_run:
            for digest in batch:
                report.blobs_swept += 1
                report.bytes_freed += blobs.size(digest) or 0
                report.swept.append(digest)
            continue
        _sweep(service, guard, ageing, references, batch, grace, wall_clock, report)


def _pack_loose_and_repack(
    service: UploadService, threshold: float, dry_run: bool, report: GcReport, pace: Pace
) -> None:
    """Move loose blobs (the one-file-per-chunk layout) into packs, then give back the
    space swept blobs left in packs (``chunkstore.repack``). Neither holds the log's
    write lock: a blob keeps its index row throughout, only its place changes."""
    store = service.store
    if store.blob_migration is not None and not dry_run:
        report.loose_migrated = store.blob_migration.migrate_loose().moved
    if store.packs is None:
        return
    repacked = repack(store.packs, threshold, dry_run, pace, store.locks)
    report.packs_repacked = repacked.packs_repacked
    report.packs_removed = repacked.packs_removed
    report.bytes_reclaimed = repacked.bytes_reclaimed
    report.records_damaged = repacked.records_damaged
    report.packs_busy = repacked.packs_busy


def _candidates(
    blobs: BlobStore,
    ageing: BlobAgeing,
    references: References,
    grace: float,
    wall_now: float,
    report: GcReport,
) -> list[str]:
    candidates = []
    for digest in blobs.digests():
        references.pace()
        report.blobs_examined += 1
        if digest in references.digests:
            report.blobs_referenced += 1
            continue
        mtime = ageing.mtime(digest)
        if mtime is None:
            continue
        if wall_now - mtime < grace:
            report.blobs_in_grace += 1
            continue
        candidates.append(digest)
    return candidates


def _sweep(
    service: UploadService,
    guard: SweepGuard,
    ageing: BlobAgeing,
    references: References,
    batch: list[str],
    grace: float,
    wall_clock: Callable[[], float],
    report: GcReport,
) -> None:
    """Delete one batch under the log's write lock, after a last look at the log."""
    with guard.write_locked():
        references.catch_up()
        wall_now = wall_clock()
        for digest in batch:
            if digest in references.digests:
                continue
            mtime = ageing.mtime(digest)
            if mtime is None or wall_now - mtime < grace:
                continue
            size = service.store.blobs.size(digest) or 0
            if service.store.blobs.delete(digest):
                report.blobs_swept += 1
                report.bytes_freed += size
                report.swept.append(digest)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
