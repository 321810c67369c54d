"""``GET /metrics``: Prometheus text, from prometheus-client.

Where each figure comes from:
- requests by route template, method and status, and request body bytes: counted by a
  middleware in this process;
- chunks stored, bytes received, bytes deduplicated, validation failures by reason,
  uploads completed/cancelled/expired: read from the event log at scrape time (only the
  events appended since the last scrape), so they count what *every* worker process
  recorded since this process started, not just this one's share;
- sessions by status: the ``sessions`` projection at scrape time;
- gc: the runs of this process's background gc.

Access: no auth by default (the figures are aggregate counts: no owner names, upload
ids, file names or tokens), ``CHUNKSTORE_METRICS_TOKEN`` to require a bearer token of
its own, ``CHUNKSTORE_METRICS=0`` to switch the route off.

With several granian workers (``--workers N``), ``chunkstore serve`` turns on
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` = ``data/metrics``,
emptied at start): every worker writes its request and gc counters to files there, and a
scrape, whichever worker answers it, reports their sum. The event-derived and projection
figures are read from the shared store, so they are whole-store whichever worker answers
(each counts from its own start, so they differ only by the events before the later
start).
"""

from __future__ import annotations

import hmac
import os
import threading
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from litestar import Request, Response, get
from litestar.enums import ScopeType
from litestar.exceptions import NotFoundException
from litestar.handlers import BaseRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.contract import Answer, contract
from chunkstore.application import UploadService
from chunkstore.config import Settings
from chunkstore.errors import Unauthorized
from chunkstore.events import (
    ChunkStored,
    UploadCancelled,
    UploadCompleted,
    UploadDeleted,
    UploadExpired,
    ValidationFailed,
)
from chunkstore.gc import GcReport
from chunkstore.session import Status

_STATUSES = (
    Status.ACTIVE,
    Status.ASSEMBLING,
    Status.COMPLETED,
    Status.FAILED,
    Status.CANCELLED,
    Status.EXPIRED,
    Status.DELETED,
)


class StoreCollector(Collector):
    """Figures read from the store at scrape time."""

    def __init__(self, service: UploadService) -> None:
        self.service = service
        self.lock = threading.Lock()
        self.position = service.store.log.last_position()
        self.chunks_stored = 0
        self.bytes_received = 0
        self.bytes_deduplicated = 0
        self.failures: Tally[str] = Tally()
        self.ended: Tally[str] = Tally()

    def catch_up(self) -> None:
        for recorded in self.service.store.log.read_all(self.position):
            self.position = recorded.position
            match recorded.event:
                case ChunkStored(size=size, reused=reused):
                    self.chunks_stored += 1
                    if reused:
                        self.bytes_deduplicated += size
                    else:
                        self.bytes_received += size
                case ValidationFailed(reason=reason):
                    self.failures[reason] += 1
                case UploadCompleted():
                    self.ended[Status.COMPLETED] += 1
                case UploadCancelled():
                    self.ended[Status.CANCELLED] += 1
                case UploadExpired():
                    self.ended[Status.EXPIRED] += 1
                case UploadDeleted():
                    self.ended[Status.DELETED] += 1

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            self.catch_up()
            yield CounterMetricFamily(
                "chunkstore_chunks_stored",
                "Chunks recorded (ChunkStored events)",
                self.chunks_stored,
            )
            yield CounterMetricFamily(
                "chunkstore_bytes_received",
                "Chunk bytes clients sent and the store recorded",
                self.bytes_received,
            )
            yield CounterMetricFamily(
                "chunkstore_bytes_deduplicated",
                "Chunk bytes recorded without being sent (the owner already had them)",
                self.bytes_deduplicated,
            )
            failures = CounterMetricFamily(
                "chunkstore_validation_failures",
                "Uploads that failed validation",
                labels=["reason"],
            )
            for reason, count in sorted(self.failures.items()):
                failures.add_metric([reason], count)
            yield failures
            ended = CounterMetricFamily(
                "chunkstore_uploads_ended", "Uploads that reached a final status", labels=["status"]
            )
            for status in (Status.COMPLETED, Status.CANCELLED, Status.EXPIRED, Status.DELETED):
                ended.add_metric([status], self.ended[status])
            yield ended
        by_status = self.service.store.index.count_sessions_by_status()
        sessions = GaugeMetricFamily(
            "chunkstore_sessions", "Sessions by stored status (the projection)", labels=["status"]
        )
        for name in sorted({*(known.value for known in _STATUSES), *by_status}):
            sessions.add_metric([name], by_status.get(name, 0))
        yield sessions


