"""WorkerPool: threads, reuse, limits, standby fan-out, what a thread keeps,
the one locked step per job, expiry, shutdown, statistics, contexts, fork."""

from __future__ import annotations

import contextvars
import gc
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import qiotask
from qiotask import _deadline
from qiotask._limiter import Limiter
from qiotask._pool import DEFAULT_MAX_WORKERS, WorkerPool, default_pool

from .conftest import TIMEOUT, Deliveries, MakePool, wait_for  # the make_pool and gate fixtures live there too
from .interleave import interleaving


def blocking(gate: threading.Event, result: Any = None) -> Callable[[], Any]:
    """A job that waits (bounded) for ``gate``, then returns ``result``."""

    def job() -> Any:
        assert gate.wait(TIMEOUT), "the test never released the job"
        return result

    return job


def whoami() -> threading.Thread:
    return threading.current_thread()


# -- running and delivering ---------------------------------------------------


def test_submit_runs_fn_and_deliver_on_the_same_pool_thread(make_pool: MakePool) -> None:
    pool = make_pool(2)
    ran_on: list[threading.Thread] = []

    def fn() -> str:
        ran_on.append(threading.current_thread())
        return "result"

    done = Deliveries()
    pool.submit(fn, done)
    done.wait()
    [(result, exc, delivered_on)] = done.calls
    assert (result, exc) == ("result", None)
    assert ran_on == [delivered_on]
    assert delivered_on is not threading.current_thread()
    assert delivered_on.name.startswith("test-pool-worker-")


