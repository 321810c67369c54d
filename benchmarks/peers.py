"""Peer tus servers to compare chunkstore against: tuspyserver (FastAPI, served by granian,
as chunkstore is) and aiohttp-tus (aiohttp's own server), each uploaded to with tuspy.

The peers live in their own virtualenv (``~/.cache/chunkstore-bench/peers-venv``), built
once from the exact pins in ``PEER_PINS`` and rebuilt only when those pins change, so their
dependencies never mix with chunkstore's. Each server runs as a subprocess of that venv's
Python in its own process group, on 127.0.0.1 and a free port, storing uploads under a
data directory the caller names.

python -m benchmarks.peers

runs a smoke test: builds the venv if needed, uploads a 32 MiB random file in 8 MiB chunks
to each peer, checks the stored file's sha256 against the source, and prints MB/s and the
peer's peak RSS.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
from tusclient import client as tus_client

from benchmarks.common import (
    MiB,
    max_process_peak_rss,
    random_file,
    remove,
    scratch_dir,
    sha256_file,
)
from chunkstore.testing import free_port, start_group, stop_group, wait_until_ready

PEER_VENV = Path.home() / ".cache" / "chunkstore-bench" / "peers-venv"
PEER_PINS = (
    "tuspyserver==4.4.3",
    "fastapi==0.165.0",
    # fastapi's request-body path; the version fastapi 0.165.0 resolves to.
    "starlette==1.10.0",
    # The same granian as chunkstore's own environment, so the ASGI server is no variable.
    "granian==2.8.7",
    "aiohttp-tus==1.1.0",
    # aiohttp-tus 1.1.0 (its last release) runs unchanged on the newest aiohttp, checked here.
    "aiohttp==3.14.5",
)
REPORTED = ("tuspyserver", "fastapi", "starlette", "granian", "aiohttp-tus", "aiohttp")
MAX_UPLOAD_SIZE = 4 * 1024 * MiB
_MARKER = ".chunkstore-pins"
_APPS = "bench-apps"

TUSPYSERVER_APP = '''\
"""tuspyserver's router on a bare FastAPI app (written by benchmarks/peers.py).

The README's CORS middleware is for browsers and is left out: tuspy needs none.
"""

import os

from fastapi import FastAPI
from tuspyserver import create_tus_router

app = FastAPI()
app.include_router(
    create_tus_router(
        prefix="files",
        files_dir=os.environ["PEER_DATA_DIR"],
        max_size=int(os.environ["PEER_MAX_SIZE"]),
    )
)
'''

AIOHTTP_TUS_APP = '''\
"""aiohttp-tus on aiohttp's own server (written by benchmarks/peers.py).

aiohttp-tus reads each PATCH body whole (request.read()), so client_max_size bounds the
chunk size; it is set to the largest upload. Overwrites are allowed so that the same file
name can be uploaded again (aiohttp-tus stores a finished upload under its file name).
"""

import os
from pathlib import Path

from aiohttp import web
from aiohttp_tus import setup_tus

app = setup_tus(
    web.Application(client_max_size=int(os.environ["PEER_MAX_SIZE"])),
    upload_url="/files/",
    upload_path=Path(os.environ["PEER_DATA_DIR"]),
    allow_overwrite_files=True,
)
web.run_app(app, host="127.0.0.1", port=int(os.environ["PEER_PORT"]), access_log=None)
'''


def _log(message: str) -> None:
    print(f"peers: {message}", file=sys.stderr, flush=True)


def _peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def _pins_digest() -> str:
    text = "\n".join([sys.version, *PEER_PINS])
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def ensure_peer_env() -> dict[str, str]:
    """Build the peers' venv if its pins changed; return {package: version} as installed."""
    marker = PEER_VENV / _MARKER
    digest = _pins_digest()
    if not marker.exists() or marker.read_text().strip() != digest:
        _log(f"building {PEER_VENV}")
        shutil.rmtree(PEER_VENV, ignore_errors=True)
        PEER_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        _log(f"installing {' '.join(PEER_PINS)}")
        pip = [str(_peer_python()), "-m", "pip", "install", "--disable-pip-version-check"]
        subprocess.run([*pip, *PEER_PINS], check=True, stdout=sys.stderr)
        marker.write_text(digest + "\n")
    probe = (
        "import importlib.metadata as m, json, sys;"
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    )
    output = subprocess.run(
        [str(_peer_python()), "-c", probe, *REPORTED], check=True, capture_output=True, text=True
    ).stdout
    versions: dict[str, str] = json.loads(output)
    return {f"{name} (peers)": version for name, version in versions.items()}


