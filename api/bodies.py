"""Request bodies: how large each route's may be, and how JSON bodies are decoded.

Every route names the kind of body it takes (``opt=contract(..., limit=BodyKind.CONTROL)``) and
``with_body_limits`` gives it the limit that kind needs under the settings: a few KiB
for control requests, one page of declared chunks for init, the largest chunk for the
chunk routes. Litestar enforces it as ``request_max_body_size``: a Content-Length over
the limit is refused before a byte is read, and a chunked body is cut off once it
passes the limit; either way the answer is a 413 problem naming the limit
(``api/problems.py``). A route that names no kind gets the control limit.

Litestar decodes a JSON body into plain values before it converts them to the handler's
``data`` type, and msgspec answers input nested deeper than the interpreter's recursion
limit (100,000 ``[``) with ``RecursionError``, which would be a 500. ``BodyRequest``
turns it into the 400 of any other body that cannot be decoded.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from copy import copy
from typing import Any

from litestar import Request
from litestar.handlers import HTTPRouteHandler

from chunkstore.bounds import MAX_DIGESTS
from chunkstore.config import KiB, Settings
from chunkstore.errors import InvalidRequest

#: The ``opt`` key under which a route handler names the kind of body it takes.
BODY = "body"
#: ``{"upload_id": ..., "reason": ...}`` and the like, with room for JSON escapes.
CONTROL_BODY = 16 * KiB
#: JSON of one digest in a list, spaces and indentation included.
DIGEST_JSON = 80
#: JSON of one declared chunk (``{"digest": "<64 hex>", "size": 65536}``, 87 bytes
#: compact), with room for spaces and indentation.
DECLARED_CHUNK_JSON = 128
#: Everything in an init body but its chunks (a 1,024-character filename escaped as
#: JSON takes up to 12 KiB).
INIT_ENVELOPE = 64 * KiB


class BodyKind(enum.Enum):
    CONTROL = "control"
    #: ``POST /api/v1/upload/init``, which may declare a page of the file's chunks.
    INIT = "init"
    #: ``POST /api/v1/upload/{upload_id}/chunk-list``: one page of declared chunks.
    CHUNK_LIST = "chunk-list"
    #: ``POST /api/v1/chunks/missing``: at most ``MAX_DIGESTS`` digests.
    DIGESTS = "digests"
    #: The seed's JSON chunk: base64 of the largest chunk plus the envelope.
    JSON_CHUNK = "json-chunk"
    #: A raw chunk: the largest chunk.
    RAW_CHUNK = "raw-chunk"
    #: A batch of chunk frames: ``max_batch_size``.
    BATCH = "batch"


def body_limit(kind: BodyKind, settings: Settings) -> int:
    """The largest body, in bytes, a route taking ``kind`` accepts."""
    match kind:
        case BodyKind.CONTROL:
            return CONTROL_BODY
        case BodyKind.DIGESTS:
            return MAX_DIGESTS * DIGEST_JSON + CONTROL_BODY
        case BodyKind.INIT | BodyKind.CHUNK_LIST:
            return settings.chunk_page_size * DECLARED_CHUNK_JSON + INIT_ENVELOPE
        case BodyKind.JSON_CHUNK:
            return 4 * math.ceil(settings.max_chunk_size / 3) + CONTROL_BODY
        case BodyKind.RAW_CHUNK:
            return settings.max_chunk_size
        case BodyKind.BATCH:
            return settings.max_batch_size


def with_body_limits(handlers: Sequence[Any], settings: Settings) -> list[Any]:
    """Copies of ``handlers``, each with the body limit its ``opt`` names."""
    limited = []
    for handler in handlers:
        if isinstance(handler, HTTPRouteHandler) and BODY in handler.opt:
            handler = copy(handler)
            handler.request_max_body_size = body_limit(handler.opt[BODY], settings)
        limited.append(handler)
    return limited


class BodyRequest(Request[Any, Any, Any]):
    """The application's request class (``Litestar(request_class=...)``)."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise InvalidRequest("the JSON body is nested too deeply to be decoded") from None

    async def msgpack(self) -> Any:
        try:
            return await super().msgpack()
        except RecursionError:
            raise InvalidRequest("the MessagePack body is nested too deeply") from None
