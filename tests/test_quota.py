"""The per-owner byte quota: open sessions' declared sizes plus completed files, checked
where a size is declared, under the write lock, on a real server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from chunkstore import commands
from chunkstore.config import Settings
from chunkstore.errors import QuotaExceeded
from chunkstore.testing import MakeServer, Server
from tests.helpers import (
    UPLOAD,
    all_stream_ids,
    assert_problem,
    blake3_hex,
    cancel,
    complete,
    recorded_events,
    status_of,
    upload_whole,
)
from tests.test_upload_api import _at_once

KiB = 1024
MiB = 1024 * KiB
TUS = {"Tus-Resumable": "1.0.0"}


def init(client: httpx.Client, total_size: int, **extra: Any) -> httpx.Response:
    return client.post(
        f"{UPLOAD}/init", json={"filename": "q.bin", "total_size": total_size, **extra}
    )


def used(client: httpx.Client, upload_id: str) -> int:
    quota = status_of(client, upload_id)["quota"]
    return int(quota["used"])


def upload_ids_of(server: Server) -> set[str]:
    """Every stream in the data dir's log."""
    from chunkstore.eventlog.sqlite import SQLiteLog

    store = SQLiteLog(server.data_dir / "chunkstore.sqlite3")
    try:
        return set(all_stream_ids(store))
    finally:
        store.close()


# -- the decision ---------------------------------------------------------------------------


def test_the_quota_check_refuses_what_would_overrun_it_and_names_the_figures() -> None:
    settings = Settings(data_dir=Path("unused"), quota_bytes=100)
    commands.check_quota(60, 40, settings)
    with pytest.raises(QuotaExceeded) as refused:
        commands.check_quota(60, 41, settings)
    assert refused.value.extensions == {
        "quota": "bytes per owner",
        "used": 60,
        "limit": 100,
        "requested": 41,
    }
    commands.check_quota(10**15, 10**15, settings.replace(quota_bytes=0))  # 0: no quota


# -- over HTTP ------------------------------------------------------------------------------


def test_a_chunk_list_repeating_one_chunk_past_the_quota_is_refused_with_413(
    make_server: MakeServer,
) -> None:
    server = make_server(CHUNKSTORE_QUOTA_BYTES=str(4 * MiB))
    chunk = os.urandom(64 * KiB)
    declared = {"digest": blake3_hex(chunk), "size": len(chunk)}
    with server.client("amplifier") as client:
        streams_before = upload_ids_of(server)
        refused = init(client, 256 * len(chunk), chunks=[declared] * 256)

        body = assert_problem(refused, 413, "quota-exceeded")
        assert (body["quota"], body["used"], body["limit"]) == ("bytes per owner", 0, 4 * MiB)
        assert body["requested"] == 16 * MiB
        assert upload_ids_of(server) == streams_before
        # Repeated content is legitimate within the quota.
        accepted = init(client, 64 * len(chunk), chunks=[declared] * 64)
        assert accepted.status_code == 201, accepted.text
        assert used(client, accepted.json()["upload_id"]) == 4 * MiB


def test_open_and_completed_uploads_count_and_cancelled_or_deleted_ones_do_not(
    make_server: MakeServer,
) -> None:
    server = make_server(CHUNKSTORE_QUOTA_BYTES=str(3 * KiB))
    with server.client("counted") as client:
        data = os.urandom(2 * KiB)
        first = upload_whole(client, data, KiB)
        assert status_of(client, first)["quota"] == {"used": 2 * KiB, "limit": 3 * KiB}
        assert_problem(init(client, 2 * KiB), 413, "quota-exceeded")
        assert complete(client, first).status_code == 200
        assert used(client, first) == 2 * KiB
        assert_problem(init(client, 2 * KiB), 413, "quota-exceeded")

        assert client.delete(f"/api/v1/files/{first}").status_code == 204
        assert used(client, first) == 0
        second = init(client, 2 * KiB)
        assert second.status_code == 201
        assert cancel(client, second.json()["upload_id"]).status_code == 200
        assert used(client, first) == 0
        assert init(client, 3 * KiB).status_code == 201


