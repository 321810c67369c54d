"""Pacing: long background work in a server's worker that leaves the GIL to requests.

gc runs in a thread of the worker that serves requests. Left alone, a CPU-bound thread
gives the GIL up only when the interpreter forces a switch (every 5 ms,
``sys.getswitchinterval``), so each time a request's thread wants the GIL back (after
every read, query or write it made) it may wait up to 5 ms: with gc running back to
back over 10,000 uploads, the p99 of status requests went from 9.5 to 20 ms. A
``Pacer`` called between small steps of the work (a session, a blob, a batch) sleeps a
moment whenever the work has held on for ``work`` seconds: the sleep hands the GIL to
whichever thread waits for it, so a request waits at most about one slice.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds of work between rests, and the rest: gc runs at about two thirds of its speed.
WORK_SLICE = 0.002
REST = 0.001

Pace = Callable[[], None]


def no_pause() -> None:
    """The pace of work nobody waits on (the ``chunkstore gc`` command)."""


class Pacer:
    """Call between steps; rests ``rest`` seconds once ``work`` seconds went by."""

    def __init__(self, work: float = WORK_SLICE, rest: float = REST) -> None:
        self.work = work
        self.rest = rest
        self.rests = 0
        self._since = time.perf_counter()

    def __call__(self) -> None:
        if time.perf_counter() - self._since >= self.work:
            time.sleep(self.rest)
            self.rests += 1
            self._since = time.perf_counter()
