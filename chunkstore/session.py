"""Session state: a pure fold of a session's events.

``replay(events)`` is the only way a ``SessionState`` comes to be; nothing is updated
in place. ``apply(state, event)`` is the single-step form. Internally a fold copies the
chunk map once and then applies every event of the batch to the copy, so replaying a
long stream stays linear while each state a caller holds stays unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

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
    UploadExpired,
    UploadInitiated,
    ValidationFailed,
)


class Status(StrEnum):
    """Where a session stands; the value is what answers, the log and projections say.

    active -> assembling -> completed | failed; active -> cancelled | expired;
    completed -> deleted.
    """

    NEW = "new"
    ACTIVE = "active"
    ASSEMBLING = "assembling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    #: A completed upload its owner deleted: the file is gone, the history stays.
    DELETED = "deleted"


#: Sessions that still take chunks or are being completed (they count as open).
OPEN_STATUSES = frozenset({Status.ACTIVE, Status.ASSEMBLING})
#: Statuses after which a session takes no more chunks.
FINAL_STATUSES = frozenset(
    {Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED, Status.DELETED}
)


@dataclass(frozen=True, slots=True)
class OffsetStream:
    """An upload that arrives as one byte stream at increasing offsets, which the server
    cuts into chunks itself: what tus (and the IETF resumable-upload draft) need beyond
    the chunks. Its offset is the bytes in its chunks plus ``tail``."""

    #: Bytes after the last chunk, kept durable by the tail port (``chunkstore.tails``).
    tail: int = 0
    #: The length is not known yet (tus ``Upload-Defer-Length``).
    length_deferred: bool = False
    #: The client's metadata as it sent it (tus ``Upload-Metadata``), echoed back.
    metadata: str = ""
    #: "", "partial" or "final" (tus concatenation).
    concat: str = ""
    #: A final upload's partial upload ids, in order.
    parts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionState:
    upload_id: str = ""
    version: int = 0
    status: Status = Status.NEW
    owner: str = ""
    filename: str = ""
    total_size: int = 0
    mime_type: str = ""
    file_hash: str | None = None
    chunk_size: int = 0
    total_chunks: int = 0
    mode: str = "fixed"
    created_at: datetime | None = None
    expires_at: datetime | None = None
    #: For mode "manifest": the declared (digest, size) of every index declared so far
    #: (the list may be declared in pages: ``ChunksDeclared``).
    chunk_list: tuple[tuple[str, int], ...] = ()
    #: For mode "manifest": the sum of the declared sizes.
    declared_size: int = 0
    #: For mode "manifest": digest -> every index that has it (derived from chunk_list).
    digest_indexes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    #: index -> (digest, size) of every chunk stored so far.
    chunks: Mapping[int, tuple[str, int]] = field(default_factory=dict)
    #: For mode "manifest": declared digests whose chunks are stored. Storing a digest
    #: stores every index declared with it, so this counts first indexes stored.
    digests_stored: int = 0
    #: Byte ``i`` is 1 when index ``i`` is stored (``chunks`` as a map): answers find
    #: runs of stored indexes with ``bytearray.find`` instead of sorting the indexes.
    stored_map: bytearray = field(default_factory=bytearray)
    #: Bytes of chunks that were sent for this session.
    bytes_received: int = 0
    #: Bytes of chunks this session did not need sent (the owner already had them).
    bytes_deduplicated: int = 0
    manifest: ManifestWritten | None = None
    file_path: str | None = None
    detected_mime: str | None = None
    failure_reason: str | None = None
    failure_detail: str | None = None
    cancel_reason: str | None = None
    #: An offset-stream upload's own state (mode "tus"); empty for the others.
    stream: OffsetStream = field(default_factory=lambda: OffsetStream())

    @classmethod
    def empty(cls, upload_id: str = "") -> SessionState:
        return cls(upload_id=upload_id)

    @property
    def exists(self) -> bool:
        return self.version > 0

    def is_expired(self, now: datetime) -> bool:
        if self.status == Status.EXPIRED:
            return True
        return (
            self.status in (Status.ACTIVE, Status.ASSEMBLING)
            and self.expires_at is not None
            and now >= self.expires_at
        )

    def effective_status(self, now: datetime) -> str:
        """The status as a client sees it: an active session past its TTL is expired
        even before ``gc`` records ``UploadExpired``."""
        return Status.EXPIRED if self.is_expired(now) else self.status

    @property
    def declared_chunks(self) -> int:
        """How many indexes have a declared digest and size (all but in manifest mode)."""
        return len(self.chunk_list) if self.mode == "manifest" else self.total_chunks

    def expected_size(self, index: int) -> int:
        """The exact size chunk ``index`` must have."""
        if self.mode == "manifest":
            return self.chunk_list[index][1]
        if index < self.total_chunks - 1:
            return self.chunk_size
        return self.total_size - self.chunk_size * (self.total_chunks - 1)

    def expected_digest(self, index: int) -> str | None:
        return self.chunk_list[index][0] if self.mode == "manifest" else None

    @property
    def received_count(self) -> int:
        return len(self.chunks)

    @property
    def missing_count(self) -> int:
        return self.total_chunks - len(self.chunks)

    @property
    def needed_count(self) -> int:
        """How many indexes a client must still send (see ``needed_chunks``)."""
        if self.mode != "manifest":
            return self.missing_count
        return len(self.digest_indexes) - self.digests_stored

    @property
    def missing_chunks(self) -> list[int]:
        """Every missing index; ``chunkstore.listing`` gives the bounded form answers use."""
        return [i for i in range(self.total_chunks) if i not in self.chunks]

    @property
    def needed_chunks(self) -> list[int]:
        """The indexes a client must still send: one per distinct missing digest, since
        storing one index fills every other index with the same digest."""
        if self.mode != "manifest":
            return self.missing_chunks
        seen: set[str] = set()
        needed = []
        for index in self.missing_chunks:
            if index >= len(self.chunk_list):
                break  # not declared yet, so not sendable yet
            digest = self.chunk_list[index][0]
            if digest not in seen:
                seen.add(digest)
                needed.append(index)
        return needed

    def is_needed(self, index: int) -> bool:
        """Whether a client must still send ``index``: missing and, in manifest mode,
        declared and the first index of its digest (storing a digest stores every
        index declared with it, so a digest is needed exactly when its first index is)."""
        if index in self.chunks:
            return False
        if self.mode != "manifest":
            return 0 <= index < self.total_chunks
        if not 0 <= index < len(self.chunk_list):
            return False
        return self.digest_indexes[self.chunk_list[index][0]][0] == index

    def indexes_of(self, digest: str) -> tuple[int, ...]:
        return self.digest_indexes.get(digest, ())

    @property
    def received_chunks(self) -> list[int]:
        return sorted(self.chunks)

    @property
    def progress(self) -> float:
        """Percentage of the file's bytes stored, 0-100."""
        if self.total_size == 0:
            return 100.0 if self.total_chunks == len(self.chunks) else 0.0
        covered = self.bytes_received + self.bytes_deduplicated
        return round(100.0 * covered / self.total_size, 2)

    @property
    def stream_offset(self) -> int:
        """An offset stream's offset (tus ``Upload-Offset``): bytes in its chunks plus
        its tail."""
        return self.bytes_received + self.bytes_deduplicated + self.stream.tail

    def ordered_chunks(self) -> list[tuple[str, int]]:
        """(digest, size) of every index in order; only meaningful when none is missing."""
        return [self.chunks[i] for i in range(self.total_chunks)]


