"""Route handlers: parse, call one service method, encode. No storage details here."""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Request, get, post, put
from litestar.exceptions import InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.params import QueryParameter

from api import problems
from api.bodies import BodyKind
from api.contract import Body, Follow, Header, contract
from api.schemas import (
    CancelBody,
    ChunkBody,
    ChunkPage,
    DigestList,
    InitBody,
    MissingDigests,
    UploadRef,
)
from chunkstore import batch, views
from chunkstore.application import UploadService
from chunkstore.bounds import quote
from chunkstore.commands import InitRequest
from chunkstore.errors import (
    ChecksumMismatch,
    ChunkConflict,
    ChunkIndexOutOfRange,
    ChunkListPastSize,
    ChunkNotDeclared,
    ChunkSizeMismatch,
    ChunkSwept,
    ChunkTooLarge,
    ConcurrencyConflict,
    CorruptBlob,
    DeclarationConflict,
    DisallowedType,
    FieldTooLong,
    IncompleteBody,
    InvalidFilename,
    InvalidRequest,
    ListTooLong,
    NotAChunkUpload,
    QuotaExceeded,
    SessionExpired,
    TooLarge,
    TooManySessions,
    UnsupportedMediaType,
    UploadIncomplete,
    UploadLocked,
    UploadNotActive,
    UploadNotFound,
    ValidationFailed,
)
from chunkstore.intake import Checksum
from chunkstore.session import SessionState
from chunkstore.views import (
    BatchReceipt,
    ChunkPageAnswer,
    ChunkReceipt,
    Completion,
    InitAnswer,
    QuotaAnswer,
    StatusAnswer,
)

AnyRequest = Request[Any, Any, Any]
UPLOAD = "/api/v1/upload"
NEW_ID = "$response.body#/upload_id"
BATCH_MEDIA_TYPE = batch.MEDIA_TYPE
CHUNK_CHECKSUM = Header(
    "X-Chunk-Checksum",
    "`sha256=<hex>` or `blake3=<hex>` of the chunk's bytes (400 if they do not match).",
    pattern="^(sha256|blake3)=[0-9a-f]{64}$",
    example="sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
)

#: What sending a chunk can meet, whichever transport carries it.
CHUNK_ERRORS = (
    InvalidRequest,
    ChecksumMismatch,
    ChunkSizeMismatch,
    ChunkIndexOutOfRange,
    ChunkTooLarge,
    UploadNotFound,
    ChunkConflict,
    UploadNotActive,
    SessionExpired,
    ConcurrencyConflict,
    ChunkSwept,
    NotAChunkUpload,
    ChunkNotDeclared,
)


def owner_of(request: AnyRequest) -> str:
    return str(request.user)


@get("/healthz", exclude_from_auth=True, sync_to_thread=False)
def healthz() -> dict[str, str]:
    """Liveness: `{"status": "ok"}` while the server answers."""
    return {"status": "ok"}


@get("/problems/{slug:str}", exclude_from_auth=True, sync_to_thread=False, opt=contract(404))
def problem_type(slug: str) -> dict[str, Any]:
    """Documentation of a problem type: the page its `type` URI names."""
    description = problems.describe(slug)
    if description is None:
        from litestar.exceptions import NotFoundException

        raise NotFoundException(f"no problem type {quote(slug)}")
    return description


