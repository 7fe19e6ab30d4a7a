"""Cancellation and deadlines: cancel(), cancelled(), raise_if_cancelled(),
on_cancel(), abandon_on_cancel and run_in_thread(timeout=...)."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import qiotask
from qiotask import Task, TaskCancelled, TaskState, TaskTimeout

from .backends import open_backend, thread_default
from .conftest import Log, LoopRunner, wait_for


@pytest.fixture(params=["asyncio", "qt"])
def ctx(request: pytest.FixtureRequest) -> Iterator[qiotask.MainContext]:
    """Every test here runs on the embedded asyncio context and on a Qt
    application's loop."""
    with thread_default(open_backend(request.param)) as backend:
        yield backend.context


@pytest.fixture
def pool() -> Iterator[qiotask.WorkerPool]:
    made = qiotask.WorkerPool(1, name="test-pool")
    yield made
    assert made.shutdown(wait=True, timeout=5)


def blocker(pool: qiotask.WorkerPool) -> threading.Event:
    """Occupy the pool's only thread until the returned event is set."""
    release = threading.Event()
    started = threading.Event()
    pool.submit(lambda: (started.set(), release.wait(10)), lambda r, e: None)
    assert started.wait(5)
    return release


def test_cancel_a_queued_worker_on_the_context_thread(ctx: qiotask.MainContext, pool: qiotask.WorkerPool) -> None:
    log = Log()
    release = blocker(pool)
    task = Task(None, log.func, None, lambda o: log.add("destroy"))
    task.run_in_thread(lambda t, o: log.add("worker"), None, lambda o: log.add("worker-destroy"), pool=pool)
    assert task.state is TaskState.QUEUED
    assert task.cancel() is True
    # On the context thread the completion ran before cancel() returned.
    assert log.names() == ["func", "worker-destroy", "destroy"]
    assert isinstance(log.value("func"), TaskCancelled)
    assert task.cancelled() and task.done()
    assert task.cancel() is False
    release.set()
    wait_for(lambda: pool.statistics()["busy"] == 0, what="the pool to drain")
    assert "worker" not in log.names()  # the queued worker never started


def test_cancel_a_queued_worker_from_another_thread(runner: LoopRunner, pool: qiotask.WorkerPool) -> None:
    log = Log()
    release = blocker(pool)
    task = Task(None, log.func)
    task.add_done_callback(runner.quit)
    task.run_in_thread(lambda t, o: log.add("worker"), pool=pool)
    t = threading.Thread(target=task.cancel)
    t.start()
    t.join(5)
    assert log.names() == []  # handed over to the context
    runner.run()
    assert log.names() == ["func"] and isinstance(log.value("func"), TaskCancelled)
    assert log.events[0][2] == threading.current_thread().name
    release.set()
    wait_for(lambda: pool.statistics()["busy"] == 0, what="the pool to drain")
    assert "worker" not in log.names()


def test_cancel_wins_over_a_cooperative_workers_value(runner: LoopRunner) -> None:
    log = Log()
    running = threading.Event()

    def worker(task: Task[Any], opaque: Any) -> str:
        running.set()
        while not task.cancelled():
            if log.lock.acquire(timeout=0.001):  # a bounded unit of work
                log.lock.release()
        return "finished anyway"

    task = Task(None, log.func)
    task.add_done_callback(runner.quit)
    task.run_in_thread(worker)
    assert running.wait(5)
    assert task.cancel()
    runner.run()
    assert isinstance(log.value("func"), TaskCancelled)
    assert task.had_error()


def test_raise_if_cancelled(runner: LoopRunner) -> None:
    log = Log()
    running = threading.Event()
    go = threading.Event()

    def worker(task: Task[Any], opaque: Any) -> None:
        task.raise_if_cancelled()  # not cancelled yet: nothing happens
        running.set()
        assert go.wait(5)
        task.raise_if_cancelled()
        log.add("not reached")

    task = Task(None, log.func)
    task.add_done_callback(runner.quit)
    task.run_in_thread(worker)
    assert running.wait(5)
    task.cancel()
    go.set()
    runner.run()
    assert log.names() == ["func"]
    assert isinstance(log.value("func"), TaskCancelled)