def local_versions() -> dict[str, str]:
    """Versions on chunkstore's side of the comparison: its server and tus client."""
    return {name: importlib.metadata.version(name) for name in ("granian", "tuspy", "httpx")}


def _app_file(name: str, text: str) -> Path:
    """Materialize a server script in the peers' venv (rewritten only when it changed)."""
    path = PEER_VENV / _APPS / name
    path.parent.mkdir(exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


class PeerServer:
    """A peer tus server process group; ``url`` is its tus creation endpoint."""

    def __init__(self, kind: str, data_dir: Path, command: list[str], port: int) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{port}/files/"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": str(PEER_VENV / _APPS),
            "PEER_DATA_DIR": str(data_dir),
            "PEER_MAX_SIZE": str(MAX_UPLOAD_SIZE),
            "PEER_PORT": str(port),
        }
        self._output: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - the child's output
        self._process = start_group(
            command, cwd=PEER_VENV / _APPS, env=env, stdout=self._output, stderr=subprocess.STDOUT
        )
        try:
            wait_until_ready(self._process, self._answers, 30, self.kind, self.output)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self._process.pid

    def _answers(self) -> bool:
        """A tus server answers OPTIONS on its creation endpoint (any status will do)."""
        try:
            httpx.options(self.url, headers={"Tus-Resumable": "1.0.0"}, timeout=1)
        except httpx.TransportError:
            return False
        return True

    def output(self) -> str:
        """What the server printed so far."""
        self._output.seek(0)
        return self._output.read().decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers."""
        stop_group(self._process, timeout=10)
        self._output.close()

    def __enter__(self) -> PeerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_tuspyserver(data_dir: Path) -> PeerServer:
    """tuspyserver's FastAPI router on granian (ASGI, one worker), like chunkstore."""
    ensure_peer_env()
    app = _app_file("tuspyserver_app.py", TUSPYSERVER_APP)
    port = free_port()
    command = [
        str(_peer_python()),
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        f"{app.stem}:app",
    ]
    return PeerServer("tuspyserver", data_dir, command, port)


def start_aiohttp_tus(data_dir: Path) -> PeerServer:
    """aiohttp-tus on ``aiohttp.web.run_app``, one process."""
    ensure_peer_env()
    app = _app_file("aiohttp_tus_app.py", AIOHTTP_TUS_APP)
    port = free_port()
    return PeerServer("aiohttp-tus", data_dir, [str(_peer_python()), str(app)], port)


def find_uploaded_file(server: PeerServer, upload_url: str, filename: str) -> Path:
    """Where a finished upload lies: tuspyserver keeps ``<data>/<upload id>`` (beside its
    ``.info``), aiohttp-tus moves it to ``<data>/<metadata filename>``."""
    if server.kind == "tuspyserver":
        path = server.data_dir / upload_url.rstrip("/").rsplit("/", 1)[-1]
    else:
        path = server.data_dir / filename
    if not path.is_file():
        raise FileNotFoundError(f"{server.kind}: no stored file at {path}")
    return path


@dataclass(frozen=True)
class TusUpload:
    seconds: float
    url: str


def tus_upload(
    url: str, path: Path, chunk_size: int, headers: dict[str, str] | None = None
) -> TusUpload:
    """Upload ``path`` with tuspy; the time covers creation and every PATCH."""
    client = tus_client.TusClient(url, headers=headers or {})
    started = time.perf_counter()
    uploader = client.uploader(str(path), chunk_size=chunk_size, metadata={"filename": path.name})
    uploader.upload()
    seconds = time.perf_counter() - started
    return TusUpload(seconds=seconds, url=str(uploader.url))


def main() -> None:
    versions = ensure_peer_env()
    print("versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    size, chunk = 32 * MiB, 8 * MiB
    work = scratch_dir()
    try:
        source = random_file(size, work)
        expected = sha256_file(source)
        for start in (start_tuspyserver, start_aiohttp_tus):
            with start(work / f"data-{start.__name__}") as server:
                upload = tus_upload(server.url, source, chunk)
                peak = max_process_peak_rss(server.pid)
                stored = find_uploaded_file(server, upload.url, source.name)
                if sha256_file(stored) != expected:
                    raise AssertionError(f"{server.kind}: stored file's sha256 differs")
                print(
                    f"{server.kind}: {size / upload.seconds / 1e6:.0f} MB/s"
                    f" ({upload.seconds:.2f} s, 32 MiB in 8 MiB chunks;"
                    f" peak RSS {peak / MiB:.0f} MiB); sha256 matches"
                )
    finally:
        remove(work)


if __name__ == "__main__":
    main()
