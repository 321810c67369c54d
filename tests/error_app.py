"""The chunkstore app with one more route, ``GET /raise/{name}``, that raises the library
error class of that name: it shows what any route answers for any error, whichever part
of the server raises it. ``uvicorn --factory tests.error_app:create`` serves it.
"""

from __future__ import annotations

from litestar import Litestar, get

from api.app import create_app
from chunkstore.errors import ChunkstoreError

#: Extension values the raised errors carry (the registry reads some into headers).
EXTENSIONS = {"offset": 7, "size": 10}


def error_classes() -> dict[str, type[ChunkstoreError]]:
    found: dict[str, type[ChunkstoreError]] = {}
    pending = list(ChunkstoreError.__subclasses__())
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


@get("/raise/{name:str}", exclude_from_auth=True, sync_to_thread=False)
def raise_error(name: str) -> None:
    raise error_classes()[name]("raised on purpose", **EXTENSIONS)


def create() -> Litestar:
    app = create_app()
    app.register(raise_error)
    return app
