"""tus 1.0.0 under ``/files/``: parse headers, call one ``TusUploads`` method, answer.

Protocol-wide concerns live in ``tus_middleware`` (outermost, so they also cover
answers from the auth middleware): ``X-HTTP-Method-Override``, ``Tus-Resumable`` on
every answer but OPTIONS, and CORS for browser clients. Errors are problem+json, with
the status tus prescribes for its own failures (409 offset, 412 version, 460 checksum).
"""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import AsyncIterator
from typing import Any, cast

from litestar import Controller, Request, Response, delete, head, patch, post, route
from litestar.enums import HttpMethod
from litestar.exceptions import InternalServerException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api import problems
from chunkstore import tus
from chunkstore.config import Settings
from chunkstore.errors import (
    ChunkstoreError,
    IncompleteBody,
    InvalidRequest,
    RequestTimeout,
    UnsupportedMediaType,
)
from chunkstore.session import SessionState
from chunkstore.tus import TUS_VERSION, TusUploads, UploadChecksum

AnyRequest = Request[Any, Any, Any]
FILES = "/files"
OFFSET_MEDIA_TYPE = "application/offset+octet-stream"

STATUS_BY_TUS_ERROR: dict[type[ChunkstoreError], int] = {
    tus.OffsetMismatch: 409,
    tus.UploadLocked: 423,
    tus.UnsupportedChecksumAlgorithm: 400,
    tus.TusChecksumMismatch: 460,
    tus.FinalUploadImmutable: 403,
    tus.UnsupportedTusVersion: 412,
}

EXPOSED_HEADERS = (
    "Location, Upload-Offset, Upload-Length, Upload-Defer-Length, Upload-Metadata,"
    " Upload-Concat, Upload-Expires, Tus-Version, Tus-Resumable, Tus-Max-Size,"
    " Tus-Extension, Tus-Checksum-Algorithm, X-Request-ID"
)
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Origin, X-Requested-With, X-Request-ID,"
    " X-HTTP-Method-Override, Upload-Length, Upload-Offset, Upload-Metadata,"
    " Upload-Defer-Length, Upload-Concat, Upload-Checksum, Tus-Resumable"
)
ALLOWED_METHODS = "POST, HEAD, PATCH, DELETE, OPTIONS"


def tus_error(request: AnyRequest, error: Exception) -> Response[bytes]:
    """tus's own statuses first; everything else as the JSON API maps it."""
    assert isinstance(error, ChunkstoreError)
    for cls in type(error).__mro__:
        if cls in STATUS_BY_TUS_ERROR:
            status = STATUS_BY_TUS_ERROR[cls]
            headers = {"Tus-Version": TUS_VERSION} if status == 412 else {}
            if isinstance(error, tus.OffsetMismatch):
                headers["Upload-Offset"] = str(error.extensions["offset"])
            return problems.problem(
                request, status, error.slug, error.title, error.detail, error.extensions, headers
            )
    return problems.chunkstore_error(request, error)


def refused_at(request: AnyRequest, error: ChunkstoreError, location: str) -> Response[bytes]:
    """The error answer to a creation whose upload exists nonetheless, with its Location."""
    refused = tus_error(request, error)
    refused.headers["Location"] = location
    return refused


def owner_of(request: AnyRequest) -> str:
    return str(request.user)


def check_version(request: AnyRequest) -> None:
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        raise tus.UnsupportedTusVersion(
            f"Tus-Resumable must be {TUS_VERSION}, not {version!r}", supported=TUS_VERSION
        )


def int_header(request: AnyRequest, name: str) -> int | None:
    value = request.headers.get(name)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InvalidRequest(f"{name} must be a non-negative integer")
    return int(value)


def http_date(state: SessionState) -> str:
    assert state.expires_at is not None
    return email.utils.format_datetime(state.expires_at, usegmt=True)


def upload_headers(state: SessionState) -> dict[str, str]:
    """What HEAD reports about an upload."""
    headers = {"Upload-Offset": str(state.tus_offset), "Cache-Control": "no-store"}
    if state.tus_length_deferred:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(state.total_size)
    if state.tus_metadata:
        headers["Upload-Metadata"] = state.tus_metadata
    if state.tus_concat == "partial":
        headers["Upload-Concat"] = "partial"
    elif state.tus_concat == "final":
        headers["Upload-Concat"] = "final;" + " ".join(f"{FILES}/{p}" for p in state.tus_parts)
    if state.expires_at is not None and state.status == "active":
        headers["Upload-Expires"] = http_date(state)
    return headers


def offset_headers(state: SessionState) -> dict[str, str]:
    """What a PATCH answers: the new offset, and when the upload expires."""
    headers = {"Upload-Offset": str(state.tus_offset)}
    if state.expires_at is not None:
        headers["Upload-Expires"] = http_date(state)
    return headers


async def body_of(request: AnyRequest) -> AsyncIterator[bytes]:
    """The body; a client that goes away midway ends it with ``IncompleteBody``."""
    try:
        async for piece in request.stream():
            if piece:
                yield piece
    except InternalServerException as error:
        raise IncompleteBody("the request body ended before it was complete") from error


def require_offset_body(request: AnyRequest) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OFFSET_MEDIA_TYPE:
        raise UnsupportedMediaType(f"send the body as {OFFSET_MEDIA_TYPE}")


def checksum_of(request: AnyRequest) -> UploadChecksum | None:
    header = request.headers.get("upload-checksum")
    return UploadChecksum.parse(header) if header else None


