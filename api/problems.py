"""RFC 9457 problem details: every error the API returns, in one place.

Each library exception class maps to one status code; its ``slug`` makes the stable
``type`` URI (``/problems/<slug>``, which the API also serves as documentation).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from chunkstore import errors

log = logging.getLogger("chunkstore.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
#: Retry-After of a 423: the upload is busy with another request, which ends when its
#: body does (or within CHUNKSTORE_BODY_IDLE_TIMEOUT if its client went silent).
LOCKED_RETRY_AFTER = 2
INTERNAL_DETAIL = "the server failed on this request; its request id identifies it in the logs"

STATUS_BY_ERROR: dict[type[errors.ChunkstoreError], int] = {
    errors.InvalidRequest: 400,
    errors.RequestTimeout: 408,
    errors.Unauthorized: 401,
    errors.UploadNotFound: 404,
    errors.ChunkConflict: 409,
    errors.UploadNotActive: 409,
    errors.UploadIncomplete: 409,
    errors.SessionExpired: 410,
    errors.TooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.ValidationFailed: 422,
    errors.TooManySessions: 429,
    errors.CorruptBlob: 500,
    errors.InsufficientStorage: 507,
    errors.ConcurrencyConflict: 503,
    errors.ChunkSwept: 503,
}

_HTTP_SLUGS = {
    400: ("invalid-request", "Invalid request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    500: ("internal-error", "Internal server error"),
}


def status_of(error: errors.ChunkstoreError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]  # type: ignore[index]
    return 500


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
        "detail": detail,
        "instance": request.url.path,
    }
    request_id = request.scope.get("state", {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    for key, value in (extensions or {}).items():
        body.setdefault(key, value)
    all_headers = dict(headers or {})
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", 'Bearer realm="chunkstore"')
    if status == 423:
        all_headers.setdefault("Retry-After", str(LOCKED_RETRY_AFTER))
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=all_headers,
    )


def chunkstore_error(request: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    assert isinstance(error, errors.ChunkstoreError)
    status = status_of(error)
    if status >= 500:
        log.error("server-side failure: %s", error.detail, extra={"problem": error.slug})
    return problem(request, status, error.slug, error.title, error.detail, error.extensions)


def http_error(request: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    assert isinstance(error, HTTPException)
    status = error.status_code
    slug, title = _HTTP_SLUGS.get(status, (f"http-{status}", "Request failed"))
    detail = str(error.detail) if error.detail else title
    extensions: dict[str, Any] = {}
    if isinstance(error, ValidationException) and error.extra:
        extensions["errors"] = error.extra
    if status >= 500:
        log.error("server-side failure: %s", detail)
        detail = (
            "the server failed to handle this request; the request id identifies it in the logs"
        )
    return problem(request, status, slug, title, detail, extensions, dict(error.headers or {}))


def unexpected_error(request: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    log.exception("unhandled error", exc_info=error)
    return problem(
        request,
        500,
        "internal-error",
        "Internal server error",
        INTERNAL_DETAIL,
    )


EXCEPTION_HANDLERS = {
    errors.ChunkstoreError: chunkstore_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}


def describe(slug: str) -> dict[str, Any] | None:
    """Documentation for a problem type, served at its ``type`` URI."""
    for cls in STATUS_BY_ERROR:
        for candidate in [cls, *_subclasses(cls)]:
            if candidate.slug == slug:
                return {
                    "type": f"/problems/{slug}",
                    "title": candidate.title,
                    "status": status_of(candidate(slug)),
                    "description": (candidate.__doc__ or candidate.title).strip(),
                }
    for status, (known_slug, title) in _HTTP_SLUGS.items():
        if known_slug == slug:
            return {"type": f"/problems/{slug}", "title": title, "status": status}
    return None


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found