class Metrics:
    """The registry of one app, the middleware that counts requests, and gc results."""

    def __init__(self, service: UploadService, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "chunkstore_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_bytes = Counter(
            "chunkstore_http_request_body_bytes",
            "Request body bytes read, by route template",
            ["route"],
            registry=self.registry,
        )
        # Of live workers only ("livesum"): a killed worker's requests are not in progress.
        self.in_progress = Gauge(
            "chunkstore_http_requests_in_progress",
            "HTTP requests being handled now (bodies still arriving included)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.gc_runs = Counter("chunkstore_gc_runs", "Background gc runs", registry=self.registry)
        self.gc_expired = Counter(
            "chunkstore_gc_sessions_expired", "Sessions gc expired", registry=self.registry
        )
        self.gc_swept = Counter(
            "chunkstore_gc_blobs_swept", "Blobs gc swept", registry=self.registry
        )
        self.gc_freed = Counter(
            "chunkstore_gc_bytes_freed", "Bytes gc freed", registry=self.registry
        )
        self.gc_orphans = Counter(
            "chunkstore_gc_orphan_files_removed",
            "Files no completed upload owned that gc removed",
            registry=self.registry,
        )
        self.gc_failures = Counter(
            "chunkstore_gc_failures", "Background gc runs that raised", registry=self.registry
        )
        self.store = StoreCollector(service)
        self.registry.register(self.store)

    def record_gc(self, report: GcReport) -> None:
        self.gc_runs.inc()
        self.gc_expired.inc(report.sessions_expired)
        self.gc_swept.inc(report.blobs_swept)
        self.gc_freed.inc(report.bytes_freed + report.orphan_bytes_freed)
        self.gc_orphans.inc(report.orphan_files_removed)

    def render(self) -> bytes:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        # Several workers: the counters are the sum of every worker's files (this
        # process's own included), the store figures are read once, by this one.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(self.store)
        return generate_latest(registry)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Counts every HTTP request by its route template (never the raw path: upload
        ids would make one series per upload) and the body bytes it carried, and the
        requests in progress (a body a client is still sending shows there)."""

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            status = 500
            received = 0

            async def counting_receive() -> Any:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                return message

            async def status_send(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            # Routed only inside: the route is known at the end, not here.
            self.in_progress.inc()
            try:
                await app(scope, counting_receive, status_send)
            finally:
                self.in_progress.dec()
                route = route_of(scope)
                self.requests.labels(route, scope.get("method", ""), str(status)).inc()
                if received:
                    self.request_bytes.labels(route).inc(received)

        return middleware


def route_of(scope: Scope) -> str:
    handler = scope.get("route_handler")
    paths = handler.paths if isinstance(handler, BaseRouteHandler) else None
    return sorted(paths)[0] if paths else "unmatched"


#: Litestar adds the charset to a text/ type itself; naming it here too sent it twice.
METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


@get(
    "/metrics",
    exclude_from_auth=True,
    sync_to_thread=True,
    opt=contract(
        404,
        Unauthorized,
        answers=[Answer(200, "Prometheus text.", media_type=METRICS_MEDIA_TYPE)],
    ),
)
def metrics_endpoint(request: Request[Any, Any, Any], metrics: Metrics) -> Response[bytes]:
    """Prometheus text; 404 when switched off (`CHUNKSTORE_METRICS=0`), and a bearer token
    of its own when `CHUNKSTORE_METRICS_TOKEN` is set (401 without it)."""
    settings = metrics.settings
    if not settings.metrics_enabled:
        raise NotFoundException("metrics are switched off (CHUNKSTORE_METRICS)")
    if settings.metrics_token:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), settings.metrics_token.encode()
        ):
            raise Unauthorized("send 'Authorization: Bearer <the metrics token>'")
    return Response(content=metrics.render(), media_type=METRICS_MEDIA_TYPE)
