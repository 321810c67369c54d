"""GET /metrics (Prometheus text), the background gc, and what the logs never contain."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from chunkstore.testing import MakeServer, Server
from tests.helpers import (
    OCTET_STREAM,
    UPLOAD,
    assert_problem,
    blake3_hex,
    cancel,
    complete,
    init_upload,
    put_chunk,
    sha256_hex,
    split,
    stored_objects,
    upload_whole,
)

KiB = 1024
RAW_ROUTE = "/api/v1/upload/{upload_id:str}/chunks/{index:int}"


def scrape(server: Server, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_by_route_template_not_by_upload_id(
    make_server: MakeServer,
) -> None:
    server = make_server()
    with server.client("alice") as client:
        upload_whole(client, os.urandom(3 * KiB), KiB)

    samples = scrape(server)

    assert (
        value(
            samples, "chunkstore_http_requests_total", route=RAW_ROUTE, method="PUT", status="200"
        )
        == 3
    )
    assert not any("/chunks/0" in str(labels) for _, labels in samples)
    assert value(samples, "chunkstore_http_request_body_bytes_total", route=RAW_ROUTE) == 3 * KiB


def test_metrics_show_chunks_bytes_dedup_and_sessions_by_status(make_server: MakeServer) -> None:
    server = make_server()
    data = os.urandom(4 * KiB)
    with server.client("alice") as client:
        first = upload_whole(client, data, KiB)
        assert complete(client, first).status_code == 200
        chunks = [{"digest": blake3_hex(piece), "size": KiB} for piece in split(data, KiB)]
        second = init_upload(client, data, KiB, chunks=chunks)
        assert second["needed_chunks"] == []
        third = init_upload(client, os.urandom(KiB), KiB)["upload_id"]
        assert cancel(client, third).status_code == 200

    samples = scrape(server)

    assert value(samples, "chunkstore_chunks_stored_total") == 8
    assert value(samples, "chunkstore_bytes_received_total") == 4 * KiB
    assert value(samples, "chunkstore_bytes_deduplicated_total") == 4 * KiB
    assert value(samples, "chunkstore_sessions", status="completed") == 1
    assert value(samples, "chunkstore_sessions", status="active") == 1
    assert value(samples, "chunkstore_sessions", status="cancelled") == 1
    assert value(samples, "chunkstore_uploads_ended_total", status="completed") == 1


def test_metrics_count_validation_failures_by_reason(make_server: MakeServer) -> None:
    server = make_server()
    data = os.urandom(2 * KiB)
    with server.client("alice") as client:
        upload_id = init_upload(client, data, KiB, file_hash="0" * 64)["upload_id"]
        for index in range(2):
            assert put_chunk(client, upload_id, index, data[index * KiB :][:KiB]).status_code == 200
        assert complete(client, upload_id).status_code == 422

    samples = scrape(server)

    assert value(samples, "chunkstore_validation_failures_total", reason="hash-mismatch") == 1
    assert value(samples, "chunkstore_sessions", status="failed") == 1


def test_metrics_need_no_token_by_default(server: Server) -> None:
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_a_metrics_token_when_configured_is_required(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_METRICS_TOKEN="scrape-secret")

    anonymous = httpx.get(f"{server.url}/metrics")
    wrong = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer nope"})
    owner_token = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.token('alice')}"}
    )

    assert_problem(anonymous, 401, "unauthorized")
    assert_problem(wrong, 401, "unauthorized")
    assert_problem(owner_token, 401, "unauthorized")
    assert scrape(server, Authorization="Bearer scrape-secret")


def test_metrics_can_be_switched_off(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_METRICS="0")

    assert httpx.get(f"{server.url}/metrics").status_code == 404


def test_the_background_gc_sweeps_and_reports_in_metrics(make_server: MakeServer) -> None:
    server = make_server(
        CHUNKSTORE_GC_INTERVAL="0.2", CHUNKSTORE_GC_GRACE="0", CHUNKSTORE_GC_HOURS="0"
    )
    with server.client("alice") as client:
        upload_id = init_upload(client, os.urandom(2 * KiB), KiB)["upload_id"]
        assert put_chunk(client, upload_id, 0, os.urandom(KiB)).status_code == 200
        assert cancel(client, upload_id).status_code == 200

    deadline = time.monotonic() + 30
    samples = scrape(server)
    while value(samples, "chunkstore_gc_blobs_swept_total") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
        samples = scrape(server)

    assert value(samples, "chunkstore_gc_blobs_swept_total") == 1
    assert value(samples, "chunkstore_gc_bytes_freed_total") == KiB
    assert value(samples, "chunkstore_gc_runs_total") >= 1
    assert stored_objects(server.data_dir) == set()


def test_the_background_gc_counts_the_orphan_files_it_removes(make_server: MakeServer) -> None:
    server = make_server(CHUNKSTORE_GC_INTERVAL="0.2", CHUNKSTORE_GC_GRACE="0")
    stray = server.data_dir / "files" / "0123abcd" / "stray.bin"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(os.urandom(KiB))

    deadline = time.monotonic() + 30
    samples = scrape(server)
    while (
        value(samples, "chunkstore_gc_orphan_files_removed_total") < 1
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
        samples = scrape(server)

    assert value(samples, "chunkstore_gc_orphan_files_removed_total") == 1
    assert value(samples, "chunkstore_gc_bytes_freed_total") == KiB
    assert not stray.exists()


def test_logs_never_contain_tokens_or_file_contents(make_server: MakeServer) -> None:
    server = make_server()
    token = server.token("alice")
    marker = b"SECRET-FILE-CONTENT-" + os.urandom(8).hex().encode()
    data = marker.ljust(KiB, b".")
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        upload_id = init_upload(client, data, KiB)["upload_id"]
        client.put(
            f"{UPLOAD}/{upload_id}/chunks/0",
            content=data,
            headers={**OCTET_STREAM, "X-Chunk-Checksum": f"sha256={sha256_hex(data)}"},
        )
        client.put(f"{UPLOAD}/{upload_id}/chunks/9", content=data, headers=OCTET_STREAM)
        complete(client, upload_id)
        client.get(f"/api/v1/files/{upload_id}")
    httpx.get(f"{server.url}/metrics")

    log = server.log()

    assert '"request_id"' in log
    assert token not in log
    assert token.split("_", 1)[1] not in log
    assert marker.decode() not in log
    assert marker.decode() not in httpx.get(f"{server.url}/metrics").text


def test_refused_and_unrouted_requests_are_counted_with_their_real_status(
    make_server: MakeServer,
) -> None:
    server = make_server()
    httpx.get(f"{server.url}{UPLOAD}/status/{'0' * 32}")
    httpx.get(f"{server.url}/no/such/path/{os.urandom(4).hex()}")

    samples = scrape(server)

    status_route = "/api/v1/upload/status/{upload_id:str}"
    assert (
        value(
            samples,
            "chunkstore_http_requests_total",
            route=status_route,
            method="GET",
            status="401",
        )
        == 1
    )
    assert (
        value(
            samples, "chunkstore_http_requests_total", route="unmatched", method="GET", status="404"
        )
        == 1
    )


def test_with_several_workers_every_scrape_counts_every_workers_requests(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path / "data", workers=2).start()
    try:
        auth = {"Authorization": f"Bearer {server.token('alice')}"}
        for number in range(30):
            # A connection each, so the kernel spreads them over both workers.
            answer = httpx.get(f"{server.url}{UPLOAD}/status/missing{number}", headers=auth)
            assert answer.status_code == 404
        route = f"{UPLOAD}/status/{{upload_id:str}}"
        for _ in range(6):
            samples = scrape(server)
            assert (
                value(
                    samples,
                    "chunkstore_http_requests_total",
                    route=route,
                    method="GET",
                    status="404",
                )
                == 30
            )
    finally:
        server.stop()


def test_metrics_name_their_charset_once(server: Server) -> None:
    answer = httpx.get(f"{server.url}/metrics", timeout=30)

    content_type = answer.headers["content-type"]
    assert content_type.count("charset") == 1, content_type
    assert content_type.startswith("text/plain; version="), content_type
