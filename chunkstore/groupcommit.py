"""Group commit: concurrent callers' work done together, one caller at a time leading.

A caller queues its job and, if no batch is running, runs every job queued so far in
one go (the leader); callers that queued meanwhile wait for the leader's results, or
lead the next batch. A lone caller runs at once, alone: nobody waits for company. What
a batch shares is whatever makes it worth batching: one ``fdatasync``, one synced
database transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

Job = TypeVar("Job")
Result = TypeVar("Result")


@dataclass
class _Queued(Generic[Job, Result]):
    job: Job
    result: Result | None = None
    error: BaseException | None = None
    done: bool = False


class GroupCommit(Generic[Job, Result]):
    """``submit(job)`` returns the job's result from ``run_batch``, which takes a batch of
    jobs and returns, per job in order, its result or the exception to raise to its
    caller. Should ``run_batch`` itself raise, every caller of that batch gets the error."""

    def __init__(self, run_batch: Callable[[list[Job]], list[Result | BaseException]]) -> None:
        self._run_batch = run_batch
        self._cond = threading.Condition()
        self._pending: list[_Queued[Job, Result]] = []
        self._leading = False
        #: Jobs submitted, and the batches they ran in (what batching saves shows here).
        self.jobs = 0
        self.batches = 0

    def submit(self, job: Job) -> Result:
        queued: _Queued[Job, Result] = _Queued(job)
        with self._cond:
            self._pending.append(queued)
            self.jobs += 1
            while not queued.done:
                if self._leading:
                    self._cond.wait()
                    continue
                batch, self._pending = self._pending, []
                self._leading = True
                self._cond.release()
                try:
                    self._lead(batch)
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._cond.notify_all()
        if queued.error is not None:
            raise queued.error
        return cast(Result, queued.result)

    def _lead(self, batch: list[_Queued[Job, Result]]) -> None:
        try:
            outcomes = self._run_batch([queued.job for queued in batch])
            self.batches += 1
        except BaseException as error:
            for queued in batch:
                queued.error, queued.done = error, True
            if not isinstance(error, Exception):
                raise  # KeyboardInterrupt and the like: the leader's own, too
            return
        for queued, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                queued.error = outcome
            else:
                queued.result = outcome
            queued.done = True
