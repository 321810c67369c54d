"""The pack index in the SQLite database of the event log (``sqlite:///...``).

Same file, same connections (``chunkstore.sqlitedb.Database`` is shared with the log):
gc deletes index rows while it holds the log's write lock, and a write inside a write
of the same thread joins it rather than waiting for itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence

from chunkstore.blobs.packfile import HEADER_SIZE
from chunkstore.blobs.packindex import IndexRow, PackInfo, UnknownPack
from chunkstore.sqlitedb import Database, in_batches, in_list

_PAGE = 2000
_ROW = "digest, pack, offset, length, size, flags, created_at"
_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS blobs (
        digest     TEXT    PRIMARY KEY,
        pack       TEXT    NOT NULL,
        offset     INTEGER NOT NULL,
        length     INTEGER NOT NULL,
        size       INTEGER NOT NULL,
        flags      INTEGER NOT NULL,
        created_at REAL    NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS blobs_pack ON blobs (pack)",
    """
    CREATE TABLE IF NOT EXISTS packs (
        name       TEXT    PRIMARY KEY,
        committed  INTEGER NOT NULL,
        sealed     INTEGER NOT NULL,
        retired    INTEGER NOT NULL DEFAULT 0,
        created_at REAL    NOT NULL
    )
    """,
)
_INSERT = f"INSERT OR IGNORE INTO blobs ({_ROW}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_RAISE = "UPDATE packs SET committed = MAX(committed, ?) WHERE name = ?"


def _pack(row: tuple[str, int, int, int, float]) -> PackInfo:
    name, committed, sealed, retired, created_at = row
    return PackInfo(name, committed, bool(sealed), bool(retired), created_at)


class SQLitePackIndex:
    """``PackIndex`` in the tables ``blobs`` and ``packs`` of ``db``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        with self.db.write() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    def lookup(self, digest: str) -> IndexRow | None:
        row = (
            self.db.connection()
            .execute(f"SELECT {_ROW} FROM blobs WHERE digest = ?", (digest,))
            .fetchone()
        )
        return IndexRow(*row) if row else None

    def lookup_many(self, digests: Iterable[str]) -> dict[str, IndexRow]:
        wanted = list(dict.fromkeys(digests))
        found: dict[str, IndexRow] = {}
        conn = self.db.connection()
        for batch in in_batches(wanted):
            rows = conn.execute(f"SELECT {_ROW} FROM blobs WHERE digest IN {in_list(batch)}", batch)
            for row in rows:
                found[row[0]] = IndexRow(*row)
        return found

    def add(
        self, rows: Sequence[IndexRow], committed: Mapping[str, int], synced: bool = True
    ) -> list[bool]:
        with self.db.write(synced) as conn:
            self._check_known(conn, committed)
            # One statement per row: its change count says whether this row won.
            inserted = [conn.execute(_INSERT, row).rowcount == 1 for row in rows]
            conn.executemany(_RAISE, [(length, name) for name, length in committed.items()])
        return inserted

    @staticmethod
    def _check_known(conn: sqlite3.Connection, names: Iterable[str]) -> None:
        for name in names:
            if conn.execute("SELECT 1 FROM packs WHERE name = ?", (name,)).fetchone() is None:
                raise UnknownPack(f"no pack {name!r} in the index")

    def remove(self, digests: Iterable[str]) -> set[str]:
        removed: set[str] = set()
        wanted = list(dict.fromkeys(digests))
        with self.db.write() as conn:
            for digest in wanted:
                if conn.execute("DELETE FROM blobs WHERE digest = ?", (digest,)).rowcount:
                    removed.add(digest)
        return removed

    def scan(self, after: str = "") -> Iterator[IndexRow]:
        # A page at a time, each its own query: no read transaction stays open (and
        # holds the WAL back from a checkpoint) while the caller works through rows.
        conn = self.db.connection()
        while True:
            rows = conn.execute(
                f"SELECT {_ROW} FROM blobs WHERE digest > ? ORDER BY digest LIMIT ?",
                (after, _PAGE),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield IndexRow(*row)
            after = rows[-1][0]

    def rows_in(self, pack: str) -> Iterator[IndexRow]:
        conn = self.db.connection()
        after = -1
        while True:
            rows = conn.execute(
                f"SELECT {_ROW} FROM blobs WHERE pack = ? AND offset > ? ORDER BY offset LIMIT ?",
                (pack, after, _PAGE),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield IndexRow(*row)
            after = rows[-1][2]

    def packs(self) -> list[PackInfo]:
        rows = self.db.connection().execute(
            "SELECT name, committed, sealed, retired, created_at FROM packs ORDER BY name"
        )
        return [_pack(row) for row in rows]

    def pack(self, name: str) -> PackInfo | None:
        row = (
            self.db.connection()
            .execute(
                "SELECT name, committed, sealed, retired, created_at FROM packs WHERE name = ?",
                (name,),
            )
            .fetchone()
        )
        return _pack(row) if row else None

    def live_bytes(self) -> dict[str, int]:
        rows = self.db.connection().execute(
            f"SELECT packs.name, COALESCE(SUM(blobs.length + {HEADER_SIZE}), 0)"
            " FROM packs LEFT JOIN blobs ON blobs.pack = packs.name GROUP BY packs.name"
        )
        return {name: int(live) for name, live in rows}

    def move(self, rows: Sequence[IndexRow], from_pack: str, committed: Mapping[str, int]) -> int:
        with self.db.write() as conn:
            self._check_known(conn, [from_pack, *committed])
            moved = 0
            for row in rows:
                moved += conn.execute(
                    "UPDATE blobs SET pack = ?, offset = ?, length = ?, size = ?, flags = ?,"
                    " created_at = ? WHERE digest = ? AND pack = ?",
                    (*row[1:], row.digest, from_pack),
                ).rowcount
            conn.executemany(_RAISE, [(length, name) for name, length in committed.items()])
            conn.execute("UPDATE packs SET retired = 1 WHERE name = ?", (from_pack,))
        return moved

    def register(self, name: str, created_at: float) -> None:
        with self.db.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO packs (name, committed, sealed, retired, created_at)"
                " VALUES (?, 0, 0, 0, ?)",
                (name, created_at),
            )

    def seal(self, name: str) -> None:
        with self.db.write() as conn:
            if not conn.execute("UPDATE packs SET sealed = 1 WHERE name = ?", (name,)).rowcount:
                raise UnknownPack(f"no pack {name!r} in the index")

    def forget(self, name: str) -> None:
        with self.db.write() as conn:
            if conn.execute("SELECT 1 FROM blobs WHERE pack = ? LIMIT 1", (name,)).fetchone():
                raise ValueError(f"rows still point into pack {name!r}")
            conn.execute("DELETE FROM packs WHERE name = ?", (name,))
