"""SQLite event store (the embedded default).

WAL mode so readers never block the writer; ``synchronous=FULL`` because a committed
append is an acknowledged chunk and must survive power loss, not just a crash. Each
thread gets its own connection; several processes may share the file (appends take the
write lock with ``BEGIN IMMEDIATE`` and wait up to ``busy_timeout``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from chunkstore import events as ev
from chunkstore.errors import ConcurrencyConflict, InsufficientStorage
from chunkstore.eventlog import SESSION_COLUMNS, RecordedEvent, iso, parse_iso

_READ_BATCH = 2000
_IN_BATCH = 500


def _database_full(error: BaseException) -> bool:
    """SQLITE_FULL: the disk (or the quota) had no room for the database or its WAL."""
    if not isinstance(error, sqlite3.OperationalError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_FULL)
    return "database or disk is full" in str(error)


def _rollback(conn: sqlite3.Connection, error: BaseException) -> None:
    """Undo a failed write transaction, then raise what the caller should see. SQLite
    may have rolled back already (it does on SQLITE_FULL): a second ROLLBACK would fail
    and hide the reason."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    if _database_full(error):
        raise InsufficientStorage(
            "no space left on the server to record this request; nothing of it was kept."
            " Send it again once the operator has freed space."
        ) from error


class SQLiteEventStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._create_schema()

    # -- connections -------------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def _create_schema(self) -> None:
        db = sqlite_utils.Database(self.connection())
        if "events" not in db.table_names():
            db.execute(
                """
                CREATE TABLE IF NOT EXISTS events (
                    stream_id   TEXT    NOT NULL,
                    version     INTEGER NOT NULL,
                    position    INTEGER NOT NULL UNIQUE,
                    type        TEXT    NOT NULL,
                    data        TEXT    NOT NULL,
                    recorded_at TEXT    NOT NULL,
                    PRIMARY KEY (stream_id, version)
                )
                """
            )
        db["sessions"].create(
            {
                "upload_id": str,
                "owner": str,
                "filename": str,
                "status": str,
                "mode": str,
                "mime_type": str,
                "detected_mime": str,
                "total_size": int,
                "total_chunks": int,
                "chunk_size": int,
                "received_chunks": int,
                "bytes_received": int,
                "created_at": str,
                "expires_at": str,
                "file_path": str,
                "sha256": str,
                "manifest_digest": str,
                "failure_reason": str,
                "version": int,
            },
            pk="upload_id",
            not_null={"owner", "status", "version"},
            if_not_exists=True,
        )
        # Which chunks each owner has stored: "do you already have these?" is answered
        # only from here, so nobody can probe for another owner's content.
        db["owner_chunks"].create(
            {"owner": str, "digest": str, "size": int},
            pk=("owner", "digest"),
            not_null={"size"},
            if_not_exists=True,
        )
        db["sessions"].create_index(["owner", "status"], if_not_exists=True)
        db["sessions"].create_index(["status", "expires_at"], if_not_exists=True)

    # -- writing -----------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[ev.KnownEvent],
        projection: dict[str, Any],
        precondition: Callable[[], None] | None = None,
    ) -> list[RecordedEvent]:
        """``precondition`` (optional) runs while the write lock is held, before anything
        is written; it raises to refuse the append. gc deletes blobs under the same lock,
        so "the chunks this event names still exist" checked here stays true."""
        if not events:
            return []
        conn = self.connection()
        now = datetime.now(UTC)
        recorded_at = iso(now)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if precondition is not None:
                precondition()
            (current,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream_id = ?", (stream_id,)
            ).fetchone()
            if current != expected_version:
                raise ConcurrencyConflict(
                    f"stream {stream_id} is at version {current}, not {expected_version}",
                    stream_id=stream_id,
                    expected=expected_version,
                    actual=current,
                )
            (position,) = conn.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
            rows = []
            recorded = []
            for offset, event in enumerate(events, start=1):
                rows.append(
                    (
                        stream_id,
                        expected_version + offset,
                        position + offset,
                        ev.event_type(event),
                        ev.encode(event).decode(),
                        recorded_at,
                    )
                )
                recorded.append(
                    RecordedEvent(
                        stream_id, expected_version + offset, position + offset, now, event
                    )
                )
            conn.executemany(
                "INSERT INTO events (stream_id, version, position, type, data, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._upsert_session(conn, projection)
            stored = [
                (projection["owner"], event.digest, event.size)
                for event in events
                if isinstance(event, ev.ChunkStored)
            ]
            if stored:
                conn.executemany(
                    "INSERT OR IGNORE INTO owner_chunks (owner, digest, size) VALUES (?, ?, ?)",
                    stored,
                )
            conn.execute("COMMIT")
        except BaseException as error:
            _rollback(conn, error)
            raise
        return recorded

    # An upsert, not INSERT OR REPLACE: replacing deletes and re-inserts the row, which
    # rewrites both of its indexes on every chunk; updating in place leaves them alone
    # unless an indexed column changed.
    _UPSERT = (
        f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)})"
        f" VALUES ({', '.join('?' for _ in SESSION_COLUMNS)})"
        " ON CONFLICT (upload_id) DO UPDATE SET "
        + ", ".join(f"{column} = excluded.{column}" for column in SESSION_COLUMNS[1:])
    )

    def _upsert_session(self, conn: sqlite3.Connection, row: dict[str, Any]) -> None:
        conn.execute(self._UPSERT, [row[column] for column in SESSION_COLUMNS])

    def replace_session_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for row in rows:
                self._upsert_session(conn, row)
            conn.execute("COMMIT")
        except BaseException as error:
            _rollback(conn, error)
            raise

    # -- reading -----------------------------------------------------------------------

    @staticmethod
    def _recorded(row: tuple[Any, ...]) -> RecordedEvent:
        stream_id, version, position, data, recorded_at = row
        return RecordedEvent(stream_id, version, position, parse_iso(recorded_at), ev.decode(data))

    def read(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        rows = self.connection().execute(
            "SELECT stream_id, version, position, data, recorded_at FROM events"
            " WHERE stream_id = ? AND version > ? ORDER BY version",
            (stream_id, after_version),
        )
        return [self._recorded(row) for row in rows]

    def read_all(self, after_position: int = 0) -> Iterator[RecordedEvent]:
        conn = self.connection()
        while True:
            rows = conn.execute(
                "SELECT stream_id, version, position, data, recorded_at FROM events"
                " WHERE position > ? ORDER BY position LIMIT ?",
                (after_position, _READ_BATCH),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield self._recorded(row)
            after_position = rows[-1][2]

    def stream_ids(self) -> Iterator[str]:
        rows = self.connection().execute("SELECT DISTINCT stream_id FROM events ORDER BY stream_id")
        for (stream_id,) in rows.fetchall():
            yield stream_id

    def session_row(self, upload_id: str) -> dict[str, Any] | None:
        conn = self.connection()
        cursor = conn.execute(
            f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE upload_id = ?", (upload_id,)
        )
        row = cursor.fetchone()
        return dict(zip(SESSION_COLUMNS, row, strict=True)) if row else None

    def session_rows(self) -> Iterator[dict[str, Any]]:
        cursor = self.connection().execute(
            f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions ORDER BY upload_id"
        )
        for row in cursor.fetchall():
            yield dict(zip(SESSION_COLUMNS, row, strict=True))

    def known_digests(self, owner: str, digests: Iterable[str]) -> set[str]:
        """Which of ``digests`` this owner has stored before."""
        wanted = list(dict.fromkeys(digests))
        found: set[str] = set()
        conn = self.connection()
        for start in range(0, len(wanted), _IN_BATCH):
            batch = wanted[start : start + _IN_BATCH]
            rows = conn.execute(
                "SELECT digest FROM owner_chunks WHERE owner = ?"
                f" AND digest IN ({', '.join('?' for _ in batch)})",
                (owner, *batch),
            )
            found.update(digest for (digest,) in rows)
        return found

    def count_open_sessions(self, owner: str, now: datetime) -> int:
        (count,) = (
            self.connection()
            .execute(
                "SELECT COUNT(*) FROM sessions WHERE owner = ?"
                " AND status IN ('active', 'assembling') AND expires_at > ?",
                (owner, iso(now)),
            )
            .fetchone()
        )
        return int(count)

    def bytes_held(self, owner: str, now: datetime) -> int:
        (held,) = (
            self.connection()
            .execute(
                "SELECT COALESCE(SUM(MAX(total_size, bytes_received)), 0) FROM sessions"
                " WHERE owner = ? AND (status = 'completed'"
                " OR (status IN ('active', 'assembling') AND expires_at > ?))",
                (owner, iso(now)),
            )
            .fetchone()
        )
        return int(held)

    # -- audit, gc and metrics (whole-store views) --------------------------------------

    def last_position(self) -> int:
        """The global position of the newest event (0 for an empty log)."""
        (position,) = (
            self.connection().execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
        )
        return int(position)

    def owner_chunk_rows(self) -> Iterator[tuple[str, str, int]]:
        """Every (owner, digest, size) row of the owner_chunks projection."""
        cursor = self.connection().execute(
            "SELECT owner, digest, size FROM owner_chunks ORDER BY owner, digest"
        )
        while rows := cursor.fetchmany(_READ_BATCH):
            yield from rows

    def count_sessions_by_status(self) -> dict[str, int]:
        """Sessions per stored status, straight from the projection (cheap at scrape time)."""
        rows = self.connection().execute("SELECT status, COUNT(*) FROM sessions GROUP BY status")
        return {str(status): int(count) for status, count in rows}

    def rebuild_projections(
        self,
        rows: Sequence[dict[str, Any]],
        owner_chunks: Iterable[tuple[str, str, int]],
        built_at_position: int,
    ) -> None:
        """Replace both projections with ones rebuilt from the events up to
        ``built_at_position``, in one transaction, so a reader sees either the old
        projections or the new ones. Raises ``ConcurrencyConflict`` if events were
        appended since (the rows would be stale); the caller rebuilds again."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            (current,) = conn.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
            if current != built_at_position:
                raise ConcurrencyConflict(
                    f"the log moved from position {built_at_position} to {current}",
                    expected=built_at_position,
                    actual=current,
                )
            conn.execute("DELETE FROM sessions")
            conn.execute("DELETE FROM owner_chunks")
            for row in rows:
                self._upsert_session(conn, row)
            conn.executemany(
                "INSERT OR IGNORE INTO owner_chunks (owner, digest, size) VALUES (?, ?, ?)",
                owner_chunks,
            )
            conn.execute("COMMIT")
        except BaseException as error:
            _rollback(conn, error)
            raise

    @contextlib.contextmanager
    def write_locked(self) -> Iterator[None]:
        """Hold the database write lock: no append can commit meanwhile (gc deletes blobs
        under it, so an append is wholly before or wholly after a deletion batch)."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("COMMIT")