class _Fold:
    """Mutable accumulator used by ``replay``; never escapes this module."""

    def __init__(self, state: SessionState) -> None:
        self.values = {name: getattr(state, name) for name in SessionState.__dataclass_fields__}
        self.chunks = dict(state.chunks)
        self.stored_map = bytearray(state.stored_map)

    def apply(self, event: Event) -> None:
        v = self.values
        v["version"] += 1
        match event:
            case UploadInitiated():
                v.update(
                    status=Status.ACTIVE,
                    owner=event.owner,
                    filename=event.filename,
                    total_size=event.total_size,
                    mime_type=event.mime_type,
                    file_hash=event.file_hash,
                    chunk_size=event.chunk_size,
                    total_chunks=event.total_chunks,
                    mode=event.mode,
                    created_at=event.created_at,
                    expires_at=event.expires_at,
                    chunk_list=tuple((digest, size) for digest, size in event.chunk_list or ()),
                )
                v["declared_size"] = sum(size for _, size in v["chunk_list"])
                v["digest_indexes"] = _digest_indexes({}, v["chunk_list"], 0)
            case ChunksDeclared(start=start, chunk_list=page):
                # Only the next page is ever recorded (start == the number declared).
                v["chunk_list"] = (*v["chunk_list"], *((digest, size) for digest, size in page))
                v["declared_size"] += sum(size for _, size in page)
                v["chunk_size"] = max([v["chunk_size"], *(size for _, size in page)])
                v["digest_indexes"] = _digest_indexes(v["digest_indexes"], page, start)
            case ChunkStored(index=index, digest=digest, size=size, reused=reused):
                # An index is stored once (decide_* never repeats one); the bytes count
                # as sent or as deduplicated depending on whether they travelled.
                if index not in self.chunks:
                    v["bytes_deduplicated" if reused else "bytes_received"] += size
                    if v["digest_indexes"].get(digest, (None,))[0] == index:
                        v["digests_stored"] += 1
                self.chunks[index] = (digest, size)
                if index >= len(self.stored_map):
                    self.stored_map.extend(bytes(index + 1 - len(self.stored_map)))
                self.stored_map[index] = 1
                if v["mode"] == "tus":
                    # A tus upload's chunks are cut from its stream, so their number
                    # grows with every one stored.
                    v["total_chunks"] = max(v["total_chunks"], index + 1)
                    v["chunk_size"] = max(v["chunk_size"], size)
            case TusUploadCreated():
                v.update(
                    status=Status.ACTIVE,
                    owner=event.owner,
                    filename=event.filename,
                    mime_type=event.mime_type,
                    total_size=event.total_size or 0,
                    mode="tus",
                    created_at=event.created_at,
                    expires_at=event.expires_at,
                    stream=OffsetStream(
                        length_deferred=event.total_size is None,
                        metadata=event.metadata,
                        concat=event.concat,
                        parts=tuple(event.parts),
                    ),
                )
            case TusLengthDeclared(total_size=total_size):
                v.update(
                    total_size=total_size,
                    stream=dataclasses.replace(v["stream"], length_deferred=False),
                )
            case TusTailStaged(size=size):
                v["stream"] = dataclasses.replace(v["stream"], tail=size)
            case ManifestWritten():
                v.update(status=Status.ASSEMBLING, manifest=event)
            case ValidationFailed(reason=reason, detail=detail):
                v.update(status=Status.FAILED, failure_reason=reason, failure_detail=detail)
            case UploadCompleted(path=path, detected_mime=mime):
                v.update(status=Status.COMPLETED, file_path=path, detected_mime=mime)
            case UploadCancelled(reason=reason):
                v.update(status=Status.CANCELLED, cancel_reason=reason)
            case UploadExpired():
                v.update(status=Status.EXPIRED)
            case UploadDeleted():
                v.update(status=Status.DELETED, file_path=None)
            case UnknownEvent():
                pass  # written by a newer version; counted, otherwise ignored

    def result(self) -> SessionState:
        return SessionState(**{**self.values, "chunks": self.chunks, "stored_map": self.stored_map})


