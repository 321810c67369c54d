"""Tokens in memory (``memory://``): for tests and quick experiments."""

from __future__ import annotations

import threading

from chunkstore.errors import Unauthorized
from chunkstore.tokens import checked_owner, new_token, token_hash


class MemoryTokens:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: token hash -> owner, for tokens not revoked.
        self._owners: dict[str, str] = {}

    def close(self) -> None:
        pass

    def create(self, owner: str) -> str:
        owner = checked_owner(owner)
        token = new_token()
        with self._lock:
            self._owners[token_hash(token)] = owner
        return token

    def owner_of(self, token: str) -> str:
        with self._lock:
            owner = self._owners.get(token_hash(token))
        if owner is None:
            raise Unauthorized("the bearer token is not valid")
        return owner

    def revoke(self, token: str) -> bool:
        with self._lock:
            return self._owners.pop(token_hash(token), None) is not None
