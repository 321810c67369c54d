"""Repacking: give back the space of dead records in sealed packs.

gc's sweep deletes a blob by removing its index row; its record stays in its pack as
dead bytes. A sealed pack whose dead share (``1 - live / committed``) reaches a
threshold (``CHUNKSTORE_REPACK_DEAD``, 0.2) is rewritten:

1. its live records are read, re-hashed and appended to this process's active pack
   (``PackedBlobs.append_durably``: written and fdatasynced before anything points at
   them); a record that does not hash to its digest is not copied (audit names it);
2. one short index transaction (``PackIndex.move``) points the rows at their new place
   and marks the old pack retired;
3. the old pack's file is unlinked, the packs directory fsynced, the pack forgotten.

Killed at any point, nothing is lost: before the move the old rows are untouched and
the copies are dead bytes; after it, the old pack is only retired, and the next start-up
of a store (``PackBlobStore.recover``) or the next run removes retired packs' files
(``repack_plan`` picks them). A reader that looked a record up before the move and opens
the pack after its removal looks again and finds the new place (``PackBlobStore.open``);
one that already had the pack open keeps reading it (an unlinked file's bytes stay until
its last descriptor closes).

No lock is held against uploads while bytes are copied: appends interleave with the
copy batch by batch, and the switch is one transaction of the database. Each pack is
moved under the store's ``packs`` lock (``PACKS_LOCK``), which ``audit --repair`` holds
for its whole run, as it points index rows into packs and rewrites damaged ones: a
repair never points a row at a record of a pack a repack is moving away. A pack whose
lock is busy is left for the next run (``packs_busy``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping

import blake3
import msgspec

from chunkstore.blobs import Chunk, PackedBlobs
from chunkstore.blobs.packfile import HEADER_SIZE, Record, decode_header
from chunkstore.blobs.packindex import IndexRow, PackInfo, merge_committed
from chunkstore.durable import fsync_directory
from chunkstore.errors import UploadLocked
from chunkstore.locks import Locker
from chunkstore.pacing import Pace, no_pause

MiB = 1024 * 1024
#: Bytes of live records copied per ``append_durably`` (one fdatasync each): the most a
#: repack holds in memory, and the longest an upload's append waits behind it.
REPACK_BATCH_BYTES = 8 * MiB
#: The dead share at which a pack is repacked, unless told otherwise.
DEFAULT_DEAD_SHARE = 0.2
#: The lock a repack holds while it moves a pack, and a repair while it touches packs.
PACKS_LOCK = "packs"


class RepackReport(msgspec.Struct, kw_only=True):
    #: Packs whose live records were copied elsewhere and whose files were removed.
    packs_repacked: int = 0
    #: Packs removed with nothing to copy (every record dead, or retired by a run that
    #: was cut short).
    packs_removed: int = 0
    records_copied: int = 0
    bytes_copied: int = 0
    #: Disk bytes freed: the removed packs' sizes less the bytes copied into new packs.
    bytes_reclaimed: int = 0
    #: Live records that did not hash to their digests: not copied, their packs kept.
    records_damaged: int = 0
    #: Packs left for the next run: a repair held the packs lock.
    packs_busy: int = 0
    damaged: list[str] = msgspec.field(default_factory=list)


def dead_share(committed: int, live: int) -> float:
    """The share of a pack's committed bytes no index row points to."""
    return 1.0 - live / committed if committed > 0 else 0.0


def repack_plan(
    packs: Iterable[PackInfo], live: Mapping[str, int], threshold: float
) -> list[PackInfo]:
    """The packs a run rewrites or removes: sealed ones at least ``threshold`` dead, and
    retired ones (a run moved their rows, and may have died before removing them)."""
    return [
        info
        for info in packs
        if info.retired
        or (
            info.sealed
            and info.committed > 0
            and dead_share(info.committed, live.get(info.name, 0)) >= threshold
        )
    ]


