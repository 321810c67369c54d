"""The application: loads state, asks a command what happens, appends what it decided.

Every method takes the asking ``owner``; another owner's upload is "not found". Appends
state the version they decided on and, on a conflict, reload and decide again, so any
number of requests (threads or processes) may work on one session at once. All I/O goes
through the ``Store`` (``chunkstore.store``); chunk intake and completion, the two
commands with the most I/O, live in ``chunkstore.intake`` and ``chunkstore.completion``.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from chunkstore import commands
from chunkstore.blobs import is_digest
from chunkstore.bounds import MAX_DIGESTS, check_count, quote
from chunkstore.completion import Completer
from chunkstore.config import Settings
from chunkstore.errors import ChunkSwept, ConcurrencyConflict, InvalidRequest
from chunkstore.events import ChunkStored, KnownEvent
from chunkstore.files import is_materialized
from chunkstore.intake import Intake
from chunkstore.projections import project
from chunkstore.session import SessionState, replay
from chunkstore.store import Store, open_store

#: Session states kept in memory; a cached state is caught up from the log on every load.
STATE_CACHE_SIZE = 512
_APPEND_ATTEMPTS = 1000


def utcnow() -> datetime:
    return datetime.now(UTC)


class UploadService:
    def __init__(
        self, store: Store, settings: Settings, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        # The only per-upload state kept in memory: a bounded cache of sessions that exist.
        self._states: OrderedDict[str, SessionState] = OrderedDict()
        self._states_lock = threading.Lock()
        self.intake = Intake(self)
        self.completer = Completer(self)
        # The commands that live in their own modules, as methods of the application.
        self.store_chunk = self.intake.store_chunk
        self.store_chunk_stream = self.intake.store_chunk_stream
        self.store_batch_stream = self.intake.store_batch_stream
        self.complete_upload = self.completer.complete_upload

    @classmethod
    def open(cls, settings: Settings, clock: Callable[[], datetime] = utcnow) -> UploadService:
        """The service over the store ``settings`` name (``chunkstore.store``)."""
        return cls(open_store(settings), settings, clock)

    def close(self) -> None:
        self.store.close()

    # -- state ---------------------------------------------------------------------------

    def load(self, upload_id: str) -> SessionState:
        """Current state: the cached fold caught up with whatever the log has since."""
        with self._states_lock:
            cached = self._states.get(upload_id)
        after = cached.version if cached else 0
        new_events = [recorded.event for recorded in self.store.log.read(upload_id, after)]
        if not new_events and cached is not None:
            return cached
        state = replay(new_events, cached or SessionState.empty(upload_id))
        if state.exists:
            self._remember(state)
        return state

    def _remember(self, state: SessionState) -> None:
        with self._states_lock:
            current = self._states.get(state.upload_id)
            if current is None or current.version < state.version:
                self._states[state.upload_id] = state
                self._states.move_to_end(state.upload_id)
                while len(self._states) > STATE_CACHE_SIZE:
                    self._states.popitem(last=False)

    def cached_upload_ids(self) -> list[str]:
        """Upload ids this process keeps state of in memory (at most STATE_CACHE_SIZE, and
        only of uploads that exist)."""
        with self._states_lock:
            return list(self._states)

    def get(self, owner: str, upload_id: str) -> SessionState:
        return commands.require_owned(self.load(upload_id), owner)

    def append(
        self,
        state: SessionState,
        new_events: Sequence[KnownEvent],
        precondition: Callable[[], None] | None = None,
    ) -> SessionState:
        """Append at ``state.version``; raises ConcurrencyConflict if the log moved on.
        ``precondition`` runs under the store's write lock before anything is written."""
        if not new_events:
            return state
        new_state = replay(new_events, state)

        def guard() -> None:
            # gc deletes blobs under the same write lock: a chunk this append names
            # that is still there now stays there until the append is committed.
            named = {e.digest: e.index for e in new_events if isinstance(e, ChunkStored)}
            gone = self.store.blobs.missing(named) if named else set()
            if gone:
                digest = min(gone)
                raise ChunkSwept(
                    f"chunk {named[digest]} was removed by gc meanwhile; send it again",
                    digest=digest,
                )
            if precondition is not None:
                precondition()

        self.store.log.append(
            state.upload_id, state.version, new_events, project(new_state, new_events), guard
        )
        # The append succeeded at the expected version, so the new state is exactly the
        # fold of the log: no need to read back and decode what was just written.
        self._remember(new_state)
        return new_state

    def decide_and_append(
        self, owner: str, upload_id: str, decide: Callable[[SessionState], list[KnownEvent]]
    ) -> SessionState:
        for _ in range(_APPEND_ATTEMPTS):
            state = self.get(owner, upload_id)
            try:
                return self.append(state, decide(state))
            except ConcurrencyConflict:
                continue
        raise ConcurrencyConflict(f"upload {upload_id} is too busy; retry", upload_id=upload_id)

    # -- commands ------------------------------------------------------------------------

    def init_upload(self, owner: str, request: commands.InitRequest) -> SessionState:
        upload_id = uuid.uuid4().hex
        now = self.clock()
        # Bounded before the digests are looked up (decide_init checks it again).
        check_count("chunks", len(request.chunks or ()), self.settings.chunk_page_size)
        known = (
            frozenset(self.held_digests(owner, [digest for digest, _ in request.chunks]))
            if request.chunks
            else frozenset()
        )
        new_events = commands.decide_init(
            upload_id,
            owner,
            request,
            self.settings,
            now,
            self.store.index.count_open_sessions(owner, now),
            known,
            self.store.index.bytes_held(owner, now),
        )
        return self.append(
            SessionState.empty(upload_id),
            new_events,
            lambda: self._check_owner_limits(owner, now, request.total_size),
        )

    def declare_chunks(
        self, owner: str, upload_id: str, start: int, page: Sequence[tuple[str, int]]
    ) -> tuple[SessionState, list[int]]:
        """Declare the page of a manifest-mode session's chunk list that starts at index
        ``start`` (a repeat of a declared page is a success). Returns the state and the
        page's indexes still to send: one per digest neither this owner nor the session
        has (``needed_chunks`` semantics)."""
        check_count("chunks", len(page), self.settings.chunk_page_size)
        self.get(owner, upload_id)  # another owner's upload: 404 before any lookup
        page = [(digest.lower(), size) for digest, size in page]
        known = frozenset(self.held_digests(owner, [digest for digest, _ in page]))
        state = self.decide_and_append(
            owner,
            upload_id,
            lambda current: commands.decide_declare(
                current, start, page, self.settings, self.clock(), known
            ),
        )
        end = min(start + len(page), state.declared_chunks)
        return state, [index for index in range(start, end) if state.is_needed(index)]

    def _check_open_sessions(self, owner: str, now: datetime) -> None:
        """decide_init counted already; counting again under the write lock is what
        keeps inits arriving at once from each seeing room for one more."""
        commands.check_open_sessions(
            self.store.index.count_open_sessions(owner, now), self.settings
        )

    def _check_quota(self, owner: str, now: datetime, adding: int) -> None:
        """Likewise for the quota: concurrent inits never add up past it."""
        commands.check_quota(self.store.index.bytes_held(owner, now), adding, self.settings)

    def _check_owner_limits(self, owner: str, now: datetime, adding: int) -> None:
        """A new session's checks under the write lock: open sessions and quota."""
        self._check_open_sessions(owner, now)
        self._check_quota(owner, now, adding)

    def quota_usage(self, owner: str) -> tuple[int, int | None]:
        """(bytes counting towards the owner's quota, the quota or None for none)."""
        used = self.store.index.bytes_held(owner, self.clock())
        return used, self.settings.quota_bytes or None

    def held_digests(self, owner: str, digests: Sequence[str]) -> set[str]:
        """Digests this owner has stored before and the store still holds."""
        return {
            digest
            for digest in self.store.index.known_digests(owner, digests)
            if self.store.blobs.exists(digest)
        }

    def missing_digests(self, owner: str, digests: Sequence[str]) -> list[str]:
        """Which of ``digests`` this owner would have to send (order kept, no repeats).
        At most ``MAX_DIGESTS`` per call: a million cost 7 s of CPU."""
        check_count("digests", len(digests), MAX_DIGESTS)
        wanted = list(dict.fromkeys(d.lower() for d in digests))
        for digest in wanted:
            if not is_digest(digest):
                raise InvalidRequest(f"{quote(digest)} is not a BLAKE3-256 hex digest")
        held = self.held_digests(owner, wanted)
        return [digest for digest in wanted if digest not in held]

    def cancel_upload(self, owner: str, upload_id: str, reason: str = "") -> SessionState:
        """Cancel under the upload's lock, so that a completion is either wholly before
        (and the cancel is refused) or wholly after (and refused itself)."""
        state = self.get(owner, upload_id)
        if not commands.decide_cancel(state, reason):
            return state
        with self.store.locks.hold(upload_id, self.settings.lock_wait):
            return self.decide_and_append(
                owner, upload_id, lambda state: commands.decide_cancel(state, reason)
            )

    def delete_upload(self, owner: str, upload_id: str, reason: str = "") -> SessionState:
        """Delete a completed upload: record ``UploadDeleted``, then remove its final file
        (a file outliving a crash in between is an orphan gc removes). Its chunks are
        released at gc's next run."""
        state = self.get(owner, upload_id)
        commands.decide_delete(state, reason)
        with self.store.locks.hold(upload_id, self.settings.lock_wait):
            file_path = self.get(owner, upload_id).file_path
            state = self.decide_and_append(
                owner, upload_id, lambda state: commands.decide_delete(state, reason)
            )
            if file_path is not None and is_materialized(file_path):
                self.store.files.remove(file_path)
        return state

    def expire_upload(self, upload_id: str) -> SessionState:
        """Record ``UploadExpired`` for a session past its TTL (an operator's action:
        no owner check). A session not yet past its TTL is left as it is. A session
        whose lock is held (a completion under way) raises ``UploadLocked``: a later
        gc run expires it if it is still open then."""
        state = self.load(upload_id)
        if not commands.decide_expire(state, self.clock()):
            return state
        with self.store.locks.hold(upload_id):
            return self.decide_and_append(
                state.owner, upload_id, lambda state: commands.decide_expire(state, self.clock())
            )

    def status(self, owner: str, upload_id: str) -> SessionState:
        return self.get(owner, upload_id)

    # -- tus (see chunkstore.tus) --------------------------------------------------------

    def append_decided(
        self,
        state: SessionState,
        new_events: Sequence[KnownEvent],
        new_session_of: str | None = None,
        adds_bytes: int = 0,
    ) -> SessionState:
        """Append events decided on ``state``, at its version; ConcurrencyConflict if
        the log moved on. tus decisions cover bytes already staged, so they are not
        re-decided on a conflict. ``new_session_of``: the owner of a session being
        created, whose open sessions are recounted under the write lock. ``adds_bytes``:
        what the events add to the owner's quota use (a declared length), checked there
        too."""
        now = self.clock()
        if new_session_of is not None:
            owner = new_session_of
            return self.append(
                state, new_events, lambda: self._check_owner_limits(owner, now, adds_bytes)
            )
        if adds_bytes:
            owner = state.owner
            return self.append(state, new_events, lambda: self._check_quota(owner, now, adds_bytes))
        return self.append(state, new_events)
