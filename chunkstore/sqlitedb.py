"""One SQLite database file shared by the SQLite backends (event log, tokens, pack index).

WAL mode so readers never block the writer; ``synchronous=FULL`` because a committed
append is an acknowledged chunk and must survive power loss, not just a crash. Each
thread gets its own connection; several processes may share the file (writes take the
write lock with ``BEGIN IMMEDIATE`` and wait up to ``busy_timeout``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from chunkstore.errors import InsufficientStorage


def database_full(error: BaseException) -> bool:
    """SQLITE_FULL: the disk (or the quota) had no room for the database or its WAL."""
    if not isinstance(error, sqlite3.OperationalError):
        return False
    # Errors SQLite raises carry their code; one raised elsewhere has none.
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_FULL)
    return "database or disk is full" in str(error)


#: Most values one ``IN (...)`` list takes (``in_batches``).
IN_BATCH = 512


def in_batches(values: Sequence[str], largest: int = IN_BATCH) -> Iterator[list[str]]:
    """``values`` in lists of at most ``largest`` (a power of two), each padded to a power
    of two by repeating its last value, so that ``in_list`` gives a handful of statement
    texts. Each text is a statement of its own in every connection's cache (128 of
    them, ~8 connections): one text per list length held some 20 MiB more in a worker
    after a 4 GiB upload whose requests looked up every length up to 500."""
    for start in range(0, len(values), largest):
        batch = list(values[start : start + largest])
        width = 1 << (len(batch) - 1).bit_length()
        yield batch + [batch[-1]] * (width - len(batch))


def in_list(batch: Sequence[str]) -> str:
    """``(?, ?, ...)`` for one of ``in_batches``."""
    return f"({', '.join('?' * len(batch))})"


class Database:
    """Per-thread connections to one database file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def write(self, synced: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed when the block ends,
        rolled back if it raises. A full disk becomes ``InsufficientStorage``.

        ``synced=False`` commits without syncing the write-ahead log (``synchronous=
        NORMAL`` for this one transaction): only for a caller that commits a synced
        transaction of this database before it acknowledges anything. The log is
        appended in commit order, so that later sync makes this commit durable too; a
        crash before it loses both, and nothing had been acknowledged.

        A write inside a write of the same thread joins it (the outer block commits or
        rolls back): gc deletes pack index rows while it holds the log's write lock, and
        a second ``BEGIN`` on another connection would wait for itself."""
        conn = self.connection()
        if conn.in_transaction:
            yield conn
            return
        if not synced:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield from self._transaction(conn)
        finally:
            if not synced:
                conn.execute("PRAGMA synchronous=FULL")

    @staticmethod
    def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as error:
            # SQLite may have rolled back already (it does on SQLITE_FULL): a second
            # ROLLBACK would fail and hide the reason.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if database_full(error):
                raise InsufficientStorage(
                    "no space left on the server to record this request; nothing of it was"
                    " kept. Send it again once the operator has freed space."
                ) from error
            raise

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
