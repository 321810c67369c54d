"""The practical ceiling: a bare Litestar app that streams a PUT body to a file while
hashing it with BLAKE3, fsyncs, and answers. No sessions, no events, no checks.

Run as ``granian --interface asgi --factory benchmarks.ceiling_app:create_app``;
``CEILING_DIR`` names where files go and ``CEILING_FSYNC=0`` skips the fsync.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import blake3
from litestar import Litestar, Request, get, put

from chunkstore.durable import write_all


def create_app() -> Litestar:
    directory = Path(os.environ.get("CEILING_DIR", "/tmp/ceiling"))
    directory.mkdir(parents=True, exist_ok=True)
    durable = os.environ.get("CEILING_FSYNC", "1") != "0"

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @put("/upload/{name:str}", request_max_body_size=1 << 34)
    async def upload(request: Request[Any, Any, Any], name: str) -> dict[str, Any]:
        hasher = blake3.blake3()
        path = directory / f"{name}-{secrets.token_hex(4)}"
        size = 0
        with open(path, "wb", buffering=0) as out:
            async for piece in request.stream():
                hasher.update(piece)
                write_all(out.write, piece)
                size += len(piece)
            if durable:
                os.fsync(out.fileno())
        path.unlink()
        return {"size": size, "blake3": hasher.hexdigest()}

    return Litestar(route_handlers=[healthz, upload], request_max_body_size=1 << 34)
