"""Session state: a pure fold of a session's events.

``replay(events)`` is the only way a ``SessionState`` comes to be; nothing is updated
in place. ``apply(state, event)`` is the single-step form. A session's chunks are held
compactly in copy-on-write pages (``chunkstore.chunktable``): a fold copies only the
pages its events write to, so appending to a long session costs what the new events
touch, replaying a long stream stays linear, and each state a caller holds stays
unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import overload

from chunkstore.chunktable import ChunkList, StoredChunks, key_of, pack
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


_NO_DECLARED = ChunkList()
_NOTHING_STORED = StoredChunks()


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
    #: (the list may be declared in pages: ``ChunksDeclared``), which index of each
    #: digest comes first, and which digests repeat.
    declared: ChunkList = field(default_factory=lambda: _NO_DECLARED)
    #: For mode "manifest": the sum of the declared sizes.
    declared_size: int = 0
    #: For mode "manifest": the number of chunks was left open at init, so
    #: ``total_chunks`` counts the chunks declared so far (see ``chunk_list_pending``).
    chunk_list_open: bool = False
    #: (digest, size) of every index stored so far (``chunk``, ``stored_items``), and
    #: its presence map, in which answers find runs of stored indexes.
    stored: StoredChunks = field(default_factory=lambda: _NOTHING_STORED)
    #: For mode "manifest": declared digests whose chunks are stored. Storing a digest
    #: stores every index declared with it, so this counts first indexes stored.
    digests_stored: int = 0
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

    def __eq__(self, other: object) -> bool:
        """Field by field; the stored chunks by what they hold, whatever their layout."""
        if not isinstance(other, SessionState):
            return NotImplemented
        return all(
            getattr(self, name) == getattr(other, name)
            for name in SessionState.__dataclass_fields__
            if name != "stored"
        ) and self.stored.equal(other.stored, self.declared, other.declared)

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
    def chunk_list_pending(self) -> bool:
        """More pages of an open chunk list are still to come: the declared sizes do not
        add up to ``total_size`` yet."""
        return self.chunk_list_open and self.declared_size < self.total_size

    @property
    def declared_chunks(self) -> int:
        """How many indexes have a declared digest and size (all but in manifest mode)."""
        return self.declared.count if self.mode == "manifest" else self.total_chunks

    def expected_size(self, index: int) -> int:
        """The exact size chunk ``index`` must have."""
        if self.mode == "manifest":
            return self.declared.size(index)
        if index < self.total_chunks - 1:
            return self.chunk_size
        return self.total_size - self.chunk_size * (self.total_chunks - 1)

    def expected_digest(self, index: int) -> str | None:
        return self.declared.digest(index) if self.mode == "manifest" else None

    def declared_page(self, start: int, end: int) -> list[tuple[str, int]]:
        """(digest, size) declared at indexes ``start`` to ``end - 1`` (those declared)."""
        return list(self.declared.slice(start, end))

    def chunk(self, index: int) -> tuple[str, int] | None:
        """(digest, size) stored at ``index``, None while it is not stored."""
        return self.stored.get(index, self.declared)

    def has_chunk(self, index: int) -> bool:
        return index in self.stored

    def stored_items(self) -> Iterator[tuple[int, str, int]]:
        """(index, digest, size) of every stored chunk, by index."""
        return self.stored.items(self.declared)

    def stored_runs(self, start: int = 0) -> Iterator[tuple[int, int]]:
        """Runs of consecutive stored indexes below ``total_chunks``, from ``start`` on,
        as (first, last): a few for a whole large session, found without per-index work."""
        return self.stored.runs(start, self.total_chunks)

    @property
    def received_count(self) -> int:
        return self.stored.count

    @property
    def missing_count(self) -> int:
        return self.total_chunks - self.stored.count

    @property
    def needed_count(self) -> int:
        """How many indexes a client must still send (see ``needed_chunks``)."""
        if self.mode != "manifest":
            return self.missing_count
        return self.declared.unique - self.digests_stored

    @property
    def missing_chunks(self) -> list[int]:
        """Every missing index; ``chunkstore.listing`` gives the bounded form answers use."""
        return [i for i in range(self.total_chunks) if i not in self.stored]

    @property
    def needed_chunks(self) -> list[int]:
        """The indexes a client must still send: one per distinct missing digest, since
        storing one index fills every other index with the same digest."""
        if self.mode != "manifest":
            return self.missing_chunks
        seen: set[bytes | str] = set()
        needed = []
        for index in self.missing_chunks:
            if index >= self.declared.count:
                break  # not declared yet, so not sendable yet
            key = key_of(self.declared.digest(index))
            if key not in seen:
                seen.add(key)
                needed.append(index)
        return needed

    def is_needed(self, index: int) -> bool:
        """Whether a client must still send ``index``: missing and, in manifest mode,
        declared and the first index of its digest (storing a digest stores every
        index declared with it, so a digest is needed exactly when its first index is)."""
        if index in self.stored:
            return False
        if self.mode != "manifest":
            return 0 <= index < self.total_chunks
        return self.declared.is_first(index)

    def first_index(self, digest: str) -> int | None:
        """The first index declared with ``digest`` (manifest mode), None if none is."""
        return self.declared.first_index(digest)

    def indexes_of(self, digest: str) -> tuple[int, ...]:
        """Every index declared with ``digest`` (manifest mode), in order."""
        return self.declared.indexes_of(digest)

    @property
    def received_chunks(self) -> list[int]:
        return [i for first, last in self.stored.runs(None) for i in range(first, last + 1)]

    @property
    def progress(self) -> float:
        """Percentage of the file's bytes stored, 0-100."""
        if self.total_size == 0:
            return 100.0 if self.total_chunks == self.stored.count else 0.0
        covered = self.bytes_received + self.bytes_deduplicated
        return round(100.0 * covered / self.total_size, 2)

    @property
    def stream_offset(self) -> int:
        """An offset stream's offset (tus ``Upload-Offset``): bytes in its chunks plus
        its tail."""
        return self.bytes_received + self.bytes_deduplicated + self.stream.tail

    def ordered_chunks(self) -> list[tuple[str, int]]:
        """(digest, size) of every index in order; KeyError when one is missing."""
        return list(self.iter_ordered())

    def ordered_view(self) -> OrderedChunks:
        """``ordered_chunks`` as a view of the chunk table (see ``OrderedChunks``);
        KeyError when an index is missing."""
        return OrderedChunks(self)

    def iter_ordered(self) -> Iterator[tuple[str, int]]:
        """``ordered_chunks`` one at a time, without the list."""
        expected = 0
        for index, digest, size in self.stored.items(self.declared, 0):
            if index >= self.total_chunks:
                break
            if index != expected:
                raise KeyError(expected)
            yield digest, size
            expected += 1
        if expected < self.total_chunks:
            raise KeyError(expected)


