"""Where the server's time goes in one upload: py-spy samples the worker process while a
case of the suite runs once, then prints the busiest functions.

    python -m benchmarks.profile raw|raw4|json|tus|client [--size-mib 256] [--out DIR]

Prints two tables: the share of samples in which each function was on the stack
(inclusive), and the share in which it was the innermost frame (self), over the worker's
threads that were not idle. ``--native`` adds C frames. The collapsed stacks are kept in
``--out`` (``<case>.txt``, the format flame graph tools read).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks import suite
from benchmarks.common import MiB, descendants, random_file, remove, scratch_dir, sha256_file

CASES = ("raw", "raw4", "json", "tus", "client")
#: Innermost frames of a thread that is waiting, not working.
#: (``_worker`` innermost is an idle pool thread blocked on its queue.)
_WAITS = ("Condition.wait", "EpollSelector.select", "Event.wait", "Thread.join", "_worker")


def run_case(case: str, server: suite.Server, path: Path, expected: str, work: Path) -> float:
    if case == "raw":
        return suite.run_raw(server, path, expected)
    if case == "raw4":
        return suite.run_raw_parallel(server, path, expected)
    if case == "json":
        return suite.run_json(server, path, expected)
    if case == "tus":
        return suite.run_tus(server, path, expected)
    return suite.client_run(server, path, expected, work)


def summarize(collapsed: Path, top: int) -> str:
    """Inclusive shares count only chunkstore's own functions (chunkstore/, api/); the
    samples of threads that were waiting are left out of both tables."""
    inclusive: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    busy = waiting = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")[1:]
        if not frames:
            continue
        name = frames[-1].split(" (")[0]
        if name.startswith(_WAITS):
            waiting += count
            continue
        busy += count
        innermost[name] += count
        ours = {
            f.split(" (")[0]
            for f in frames
            if ("chunkstore/" in f or "api/" in f) and "chunkstore/cli.py" not in f
        }
        for frame in ours:
            inclusive[frame] += count
    total = max(busy, 1)
    lines = [f"{busy} busy samples ({waiting} more in waiting threads)", ""]
    lines += ["chunkstore functions on the stack (inclusive):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "innermost frame (self):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in innermost.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=CASES)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--out", default="profiles")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true", help="sample C frames too")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    collapsed = out / f"{args.case}.txt"
    work = scratch_dir()
    try:
        path = random_file(args.size_mib * MiB, work)
        expected = sha256_file(path)
        server = suite.chunkstore_server(work, args.case)
        try:
            worker = [server.process.pid, *descendants(server.process.pid)][-1]  # type: ignore[union-attr]
            spy = [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(worker),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(collapsed),
                "--threads",
            ]
            sampler = subprocess.Popen(
                spy + (["--native"] if args.native else []),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
            seconds = run_case(args.case, server, path, expected, work)
            sampler.send_signal(signal.SIGINT)
            sampler.wait(timeout=60)
        finally:
            server.stop()
        print(
            f"{args.case}: {args.size_mib} MiB in {seconds:.2f} s"
            f" = {args.size_mib * MiB / seconds / 1e6:.0f} MB/s; stacks in {collapsed}"
        )
        print(summarize(collapsed, args.top))
    finally:
        remove(work)


if __name__ == "__main__":
    main()
