"""A loopback TCP proxy that breaks connections on purpose, to test a client's retries.

Each accepted connection is, with ``drop_probability``, doomed: it is closed (both
sides) once a random number of bytes, up to ``max_cut_after``, has crossed it in either
direction, so a cut can land in a request body, between requests or in an answer. At
most ``max_drops`` connections are doomed, so a client that retries always gets through
in the end; after ``lifetime`` seconds the proxy stops accepting. ``bytes_per_second``
slows every connection down, so a test can act while an upload is in flight.
``refusals`` lists HTTP statuses the proxy itself answers the first connections with
(after reading their request), as an overloaded server would, with ``Retry-After: 0``.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType

MiB = 1024 * 1024
PIECE = 64 * 1024


class _Link:
    """One proxied connection: the client's socket, the server's, and the cut point."""

    def __init__(self, downstream: socket.socket, upstream: socket.socket, cut_after: int | None):
        self.downstream = downstream
        self.upstream = upstream
        self.cut_after = cut_after
        self.transferred = 0
        self.closed = False
        self.finished_directions = 0
        self.lock = threading.Lock()

    def allowance(self, size: int) -> tuple[int, bool]:
        """How many of ``size`` bytes may pass, and whether the link is cut after them."""
        with self.lock:
            if self.closed:
                return 0, True
            if self.cut_after is None or self.transferred + size < self.cut_after:
                self.transferred += size
                return size, False
            passing = max(0, self.cut_after - self.transferred)
            self.transferred += passing
            return passing, True

    def direction_finished(self) -> None:
        """Close the sockets once both directions have ended on their own."""
        with self.lock:
            self.finished_directions += 1
            both = self.finished_directions == 2
        if both:
            self.close()

    def close(self) -> bool:
        """Close both sockets; True if this call did it."""
        with self.lock:
            if self.closed:
                return False
            self.closed = True
        for sock in (self.downstream, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        return True


class FlakyProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>, dropping some connections."""

    def __init__(
        self,
        target_port: int,
        *,
        drop_probability: float = 0.0,
        max_cut_after: int = 4 * MiB,
        max_drops: int = 8,
        bytes_per_second: float | None = None,
        seed: int = 0,
        lifetime: float = 300.0,
        refusals: Sequence[int] = (),
    ) -> None:
        self.target_port = target_port
        self.drop_probability = drop_probability
        self.max_cut_after = max_cut_after
        self.max_drops = max_drops
        #: May be changed while running (None: full speed).
        self.bytes_per_second = bytes_per_second
        self.lifetime = lifetime
        self.random = random.Random(seed)
        self.connections = 0
        self.doomed = 0
        self.drops = 0
        self.refusals = list(refusals)
        self.refused = 0
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self._acceptor.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop accepting and close every open connection."""
        self._stopping.set()
        if self._acceptor.is_alive():
            self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()

    def _cut_point(self) -> int | None:
        """Bytes after which a new connection is closed, or None to leave it alone."""
        with self._lock:
            self.connections += 1
            if self.doomed >= self.max_drops or self.random.random() >= self.drop_probability:
                return None
            self.doomed += 1
            return self.random.randint(0, self.max_cut_after)

    def _accept_loop(self) -> None:
        deadline = time.monotonic() + self.lifetime
        while not self._stopping.is_set() and time.monotonic() < deadline:
            try:
                downstream, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                refusal = self.refusals.pop(0) if self.refusals else None
            if refusal is not None:
                threading.Thread(
                    target=self._refuse, args=(downstream, refusal), daemon=True
                ).start()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                downstream.close()
                continue
            downstream.settimeout(None)
            upstream.settimeout(None)
            link = _Link(downstream, upstream, self._cut_point())
            with self._lock:
                self._links = [known for known in self._links if not known.closed] + [link]
            for source, target in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(
                    target=self._pump, args=(link, source, target), daemon=True
                ).start()

    def _pump(self, link: _Link, source: socket.socket, target: socket.socket) -> None:
        """Copy one direction until EOF, an error, or the link's cut point."""
        try:
            while True:
                data = source.recv(PIECE)
                if not data:
                    with contextlib.suppress(OSError):
                        target.shutdown(socket.SHUT_WR)
                    link.direction_finished()
                    return
                passing, cut = link.allowance(len(data))
                target.sendall(data[:passing])
                if cut:
                    if link.close():
                        with self._lock:
                            self.drops += 1
                    return
                rate = self.bytes_per_second
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            link.close()

    def _refuse(self, downstream: socket.socket, status: int) -> None:
        """Read one request whole, answer it with ``status`` and close the connection."""
        with downstream:
            try:
                downstream.settimeout(30)
                received = b""
                while b"\r\n\r\n" not in received:
                    piece = downstream.recv(PIECE)
                    if not piece:
                        return
                    received += piece
                head, _, body = received.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(body) < length:
                    piece = downstream.recv(PIECE)
                    if not piece:
                        return
                    body += piece
                problem = json.dumps(
                    {
                        "type": f"/problems/http-{status}",
                        "status": status,
                        "detail": "proxy says no",
                    }
                ).encode()
                downstream.sendall(
                    f"HTTP/1.1 {status} Refused\r\nContent-Type: application/problem+json\r\n"
                    f"Retry-After: 0\r\nContent-Length: {len(problem)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + problem
                )
                with self._lock:
                    self.refused += 1
            except OSError:
                return
