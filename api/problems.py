"""RFC 9457 problem details: one registry of every error the API returns.

``STATUS_BY_ERROR`` gives each library error class its status (one line per class: adding
a class means adding its line); ``HEADERS_BY_ERROR`` the headers its answer carries, and
``SLUG_BY_HTTP_STATUS`` names the problem type of the framework's own errors (routing,
body parsing). From these, ``REGISTRY`` holds one ``ProblemType`` per slug (status, title,
the class docstring as documentation, headers), and that one registry serves:

- the exception handlers: one for every ``ChunkstoreError``, wherever it is raised;
- the ``/problems/<slug>`` pages (every ``type`` URI an answer carries resolves);
- the OpenAPI answers of each route (``api/contract.py``).
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler

from chunkstore import errors, reading, tus
from chunkstore.bounds import MAX_LISTED_INDEXES, shorten

log = logging.getLogger("chunkstore.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
INTERNAL_DETAIL = "the server failed on this request; its request id identifies it in the logs"

STATUS_BY_ERROR: dict[type[errors.ChunkstoreError], int] = {
    errors.InvalidRequest: 400,
    errors.InvalidFilename: 400,
    errors.DisallowedType: 400,
    errors.ChecksumMismatch: 400,
    errors.ChunkSizeMismatch: 400,
    errors.ChunkIndexOutOfRange: 400,
    errors.IncompleteBody: 400,
    errors.FieldTooLong: 400,
    errors.RequestTimeout: 408,
    errors.Unauthorized: 401,
    errors.UploadNotFound: 404,
    errors.ChunkConflict: 409,
    errors.ChunkNotDeclared: 409,
    errors.DeclarationConflict: 409,
    errors.ChunkListPastSize: 400,
    errors.UploadNotActive: 409,
    errors.UploadIncomplete: 409,
    errors.WrongUploadProtocol: 409,
    errors.NotATusUpload: 409,
    errors.NotAChunkUpload: 409,
    errors.SessionExpired: 410,
    errors.TooLarge: 413,
    errors.QuotaExceeded: 413,
    errors.ChunkTooLarge: 413,
    errors.ListTooLong: 413,
    errors.UnsupportedMediaType: 415,
    errors.RangeNotSatisfiable: 416,
    errors.ValidationFailed: 422,
    errors.TooManySessions: 429,
    errors.UploadLocked: 423,
    errors.CorruptBlob: 500,
    errors.InsufficientStorage: 507,
    errors.ConcurrencyConflict: 503,
    errors.ChunkSwept: 503,
    reading.FileNotReady: 409,
    # tus 1.0 prescribes these statuses for its own failures.
    tus.OffsetMismatch: 409,
    tus.UnsupportedChecksumAlgorithm: 400,
    tus.TusChecksumMismatch: 460,
    tus.FinalUploadImmutable: 403,
    tus.UnsupportedTusVersion: 412,
}


@dataclass(frozen=True)
class ProblemHeader:
    """A header a problem answer carries, and where its value comes from."""

    name: str
    description: str
    value: Callable[[Exception], str | None]
    integer: bool = False


def _extensions(error: Exception) -> dict[str, Any]:
    return error.extensions if isinstance(error, errors.ChunkstoreError) else {}


def _extension(key: str, default: Any = None) -> Callable[[Exception], str | None]:
    def value(error: Exception) -> str | None:
        found = _extensions(error).get(key, default)
        return None if found is None else str(found)

    return value


WWW_AUTHENTICATE = ProblemHeader(
    "WWW-Authenticate",
    "The scheme to authenticate with: `Bearer`.",
    lambda error: 'Bearer realm="chunkstore"',
)
UPLOAD_OFFSET = ProblemHeader(
    "Upload-Offset",
    "The upload's current offset: resume from there.",
    _extension("offset"),
    integer=True,
)
TUS_VERSION = ProblemHeader(
    "Tus-Version", "The tus versions this server speaks.", lambda error: tus.TUS_VERSION
)
#: Retry-After of a 423: the upload is busy with another request, which ends when its
#: body does (or within CHUNKSTORE_BODY_IDLE_TIMEOUT if its client went silent).
LOCK_RETRY_SECONDS = 2
RETRY_AFTER_LOCKED = ProblemHeader(
    "Retry-After",
    "Seconds to wait before retrying.",
    _extension("retry_after", LOCK_RETRY_SECONDS),
    integer=True,
)
CONTENT_RANGE = ProblemHeader(
    "Content-Range",
    "`bytes */<size>`: the file's length.",
    lambda error: f"bytes */{_extensions(error).get('size', '*')}",
)
ALLOW = ProblemHeader(
    "Allow", "The methods this path serves.", lambda error: None
)  # set by the framework itself

HEADERS_BY_ERROR: dict[type[Exception], tuple[ProblemHeader, ...]] = {
    errors.Unauthorized: (WWW_AUTHENTICATE,),
    errors.RangeNotSatisfiable: (CONTENT_RANGE,),
    tus.OffsetMismatch: (UPLOAD_OFFSET,),
    errors.UploadLocked: (RETRY_AFTER_LOCKED,),
    tus.UnsupportedTusVersion: (TUS_VERSION,),
}


@dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str
    description: str
    headers: tuple[ProblemHeader, ...] = ()

    @property
    def uri(self) -> str:
        return f"/problems/{self.slug}"

    def page(self) -> dict[str, Any]:
        """What ``/problems/<slug>`` serves."""
        page: dict[str, Any] = {
            "type": self.uri,
            "title": self.title,
            "status": self.status,
            "description": self.description,
        }
        if self.headers:
            page["headers"] = {header.name: header.description for header in self.headers}
        return page


#: Problems of the framework (routing, parsing) that no library class stands for.
FRAMEWORK_PROBLEMS = (
    ProblemType(
        "not-found",
        404,
        "Not found",
        "No resource at this path (a path that names an upload answers `upload-not-found`"
        " instead). Check the URL.",
    ),
    ProblemType(
        "method-not-allowed",
        405,
        "Method not allowed",
        "This path does not serve this method; the Allow header lists the ones it serves.",
        (ALLOW,),
    ),
    ProblemType(
        "internal-error",
        500,
        "Internal server error",
        "The server failed on this request; nothing the request changed is half-visible."
        " Retry later, and report the request id (`request_id`, `X-Request-ID`) if it persists.",
    ),
)

#: The problem type of each status the framework answers by itself.
SLUG_BY_HTTP_STATUS = {
    400: "invalid-request",
    401: "unauthorized",
    404: "not-found",
    405: "method-not-allowed",
    413: "too-large",
    415: "unsupported-media-type",
    500: "internal-error",
}


def _documentation(cls: type[errors.ChunkstoreError]) -> str:
    return inspect.cleandoc(cls.__doc__ or "") or cls.title


def _headers_of(cls: type) -> tuple[ProblemHeader, ...]:
    for ancestor in cls.__mro__:
        if ancestor in HEADERS_BY_ERROR:
            return HEADERS_BY_ERROR[ancestor]
    return ()


def _build() -> tuple[dict[type, ProblemType], dict[str, ProblemType]]:
    by_class: dict[type, ProblemType] = {}
    by_slug: dict[str, ProblemType] = {kind.slug: kind for kind in FRAMEWORK_PROBLEMS}
    for cls, status in STATUS_BY_ERROR.items():
        kind = ProblemType(cls.slug, status, cls.title, _documentation(cls), _headers_of(cls))
        known = by_slug.get(kind.slug)
        if known is not None and known.status != status:
            raise RuntimeError(f"problem type {kind.slug} is given two statuses")
        by_class[cls] = kind
        by_slug[kind.slug] = kind
    return by_class, by_slug


BY_CLASS, REGISTRY = _build()


def problem_type(error: type[Exception] | Exception) -> ProblemType:
    """The registered type of an error class (or the nearest registered ancestor's);
    internal-error for a class nobody registered."""
    cls = error if isinstance(error, type) else type(error)
    for ancestor in cls.__mro__:
        if ancestor in BY_CLASS:
            return BY_CLASS[ancestor]
    return REGISTRY["internal-error"]


def framework_problem_type(status: int) -> ProblemType:
    """The type of a framework error; one with a status nobody named gets a page too."""
    slug = SLUG_BY_HTTP_STATUS.get(status)
    return REGISTRY[slug] if slug is not None else _generic(status)


def _generic(status: int) -> ProblemType:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Request failed"
    return ProblemType(f"http-{status}", status, phrase, f"HTTP {status}: {phrase}.")


def describe(slug: str) -> dict[str, Any] | None:
    """Documentation for a problem type, served at its ``type`` URI."""
    kind = REGISTRY.get(slug)
    if kind is None and slug.startswith("http-") and slug[5:].isdigit():
        status = int(slug[5:])
        kind = _generic(status) if 400 <= status <= 599 else None
    return kind.page() if kind is not None else None


#: The guard on every problem body, whatever raised it: a message or an extension can
#: carry a client value (a 20 MB upload id once came back as a 40 MB body).
MAX_DETAIL = 1024
MAX_INSTANCE = 256
MAX_TEXT = 256
#: Lists of numbers (chunk indexes) keep as many items as an answer's index lists.
MAX_NUMBERS = MAX_LISTED_INDEXES
MAX_ITEMS = 100
MAX_DEPTH = 4


def bounded(value: Any, depth: int = 0) -> Any:
    """``value`` with every string, list and nesting level cut to the guard's bounds."""
    if isinstance(value, str):
        return shorten(value, MAX_TEXT)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= MAX_DEPTH:
        return f"<{type(value).__name__} nested too deeply to show>"
    if isinstance(value, dict):
        items = itertools.islice(value.items(), MAX_ITEMS)
        return {shorten(key, MAX_TEXT): bounded(item, depth + 1) for key, item in items}
    if isinstance(value, list | tuple):
        return [bounded(item, depth + 1) for item in value[: _items_kept(value)]]
    return shorten(str(value), MAX_TEXT)


def _items_kept(values: list[Any] | tuple[Any, ...]) -> int:
    numbers = all(isinstance(item, int | float) for item in values[: MAX_NUMBERS + 1])
    return MAX_NUMBERS if numbers else MAX_ITEMS


def bounded_extensions(extensions: dict[str, Any]) -> dict[str, Any]:
    """Extensions under the guard; a list that was cut gets ``<name>_count`` beside it."""
    kept: dict[str, Any] = {}
    for key, value in extensions.items():
        kept[key] = bounded(value)
        if isinstance(value, list | tuple) and len(kept[key]) < len(value):
            kept.setdefault(f"{key}_count", len(value))
    return kept


def instance_of(request: Request[Any, Any, Any]) -> str:
    """The request path as the problem's ``instance``, cut (it may carry a long id)."""
    path = request.scope.get("path", "")
    return path if len(path) <= MAX_INSTANCE else f"{path[:MAX_INSTANCE]}..."


def problem(
    request: Request[Any, Any, Any],
    status: int,
    slug: str,
    title: str,
    detail: str,
    extensions: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    body: dict[str, Any] = {
        "type": f"/problems/{slug}",
        "title": title,
        "status": status,
        "detail": shorten(detail, MAX_DETAIL),
        "instance": instance_of(request),
    }
    request_id = request.scope.get("state", {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    for key, value in bounded_extensions(extensions or {}).items():
        body.setdefault(key, value)
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers or {},
    )


def answer(
    request: Request[Any, Any, Any],
    kind: ProblemType,
    detail: str,
    extensions: dict[str, Any] | None = None,
    error: Exception | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """The problem answer of ``kind``, with the headers its registry entry carries."""
    all_headers = dict(headers or {})
    for header in kind.headers:
        value = header.value(error) if error is not None else None
        if value is not None:
            all_headers.setdefault(header.name, value)
    return problem(request, kind.status, kind.slug, kind.title, detail, extensions, all_headers)


def chunkstore_error(request: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    assert isinstance(error, errors.ChunkstoreError)
    kind = problem_type(error)
    if kind.status >= 500:
        log.error("server-side failure: %s", error.detail, extra={"problem": error.slug})
    if kind.slug == "internal-error":
        return answer(request, kind, INTERNAL_DETAIL, error=error)
    return answer(request, kind, error.detail, error.extensions, error)


def http_error(request: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    assert isinstance(error, HTTPException)
    kind = framework_problem_type(error.status_code)
    detail = str(error.detail) if error.detail else kind.title
    extensions: dict[str, Any] = {}
    handler = request.scope.get("route_handler")
    if error.status_code == 413 and isinstance(handler, HTTPRouteHandler):
        # Litestar's own refusal of a body over the route's request_max_body_size.
        limit = handler.resolve_request_max_body_size()
        detail = f"the request body exceeds this route's limit of {limit} bytes"
        extensions["limit"] = limit
    if isinstance(error, ValidationException) and error.extra:
        extensions["errors"] = error.extra
    if kind.status >= 500:
        log.error("server-side failure: %s", detail)
        detail = INTERNAL_DETAIL
    return answer(request, kind, detail, extensions, error, dict(error.headers or {}))


def unexpected_error(request: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    log.exception("unhandled error", exc_info=error)
    return answer(request, REGISTRY["internal-error"], INTERNAL_DETAIL)


EXCEPTION_HANDLERS = {
    errors.ChunkstoreError: chunkstore_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
