"""The token port's contract: ``TokenStore``, bearer tokens kept as a hash."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore.errors import InvalidRequest, Unauthorized
from chunkstore.tokens import TOKEN_PREFIX, TokenStore, new_token
from tests.contracts.concurrency import THREADS, run_together


class TokenStoreContract(abc.ABC):
    """A token names its owner until it is revoked; a name is 1-128 printable characters."""

    @abc.abstractmethod
    def make_tokens(self, tmp_path: Path) -> TokenStore:
        """A new token store of the backend under test, holding no token."""

    @pytest.fixture
    def tokens(self, tmp_path: Path) -> Iterator[TokenStore]:
        instance = self.make_tokens(tmp_path)
        yield instance
        instance.close()

    def test_a_token_authenticates_its_owner(self, tokens: TokenStore) -> None:
        token = tokens.create("alice")

        assert token.startswith(TOKEN_PREFIX)
        assert tokens.owner_of(token) == "alice"

    def test_every_token_is_a_new_one(self, tokens: TokenStore) -> None:
        laptop, phone = tokens.create("alice"), tokens.create("alice")
        bobs = tokens.create("bob")

        assert len({laptop, phone, bobs}) == 3
        assert [tokens.owner_of(t) for t in (laptop, phone, bobs)] == ["alice", "alice", "bob"]

    @pytest.mark.parametrize("token", ["", "cs_", "cs_not-a-token", "alice"])
    def test_an_unknown_token_is_unauthorized(self, tokens: TokenStore, token: str) -> None:
        tokens.create("alice")

        with pytest.raises(Unauthorized):
            tokens.owner_of(token)

    def test_a_token_never_issued_here_is_unauthorized(self, tokens: TokenStore) -> None:
        with pytest.raises(Unauthorized):
            tokens.owner_of(new_token())

    def test_a_revoked_token_no_longer_authenticates(self, tokens: TokenStore) -> None:
        revoked, kept = tokens.create("alice"), tokens.create("alice")

        assert tokens.revoke(revoked) is True

        with pytest.raises(Unauthorized):
            tokens.owner_of(revoked)
        assert tokens.owner_of(kept) == "alice"  # the owner's other tokens stay valid
        assert tokens.revoke(revoked) is False

    def test_revoking_a_token_never_issued_is_false(self, tokens: TokenStore) -> None:
        assert tokens.revoke(new_token()) is False
        assert tokens.revoke("") is False

    def test_a_name_is_kept_without_surrounding_spaces(self, tokens: TokenStore) -> None:
        assert tokens.owner_of(tokens.create("  alice smith\t ")) == "alice smith"

    @pytest.mark.parametrize(
        "name", ["x" * 128, "Zoë", "ops team", "build-bot@ci.example"], ids=lambda n: n[:12]
    )
    def test_a_name_of_up_to_128_printable_characters_is_accepted(
        self, tokens: TokenStore, name: str
    ) -> None:
        assert tokens.owner_of(tokens.create(name)) == name

    @pytest.mark.parametrize(
        "name",
        ["", "   ", "x" * 129, "a\x00b", "a\nb", "a\rb", "a\x1bb", "a\x7fb", "a\x9bb"],
        ids=["empty", "spaces", "129", "NUL", "LF", "CR", "ESC", "DEL", "CSI"],
    )
    def test_a_name_that_is_not_1_to_128_printable_characters_is_refused(
        self, tokens: TokenStore, name: str
    ) -> None:
        with pytest.raises(InvalidRequest):
            tokens.create(name)

    def test_tokens_created_at_once_are_all_valid_and_distinct(self, tokens: TokenStore) -> None:
        created: list[tuple[str, str]] = []

        def create(n: int) -> None:
            for _ in range(10):
                created.append((tokens.create(f"owner{n}"), f"owner{n}"))

        run_together(create)

        assert len({token for token, _ in created}) == THREADS * 10
        for token, owner in created:
            assert tokens.owner_of(token) == owner
