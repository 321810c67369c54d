"""Audit of a pack store: every pack read from start to end and every record re-hashed,
and the index checked against the packs both ways.

- Each registered pack's file is scanned sequentially (``scan(verify=True)``: 1 MiB
  reads, records hashed from views of the buffer), one pack at a time, and the rows
  pointing into it (``PackIndex.rows_in``, in offset order) merged with its records:
  no more than one pack's records are held at once.
- Each row must point at the start of a record with its digest and length, inside the
  pack's committed length, in a file that exists: ``blob-corrupt`` (a record whose
  bytes do not hash, or whose header was damaged), ``index-row-mismatch`` (a record of
  another blob, or none, starts there), ``blob-missing`` (the pack is gone, or shorter
  than the record), ``pack-missing``, ``pack-truncated`` (the file is shorter than its
  committed length), ``index-row-orphan`` (the row names a pack the index does not
  know).
- Each intact record no row points at is dead: a blob gc swept or a duplicate, whose
  bytes the next repack gives back (counted as ``reclaimable_bytes``, not a finding).
  If a live upload names its digest and the index has no row for it, the row was lost:
  ``index-row-missing``, which ``--repair`` puts back, pointing at that record.

Blobs of the one-file-per-chunk layout (``objects/``) not in the index yet are
re-hashed one by one, as before packs. Memory: one pack's records,
the rows that are damaged, and the intact records nothing points at (the garbage the
next repack reclaims).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import blake3

from chunkstore.audit import Finding, ProgressCallback, Summary
from chunkstore.blobs import BlobEvidence, BlobStore, PackedBlobs
from chunkstore.blobs.packfile import HEADER_SIZE, Record, decode_header
from chunkstore.blobs.packindex import IndexRow, PackInfo
from chunkstore.errors import CorruptBlob
from chunkstore.repack import RepackReport, repack_pack

#: Kinds of findings about a row whose record is not there intact.
DAMAGED_ROW_KINDS = frozenset({"blob-corrupt", "blob-missing", "index-row-mismatch"})


class Spare(NamedTuple):
    """An intact record no row points at: where it is."""

    pack: str
    offset: int
    length: int
    size: int


@dataclass
class PackAudit:
    findings: list[Finding] = field(default_factory=list)
    #: Digests whose row points at no record of theirs: as good as absent.
    unavailable: set[str] = field(default_factory=set)
    #: Intact records no row points at, by digest (the first found).
    spare: dict[str, Spare] = field(default_factory=dict)
    #: Blobs of the one-file-per-chunk layout: digest -> size.
    loose: dict[str, int] = field(default_factory=dict)


class _Scanned(NamedTuple):
    """What a scanning thread found in one pack."""

    info: PackInfo
    #: None: the pack's file does not exist.
    file_size: int | None
    records: dict[int, Record]
    #: Where the records the scan could read end, and what stopped it there.
    end: int
    problem: str | None


class BlobSizes:
    """Digest -> size of every blob the store can give back (intact or not), looked up
    as asked rather than held: the index, less the rows whose records are gone, plus
    the loose blobs."""

    def __init__(self, packs: PackedBlobs, checked: PackAudit) -> None:
        self.packs = packs
        self.checked = checked
        self._rows: dict[str, IndexRow] = {}

    def prefetch(self, digests: Iterable[str]) -> None:
        """Look these digests up in one go (one upload's chunks: a query per few hundred
        rather than one each); forgets the previous ones."""
        self._rows = self.packs.index.lookup_many(digests)

    def get(self, digest: str) -> int | None:
        if digest in self.checked.loose:
            return self.checked.loose[digest]
        if digest in self.checked.unavailable:
            return None
        row = self._rows.get(digest) or self.packs.index.lookup(digest)
        return row.size if row is not None else None

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, str) and self.get(digest) is not None


def check_packs(
    packs: PackedBlobs,
    blobs: BlobStore,
    summary: Summary,
    progress: ProgressCallback | None = None,
    total_bytes: int = 0,
) -> PackAudit:
    """Every pack against the index and the index against every pack (see the module)."""
    checked = PackAudit()
    infos = packs.index.packs()
    # One pack after another in this thread: measured on 2 cores, scanning threads
    # beside the merge lost more to the GIL than they gained (0.5 against 0.7 GB/s).
    for info in infos:
        _merge(packs, _scan(packs, info), checked, summary)
        if progress is not None:
            progress(summary.bytes_hashed, total_bytes)
    _check_rows_and_loose(packs, blobs, {info.name for info in infos}, checked, summary)
    return checked


def _scan(packs: PackedBlobs, info: PackInfo) -> _Scanned:
    try:
        scan = packs.scan(info.name, verify=True)
    except FileNotFoundError:
        return _Scanned(info, None, {}, 0, None)
    try:
        records = {record.offset: record for record in scan}
    finally:
        scan.close()
    return _Scanned(info, scan.file_size, records, scan.end, scan.problem)


def _merge(packs: PackedBlobs, scanned: _Scanned, checked: PackAudit, summary: Summary) -> None:
    info = scanned.info
    if scanned.file_size is None:
        _missing_pack(packs, info, checked)
        return
    summary.packs += 1
    summary.pack_bytes += scanned.file_size
    if scanned.file_size < info.committed and not info.retired:
        checked.findings.append(
            Finding(
                "pack-truncated",
                info.name,
                f"{scanned.file_size} bytes; the index counts on {info.committed}",
            )
        )
    records = scanned.records
    for row in packs.index.rows_in(info.name):
        record = records.pop(row.offset, None)
        if record is None and row.offset >= scanned.end:
            record = _read_record(packs, row)  # past where the scan could go
        _check_row(row, record, scanned, checked, summary)
    for record in records.values():
        summary.reclaimable_bytes += HEADER_SIZE + record.length
        summary.blob_bytes += record.length
        if record.intact:
            checked.spare.setdefault(
                record.digest, Spare(info.name, record.offset, record.length, record.size)
            )


def _missing_pack(packs: PackedBlobs, info: PackInfo, checked: PackAudit) -> None:
    rows = list(packs.index.rows_in(info.name))  # the rows of one pack
    current = packs.index.pack(info.name)
    if current is None or (current.retired and not rows):
        return  # removed by a repack meanwhile
    checked.findings.append(
        Finding("pack-missing", info.name, f"the file is gone; {len(rows)} index rows point in")
    )
    for row in rows:
        checked.unavailable.add(row.digest)
        checked.findings.append(Finding("blob-missing", row.digest, f"pack {row.pack} is gone"))


def _read_record(packs: PackedBlobs, row: IndexRow) -> Record | None:
    """The record at a row's offset read on its own (a scan stops at the first damaged
    header; the records after it are still checked, one by one)."""
    try:
        with open(packs.pack_path(row.pack), "rb") as pack:
            pack.seek(row.offset)
            header = pack.read(HEADER_SIZE)
            found = decode_header(header, row.offset)
            if not isinstance(found, Record):
                return None
            hasher = blake3.blake3()
            remaining = found.length
            while remaining and (piece := pack.read(min(remaining, 8 * 1024 * 1024))):
                hasher.update(piece)
                remaining -= len(piece)
    except FileNotFoundError:
        return None
    if remaining:
        return None
    intact = hasher.hexdigest() == found.digest
    return Record(row.offset, found.digest, found.length, found.size, found.flags, intact)


def _check_row(
    row: IndexRow,
    record: Record | None,
    scanned: _Scanned,
    checked: PackAudit,
    summary: Summary,
) -> None:
    if (
        record is not None
        and record.intact
        and record.digest == row.digest
        and record.length == row.length
    ):
        summary.blobs += 1
        summary.blob_bytes += record.length
        return
    where = f"pack {row.pack} at {row.offset}"
    assert scanned.file_size is not None
    if record is None:
        if row.offset + row.record_bytes > scanned.file_size:
            checked.unavailable.add(row.digest)
            checked.findings.append(
                Finding("blob-missing", row.digest, f"{where}: past the pack's end")
            )
        elif row.offset >= scanned.end:
            # A damaged header: the bytes are there, they no longer say what they are.
            summary.blobs += 1
            checked.findings.append(
                Finding("blob-corrupt", row.digest, f"{where}: the record header is damaged")
            )
        else:
            checked.unavailable.add(row.digest)
            checked.findings.append(
                Finding("index-row-mismatch", row.digest, f"{where}: no record starts there")
            )
        return
    if (record.digest, record.length) != (row.digest, row.length):
        checked.unavailable.add(row.digest)
        checked.findings.append(
            Finding(
                "index-row-mismatch",
                row.digest,
                f"{where}: the record there is {record.digest} ({record.length} bytes)",
            )
        )
        return
    summary.blobs += 1
    summary.blob_bytes += record.length
    if not record.intact:
        checked.findings.append(
            Finding("blob-corrupt", row.digest, f"{where}: the bytes do not hash to it")
        )


def _check_rows_and_loose(
    packs: PackedBlobs,
    blobs: BlobStore,
    known_packs: set[str],
    checked: PackAudit,
    summary: Summary,
) -> None:
    """One sorted merge of the index (digest order) with every digest the store lists:
    rows into packs the index does not know, and the loose blobs (re-hashed)."""
    rows = packs.index.scan()
    row = next(rows, None)
    for digest in blobs.digests():
        while row is not None and row.digest < digest:
            row = next(rows, None)
        if row is not None and row.digest == digest:
            if row.pack not in known_packs:
                checked.unavailable.add(digest)
                checked.findings.append(
                    Finding("index-row-orphan", digest, f"points into unknown pack {row.pack}")
                )
            continue
        _check_loose(blobs, digest, checked, summary)


def _check_loose(blobs: BlobStore, digest: str, checked: PackAudit, summary: Summary) -> None:
    hasher = blake3.blake3()
    size = 0
    try:
        with blobs.open(digest) as blob:
            while piece := blob.read(8 * 1024 * 1024):
                hasher.update(piece)
                size += len(piece)
    except CorruptBlob:
        return  # gone meanwhile (gc, or a migration into packs)
    checked.loose[digest] = size
    summary.blobs += 1
    summary.blob_bytes += size
    if hasher.hexdigest() != digest:
        actual = hasher.hexdigest()
        checked.findings.append(Finding("blob-corrupt", digest, f"bytes hash to {actual}"))


# -- repair ------------------------------------------------------------------------------


def relocate(
    blobs: BlobStore,
    evidence: BlobEvidence | None,
    packs: PackedBlobs,
    relocations: Mapping[str, tuple[str, int, int, int]],
    aside: str,
    actions: list[str],
) -> set[str]:
    """Point each lost or damaged blob's row at an intact record of it that no row
    pointed at (the damaged bytes are set aside first, as evidence). A record in a pack
    a repack retired, or past its committed length, is copied into a new one instead.
    The digests done."""
    done = set()
    for digest, (pack, offset, length, size) in sorted(relocations.items()):
        info = packs.index.pack(pack)
        current = packs.index.lookup(digest)
        if current is not None:
            if evidence is None:
                continue  # a damaged blob that cannot be set aside keeps its row
            evidence.set_aside(digest, f"{aside}/blobs")
        if (
            info is not None
            and info.sealed
            and not info.retired
            and offset + HEADER_SIZE + length <= info.committed
        ):
            row = IndexRow(digest, pack, offset, length, size, 0, time.time())
            packs.index.add([row], {})
            actions.append(f"pointed the index row of blob {digest} at its record in {pack}")
        elif _copy_record(blobs, packs, digest, pack, offset, length):
            actions.append(f"restored blob {digest} from its record in {pack}")
        else:
            continue
        done.add(digest)
    return done


def _copy_record(
    blobs: BlobStore, packs: PackedBlobs, digest: str, pack: str, offset: int, length: int
) -> bool:
    writer = blobs.writer()
    try:
        with open(packs.pack_path(pack), "rb") as source:
            source.seek(offset + HEADER_SIZE)
            remaining = length
            while remaining and (piece := source.read(min(remaining, 8 * 1024 * 1024))):
                writer.write(piece)
                remaining -= len(piece)
    except FileNotFoundError:
        writer.abort()
        return False
    if writer.digest() != digest or writer.size != length:
        writer.abort()
        return False
    blobs.commit_many([writer])
    return True


def tidy_damaged_packs(packs: PackedBlobs, findings: list[Finding], actions: list[str]) -> None:
    """Once their blobs are restored: forget a missing pack no row points into any more,
    and rewrite a truncated pack (its intact records copied, the file removed once no row
    points into it)."""
    for finding in findings:
        info = packs.index.pack(finding.subject)
        if info is None:
            continue
        if finding.kind == "pack-missing":
            left = sum(1 for _ in packs.index.rows_in(info.name))
            if left:
                actions.append(f"kept missing pack {info.name}: {left} rows still point in")
                continue
            packs.index.forget(info.name)
            actions.append(f"forgot missing pack {info.name}: no row points into it now")
        elif finding.kind == "pack-truncated":
            rewritten = RepackReport()
            repack_pack(packs, info, rewritten)
            actions.append(
                f"rewrote truncated pack {info.name}: {rewritten.records_copied} records"
                f" copied, {rewritten.records_damaged} left (no intact copy)"
            )
