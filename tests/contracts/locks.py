"""The lock port's contract: ``Locker``, one exclusive lock per upload."""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore.errors import UploadLocked
from chunkstore.locks import HeldLock, Locker
from tests.contracts.concurrency import THREADS, run_together


class LockerContract(abc.ABC):
    """Exclusive across threads (and, for a shared backend, processes), with a bounded
    wait; nothing outlives a release."""

    @abc.abstractmethod
    def make_locks(self, tmp_path: Path) -> Locker:
        """A new locker of the backend under test, with no lock held."""

    @pytest.fixture
    def locks(self, tmp_path: Path) -> Iterator[Locker]:
        yield self.make_locks(tmp_path)

    def test_a_held_lock_refuses_a_second_holder_at_once(self, locks: Locker) -> None:
        with locks.hold("u1"), pytest.raises(UploadLocked) as refused:
            locks.acquire("u1")
        assert refused.value.extensions["upload_id"] == "u1"

    def test_a_bounded_wait_for_a_held_lock_ends_in_upload_locked(self, locks: Locker) -> None:
        with locks.hold("u1"), pytest.raises(UploadLocked):
            locks.acquire("u1", wait=0.05)
        with locks.hold("u1"), pytest.raises(UploadLocked), locks.hold("u1", wait=0.05):
            pass

    def test_a_waiter_gets_the_lock_once_its_holder_lets_go(self, locks: Locker) -> None:
        holder = locks.acquire("u1")
        waiting = threading.Event()
        got: list[bool] = []

        def wait_for_it() -> None:
            waiting.set()
            with locks.hold("u1", wait=60):
                got.append(True)

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        assert waiting.wait(10)
        holder.release()
        waiter.join(60)
        assert got == [True]

    def test_locks_of_different_uploads_are_independent(self, locks: Locker) -> None:
        with locks.hold("u1"), locks.hold("u2"):
            assert locks.held() == ["u1", "u2"]
            with pytest.raises(UploadLocked):
                locks.acquire("u1")
        assert locks.held() == []

    def test_a_released_lock_is_free_at_once_and_no_longer_held(self, locks: Locker) -> None:
        assert locks.held() == []
        with locks.hold("u1"):
            assert locks.held() == ["u1"]
        assert locks.held() == []

        again = locks.acquire("u1")

        again.release()
        assert locks.held() == []

    def test_releasing_twice_is_harmless(self, locks: Locker) -> None:
        first = locks.acquire("u1")
        first.release()
        second = locks.acquire("u1")

        first.release()  # must not let go of the second holder's lock

        with pytest.raises(UploadLocked):
            locks.acquire("u1")
        second.release()
        second.release()
        assert locks.held() == []

    def test_a_lock_taken_in_one_thread_is_released_from_another(self, locks: Locker) -> None:
        # A tus PATCH takes the lock in a worker thread and lets go in the event loop's.
        taken: list[HeldLock] = []
        taker = threading.Thread(target=lambda: taken.append(locks.acquire("u1")))
        taker.start()
        taker.join(60)

        taken[0].release()

        with locks.hold("u1"):
            pass
        assert locks.held() == []

    def test_hold_lets_go_when_its_block_raises(self, locks: Locker) -> None:
        with pytest.raises(RuntimeError), locks.hold("u1"):
            raise RuntimeError("the work failed")

        assert locks.held() == []
        with locks.hold("u1"):
            pass

    def test_only_one_of_many_threads_holds_the_lock_at_a_time(self, locks: Locker) -> None:
        inside = 0
        most = 0
        turns = 0
        guard = threading.Lock()

        def work(n: int) -> None:
            nonlocal inside, most, turns
            for _ in range(50):
                with locks.hold("u1", wait=60):
                    with guard:
                        inside += 1
                        most = max(most, inside)
                        turns += 1
                    with guard:
                        inside -= 1

        run_together(work)

        assert most == 1
        assert turns == THREADS * 50
        assert locks.held() == []

    def test_sweep_leaves_a_held_lock_alone(self, locks: Locker) -> None:
        with locks.hold("u1"):
            assert locks.sweep(dry_run=True) == 0
            assert locks.sweep() == 0
            assert locks.held() == ["u1"]
            with pytest.raises(UploadLocked):
                locks.acquire("u1")
        assert locks.sweep() == 0
        assert locks.held() == []