def test_exception_from_fn_reaches_deliver_with_traceback(make_pool: MakePool) -> None:
    pool = make_pool(1)

    def failing_job() -> None:
        raise ValueError("boom")

    done = Deliveries()
    pool.submit(failing_job, done)
    done.wait()
    [(result, exc, _)] = done.calls
    assert result is None
    assert isinstance(exc, ValueError) and str(exc) == "boom"
    assert exc.__traceback__ is not None
    assert "failing_job" in [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


def test_exception_from_deliver_is_logged_and_the_thread_carries_on(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(1)  # one thread: the second job must run on the same one
    bad_deliver_ran_on: list[threading.Thread] = []

    def bad_deliver(result: Any, exc: BaseException | None) -> None:
        bad_deliver_ran_on.append(threading.current_thread())
        raise RuntimeError("deliver broke")

    done = Deliveries()
    with caplog.at_level(logging.ERROR, logger="qiotask"):
        pool.submit(lambda: 1, bad_deliver)
        pool.submit(lambda: 2, done)
        done.wait()  # the log record was written before the second job started

    assert done.results == [2]
    assert done.calls[0][2] is bad_deliver_ran_on[0]
    records = [r for r in caplog.records if r.name == "qiotask"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)
    assert "deliver broke" in caplog.text


# -- nothing of a delivered job is kept ---------------------------------------


class Result:
    """A job's result that only a weakref of the test points to."""


class Boom(Exception):
    pass


class TrackedJob:
    """``fn`` as an object, so that a weakref can watch it, and its result
    or exception (made here, so that only the pool could keep them)."""

    def __init__(self, outcome: str, refs: dict[str, weakref.ref[Any]]) -> None:
        self.outcome = outcome
        self.refs = refs

    def _track(self, name: str, obj: Any) -> Any:
        self.refs[name] = weakref.ref(obj)
        return obj

    def __call__(self) -> Result:
        if self.outcome == "exception":
            raise self._track("exception", Boom("nobody keeps me"))
        return self._track("result", Result())  # type: ignore[no-any-return]


class DroppingDeliver:
    """``deliver`` as an object that notes what came, and on which thread,
    without keeping it."""

    def __init__(self, seen: list[tuple[str, str, threading.Thread]], delivered: threading.Event) -> None:
        self.seen = seen
        self.delivered = delivered

    def __call__(self, result: Any, exc: BaseException | None) -> None:
        self.seen.append((type(result).__name__, type(exc).__name__, threading.current_thread()))
        self.delivered.set()


@pytest.mark.parametrize("outcome", ["result", "exception"])
@pytest.mark.parametrize("thread", ["a new thread", "a reused thread"])
def test_nothing_of_a_delivered_job_stays_referenced(make_pool: MakePool, thread: str, outcome: str) -> None:
    # Issue 9, item 6: a thread kept its first job (fn and deliver) for its
    # whole life, and its last result until the next job.
    pool = make_pool(1, grow_after=None)
    warm: list[threading.Thread] = []
    if thread == "a reused thread":
        first = Deliveries()
        pool.submit(whoami, first)
        first.wait()
        warm = first.results
        wait_for(lambda: pool.statistics()["busy"] == 0, TIMEOUT, "the thread to go idle")
    refs: dict[str, weakref.ref[Any]] = {}
    seen: list[tuple[str, str, threading.Thread]] = []
    delivered = threading.Event()
    fn = TrackedJob(outcome, refs)
    deliver = DroppingDeliver(seen, delivered)
    refs["fn"] = weakref.ref(fn)
    refs["deliver"] = weakref.ref(deliver)
    pool.submit(fn, deliver)
    del fn, deliver
    assert delivered.wait(TIMEOUT)
    # The thread drops the job before its next-job step, in which it goes
    # idle: once idle, it holds nothing.  Nothing more is submitted.
    wait_for(lambda: pool.statistics()["busy"] == 0, TIMEOUT, "the thread to go idle")
    gc.collect()  # only cycles of the job's own making; the pool's references are not cycles
    assert sorted(refs) == sorted(["fn", "deliver", outcome])
    assert [name for name, ref in sorted(refs.items()) if ref() is not None] == []
    [(result_type, exc_type, ran_on)] = seen
    assert (result_type, exc_type) == (("Result", "NoneType") if outcome == "result" else ("NoneType", "Boom"))
    if warm:
        assert ran_on is warm[0]


# -- one locked step per job --------------------------------------------------


def test_the_next_job_step_counts_the_job_and_sees_a_lane_made_meanwhile(
    make_pool: MakePool, gate: threading.Event
) -> None:
    # After deliver returns, "count it done, take the next job (any lane) or
    # go idle" is one locked step: a priority lane made while the thread was
    # delivering is seen by it.
    pool = make_pool(1, grow_after=None)
    order: list[str] = []

    def record(name: str) -> Callable[[], str]:
        def job() -> str:
            order.append(name)
            return name

        return job

    entered = threading.Event()

    def first() -> str:
        entered.set()
        assert gate.wait(TIMEOUT)
        order.append("first")
        return "first"

    done = Deliveries(3)
    pool.submit(first, done)
    assert entered.wait(TIMEOUT)
    pool.submit(record("low"), done)  # queued at priority 0
    with interleaving() as il:
        finished = il.pause("pool.job-done", pool)
        gate.set()
        finished.wait_reached()  # "first" delivered; the next-job step not taken yet
        stats = pool.statistics()
        assert (stats["completed"], stats["busy"], stats["queued"]) == (0, 1, 1)
        pool.submit(record("high"), done, priority=5)
        finished.release()
        done.wait()
    assert order == ["first", "high", "low"]
    wait_for(lambda: pool.statistics()["busy"] == 0, TIMEOUT, "the thread to go idle")
    stats = pool.statistics()
    assert (stats["submitted"], stats["completed"], stats["queued"]) == (3, 3, 0)


def test_statistics_add_up_in_every_snapshot(make_pool: MakePool) -> None:
    # submitted == completed + queued + busy holds whenever the lock is free:
    # a job's completion is counted in the same locked step as the next pop
    # (it used to be counted, then popped, without the lock).
    pool = make_pool(2, grow_after=None)
    stop = threading.Event()
    broken: list[dict[str, Any]] = []

    def sample() -> None:
        while not stop.is_set():
            stats = pool.statistics()
            if stats["submitted"] != stats["completed"] + stats["queued"] + stats["busy"]:
                broken.append(dict(stats))
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    sampler = threading.Thread(target=sample, name="test-pool-sampler")
    sampler.start()
    total = 0
    try:
        # Rounds of jobs for about a second (at least three), or until a
        # snapshot fails to add up.
        until = time.monotonic() + 1.0
        rounds = 0
        while not broken and (rounds < 3 or time.monotonic() < until):
            rounds += 1
            done = Deliveries(2000)
            for _ in range(2000):
                pool.submit(int, done)
            total += 2000
            done.wait()
        wait_for(lambda: pool.statistics()["busy"] == 0 or bool(broken), TIMEOUT, "the pool to settle")
    finally:
        stop.set()
        sampler.join(TIMEOUT)
        sys.setswitchinterval(interval)
    assert not sampler.is_alive()
    assert broken == []
    assert pool.statistics()["completed"] == total


# -- threads: reuse, names, limits, fan-out -----------------------------------


def test_an_idle_thread_is_reused_before_a_new_one_is_started(make_pool: MakePool) -> None:
    pool = make_pool(4)
    threads: list[threading.Thread] = []
    for i in range(5):
        done = Deliveries()
        pool.submit(whoami, done)
        done.wait()
        threads.append(done.results[0])
        assert done.calls[0][2] is threads[-1]
        # Delivery happens a moment before the thread counts itself idle; the
        # contract is about idle threads, so wait for that before the next job.
        wait_for(lambda: pool.statistics()["busy"] == 0, TIMEOUT, f"the thread to go idle after job {i}")
        assert pool.statistics()["threads"] == 1
    assert len(set(threads)) == 1


def test_thread_names_start_with_the_pool_name(make_pool: MakePool) -> None:
    pool = make_pool(3)
    started = threading.Barrier(4, timeout=TIMEOUT)

    def job() -> str:
        started.wait()  # three jobs at once: three distinct threads
        return threading.current_thread().name

    done = Deliveries(3)
    for _ in range(3):
        pool.submit(job, done)
    started.wait()
    done.wait()
    names = done.results
    assert len(set(names)) == 3
    assert all(name.startswith("test-pool-worker-") for name in names), names


@pytest.mark.parametrize("max_workers", [1, 3])
def test_max_workers_is_respected(make_pool: MakePool, gate: threading.Event, max_workers: int) -> None:
    pool = make_pool(max_workers, grow_after=None)  # growth past max_workers: test_pool_scheduling.py
    total = 3 * max_workers
    cond = threading.Condition()
    running = 0
    peak = 0
    started: list[int] = []

    def job(i: int) -> Callable[[], int]:
        def run() -> int:
            nonlocal running, peak
            with cond:
                started.append(i)
                running += 1
                peak = max(peak, running)
                cond.notify_all()
            try:
                assert gate.wait(TIMEOUT)
            finally:
                with cond:
                    running -= 1
            return i

        return run

    done = Deliveries(total)
    for i in range(total):
        pool.submit(job(i), done)
    with cond:
        assert cond.wait_for(lambda: running == max_workers, TIMEOUT), f"only {running} jobs started"
    stats = pool.statistics()
    assert stats["busy"] == max_workers
    assert stats["threads"] == max_workers
    assert stats["queued"] == total - max_workers

    gate.set()
    done.wait()
    assert done.errors == []
    assert sorted(done.results) == list(range(total))
    assert peak == max_workers
    assert pool.statistics()["threads"] <= max_workers
    if max_workers == 1:
        assert started == list(range(total))


def test_jobs_start_in_submission_order_on_a_single_thread(make_pool: MakePool, gate: threading.Event) -> None:
    pool = make_pool(1, grow_after=None)
    order: list[int] = []
    first = Deliveries()
    pool.submit(blocking(gate), first)  # holds the thread while the rest queue up
    done = Deliveries(20)
    for i in range(20):
        pool.submit(lambda i=i: order.append(i), done)  # type: ignore[misc]
    gate.set()
    first.wait()
    done.wait()
    assert order == list(range(20))


def test_blocking_jobs_fan_out_across_threads(make_pool: MakePool) -> None:
    # submit() hands a job straight to a sleeping thread only when no thread
    # runs; the other three jobs are queued and picked up by the ticking
    # standby, one thread after another.  All four must end up running at once.
    pool = make_pool(4)
    all_running = threading.Barrier(4 + 1, timeout=TIMEOUT)

    def job() -> threading.Thread:
        all_running.wait()
        return threading.current_thread()

    done = Deliveries(4)
    for _ in range(4):
        pool.submit(job, done)
    all_running.wait()  # raises BrokenBarrierError if the jobs did not spread
    done.wait()
    assert done.errors == []
    assert len(set(done.results)) == 4
    assert pool.statistics()["threads"] == 4


def test_a_burst_of_short_jobs_all_complete(make_pool: MakePool) -> None:
    pool = make_pool(4)
    done = Deliveries(200)
    for i in range(200):
        pool.submit(lambda i=i: i, done)  # type: ignore[misc]
    done.wait()
    assert sorted(done.results) == list(range(200))
    assert done.errors == []
    wait_for(lambda: pool.statistics()["completed"] == 200, TIMEOUT, "the completed count to reach 200")
    stats = pool.statistics()
    assert stats["submitted"] == 200
    assert stats["threads"] <= 4


# -- idle expiry --------------------------------------------------------------


def test_idle_threads_expire_and_a_later_submit_starts_a_new_one(make_pool: MakePool) -> None:
    pool = make_pool(2, idle_timeout=0.05)
    done = Deliveries(3)
    for _ in range(3):
        pool.submit(whoami, done)
    done.wait()
    old_threads = set(done.results)
    wait_for(lambda: pool.statistics()["threads"] == 0, TIMEOUT, "idle threads to expire")
    stats = pool.statistics()
    assert stats["idle"] == 0 and stats["busy"] == 0

    again = Deliveries()
    pool.submit(whoami, again)
    again.wait()
    [new_thread] = again.results
    assert new_thread not in old_threads
    assert new_thread.name.startswith("test-pool-worker-")


@pytest.mark.parametrize(
    "idle_timeout", [math.inf, 10**400, 2 * threading.TIMEOUT_MAX], ids=["inf", "10**400", "2*TIMEOUT_MAX"]
)
def test_an_idle_timeout_beyond_timeout_max_means_idle_threads_never_expire(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch, idle_timeout: float
) -> None:
    # Issue 9, item 7: the first idle thread died of OverflowError, and the
    # next job handed to it stayed queued for ever.
    crashes: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args.exc_value))
    pool = make_pool(1, idle_timeout=idle_timeout)
    assert pool.idle_timeout == math.inf
    first = Deliveries()
    pool.submit(whoami, first)
    first.wait()
    wait_for(lambda: pool.statistics()["idle"] == 1, TIMEOUT, "the thread to go idle")
    second = Deliveries()
    pool.submit(whoami, second)  # handed to the idle thread
    second.wait()
    assert second.results == first.results
    assert crashes == []
    assert pool.statistics()["threads"] == 1


