"""The token port's backends against its contract (``tests/contracts/tokens.py``), and
what only the SQLite store promises: its rows hold a hash, never the token."""

from __future__ import annotations

from pathlib import Path

from chunkstore.eventlog.sqlite import SQLiteLog
from chunkstore.tokens import token_hash
from chunkstore.tokens.memory import MemoryTokens
from chunkstore.tokens.sqlite import SQLiteTokens
from tests.contracts.eventlog import append, initiated
from tests.contracts.tokens import TokenStoreContract


class TestMemoryTokens(TokenStoreContract):
    def make_tokens(self, tmp_path: Path) -> MemoryTokens:
        return MemoryTokens()


class TestSQLiteTokens(TokenStoreContract):
    def make_tokens(self, tmp_path: Path) -> SQLiteTokens:
        return SQLiteTokens(tmp_path / "chunkstore.sqlite3")

    def test_only_a_hash_of_the_token_is_stored(self, tokens: SQLiteTokens) -> None:
        token = tokens.create("alice")
        revoked = tokens.create("alice")
        tokens.revoke(revoked)

        rows = tokens.db.connection().execute("SELECT * FROM tokens").fetchall()

        assert sorted(row[0] for row in rows) == sorted([token_hash(token), token_hash(revoked)])
        for row in rows:
            for value in row:
                assert token not in str(value) and revoked not in str(value)
                assert token.removeprefix("cs_") not in str(value)

    def test_a_second_store_on_the_file_knows_the_tokens(
        self, tokens: SQLiteTokens, tmp_path: Path
    ) -> None:
        token = tokens.create("alice")
        revoked = tokens.create("bob")
        tokens.revoke(revoked)

        other = SQLiteTokens(tmp_path / "chunkstore.sqlite3")
        try:
            assert other.owner_of(token) == "alice"
            assert other.revoke(revoked) is False
        finally:
            other.close()

    def test_tokens_share_the_event_logs_database_file(
        self, tokens: SQLiteTokens, tmp_path: Path
    ) -> None:
        log = SQLiteLog(tmp_path / "chunkstore.sqlite3")
        try:
            append(log, "u1", [initiated()])
            token = tokens.create("alice")

            assert tokens.owner_of(token) == "alice"
            assert [r.version for r in log.read("u1")] == [1]
        finally:
            log.close()