def test_on_cancel_hook_unblocks_a_worker_blocked_in_recv(runner: LoopRunner) -> None:
    a, b = socket.socketpair()
    log = Log()
    in_recv = threading.Event()

    def worker(task: Task[Any], sock: socket.socket) -> bytes:
        in_recv.set()
        return sock.recv(100)  # blocks: nothing is ever sent

    def hook(task: Task[Any]) -> None:
        log.add("hook", threading.current_thread().name)
        a.shutdown(socket.SHUT_RDWR)  # recv() in the worker returns b""

    try:
        task = Task(None, log.func)
        task.on_cancel(hook)
        task.add_done_callback(runner.quit)
        task.run_in_thread(worker, a)
        assert in_recv.wait(5)
        canceller = threading.Thread(target=task.cancel, name="canceller")
        canceller.start()
        canceller.join(5)
        runner.run()
        assert log.names() == ["hook", "func"]
        assert log.value("hook") == "canceller"  # hooks run in the cancelling thread
        assert isinstance(log.value("func"), TaskCancelled)
        late: list[str] = []
        task.on_cancel(lambda t: late.append(threading.current_thread().name))
        assert late == [threading.current_thread().name]  # added after: runs at once
    finally:
        a.close()
        b.close()


def test_abandon_on_cancel_completes_at_once(runner: LoopRunner, pool: qiotask.WorkerPool) -> None:
    log = Log()
    running = threading.Event()
    release = threading.Event()

    def worker(task: Task[Any], opaque: Any) -> str:
        running.set()
        release.wait(10)
        return "too late"

    task = Task(None, log.func, None, lambda o: log.add("destroy"))
    task.run_in_thread(worker, "wop", lambda o: log.add("worker-destroy", o), pool=pool, abandon_on_cancel=True)
    assert running.wait(5)
    task.cancel()  # on the context thread: completes now
    assert log.names() == ["func", "destroy"]
    assert isinstance(log.value("func"), TaskCancelled)
    assert pool.statistics()["busy"] == 1  # the thread is still the worker's
    release.set()
    wait_for(lambda: pool.statistics()["busy"] == 0, what="the abandoned worker to return")
    runner.run_until(lambda: "worker-destroy" in log.names())
    assert log.names() == ["func", "destroy", "worker-destroy"]
    assert log.events[-1][2] == threading.current_thread().name
    assert task.get_result() is None  # the late result was dropped


def test_wait_thread_returns_when_an_abandoning_cancel_completes(ctx: qiotask.MainContext) -> None:
    log = Log()
    running = threading.Event()
    release = threading.Event()

    def worker(task: Task[Any], opaque: Any) -> None:
        running.set()
        release.wait(10)

    task = Task(None, log.func)
    task.run_in_thread(worker, abandon_on_cancel=True)
    assert running.wait(5)
    canceller = threading.Thread(target=task.cancel)
    canceller.start()
    task.wait_thread()  # the worker never returns before release: the cancel completes it
    canceller.join(5)
    assert log.names() == ["func"] and isinstance(log.value("func"), TaskCancelled)
    release.set()


def test_timeout_while_queued(runner: LoopRunner, pool: qiotask.WorkerPool) -> None:
    log = Log()
    release = blocker(pool)
    task = Task(None, log.func)
    task.add_done_callback(runner.quit)
    task.run_in_thread(lambda t, o: log.add("worker"), pool=pool, timeout=0.05)
    runner.run()
    err = log.value("func")
    assert isinstance(err, TaskTimeout) and isinstance(err, TimeoutError)
    assert "while queued" in str(err)
    release.set()
    wait_for(lambda: pool.statistics()["busy"] == 0, what="the pool to drain")
    assert "worker" not in log.names()


def test_timeout_while_running_is_delivered_when_the_worker_returns(runner: LoopRunner) -> None:
    log = Log()

    def worker(task: Task[Any], opaque: Any) -> str:
        for _ in range(10_000):  # cooperative, bounded
            if task.cancelled():
                log.add("saw the deadline")
                break
            threading.Event().wait(0.001)
        return "value"

    task = Task(None, log.func)
    task.add_done_callback(runner.quit)
    task.run_in_thread(worker, timeout=0.05)
    runner.run()
    assert log.names() == ["saw the deadline", "func"]
    err = log.value("func")
    assert isinstance(err, TaskTimeout) and "while running" in str(err)


def test_timeout_with_abandon_completes_at_once(runner: LoopRunner, pool: qiotask.WorkerPool) -> None:
    log = Log()
    release = threading.Event()
    task = Task(None, log.func)
    task.add_done_callback(runner.quit)
    task.run_in_thread(lambda t, o: release.wait(10), pool=pool, timeout=0.05, abandon_on_cancel=True)
    runner.run()
    assert isinstance(log.value("func"), TaskTimeout)
    assert pool.statistics()["busy"] == 1  # still running, abandoned
    release.set()
    wait_for(lambda: pool.statistics()["busy"] == 0, what="the abandoned worker to return")


