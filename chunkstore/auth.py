"""Bearer tokens. Only a SHA-256 of each token is stored; the token itself is shown once.

Tokens are 256 random bits, so a plain SHA-256 (not a slow password hash) is enough:
there is nothing to brute-force. The token's name is the owner of everything uploaded
with it; several tokens may share a name (say, one per device).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from chunkstore.errors import InvalidRequest, Unauthorized

TOKEN_PREFIX = "cs_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        sqlite_utils.Database(self._connection())["tokens"].create(
            {"token_hash": str, "owner": str, "created_at": str, "revoked_at": str},
            pk="token_hash",
            not_null={"owner", "created_at"},
            if_not_exists=True,
        )

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def create(self, owner: str) -> str:
        owner = owner.strip()
        if not owner or len(owner) > 128 or any(ord(c) < 32 for c in owner):
            raise InvalidRequest("token name must be 1-128 printable characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._connection().execute(
            "INSERT INTO tokens (token_hash, owner, created_at) VALUES (?, ?, ?)",
            (token_hash(token), owner, datetime.now(UTC).isoformat()),
        )
        return token

    def owner_of(self, token: str) -> str:
        """The owner a token authenticates, or ``Unauthorized``."""
        digest = token_hash(token)
        row = (
            self._connection()
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
        cursor = self._connection().execute(
            "UPDATE tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
            (datetime.now(UTC).isoformat(), token_hash(token)),
        )
        return cursor.rowcount > 0
