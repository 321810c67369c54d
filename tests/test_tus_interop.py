"""Stock tus clients, unmodified, against a real server: tuspy (Python) and tus-js-client
(Node). Each upload must arrive byte-exact, also when connections are cut midway."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
from tusclient import client as tus_client

from chunkstore.testing import Server
from tests.flaky_proxy import FlakyProxy

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
#: tus-js-client at the versions of tests/tus-js/package-lock.json, installed by ./run test
#: into the virtualenv, next to the Python packages.
NODE_MODULES = ROOT / ".venv" / "tus-js" / "node_modules"
NODE_UPLOAD = ROOT / "tests" / "tus-js" / "upload.js"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while piece := source.read(MiB):
            digest.update(piece)
    return digest.hexdigest()


def write_random(path: Path, size: int) -> Path:
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            piece = min(remaining, 4 * MiB)
            out.write(os.urandom(piece))
            remaining -= piece
    return path


def completed_file(server: Server, owner: str, url: str) -> Path:
    upload_id = url.rstrip("/").rsplit("/", 1)[-1]
    with server.client(owner) as api:
        status = api.get(f"/api/v1/upload/status/{upload_id}").json()
    assert status["status"] == "completed", status
    return server.data_dir / status["file_path"]


# -- tuspy -------------------------------------------------------------------------------


def test_tuspy_uploads_a_file_byte_exact(server: Server, owner: str, tmp_path: Path) -> None:
    path = write_random(tmp_path / "file.bin", 5 * MiB + 333)
    client = tus_client.TusClient(
        f"{server.url}/files/", headers={"Authorization": f"Bearer {server.token(owner)}"}
    )
    uploader = client.uploader(str(path), chunk_size=MiB, metadata={"filename": "py.bin"})
    uploader.upload()
    final = completed_file(server, owner, uploader.url)
    assert final.name == "py.bin"
    assert sha256_of(final) == sha256_of(path)


def test_tuspy_resumes_after_cut_connections_and_finishes_byte_exact(
    server: Server, owner: str, tmp_path: Path
) -> None:
    path = write_random(tmp_path / "file.bin", 12 * MiB + 5)
    token = server.token(owner)
    # Every connection is cut after a random number of bytes, until four have been; the
    # client then asks HEAD for the offset and goes on from there.
    with FlakyProxy(
        server.port, drop_probability=1.0, max_cut_after=MiB, max_drops=4, seed=5
    ) as proxy:
        client = tus_client.TusClient(
            f"{proxy.url}/files/", headers={"Authorization": f"Bearer {token}"}
        )
        uploader = client.uploader(str(path), chunk_size=2 * MiB, retries=20, retry_delay=0)
        try:
            uploader.upload()
        except Exception:
            # A cut during creation or during a HEAD is not retried by tuspy; a new
            # uploader for the same URL resumes from the server's offset.
            assert uploader.url, "the upload was never created"
            uploader = client.uploader(
                str(path), url=uploader.url, chunk_size=2 * MiB, retries=20, retry_delay=0
            )
            uploader.upload()
    print(f"\nproxy: {proxy.connections} connections, {proxy.drops} cut")
    assert proxy.drops >= 1
    assert sha256_of(completed_file(server, owner, uploader.url)) == sha256_of(path)


# -- tus-js-client -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tus_js() -> Path:
    """The Node script that uploads with tus-js-client (``./run test`` installs both)."""
    assert shutil.which("node"), "Node.js is needed: ./run test installs it"
    assert (NODE_MODULES / "tus-js-client").is_dir(), "./run test installs tus-js-client"
    return NODE_UPLOAD


class NodeUpload(NamedTuple):
    url: str
    #: The Upload-Offset of the creation answer (the bytes sent with the POST).
    creation_offset: int


def node_upload(
    script: Path,
    endpoint: str,
    token: str,
    path: Path,
    chunk_size: str,
    with_creation: bool,
    package: str = "tus-js-client",
) -> NodeUpload:
    """Upload ``path`` with tus-js-client (``package``: a name from tests/tus-js/package.json)."""
    done = subprocess.run(
        [
            "node",
            str(script),
            endpoint,
            token,
            str(path),
            chunk_size,
            "yes" if with_creation else "no",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES), "TUS_JS_CLIENT": package},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return NodeUpload(str(result["url"]), int(result["creationOffset"]))


@pytest.mark.parametrize(
    ("chunk_size", "with_creation"),
    [(str(MiB), False), ("all", True)],
    ids=["1MiB-patches", "creation-with-upload"],
)
def test_tus_js_client_uploads_a_file_byte_exact(
    server: Server,
    owner: str,
    tmp_path: Path,
    tus_js: Path,
    chunk_size: str,
    with_creation: bool,
) -> None:
    path = write_random(tmp_path / "file.bin", 3 * MiB + 77)
    url = node_upload(
        tus_js, f"{server.url}/files/", server.token(owner), path, chunk_size, with_creation
    ).url
    final = completed_file(server, owner, url)
    assert final.name == "from-node.bin"
    assert sha256_of(final) == sha256_of(path)


@pytest.mark.parametrize(
    "package", ["tus-js-client", "tus-js-client-5"], ids=["4.3.1", "5.0.0-pre2"]
)
def test_tus_js_client_creation_with_upload_sends_the_whole_buffer_with_the_post(
    server: Server, owner: str, tmp_path: Path, tus_js: Path, package: str
) -> None:
    # 4.3.1 sends a Buffer's bytes with the POST with a Content-Length, 5.0 chunked.
    path = write_random(tmp_path / "file.bin", 6 * MiB + 3)
    upload = node_upload(
        tus_js, f"{server.url}/files/", server.token(owner), path, "all", True, package
    )

    assert upload.creation_offset == path.stat().st_size
    assert sha256_of(completed_file(server, owner, upload.url)) == sha256_of(path)
    # One upload: no retried creation left an empty one behind.
    with sqlite3.connect(server.data_dir / "chunkstore.sqlite3") as db:
        uploads = db.execute("SELECT upload_id FROM sessions WHERE owner = ?", (owner,)).fetchall()
    assert uploads == [(upload.url.rsplit("/", 1)[-1],)]


def test_tus_js_client_resumes_through_cut_connections(
    server: Server, owner: str, tmp_path: Path, tus_js: Path
) -> None:
    path = write_random(tmp_path / "file.bin", 6 * MiB + 1)
    with FlakyProxy(
        server.port, drop_probability=1.0, max_cut_after=2 * MiB, max_drops=3, seed=3
    ) as proxy:
        url = node_upload(
            tus_js, f"{proxy.url}/files/", server.token(owner), path, str(MiB), False
        ).url
    assert proxy.drops >= 1
    assert sha256_of(completed_file(server, owner, url)) == sha256_of(path)
