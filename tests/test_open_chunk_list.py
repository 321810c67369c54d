"""A chunk list whose count is left open: pages come as the client cuts them, and the
list is complete once their sizes add up to total_size."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from chunkstore.audit import stream_findings
from chunkstore.commands import InitRequest, decide_declare, decide_init
from chunkstore.config import Settings
from chunkstore.errors import ChunkListPastSize
from chunkstore.events import ChunksDeclared, ChunkStored, Event
from chunkstore.session import replay
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

PAGE = 4
NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def paged(make_server: MakeServer) -> Server:
    """A server that takes pages of four declared chunks."""
    return make_server(CHUNKSTORE_CHUNK_PAGE_SIZE=str(PAGE))


def pieces_of(count: int) -> list[bytes]:
    return [os.urandom(100 + 37 * n) for n in range(count)]


def declared(pieces: list[bytes]) -> list[dict[str, Any]]:
    return [{"digest": blake3_hex(piece), "size": len(piece)} for piece in pieces]


def start_open(client: httpx.Client, total_size: int, first: list[bytes]) -> dict[str, Any]:
    response = client.post(
        f"{UPLOAD}/init",
        json={
            "filename": "open.bin",
            "total_size": total_size,
            "chunk_list_open": True,
            "chunks": declared(first),
        },
    )
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def declare(client: httpx.Client, upload_id: str, at: int, pieces: list[bytes]) -> httpx.Response:
    return client.post(
        f"{UPLOAD}/{upload_id}/chunk-list", json={"start": at, "chunks": declared(pieces)}
    )


def test_an_open_chunk_list_is_declared_page_by_page_and_completes(paged: Server) -> None:
    pieces = pieces_of(10)
    total = sum(map(len, pieces))
    with paged.client() as client:
        answer = start_open(client, total, pieces[:4])
        upload_id = answer["upload_id"]
        assert (answer["total_chunks"], answer["declared_chunks"]) == (4, 4)
        assert answer["chunk_list_open"] is True
        assert answer["needed_chunks"] == [0, 1, 2, 3]

        middle = declare(client, upload_id, 4, pieces[4:8]).json()
        assert (middle["declared_chunks"], middle["total_chunks"]) == (8, 8)
        assert middle["chunk_list_open"] is True
        assert middle["needed_chunks"] == [4, 5, 6, 7]
        last = declare(client, upload_id, 8, pieces[8:]).json()
        assert (last["declared_chunks"], last["total_chunks"]) == (10, 10)
        assert last["chunk_list_open"] is False  # the sizes reached total_size
        for index, piece in enumerate(pieces):
            assert put_chunk(client, upload_id, index, piece).status_code == 200
        result = complete(client, upload_id)

        assert result.status_code == 200, result.text
        assert (paged.data_dir / result.json()["file_path"]).read_bytes() == b"".join(pieces)
    events = recorded_events(paged.data_dir, upload_id)
    pages = [event for event in events if isinstance(event, ChunksDeclared)]
    assert [(page.start, len(page.chunk_list)) for page in pages] == [(4, 4), (8, 2)]


def test_a_page_past_total_size_is_a_400_problem_and_records_nothing(paged: Server) -> None:
    pieces = pieces_of(6)
    with paged.client() as client:
        upload_id = start_open(client, sum(map(len, pieces)) - 1, pieces[:4])["upload_id"]
        before = len(recorded_events(paged.data_dir, upload_id))

        response = declare(client, upload_id, 4, pieces[4:])

        problem = assert_problem(response, 400, "chunk-list-past-size")
        assert problem["declared_size"] == sum(map(len, pieces[:4]))
        status = status_of(client, upload_id)
        assert (status["declared_chunks"], status["chunk_list_open"]) == (4, True)
    assert len(recorded_events(paged.data_dir, upload_id)) == before


def test_a_first_page_past_total_size_is_refused_at_init(paged: Server) -> None:
    pieces = pieces_of(2)
    with paged.client() as client:
        response = client.post(
            f"{UPLOAD}/init",
            json={
                "filename": "open.bin",
                "total_size": len(pieces[0]),
                "chunk_list_open": True,
                "chunks": declared(pieces),
            },
        )

        assert_problem(response, 400, "chunk-list-past-size")


def test_chunk_count_with_an_open_list_is_a_400(paged: Server) -> None:
    with paged.client() as client:
        response = client.post(
            f"{UPLOAD}/init",
            json={"filename": "f", "total_size": 10, "chunk_list_open": True, "chunk_count": 2},
        )

        assert_problem(response, 400, "invalid-request")


def test_complete_before_the_open_list_is_complete_is_a_409(paged: Server) -> None:
    pieces = pieces_of(6)
    with paged.client() as client:
        upload_id = start_open(client, sum(map(len, pieces)), pieces[:4])["upload_id"]
        for index in range(4):  # every declared chunk is there, the list is not
            assert put_chunk(client, upload_id, index, pieces[index]).status_code == 200

        problem = assert_problem(complete(client, upload_id), 409, "upload-incomplete")

        assert problem["declared_chunks"] == 4
        assert status_of(client, upload_id)["status"] == "active"


def test_an_index_not_declared_yet_is_a_409_not_out_of_range(paged: Server) -> None:
    pieces = pieces_of(6)
    with paged.client() as client:
        upload_id = start_open(client, sum(map(len, pieces)), pieces[:4])["upload_id"]

        response = put_chunk(client, upload_id, 5, pieces[5])

        assert_problem(response, 409, "chunk-not-declared")


def test_chunks_sent_before_the_last_page_is_declared_are_kept(paged: Server) -> None:
    pieces = pieces_of(10)
    pieces[9] = pieces[1]  # the last page repeats a chunk sent before it was declared
    with paged.client() as client:
        upload_id = start_open(client, sum(map(len, pieces)), pieces[:4])["upload_id"]
        for index in range(4):
            assert put_chunk(client, upload_id, index, pieces[index]).status_code == 200
        page = declare(client, upload_id, 4, pieces[4:8]).json()
        for index in page["needed_chunks"]:
            assert put_chunk(client, upload_id, index, pieces[index]).status_code == 200

        last = declare(client, upload_id, 8, pieces[8:]).json()

        assert last["needed_chunks"] == [8]  # 9 is chunk 1's bytes, stored already
        status = status_of(client, upload_id)
        assert status["received_chunks"] == list(range(8)) + [9]
        assert put_chunk(client, upload_id, 8, pieces[8]).status_code == 200
        result = complete(client, upload_id)
        assert result.status_code == 200, result.text
        assert result.json()["bytes_deduplicated"] == len(pieces[1])
        assert (paged.data_dir / result.json()["file_path"]).read_bytes() == b"".join(pieces)


def test_an_empty_file_with_an_open_list_is_complete_at_once(paged: Server) -> None:
    with paged.client() as client:
        answer = start_open(client, 0, [])

        assert answer["chunk_list_open"] is False
        result = complete(client, answer["upload_id"])
        assert result.status_code == 200, result.text


# -- decisions and audit (pure) -----------------------------------------------------------


def open_session(sizes: list[int], total_size: int) -> list[Event]:
    chunks = [(f"{n:064x}", size) for n, size in enumerate(sizes)]
    request = InitRequest(
        filename="f", total_size=total_size, chunks=chunks[:2], chunk_list_open=True
    )
    return list(decide_init("u1", "alice", request, Settings(), NOW, 0))


def test_pages_of_an_open_list_fold_to_its_declared_count() -> None:
    events = open_session([10, 20, 30], 60)
    state = replay(events)
    assert (state.total_chunks, state.chunk_list_pending) == (2, True)

    events += decide_declare(state, 2, [(f"{2:064x}", 30)], Settings(), NOW)
    state = replay(events)

    assert (state.total_chunks, state.declared_chunks, state.chunk_list_pending) == (3, 3, False)
    with pytest.raises(ChunkListPastSize):
        decide_declare(state, 3, [(f"{3:064x}", 1)], Settings(), NOW)


def test_audit_names_a_page_recorded_past_total_size() -> None:
    events = open_session([10, 20], 40)
    events.append(ChunksDeclared(start=2, chunk_list=[(f"{2:064x}", 11)]))
    events.append(ChunkStored(index=0, digest=f"{0:064x}", size=10))

    findings = stream_findings("u1", events)

    assert [finding.kind for finding in findings] == ["bytes-past-size"]


def test_audit_names_a_page_that_does_not_start_where_the_list_ends() -> None:
    events = open_session([10, 20], 40)
    events.append(ChunksDeclared(start=3, chunk_list=[(f"{2:064x}", 5)]))

    findings = stream_findings("u1", events)

    assert [finding.kind for finding in findings] == ["event-out-of-order"]


def test_audit_is_clean_for_an_open_list_declared_as_allowed() -> None:
    events = open_session([10, 20, 10], 40)
    events.append(ChunksDeclared(start=2, chunk_list=[(f"{2:064x}", 10)]))
    events.append(ChunkStored(index=2, digest=f"{2:064x}", size=10))

    assert stream_findings("u1", events) == []