def _digest_indexes(
    known: Mapping[str, tuple[int, ...]], page: Iterable[tuple[str, int]], start: int
) -> dict[str, tuple[int, ...]]:
    """``known`` (digest -> indexes) with the page declared at ``start`` added."""
    added: dict[str, list[int]] = {}
    for index, (digest, _) in enumerate(page, start):
        added.setdefault(digest, []).append(index)
    merged = dict(known)
    for digest, found in added.items():
        merged[digest] = (*merged.get(digest, ()), *found)
    return merged


def replay(events: Iterable[Event], state: SessionState | None = None) -> SessionState:
    """Fold ``events`` onto ``state`` (an empty session by default)."""
    fold = _Fold(state if state is not None else SessionState.empty())
    for event in events:
        fold.apply(event)
    return fold.result()


def apply(state: SessionState, event: Event) -> SessionState:
    return replay((event,), state)


def replay_steps(events: Iterable[Event]) -> Iterator[tuple[SessionState, Event]]:
    """Each event with the state just before it: what a check of a stream's own rules
    needs. The states share the fold's chunk map, which the next step extends (a copy per
    step would make a stream of n chunks cost n squared): look at each state before
    taking the next step, and keep none."""
    fold = _Fold(SessionState.empty())
    for event in events:
        yield fold.result(), event
        fold.apply(event)
