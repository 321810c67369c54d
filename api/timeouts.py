"""A deadline on every request body: a client that stops sending is let go.

One ASGI wrapper around ``receive``, outside Litestar, so that every reader of a body is
covered the same way: the streamed raw chunk, batch and tus bodies and Litestar's own
JSON parsing alike. While a body is still arriving, each wait for its next piece may last
at most ``body_idle_timeout`` seconds; past that, ``receive`` raises ``RequestTimeout``.
That error is an ``IncompleteBody``, so each route keeps exactly what it keeps when a
body is cut off (a batch its whole frames, a tus PATCH without a checksum the bytes that
arrived; a single chunk nothing), releases what it held through its usual error paths
(temp files, the tus upload's lock) and answers 408 if the client still listens.
"""

from __future__ import annotations

import asyncio

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from chunkstore.errors import RequestTimeout

_DISCONNECTED: Message = {"type": "http.disconnect"}


def body_idle_timeout_middleware(app: ASGIApp, seconds: float) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body_done = False
        timed_out = False

        async def receive_with_deadline() -> Message:
            nonlocal body_done, timed_out
            if body_done:
                # Past the body only a disconnect can come; waiting for it is no stall.
                return await receive()
            if timed_out:
                return _DISCONNECTED
            try:
                # asyncio.timeout, not wait_for: no task per piece (a body arrives in
                # pieces of about 300 KiB, thousands per GiB).
                async with asyncio.timeout(seconds):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                raise RequestTimeout(
                    f"no byte of the request body arrived for {seconds:g} s;"
                    " the server stopped waiting. Ask for the upload's status and send"
                    " the rest.",
                    timeout_seconds=seconds,
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await app(scope, receive_with_deadline, send)

    return middleware