# -- shutdown -----------------------------------------------------------------


def test_shutdown_waits_for_threads_and_returns_true(make_pool: MakePool) -> None:
    pool = make_pool(2)
    done = Deliveries(2)
    pool.submit(whoami, done)
    pool.submit(whoami, done)
    done.wait()
    assert pool.shutdown(wait=True, timeout=TIMEOUT) is True
    assert pool.statistics()["threads"] == 0
    assert not any(thread.is_alive() for thread in done.results)


def test_submit_after_shutdown_raises(make_pool: MakePool) -> None:
    pool = make_pool(1)
    assert pool.shutdown(wait=True, timeout=TIMEOUT) is True
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None, Deliveries())
    assert pool.statistics()["submitted"] == 0


def test_shutdown_still_runs_jobs_queued_before_it(make_pool: MakePool, gate: threading.Event) -> None:
    pool = make_pool(1, grow_after=None)
    order: list[int] = []
    done = Deliveries(6)
    pool.submit(blocking(gate, -1), done)
    for i in range(5):
        pool.submit(lambda i=i: order.append(i) or i, done)  # type: ignore[func-returns-value, misc]
    assert pool.statistics()["queued"] == 5

    assert pool.shutdown(wait=False) is False  # the blocked thread is still there
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None, Deliveries())
    gate.set()
    assert pool.shutdown(wait=True, timeout=TIMEOUT) is True
    assert done.all_done.is_set()
    assert done.results == [-1, 0, 1, 2, 3, 4]
    assert order == [0, 1, 2, 3, 4]