def test_the_quota_holds_when_inits_arrive_at_once(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_QUOTA_BYTES=str(3 * KiB))
    clients = [server.client("rush") for _ in range(16)]
    try:
        answers = _at_once([(lambda c=c: init(c, KiB)) for c in clients])
    finally:
        for each in clients:
            each.close()

    assert sorted(a.status_code for a in answers) == [201] * 3 + [413] * 13
    with server.client("rush") as client:
        upload_id = next(a.json()["upload_id"] for a in answers if a.status_code == 201)
        assert used(client, upload_id) == 3 * KiB


def test_each_owner_has_its_own_quota(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_QUOTA_BYTES=str(KiB))
    with server.client("one") as one, server.client("two") as two:
        assert init(one, KiB).status_code == 201
        assert init(two, KiB).status_code == 201


def test_no_quota_when_it_is_set_to_zero(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_QUOTA_BYTES="0")
    with server.client("unbounded") as client:
        answer = init(client, 64 * 1024**3)
        assert answer.status_code == 201, answer.text
        quota = status_of(client, answer.json()["upload_id"])["quota"]
        assert quota == {"used": 64 * 1024**3, "limit": None}


def test_the_default_quota_is_one_tib_per_owner(client: httpx.Client) -> None:
    answer = init(client, 10)
    assert status_of(client, answer.json()["upload_id"])["quota"]["limit"] == 1024**4


# -- tus ------------------------------------------------------------------------------------


def test_tus_creation_past_the_quota_is_refused_with_413(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_QUOTA_BYTES=str(MiB))
    with server.client("tus-quota") as client:
        answer = client.post("/files/", headers={**TUS, "Upload-Length": str(MiB + 1)})
        assert_problem(answer, 413, "quota-exceeded")
        assert "Location" not in answer.headers


def test_a_final_upload_repeating_a_partial_past_the_quota_is_refused_with_413(
    make_server: MakeServer,
) -> None:
    server = make_server(CHUNKSTORE_QUOTA_BYTES=str(MiB))
    with server.client("concat") as client:
        part = client.post(
            "/files/", headers={**TUS, "Upload-Length": str(64 * KiB), "Upload-Concat": "partial"}
        )
        assert part.status_code == 201, part.text
        url = part.headers["Location"]
        patched = client.patch(
            url,
            content=os.urandom(64 * KiB),
            headers={
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert patched.status_code == 204, patched.text
        streams_before = upload_ids_of(server)

        final = client.post(
            "/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join([url] * 50)}
        )

        assert_problem(final, 413, "quota-exceeded")
        assert upload_ids_of(server) == streams_before


def test_declaring_a_deferred_length_past_the_quota_is_refused_and_keeps_the_offset(
    make_server: MakeServer,
) -> None:
    server = make_server(CHUNKSTORE_QUOTA_BYTES=str(MiB))
    with server.client("deferred") as client:
        created = client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
        assert created.status_code == 201, created.text
        url = created.headers["Location"]
        upload_id = url.rsplit("/", 1)[-1]
        body = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}

        answer = client.patch(
            url, content=os.urandom(KiB), headers={**body, "Upload-Length": str(2 * MiB)}
        )

        assert_problem(answer, 413, "quota-exceeded")
        assert client.head(url, headers=TUS).headers["Upload-Offset"] == "0"
        assert [type(e).__name__ for e in recorded_events(server.data_dir, upload_id)] == [
            "TusUploadCreated"
        ]
        # Bytes of a still-unknown length count as they arrive: past the quota, refused.
        assert_problem(
            client.patch(url, content=os.urandom(MiB + 1), headers=body), 413, "quota-exceeded"
        )
        fits = client.patch(url, content=b"x" * 100, headers={**body, "Upload-Length": "100"})
        assert fits.status_code == 204, fits.text