def repack(
    packed: PackedBlobs,
    threshold: float,
    dry_run: bool = False,
    pace: Pace = no_pause,
    locks: Locker | None = None,
    wait: float = 0.0,
) -> RepackReport:
    """One repack run over every pack (see the module's docstring); ``pace`` is called
    between packs and batches (``chunkstore.pacing``). Each pack is moved holding
    ``PACKS_LOCK`` in ``locks``, waited for up to ``wait`` seconds."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError("the dead share that triggers a repack must be above 0 and at most 1")
    report = RepackReport()
    live = packed.index.live_bytes()
    for info in repack_plan(packed.index.packs(), live, threshold):
        if dry_run:
            report.packs_repacked += 1
            report.bytes_reclaimed += max(info.committed - live.get(info.name, 0), 0)
            continue
        with contextlib.ExitStack() as held:
            if locks is not None:
                try:
                    held.enter_context(locks.hold(PACKS_LOCK, wait))
                except UploadLocked:
                    report.packs_busy += 1
                    continue
            repack_pack(packed, info, report, pace)
        pace()
    return report


def repack_pack(
    packed: PackedBlobs, info: PackInfo, report: RepackReport, pace: Pace = no_pause
) -> None:
    """Copy ``info``'s live records into this process's active pack, switch the rows,
    remove the old pack."""
    rows = list(packed.index.rows_in(info.name))  # bounded by one pack's records
    if not rows:
        if not info.retired:
            packed.index.move([], info.name, {})  # retired first: nothing may point here
        if _remove_pack(packed, info.name, report):
            report.packs_removed += 1
        return
    try:
        fd = os.open(packed.pack_path(info.name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # rows point into a pack that is gone: audit names it
    moved: list[IndexRow] = []
    committed: dict[str, int] = {}
    try:
        for batch in _verified_batches(fd, rows, report):
            appended = packed.append_durably(batch)
            moved.extend(appended.rows)
            committed = merge_committed(committed, appended.committed)
            report.records_copied += len(batch)
            report.bytes_copied += sum(HEADER_SIZE + chunk.size for chunk in batch)
            report.bytes_reclaimed -= sum(HEADER_SIZE + chunk.size for chunk in batch)
            pace()
    finally:
        os.close(fd)
    if moved or not info.retired:
        packed.index.move(moved, info.name, committed)
    if _remove_pack(packed, info.name, report):
        report.packs_repacked += 1


def _verified_batches(fd: int, rows: list[IndexRow], report: RepackReport) -> Iterator[list[Chunk]]:
    """The rows' records read from the pack ``fd``, re-hashed, in batches of about
    ``REPACK_BATCH_BYTES``; a record that is not intact is counted and left out."""
    batch: list[Chunk] = []
    size = 0
    for row in rows:
        payload = _intact_payload(fd, row)
        if payload is None:
            report.records_damaged += 1
            report.damaged.append(row.digest)
            continue
        batch.append(Chunk(row.digest, row.size, [payload], row.created_at))
        size += len(payload)
        if size >= REPACK_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _intact_payload(fd: int, row: IndexRow) -> bytes | None:
    """The payload of ``row``'s record if its header agrees with the row and its bytes
    hash to the digest; None otherwise."""
    data = os.pread(fd, row.record_bytes, row.offset)
    found = decode_header(data[:HEADER_SIZE], row.offset)
    if not isinstance(found, Record) or (found.digest, found.length) != (row.digest, row.length):
        return None
    if found.flags or len(data) != row.record_bytes:
        return None
    payload = data[HEADER_SIZE:]
    return payload if blake3.blake3(payload).hexdigest() == row.digest else None


def _remove_pack(packed: PackedBlobs, name: str, report: RepackReport) -> bool:
    """Unlink a retired pack's file and forget it, if no row points into it any more
    (one whose record was damaged keeps it, for audit); whether it went."""
    if next(iter(packed.index.rows_in(name)), None) is not None:
        return False
    path = packed.pack_path(name)
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        size = 0  # removed by another process's run, or by a run cut short
    fsync_directory(packed.pack_path(name).parent)
    with contextlib.suppress(ValueError):
        packed.index.forget(name)
    report.bytes_reclaimed += size
    return True
