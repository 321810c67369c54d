"""Tokens in the SQLite database (the embedded default), beside the event log."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils
from sqlite_utils.db import Table

from chunkstore.errors import Unauthorized
from chunkstore.sqlitedb import Database
from chunkstore.tokens import checked_owner, new_token, token_hash


class SQLiteTokens:
    def __init__(self, path: Path) -> None:
        self.db = Database(path)
        table = sqlite_utils.Database(self.db.connection()).table("tokens")
        assert isinstance(table, Table)
        table.create(
            {"token_hash": str, "owner": str, "created_at": str, "revoked_at": str},
            pk="token_hash",
            not_null={"owner", "created_at"},
            if_not_exists=True,
        )

    def close(self) -> None:
        self.db.close()

    def create(self, owner: str) -> str:
        owner = checked_owner(owner)
        token = new_token()
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO tokens (token_hash, owner, created_at) VALUES (?, ?, ?)",
                (token_hash(token), owner, datetime.now(UTC).isoformat()),
            )
        return token

    def owner_of(self, token: str) -> str:
        digest = token_hash(token)
        row = (
            self.db.connection()
            .execute(
                "SELECT token_hash, owner FROM tokens WHERE token_hash = ? AND revoked_at IS NULL",
                (digest,),
            )
            .fetchone()
        )
        if row is None or not hmac.compare_digest(row[0], digest):
            raise Unauthorized("the bearer token is not valid")
        return str(row[1])

    def revoke(self, token: str) -> bool:
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
                (datetime.now(UTC).isoformat(), token_hash(token)),
            )
        return cursor.rowcount > 0