@post(
    f"{UPLOAD}/init",
    status_code=201,
    sync_to_thread=True,
    opt=contract(
        InvalidRequest,
        InvalidFilename,
        DisallowedType,
        FieldTooLong,
        ListTooLong,
        TooLarge,
        QuotaExceeded,
        TooManySessions,
        ChunkSwept,
        ChunkListPastSize,
        follows=[
            Follow("status", "GET", f"{UPLOAD}/status/{{upload_id}}", (("upload_id", NEW_ID),)),
            Follow(
                "chunk",
                "PUT",
                f"{UPLOAD}/{{upload_id}}/chunks/{{index}}",
                (("upload_id", NEW_ID), ("index", 0)),
            ),
            Follow("batch", "POST", f"{UPLOAD}/{{upload_id}}/batch", (("upload_id", NEW_ID),)),
            Follow("complete", "POST", f"{UPLOAD}/complete", body={"upload_id": NEW_ID}),
            Follow("cancel", "POST", f"{UPLOAD}/cancel", body={"upload_id": NEW_ID}),
        ],
        limit=BodyKind.INIT,
    ),
)
def init_upload(request: AnyRequest, data: InitBody, service: UploadService) -> InitAnswer:
    """Start an upload session, by chunk size or by a declared list of chunks."""
    chunks = [(chunk.digest, chunk.size) for chunk in data.chunks] if data.chunks else None
    init = InitRequest(
        filename=data.filename,
        total_size=data.total_size,
        mime_type=data.mime_type,
        file_hash=data.file_hash,
        chunk_size=data.chunk_size,
        total_chunks=data.total_chunks,
        chunks=chunks,
        chunk_count=data.chunk_count,
        chunk_list_open=data.chunk_list_open,
    )
    state = service.init_upload(owner_of(request), init)
    return views.init_answer(state, service.settings.chunk_page_size)


@post(
    f"{UPLOAD}/{{upload_id:str}}/chunk-list",
    status_code=200,
    sync_to_thread=True,
    opt=contract(
        InvalidRequest,
        UploadNotFound,
        UploadNotActive,
        SessionExpired,
        DeclarationConflict,
        ListTooLong,
        TooLarge,
        ConcurrencyConflict,
        ChunkSwept,
        ChunkListPastSize,
        limit=BodyKind.CHUNK_LIST,
    ),
)
def declare_chunks(
    request: AnyRequest, upload_id: str, data: ChunkPage, service: UploadService
) -> ChunkPageAnswer:
    """The next page of a manifest-mode session's chunk list (see ``chunk_count``)."""
    page = [(chunk.digest, chunk.size) for chunk in data.chunks]
    state, needed = service.declare_chunks(owner_of(request), upload_id, data.start, page)
    return views.page_answer(state, data.start, needed, service.settings.chunk_page_size)