def test_a_worker_finishing_in_time_is_not_timed_out(runner: LoopRunner) -> None:
    log = Log()
    task = Task(None, log.func)
    task.add_done_callback(runner.quit)
    task.run_in_thread(lambda t, o: "quick", timeout=30)
    runner.run()
    assert log.value("func") is None and task.get_result() == "quick"
    assert not task.cancelled()


def test_cancel_a_task_without_a_worker(ctx: qiotask.MainContext) -> None:
    log = Log()
    task = Task(None, log.func)
    task.on_cancel(lambda t: log.add("hook"))
    assert task.cancel()
    assert log.names() == ["hook"]  # nothing completes it yet
    assert not task.done()
    task.complete("ignored")  # the owner completes it later: cancel wins
    assert log.names() == ["hook", "func"]
    assert isinstance(log.value("func"), TaskCancelled)
    assert task.cancel() is False


def test_cancel_after_completion_does_nothing(ctx: qiotask.MainContext) -> None:
    log = Log()
    task = Task(None, log.func)
    task.on_cancel(lambda t: log.add("hook"))
    task.complete()
    assert task.cancel() is False
    assert log.names() == ["func"] and log.value("func") is None
    assert not task.cancelled()


def test_bad_arguments(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    with pytest.raises(ValueError, match="timeout must not be negative"):
        task.run_in_thread(lambda t, o: None, timeout=-1)
    with pytest.raises(TypeError, match="timeout must be a number"):
        task.run_in_thread(lambda t, o: None, timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_cancel: fn must be callable"):
        task.on_cancel(3)  # type: ignore[arg-type]
    assert task.state is TaskState.PENDING
    task.complete()


def test_cancel_and_timeout_races_complete_everything_exactly_once(runner: LoopRunner) -> None:
    """Randomized, bounded: tasks whose workers race cancels from other
    threads, deadlines and abandonment; each func and destroy runs once."""
    rng = random.Random(20261127)
    total = 300
    funcs: dict[int, int] = {}
    destroys: dict[int, int] = {}
    worker_destroys: dict[int, int] = {}
    lock = threading.Lock()
    releases = [threading.Event() for _ in range(total)]

    def func(source: Any, err: BaseException | None, i: int) -> None:
        with lock:
            funcs[i] = funcs.get(i, 0) + 1

    def destroy(i: int) -> None:
        with lock:
            destroys[i] = destroys.get(i, 0) + 1

    def worker_destroy(i: int) -> None:
        with lock:
            worker_destroys[i] = worker_destroys.get(i, 0) + 1

    def worker(task: Task[Any], i: int) -> int:
        releases[i].wait(rng.random() * 0.01)
        return i

    tasks = []
    for i in range(total):
        task = Task(None, func, i, destroy)
        task.run_in_thread(
            worker,
            i,
            worker_destroy,
            timeout=rng.choice([None, 0.0, 0.002, 0.02]),
            abandon_on_cancel=rng.random() < 0.5,
        )
        tasks.append(task)
    cancellers = [
        threading.Thread(target=lambda ts=tasks[k::4]: [t.cancel() for t in ts if rng.random() < 0.5]) for k in range(4)
    ]
    for t in cancellers:
        t.start()
    for t in cancellers:
        t.join(10)
    for event in releases:
        event.set()
    pool = qiotask._pool.default_pool()
    runner.run_until(lambda: len(funcs) == total and len(worker_destroys) == total and pool.statistics()["busy"] == 0)
    assert funcs == {i: 1 for i in range(total)}
    assert destroys == {i: 1 for i in range(total)}
    assert worker_destroys == {i: 1 for i in range(total)}
    for task in tasks:
        assert task.done()
        err = task.propagate_error()
        if task.cancelled():
            assert isinstance(err, (TaskCancelled, TaskTimeout))
        else:
            assert err is None and task.get_result() == tasks.index(task)


def test_a_far_deadline_does_not_break_the_timer(runner: LoopRunner, pool: qiotask.WorkerPool) -> None:
    far = Task(None)
    far.run_in_thread(lambda t, o: "done", timeout=1e12)  # beyond threading.TIMEOUT_MAX
    release = blocker(pool)
    near = Task(None)
    near.add_done_callback(runner.quit)
    near.run_in_thread(lambda t, o: None, pool=pool, timeout=0.02)  # the timer thread still works
    runner.run()
    release.set()
    assert isinstance(near.exception(), TaskTimeout)
    runner.run_until(far.done)
    assert far.get_result() == "done" and far.exception() is None


def test_priority_and_limiter_arguments(runner: LoopRunner, pool: qiotask.WorkerPool) -> None:
    order: list[str] = []
    release = blocker(pool)
    limiter = qiotask.Limiter(1)
    tasks = []
    for name, priority in (("low", -1), ("high", 5), ("mid", 1)):
        task = Task(None)
        task.run_in_thread(lambda t, n: order.append(n), name, pool=pool, priority=priority, limiter=limiter)
        tasks.append(task)
    assert limiter.statistics()["running"] == 1 and limiter.statistics()["waiting"] == 2
    release.set()
    runner.run_until(lambda: all(t.done() for t in tasks))
    assert sorted(order) == ["high", "low", "mid"]
    bad = Task(None)
    with pytest.raises(TypeError, match="priority must be an int"):
        bad.run_in_thread(print, priority=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"limiter must be a qiotask\.Limiter"):
        bad.run_in_thread(print, limiter=2)  # type: ignore[arg-type]
    bad.complete()  # the refused calls left it pending


def test_run_in_thread_priority_orders_queued_workers(runner: LoopRunner, pool: qiotask.WorkerPool) -> None:
    order: list[str] = []
    release = blocker(pool)
    tasks = []
    for name, priority in (("low", -1), ("first-high", 5), ("mid", 1), ("second-high", 5), ("plain", 0)):
        task = Task(None)
        task.run_in_thread(lambda t, n: order.append(n), name, pool=pool, priority=priority)
        tasks.append(task)
    release.set()
    runner.run_until(lambda: all(t.done() for t in tasks))
    assert order == ["first-high", "second-high", "mid", "plain", "low"]


def test_cleanups_queued_to_a_context_run_when_it_closes(pool: qiotask.WorkerPool) -> None:
    """An abandoned worker's destroy and a done-callback added after the
    completion are queued to the context; if it closes before running them,
    they run then (in the closing thread), never dropped."""
    own = qiotask.MainContext(name="closing")
    calls: list[str] = []
    release = threading.Event()
    try:
        task: Task[Any] = Task(object(), context=own, name="abandoned")
        task.run_in_thread(
            lambda _t, _o: release.wait(10),
            "opaque",
            lambda o: calls.append(f"destroy {o}"),
            pool=pool,
            abandon_on_cancel=True,
        )
        wait_for(lambda: task.state is TaskState.RUNNING)
        assert task.cancel() and task.done()
        assert isinstance(task.exception(), TaskCancelled)
        task.add_done_callback(lambda t: calls.append("late done-callback"))
        release.set()
        wait_for(lambda: pool.statistics()["busy"] == 0, what="the abandoned worker to return")
        assert calls == []  # both queued to a loop that will not run again
        own.close()
        assert sorted(calls) == ["destroy opaque", "late done-callback"]
    finally:
        release.set()
        own.close()


def test_cancelled_deadlines_do_not_pile_up() -> None:
    """Deadlines cancelled long before they are due (tasks that finished in
    time) are swept from the timer heap, which stays within twice the live
    ones (plus a small floor), whatever the number cancelled."""
    from qiotask import _deadline

    live = [_deadline.call_at(time.monotonic() + 3600, lambda: None) for _ in range(10)]
    try:
        for _ in range(5000):
            _deadline.call_at(time.monotonic() + 3600, lambda: None).cancel()
        with _deadline._cond:
            size = len(_deadline._heap)
        assert size <= max(2 * _deadline._MIN_COMPACT, 4 * len(live)), size
    finally:
        for deadline in live:
            deadline.cancel()


def test_an_error_the_worker_raises_after_the_cancel_is_the_cancels_context(ctx: qiotask.MainContext) -> None:
    # The cancel wins, but the worker's own error (here from a socket an
    # on_cancel hook would close) is kept with it, not dropped.
    started = threading.Event()
    cancelled = threading.Event()

    def worker(task: Task[Any], opaque: Any) -> None:
        started.set()
        assert cancelled.wait(10)
        raise OSError("the socket closed under recv()")

    task: Task[Any] = Task(None)
    task.on_cancel(lambda t: cancelled.set())
    task.run_in_thread(worker)
    assert started.wait(10)  # running: the cancel only asks (queued, it would complete the task)
    task.cancel()
    task.wait_thread()
    error = task.exception()
    assert isinstance(error, qiotask.TaskCancelled)
    assert isinstance(error.__context__, OSError) and "closed under recv" in str(error.__context__)
