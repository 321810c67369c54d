"""Audit: check a whole store against itself, trusting nothing (like ``restic check
--read-data``), and repair what the evidence allows.

What is checked, and against what:
- every stream must keep its session's own rules (``stream_findings``: chunk indexes in
  range, chunk sizes and declared digests right, no bytes past the declared size, no
  index stored twice with other bytes, nothing after a final status but what may follow
  it), whichever writer appended its events;
- every stream is replayed; the ``sessions`` and ``owner_chunks`` projections must equal
  what the events say (``session_row`` is the one definition of a row);
- every blob is re-read and must hash to its name;
- every chunk a live session (active, assembling, completed) or its manifest names must
  exist with the size it was recorded with (an ended session's chunks are gc's to sweep);
- every manifest must hash to its name, decode, and agree with its ``ManifestWritten``;
- every completed upload's final file must exist and hash to its manifest's BLAKE3;
- every file under ``files/`` must be a completed upload's final file (``file-orphan``
  otherwise: gc removes those once they are older than its grace period).

Repair never deletes evidence: projections are rebuilt from the events (which are never
touched); a damaged final file or blob is moved into ``quarantine/`` before a good copy
takes its place; a final file is re-materialized from its chunks; a missing manifest is
re-encoded from the events when that reproduces its digest; a missing or damaged chunk
is restored only when an intact final file holds its bytes. A chunk whose bytes exist
nowhere else stays reported.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Container, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

import blake3
import msgspec

from chunkstore.application import UploadService
from chunkstore.chunktable import pack
from chunkstore.errors import ConcurrencyConflict, CorruptBlob, UploadLocked
from chunkstore.eventlog import EventLog, RecordedEvent
from chunkstore.events import (
    ChunksDeclared,
    ChunkStored,
    Event,
    ManifestWritten,
    TusLengthDeclared,
    TusTailStaged,
    TusUploadCreated,
    UnknownEvent,
    UploadCancelled,
    UploadCompleted,
    UploadDeleted,
    UploadInitiated,
    event_type,
)
from chunkstore.files import is_materialized
from chunkstore.gc import confirm_orphan, unowned_files
from chunkstore.manifest import Manifest, assemble
from chunkstore.projections import OwnerChunk, SessionRow, session_row
from chunkstore.reading import load_manifest
from chunkstore.repack import PACKS_LOCK
from chunkstore.session import FINAL_STATUSES, SessionState, Status, replay, replay_visiting

READ_SIZE = 1024 * 1024
#: Blobs per task handed to a hashing thread, threads, and tasks queued at once.
_HASH_BATCH = 256
_HASH_THREADS = 4
_IN_FLIGHT = 8
_REBUILD_ATTEMPTS = 20

#: (bytes done, bytes in total) as the blobs and files are re-hashed.
ProgressCallback = Callable[[int, int], None]

#: Sessions whose chunks (and manifest, and final file) must all be there.
LIVE_STATUSES = frozenset({Status.ACTIVE, Status.ASSEMBLING, Status.COMPLETED})

PROJECTION_KINDS = frozenset(
    {
        "projection-missing",
        "projection-mismatch",
        "projection-orphan",
        "owner-chunks-missing",
        "owner-chunks-extra",
    }
)


class Finding(msgspec.Struct, frozen=True):
    #: Stable name of what is wrong, e.g. "blob-corrupt", "file-missing".
    kind: str
    #: The upload id or blob digest it is about.
    subject: str
    detail: str


class Summary(msgspec.Struct, kw_only=True):
    streams: int = 0
    events: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    manifests: int = 0
    files: int = 0
    file_bytes: int = 0
    #: Pack files read, their bytes, and the bytes of records no index row points at
    #: (swept blobs, duplicates: what the next repack gives back).
    packs: int = 0
    pack_bytes: int = 0
    reclaimable_bytes: int = 0
    seconds: float = 0.0

    @property
    def bytes_hashed(self) -> int:
        return self.blob_bytes + self.file_bytes


class AuditReport(msgspec.Struct, kw_only=True):
    findings: list[Finding]
    summary: Summary
    #: What ``--repair`` did (empty without it).
    repairs: list[str] = msgspec.field(default_factory=list)
    #: Digest -> (pack, offset, length, size) of an intact record no row points at, for
    #: each blob whose row is lost or damaged: where ``--repair`` points its row.
    relocations: dict[str, tuple[str, int, int, int]] = msgspec.field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.findings


class Survey(msgspec.Struct, kw_only=True):
    """What the later checks need of the events, taken one stream at a time (a few
    dozen bytes per upload, where holding every session's folded state cost 3-4 KiB)."""

    #: The log's position the audit reads up to: later events are the next audit's.
    position: int
    streams: int = 0
    events: int = 0
    #: Upload ids of the sessions whose chunks, manifest and file must all be there, in
    #: id order: each one's state is folded again from its stream when it is checked.
    live: list[str] = msgspec.field(default_factory=list)
    #: Final files of completed uploads (every other file under ``files/`` is an orphan).
    owned_files: set[str] = msgspec.field(default_factory=set)
    #: Bytes of the final files the audit will re-hash (for the progress bar).
    file_bytes: int = 0

    def take(self, state: SessionState, events: int) -> None:
        self.streams += 1
        self.events += events
        if state.status in LIVE_STATUSES:
            self.live.append(state.upload_id)
        if state.status == Status.COMPLETED and state.file_path is not None:
            self.owned_files.add(state.file_path)
            if state.manifest is not None and is_materialized(state.file_path):
                self.file_bytes += state.manifest.size


# -- a stream's own rules -------------------------------------------------------------

#: What may still follow a final status: deleting a completed upload, cancelling a
#: failed or expired one (which records that the owner gave up on it).
_AFTER_END: dict[str, tuple[type[Event], ...]] = {
    Status.COMPLETED: (UploadDeleted,),
    Status.FAILED: (UploadCancelled,),
    Status.EXPIRED: (UploadCancelled,),
}
_CREATIONS = (UploadInitiated, TusUploadCreated)


def stream_findings(stream_id: str, events: Iterable[Event]) -> list[Finding]:
    """Every event of one stream that breaks the rules its session set for itself,
    whatever wrote it: the checks the commands make before appending, made again on
    what was appended. Pure. Events of types this version does not know are skipped."""
    return checked_replay(stream_id, events)[0]


def checked_replay(stream_id: str, events: Iterable[Event]) -> tuple[list[Finding], SessionState]:
    """``stream_findings`` and the stream's folded state, in one fold."""
    findings = []
    number = 0

    def check(state: SessionState, event: Event) -> None:
        nonlocal number
        number += 1
        if isinstance(event, UnknownEvent):
            return
        broken = _broken_rule(state, event)
        if broken is not None:
            kind, why = broken
            where = f"event {number} ({event_type(event)})"
            findings.append(Finding(kind, stream_id, f"{where}: {why}"))

    state = replay_visiting(events, check, SessionState.empty(stream_id))
    return findings, state


def _broken_rule(state: SessionState, event: Event) -> tuple[str, str] | None:
    """(finding kind, why) for an event its session's state does not allow, else None."""
    if isinstance(event, _CREATIONS):
        return ("stream-start", "the upload was already created") if state.exists else None
    if not state.exists:
        return "stream-start", "the stream does not begin with the upload's creation"
    if state.status in FINAL_STATUSES:
        if isinstance(event, _AFTER_END.get(state.status, ())):
            return None
        return "event-after-end", f"the upload was already {state.status}"
    match event:
        case ChunkStored():
            return _broken_chunk_rule(state, event)
        case ChunksDeclared():
            return _broken_page_rule(state, event)
        case TusTailStaged(size=size):
            if state.mode != "tus":
                return "event-out-of-order", "a tus tail in an upload that is not a tus one"
            return _past_size(state, state.stream_offset - state.stream.tail + size)
        case TusLengthDeclared(total_size=total_size):
            if state.mode != "tus" or not state.stream.length_deferred:
                return "event-out-of-order", "a length declared for an upload that had one"
            if total_size < state.stream_offset:
                return "bytes-past-size", f"{state.stream_offset} bytes are past {total_size}"
        case ManifestWritten():
            if state.status != Status.ACTIVE:
                return "event-out-of-order", f"a manifest written while {state.status}"
            if _missing(state):
                return "event-out-of-order", "a manifest written while chunks were missing"
        case UploadCompleted():
            if state.status != Status.ASSEMBLING:
                return "event-out-of-order", "completed without a manifest"
        case UploadDeleted():
            return "event-out-of-order", f"deleted while {state.status}, not completed"
    return None


def _broken_chunk_rule(state: SessionState, event: ChunkStored) -> tuple[str, str] | None:
    index, digest, size = event.index, event.digest, event.size
    if state.status != Status.ACTIVE:
        return "event-out-of-order", f"chunk {index} stored while {state.status}"
    if state.mode == "tus":
        # Cut from the stream in order: each new chunk is the next index.
        if index != state.total_chunks:
            return (
                "chunk-index-out-of-range",
                f"tus chunk {index} where the next is {state.total_chunks}",
            )
        if size <= 0:
            return "chunk-wrong-size", f"tus chunk {index} of {size} bytes"
        return _past_size(state, state.stream_offset - state.stream.tail + size)
    if not 0 <= index < state.total_chunks:
        return (
            "chunk-index-out-of-range",
            f"chunk {index} of an upload of {state.total_chunks} chunks",
        )
    if size != state.expected_size(index):
        return (
            "chunk-wrong-size",
            f"chunk {index} of {size} bytes, not {state.expected_size(index)}",
        )
    expected = state.expected_digest(index)
    if expected is not None and digest != expected:
        return "chunk-digest-mismatch", f"chunk {index} is {digest}, declared {expected}"
    stored = state.chunk(index)
    if stored is not None and stored[0] != digest:
        return "chunk-conflict", f"chunk {index} stored again with other bytes"
    return None


def _broken_page_rule(state: SessionState, event: ChunksDeclared) -> tuple[str, str] | None:
    """A page of the chunk list: the next one, of a manifest-mode upload, within what
    its init allowed (``total_chunks``, or ``total_size`` for an open list)."""
    if state.status != Status.ACTIVE or state.mode != "manifest":
        return "event-out-of-order", f"chunks declared in a {state.mode} upload, {state.status}"
    if event.start != state.declared_chunks:
        return (
            "event-out-of-order",
            f"a page at chunk {event.start} where the next is {state.declared_chunks}",
        )
    end = event.start + len(event.chunk_list)
    size = state.declared_size + sum(size for _, size in event.chunk_list)
    if size > state.total_size:
        return "bytes-past-size", f"chunks declared up to {size} bytes, {state.total_size} declared"
    if not state.chunk_list_open and end > state.total_chunks:
        return (
            "chunk-index-out-of-range",
            f"chunks declared up to {end - 1} of an upload of {state.total_chunks} chunks",
        )
    return None


def _past_size(state: SessionState, recorded: int) -> tuple[str, str] | None:
    """A tus upload's recorded bytes (chunks and staged tail) past its declared length."""
    if not state.stream.length_deferred and recorded > state.total_size:
        return "bytes-past-size", f"{recorded} bytes recorded, {state.total_size} declared"
    return None


def _missing(state: SessionState) -> bool:
    if state.mode == "tus":
        return state.stream.length_deferred or state.stream_offset != state.total_size
    return state.chunk_list_pending or state.received_count != state.total_chunks


# -- reading the events ---------------------------------------------------------------


def replay_streams(
    log: EventLog, position: int
) -> Iterator[tuple[list[RecordedEvent], SessionState]]:
    """Each stream's events up to ``position`` and its folded state, one at a time."""
    for recorded in log.read_streams(position):
        stream_id = recorded[0].stream_id
        yield recorded, replay((item.event for item in recorded), SessionState.empty(stream_id))


def load_state(log: EventLog, upload_id: str, position: int | None = None) -> SessionState:
    """One session folded from its own stream (up to ``position``, if given)."""
    events = (
        item.event for item in log.read(upload_id) if position is None or item.position <= position
    )
    return replay(events, SessionState.empty(upload_id))


def survey_streams(service: UploadService) -> tuple[Survey, list[Finding]]:
    """Every stream of the log read, checked and folded one at a time: version gaps,
    each stream's own rules, and the projections against the events. Findings come in
    the order a fold of the whole log in position order gave them."""
    log, index = service.store.log, service.store.index
    survey = Survey(position=log.last_position())
    gaps: list[tuple[int, Finding]] = []
    broken: list[tuple[int, list[Finding]]] = []
    projections = _ProjectionCheck(index.session_rows())
    owner_chunks = _OwnerChunks()
    for recorded in log.read_streams(survey.position):
        stream_id = recorded[0].stream_id
        gaps.extend(_gaps(recorded))
        found, state = checked_replay(stream_id, (item.event for item in recorded))
        if found:
            broken.append((min(item.position for item in recorded), found))
        projections.check(state)
        owner_chunks.add(state.owner, (item.event for item in recorded))
        survey.take(state, len(recorded))
    findings = [finding for _, finding in sorted(gaps, key=lambda gap: gap[0])]
    for _, found in sorted(broken, key=lambda item: item[0]):
        findings.extend(found)
    findings.extend(projections.finish())
    findings.extend(owner_chunks.check(index.owner_chunk_rows()))
    return survey, findings


def _gaps(recorded: list[RecordedEvent]) -> Iterator[tuple[int, Finding]]:
    """(position, finding) for each event whose version does not follow the last one."""
    for number, item in enumerate(recorded, start=1):
        if item.version != number:
            detail = f"version {item.version} follows version {number - 1}"
            yield item.position, Finding("stream-gap", item.stream_id, detail)


# -- checks ---------------------------------------------------------------------------


class _ProjectionCheck:
    """The ``sessions`` rows against the events: the rows (in upload id order) merged
    with the streams (in the same order) as they come."""

    def __init__(self, rows: Iterator[SessionRow]) -> None:
        self._rows = rows
        self._row = next(rows, None)
        self.findings: list[Finding] = []
        self._orphans: list[str] = []

    def _skip_to(self, upload_id: str | None) -> SessionRow | None:
        """Rows before ``upload_id`` (all, for None) are orphans; its own row, if any."""
        while self._row is not None and (upload_id is None or self._row["upload_id"] < upload_id):
            self._orphans.append(self._row["upload_id"])
            self._row = next(self._rows, None)
        if self._row is None or self._row["upload_id"] != upload_id:
            return None
        row, self._row = self._row, next(self._rows, None)
        return row

    def check(self, state: SessionState) -> None:
        upload_id = state.upload_id
        actual = self._skip_to(upload_id)
        if actual is None:
            self.findings.append(Finding("projection-missing", upload_id, "no sessions row"))
            return
        differences = [
            f"{column}: row {actual[column]!r}, events {value!r}"
            for column, value in session_row(state).items()
            if actual.get(column) != value
        ]
        if differences:
            self.findings.append(Finding("projection-mismatch", upload_id, "; ".join(differences)))

    def finish(self) -> list[Finding]:
        self._skip_to(None)
        orphans = [
            Finding("projection-orphan", upload_id, "sessions row without events")
            for upload_id in self._orphans
        ]
        return [*self.findings, *orphans]


class _OwnerChunks:
    """The ``owner_chunks`` rows the events call for, each held as a short bytes key
    (owner number, raw digest, size: ~75 bytes where a tuple of strings took ~250)."""

    def __init__(self) -> None:
        self._owners: dict[str, int] = {}
        self._keys: set[bytes] = set()

    def _key(self, owner: int, digest: str, size: int) -> bytes:
        raw = pack(digest)
        head = owner.to_bytes(4, "big")
        if raw is not None:
            return head + b"\x00" + raw + str(size).encode()
        return head + b"\x01" + digest.encode() + b"\x00" + str(size).encode()

    def _chunk(self, key: bytes) -> OwnerChunk:
        owner = list(self._owners)[int.from_bytes(key[:4], "big")]
        if key[4] == 0:
            return owner, key[5:37].hex(), int(key[37:])
        digest, _, size = key[5:].rpartition(b"\x00")
        return owner, digest.decode(), int(size)

    def add(self, owner: str, events: Iterable[Event]) -> None:
        number = self._owners.setdefault(owner, len(self._owners))
        for event in events:
            if isinstance(event, ChunkStored):
                self._keys.add(self._key(number, event.digest, event.size))

    def check(self, rows: Iterable[OwnerChunk]) -> list[Finding]:
        """Findings for rows the events do not call for, and the other way round. Used
        up: the keys found are dropped as the rows go by."""
        extra = []
        for owner, digest, size in rows:
            number = self._owners.get(owner)
            key = None if number is None else self._key(number, digest, size)
            if key is not None and key in self._keys:
                self._keys.discard(key)
            else:
                extra.append((owner, digest, size))
        missing = sorted(self._chunk(key) for key in self._keys)
        findings = [
            Finding("owner-chunks-missing", digest, f"owner {owner!r} stored it ({size} bytes)")
            for owner, digest, size in missing
        ]
        findings.extend(
            Finding("owner-chunks-extra", digest, f"owner {owner!r} ({size} bytes) per no event")
            for owner, digest, size in sorted(extra)
        )
        return findings


def _hash_blob(service: UploadService, digest: str) -> tuple[int, str]:
    """(size, BLAKE3 hex) of a blob as the store gives it back."""
    hasher = blake3.blake3()
    size = 0
    with service.store.blobs.open(digest) as blob:
        while piece := blob.read(READ_SIZE):
            hasher.update(piece)
            size += len(piece)
    return size, hasher.hexdigest()


def _hash_batch(service: UploadService, batch: list[str]) -> list[tuple[str, int, str]]:
    """(digest, size, actual BLAKE3) of each blob; size -1 for one that vanished."""
    results = []
    for digest in batch:
        try:
            results.append((digest, *_hash_blob(service, digest)))
        except CorruptBlob:
            results.append((digest, -1, ""))  # swept between listing and reading
    return results


def _entry_batches(service: UploadService) -> Iterator[list[str]]:
    batch: list[str] = []
    for entry in service.store.blobs.digests():
        batch.append(entry)
        if len(batch) == _HASH_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def check_blobs(
    service: UploadService,
    summary: Summary,
    progress: ProgressCallback | None,
    total_bytes: int,
) -> tuple[list[Finding], dict[str, int]]:
    """Re-hash every blob; returns findings and the size of every blob that is there.

    With small chunks the cost is the per-file open and read, not the hashing. A few
    threads, each taking a batch of blobs (a hand-off per blob cost more than it
    saved), keep several reads in flight: that is what helps when the blobs are not
    in the page cache.
    """
    findings = []
    sizes: dict[str, int] = {}
    with ThreadPoolExecutor(_HASH_THREADS, thread_name_prefix="audit") as pool:
        batches = _entry_batches(service)
        pending = [pool.submit(_hash_batch, service, b) for b in _take(batches, _IN_FLIGHT)]
        while pending:
            results = pending.pop(0).result()
            pending.extend(pool.submit(_hash_batch, service, b) for b in _take(batches, 1))
            for digest, size, actual in results:
                if size < 0:
                    continue
                sizes[digest] = size
                summary.blobs += 1
                summary.blob_bytes += size
                if actual != digest:
                    findings.append(Finding("blob-corrupt", digest, f"bytes hash to {actual}"))
            if progress is not None:
                progress(summary.blob_bytes, total_bytes)
    return findings, sizes


def _take(batches: Iterator[list[str]], count: int) -> list[list[str]]:
    taken = []
    for batch in batches:
        taken.append(batch)
        if len(taken) == count:
            break
    return taken


class Sizes(Protocol):
    """Digest -> size of every blob the store holds (a dict, or looked up as asked)."""

    def get(self, digest: str) -> int | None: ...

    def __contains__(self, digest: object) -> bool: ...


def check_chunks(
    upload_id: str,
    chunks: Iterable[tuple[int, str, int]],
    sizes: Sizes,
    unindexed: Container[str] = (),
) -> list[Finding]:
    """Each (index, digest, size) named by a session or manifest exists with that size.
    ``unindexed``: digests of intact records in packs that no index row points at."""
    findings = []
    for index, digest, size in chunks:
        actual = sizes.get(digest)
        if actual is None and digest in unindexed:
            findings.append(
                Finding(
                    "index-row-missing",
                    upload_id,
                    f"chunk {index}: blob {digest} is intact in a pack, without an index row",
                )
            )
        elif actual is None:
            findings.append(Finding("chunk-missing", upload_id, f"chunk {index}: blob {digest}"))
        elif actual != size:
            findings.append(
                Finding(
                    "chunk-size-mismatch",
                    upload_id,
                    f"chunk {index}: blob {digest} has {actual} bytes, recorded {size}",
                )
            )
    return findings


def check_manifest(
    service: UploadService, state: SessionState, sizes: Sizes, unindexed: Container[str] = ()
) -> tuple[list[Finding], Manifest | None]:
    """The manifest object of a session that wrote one, against its event and chunks."""
    assert state.manifest is not None
    digest = state.manifest.manifest_digest
    upload_id = state.upload_id
    if digest not in sizes and digest in unindexed:
        detail = f"manifest blob {digest} is intact in a pack, without an index row"
        return [Finding("index-row-missing", upload_id, detail)], None
    if digest not in sizes:
        return [Finding("manifest-missing", upload_id, f"manifest blob {digest}")], None
    try:
        manifest = load_manifest(service.store.blobs, digest)
    except CorruptBlob as error:
        return [Finding("manifest-corrupt", upload_id, error.detail)], None
    findings = []
    recorded = (state.manifest.size, state.manifest.blake3, state.manifest.sha256)
    if (manifest.size, manifest.blake3, manifest.sha256) != recorded:
        findings.append(
            Finding("manifest-mismatch", upload_id, "size or hashes differ from ManifestWritten")
        )
    if (
        state.received_count == state.total_chunks
        and [tuple(chunk) for chunk in manifest.chunks] != state.ordered_chunks()
    ):
        findings.append(
            Finding("manifest-mismatch", upload_id, "chunk list differs from ChunkStored events")
        )
    if sum(size for _, size in manifest.chunks) != manifest.size:
        findings.append(
            Finding("manifest-mismatch", upload_id, "chunk sizes do not add up to the size")
        )
    chunks = ((index, d, s) for index, (d, s) in enumerate(manifest.chunks))
    findings.extend(check_chunks(upload_id, chunks, sizes, unindexed))
    return findings, manifest


def check_file(
    service: UploadService,
    state: SessionState,
    summary: Summary,
    progress: ProgressCallback | None,
    total_bytes: int,
) -> list[Finding]:
    """A completed upload's final file: present, the right size, the right BLAKE3."""
    assert state.manifest is not None and state.file_path is not None
    files = service.store.files
    upload_id = state.upload_id
    size = files.size(state.file_path)
    if size is None:
        return [Finding("file-missing", upload_id, f"{state.file_path} is gone")]
    summary.files += 1
    if size != state.manifest.size:
        return [
            Finding(
                "file-size-mismatch",
                upload_id,
                f"{state.file_path} has {size} bytes, the manifest says {state.manifest.size}",
            )
        ]
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with files.open(state.file_path) as source:
        while piece := source.read(8 * READ_SIZE):
            hasher.update(piece)
            summary.file_bytes += len(piece)
            if progress is not None:
                progress(summary.bytes_hashed, total_bytes)
    if hasher.hexdigest() != state.manifest.blake3:
        return [
            Finding("file-corrupt", upload_id, f"{state.file_path} does not match its manifest")
        ]
    return []


def check_orphan_files(service: UploadService, owned: Collection[str]) -> list[Finding]:
    """Files under ``files/`` that no completed upload owns (a cancelled upload's file, a
    deleted upload's file that outlived its deletion, a stray)."""
    findings = []
    for entry in unowned_files(service, owned):
        why = confirm_orphan(service, entry.location)
        if why is not None:
            findings.append(Finding("file-orphan", entry.location, why))
    return findings


def _total_bytes(service: UploadService, survey: Survey) -> int:
    """Bytes the audit will read (for the progress bar): blobs plus final files."""
    total = survey.file_bytes
    for digest in service.store.blobs.digests():
        total += service.store.blobs.size(digest) or 0
    return total


def audit(service: UploadService, progress: ProgressCallback | None = None) -> AuditReport:
    """Check everything; a finding per problem, in a stable order."""
    from chunkstore.packaudit import BlobSizes, check_packs  # it builds on this module

    started = time.perf_counter()
    survey, findings = survey_streams(service)
    summary = Summary(streams=survey.streams, events=survey.events)
    total_bytes = _total_bytes(service, survey) if progress is not None else 0
    sizes: Sizes
    spare: dict[str, tuple[str, int, int, int]] = {}
    packs = service.store.packs
    if packs is None:
        blob_findings, sizes = check_blobs(service, summary, progress, total_bytes)
        findings.extend(blob_findings)
    else:
        checked = check_packs(packs, service.store.blobs, summary, progress, total_bytes)
        findings.extend(checked.findings)
        sizes = BlobSizes(packs, checked)
        spare = {
            digest: (place.pack, place.offset, place.length, place.size)
            for digest, place in checked.spare.items()
        }
    for upload_id in survey.live:
        # Folded again, one at a time, rather than held from the survey.
        state = load_state(service.store.log, upload_id, survey.position)
        if packs is not None:
            assert isinstance(sizes, BlobSizes)
            sizes.prefetch(digest for _, digest, _ in state.stored_items())
        manifest = None
        if state.manifest is not None:
            summary.manifests += 1
            manifest_findings, manifest = check_manifest(service, state, sizes, spare)
            findings.extend(manifest_findings)
        if manifest is None:
            chunks = state.stored_items()
            findings.extend(check_chunks(upload_id, chunks, sizes, spare))
        if state.status == Status.COMPLETED and is_materialized(state.file_path or ""):
            findings.extend(check_file(service, state, summary, progress, total_bytes))
    findings.extend(check_orphan_files(service, survey.owned_files))
    summary.seconds = round(time.perf_counter() - started, 3)
    wanted = {_blob_of(finding) for finding in findings if finding.kind in _RELOCATABLE}
    relocations = {digest: spare[digest] for digest in sorted(wanted) if digest in spare}
    return AuditReport(findings=findings, summary=summary, relocations=relocations)


#: Findings about a blob whose stored bytes are damaged or gone (repair restores it).
_DAMAGED_BLOB_KINDS = frozenset({"blob-corrupt", "blob-missing", "index-row-mismatch"})
#: Findings about a blob whose row is lost or points at no intact record of it.
_RELOCATABLE = frozenset(
    {"blob-corrupt", "blob-missing", "index-row-mismatch", "index-row-missing"}
)


def _blob_of(finding: Finding) -> str:
    """The digest a blob finding is about (its subject, or named in its detail)."""
    if finding.kind == "index-row-missing":
        return finding.detail.split("blob ", 1)[1].split(" ", 1)[0]
    return finding.subject


# -- repair ---------------------------------------------------------------------------


def quarantine_name() -> str:
    """Where repair keeps damaged files and blobs: evidence is moved, never deleted."""
    return f"quarantine/{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def rebuild_projections(service: UploadService) -> None:
    """Rebuild ``sessions`` and ``owner_chunks`` from the events, retrying if appends
    land meanwhile (the rows must reflect the log as of the moment they replace). The
    rows are made one stream at a time as the backend stores them."""
    log = service.store.log
    for _ in range(_REBUILD_ATTEMPTS):
        position = log.last_position()
        rows = (session_row(state) for _, state in replay_streams(log, position))
        try:
            service.store.index.rebuild(rows, _owner_chunk_rows(log, position), position)
            return
        except ConcurrencyConflict:
            continue
    raise ConcurrencyConflict("the log kept moving; run the repair again when it is quieter")


def _owner_chunk_rows(log: EventLog, position: int) -> Iterator[OwnerChunk]:
    """(owner, digest, size) of every chunk stored, as the events say (repeats too)."""
    for recorded, state in replay_streams(log, position):
        for item in recorded:
            if isinstance(item.event, ChunkStored):
                yield state.owner, item.event.digest, item.event.size


def restore_manifest(service: UploadService, state: SessionState, aside: str = "") -> bool:
    """Re-encode a lost manifest from the events; kept only if it reproduces the digest.
    A stored manifest that is not there intact (its pack is gone or cut short) is set
    aside into ``aside`` first, so the new copy can take its name."""
    assert state.manifest is not None
    manifest = Manifest(
        upload_id=state.upload_id,
        filename=state.filename,
        size=state.manifest.size,
        blake3=state.manifest.blake3,
        sha256=state.manifest.sha256,
        chunks=state.ordered_chunks(),
    )
    data = manifest.encode()
    digest = state.manifest.manifest_digest
    if blake3.blake3(data).hexdigest() != digest:
        return False
    blobs, evidence = service.store.blobs, service.store.blob_evidence
    if blobs.exists(digest):
        if evidence is None or not aside:
            return False
        evidence.set_aside(digest, f"{aside}/blobs")
    blobs.put(data)
    return True


def restore_chunk(
    service: UploadService, digest: str, source: str, offset: int, size: int, aside: str
) -> bool:
    """Rebuild a chunk blob from the bytes an intact final file holds at ``offset``."""
    blobs, evidence = service.store.blobs, service.store.blob_evidence
    if blobs.exists(digest) and evidence is None:
        return False  # a damaged blob that cannot be set aside keeps its name
    writer = blobs.writer()
    try:
        with service.store.files.open(source) as file:
            file.seek(offset)
            remaining = size
            while remaining > 0 and (piece := file.read(min(READ_SIZE, remaining))):
                writer.write(piece)
                remaining -= len(piece)
        if writer.size != size or writer.digest() != digest:
            writer.abort()
            return False
        if evidence is not None and blobs.exists(digest):
            evidence.set_aside(digest, f"{aside}/blobs")
        blobs.commit_many([writer])
        return True
    except BaseException:
        writer.abort()
        raise


def rematerialize(service: UploadService, state: SessionState, aside: str) -> str | None:
    """Rebuild a final file from its chunks; None when done, else why it could not be."""
    assert state.manifest is not None and state.file_path is not None
    files = service.store.files
    try:
        manifest = load_manifest(service.store.blobs, state.manifest.manifest_digest)
    except CorruptBlob as error:
        return error.detail
    part = files.writer(state.upload_id, state.filename)
    try:
        assembled = assemble(service.store.blobs, manifest.chunks, part)
        if (assembled.blake3, assembled.sha256) != (manifest.blake3, manifest.sha256):
            return "the chunks no longer assemble into the recorded file"
        files.quarantine(state.file_path, f"{aside}/files")
        part.commit()
        return None
    except CorruptBlob as error:
        return error.detail
    finally:
        part.abort()


def _chunk_sources(
    service: UploadService, bad_files: set[str], wanted: set[str]
) -> dict[str, tuple[str, int, int]]:
    """digest -> (intact final file, offset, size) for each ``wanted`` chunk that a good
    file holds (the streams read one at a time; only the wanted digests are kept)."""
    sources: dict[str, tuple[str, int, int]] = {}
    if not wanted:
        return sources
    log = service.store.log
    for _, state in replay_streams(log, log.last_position()):
        if state.status != Status.COMPLETED or state.upload_id in bad_files:
            continue
        if state.manifest is None or state.file_path is None:
            continue
        if not is_materialized(state.file_path) or state.received_count != state.total_chunks:
            continue
        offset = 0
        for digest, size in state.iter_ordered():
            if digest in wanted:
                sources.setdefault(digest, (state.file_path, offset, size))
            offset += size
    return sources


def repair(service: UploadService, report: AuditReport) -> list[str]:
    """Fix what the findings allow; returns one line per action taken or refused.

    On a pack store the whole repair holds the store's packs lock (``PACKS_LOCK``), as a
    repack does while it moves a pack: a row is never pointed at a record of a pack a
    repack is moving away, nor a pack rewritten by both. A repack that holds it longer
    than ``lock_wait`` makes the repair refuse, changing nothing."""
    with contextlib.ExitStack() as held:
        if service.store.packs is not None:
            wait = service.settings.lock_wait
            try:
                held.enter_context(service.store.locks.hold(PACKS_LOCK, wait))
            except UploadLocked:
                raise UploadLocked(
                    f"a repack is moving packs (it holds the store's {PACKS_LOCK!r} lock);"
                    f" the repair waited {wait:g} s and changed nothing: run it again"
                    " once the repack is done"
                ) from None
        return _repair(service, report)


def _repair(service: UploadService, report: AuditReport) -> list[str]:
    actions: list[str] = []
    aside = quarantine_name()
    rebuild_projections(service)
    actions.append("rebuilt the sessions and owner_chunks projections from the events")
    file_kinds = {"file-missing", "file-size-mismatch", "file-corrupt"}
    bad_files = {f.subject for f in report.findings if f.kind in file_kinds}
    bad_blobs = {f.subject for f in report.findings if f.kind in _DAMAGED_BLOB_KINDS}
    missing = {
        f.detail.rsplit("blob ", 1)[-1] for f in report.findings if f.kind == "chunk-missing"
    }
    packs = service.store.packs
    if packs is not None and report.relocations:
        from chunkstore.packaudit import relocate

        store_ = service.store
        relocated = relocate(
            store_.blobs, store_.blob_evidence, packs, report.relocations, aside, actions
        )
        bad_blobs -= relocated
        missing -= relocated
    sources = _chunk_sources(service, bad_files, bad_blobs | missing)
    for digest in sorted(bad_blobs | missing):
        source = sources.get(digest)
        if source is not None and restore_chunk(service, digest, *source, aside):
            actions.append(f"restored blob {digest} from {source[0].rsplit('/', 1)[-1]}")
        else:
            actions.append(f"cannot restore blob {digest}: its bytes exist nowhere else")
    for finding in report.findings:
        if finding.kind == "manifest-missing":
            state = load_state(service.store.log, finding.subject)
            done = restore_manifest(service, state, aside)
            actions.append(
                f"{'restored' if done else 'cannot restore'} the manifest of {finding.subject}"
            )
    if packs is not None:
        from chunkstore.packaudit import tidy_damaged_packs

        tidy_damaged_packs(packs, report.findings, actions)
    for upload_id in sorted(bad_files):
        why = rematerialize(service, load_state(service.store.log, upload_id), aside)
        if why is None:
            actions.append(f"re-materialized the final file of {upload_id}")
        else:
            actions.append(f"cannot re-materialize {upload_id}: {why}")
    return actions


def audit_and_repair(
    service: UploadService, progress: ProgressCallback | None = None
) -> tuple[AuditReport, AuditReport]:
    """Audit, repair, audit again: (before, after); ``after.repairs`` says what was done."""
    before = audit(service, progress)
    actions = repair(service, before)
    after = audit(service, progress)
    after.repairs = actions
    return before, after


def report_dict(report: AuditReport) -> dict[str, Any]:
    return {
        "clean": report.clean,
        "findings": msgspec.to_builtins(report.findings),
        "summary": {
            **msgspec.to_builtins(report.summary),
            "bytes_hashed": report.summary.bytes_hashed,
        },
        "repairs": report.repairs,
    }
