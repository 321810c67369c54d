"""tus 1.0.0 under ``/files/``: parse headers, call one ``TusUploads`` method, answer.

Protocol-wide concerns live in ``tus_middleware`` (outermost, so they also cover
answers from the auth middleware): ``X-HTTP-Method-Override``, ``Tus-Resumable`` on
every answer (OPTIONS too, as tusd does), and CORS for browser clients. Errors are
problem+json from the one registry (``api/problems.py``), with the statuses tus prescribes
for its own failures (409 offset, 412 version, 460 checksum).
"""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import AsyncIterator
from typing import Any, cast

from litestar import Controller, Request, Response, delete, get, head, patch, post, route
from litestar.enums import HttpMethod, ScopeType
from litestar.exceptions import InternalServerException
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api import downloads, problems
from api.contract import Answer, Body, Header, contract
from api.observability import has_body
from api.routing import allowed_methods
from chunkstore import tus
from chunkstore.application import UploadService
from chunkstore.bounds import quote
from chunkstore.config import Settings
from chunkstore.errors import (
    ChunkstoreError,
    ChunkSwept,
    ConcurrencyConflict,
    CorruptBlob,
    DisallowedType,
    IncompleteBody,
    InvalidFilename,
    InvalidRequest,
    RequestTimeout,
    SessionExpired,
    TooLarge,
    TooManySessions,
    UnsupportedMediaType,
    UploadLocked,
    UploadNotActive,
    UploadNotFound,
    ValidationFailed,
)
from chunkstore.session import SessionState, Status
from chunkstore.tus import TUS_VERSION, TusUploads, UploadChecksum

AnyRequest = Request[Any, Any, Any]
FILES = "/files"
OFFSET_MEDIA_TYPE = "application/offset+octet-stream"

EXPOSED_HEADERS = (
    "Location, Upload-Offset, Upload-Length, Upload-Defer-Length, Upload-Metadata,"
    " Upload-Concat, Upload-Expires, Tus-Version, Tus-Resumable, Tus-Max-Size,"
    " Tus-Extension, Tus-Checksum-Algorithm, X-Request-ID,"
    " ETag, Content-Range, Content-Disposition, Accept-Ranges"
)
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Origin, X-Requested-With, X-Request-ID,"
    " X-HTTP-Method-Override, Upload-Length, Upload-Offset, Upload-Metadata,"
    " Upload-Defer-Length, Upload-Concat, Upload-Checksum, Tus-Resumable,"
    " Range, If-Range, If-None-Match"
)
ALLOWED_METHODS = "POST, GET, HEAD, PATCH, DELETE, OPTIONS"

# -- the headers of the protocol, as the OpenAPI document describes them -------------------

