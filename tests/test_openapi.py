"""The OpenAPI document is true to the server: schemathesis runs every check against a
real server and finds nothing; the document and its docs page are served, offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from chunkstore.testing import MakeServer, Server

ROOT = Path(__file__).resolve().parent.parent
SCHEMATHESIS_CONFIG = ROOT / "tests" / "schemathesis.toml"
#: Test cases per operation and phase: about 1,000 requests, well under a minute here.
EXAMPLES = int(os.environ.get("CHUNKSTORE_SCHEMATHESIS_EXAMPLES", "25"))
#: A fixed seed, so that a run can be replayed; set another to explore further.
SEED = os.environ.get("CHUNKSTORE_SCHEMATHESIS_SEED", "20261201")
PUBLIC_OPERATIONS = {
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/problems/{slug}"),
    ("options", "/files"),
}


@pytest.mark.slow
def test_schemathesis_finds_no_failure_with_every_check(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server()
    token = server.token("schemathesis")
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(SCHEMATHESIS_CONFIG),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        SEED,
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )

    report = result.stdout + result.stderr
    assert result.returncode == 0, f"schemathesis found failures:\n{report}"
    assert re.search(r"\d+ generated, \d+ passed", report), report


def operations(document: dict) -> dict[tuple[str, str], dict]:  # type: ignore[type-arg]
    return {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in ("get", "put", "post", "delete", "options", "head", "patch")
    }


def test_the_openapi_document_is_served_at_openapi_json_without_a_token(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        answer = anonymous.get("/openapi.json")
        older = anonymous.get("/schema/openapi.json")

    assert answer.status_code == 200
    document = answer.json()
    assert document["openapi"].startswith("3.")
    assert older.json() == document


def test_only_the_routes_that_need_no_token_are_marked_public(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        document = anonymous.get("/openapi.json").json()

    public = {
        key for key, operation in operations(document).items() if operation.get("security") == []
    }
    assert public == PUBLIC_OPERATIONS
    assert document["security"] == [{"bearer": []}]


def test_every_error_answer_is_documented_as_problem_json(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        document = anonymous.get("/openapi.json").json()

    for (method, path), operation in operations(document).items():
        for status, response in operation["responses"].items():
            if int(status) >= 400 and method != "head":
                assert list(response["content"]) == ["application/problem+json"], (path, status)
        if (method, path) not in PUBLIC_OPERATIONS:
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], (method, path)


def test_tus_headers_and_raw_bodies_are_described(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        document = anonymous.get("/openapi.json").json()
    found = operations(document)

    patch = found[("patch", "/files/{upload_id}")]
    headers = {
        parameter["name"] for parameter in patch["parameters"] if parameter["in"] == "header"
    }
    assert {"Tus-Resumable", "Upload-Offset", "Upload-Checksum"} <= headers
    assert list(patch["requestBody"]["content"]) == ["application/offset+octet-stream"]
    assert "Upload-Offset" in patch["responses"]["204"]["headers"]
    assert "Upload-Offset" in patch["responses"]["409"]["headers"]
    assert "Retry-After" in patch["responses"]["423"]["headers"]
    assert "Tus-Version" in patch["responses"]["412"]["headers"]
    assert "Location" in found[("post", "/files")]["responses"]["201"]["headers"]
    raw = found[("put", "/api/v1/upload/{upload_id}/chunks/{index}")]
    assert list(raw["requestBody"]["content"]) == ["application/octet-stream"]
    batch = found[("post", "/api/v1/upload/{upload_id}/batch")]
    assert list(batch["requestBody"]["content"]) == ["application/vnd.chunkstore.batch"]


def test_the_docs_page_needs_nothing_from_elsewhere(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        page = anonymous.get("/docs")
        document = anonymous.get("/openapi.json").json()

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<script" not in html.lower()
    assert "@import" not in html and "url(" not in html
    links = re.findall(r'(?:href|src)="([^"]*)"', html)
    assert links and all(link.startswith(("/", "#")) for link in links), links
    for path in document["paths"]:
        assert f"{path}</" in html.replace("&#x27;", "'"), path
    assert 'href="/problems/offset-mismatch"' in html


def test_the_schema_url_named_before_still_serves_the_document(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        answer = anonymous.get("/schema")

    assert answer.status_code == 200
    assert "/api/v1/upload/init" in answer.json()["paths"]
