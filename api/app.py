"""The Litestar application. ``create_app()`` reads settings from ``CHUNKSTORE_*``."""

from __future__ import annotations

import math
from typing import Any

from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.middleware import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
    DefineMiddleware,
)
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

import chunkstore
from api.observability import configure_logging, request_id_middleware
from api.problems import EXCEPTION_HANDLERS
from api.routes import ROUTES
from chunkstore.auth import TokenStore
from chunkstore.config import MiB, Settings
from chunkstore.errors import Unauthorized
from chunkstore.service import UploadService


class BearerAuth(AbstractAuthenticationMiddleware):
    """Checked before any handler runs, so an unauthenticated body is never read."""

    def __init__(self, app: Any, tokens: TokenStore, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.tokens = tokens

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send 'Authorization: Bearer <token>'")
        owner = self.tokens.owner_of(token.strip())
        return AuthenticationResult(user=owner, auth=None)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    configure_logging()
    service = UploadService.open(settings)
    tokens = TokenStore(settings.database_path)

    def sweep_temp_files() -> None:
        # A crash can leave temp files behind; none is visible, all are garbage.
        # Several workers share the directory, so spare files still being written.
        service.blobs.sweep_temp_files(older_than=settings.temp_grace)  # type: ignore[attr-defined]

    app = Litestar(
        route_handlers=ROUTES,
        dependencies={"service": Provide(lambda: service, sync_to_thread=False, use_cache=True)},
        middleware=[
            DefineMiddleware(
                BearerAuth, tokens=tokens, exclude=["^/healthz$", "^/schema", "^/problems/"]
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        on_startup=[sweep_temp_files],
        on_shutdown=[service.close],
        # The JSON form of the largest chunk is base64 (4/3) plus a little envelope.
        request_max_body_size=math.ceil(settings.max_chunk_size * 4 / 3) + MiB,
        openapi_config=OpenAPIConfig(
            title="chunkstore",
            version=chunkstore.__version__,
            path="/schema",
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
            security=[{"bearer": []}],
        ),
    )
    # Outermost, around Litestar's own exception handling, so that answers to errors
    # raised in middleware (a 401 from auth) also carry the request id and are logged
    # with their real status.
    app.asgi_handler = request_id_middleware(app.asgi_handler)
    return app
