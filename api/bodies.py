"""Request bodies: how JSON bodies are decoded, whatever the route.

Litestar decodes a JSON body into plain values before it converts them to the handler's
``data`` type, and msgspec answers input nested deeper than the interpreter's recursion
limit (100,000 ``[``) with ``RecursionError``, which would be a 500. ``BodyRequest``
turns it into the 400 of any other body that cannot be decoded.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from chunkstore.errors import InvalidRequest


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