def test_shutdown_times_out_on_a_stuck_job(make_pool: MakePool, gate: threading.Event) -> None:
    pool = make_pool(2)
    entered = threading.Event()

    def stuck() -> None:
        entered.set()
        assert gate.wait(TIMEOUT)

    done = Deliveries()
    pool.submit(stuck, done)
    assert entered.wait(TIMEOUT)
    assert pool.shutdown(wait=True, timeout=0.05) is False
    assert not done.all_done.is_set()
    gate.set()
    assert pool.shutdown(wait=True, timeout=TIMEOUT) is True
    assert done.all_done.is_set()
    assert done.errors == []


def test_shutdown_with_an_infinite_timeout_waits_without_limit(make_pool: MakePool) -> None:
    pool = make_pool(1)

    def job() -> str:
        # Returns once shutdown() has begun, so that it has a thread to wait for.
        wait_for(lambda: pool.statistics()["idle"] == 0 and pool._shutdown, TIMEOUT, "shutdown() to begin")
        return "done"

    done = Deliveries()
    pool.submit(job, done)
    assert pool.shutdown(wait=True, timeout=math.inf) is True  # was OverflowError
    assert done.results == ["done"]
    assert pool.statistics()["threads"] == 0


def test_shutdown_with_wait_from_the_pools_own_threads_raises_at_once(make_pool: MakePool) -> None:
    # Two threads of the pool each waiting for the pool's threads would wait
    # for each other (before: each waited out its timeout and returned
    # False).  As ThreadPoolExecutor.shutdown(wait=True) from its own
    # worker, it raises; and it changes nothing, so wait=False still works.
    pool = make_pool(2)
    both = threading.Barrier(2)
    outcomes: list[str] = []
    lock = threading.Lock()

    def job() -> None:
        both.wait(TIMEOUT)
        started = time.monotonic()
        try:
            pool.shutdown(wait=True, timeout=TIMEOUT)
        except RuntimeError as exc:
            outcome = str(exc)
        else:
            outcome = "returned"
        with lock:
            outcomes.append(outcome)
        assert time.monotonic() - started < TIMEOUT / 2

    done = Deliveries(2)
    pool.submit(job, done)
    pool.submit(job, done)
    done.wait()
    assert done.errors == []
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert "WorkerPool.shutdown(wait=True) called on 'test-pool-worker-" in outcome
        assert "a thread of pool 'test-pool': it would wait for its own thread; call shutdown(wait=False)" in outcome
    assert not pool._shutdown  # refused: the pool is left as it was

    stopped = Deliveries()
    pool.submit(lambda: pool.shutdown(wait=False), stopped)
    stopped.wait()
    assert stopped.results == [False]  # its own thread still ran
    assert pool.shutdown(wait=True, timeout=TIMEOUT) is True


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-1, ValueError), (math.nan, ValueError), ("1", TypeError), (True, TypeError)],
)
def test_shutdown_refuses_a_bad_timeout(make_pool: MakePool, timeout: Any, error: type[Exception]) -> None:
    pool = make_pool(1)
    with pytest.raises(error, match=r"^shutdown: timeout must"):
        pool.shutdown(timeout=timeout)
    assert pool.shutdown(wait=True, timeout=TIMEOUT) is True


# -- statistics and repr ------------------------------------------------------


