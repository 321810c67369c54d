"""Worker processes end when the process that started them dies.

``chunkstore serve`` runs a main process that forks the granian workers. If the main
process dies without stopping them (SIGKILL, the OOM killer), a worker is reparented and
goes on serving on the port and the data directory, beside any server started again
there. Each worker therefore ties its life to its parent at start-up: on Linux with
``prctl(PR_SET_PDEATHSIG, SIGKILL)``, elsewhere with a thread that checks every
``POLL_SECONDS`` whether its parent is still the process that started it.

SIGKILL, not a graceful SIGTERM. The kernel sends the death signal once for every
thread of the parent that exits (it hands the child from one dying thread to the next),
and granian's worker signal handler blocks for good, holding the GIL, on the second
SIGTERM it gets before its server loop runs (the third after): a worker then hung
forever, no Python code in it able to run. The parent died abnormally in any case, and
killing a worker at any instant is safe: kill -9 loses nothing that was acknowledged.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.5
#: Seconds a worker's graceful stop may take (requests in flight finishing) when the main
#: process is told to stop, before granian's main process kills it.
STOP_TIMEOUT = 10
#: Set by ``chunkstore serve`` to its own pid before it starts any worker.
PARENT_PID_VARIABLE = "CHUNKSTORE_SERVE_PID"


def tie_to_parent(parent_pid: int) -> None:
    """Called in a worker at start-up; ``parent_pid`` is the pid of the process that
    started it, recorded by that process before the worker existed."""
    told_by_kernel = set_parent_death_signal(signal.SIGKILL)
    # The parent may have died before the signal was armed: then the worker already
    # belongs to another process, and nothing would ever tell it.
    if os.getppid() != parent_pid:
        os._exit(1)
    if not told_by_kernel:
        watcher = threading.Thread(
            target=watch_parent, args=(parent_pid,), name="parent-watch", daemon=True
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


def watch_parent(parent_pid: int) -> None:
    """Where there is no prctl: end the process once its parent is another one."""
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)
