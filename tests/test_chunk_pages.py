"""A long chunk list declared in pages: init carries the first, chunk-list the next ones."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from chunkstore.client import ServerApi, UploadClient, scan_file
from chunkstore.commands import InitRequest, decide_declare, decide_init
from chunkstore.config import Settings
from chunkstore.errors import DeclarationConflict
from chunkstore.events import ChunksDeclared, ChunkStored
from chunkstore.session import SessionState, replay
from chunkstore.testing import MakeServer, Server
from tests.helpers import (
    UPLOAD,
    assert_problem,
    blake3_hex,
    complete,
    put_chunk,
    recorded_events,
    status_of,
)

KiB = 1024
PAGE = 4
NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def paged(make_server: MakeServer) -> Server:
    """A server that takes pages of four declared chunks."""
    return make_server(CHUNKSTORE_CHUNK_PAGE_SIZE=str(PAGE))


def pieces_of(count: int) -> list[bytes]:
    """Chunks of different sizes, as a content-defined chunker cuts them."""
    return [os.urandom(100 + 37 * n) for n in range(count)]


def declared(pieces: list[bytes]) -> list[dict[str, Any]]:
    return [{"digest": blake3_hex(piece), "size": len(piece)} for piece in pieces]


def start(client: httpx.Client, pieces: list[bytes], first_page: int = PAGE) -> dict[str, Any]:
    response = client.post(
        f"{UPLOAD}/init",
        json={
            "filename": "paged.bin",
            "total_size": sum(map(len, pieces)),
            "chunk_count": len(pieces),
            "chunks": declared(pieces[:first_page]),
        },
    )
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def declare(client: httpx.Client, upload_id: str, at: int, pieces: list[bytes]) -> httpx.Response:
    return client.post(
        f"{UPLOAD}/{upload_id}/chunk-list", json={"start": at, "chunks": declared(pieces)}
    )


def test_a_chunk_list_declared_in_pages_uploads_and_completes(paged: Server) -> None:
    pieces = pieces_of(10)
    with paged.client() as client:
        answer = start(client, pieces)
        upload_id = answer["upload_id"]
        assert (answer["total_chunks"], answer["declared_chunks"]) == (10, 4)
        assert answer["needed_chunks"] == [0, 1, 2, 3]
        assert answer["chunk_page_size"] == PAGE

        for at in (4, 8):
            response = declare(client, upload_id, at, pieces[at : at + PAGE])
            assert response.status_code == 200, response.text
            page = response.json()
            assert page["needed_chunks"] == list(range(at, min(at + PAGE, 10)))
            assert page["declared_chunks"] == min(at + PAGE, 10)
        for index, piece in enumerate(pieces):
            assert put_chunk(client, upload_id, index, piece).status_code == 200
        result = complete(client, upload_id)

        assert result.status_code == 200, result.text
        assert (paged.data_dir / result.json()["file_path"]).read_bytes() == b"".join(pieces)
    events = recorded_events(paged.data_dir, upload_id)
    pages = [event for event in events if isinstance(event, ChunksDeclared)]
    assert [(page.start, len(page.chunk_list)) for page in pages] == [(4, 4), (8, 2)]


def test_chunks_may_be_sent_for_any_declared_index_before_the_rest_is_declared(
    paged: Server,
) -> None:
    pieces = pieces_of(6)
    with paged.client() as client:
        upload_id = start(client, pieces)["upload_id"]

        assert put_chunk(client, upload_id, 3, pieces[3]).status_code == 200
        status = status_of(client, upload_id)

        assert status["received_chunks"] == [3]
        assert status["declared_chunks"] == 4
        assert status["needed_chunks"] == [0, 1, 2]  # 4 and 5 are not declared yet
        assert status["missing_chunks"] == [0, 1, 2, 4, 5]


def test_an_undeclared_index_is_refused_with_409_and_nothing_stored(paged: Server) -> None:
    pieces = pieces_of(6)
    with paged.client() as client:
        upload_id = start(client, pieces)["upload_id"]

        response = put_chunk(client, upload_id, 4, pieces[4])

        problem = assert_problem(response, 409, "chunk-not-declared")
        assert problem["declared_chunks"] == 4
        assert status_of(client, upload_id)["received_chunks"] == []
    assert not any(isinstance(e, ChunkStored) for e in recorded_events(paged.data_dir, upload_id))


def test_complete_refuses_until_every_chunk_is_declared(paged: Server) -> None:
    pieces = pieces_of(6)
    with paged.client() as client:
        upload_id = start(client, pieces)["upload_id"]
        for index in range(4):
            assert put_chunk(client, upload_id, index, pieces[index]).status_code == 200

        problem = assert_problem(complete(client, upload_id), 409, "upload-incomplete")

        assert problem["declared_chunks"] == 4


def test_a_repeated_page_is_a_success_and_a_different_one_a_409(paged: Server) -> None:
    pieces = pieces_of(8)
    with paged.client() as client:
        upload_id = start(client, pieces)["upload_id"]
        first = declare(client, upload_id, 4, pieces[4:8])
        again = declare(client, upload_id, 4, pieces[4:8])
        init_page_again = declare(client, upload_id, 0, pieces[:4])
        other = declare(client, upload_id, 4, [*pieces[4:7], os.urandom(len(pieces[7]))])

        assert first.status_code == again.status_code == init_page_again.status_code == 200
        assert again.json() == first.json()
        assert init_page_again.json()["needed_chunks"] == [0, 1, 2, 3]
        problem = assert_problem(other, 409, "declaration-conflict")
        assert problem["declared_chunks"] == 8
    pages = [e for e in recorded_events(paged.data_dir, upload_id) if isinstance(e, ChunksDeclared)]
    assert len(pages) == 1


def test_a_page_that_does_not_start_where_the_declared_ones_end_is_a_409(paged: Server) -> None:
    pieces = pieces_of(12)
    with paged.client() as client:
        upload_id = start(client, pieces)["upload_id"]

        problem = assert_problem(
            declare(client, upload_id, 8, pieces[8:12]), 409, "declaration-conflict"
        )

        assert problem["declared_chunks"] == 4
        assert "starts at chunk 4" in problem["detail"]


def test_pages_must_add_up_to_total_size_and_never_overshoot_it(paged: Server) -> None:
    pieces = pieces_of(8)
    with paged.client() as client:
        upload_id = start(client, pieces)["upload_id"]
        too_big = [*pieces[4:7], pieces[7] + b"x" * 10_000]
        too_small = [*pieces[4:7], pieces[7][:-1]]

        for page in (too_big, too_small):
            assert_problem(declare(client, upload_id, 4, page), 400, "invalid-request")
        assert declare(client, upload_id, 4, pieces[4:8]).status_code == 200


def test_a_page_past_chunk_count_is_refused(paged: Server) -> None:
    pieces = pieces_of(6)
    with paged.client() as client:
        upload_id = start(client, pieces)["upload_id"]

        response = declare(client, upload_id, 4, [*pieces[4:6], os.urandom(10)])

        assert_problem(response, 400, "invalid-request")


def test_more_chunks_than_a_page_in_one_request_is_a_413_naming_the_page_size(
    paged: Server,
) -> None:
    pieces = pieces_of(6)
    with paged.client() as client:
        too_long = client.post(
            f"{UPLOAD}/init",
            json={"filename": "a", "total_size": sum(map(len, pieces)), "chunks": declared(pieces)},
        )
        upload_id = start(client, pieces)["upload_id"]
        page_too_long = declare(client, upload_id, 4, pieces[4:6] * 3)

    assert assert_problem(too_long, 413, "list-too-long")["limit"] == PAGE
    assert assert_problem(page_too_long, 413, "list-too-long")["limit"] == PAGE


def test_a_whole_list_in_one_init_still_works(client: httpx.Client) -> None:
    pieces = pieces_of(5)
    response = client.post(
        f"{UPLOAD}/init",
        json={"filename": "a.bin", "total_size": sum(map(len, pieces)), "chunks": declared(pieces)},
    )

    assert response.status_code == 201, response.text
    answer = response.json()
    assert (answer["total_chunks"], answer["declared_chunks"]) == (5, 5)
    assert answer["needed_chunks"] == [0, 1, 2, 3, 4]


def test_a_page_names_only_what_neither_the_owner_nor_the_session_has(paged: Server) -> None:
    pieces = pieces_of(4)
    already = os.urandom(500)
    with paged.client() as client:
        # The owner stored `already` in an earlier upload.
        earlier = start(client, [already], first_page=1)["upload_id"]
        assert put_chunk(client, earlier, 0, already).status_code == 200
        upload_id = start(client, [*pieces, pieces[0], pieces[1], already, pieces[2]])["upload_id"]
        assert put_chunk(client, upload_id, 1, pieces[1]).status_code == 200

        # Index 4 repeats 0 (still missing), 5 repeats 1 (stored), 6 the earlier upload.
        page = declare(client, upload_id, 4, [pieces[0], pieces[1], already, pieces[2]]).json()

        assert page["needed_chunks"] == []
        status = status_of(client, upload_id)
        assert status["received_chunks"] == [1, 5, 6]
        assert status["needed_chunks"] == [0, 2, 3]
        assert status["needed_count"] == 3
        assert status["bytes_deduplicated"] == len(pieces[1]) + len(already)


# -- the client ---------------------------------------------------------------------------


def test_chunkstore_upload_declares_a_long_chunk_list_in_pages(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server(CHUNKSTORE_CHUNK_PAGE_SIZE="8")
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(3 * 1024 * KiB))  # about 48 content-defined chunks
    token = server.token("alice")

    result = UploadClient(server.url, token, state_dir=tmp_path / "state").upload(path)

    assert (server.data_dir / "files" / result.upload_id / "big.bin").read_bytes() == (
        path.read_bytes()
    )
    events = recorded_events(server.data_dir, result.upload_id)
    pages = [event for event in events if isinstance(event, ChunksDeclared)]
    total = len(scan_file(path, "cdc").chunks)
    assert total > 3 * 8
    # The first init carried too many chunks for this server (413): it started anew
    # with none and declared all of them in pages of its size.
    assert [page.start for page in pages] == list(range(0, total, 8))


def test_an_upload_interrupted_before_its_pages_were_declared_resumes(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server(CHUNKSTORE_CHUNK_PAGE_SIZE="8")
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(2 * 1024 * KiB))
    token = server.token("alice")
    uploader = UploadClient(server.url, token, state_dir=tmp_path / "state")
    scan = scan_file(path, "cdc")
    api = ServerApi(server.url, token)
    try:
        upload_id, answer = uploader.start(
            api, uploader.state_key(scan), scan, "application/octet-stream"
        )
    finally:
        api.close()
    assert answer["declared_chunks"] == 0  # the first init page was too long: none declared

    result = uploader.upload(path)

    assert result.upload_id == upload_id
    assert (server.data_dir / "files" / upload_id / "big.bin").read_bytes() == path.read_bytes()


# -- decisions (pure) -----------------------------------------------------------------


def paged_session(sizes: list[int], first_page: int) -> tuple[SessionState, list[tuple[str, int]]]:
    chunks = [(f"{n:064x}", size) for n, size in enumerate(sizes)]
    request = InitRequest(
        filename="f",
        total_size=sum(sizes),
        chunks=chunks[:first_page],
        chunk_count=len(chunks),
    )
    events = decide_init("u", "o", request, Settings(), NOW, 0)
    return replay(events, SessionState.empty("u")), chunks


def test_declaring_pages_builds_the_same_state_as_one_init() -> None:
    state, chunks = paged_session([5, 6, 7, 8, 9], 2)
    for at in (2, 4):
        state = replay(decide_declare(state, at, chunks[at : at + 2], Settings(), NOW), state)
    whole, _ = paged_session([5, 6, 7, 8, 9], 5)

    assert list(state.declared) == list(whole.declared)
    assert [state.indexes_of(digest) for digest, _ in chunks] == [
        whole.indexes_of(digest) for digest, _ in chunks
    ]
    assert (state.declared_size, state.chunk_size, state.needed_count) == (35, 9, 5)


def test_a_page_on_a_fixed_size_session_is_a_conflict() -> None:
    events = decide_init(
        "u", "o", InitRequest(filename="f", total_size=10, chunk_size=5), Settings(), NOW, 0
    )
    state = replay(events, SessionState.empty("u"))

    with pytest.raises(DeclarationConflict):
        decide_declare(state, 2, [], Settings(), NOW)


def test_a_negative_start_or_chunk_count_is_refused(paged: Server) -> None:
    pieces = pieces_of(6)
    with paged.client() as client:
        upload_id = start(client, pieces)["upload_id"]
        negative_count = client.post(
            f"{UPLOAD}/init",
            json={"filename": "a", "total_size": 0, "chunk_count": -1, "chunks": []},
        )

        assert_problem(declare(client, upload_id, -2, []), 400, "invalid-request")
        assert_problem(negative_count, 400, "invalid-request")
