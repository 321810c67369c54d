"""A deadline on every request body: a client that stops sending is let go.

One ASGI wrapper around ``receive``, outside Litestar, so that every reader of a body is
covered the same way: the streamed raw chunk, batch and tus bodies and Litestar's own
JSON parsing alike. While a body is still arriving, each wait for its next piece may last
at most ``body_idle_timeout`` seconds; past that, ``receive`` raises ``RequestTimeout``.
That error is an ``IncompleteBody``, so each route keeps exactly what it keeps when a
body is cut off (a batch its whole frames, a tus PATCH without a checksum the bytes that
arrived; a single chunk nothing), releases what it held through its usual error paths
(temp files, the tus upload's lock) and answers 408 if the client still listens.

The connection must then close, and granian closes a connection whose body was not
read to the end only when it frees the request's protocol object. Objects of a request
that ended in an exception can live on in reference cycles (the exception's traceback
holds the frames that read the body) until Python's cycle collector runs, which an idle
worker may not do for a long time: the silent client's connection stayed open. So the
application reaches the server's ``receive`` and ``send`` only through ``Channel``,
which lets go of them once the request has been handled.
"""

from __future__ import annotations

import asyncio

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from chunkstore.errors import RequestTimeout

_DISCONNECTED: ReceiveMessage = {"type": "http.disconnect"}


async def _ended_receive() -> ReceiveMessage:
    return _DISCONNECTED


async def _ended_send(message: Message) -> None:
    raise RuntimeError("the request has been handled; nothing more can be sent")


class Channel:
    """One request's ``receive`` (with the body deadline) and ``send``."""

    __slots__ = ("_receive", "_send", "seconds", "body_done", "timed_out")

    def __init__(self, receive: Receive, send: Send, seconds: float) -> None:
        self._receive = receive
        self._send = send
        self.seconds = seconds
        self.body_done = False
        self.timed_out = False

    async def receive(self) -> ReceiveMessage:
        if self.body_done:
            # Past the body only a disconnect can come; waiting for it is no stall.
            return await self._receive()
        if self.timed_out:
            return _DISCONNECTED
        try:
            # asyncio.timeout, not wait_for: no task per piece (a body arrives in pieces
            # of about 300 KiB, thousands per GiB).
            async with asyncio.timeout(self.seconds):
                message = await self._receive()
        except TimeoutError:
            self.timed_out = True
        if self.timed_out:
            # Raised outside the except clause, so that it carries no context: the
            # cancelled wait's traceback holds the frames of the middlewares outside
            # this one, and through them the server's receive.
            raise RequestTimeout(
                f"no byte of the request body arrived for {self.seconds:g} s; the server"
                " stopped waiting. Ask for the upload's status and send the rest.",
                timeout_seconds=self.seconds,
            )
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        await self._send(message)

    def close(self) -> None:
        """Let go of the server's callables (see the module's docstring)."""
        self._receive = _ended_receive
        self._send = _ended_send


def body_idle_timeout_middleware(app: ASGIApp, seconds: float) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        channel = Channel(receive, send, seconds)
        try:
            await app(scope, channel.receive, channel.send)
        finally:
            channel.close()

    return middleware