def test_statistics_while_blocked_and_after_completion(make_pool: MakePool, gate: threading.Event) -> None:
    pool = make_pool(1, grow_after=None)
    entered = threading.Event()

    def first() -> None:
        entered.set()
        assert gate.wait(TIMEOUT)

    assert pool.statistics() == {
        "threads": 0,
        "busy": 0,
        "idle": 0,
        "queued": 0,
        "max_workers": 1,
        "submitted": 0,
        "completed": 0,
        "extra": 0,
        "queued_by_priority": {},
    }
    done = Deliveries(3)
    pool.submit(first, done)
    pool.submit(lambda: None, done)
    pool.submit(lambda: None, done)
    assert entered.wait(TIMEOUT)
    assert pool.statistics() == {
        "threads": 1,
        "busy": 1,
        "idle": 0,
        "queued": 2,
        "max_workers": 1,
        "submitted": 3,
        "completed": 0,
        "extra": 0,
        "queued_by_priority": {0: 2},
    }

    gate.set()
    done.wait()
    # completed is counted after deliver returns, busy after the queue is empty.
    wait_for(
        lambda: pool.statistics()["completed"] == 3 and pool.statistics()["busy"] == 0,
        TIMEOUT,
        "the pool to settle",
    )
    assert pool.statistics() == {
        "threads": 1,
        "busy": 0,
        "idle": 1,
        "queued": 0,
        "max_workers": 1,
        "submitted": 3,
        "completed": 3,
        "extra": 0,
        "queued_by_priority": {},
    }


def test_repr_names_the_pool(make_pool: MakePool) -> None:
    pool = make_pool(3, name="test-pool-repr")
    text = repr(pool)
    assert text.startswith("<WorkerPool ")
    assert "'test-pool-repr'" in text
    assert "max_workers=3" in text


# -- arguments and defaults ---------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"max_workers": 0}, ValueError, "max_workers"),
        ({"max_workers": -3}, ValueError, "max_workers"),
        ({"max_workers": "2"}, TypeError, "max_workers"),
        ({"max_workers": 2.0}, TypeError, "max_workers"),
        ({"max_workers": True}, TypeError, "max_workers"),
        ({"idle_timeout": -1}, ValueError, "idle_timeout"),
        ({"idle_timeout": float("nan")}, ValueError, "idle_timeout"),  # would kill the first thread
        ({"idle_timeout": "x"}, TypeError, "idle_timeout"),
        ({"idle_timeout": True}, TypeError, "idle_timeout"),
        ({"name": 3}, TypeError, "name"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, Any], error: type[Exception], argument: str) -> None:
    kwargs.setdefault("name", "test-pool")
    with pytest.raises(error, match=rf"^{argument} must"):
        WorkerPool(**kwargs)


def test_default_arguments(make_pool: MakePool) -> None:
    pool = make_pool()
    assert pool.max_workers == DEFAULT_MAX_WORKERS
    assert pool.statistics()["max_workers"] == DEFAULT_MAX_WORKERS
    assert pool.idle_timeout == 10.0
    assert WorkerPool.__init__.__kwdefaults__ == {"idle_timeout": 10.0, "name": "qiotask", "grow_after": 0.25}
    assert make_pool(1, idle_timeout=0).idle_timeout == 0.0


def test_default_max_workers_follows_the_thread_pool_executor_rule() -> None:
    assert DEFAULT_MAX_WORKERS == min(32, (os.cpu_count() or 1) + 4)
    assert qiotask.DEFAULT_MAX_WORKERS == DEFAULT_MAX_WORKERS
    assert qiotask.WorkerPool is WorkerPool


def test_default_pool_is_shared_and_recreated_after_shutdown() -> None:
    pool = default_pool()
    assert default_pool() is pool
    assert pool.name == "qiotask"
    assert pool.max_workers == DEFAULT_MAX_WORKERS

    assert pool.shutdown(wait=True, timeout=TIMEOUT) is True
    fresh = default_pool()  # also what every later test gets
    assert fresh is not pool
    assert default_pool() is fresh
    done = Deliveries()
    fresh.submit(whoami, done)
    done.wait()
    assert done.results[0].name.startswith("qiotask-worker-")


