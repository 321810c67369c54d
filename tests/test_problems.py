"""One registry of errors: every error class has a status, a problem type, a page under
``/problems/`` and the headers its answer carries, wherever it is raised."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import api.app  # noqa: F401 - imports every module that defines an error class
from api import problems
from chunkstore.errors import ChunkstoreError
from chunkstore.testing import Server, free_port
from tests.error_app import EXTENSIONS, error_classes
from tests.helpers import PROBLEM_JSON

ROOT = Path(__file__).resolve().parent.parent


def all_error_classes() -> list[type[ChunkstoreError]]:
    return sorted(error_classes().values(), key=lambda cls: cls.__name__)


def test_every_error_class_of_the_library_has_its_own_registry_entry() -> None:
    unregistered = [
        cls.__name__ for cls in all_error_classes() if cls not in problems.STATUS_BY_ERROR
    ]

    assert unregistered == [], "add them to problems.STATUS_BY_ERROR"


def test_every_error_class_documents_what_the_client_should_do() -> None:
    undocumented = [cls.__name__ for cls in all_error_classes() if not (cls.__doc__ or "").strip()]

    assert undocumented == []


def test_slugs_name_one_problem_type_each() -> None:
    classes_by_slug: dict[str, list[str]] = {}
    for cls in all_error_classes():
        classes_by_slug.setdefault(cls.slug, []).append(cls.__name__)

    assert {slug: names for slug, names in classes_by_slug.items() if len(names) > 1} == {}


def test_every_problem_type_the_server_can_answer_has_a_page(server: Server) -> None:
    slugs = {cls.slug for cls in all_error_classes()} | set(problems.SLUG_BY_HTTP_STATUS.values())
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        pages = {slug: anonymous.get(f"/problems/{slug}") for slug in sorted(slugs)}

    missing = [slug for slug, page in pages.items() if page.status_code != 200]
    assert missing == []
    for slug, page in pages.items():
        body = page.json()
        assert body["type"] == f"/problems/{slug}"
        assert body["status"] == problems.REGISTRY[slug].status
        assert body["description"]


def test_the_pages_of_the_tus_problems_state_the_status_tus_prescribes(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        statuses = {
            slug: anonymous.get(f"/problems/{slug}").json()["status"]
            for slug in (
                "offset-mismatch",
                "upload-locked",
                "final-upload-immutable",
                "unsupported-tus-version",
                "tus-checksum-mismatch",
                "range-not-satisfiable",
            )
        }

    assert statuses == {
        "offset-mismatch": 409,
        "upload-locked": 423,
        "final-upload-immutable": 403,
        "unsupported-tus-version": 412,
        "tus-checksum-mismatch": 460,
        "range-not-satisfiable": 416,
    }


def test_an_unknown_problem_type_is_a_404_problem(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        answer = anonymous.get("/problems/no-such-problem")

    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith(PROBLEM_JSON)
    assert answer.json()["type"] == "/problems/not-found"


@pytest.fixture(scope="module")
def error_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app plus a route that raises any error class (tests/error_app.py), served by
    uvicorn on 127.0.0.1."""
    data = tmp_path_factory.mktemp("errors") / "data"
    data.mkdir()
    port = free_port()
    log = open(data.parent / "server.log", "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "tests.error_app:create",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env={**os.environ, "CHUNKSTORE_DATA": str(data), "CHUNKSTORE_GC_INTERVAL": "0"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (data.parent / "server.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the error app did not start"
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_an_error_raised_by_any_route_is_answered_as_its_registry_entry_says(
    error_server: str, cls: type[ChunkstoreError]
) -> None:
    kind = problems.problem_type(cls)
    with httpx.Client(base_url=error_server, timeout=30) as anonymous:
        answer = anonymous.get(f"/raise/{cls.__name__}")

    assert answer.status_code == kind.status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM_JSON)
    body = answer.json()
    assert body["type"] == f"/problems/{cls.slug}"
    assert body["status"] == kind.status
    for header in kind.headers:
        assert answer.headers[header.name] == header.value(cls("", **EXTENSIONS)), header.name


def test_offset_mismatch_outside_the_tus_routes_carries_the_offset(error_server: str) -> None:
    with httpx.Client(base_url=error_server, timeout=30) as anonymous:
        answer = anonymous.get("/raise/OffsetMismatch")

    assert answer.status_code == 409
    assert answer.headers["Upload-Offset"] == "7"
    assert answer.json()["type"] == "/problems/offset-mismatch"
