"""``GET /api/v1/files/{upload_id}``: a completed upload's bytes, whole or one range;
``DELETE`` of the same URL deletes it. ``GET /files/{upload_id}`` on a tus upload's URL
answers the same as the GET (``download``).

The owner only (another owner's upload is a 404, like a missing one); a session that is
not completed is a 409, a deleted one a 404. The body is streamed from the final file,
or from the chunks when that file is gone; it is never loaded whole.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any
from urllib.parse import quote

from litestar import Request, Response, delete, get
from litestar.response import Stream

from api.contract import Answer, Header, contract
from chunkstore.application import UploadService
from chunkstore.errors import (
    ConcurrencyConflict,
    CorruptBlob,
    RangeNotSatisfiable,
    UploadLocked,
    UploadNotActive,
    UploadNotFound,
)
from chunkstore.reading import FileNotReady, StoredFile, read_range, stored_file

AnyRequest = Request[Any, Any, Any]
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Unsatisfiable(Exception):
    """The range names no byte of the file (416)."""


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=`` range; None means "send it all" (a
    malformed or multi-range header may be ignored, RFC 9110 14.2)."""
    match = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return start, min(end, size - 1)


def _disposition(filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


def _wants_range(request: AnyRequest, etag: str) -> str | None:
    """The Range header, unless an If-Range names another version of the file."""
    header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if header and if_range is not None and if_range.strip() != etag:
        return None
    return header


_FILE_HEADERS = (
    Header("ETag", "The file's SHA-256, quoted."),
    Header("Accept-Ranges", "`bytes`."),
    Header("Content-Disposition", "`attachment` with the file's name."),
    Header("Content-Length", "The length of this body.", integer=True),
)


#: What a download answers, wherever it is served (here and on a tus upload's URL).
DOWNLOAD_CONTRACT = contract(
    UploadNotFound,
    FileNotReady,
    RangeNotSatisfiable,
    CorruptBlob,
    headers=[
        Header("Range", "One `bytes=first-last` range (another form sends the whole file)."),
        Header("If-Range", "Send the range only if the ETag is still this one."),
        Header("If-None-Match", "304 if the ETag is this one (or `*`)."),
    ],
    answers=[
        Answer(200, "The whole file.", _FILE_HEADERS, media_type="*/*"),
        Answer(
            206,
            "The range asked for.",
            (*_FILE_HEADERS, Header("Content-Range", "`bytes first-last/size`.")),
            media_type="*/*",
        ),
        Answer(304, "Not modified: the client's copy is current.", _FILE_HEADERS[:3]),
    ],
)


@get("/api/v1/files/{upload_id:str}", sync_to_thread=True, opt=DOWNLOAD_CONTRACT)
def download_file(request: AnyRequest, upload_id: str, service: UploadService) -> Response[Any]:
    """A completed upload's bytes, whole or one range (the owner only)."""
    return download(request, service, upload_id)


def download(request: AnyRequest, service: UploadService, upload_id: str) -> Response[Any]:
    """A completed upload's bytes for its owner, whole or the range asked for; also
    what ``GET /files/{upload_id}`` (tus) answers."""
    state = service.get(str(request.user), upload_id)
    file = stored_file(state, service.store.files)
    etag = f'"{file.sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": _disposition(file.filename),
    }
    if request.headers.get("if-none-match", "").strip() in (etag, "*"):
        return Response(content=b"", status_code=304, headers=headers)
    header = _wants_range(request, etag)
    try:
        chosen = parse_range(header, file.size) if header else None
    except Unsatisfiable:
        raise RangeNotSatisfiable(
            f"the file has {file.size} bytes; ask for a range inside 0-{file.size - 1}",
            size=file.size,
        ) from None
    return _stream(service, file, chosen, headers)


@delete(
    "/api/v1/files/{upload_id:str}",
    status_code=204,
    opt=contract(UploadNotFound, UploadNotActive, UploadLocked, ConcurrencyConflict),
)
async def delete_file(request: AnyRequest, upload_id: str, service: UploadService) -> None:
    """Delete a completed upload: its file now, its unshared chunks at gc's next run."""
    owner = str(request.user)
    await asyncio.to_thread(service.delete_upload, owner, upload_id, "deleted by the owner")


def _stream(
    service: UploadService,
    file: StoredFile,
    chosen: tuple[int, int] | None,
    headers: dict[str, str],
) -> Stream:
    first, last = chosen if chosen is not None else (0, file.size - 1)
    if chosen is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{file.size}"
    headers["Content-Length"] = str(last - first + 1)
    pieces = read_range(file, service.store.blobs, service.store.files, first, last)
    # The first piece is read (and its chunk re-hashed) before the answer starts, so a
    # damaged first chunk is a corrupt-blob problem; damage further on can only cut the
    # body short, once the status has gone out.
    opening = next(pieces, None)
    return Stream(
        itertools.chain([opening], pieces) if opening is not None else iter(()),
        status_code=206 if chosen is not None else 200,
        media_type=file.mime_type,
        headers=headers,
    )
