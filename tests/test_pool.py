"""WorkerPool: threads, reuse, limits, standby fan-out, expiry, shutdown, statistics, fork."""

from __future__ import annotations

import logging
import os
import signal
import threading
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import qiotask
from qiotask._pool import DEFAULT_MAX_WORKERS, WorkerPool, default_pool

from .conftest import TIMEOUT, Deliveries, MakePool, wait_for  # the make_pool and gate fixtures live there too


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


# -- fork ---------------------------------------------------------------------


def _run_in_child(check: Callable[[], int]) -> int:
    """Fork; the child exits with ``check()``, 99 if it raised.  Returns the
    child's exit status; a child that hangs is killed and fails the test."""
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 99
        try:
            code = check()
        finally:
            os._exit(code)
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
