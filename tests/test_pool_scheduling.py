"""WorkerPool scheduling: priority lanes and GLib-style growth past max_workers."""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from qiotask import _deadline
from qiotask._pool import DEFAULT_GROW_AFTER, WorkerPool, default_pool

from .conftest import TIMEOUT, Deliveries, MakePool, wait_for  # the make_pool and gate fixtures live there too


def hold_the_thread(pool: WorkerPool, gate: threading.Event) -> Deliveries:
    """Submit a job that blocks on ``gate``; return once it runs."""
    entered = threading.Event()

    def job() -> None:
        entered.set()
        assert gate.wait(TIMEOUT), "the test never released the job"

    done = Deliveries()
    pool.submit(job, done)
    assert entered.wait(TIMEOUT)
    return done


# -- priority lanes -----------------------------------------------------------


def test_higher_priority_runs_first_and_fifo_within_a_priority(make_pool: MakePool, gate: threading.Event) -> None:
    pool = make_pool(1, grow_after=None)
    first = hold_the_thread(pool, gate)
    order: list[str] = []
    done = Deliveries(5)
    for label, priority in [("a", 0), ("b", 5), ("c", 1), ("d", 5), ("e", -1)]:
        pool.submit(lambda label=label: order.append(label), done, priority=priority)  # type: ignore[misc]

    stats = pool.statistics()
    assert stats["queued"] == 5
    assert stats["queued_by_priority"] == {5: 2, 1: 1, 0: 1, -1: 1}
    assert list(stats["queued_by_priority"]) == [5, 1, 0, -1]  # highest first

    gate.set()
    first.wait()
    done.wait()
    assert order == ["b", "d", "c", "a", "e"]
    assert done.errors == []
    assert pool.statistics()["queued_by_priority"] == {}


def test_many_jobs_across_lanes_drain_in_priority_order(make_pool: MakePool, gate: threading.Event) -> None:
    # Mostly priority 0 (the lane popped without the lock), with others
    # interleaved, queued again while the lanes drain.
    pool = make_pool(1, grow_after=None)
    first = hold_the_thread(pool, gate)
    order: list[tuple[int, int]] = []
    priorities = [0, 0, 3, 0, -2, 0, 3, 0, 0, -2, 7, 0] * 10
    done = Deliveries(len(priorities) + 3)
    for i, priority in enumerate(priorities):
        pool.submit(lambda i=i, p=priority: order.append((p, i)), done, priority=priority)  # type: ignore[misc]

    def late(p: int) -> Callable[[], None]:
        return lambda: order.append((p, -1))

    def submit_more() -> None:
        # Runs first (priority 9): these join their lanes behind what waits.
        order.append((9, -1))
        pool.submit(late(0), done)
        pool.submit(late(-2), done, priority=-2)

    pool.submit(submit_more, done, priority=9)
    gate.set()
    first.wait()
    done.wait()
    assert done.errors == []
    expected = (
        [(9, -1)]
        + [(p, i) for i, p in enumerate(priorities) if p == 7]
        + [(p, i) for i, p in enumerate(priorities) if p == 3]
        + [(p, i) for i, p in enumerate(priorities) if p == 0]
        + [(0, -1)]
        + [(p, i) for i, p in enumerate(priorities) if p == -2]
        + [(-2, -1)]
    )
    assert order == expected


def test_a_queued_low_priority_job_still_fans_out_to_a_spare_thread(make_pool: MakePool, gate: threading.Event) -> None:
    # The standby watches the oldest queued job whatever its lane.
    pool = make_pool(2, grow_after=None)
    first = hold_the_thread(pool, gate)
    both_running = threading.Barrier(2, timeout=TIMEOUT)
    done = Deliveries()
    pool.submit(both_running.wait, done, priority=-5)
    both_running.wait()  # raises BrokenBarrierError if it never ran beside the first job
    done.wait()
    gate.set()
    first.wait()
    assert done.errors == []


def test_an_int_enum_priority_is_accepted(make_pool: MakePool, gate: threading.Event) -> None:
    class Level(enum.IntEnum):
        LOW = -1
        HIGH = 2

    pool = make_pool(1, grow_after=None)
    first = hold_the_thread(pool, gate)
    order: list[str] = []
    done = Deliveries(2)
    pool.submit(lambda: order.append("low"), done, priority=Level.LOW)
    pool.submit(lambda: order.append("high"), done, priority=Level.HIGH)
    assert pool.statistics()["queued_by_priority"] == {2: 1, -1: 1}
    gate.set()
    first.wait()
    done.wait()
    assert order == ["high", "low"]


@pytest.mark.parametrize("priority", [True, False, 1.0, 0.0, "1", None, [0]])
def test_bad_priority_types_are_rejected(make_pool: MakePool, priority: Any) -> None:
    pool = make_pool(1)
    done = Deliveries()
    with pytest.raises(TypeError, match=r"^priority must be an int"):
        pool.submit(lambda: None, done, priority=priority)
    assert pool.statistics()["submitted"] == 0
    assert done.calls == []


# -- growth past max_workers --------------------------------------------------