_BASE64 = "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
_METADATA_PAIR = f"[!-+--~]+(?: {_BASE64})?"  # a key is printable ASCII without "," or " "
TUS_RESUMABLE = Header(
    "Tus-Resumable",
    f"The protocol version: {TUS_VERSION} (412 and Tus-Version otherwise).",
    required=True,
    enum=(TUS_VERSION,),
)
TUS_RESUMABLE_ANSWER = Header("Tus-Resumable", "The protocol version the server speaks.")
UPLOAD_LENGTH = Header(
    "Upload-Length",
    "The upload's size in bytes (at most Tus-Max-Size).",
    integer=True,
    maximum="max_file_size",
)
UPLOAD_DEFER_LENGTH = Header(
    "Upload-Defer-Length",
    "`1`: the size comes later, in a PATCH's Upload-Length. Send it or Upload-Length.",
    enum=("1",),
)
UPLOAD_METADATA = Header(
    "Upload-Metadata",
    "Comma-separated `key base64(value)` pairs; `filename` and `filetype` (or `name`,"
    " `type`) name the file and its declared type, which the upload policy checks.",
    pattern=f"^{_METADATA_PAIR}(?:,{_METADATA_PAIR})*$",
    example="filename bm90ZXMudHh0,filetype dGV4dC9wbGFpbg==",
)
UPLOAD_CONCAT = Header(
    "Upload-Concat",
    "`partial`, or `final;/files/<id> /files/<id> ...` to join completed partial uploads.",
    pattern="^(partial|final;[^,]+)$",
    example="partial",
)
UPLOAD_CHECKSUM = Header(
    "Upload-Checksum",
    "`<algorithm> <base64 digest>` of this request's body (algorithms: Tus-Checksum-Algorithm);"
    " 460 and nothing kept if it does not match.",
    pattern=f"^({'|'.join(tus.CHECKSUM_ALGORITHMS)}) {_BASE64}$",
    example="sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
)
UPLOAD_OFFSET = Header(
    "Upload-Offset",
    "Where the body starts: the upload's current offset (409 otherwise).",
    integer=True,
    required=True,
)
UPLOAD_OFFSET_ANSWER = Header("Upload-Offset", "The upload's offset now.", integer=True)
UPLOAD_EXPIRES = Header("Upload-Expires", "When the upload expires (an HTTP date).")
LOCATION = Header("Location", "The new upload's URL: `/files/<id>`.")
OFFSET_BODY = Body(OFFSET_MEDIA_TYPE, "The upload's bytes from Upload-Offset on.", required=False)
CAPABILITIES = Answer(
    204,
    "The server's tus capabilities.",
    headers=(
        Header("Tus-Version", "The versions the server speaks."),
        Header("Tus-Extension", "The extensions it implements."),
        Header("Tus-Max-Size", "The largest upload, in bytes.", integer=True),
        Header("Tus-Checksum-Algorithm", "The Upload-Checksum algorithms it computes."),
        Header("Allow", "The methods this path serves."),
    ),
)
#: What every tus request may meet before its handler does anything of its own.
TUS_ERRORS = (tus.UnsupportedTusVersion, InvalidRequest)
UPLOAD_ERRORS = (*TUS_ERRORS, UploadNotFound, SessionExpired)
COMPLETION_ERRORS = (ValidationFailed, CorruptBlob, ConcurrencyConflict, ChunkSwept)


def refused_at(request: AnyRequest, error: ChunkstoreError, location: str) -> Response[bytes]:
    """The error answer to a creation whose upload exists nonetheless, with its Location."""
    refused = problems.chunkstore_error(request, error)
    refused.headers["Location"] = location
    return refused


def owner_of(request: AnyRequest) -> str:
    return str(request.user)


