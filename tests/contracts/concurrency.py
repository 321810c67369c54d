"""Threads started together, for the contracts' concurrency tests."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

#: Enough threads to interleave on any machine, few enough for two cores.
THREADS = 8


def run_together(work: Callable[[int], None], count: int = THREADS) -> None:
    """Run ``work(n)`` in ``count`` threads released at once; re-raise the first failure.
    The interpreter switches threads every few microseconds meanwhile, not every 5 ms:
    a backend written in Python gets interleaved inside its critical sections too."""
    start = threading.Barrier(count)
    failures: list[BaseException] = []

    def run(n: int) -> None:
        try:
            start.wait(60)
            work(n)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
            assert not thread.is_alive(), "a thread did not finish in 120 s"
    finally:
        sys.setswitchinterval(switch_interval)
    if failures:
        raise failures[0]