class Chain:
    """``n`` jobs where job ``i`` waits for job ``i + 1`` to finish, and the
    last one waits for ``release``: on a pool of fewer than ``n`` threads
    they deadlock unless the pool grows."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.started = [threading.Event() for _ in range(n)]
        self.finished = [threading.Event() for _ in range(n)]
        self.started_at = [0.0] * n
        self.release = threading.Event()
        self.done = Deliveries(n)

    def job(self, i: int) -> Callable[[], int]:
        def run() -> int:
            self.started_at[i] = time.monotonic()
            self.started[i].set()
            after = self.release if i == self.n - 1 else self.finished[i + 1]
            assert after.wait(TIMEOUT), f"job {i} was never unblocked"
            self.finished[i].set()
            return i

        return run

    def submit_all(self, pool: WorkerPool) -> float:
        t0 = time.monotonic()
        for i in range(self.n):
            pool.submit(self.job(i), self.done)
        return t0

    def started_count(self) -> int:
        return sum(event.is_set() for event in self.started)


def test_jobs_that_wait_on_later_jobs_finish_by_growing_the_pool(make_pool: MakePool) -> None:
    grow_after = 0.05
    pool = make_pool(2, grow_after=grow_after, idle_timeout=60.0)
    chain = Chain(4)  # twice the pool size
    t0 = chain.submit_all(pool)

    assert chain.started[3].wait(TIMEOUT), f"the pool did not grow: {pool.statistics()}"
    stats = pool.statistics()
    assert (stats["threads"], stats["busy"], stats["extra"], stats["queued"]) == (4, 4, 2, 0)
    assert stats["max_workers"] == 2
    # One thread after grow_after, the next after a further 2 * grow_after
    # (the timer never fires early, so these lower bounds are exact).
    assert chain.started_at[2] - t0 >= grow_after
    assert chain.started_at[3] - t0 >= grow_after + 2 * grow_after

    chain.release.set()
    chain.done.wait()
    assert chain.done.errors == []
    assert sorted(chain.done.results) == [0, 1, 2, 3]
    # The extra threads retire as soon as they find the queue empty, not
    # after idle_timeout (60 s here).
    wait_for(lambda: pool.statistics()["extra"] == 0, TIMEOUT, "the extra threads to retire")
    wait_for(lambda: pool.statistics()["threads"] == 2, TIMEOUT, "the pool to shrink back to max_workers")
    stats = pool.statistics()
    assert stats["extra"] == 0 and stats["completed"] == 4


def test_without_growth_the_same_jobs_stall_at_max_workers(make_pool: MakePool) -> None:
    pool = make_pool(2, grow_after=None)
    chain = Chain(4)
    chain.submit_all(pool)
    assert chain.started[1].wait(TIMEOUT)
    # A bounded wait for what must not happen: with growth on, job 2 would
    # start after 0.25 s at the latest (see the test above: 0.05 s).
    assert not chain.started[2].wait(0.3)
    stats = pool.statistics()
    assert chain.started_count() == 2
    assert (stats["threads"], stats["busy"], stats["extra"], stats["queued"]) == (2, 2, 0, 2)

    chain.finished[2].set()  # unblock by hand: job 1 ends, then job 0
    chain.release.set()
    chain.done.wait()
    assert chain.done.errors == []
    assert pool.statistics()["extra"] == 0


def _growth_timers_of(pool: WorkerPool) -> int:
    """How many growth checks of ``pool`` the deadline thread has pending."""
    with _deadline._cond:
        return sum(
            getattr(entry[2].fn, "__self__", None) is pool and getattr(entry[2].fn, "__name__", "") == "_grow_check"
            for entry in _deadline._heap
        )


@pytest.mark.parametrize("grow_after", [math.inf, 10**400], ids=["inf", "10**400"])
def test_a_grow_after_beyond_timeout_max_turns_growth_off(
    make_pool: MakePool, gate: threading.Event, grow_after: float
) -> None:
    # Never means never: no growth timer is set, not even a far one (which
    # would keep the pool referenced from the deadline heap).
    pool = make_pool(1, grow_after=grow_after)
    assert pool.grow_after == math.inf
    first = hold_the_thread(pool, gate)
    queued = Deliveries()
    pool.submit(lambda: "queued", queued)  # every thread busy: a finite grow_after arms the timer here
    assert _growth_timers_of(pool) == 0
    stats = pool.statistics()
    assert (stats["threads"], stats["busy"], stats["queued"], stats["extra"]) == (1, 1, 1, 0)
    gate.set()
    first.wait()
    queued.wait()
    assert queued.results == ["queued"]


def test_a_finite_grow_after_arms_one_growth_timer(make_pool: MakePool, gate: threading.Event) -> None:
    pool = make_pool(1, grow_after=3600)
    first = hold_the_thread(pool, gate)
    queued = Deliveries(3)
    for _ in range(3):
        pool.submit(lambda: None, queued)
    assert _growth_timers_of(pool) == 1  # armed once, not once per queued job
    gate.set()
    first.wait()
    queued.wait()


def test_a_slow_pool_whose_jobs_finish_does_not_grow(make_pool: MakePool) -> None:
    # The oldest queued job waits far longer than grow_after, but a job
    # finishes every few milliseconds: not a stall, so no thread is added.
    pool = make_pool(1, grow_after=0.1)
    lock = threading.Lock()
    running = 0
    peak = 0

    def job() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.002)  # the work itself, not a synchronisation
        with lock:
            running -= 1

    done = Deliveries(150)
    for _ in range(150):
        pool.submit(job, done)
    extra_seen = 0
    deadline = time.monotonic() + TIMEOUT
    while not done.all_done.wait(0.01) and time.monotonic() < deadline:
        extra_seen = max(extra_seen, pool.statistics()["extra"])
    done.wait()
    assert done.errors == []
    assert peak == 1
    assert extra_seen == 0


def test_queued_jobs_that_wait_on_each_other_still_finish_after_shutdown(make_pool: MakePool) -> None:
    pool = make_pool(2, grow_after=0.02, idle_timeout=60.0)
    chain = Chain(4)
    chain.release.set()  # only the chain's own waits remain
    chain.submit_all(pool)
    assert pool.shutdown(wait=True, timeout=TIMEOUT) is True
    chain.done.wait()
    assert chain.done.errors == []
    stats = pool.statistics()
    assert (stats["threads"], stats["queued"], stats["completed"]) == (0, 0, 4)


def test_growth_honours_priorities(make_pool: MakePool, gate: threading.Event) -> None:
    # The extra thread takes the job that would run next, not the oldest.
    # grow_after leaves the two submits 0.1 s to happen before the first
    # check, and the second extra thread comes 0.2 s after the first.
    pool = make_pool(1, grow_after=0.1)
    first = hold_the_thread(pool, gate)
    ran: list[str] = []
    took = threading.Event()

    def record(label: str) -> Callable[[], None]:
        def run() -> None:
            ran.append(label)
            took.set()
            assert gate.wait(TIMEOUT)

        return run

    done = Deliveries(2)
    pool.submit(record("old-low"), done, priority=-1)
    pool.submit(record("new-high"), done, priority=1)
    assert took.wait(TIMEOUT)
    assert ran == ["new-high"]
    gate.set()
    first.wait()
    done.wait()
    assert sorted(ran) == ["new-high", "old-low"]


def test_an_extra_thread_that_cannot_start_loses_no_job(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The third thread (the first beyond max_workers) fails to start, as at
    # the process's thread limit: its job goes back to the queue, and the
    # next growth check starts a fourth thread that runs it, once.
    pool = make_pool(2, grow_after=0.02, idle_timeout=60.0)
    real_new_thread = pool._new_thread_locked
    created = 0

    def new_thread(job: Any) -> Any:
        nonlocal created
        worker = real_new_thread(job)
        created += 1
        if created == 3:

            def start() -> None:
                raise RuntimeError("can't start new thread")

            assert worker.thread is not None
            worker.thread.start = start  # type: ignore[method-assign]
        return worker

    monkeypatch.setattr(pool, "_new_thread_locked", new_thread)
    chain = Chain(3)
    chain.release.set()
    with caplog.at_level(logging.ERROR, logger="qiotask"):
        chain.submit_all(pool)
        chain.done.wait()
    assert chain.done.errors == []
    assert sorted(chain.done.results) == [0, 1, 2]
    assert created >= 4
    assert "could not start a thread beyond max_workers" in caplog.text
    wait_for(lambda: pool.statistics()["completed"] == 3, TIMEOUT, "the completed count to reach 3")
    assert pool.statistics()["submitted"] == 3


# -- arguments and defaults ---------------------------------------------------


@pytest.mark.parametrize(
    ("grow_after", "error"),
    [
        (-0.1, ValueError),
        (-1, ValueError),
        (float("nan"), ValueError),
        ("0.25", TypeError),
        (True, TypeError),
        ([0.25], TypeError),
    ],
)
def test_bad_grow_after_is_rejected(grow_after: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"^grow_after must"):
        WorkerPool(2, name="test-pool", grow_after=grow_after)


@pytest.mark.parametrize(("grow_after", "stored"), [(0, 0.0), (1, 1.0), (0.5, 0.5), (None, None)])
def test_good_grow_after_values(make_pool: MakePool, grow_after: Any, stored: float | None) -> None:
    assert make_pool(1, grow_after=grow_after).grow_after == stored


def test_grow_after_defaults(make_pool: MakePool) -> None:
    assert DEFAULT_GROW_AFTER == 0.25
    assert make_pool(1).grow_after == 0.25
    assert default_pool().grow_after == 0.25


def test_statistics_keep_the_old_keys_and_add_extra_and_queued_by_priority(make_pool: MakePool) -> None:
    stats = make_pool(3).statistics()
    assert set(stats) == {
        "threads",
        "busy",
        "idle",
        "queued",
        "max_workers",
        "submitted",
        "completed",
        "extra",
        "queued_by_priority",
    }
    assert stats["extra"] == 0
    assert stats["queued_by_priority"] == {}
