"""Worker processes end when the process that started them dies.

``chunkstore serve`` runs a main process that forks the granian workers. If the main
process dies without stopping them (SIGKILL, the OOM killer), a worker is reparented and
goes on serving on the port and the data directory, beside any server started again
there. Each worker therefore ties its life to its parent at start-up:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel sends SIGTERM, which the
  worker handles as a normal graceful stop, the moment the parent dies;
- everywhere, a thread checks every ``POLL_SECONDS`` whether the parent is still the one
  that started the worker. Once it is not, it sets an alarm ``grace`` seconds ahead and,
  where there is no prctl, sends the SIGTERM itself.

The alarm is the deadline of the graceful stop, which a request in flight can hold up
indefinitely. SIGALRM's default action ends the process in the kernel, with no Python
code to run, so it works even when the interpreter is stuck: granian's worker signal
handler blocks, holding the GIL, from the third SIGTERM on (seen with a request in
flight), which is also why the watch never sends a SIGTERM the kernel already sent.
Ending a worker at any instant is safe: kill -9 loses nothing that was acknowledged.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.5
#: Seconds a worker's graceful stop may take (requests in flight finishing) before it is
#: ended: by granian's main process on SIGTERM, by the worker's alarm once orphaned.
STOP_TIMEOUT = 10
#: Set by ``chunkstore serve`` to its own pid before it starts any worker.
PARENT_PID_VARIABLE = "CHUNKSTORE_SERVE_PID"


def tie_to_parent(parent_pid: int, grace: float) -> None:
    """Called in a worker at start-up; ``parent_pid`` is the pid of the process that
    started it, recorded by that process before the worker existed."""
    told_by_kernel = set_parent_death_signal(signal.SIGTERM)
    # The parent may have died before the signal was armed: then the worker already
    # belongs to another process, and nothing would ever tell it.
    if os.getppid() != parent_pid:
        os._exit(1)
    watcher = threading.Thread(
        target=watch_parent,
        args=(parent_pid, grace, not told_by_kernel),
        name="parent-watch",
        daemon=True,
    )
    watcher.start()


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel for ``signum`` when the parent dies; False where there is no prctl."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):
        return False
    # prctl is variadic: pass every argument at its full width.
    args = (ctypes.c_ulong(signum), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    return int(prctl(ctypes.c_int(PR_SET_PDEATHSIG), *args)) == 0


def watch_parent(parent_pid: int, grace: float, send_stop: bool) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    signal.alarm(max(1, math.ceil(grace)))
    if send_stop:
        os.kill(os.getpid(), signal.SIGTERM)
