"""Group commit (``chunkstore.groupcommit``) and the SQLite log's grouped appends:
concurrent callers share one batch, each gets its own result or error."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from chunkstore.errors import ConcurrencyConflict
from chunkstore.eventlog.sqlite import SQLiteLog
from chunkstore.events import ChunkStored
from chunkstore.groupcommit import GroupCommit
from tests.contracts.eventlog import D0, D1, append, initiated, state_of
from tests.helpers import wait_for

THREADS = 6


def run_together(count: int, work: Callable[[int], object]) -> list[object]:
    """``work(n)`` in ``count`` threads; their results (or exceptions) by n."""
    results: list[object] = [None] * count

    def run(n: int) -> None:
        try:
            results[n] = work(n)
        except Exception as error:
            results[n] = error

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_callers_queued_behind_a_batch_run_together_in_the_next() -> None:
    batches: list[list[int]] = []
    first = threading.Event()

    def run_batch(jobs: list[int]) -> list[int | BaseException]:
        batches.append(jobs)
        if len(batches) == 1:
            first.set()
            # Hold the first batch until every other caller has queued behind it.
            wait_for(lambda: group.jobs == THREADS, "every caller queued")
        return [job * 10 for job in jobs]

    group: GroupCommit[int, int] = GroupCommit(run_batch)
    leader = threading.Thread(target=lambda: group.submit(0))
    leader.start()
    first.wait(timeout=60)
    results = run_together(THREADS - 1, lambda n: group.submit(n + 1))
    leader.join(timeout=60)

    assert results == [10, 20, 30, 40, 50]
    assert [len(batch) for batch in batches] == [1, THREADS - 1]
    assert group.batches == 2


def test_a_job_refused_in_a_batch_fails_only_its_own_caller() -> None:
    def run_batch(jobs: list[int]) -> list[int | BaseException]:
        return [ValueError(f"job {job}") if job == 3 else job for job in jobs]

    group: GroupCommit[int, int] = GroupCommit(run_batch)

    results = run_together(THREADS, group.submit)

    assert [type(r) for r in results].count(ValueError) == 1
    assert [r for r in results if not isinstance(r, Exception)] == [0, 1, 2, 4, 5]


def test_a_batch_that_fails_fails_every_caller_in_it() -> None:
    def run_batch(jobs: list[int]) -> list[int | BaseException]:
        raise OSError("the disk went away")

    group: GroupCommit[int, int] = GroupCommit(run_batch)

    with pytest.raises(OSError, match="went away"):
        group.submit(1)
    results = run_together(3, group.submit)
    assert all(isinstance(r, OSError) for r in results)


def test_concurrent_appends_share_a_transaction_and_a_conflict_fails_alone(
    tmp_path: Path,
) -> None:
    log = SQLiteLog(tmp_path / "events.sqlite3")
    try:
        streams = [f"u{n}" for n in range(THREADS)]
        for stream in streams:
            append(log, stream, [initiated()])
        stale = state_of(log, "u3")
        append(log, "u3", [ChunkStored(0, D0, 1000)])  # u3 moves on: the stale append conflicts
        held = threading.Event()

        def hold_first_batch() -> None:
            # The first append's precondition runs inside the first batch: it waits
            # until every other append is queued, so they make one batch together.
            if not held.is_set():
                held.set()
                wait_for(lambda: log._appends.jobs >= before + THREADS, "every append queued")

        before = log._appends.jobs
        batches_before = log._appends.batches

        def work(n: int) -> object:
            if n == 3:
                return log.append(
                    "u3", stale.version, [ChunkStored(1, D1, 1000)], project_of(stale)
                )
            return append(log, streams[n], [ChunkStored(1, D1, 1000)], hold_first_batch)

        results = run_together(THREADS, work)

        assert isinstance(results[3], ConcurrencyConflict)
        assert sum(1 for r in results if isinstance(r, Exception)) == 1
        assert log._appends.batches - batches_before == 2  # one alone, then the rest
        for stream in streams:
            assert state_of(log, stream).version == 2
        # u3 kept its own chunk; the stale append left nothing behind.
        assert [r.event for r in log.read("u3")][1:] == [ChunkStored(0, D0, 1000)]
        positions = [recorded.position for recorded in log.read_all()]
        assert positions == list(range(1, len(positions) + 1))  # gap-free
    finally:
        log.close()


def project_of(state: object) -> object:
    from chunkstore.projections import project
    from chunkstore.session import SessionState, replay

    assert isinstance(state, SessionState)
    events = [ChunkStored(1, D1, 1000)]
    return project(replay(events, state), events)