def test_the_default_pool_is_made_once_when_many_threads_ask_at_once() -> None:
    assert default_pool().shutdown(wait=True, timeout=TIMEOUT) is True
    askers = 8
    ready = threading.Barrier(askers, timeout=TIMEOUT)
    got: list[WorkerPool] = []

    def ask() -> None:
        ready.wait()
        got.append(default_pool())

    threads = [threading.Thread(target=ask, name=f"test-pool-asker-{i}") for i in range(askers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert len(got) == askers
    assert len({id(pool) for pool in got}) == 1
    assert got[0] is default_pool()


# -- contexts -----------------------------------------------------------------


class InheritingThread(threading.Thread):
    """A Thread that runs in a copy of the context of the thread that starts
    it, as every new thread does on a free-threaded build (3.14t:
    ``sys.flags.thread_inherit_context``)."""

    inherited: contextvars.Context

    def start(self) -> None:
        self.inherited = contextvars.copy_context()
        super().start()

    def run(self) -> None:
        self.inherited.run(super().run)


_var: contextvars.ContextVar[str] = contextvars.ContextVar("test_pool_var", default="empty")


@pytest.mark.parametrize("inherit", [False, True], ids=["threads-as-built", "threads-inherit-context"])
def test_pool_threads_start_with_an_empty_context(
    make_pool: MakePool, gate: threading.Event, monkeypatch: pytest.MonkeyPatch, inherit: bool
) -> None:
    if inherit:
        monkeypatch.setattr(threading, "Thread", InheritingThread)
    pool = make_pool(2, grow_after=None)
    entered = threading.Event()

    def first() -> str:
        entered.set()
        assert gate.wait(TIMEOUT)
        return _var.get()

    done = Deliveries()
    second = Deliveries()

    def submit_with_the_var_set() -> None:
        _var.set("the submitter's")
        pool.submit(first, done)  # starts the pool's first thread
        assert entered.wait(TIMEOUT)
        pool.submit(_var.get, second)  # queued: starts a standby thread, which takes it
        second.wait()

    contextvars.copy_context().run(submit_with_the_var_set)
    gate.set()
    done.wait()
    assert done.errors == second.errors == []
    assert done.results == second.results == ["empty"]
    threads = {done.calls[0][2], second.calls[0][2]}
    assert len(threads) == 2
    assert all(isinstance(thread, InheritingThread) == inherit for thread in threads)


# -- fork ---------------------------------------------------------------------


def _fork() -> int:
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads.
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _run_in_child(check: Callable[[], int]) -> int:
    """Fork; the child exits with ``check()``, 99 if it raised.  Returns the
    child's exit status; a child that hangs is killed and fails the test."""
    pid = _fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 99
        try:
            code = check()
        finally:
            os._exit(code)
    return _reap(pid)


def _reap(pid: int) -> int:
    """The exit status of child ``pid``, waited for (bounded: a child that
    hangs is killed and fails the test)."""
    status = 0

    def reaped() -> bool:
        nonlocal status
        got, status = os.waitpid(pid, os.WNOHANG)
        return got == pid

    try:
        wait_for(reaped, 2 * TIMEOUT, "the forked child to exit")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    assert os.WIFEXITED(status), f"child ended with status {status:#x}"
    return os.WEXITSTATUS(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_pool_with_live_threads_works_in_a_forked_child(make_pool: MakePool, gate: threading.Event) -> None:
    pool = make_pool(2)
    closed = make_pool(1)
    closed.shutdown(wait=True, timeout=TIMEOUT)
    entered = threading.Event()

    def stuck() -> None:
        entered.set()
        assert gate.wait(TIMEOUT)

    # One thread blocked in a job, jobs queued, a standby thread ticking.
    blocked = Deliveries(3)
    pool.submit(stuck, blocked)
    pool.submit(lambda: None, blocked)
    pool.submit(lambda: None, blocked)
    assert entered.wait(TIMEOUT)
    assert pool.statistics()["threads"] >= 1

    def child() -> int:
        stats = pool.statistics()
        if stats["threads"] or stats["busy"] or stats["queued"]:
            return 2  # the parent's threads were carried over
        delivered = threading.Event()
        outcome: list[Any] = []

        def deliver(result: Any, exc: BaseException | None) -> None:
            outcome.append((result, exc, threading.current_thread()))
            delivered.set()

        pool.submit(lambda: "from child", deliver)
        if not delivered.wait(TIMEOUT):
            return 3
        result, exc, thread = outcome[0]
        if result != "from child" or exc is not None or thread is threading.current_thread():
            return 4
        try:
            closed.submit(lambda: None, deliver)
        except RuntimeError:
            pass
        else:
            return 5  # a pool shut down in the parent came back to life
        if not pool.shutdown(wait=True, timeout=TIMEOUT):
            return 6
        return 0

    assert _run_in_child(child) == 0
    gate.set()
    blocked.wait()
    assert blocked.errors == []


def _outcome_of(submit: Callable[[Callable[[], Any], Any], None], fn: Callable[[], Any]) -> Any:
    """Submit ``fn`` through ``submit(fn, deliver)``; its result (or exception), waited for."""
    delivered = threading.Event()
    outcome: list[Any] = []

    def deliver(result: Any, exc: BaseException | None) -> None:
        outcome.append(result if exc is None else exc)
        delivered.set()

    submit(fn, deliver)
    if not delivered.wait(TIMEOUT):
        return TimeoutError("not delivered")
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_fork_while_pools_limiters_and_deadlines_are_in_use(make_pool: MakePool, gate: threading.Event) -> None:
    # The fork handlers take every lock before the fork; the parent gets
    # them back, and the child starts with new ones and empty state.
    pool = make_pool(2)
    limiter = Limiter(1)
    entered = threading.Event()

    def hold_the_slot() -> str:
        entered.set()
        assert gate.wait(TIMEOUT)
        return "slot"

    limited = Deliveries(2)
    limiter._submit(pool, hold_the_slot, limited)
    limiter._submit(pool, lambda: "waited", limited)  # waits in the limiter
    assert entered.wait(TIMEOUT)
    pending = _deadline.call_at(time.monotonic() + 3600, lambda: None)
    default_pool()  # exists in the parent

    def child() -> int:
        if default_pool().statistics()["threads"] or pool.statistics()["threads"]:
            return 2  # the parent's threads were carried over
        if limiter.statistics() != {"limit": 1, "running": 0, "waiting": 0, "total": 0}:
            return 3
        if _outcome_of(default_pool().submit, lambda: "default") != "default":
            return 4
        if _outcome_of(pool.submit, lambda: "inherited pool") != "inherited pool":
            return 5
        fresh = WorkerPool(1, name="test-pool-child")
        if _outcome_of(fresh.submit, lambda: "new pool") != "new pool":
            return 6
        if _outcome_of(lambda fn, deliver: limiter._submit(pool, fn, deliver), lambda: "limited") != "limited":
            return 7
        fired = threading.Event()
        _deadline.call_at(time.monotonic(), fired.set)
        if not fired.wait(TIMEOUT):
            return 8
        if not (fresh.shutdown(wait=True, timeout=TIMEOUT) and pool.shutdown(wait=True, timeout=TIMEOUT)):
            return 9
        return 0

    assert _run_in_child(child) == 0
    # The parent's locks were released after the fork: all of it still works.
    gate.set()
    limited.wait()
    assert sorted(limited.results) == ["slot", "waited"]
    assert _outcome_of(default_pool().submit, lambda: "parent") == "parent"
    fired = threading.Event()
    _deadline.call_at(time.monotonic(), fired.set)
    assert fired.wait(TIMEOUT)
    assert pending.cancel() is True


def _held(lock: Any) -> bool:
    """Whether someone holds ``lock`` (a Lock or a Condition), by trying it."""
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="needs os.register_at_fork()")
def test_the_fork_handlers_take_every_lock_and_the_parent_gets_them_back(make_pool: MakePool) -> None:
    from qiotask import _context, _fork, _limiter, _pool, _state, _trace

    pools = [make_pool(1), make_pool(2), default_pool()]
    limiters = [Limiter(1), Limiter(3)]
    contexts = [qiotask.MainContext(name="forking"), qiotask.default_context()]

    def locks() -> list[Any]:
        return [
            _pool._default_lock,
            _pool._registry_lock,
            *(pool._lock for pool in pools),
            _limiter._registry_lock,
            *(limiter._lock for limiter in limiters),
            _deadline._cond,
            _trace._listeners_lock,
            *_state._locks,
            _context._default_lock,
            _context._contexts_lock,
            *(ctx._dispatcher._lock for ctx in contexts),
        ]

    try:
        assert not any(_held(lock) for lock in locks())
        # In the order os.fork() runs them: before handlers last-registered first.
        for before, _parent, _child in reversed(_fork.handlers):
            before()
        try:
            assert [_held(lock) for lock in locks()] == [True] * len(locks())
        finally:
            for _before, parent, _child in _fork.handlers:
                parent()
        assert not any(_held(lock) for lock in locks())
    finally:
        contexts[0].close()  # type: ignore[attr-defined]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_fork_waits_for_a_pool_lock_held_by_another_thread(make_pool: MakePool) -> None:
    pool = make_pool(1)
    forking = threading.Event()
    forked = threading.Event()
    pids: list[int] = []

    def fork() -> None:
        forking.set()
        pid = _fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os._exit(0 if pool.statistics()["threads"] == 0 else 2)
        pids.append(pid)
        forked.set()

    forker = threading.Thread(target=fork, name="test-pool-forker")
    with pool._lock:  # a thread in the middle of a locked step
        forker.start()
        assert forking.wait(TIMEOUT)
        # A bounded wait for what must not happen: the fork cannot complete
        # while this thread holds the lock.
        assert not forked.wait(0.2)
    forker.join(TIMEOUT)
    assert forked.is_set()
    assert _reap(pids[0]) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_job_that_forks_leaves_the_childs_pool_consistent(make_pool: MakePool) -> None:
    # In the child, the thread that forked is still inside a job of a pool
    # the fork emptied: once its job is delivered it must end, not run the
    # parent's queued jobs nor go idle in a pool that does not know it.
    pool = make_pool(1, grow_after=None)
    queued = threading.Event()
    ran_in_child: list[str] = []

    def check_in_child(forker: threading.Thread) -> int:
        # The job returns, is delivered, and the thread ends.  Seen by its
        # frame going away: in the child the forking thread is the main
        # thread, and Python 3.14's join() of the main thread never returns.
        try:
            wait_for(lambda: forker.ident not in sys._current_frames(), TIMEOUT, "the forking thread to end")
        except AssertionError:
            return 2
        if ran_in_child:
            return 3  # the parent's queued jobs ran in the child
        stats = pool.statistics()
        if (stats["threads"], stats["busy"], stats["idle"], stats["queued"], stats["completed"]) != (0, 0, 0, 0, 0):
            return 4
        if _outcome_of(pool.submit, lambda: "child job") != "child job":
            return 5
        return 0

    def job() -> int:
        assert queued.wait(TIMEOUT)
        pid = _fork()
        if pid:
            return pid
        forker = threading.current_thread()  # pragma: no cover - the rest runs in the child

        def check() -> None:  # pragma: no cover
            code = 99
            try:
                code = check_in_child(forker)
            finally:
                os._exit(code)

        threading.Thread(target=check, name="test-pool-child-check").start()  # pragma: no cover
        return 0  # pragma: no cover

    done = Deliveries()
    behind = Deliveries(2)
    pool.submit(job, done)
    for name in ("behind-1", "behind-2"):
        pool.submit(lambda name=name: ran_in_child.append(name) or name, behind)  # type: ignore[misc]
    queued.set()
    done.wait()
    [pid] = done.results
    assert pid > 0
    assert _reap(pid) == 0
    behind.wait()  # in the parent they run as usual
    assert sorted(behind.results) == ["behind-1", "behind-2"]


# -- bugs found by fault injection --------------------------------------------
#
# These patch private methods of one pool instance to widen a race or to make
# Thread.start() fail the way it does when the process hits its thread limit.


def test_shutdown_racing_a_submit_that_is_starting_a_thread(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(1)
    in_start = threading.Event()
    go = threading.Event()
    real_start = pool._start

    def slow_start(worker: Any) -> None:
        # submit() calls this after releasing the pool's lock; hold it here
        # so that shutdown() runs in the window between creating and starting.
        in_start.set()
        assert go.wait(TIMEOUT)
        real_start(worker)

    monkeypatch.setattr(pool, "_start", slow_start)
    done = Deliveries()
    submitter = threading.Thread(target=pool.submit, args=(lambda: "ok", done), name="test-pool-submitter")
    submitter.start()
    try:
        assert in_start.wait(TIMEOUT)
        # The job was accepted, so shutdown must wait for it (and time out
        # here, since the thread cannot start until `go` is set).
        assert pool.shutdown(wait=True, timeout=0.05) is False
    finally:
        go.set()
        submitter.join(TIMEOUT)
    assert pool.shutdown(wait=True, timeout=TIMEOUT) is True
    assert done.results == ["ok"]


def _fail_thread_start(pool: WorkerPool, monkeypatch: pytest.MonkeyPatch, fail: set[int]) -> None:
    """Make Thread.start() raise, as at the process's thread limit, for the
    pool's n-th new thread for each n in ``fail`` (counting from 1)."""
    real_new_thread = pool._new_thread_locked
    created = 0

    def new_thread(job: Any) -> Any:
        nonlocal created
        worker = real_new_thread(job)
        created += 1
        if created in fail:

            def start() -> None:
                raise RuntimeError("can't start new thread")

            assert worker.thread is not None
            worker.thread.start = start  # type: ignore[method-assign]
        return worker

    monkeypatch.setattr(pool, "_new_thread_locked", new_thread)


def test_a_job_whose_thread_cannot_start_is_rejected_cleanly(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(2)
    _fail_thread_start(pool, monkeypatch, fail={1})
    rejected = Deliveries()
    with pytest.raises(RuntimeError, match="can't start new thread"):
        pool.submit(lambda: "rejected", rejected)  # handed to a new thread that fails to start
    stats = pool.statistics()
    assert (stats["threads"], stats["busy"], stats["submitted"]) == (0, 0, 0)

    done = Deliveries()
    pool.submit(lambda: "next", done)  # the second thread starts fine
    done.wait()
    assert done.results == ["next"]
    assert rejected.calls == []


def test_a_standby_that_cannot_start_neither_loses_nor_duplicates_the_job(
    make_pool: MakePool, gate: threading.Event, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(2)
    _fail_thread_start(pool, monkeypatch, fail={2})
    first = Deliveries()
    pool.submit(blocking(gate, "first"), first)  # thread 1 starts fine
    queued = Deliveries()
    with caplog.at_level(logging.ERROR, logger="qiotask"):
        try:
            pool.submit(lambda: "queued", queued)  # queued; the standby (thread 2) fails to start
        except RuntimeError:
            accepted = False
        else:
            accepted = True
    gate.set()
    first.wait()
    wait_for(lambda: pool.statistics()["busy"] == 0, TIMEOUT, "the pool to go idle")
    # Either submit() refuses the job, and it never runs, or it accepts it,
    # and it runs once; an accepted job's failure to add a thread is logged.
    assert len(queued.calls) == int(accepted), f"accepted={accepted}, delivered {len(queued.calls)} times"
    assert pool.statistics()["submitted"] == 1 + accepted
    if accepted:
        assert any(r.name == "qiotask" and r.levelno == logging.ERROR for r in caplog.records)


def test_a_standby_that_takes_a_job_and_cannot_start_the_next_loses_no_job(
    make_pool: MakePool, gate: threading.Event, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    crashes: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args.exc_value))
    pool = make_pool(3)
    _fail_thread_start(pool, monkeypatch, fail={3})
    done = Deliveries(3)
    with caplog.at_level(logging.ERROR, logger="qiotask"):
        pool.submit(blocking(gate, "a"), done)  # thread 1 runs it
        pool.submit(blocking(gate, "b"), done)  # queued; thread 2 starts as standby
        pool.submit(blocking(gate, "c"), done)  # queued
        # The standby takes "b" and, with "c" still queued, arms a third
        # thread, whose start fails.  "b" and "c" must run all the same.
        wait_for(lambda: pool.statistics()["queued"] < 2, TIMEOUT, "the standby to take a job")
        gate.set()
        done.wait()
    assert sorted(done.results) == ["a", "b", "c"]
    assert crashes == []
    assert any(r.name == "qiotask" and r.levelno == logging.ERROR for r in caplog.records)
    assert pool.shutdown(wait=True, timeout=TIMEOUT) is True
