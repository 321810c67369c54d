"""The Litestar application. ``create_app()`` reads settings from ``CHUNKSTORE_*``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from litestar import Litestar, Router
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.middleware import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
    DefineMiddleware,
)
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

import chunkstore
from api.bodies import CONTROL_BODY, BodyRequest, with_body_limits
from api.contract import StrictStructSchemaPlugin, describe_api
from api.docs import DOC_ROUTES
from api.downloads import delete_file, download_file
from api.metrics import Metrics, metrics_endpoint
from api.observability import configure_logging, request_id_middleware
from api.problems import EXCEPTION_HANDLERS
from api.routes import ROUTES
from api.routing import options_handler
from api.timeouts import body_idle_timeout_middleware
from api.tus import TusController, tus_middleware
from chunkstore.application import UploadService
from chunkstore.config import Settings
from chunkstore.errors import Unauthorized
from chunkstore.gc import collect
from chunkstore.lifeline import PARENT_PID_VARIABLE, tie_to_parent
from chunkstore.pacing import Pacer
from chunkstore.tokens import TokenStore
from chunkstore.tus import TusUploads

gc_log = logging.getLogger("chunkstore.gc")


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


class BackgroundGc:
    """Runs ``gc`` every ``gc_interval`` seconds (0: never) in a worker thread. With
    several workers each runs its own; runs may overlap, which gc tolerates (deleting
    a blob twice is a no-op, expiring twice appends once)."""

    def __init__(self, service: UploadService, settings: Settings, metrics: Metrics) -> None:
        self.service = service
        self.settings = settings
        self.metrics = metrics
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.settings.gc_interval > 0:
            self.task = asyncio.create_task(self.loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.gc_interval)
            try:
                # Paced: it rests between steps so that requests get the GIL.
                report = await asyncio.to_thread(collect, self.service, pace=Pacer())
            except Exception:
                self.metrics.gc_failures.inc()
                gc_log.exception("gc run failed")
                continue
            self.metrics.record_gc(report)
            gc_log.info(
                "gc",
                extra={
                    "sessions_expired": report.sessions_expired,
                    "blobs_swept": report.blobs_swept,
                    "bytes_freed": report.bytes_freed,
                    "seconds": report.seconds,
                },
            )


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    configure_logging()
    service = UploadService.open(settings)
    tokens = service.store.tokens

    def sweep_temp_files() -> None:
        # A crash can leave temp files behind; none is visible, all are garbage.
        # Several workers share the directory, so spare files still being written.
        for backend in service.store.temp_files:
            backend.sweep_temp_files(older_than=settings.temp_grace)

    metrics = Metrics(service, settings)
    background = BackgroundGc(service, settings, metrics)

    tus_uploads = TusUploads(service)
    # GET and DELETE of one path registered together: Litestar registers every handler
    # of a path again when another handler joins it, and a sync handler registered
    # twice is no longer awaited (its GET answered 500).
    files_router = Router(
        path="/",
        route_handlers=[
            options_handler("/api/v1/files/{upload_id:str}"),
            download_file,
            delete_file,
        ],
    )
    app = Litestar(
        route_handlers=[
            *with_body_limits(ROUTES, settings),
            files_router,
            metrics_endpoint,
            TusController,
            *DOC_ROUTES,
        ],
        dependencies={
            "service": Provide(lambda: service, sync_to_thread=False, use_cache=True),
            "tus_uploads": Provide(lambda: tus_uploads, sync_to_thread=False, use_cache=True),
            "metrics": Provide(lambda: metrics, sync_to_thread=False, use_cache=True),
        },
        middleware=[
            DefineMiddleware(
                BearerAuth,
                tokens=tokens,
                exclude=["^/healthz$", "^/schema", "^/problems/", "^/metrics$"],
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        plugins=[StrictStructSchemaPlugin()],
        request_class=BodyRequest,
        on_startup=[sweep_temp_files, background.start],
        on_shutdown=[background.stop, service.close],
        # Routes that take a larger body say so (api/bodies.py); tus bounds its own.
        request_max_body_size=CONTROL_BODY,
        openapi_config=OpenAPIConfig(
            title="chunkstore",
            version=chunkstore.__version__,
            # /schema (the older URL) serves the JSON; /openapi.json and /docs (api/docs.py)
            # are the documented ones. Litestar's HTML renderers load scripts from a CDN
            # and show nothing offline, so none is served.
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
            use_handler_docstrings=True,
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
            security=[{"bearer": []}],
        ),
    )
    # Innermost of these wrappers, so every body reader below it is covered, and the
    # request id middleware still sees the body unfinished (its answer closes the
    # connection).
    app.asgi_handler = body_idle_timeout_middleware(app.asgi_handler, settings.body_idle_timeout)
    describe_api(app, settings)
    # Outermost, around Litestar's own exception handling, so that answers to errors
    # raised in middleware (a 401 from auth) also carry the request id and are logged
    # with their real status.
    # Outside the router too, so that 404s and errors raised in middleware (a 401 from
    # auth) are counted with their real status.
    app.asgi_handler = metrics.middleware(app.asgi_handler)
    app.asgi_handler = request_id_middleware(app.asgi_handler)
    # tus method override must happen before routing, its headers on every answer.
    app.asgi_handler = tus_middleware(app.asgi_handler, settings)
    return app


def create_worker_app() -> Litestar:
    """The application as ``chunkstore serve`` runs it in each worker process: a worker
    first ties its life to the serving process, so that it never outlives it."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if parent:
        tie_to_parent(int(parent))
    return create_app()