def check_version(request: AnyRequest) -> None:
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        raise tus.UnsupportedTusVersion(
            f"Tus-Resumable must be {TUS_VERSION}, not {quote(version) if version else 'absent'}",
            supported=TUS_VERSION,
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
    headers = {"Upload-Offset": str(state.stream_offset), "Cache-Control": "no-store"}
    if state.stream.length_deferred:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(state.total_size)
    if state.stream.metadata:
        headers["Upload-Metadata"] = state.stream.metadata
    if state.stream.concat == "partial":
        headers["Upload-Concat"] = "partial"
    elif state.stream.concat == "final":
        headers["Upload-Concat"] = "final;" + " ".join(f"{FILES}/{p}" for p in state.stream.parts)
    if state.expires_at is not None and state.status == Status.ACTIVE:
        headers["Upload-Expires"] = http_date(state)
    return headers


def offset_headers(state: SessionState) -> dict[str, str]:
    """What a PATCH answers: the new offset, and when the upload expires."""
    headers = {"Upload-Offset": str(state.stream_offset)}
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


def capabilities_answer(request: AnyRequest, tus_uploads: TusUploads) -> Response[None]:
    """What OPTIONS answers on any tus URL: the capabilities, and the methods the path
    serves (read from the router, so a method added to the controller is listed)."""
    return Response(
        content=None,
        status_code=204,
        headers={
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": ",".join(tus.EXTENSIONS),
            "Tus-Max-Size": str(tus_uploads.settings.max_file_size),
            "Tus-Checksum-Algorithm": ",".join(tus.CHECKSUM_ALGORITHMS),
            "Allow": allowed_methods(request),
        },
    )


class TusController(Controller):
    path = FILES

    def get_route_handlers(self) -> list[BaseRouteHandler]:
        """OPTIONS handlers first. Litestar gives a path whose first handler is not an
        OPTIONS one an OPTIONS handler of its own, whose ``Allow`` lists only the methods
        registered so far, and that handler then wins over ours; a controller registers its
        handlers in an order set by their ids (it answered ``Allow: HEAD, OPTIONS`` on an
        upload's URL)."""
        handlers = super().get_route_handlers()
        return sorted(
            handlers,
            key=lambda handler: (
                not (isinstance(handler, HTTPRouteHandler) and "OPTIONS" in handler.http_methods)
            ),
        )

    @route(
        "/",
        http_method=HttpMethod.OPTIONS,
        status_code=204,
        exclude_from_auth=True,
        opt=contract(answers=[CAPABILITIES], always=[TUS_RESUMABLE_ANSWER]),
    )
    async def capabilities(self, request: AnyRequest, tus_uploads: TusUploads) -> Response[None]:
        """Server capabilities (no auth: browsers send this preflight without it)."""
        return capabilities_answer(request, tus_uploads)

    # The same answer on an upload's URL (a browser's preflight before PATCH or HEAD). Left
    # out of the OpenAPI document: it reads no upload, so a deleted upload's URL still
    # answers it, which a schema cannot tell from a read of the upload.
    @route(
        "/{upload_id:str}",
        http_method=HttpMethod.OPTIONS,
        status_code=204,
        exclude_from_auth=True,
        include_in_schema=False,
    )
    async def upload_capabilities(
        self, request: AnyRequest, tus_uploads: TusUploads
    ) -> Response[None]:
        return capabilities_answer(request, tus_uploads)

    @post(
        "/",
        status_code=201,
        request_max_body_size=None,
        opt=contract(
            *TUS_ERRORS,
            InvalidFilename,
            DisallowedType,
            TooLarge,
            TooManySessions,
            UploadNotFound,
            UploadNotActive,
            UnsupportedMediaType,
            tus.UnsupportedChecksumAlgorithm,
            tus.TusChecksumMismatch,
            *COMPLETION_ERRORS,
            body=OFFSET_BODY,
            headers=[
                TUS_RESUMABLE,
                UPLOAD_LENGTH,
                UPLOAD_DEFER_LENGTH,
                UPLOAD_METADATA,
                UPLOAD_CONCAT,
                UPLOAD_CHECKSUM,
            ],
            answers=[
                Answer(
                    201,
                    "Created; with a body (creation-with-upload), its bytes are stored.",
                    headers=(LOCATION, UPLOAD_OFFSET_ANSWER, UPLOAD_EXPIRES),
                )
            ],
            always=[TUS_RESUMABLE_ANSWER],
        ),
    )
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
        with_body = has_body(request.scope)
        if with_body:
            require_offset_body(request)
        # A malformed or unknown Upload-Checksum is refused before anything exists, with a
        # body or without one (then it checks nothing, but it is still a bad request).
        checksum_of(request)
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
                refused.headers["Upload-Offset"] = str(state.stream_offset)
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

    @head(
        "/{upload_id:str}",
        opt=contract(
            *UPLOAD_ERRORS,
            headers=[TUS_RESUMABLE],
            answers=[
                Answer(
                    200,
                    "The upload's offset and what creation declared.",
                    headers=(
                        UPLOAD_OFFSET_ANSWER,
                        Header("Upload-Length", "The upload's size.", integer=True),
                        Header("Upload-Defer-Length", "`1` while the size is not declared."),
                        Header("Upload-Metadata", "As sent at creation."),
                        Header("Upload-Concat", "`partial`, or `final;<part URLs>`."),
                        UPLOAD_EXPIRES,
                        Header("Cache-Control", "`no-store`."),
                    ),
                )
            ],
            always=[TUS_RESUMABLE_ANSWER],
        ),
    )
    async def head_upload(
        self, request: AnyRequest, upload_id: str, tus_uploads: TusUploads
    ) -> Response[None]:
        """The upload's current offset: where to resume."""
        check_version(request)
        state = await asyncio.to_thread(tus_uploads.head, owner_of(request), upload_id)
        # Litestar wants HEAD handlers typed bodiless; b"" keeps it from encoding None.
        return Response(content=b"", status_code=200, headers=upload_headers(state))  # type: ignore[arg-type]

    @get("/{upload_id:str}", sync_to_thread=True, opt=downloads.DOWNLOAD_CONTRACT)
    def download_upload(
        self, request: AnyRequest, upload_id: str, service: UploadService
    ) -> Response[Any]:
        """Not tus itself: as tusd does, an upload's URL downloads the completed file,
        exactly as ``GET /api/v1/files/{upload_id}`` (owner only, Range, ETag)."""
        return downloads.download(request, service, upload_id)

    @patch(
        "/{upload_id:str}",
        status_code=204,
        request_max_body_size=None,
        opt=contract(
            *UPLOAD_ERRORS,
            UnsupportedMediaType,
            tus.UnsupportedChecksumAlgorithm,
            IncompleteBody,
            tus.FinalUploadImmutable,
            tus.OffsetMismatch,
            UploadNotActive,
            TooLarge,
            UploadLocked,
            tus.TusChecksumMismatch,
            *COMPLETION_ERRORS,
            body=Body(OFFSET_MEDIA_TYPE, "The upload's bytes from Upload-Offset on."),
            headers=[TUS_RESUMABLE, UPLOAD_OFFSET, UPLOAD_LENGTH, UPLOAD_CHECKSUM],
            answers=[
                Answer(
                    204,
                    "Stored; the upload is completed when its offset reaches its length.",
                    headers=(UPLOAD_OFFSET_ANSWER, UPLOAD_EXPIRES),
                )
            ],
            always=[TUS_RESUMABLE_ANSWER],
        ),
    )
    async def patch_upload(
        self, request: AnyRequest, upload_id: str, tus_uploads: TusUploads
    ) -> Response[None]:
        """Append bytes at the upload's offset."""
        check_version(request)
        require_offset_body(request)
        offset = int_header(request, "upload-offset")
        if offset is None:
            raise InvalidRequest("Upload-Offset is required")
        length = int_header(request, "upload-length")
        state = await write_body(request, tus_uploads, upload_id, offset, length)
        return Response(content=None, status_code=204, headers=offset_headers(state))

    @delete(
        "/{upload_id:str}",
        status_code=204,
        opt=contract(
            *UPLOAD_ERRORS,
            UploadNotActive,
            UploadLocked,
            ConcurrencyConflict,
            headers=[TUS_RESUMABLE],
            answers=[Answer(204, "Terminated.")],
            always=[TUS_RESUMABLE_ANSWER],
        ),
    )
    async def terminate(self, request: AnyRequest, upload_id: str, tus_uploads: TusUploads) -> None:
        """Terminate the upload (termination)."""
        check_version(request)
        await asyncio.to_thread(tus_uploads.terminate, owner_of(request), upload_id)


def tus_middleware(app: ASGIApp, settings: Settings) -> ASGIApp:
    """Method override, Tus-Resumable and CORS for ``/files``; other paths pass through."""
    origins = settings.cors_origins

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
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
                # "MUST be included in every request and response except for OPTIONS
                # requests": the exception is the client's OPTIONS request, not the answer.
                extra: list[tuple[bytes, bytes]] = [(b"tus-resumable", TUS_VERSION.encode())]
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
