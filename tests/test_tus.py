"""tus 1.0.0 under /files/: the protocol, status code by status code, on real servers."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chunkstore.testing import MakeServer, Server
from tests.helpers import PROBLEM_JSON, pack_files, recorded_events, stored_objects

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_BODY = {**TUS, "Content-Type": "application/offset+octet-stream"}


def metadata(**values: str) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in values.items()
    )


def create(client: httpx.Client, length: int | None, **headers: str) -> str:
    """A new tus upload; returns its URL path (asserts 201)."""
    sizes = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    answer = client.post("/files/", headers={**TUS, **sizes, **headers})
    assert answer.status_code == 201, answer.text
    assert answer.headers["Tus-Resumable"] == "1.0.0"
    location = answer.headers["Location"]
    assert location.startswith("/files/")
    return location


def send(
    client: httpx.Client, url: str, offset: int, data: bytes, **headers: str
) -> httpx.Response:
    return client.patch(
        url, content=data, headers={**OFFSET_BODY, "Upload-Offset": str(offset), **headers}
    )


def offset_of(client: httpx.Client, url: str) -> int:
    answer = client.head(url, headers=TUS)
    assert answer.status_code == 200, answer.status_code
    return int(answer.headers["Upload-Offset"])


def status_of(client: httpx.Client, url: str) -> dict[str, object]:
    answer = client.get(f"/api/v1/upload/status/{url.rsplit('/', 1)[-1]}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def final_bytes(server: Server, client: httpx.Client, url: str) -> bytes:
    status = status_of(client, url)
    assert status["status"] == "completed", status
    return (server.data_dir / str(status["file_path"])).read_bytes()


def assert_problem(answer: httpx.Response, status: int) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["Tus-Resumable"] == "1.0.0"
    assert answer.headers["Content-Type"].startswith(PROBLEM_JSON)
    if answer.request.method != "HEAD":  # a HEAD answer has the headers, never a body
        assert answer.json()["status"] == status


# -- core -----------------------------------------------------------------------------------


def test_options_lists_version_extensions_max_size_and_checksums(client: httpx.Client) -> None:
    answer = client.options("/files/")
    assert answer.status_code == 204
    assert answer.headers["Tus-Version"] == "1.0.0"
    extensions = set(answer.headers["Tus-Extension"].split(","))
    assert extensions == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
    }
    assert int(answer.headers["Tus-Max-Size"]) > 0
    assert set(answer.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256", "md5"}
    assert answer.headers["Tus-Resumable"] == "1.0.0"


def test_head_reports_offset_length_metadata_and_no_store(client: httpx.Client) -> None:
    sent = metadata(filename="notes.txt", filetype="text/plain")
    url = create(client, 1000, **{"Upload-Metadata": sent})
    answer = client.head(url, headers=TUS)
    assert answer.status_code == 200
    assert answer.headers["Upload-Offset"] == "0"
    assert answer.headers["Upload-Length"] == "1000"
    assert answer.headers["Upload-Metadata"] == sent
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Tus-Resumable"] == "1.0.0"


def test_patch_appends_and_answers_204_with_the_new_offset(client: httpx.Client) -> None:
    url = create(client, 3 * MiB)
    answer = send(client, url, 0, os.urandom(MiB + 7))
    assert answer.status_code == 204
    assert answer.headers["Upload-Offset"] == str(MiB + 7)
    assert answer.headers["Tus-Resumable"] == "1.0.0"
    assert offset_of(client, url) == MiB + 7


def test_patch_at_the_wrong_offset_is_409_and_changes_nothing(client: httpx.Client) -> None:
    url = create(client, 1000)
    assert send(client, url, 0, b"a" * 100).status_code == 204
    answer = send(client, url, 50, b"b" * 100)
    assert_problem(answer, 409)
    assert offset_of(client, url) == 100


def test_patch_with_another_content_type_is_415(client: httpx.Client) -> None:
    url = create(client, 10)
    answer = client.patch(
        url,
        content=b"0123456789",
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/octet-stream"},
    )
    assert_problem(answer, 415)
    assert offset_of(client, url) == 0


def test_an_unsupported_tus_version_is_412_with_the_supported_one(client: httpx.Client) -> None:
    answer = client.post("/files/", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "5"})
    assert_problem(answer, 412)
    assert answer.headers["Tus-Version"] == "1.0.0"


def test_x_http_method_override_turns_a_post_into_patch_and_head(client: httpx.Client) -> None:
    url = create(client, 4)
    answer = client.post(
        url,
        content=b"abcd"[:2],
        headers={**OFFSET_BODY, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )
    assert answer.status_code == 204
    answer = client.post(url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert answer.headers["Upload-Offset"] == "2"


def test_requests_without_a_token_are_401_problems_with_tus_resumable(server: Server) -> None:
    with httpx.Client(base_url=server.url) as anonymous:
        answer = anonymous.post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert_problem(answer, 401)


def test_another_owners_upload_is_404(server: Server, client: httpx.Client) -> None:
    url = create(client, 10)
    with server.client("someone-else") as other:
        assert_problem(other.head(url, headers=TUS), 404)
        assert_problem(send(other, url, 0, b"x" * 10), 404)
        assert_problem(other.delete(url, headers=TUS), 404)
    assert offset_of(client, url) == 0


# -- creation -------------------------------------------------------------------------------


def test_creation_over_the_max_size_is_413(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_MAX_FILE_SIZE="1000")
    with server.client("alice") as client:
        answer = client.post("/files/", headers={**TUS, "Upload-Length": "1001"})
        assert_problem(answer, 413)
        assert client.options("/files/").headers["Tus-Max-Size"] == "1000"


def test_metadata_filename_and_filetype_name_the_file(server: Server, client: httpx.Client) -> None:
    data = b"Plain words and nothing more.\n" * 40
    url = create(
        client,
        len(data),
        **{"Upload-Metadata": metadata(filename="words.txt", filetype="text/plain")},
    )
    assert send(client, url, 0, data).status_code == 204
    status = status_of(client, url)
    assert status["filename"] == "words.txt"
    assert status["mime_type"] == "text/plain"
    assert str(status["file_path"]).endswith("/words.txt")
    assert final_bytes(server, client, url) == data


def test_a_dangerous_filename_in_metadata_is_refused(client: httpx.Client) -> None:
    answer = client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "5", "Upload-Metadata": metadata(filename="../x.sh")},
    )
    assert_problem(answer, 400)


@pytest.mark.parametrize(
    "filename",
    ["x.exe\u200b", "x\u202egnp.js", "a\uff0fb.txt"],
    ids=["zero-width-space", "bidi-override", "fullwidth-solidus"],
)
def test_a_metadata_filename_that_reads_as_something_it_is_not_is_refused(
    client: httpx.Client, filename: str
) -> None:
    answer = client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "5", "Upload-Metadata": metadata(filename=filename)},
    )
    assert_problem(answer, 400)
    assert answer.json()["type"] == "/problems/invalid-filename"


def test_creation_with_upload_stores_the_body_and_reports_its_offset(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(300_000)
    answer = client.post(
        "/files/",
        content=data[:200_000],
        headers={**OFFSET_BODY, "Upload-Length": str(len(data))},
    )
    assert answer.status_code == 201
    assert answer.headers["Upload-Offset"] == "200000"
    url = answer.headers["Location"]
    assert send(client, url, 200_000, data[200_000:]).status_code == 204
    assert final_bytes(server, client, url) == data


def test_creation_with_upload_reads_a_chunked_body(server: Server, client: httpx.Client) -> None:
    data = os.urandom(3 * MiB + 5)
    first = data[: 2 * MiB]
    answer = client.post(
        "/files/",
        content=(first[start : start + 256 * 1024] for start in range(0, len(first), 256 * 1024)),
        headers={**OFFSET_BODY, "Upload-Length": str(len(data))},
    )
    assert "content-length" not in answer.request.headers
    assert answer.request.headers["transfer-encoding"] == "chunked"
    assert answer.status_code == 201, answer.text
    assert answer.headers["Upload-Offset"] == str(len(first))
    url = answer.headers["Location"]
    assert offset_of(client, url) == len(first)
    assert send(client, url, len(first), data[len(first) :]).status_code == 204
    assert final_bytes(server, client, url) == data


def test_creation_with_upload_refused_by_its_checksum_says_where_the_upload_is(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(300_000)
    answer = client.post(
        "/files/",
        content=data[:200_000],
        headers={
            **OFFSET_BODY,
            "Upload-Length": str(len(data)),
            "Upload-Checksum": checksum("sha1", b"other bytes"),
        },
    )
    assert_problem(answer, 460)
    url = answer.headers["Location"]
    assert offset_of(client, url) == 0
    assert send(client, url, 0, data).status_code == 204
    assert final_bytes(server, client, url) == data


def test_deferred_length_is_declared_by_a_later_patch(server: Server, client: httpx.Client) -> None:
    data = os.urandom(500_000)
    url = create(client, None)
    head = client.head(url, headers=TUS)
    assert head.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head.headers
    assert send(client, url, 0, data[:123_456]).status_code == 204
    answer = send(client, url, 123_456, data[123_456:], **{"Upload-Length": str(len(data))})
    assert answer.status_code == 204
    assert client.head(url, headers=TUS).headers["Upload-Length"] == str(len(data))
    assert final_bytes(server, client, url) == data


def test_an_empty_upload_completes_at_creation(server: Server, client: httpx.Client) -> None:
    url = create(client, 0)
    assert final_bytes(server, client, url) == b""


# -- completion and storage -----------------------------------------------------------------


def test_reaching_the_length_completes_through_the_validator(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(2 * MiB + 12345)
    url = create(client, len(data))
    offset = 0
    for piece in (data[:700_001], data[700_001 : MiB * 2], data[MiB * 2 :]):
        answer = send(client, url, offset, piece)
        assert answer.status_code == 204
        offset += len(piece)
    status = status_of(client, url)
    assert status["sha256"] == hashlib.sha256(data).hexdigest()
    assert status["missing_chunks"] == []
    # The stream was cut by content: chunks of tens of KiB, not one per request.
    assert len(status["received_chunks"]) > 10  # type: ignore[arg-type]
    assert final_bytes(server, client, url) == data


def test_a_validation_failure_at_the_end_is_422(client: httpx.Client) -> None:
    script = b"#!/bin/sh\necho hello\n" * 10
    url = create(client, len(script), **{"Upload-Metadata": metadata(filename="notes.txt")})
    answer = send(client, url, 0, script)
    assert_problem(answer, 422)
    assert status_of(client, url)["status"] == "failed"


# -- expiration -----------------------------------------------------------------------------


def test_patch_answers_carry_upload_expires(client: httpx.Client) -> None:
    url = create(client, 10)
    answer = send(client, url, 0, b"12345")
    assert "GMT" in answer.headers["Upload-Expires"]


def test_an_expired_upload_is_410(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_SESSION_TTL="0")
    with server.client("alice") as client:
        url = create(client, 10)
        assert_problem(send(client, url, 0, b"12345"), 410)
        assert_problem(client.head(url, headers=TUS), 410)


# -- checksum -------------------------------------------------------------------------------


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
def test_a_matching_checksum_is_accepted(
    server: Server, client: httpx.Client, algorithm: str
) -> None:
    data = os.urandom(200_000)
    url = create(client, len(data))
    answer = send(client, url, 0, data, **{"Upload-Checksum": checksum(algorithm, data)})
    assert answer.status_code == 204
    assert final_bytes(server, client, url) == data


def test_a_checksum_mismatch_is_460_and_keeps_no_byte(server: Server, client: httpx.Client) -> None:
    data = os.urandom(300_000)
    url = create(client, len(data))
    assert send(client, url, 0, data[:100_000]).status_code == 204
    wrong = checksum("sha1", b"other bytes")
    answer = send(client, url, 100_000, data[100_000:], **{"Upload-Checksum": wrong})
    assert_problem(answer, 460)
    assert offset_of(client, url) == 100_000
    right = checksum("sha1", data[100_000:])
    assert (
        send(client, url, 100_000, data[100_000:], **{"Upload-Checksum": right}).status_code == 204
    )
    assert final_bytes(server, client, url) == data


def test_an_unknown_checksum_algorithm_is_400(client: httpx.Client) -> None:
    url = create(client, 10)
    answer = send(client, url, 0, b"0123456789", **{"Upload-Checksum": "crc99 AAAA"})
    assert_problem(answer, 400)
    assert offset_of(client, url) == 0


def test_a_malformed_checksum_on_a_creation_without_body_is_400(client: httpx.Client) -> None:
    answer = client.post(
        "/files",
        headers={**TUS, "Upload-Defer-Length": "1", "Upload-Checksum": "s!cd/Jf\tButOfp3"},
    )

    assert_problem(answer, 400)
    assert "Location" not in answer.headers


def test_a_patch_to_an_upload_started_through_the_json_api_is_refused_and_stores_nothing(
    server: Server, client: httpx.Client
) -> None:
    init = client.post(
        "/api/v1/upload/init",
        json={"filename": "a.bin", "total_size": 2 * MiB, "chunk_size": MiB},
    )
    assert init.status_code == 201, init.text
    upload_id = init.json()["upload_id"]
    objects_before = stored_objects(server.data_dir)

    answer = send(client, f"/files/{upload_id}", 0, os.urandom(MiB))

    assert_problem(answer, 409)
    assert answer.json()["type"] == "/problems/not-a-tus-upload"
    assert [type(e).__name__ for e in recorded_events(server.data_dir, upload_id)] == [
        "UploadInitiated"
    ]
    assert stored_objects(server.data_dir) == objects_before
    status = client.get(f"/api/v1/upload/status/{upload_id}").json()
    assert status["percentage"] == 0 and status["missing_chunks"] == [0, 1]


# -- termination ----------------------------------------------------------------------------


def test_delete_terminates_the_upload(server: Server, client: httpx.Client) -> None:
    url = create(client, 1000)
    assert send(client, url, 0, b"z" * 500).status_code == 204
    answer = client.delete(url, headers=TUS)
    assert answer.status_code == 204
    assert answer.headers["Tus-Resumable"] == "1.0.0"
    assert_problem(client.head(url, headers=TUS), 404)
    assert send(client, url, 500, b"z" * 500).status_code in (404, 409)
    upload_id = url.rsplit("/", 1)[-1]
    assert not list((server.data_dir / "staging").glob(f"{upload_id}*"))


def test_delete_of_a_completed_upload_deletes_it_and_its_file(
    server: Server, client: httpx.Client
) -> None:
    data = os.urandom(300_000)
    url = create(client, len(data))
    assert send(client, url, 0, data).status_code == 204
    final = server.data_dir / str(status_of(client, url)["file_path"])
    assert final.read_bytes() == data

    answer = client.delete(url, headers=TUS)

    assert answer.status_code == 204
    assert answer.headers["Tus-Resumable"] == "1.0.0"
    assert not final.exists()
    assert_problem(client.head(url, headers=TUS), 404)
    assert status_of(client, url)["status"] == "deleted"
    assert client.get(f"/api/v1/files/{url.rsplit('/', 1)[-1]}").status_code == 404
    assert_problem(client.delete(url, headers=TUS), 404)


# -- concatenation --------------------------------------------------------------------------


def test_partial_uploads_concatenate_into_a_final_one(server: Server, client: httpx.Client) -> None:
    first, second = os.urandom(400_000), os.urandom(250_000)
    parts = []
    for data in (first, second):
        url = create(client, len(data), **{"Upload-Concat": "partial"})
        assert send(client, url, 0, data).status_code == 204
        assert client.head(url, headers=TUS).headers["Upload-Concat"] == "partial"
        parts.append(url)
    answer = client.post("/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)})
    assert answer.status_code == 201, answer.text
    final = answer.headers["Location"]
    head = client.head(final, headers=TUS)
    assert head.headers["Upload-Concat"] == "final;" + " ".join(parts)
    assert head.headers["Upload-Offset"] == str(len(first) + len(second))
    assert final_bytes(server, client, final) == first + second
    assert_problem(send(client, final, 0, b"more"), 403)


def test_an_unfinished_partial_cannot_be_concatenated(client: httpx.Client) -> None:
    url = create(client, 100, **{"Upload-Concat": "partial"})
    assert send(client, url, 0, b"x" * 10).status_code == 204
    answer = client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{url}"})
    assert_problem(answer, 400)


# -- CORS -----------------------------------------------------------------------------------


def test_cors_preflight_and_exposed_headers(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_CORS_ORIGINS="https://app.example")
    origin = {"Origin": "https://app.example"}
    with server.client("alice") as client:
        preflight = client.options(
            "/files/",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "upload-length, tus-resumable",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
        assert "upload-offset" in preflight.headers["Access-Control-Allow-Headers"].lower()
        answer = client.post("/files/", headers={**TUS, **origin, "Upload-Length": "3"})
        assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
        exposed = answer.headers["Access-Control-Expose-Headers"].lower()
        assert "location" in exposed and "upload-offset" in exposed
        stranger = client.post(
            "/files/", headers={**TUS, "Origin": "https://evil.example", "Upload-Length": "3"}
        )
        assert "Access-Control-Allow-Origin" not in stranger.headers


# -- GET on an upload's URL: the download, as tusd serves it ---------------------------------


def test_get_on_a_completed_upload_url_downloads_it_whole_and_by_range(
    client: httpx.Client,
) -> None:
    data = os.urandom(MiB + 123)
    url = create(client, len(data))
    assert send(client, url, 0, data).status_code == 204

    whole = client.get(url)
    part = client.get(url, headers={"Range": "bytes=1000-1999"})
    same = client.get(f"/api/v1/files/{url.rsplit('/', 1)[-1]}")

    assert whole.status_code == 200
    assert whole.content == data
    assert whole.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert part.status_code == 206
    assert part.content == data[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert same.content == data and same.headers["ETag"] == whole.headers["ETag"]


def test_get_on_another_owners_upload_url_is_404(server: Server, client: httpx.Client) -> None:
    url = create(client, 5)
    assert send(client, url, 0, b"12345").status_code == 204

    with server.client("someone-else") as stranger:
        answer = stranger.get(url)

    assert_problem(answer, 404)
    assert answer.json()["type"] == "/problems/upload-not-found"


def test_get_on_an_unfinished_upload_url_is_409_file_not_ready(client: httpx.Client) -> None:
    url = create(client, 10)
    assert send(client, url, 0, b"12345").status_code == 204

    answer = client.get(url)

    assert_problem(answer, 409)
    assert answer.json()["type"] == "/problems/file-not-ready"


# -- concurrency and durability ---------------------------------------------------------------


def test_two_patches_at_once_never_interleave_and_the_loser_retries(
    server: Server, client: httpx.Client
) -> None:
    first, rival_bytes, rest = os.urandom(MiB), os.urandom(MiB), os.urandom(MiB)
    url = create(client, 2 * MiB)
    started = threading.Event()
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield first[: 64 * 1024]
        started.set()
        release.wait(60)
        yield first[64 * 1024 :]

    outcome: dict[str, httpx.Response] = {}

    def slow_patch() -> None:
        with server.client(None, headers=dict(client.headers)) as other:
            outcome["slow"] = send(other, url, 0, slow_body())  # type: ignore[arg-type]

    worker = threading.Thread(target=slow_patch)
    worker.start()
    started.wait(60)
    rival = send(client, url, 0, rival_bytes)
    release.set()
    worker.join(60)
    slow = outcome["slow"]
    # Whichever got the upload first wrote all its bytes; the other was refused whole
    # (423 while the first held the upload, 409 once the offset had moved on).
    statuses = sorted([slow.status_code, rival.status_code])
    assert statuses[0] == 204
    assert statuses[1] in (409, 423)
    winner = first if slow.status_code == 204 else rival_bytes
    # The loser retries the way tus clients do: HEAD for the offset, then go on.
    offset = offset_of(client, url)
    assert offset == MiB
    assert send(client, url, offset, rest).status_code == 204
    assert final_bytes(server, client, url) == winner + rest


def test_a_broken_body_keeps_the_bytes_that_arrived(server: Server, client: httpx.Client) -> None:
    data = os.urandom(MiB)
    url = create(client, len(data))
    sent = 300_000
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        head = (
            f"PATCH {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {client.headers['Authorization']}\r\n"
            "Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: 0\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        raw.sendall(head.encode() + data[:sent])
    deadline = time.monotonic() + 60
    while offset_of(client, url) != sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert offset_of(client, url) == sent
    assert send(client, url, sent, data[sent:]).status_code == 204
    assert final_bytes(server, client, url) == data


@pytest.mark.slow
def test_kill_9_between_patches_loses_no_acknowledged_byte(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server()
    data = os.urandom(5 * MiB + 4321)
    with server.client("alice") as client:
        url = create(client, len(data))
        acknowledged = 0
        for piece in (data[:1_234_567], data[1_234_567:3_000_001]):
            answer = send(client, url, acknowledged, piece)
            assert answer.status_code == 204
            acknowledged = int(answer.headers["Upload-Offset"])
    server.kill9()
    server.start()
    with server.client("alice") as client:
        assert offset_of(client, url) == acknowledged == 3_000_001
        assert send(client, url, acknowledged, data[acknowledged:]).status_code == 204
        assert final_bytes(server, client, url) == data


def objects_bytes(data_dir: Path) -> int:
    """Bytes of the pack files on disk."""
    return sum(pack.stat().st_size for pack in pack_files(data_dir))


def upload_whole(client: httpx.Client, data: bytes, piece: int = 8 * MiB) -> str:
    url = create(client, len(data))
    for offset in range(0, len(data), piece):
        answer = send(client, url, offset, data[offset : offset + piece])
        assert answer.status_code == 204, answer.text
    return url


@pytest.mark.slow
def test_a_one_byte_insert_costs_under_ten_percent_of_the_file(
    make_server: MakeServer,
) -> None:
    server = make_server()
    size = 64 * MiB
    data = os.urandom(size)
    edited = data[: size // 3] + b"!" + data[size // 3 :]
    with server.client("alice") as client:
        upload_whole(client, data)
        before = objects_bytes(server.data_dir)
        url = upload_whole(client, edited)
        grown = objects_bytes(server.data_dir) - before
        assert final_bytes(server, client, url) == edited
    print(
        f"\nsecond upload grew the packs by {grown} bytes ({100 * grown / size:.3f}% of the file)"
    )
    assert grown < size / 10


@pytest.mark.slow
def test_kill_9_during_a_patch_body_keeps_exactly_the_acknowledged_offset(
    make_server: MakeServer,
) -> None:
    server = make_server()
    data = os.urandom(12 * MiB + 99)
    acknowledged = 2 * MiB + 17
    in_flight, killed = threading.Event(), threading.Event()

    def body_then_stall() -> Iterator[bytes]:
        yield data[acknowledged : acknowledged + 5 * MiB]
        in_flight.set()
        killed.wait(60)  # the server dies in the middle of this body
        yield data[acknowledged + 5 * MiB :]

    with server.client("alice") as client:
        url = create(client, len(data))
        assert send(client, url, 0, data[:acknowledged]).status_code == 204
        failure: list[BaseException] = []

        def doomed_patch() -> None:
            try:
                send(client, url, acknowledged, body_then_stall())  # type: ignore[arg-type]
            except httpx.HTTPError as error:
                failure.append(error)

        worker = threading.Thread(target=doomed_patch, daemon=True)
        worker.start()
        in_flight.wait(60)
        server.kill9()
        killed.set()
        worker.join(60)
    server.start()
    with server.client("alice") as client:
        assert offset_of(client, url) == acknowledged
        assert send(client, url, acknowledged, data[acknowledged:]).status_code == 204
        assert final_bytes(server, client, url) == data


def test_json_complete_on_an_unfinished_tus_upload_is_refused_and_changes_nothing(
    server: Server,
) -> None:
    with server.client("tus-json-complete") as client:
        created = client.post(
            "/files/",
            headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1000"},
        )
        assert created.status_code == 201, created.text
        upload_id = created.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
        patched = client.patch(
            f"/files/{upload_id}",
            content=b"x" * 400,
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert patched.status_code == 204, patched.text

        answer = client.post("/api/v1/upload/complete", json={"upload_id": upload_id})

        assert answer.status_code == 409, answer.text
        assert answer.json()["type"] == "/problems/upload-incomplete"
        status = client.get(f"/api/v1/upload/status/{upload_id}").json()
        assert status["status"] == "active"


def test_options_on_an_upload_url_lists_every_method_it_serves(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        answer = anonymous.options("/files/0123456789abcdef")

    assert answer.status_code == 204
    assert set(answer.headers["Allow"].replace(" ", "").split(",")) == {
        "DELETE",
        "GET",
        "HEAD",
        "OPTIONS",
        "PATCH",
    }
    assert answer.headers["Tus-Version"] == "1.0.0"
    assert answer.headers["Tus-Resumable"] == "1.0.0"


def test_a_checksum_mismatch_is_answered_with_the_status_its_page_states(
    client: httpx.Client,
) -> None:
    url = create(client, 10)

    answer = send(client, url, 0, b"0123456789", **{"Upload-Checksum": checksum("sha1", b"x")})

    assert_problem(answer, 460)
    page = client.get(answer.json()["type"])
    assert page.json()["status"] == 460
    assert offset_of(client, url) == 0
