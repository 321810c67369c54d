"""The event log on SQLite (the embedded default): ``sqlite:///path/to/file``.

One database file holds the events, the projections (``chunkstore.projections``) and
the tokens. Concurrent appends are committed together, one synced transaction for
all, each in a savepoint of its own (group commit). Positions are ``MAX(position) + 1``
taken under the database's write lock, so they are gap-free and in commit order: a
reader following ``read_all`` never skips an event committed after the position it has
seen.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils
from sqlite_utils.db import Table

from chunkstore import events as ev
from chunkstore.errors import ConcurrencyConflict
from chunkstore.eventlog import RecordedEvent
from chunkstore.groupcommit import GroupCommit
from chunkstore.projections import (
    HELD_STATUS_VALUES,
    OPEN_STATUS_VALUES,
    OWNER_CHUNK_SCHEMA,
    SESSION_COLUMNS,
    SESSION_SCHEMA,
    OwnerChunk,
    RowChanges,
    SessionRow,
    iso,
    parse_iso,
)
from chunkstore.sqlitedb import Database, in_batches, in_list

_READ_BATCH = 2000
_OPEN = f"status IN ({', '.join('?' for _ in OPEN_STATUS_VALUES)}) AND expires_at > ?"
_HELD = f"status IN ({', '.join('?' for _ in HELD_STATUS_VALUES)})"
# An upsert, not INSERT OR REPLACE: replacing deletes and re-inserts the row, which
# rewrites both of its indexes on every chunk; updating in place leaves them alone
# unless an indexed column changed.
_UPSERT = (
    f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in SESSION_COLUMNS)})"
    " ON CONFLICT (upload_id) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in SESSION_COLUMNS[1:])
)
_ADD_OWNER_CHUNK = "INSERT OR IGNORE INTO owner_chunks (owner, digest, size) VALUES (?, ?, ?)"


class _Append(NamedTuple):
    stream_id: str
    expected_version: int
    events: Sequence[ev.KnownEvent]
    changes: RowChanges
    precondition: Callable[[], None] | None


def _table(db: sqlite_utils.Database, name: str) -> Table:
    table = db.table(name)
    assert isinstance(table, Table)
    return table


class SQLiteLog:
    """``EventLog``, ``SessionIndex`` and ``SweepGuard`` on one SQLite database."""

    def __init__(self, path: Path) -> None:
        self.db = Database(path)
        self._create_schema()
        #: Concurrent appends share a transaction and its sync (``chunkstore.groupcommit``).
        self._appends: GroupCommit[_Append, list[RecordedEvent]] = GroupCommit(self._append_batch)

    def close(self) -> None:
        self.db.close()

    def _create_schema(self) -> None:
        db = sqlite_utils.Database(self.db.connection())
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
        sessions = _table(db, "sessions")
        sessions.create(
            SESSION_SCHEMA,
            pk="upload_id",
            not_null={"owner", "status", "version"},
            if_not_exists=True,
        )
        _table(db, "owner_chunks").create(
            OWNER_CHUNK_SCHEMA, pk=("owner", "digest"), not_null={"size"}, if_not_exists=True
        )
        sessions.create_index(["owner", "status"], if_not_exists=True)
        sessions.create_index(["status", "expires_at"], if_not_exists=True)

    # -- EventLog ------------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[ev.KnownEvent],
        changes: RowChanges,
        precondition: Callable[[], None] | None = None,
    ) -> list[RecordedEvent]:
        if not events:
            return []
        job = _Append(stream_id, expected_version, events, changes, precondition)
        if self.db.connection().in_transaction:
            # Inside this thread's own write (gc's lock): a batch led by another
            # thread would wait for that transaction, which waits for this append.
            with self.db.write() as conn:
                return self._append(conn, job)
        return self._appends.submit(job)

    def _append_batch(self, batch: list[_Append]) -> list[list[RecordedEvent] | BaseException]:
        """Concurrent appends in one synced transaction (one WAL sync for them all), each
        in a savepoint of its own: one refused (a version conflict, a failed
        precondition) is rolled back alone and its caller gets the error."""
        outcomes: list[list[RecordedEvent] | BaseException] = []
        with self.db.write() as conn:
            for job in batch:
                conn.execute("SAVEPOINT append")
                try:
                    outcomes.append(self._append(conn, job))
                except Exception as error:
                    conn.execute("ROLLBACK TO append")
                    outcomes.append(error)
                finally:
                    conn.execute("RELEASE append")
        return outcomes

    def _append(self, conn: sqlite3.Connection, job: _Append) -> list[RecordedEvent]:
        stream_id, expected_version, events = job.stream_id, job.expected_version, job.events
        now = datetime.now(UTC)
        recorded_at = iso(now)
        if job.precondition is not None:
            job.precondition()
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
        recorded = [
            RecordedEvent(stream_id, expected_version + n, position + n, now, event)
            for n, event in enumerate(events, start=1)
        ]
        conn.executemany(
            "INSERT INTO events (stream_id, version, position, type, data, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    stream_id,
                    item.version,
                    item.position,
                    ev.event_type(item.event),
                    ev.encode(event).decode(),
                    recorded_at,
                )
                for item, event in zip(recorded, events, strict=True)
            ],
        )
        self._store_rows(conn, job.changes)
        return recorded

    @staticmethod
    def _store_rows(conn: sqlite3.Connection, changes: RowChanges) -> None:
        conn.execute(_UPSERT, [changes.session[column] for column in SESSION_COLUMNS])
        if changes.owner_chunks:
            conn.executemany(_ADD_OWNER_CHUNK, changes.owner_chunks)

    @staticmethod
    def _recorded(row: tuple[Any, ...]) -> RecordedEvent:
        stream_id, version, position, data, recorded_at = row
        return RecordedEvent(stream_id, version, position, parse_iso(recorded_at), ev.decode(data))

    def read(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        rows = self.db.connection().execute(
            "SELECT stream_id, version, position, data, recorded_at FROM events"
            " WHERE stream_id = ? AND version > ? ORDER BY version",
            (stream_id, after_version),
        )
        return [self._recorded(row) for row in rows]

    def read_all(self, after_position: int = 0) -> Iterator[RecordedEvent]:
        conn = self.db.connection()
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

    def read_streams(self, up_to_position: int) -> Iterator[list[RecordedEvent]]:
        # Pages in (stream_id, version) order, the primary key's: each page is a fresh
        # statement, so no read stays open between pages.
        conn = self.db.connection()
        after: tuple[str, int] = ("", 0)
        stream: list[RecordedEvent] = []
        while True:
            rows = conn.execute(
                "SELECT stream_id, version, position, data, recorded_at FROM events"
                " WHERE (stream_id, version) > (?, ?) AND position <= ?"
                " ORDER BY stream_id, version LIMIT ?",
                (*after, up_to_position, _READ_BATCH),
            ).fetchall()
            if not rows:
                break
            for row in rows:
                if stream and stream[0].stream_id != row[0]:
                    yield stream
                    stream = []
                stream.append(self._recorded(row))
            after = (rows[-1][0], rows[-1][1])
        if stream:
            yield stream

    def last_position(self) -> int:
        (position,) = (
            self.db.connection().execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
        )
        return int(position)

    # -- SessionIndex --------------------------------------------------------------------

    def session_row(self, upload_id: str) -> SessionRow | None:
        row = (
            self.db.connection()
            .execute(
                f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE upload_id = ?",
                (upload_id,),
            )
            .fetchone()
        )
        return dict(zip(SESSION_COLUMNS, row, strict=True)) if row else None

    def session_rows(self) -> Iterator[SessionRow]:
        cursor = self.db.connection().execute(
            f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions ORDER BY upload_id"
        )
        while rows := cursor.fetchmany(_READ_BATCH):
            for row in rows:
                yield dict(zip(SESSION_COLUMNS, row, strict=True))

    def count_open_sessions(self, owner: str, now: datetime) -> int:
        (count,) = (
            self.db.connection()
            .execute(
                f"SELECT COUNT(*) FROM sessions WHERE owner = ? AND {_OPEN}",
                (owner, *OPEN_STATUS_VALUES, iso(now)),
            )
            .fetchone()
        )
        return int(count)

    def bytes_held(self, owner: str, now: datetime) -> int:
        (held,) = (
            self.db.connection()
            .execute(
                "SELECT COALESCE(SUM(MAX(total_size, bytes_received)), 0) FROM sessions"
                f" WHERE owner = ? AND ({_HELD} OR ({_OPEN}))",
                (owner, *HELD_STATUS_VALUES, *OPEN_STATUS_VALUES, iso(now)),
            )
            .fetchone()
        )
        return int(held)

    def known_digests(self, owner: str, digests: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(digests))
        found: set[str] = set()
        conn = self.db.connection()
        for batch in in_batches(wanted):
            rows = conn.execute(
                f"SELECT digest FROM owner_chunks WHERE owner = ? AND digest IN {in_list(batch)}",
                (owner, *batch),
            )
            found.update(digest for (digest,) in rows)
        return found

    def owner_chunk_rows(self) -> Iterator[OwnerChunk]:
        cursor = self.db.connection().execute(
            "SELECT owner, digest, size FROM owner_chunks ORDER BY owner, digest"
        )
        while rows := cursor.fetchmany(_READ_BATCH):
            yield from rows

    def count_sessions_by_status(self) -> dict[str, int]:
        rows = self.db.connection().execute("SELECT status, COUNT(*) FROM sessions GROUP BY status")
        return {str(status): int(count) for status, count in rows}

    def rebuild(
        self, rows: Iterable[SessionRow], chunks: Iterable[OwnerChunk], built_at_position: int
    ) -> None:
        """The new rows are staged in temporary tables first (this connection's own, on
        disk: no lock on the database, no memory growing with the rows), then swapped in
        in one transaction, so a reader sees either the old projections or the new and
        appends wait only for the swap."""
        conn = self.db.connection()
        columns = ", ".join(SESSION_COLUMNS)
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS staged_sessions ({columns})")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS staged_chunks (owner, digest, size)")
        try:
            marks = ", ".join("?" for _ in SESSION_COLUMNS)
            self._stage(
                conn,
                f"INSERT INTO temp.staged_sessions VALUES ({marks})",
                ([row[column] for column in SESSION_COLUMNS] for row in rows),
            )
            self._stage(conn, "INSERT INTO temp.staged_chunks VALUES (?, ?, ?)", chunks)
            with self.db.write() as conn:
                (current,) = conn.execute(
                    "SELECT COALESCE(MAX(position), 0) FROM events"
                ).fetchone()
                if current != built_at_position:
                    raise ConcurrencyConflict(
                        f"the log moved from position {built_at_position} to {current}",
                        expected=built_at_position,
                        actual=current,
                    )
                conn.execute("DELETE FROM sessions")
                conn.execute("DELETE FROM owner_chunks")
                # The last row of an upload wins, and of a chunk given with two sizes the
                # smaller, as when the rows were upserted in order.
                conn.execute(
                    f"INSERT OR REPLACE INTO sessions ({columns})"
                    f" SELECT {columns} FROM temp.staged_sessions ORDER BY rowid"
                )
                conn.execute(
                    "INSERT OR IGNORE INTO owner_chunks (owner, digest, size)"
                    " SELECT owner, digest, size FROM temp.staged_chunks"
                    " ORDER BY owner, digest, size"
                )
        finally:
            conn.execute("DELETE FROM temp.staged_sessions")
            conn.execute("DELETE FROM temp.staged_chunks")

    @staticmethod
    def _stage(conn: sqlite3.Connection, insert: str, values: Iterable[Sequence[Any]]) -> None:
        """Insert in batches: the values may be made by reading this connection."""
        batch: list[Sequence[Any]] = []
        for value in values:
            batch.append(value)
            if len(batch) == _READ_BATCH:
                conn.executemany(insert, batch)
                batch = []
        conn.executemany(insert, batch)

    # -- SweepGuard ----------------------------------------------------------------------

    @contextlib.contextmanager
    def write_locked(self) -> Iterator[None]:
        """Hold the database's write lock: no append commits meanwhile."""
        with self.db.write():
            yield