async def write_body(
    request: AnyRequest,
    uploads: TusUploads,
    upload_id: str,
    offset: int,
    length: int | None = None,
) -> SessionState:
    """PATCH semantics shared by PATCH and creation-with-upload; completes at the end."""
    owner = owner_of(request)
    state = await uploads.patch(
        owner,
        upload_id,
        offset,
        body_of(request),
        checksum_of(request),
        int_header(request, "content-length"),
        length,
    )
    if uploads.needs_completion(state):
        state = await asyncio.to_thread(uploads.complete, owner, state)
    return state


class TusController(Controller):
    path = FILES
    exception_handlers = {ChunkstoreError: tus_error}  # noqa: RUF012 - Litestar reads it

    @route("/", http_method=HttpMethod.OPTIONS, status_code=204, exclude_from_auth=True)
    async def capabilities(self, tus_uploads: TusUploads) -> Response[None]:
        """Server capabilities (no auth: browsers send this preflight without it)."""
        return Response(
            content=None,
            status_code=204,
            headers={
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": ",".join(tus.EXTENSIONS),
                "Tus-Max-Size": str(tus_uploads.settings.max_file_size),
                "Tus-Checksum-Algorithm": ",".join(tus.CHECKSUM_ALGORITHMS),
            },
        )

    @post("/", status_code=201, request_max_body_size=None)
    async def create(self, request: AnyRequest, tus_uploads: TusUploads) -> Response[bytes]:
        """creation, creation-defer-length, concatenation, creation-with-upload."""
        check_version(request)
        length = int_header(request, "upload-length")
        deferred = request.headers.get("upload-defer-length")
        concat_header = request.headers.get("upload-concat")
        concat, part_ids = tus.parse_concat(concat_header) if concat_header else ("", [])
        if concat != "final":
            if deferred is not None and deferred != "1":
                raise InvalidRequest("Upload-Defer-Length must be 1")
            if (length is None) == (deferred is None):
                raise InvalidRequest("send either Upload-Length or Upload-Defer-Length: 1")
        with_body = bool(int_header(request, "content-length"))
        if with_body:
            require_offset_body(request)
            checksum_of(request)  # an unknown algorithm is refused before anything exists
        owner = owner_of(request)
        state = await asyncio.to_thread(
            tus_uploads.create,
            owner,
            length,
            request.headers.get("upload-metadata") or "",
            concat,
            part_ids,
        )
        location = f"{FILES}/{state.upload_id}"
        if with_body:
            try:
                state = await write_body(request, tus_uploads, state.upload_id, 0)
            except RequestTimeout as error:
                # A client that stalled may still read the answer: a 408 that says
                # where the upload is and how far it got.
                refused = refused_at(request, error, location)
                state = await asyncio.to_thread(tus_uploads.head, owner, state.upload_id)
                refused.headers["Upload-Offset"] = str(state.tus_offset)
                return refused
            except IncompleteBody:
                state = await asyncio.to_thread(tus_uploads.head, owner, state.upload_id)
            except ChunkstoreError as error:
                # The upload exists although its first bytes were refused (a checksum
                # mismatch): say where it is, so the client can resume instead of
                # leaving it to expire.
                return refused_at(request, error, location)
        elif tus_uploads.needs_completion(state):
            state = await asyncio.to_thread(tus_uploads.complete, owner, state)
        headers = {"Location": location, **offset_headers(state)}
        return Response(content=b"", status_code=201, headers=headers)

    @head("/{upload_id:str}")
    async def head_upload(
        self, request: AnyRequest, upload_id: str, tus_uploads: TusUploads
    ) -> Response[None]:
        check_version(request)
        state = await asyncio.to_thread(tus_uploads.head, owner_of(request), upload_id)
        # Litestar wants HEAD handlers typed bodiless; b"" keeps it from encoding None.
        return Response(content=b"", status_code=200, headers=upload_headers(state))  # type: ignore[arg-type]

    @patch("/{upload_id:str}", status_code=204, request_max_body_size=None)
    async def patch_upload(
        self, request: AnyRequest, upload_id: str, tus_uploads: TusUploads
    ) -> Response[None]:
        check_version(request)
        require_offset_body(request)
        offset = int_header(request, "upload-offset")
        if offset is None:
            raise InvalidRequest("Upload-Offset is required")
        length = int_header(request, "upload-length")
        state = await write_body(request, tus_uploads, upload_id, offset, length)
        return Response(content=None, status_code=204, headers=offset_headers(state))

    @delete("/{upload_id:str}", status_code=204)
    async def terminate(self, request: AnyRequest, upload_id: str, tus_uploads: TusUploads) -> None:
        check_version(request)
        await asyncio.to_thread(tus_uploads.terminate, owner_of(request), upload_id)


def tus_middleware(app: ASGIApp, settings: Settings) -> ASGIApp:
    """Method override, Tus-Resumable and CORS for ``/files``; other paths pass through."""
    origins = settings.cors_origins

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path = scope["path"]
        if path != FILES and not path.startswith(f"{FILES}/"):
            await app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        override = headers.get(b"x-http-method-override")
        if override and scope["method"] == "POST":
            method = override.decode("latin-1").strip().upper()
            scope = cast(Scope, {**scope, "method": method})
        else:
            method = scope["method"]
        origin = headers.get(b"origin", b"").decode("latin-1")
        allowed = origin if origin and ("*" in origins or origin.lower() in origins) else ""
        preflight = method == "OPTIONS" and b"access-control-request-method" in headers

        async def send_with_tus(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra: list[tuple[bytes, bytes]] = []
                if method != "OPTIONS":
                    extra.append((b"tus-resumable", TUS_VERSION.encode()))
                if allowed:
                    extra += [
                        (b"access-control-allow-origin", allowed.encode("latin-1")),
                        (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
                        (b"vary", b"Origin"),
                    ]
                    if preflight:
                        extra += [
                            (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
                            (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                            (b"access-control-max-age", b"86400"),
                        ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await app(scope, receive, send_with_tus)

    return middleware
