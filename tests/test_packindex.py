"""The pack index's backends against its contract (``tests/contracts/packindex.py``),
and what only the SQLite backend promises: it lives in the event log's database, keeps
its rows across reopening, and a write inside the log's write lock joins it."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkstore.blobs.packindex import UnknownPack
from chunkstore.blobs.packindex.memory import MemoryPackIndex
from chunkstore.blobs.packindex.sqlite import SQLitePackIndex
from chunkstore.eventlog.sqlite import SQLiteLog
from chunkstore.sqlitedb import IN_BATCH, Database, in_batches, in_list
from tests.contracts.packindex import PackIndexContract, digest_of, row


class TestMemoryPackIndex(PackIndexContract):
    def make_index(self, tmp_path: Path) -> MemoryPackIndex:
        return MemoryPackIndex()


class TestSQLitePackIndex(PackIndexContract):
    def make_index(self, tmp_path: Path) -> SQLitePackIndex:
        return SQLitePackIndex(Database(tmp_path / "index.sqlite3"))

    def test_a_reopened_index_has_its_rows_and_packs(self, tmp_path: Path) -> None:
        index = SQLitePackIndex(Database(tmp_path / "db.sqlite3"))
        index.register("p1", 1.0)
        index.add([row(1)], {"p1": 1148})
        index.seal("p1")
        index.db.close()

        reopened = SQLitePackIndex(Database(tmp_path / "db.sqlite3"))

        assert reopened.lookup(digest_of(1)) == row(1)
        info = reopened.pack("p1")
        assert info is not None and (info.committed, info.sealed) == (1148, True)

    def test_lookups_of_any_number_of_digests_find_exactly_the_stored_ones(
        self, tmp_path: Path
    ) -> None:
        index = SQLitePackIndex(Database(tmp_path / "db.sqlite3"))
        index.register("p1", 1.0)
        index.add([row(n) for n in range(0, 1200, 3)], {"p1": 1200 * 1148})

        for count in (1, 2, 3, 7, 255, 511, 512, 513, 1100):
            asked = [digest_of(n) for n in range(count)]
            found = index.lookup_many(asked)
            assert set(found) == {digest_of(n) for n in range(0, count, 3)}
            assert all(found[d] == row(n) for n in range(0, count, 3) for d in [digest_of(n)])

    def test_it_shares_the_event_logs_database_file(self, tmp_path: Path) -> None:
        log = SQLiteLog(tmp_path / "chunkstore.sqlite3")
        index = SQLitePackIndex(log.db)
        index.register("p1", 1.0)

        tables = {
            name
            for (name,) in log.db.connection().execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }

        assert {"events", "sessions", "blobs", "packs"} <= tables

    def test_a_removal_under_the_logs_write_lock_joins_it(self, tmp_path: Path) -> None:
        # gc deletes blobs while it holds the log's write lock (its SweepGuard): the
        # index's own write must join that transaction, not wait for it.
        log = SQLiteLog(tmp_path / "chunkstore.sqlite3")
        index = SQLitePackIndex(log.db)
        index.register("p1", 1.0)
        index.add([row(1), row(2)], {"p1": 3000})

        with log.write_locked():
            assert index.remove([digest_of(1)]) == {digest_of(1)}

        assert index.lookup(digest_of(1)) is None
        other = SQLitePackIndex(Database(tmp_path / "chunkstore.sqlite3"))
        assert other.lookup(digest_of(1)) is None
        assert other.lookup(digest_of(2)) == row(2)

    def test_a_removal_rolled_back_with_the_logs_transaction_is_undone(
        self, tmp_path: Path
    ) -> None:
        log = SQLiteLog(tmp_path / "chunkstore.sqlite3")
        index = SQLitePackIndex(log.db)
        index.register("p1", 1.0)
        index.add([row(1)], {"p1": 2000})

        try:
            with log.write_locked():
                index.remove([digest_of(1)])
                raise RuntimeError("the sweep failed")
        except RuntimeError:
            pass

        assert index.lookup(digest_of(1)) == row(1)

    def test_an_unsynced_add_keeps_its_rows_and_leaves_the_connection_synced(
        self, tmp_path: Path
    ) -> None:
        # The intake's index rows are committed without a sync of their own: the
        # session's events, committed synced right after on the same database, cover
        # them. The pragma is for that one transaction only.
        log = SQLiteLog(tmp_path / "chunkstore.sqlite3")
        index = SQLitePackIndex(log.db)
        index.register("p1", 1.0)

        assert index.add([row(1)], {"p1": 1148}, synced=False) == [True]

        conn = log.db.connection()
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL again
        other = SQLitePackIndex(Database(tmp_path / "chunkstore.sqlite3"))
        assert other.lookup(digest_of(1)) == row(1)
        info = other.pack("p1")
        assert info is not None and info.committed == 1148

    def test_a_failed_unsynced_add_leaves_the_connection_synced(self, tmp_path: Path) -> None:
        index = SQLitePackIndex(Database(tmp_path / "db.sqlite3"))
        with pytest.raises(UnknownPack):
            index.add([row(1)], {"unknown": 1148}, synced=False)
        assert index.db.connection().execute("PRAGMA synchronous").fetchone() == (2,)
        assert index.lookup(digest_of(1)) is None


def test_in_lists_take_a_handful_of_statement_texts_whatever_their_length() -> None:
    # Every distinct text is a prepared statement in each connection's cache.
    texts = {
        in_list(batch) for n in range(1, 1600) for batch in in_batches([str(i) for i in range(n)])
    }

    assert len(texts) == IN_BATCH.bit_length()


def test_in_batches_pad_with_values_of_their_own_and_lose_none() -> None:
    for n in (1, 2, 3, 500, 512, 513, 1500):
        values = [f"d{i}" for i in range(n)]
        batches = list(in_batches(values))

        assert all(
            len(batch) <= IN_BATCH and len(batch) & (len(batch) - 1) == 0 for batch in batches
        )
        assert [v for batch in batches for v in dict.fromkeys(batch)] == values
