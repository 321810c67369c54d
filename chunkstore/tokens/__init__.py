"""The token port: bearer tokens, stored as a hash; the token itself is shown once.

Tokens are 256 random bits, so a plain SHA-256 (not a slow password hash) is enough:
there is nothing to brute-force. The token's name is the owner of everything uploaded
with it; several tokens may share a name (say, one per device).
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from typing import Protocol

from chunkstore.errors import InvalidRequest

TOKEN_PREFIX = "cs_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def checked_owner(owner: str) -> str:
    """A token's name as stored: 1-128 printable characters (no control character:
    C0, DEL or C1, whose CSI starts a terminal escape sequence as ESC does)."""
    owner = owner.strip()
    if not owner or len(owner) > 128 or any(unicodedata.category(c) == "Cc" for c in owner):
        raise InvalidRequest("token name must be 1-128 printable characters")
    return owner


class TokenStore(Protocol):
    def create(self, owner: str) -> str:
        """A new token for ``owner``; only its hash is kept."""
        ...

    def owner_of(self, token: str) -> str:
        """The owner a token authenticates, or ``Unauthorized``."""
        ...

    def revoke(self, token: str) -> bool:
        """Revoke a token; False if it was not a valid one."""
        ...

    def close(self) -> None: ...