class OrderedChunks(Sequence[tuple[str, int]]):
    """(digest, size) of every chunk of a session with all its chunks stored, in file
    order, read from the session's chunk table as they are asked for. Completion walks
    a file's chunks several times (copy, check, manifest); a list of them cost ~200
    bytes a chunk (13 MiB for a 4 GiB content-defined upload), this view nothing."""

    __slots__ = ("_declared", "_length", "_stored")

    def __init__(self, state: SessionState) -> None:
        expected = 0
        for first, last in state.stored.runs(0, state.total_chunks):
            if first != expected:
                break
            expected = last + 1
        if expected < state.total_chunks:
            raise KeyError(expected)
        self._stored, self._declared = state.stored, state.declared
        self._length = state.total_chunks

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> tuple[str, int]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[str, int]]: ...

    def __getitem__(self, index: int | slice) -> tuple[str, int] | list[tuple[str, int]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        found = self._stored.get(index, self._declared)
        assert found is not None  # every index below the length is stored
        return found

    def __iter__(self) -> Iterator[tuple[str, int]]:
        for index, digest, size in self._stored.items(self._declared, 0):
            if index >= self._length:
                return
            yield digest, size


class _Fold:
    """Mutable accumulator used by ``replay``; never escapes this module."""

    def __init__(self, state: SessionState) -> None:
        self.values = {name: getattr(state, name) for name in SessionState.__dataclass_fields__}
        self.declared = state.declared.builder()
        self.stored = state.stored.builder()

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
                    chunk_list_open=event.chunk_list_open,
                )
                self._declare_anew(event.chunk_list or ())
            case ChunksDeclared(chunk_list=page):
                # Only the next page is ever recorded (its start is the number declared:
                # audit reports a page that starts elsewhere), so it goes at the end.
                added, largest = self.declared.extend(page)
                v["declared_size"] += added
                if v["chunk_list_open"]:
                    v["total_chunks"] = self.declared.view().count
                if largest is not None:
                    v["chunk_size"] = max(v["chunk_size"], largest)
            case ChunkStored(index=index, digest=digest, size=size, reused=reused):
                # An index is stored once (decide_* never repeats one); the bytes count
                # as sent or as deduplicated depending on whether they travelled.
                declared, raw = self.declared.view(), pack(digest)
                as_declared = declared.holds(index, digest, size, raw)
                if self.stored.put(index, digest, size, raw, as_declared):
                    v["bytes_deduplicated" if reused else "bytes_received"] += size
                    if declared.is_first(index) and (
                        as_declared or declared.has_digest(index, digest, raw)
                    ):
                        v["digests_stored"] += 1
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

    def _declare_anew(self, chunk_list: Iterable[tuple[str, int]]) -> None:
        """Start the declared list over (``UploadInitiated``). Chunks stored as declared
        get their own records first: a second ``UploadInitiated``, which no writer of
        chunkstore records, must not change what was stored."""
        if self.stored.view().count and self.declared.view().count:
            self.stored.keep_apart_from(self.declared.view())
        self.declared = ChunkList().builder()
        self.values["declared_size"], _ = self.declared.extend(chunk_list)

    def result(self, final: bool = True) -> SessionState:
        """The state so far. ``final``: the fold ends here, so its tables are frozen;
        otherwise the state shares pages the next steps write to."""
        if final:
            declared, stored = self.declared.finish(), self.stored.finish()
        else:
            declared, stored = self.declared.view(), self.stored.view()
        return SessionState(**{**self.values, "declared": declared, "stored": stored})


