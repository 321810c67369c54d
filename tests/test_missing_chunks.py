"""POST /api/v1/chunks/missing: which chunks the asking owner would have to send."""

from __future__ import annotations

import os

from chunkstore.testing import Server
from tests.helpers import (
    assert_problem,
    blake3_hex,
    frame,
    init_manifest,
    send_frames,
)

KiB = 1024
MISSING = "/api/v1/chunks/missing"


def owner_holding(server: Server, owner: str, pieces: list[bytes], sent: list[int]) -> None:
    """``owner`` declares ``pieces`` and sends those at the ``sent`` indexes."""
    with server.client(owner) as client:
        upload_id = init_manifest(client, pieces)
        body = b"".join(frame(index, pieces[index]) for index in sent)
        response = send_frames(client, upload_id, body)
        assert response.status_code == 200, response.text


def test_missing_lists_exactly_the_digests_the_owner_does_not_have_in_order_once(
    server: Server, owner: str
) -> None:
    pieces = [os.urandom(16 * KiB) for _ in range(4)]
    d0, d1, d2, d3 = (blake3_hex(piece) for piece in pieces)
    never_sent = blake3_hex(os.urandom(16 * KiB))
    owner_holding(server, owner, pieces, sent=[0, 2])

    with server.client(owner) as client:
        answer = client.post(MISSING, json={"digests": [d3, d0, never_sent, d1, d3, d2, d0]})

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"missing": [d3, never_sent, d1]}


def test_another_owner_gets_every_digest_back_as_missing(server: Server, owner: str) -> None:
    pieces = [os.urandom(16 * KiB) for _ in range(3)]
    digests = [blake3_hex(piece) for piece in pieces]
    owner_holding(server, owner, pieces, sent=[0, 1, 2])

    with server.client(f"{owner}-other") as other:
        answer = other.post(MISSING, json={"digests": digests})

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"missing": digests}


def test_a_digest_that_is_not_blake3_hex_is_400(server: Server, owner: str) -> None:
    with server.client(owner) as client:
        answer = client.post(MISSING, json={"digests": ["not-a-digest"]})

    assert_problem(answer, 400, "invalid-request")