@post(
    f"{UPLOAD}/chunk",
    status_code=200,
    sync_to_thread=True,
    opt=contract(*CHUNK_ERRORS, TooLarge, limit=BodyKind.JSON_CHUNK),
)
def upload_chunk_json(request: AnyRequest, data: ChunkBody, service: UploadService) -> ChunkReceipt:
    """The seed's transport: base64 bytes in JSON with a SHA-256 checksum."""
    try:
        chunk = base64.b64decode(data.chunk_data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("chunk_data is not valid base64") from None
    return service.store_chunk(
        owner_of(request),
        data.upload_id,
        data.chunk_index,
        chunk,
        Checksum.parse(f"sha256={data.checksum}"),
    )


@put(
    f"{UPLOAD}/{{upload_id:str}}/chunks/{{index:int}}",
    status_code=200,
    opt=contract(
        *CHUNK_ERRORS,
        UnsupportedMediaType,
        IncompleteBody,
        body=Body("application/octet-stream", "The chunk's bytes."),
        headers=[CHUNK_CHECKSUM],
        limit=BodyKind.RAW_CHUNK,
    ),
)
async def upload_chunk_raw(
    request: AnyRequest, upload_id: str, index: int, service: UploadService
) -> ChunkReceipt:
    """The fast path: the chunk's raw bytes as the body, streamed to storage."""
    require_content_type(request, "application/octet-stream")
    checksum = request.headers.get("x-chunk-checksum")
    parsed = Checksum.parse(checksum) if checksum else None
    return await service.store_chunk_stream(
        owner_of(request), upload_id, index, body_of(request), content_length(request), parsed
    )


@post(
    f"{UPLOAD}/{{upload_id:str}}/batch",
    status_code=200,
    opt=contract(
        *CHUNK_ERRORS,
        UnsupportedMediaType,
        IncompleteBody,
        TooLarge,
        body=Body(
            BATCH_MEDIA_TYPE,
            "Frames of a 4-byte big-endian index, a 4-byte big-endian length, then the bytes.",
        ),
        limit=BodyKind.BATCH,
    ),
)
async def upload_batch(request: AnyRequest, upload_id: str, service: UploadService) -> BatchReceipt:
    """Many chunks in one body: frames of (u32 index, u32 length, bytes), big-endian."""
    require_content_type(request, BATCH_MEDIA_TYPE)
    return await service.store_batch_stream(
        owner_of(request), upload_id, body_of(request), content_length(request)
    )


@post(
    "/api/v1/chunks/missing",
    status_code=200,
    sync_to_thread=True,
    opt=contract(InvalidRequest, ListTooLong, TooLarge, limit=BodyKind.DIGESTS),
)
def missing_chunks(request: AnyRequest, data: DigestList, service: UploadService) -> MissingDigests:
    """Which of these digests the caller would have to send (its own chunks only)."""
    return MissingDigests(missing=service.missing_digests(owner_of(request), data.digests))


def require_content_type(request: AnyRequest, expected: str) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != expected:
        raise UnsupportedMediaType(f"send the body as {expected}", content_type=content_type)


def content_length(request: AnyRequest) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


async def body_of(request: AnyRequest) -> AsyncIterator[bytes]:
    """The request body; a client that goes away midway is a 400, not a server error,
    and a body cut off at the route's limit is the library's own TooLarge, so that a
    batch keeps its whole frames as it does at its own limit."""
    try:
        async for piece in request.stream():
            yield piece
    except InternalServerException as error:
        raise IncompleteBody("the request body ended before it was complete") from error
    except RequestEntityTooLarge:
        limit = request.route_handler.resolve_request_max_body_size()
        raise TooLarge(
            f"the request body exceeds this route's {limit} bytes", limit=limit
        ) from None


@post(
    f"{UPLOAD}/complete",
    status_code=200,
    sync_to_thread=True,
    opt=contract(
        UploadNotFound,
        UploadIncomplete,
        UploadNotActive,
        UploadLocked,
        SessionExpired,
        ValidationFailed,
        CorruptBlob,
        ConcurrencyConflict,
        TooLarge,
        limit=BodyKind.CONTROL,
    ),
)
def complete_upload(request: AnyRequest, data: UploadRef, service: UploadService) -> Completion:
    """Assemble, validate and publish the file; calling it again returns the same answer."""
    return service.complete_upload(owner_of(request), data.upload_id)


@post(
    f"{UPLOAD}/cancel",
    status_code=200,
    sync_to_thread=True,
    opt=contract(
        UploadNotFound,
        UploadNotActive,
        UploadLocked,
        FieldTooLong,
        ConcurrencyConflict,
        TooLarge,
        limit=BodyKind.CONTROL,
    ),
)
def cancel_upload(request: AnyRequest, data: CancelBody, service: UploadService) -> StatusAnswer:
    """Cancel an upload that is not completed."""
    state = service.cancel_upload(owner_of(request), data.upload_id, data.reason)
    return status_answer(request, service, state)


@get(f"{UPLOAD}/status/{{upload_id:str}}", sync_to_thread=True, opt=contract(UploadNotFound))
def upload_status(
    request: AnyRequest,
    upload_id: str,
    service: UploadService,
    start: Annotated[int, QueryParameter(name="from", ge=0)] = 0,
) -> StatusAnswer:
    """An upload's status, progress and expiry; chunk lists and ranges start at
    ``?from=INDEX`` (see ``next_from``)."""
    state = service.status(owner_of(request), upload_id)
    return status_answer(request, service, state, start)


def status_answer(
    request: AnyRequest, service: UploadService, state: SessionState, start: int = 0
) -> StatusAnswer:
    used, limit = service.quota_usage(owner_of(request))
    return views.status_answer(state, service.clock(), start, QuotaAnswer(used=used, limit=limit))


ROUTES = [
    healthz,
    problem_type,
    init_upload,
    declare_chunks,
    upload_chunk_json,
    upload_chunk_raw,
    upload_batch,
    missing_chunks,
    complete_upload,
    cancel_upload,
    upload_status,
]