def replay(events: Iterable[Event], state: SessionState | None = None) -> SessionState:
    """Fold ``events`` onto ``state`` (an empty session by default)."""
    fold = _Fold(state if state is not None else SessionState.empty())
    for event in events:
        fold.apply(event)
    return fold.result()


def apply(state: SessionState, event: Event) -> SessionState:
    return replay((event,), state)


def replay_visiting(
    events: Iterable[Event],
    visit: Callable[[SessionState, Event], None],
    state: SessionState | None = None,
) -> SessionState:
    """``replay``, showing ``visit`` each event with the state just before it: a check of
    a stream's own rules and its fold in one pass. The states ``visit`` sees share the
    fold's pages (as in ``replay_steps``): look at each, keep none."""
    fold = _Fold(state if state is not None else SessionState.empty())
    for event in events:
        visit(fold.result(final=False), event)
        fold.apply(event)
    return fold.result()


def replay_steps(events: Iterable[Event]) -> Iterator[tuple[SessionState, Event]]:
    """Each event with the state just before it: what a check of a stream's own rules
    needs. The states share the fold's pages, which the next step writes to (a copy per
    step would make a stream of n chunks cost n squared): look at each state before
    taking the next step, and keep none."""
    fold = _Fold(SessionState.empty())
    for event in events:
        yield fold.result(final=False), event
        fold.apply(event)
