"""Limiter: at most ``limit`` jobs at once across pools, FIFO waiting in the
limiter (never in a pool thread), statistics, a settable limit, bad input.

The jobs go through ``Limiter._submit(pool, fn, deliver)``, the interface the
task calls; the last test runs tasks through ``run_in_thread(limiter=...)``
once the task offers it.
"""

from __future__ import annotations

import contextvars
import inspect
import os
import signal
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import qiotask
from qiotask._limiter import Limiter

from .conftest import wait_for

#: A contextvar a worker's job carries (in its copy of the caller's context).
_carried: contextvars.ContextVar[Any] = contextvars.ContextVar("carried")
WAIT = 5.0  # seconds: the longest any single step of a test may take


class Jobs:
    """Jobs that block until released, recording how many run at once,
    on which thread each ran, and what each delivered."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started: dict[int, threading.Event] = {}
        self.release: dict[int, threading.Event] = {}
        self.threads: dict[int, str] = {}
        self.delivered: dict[int, tuple[Any, BaseException | None]] = {}
        self.all_delivered = threading.Event()
        self.expected = 0

    def make(self, i: int, hold: bool = True) -> tuple[Callable[[], Any], Callable[[Any, BaseException | None], None]]:
        self.started[i] = threading.Event()
        self.release[i] = threading.Event()
        if not hold:
            self.release[i].set()
        self.expected += 1

        def fn() -> int:
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
                self.threads[i] = threading.current_thread().name
            self.started[i].set()
            try:
                assert self.release[i].wait(WAIT), f"job {i} was never released"
            finally:
                with self.lock:
                    self.running -= 1
            return i

        def deliver(result: Any, exc: BaseException | None) -> None:
            with self.lock:
                self.delivered[i] = (result, exc)
                if len(self.delivered) == self.expected:
                    self.all_delivered.set()

        return fn, deliver

    def submit(self, limiter: Limiter, pool: qiotask.WorkerPool, i: int, hold: bool = True) -> None:
        limiter._submit(pool, *self.make(i, hold))

    def started_now(self) -> list[int]:
        return sorted(i for i, e in self.started.items() if e.is_set())


def new_pool(n: int, name: str = "test-pool") -> qiotask.WorkerPool:
    return qiotask.WorkerPool(n, name=name)


@pytest.fixture
def pool() -> Iterator[qiotask.WorkerPool]:
    made = new_pool(8)
    yield made
    assert made.shutdown(wait=True, timeout=WAIT)


@pytest.fixture
def jobs() -> Iterator[Jobs]:
    made = Jobs()
    yield made
    for event in made.release.values():  # a failed test leaves no job blocked
        event.set()


def test_never_more_than_the_limit_and_all_finish(pool: qiotask.WorkerPool, jobs: Jobs) -> None:
    limiter = Limiter(2)
    for i in range(10):
        jobs.submit(limiter, pool, i)
    assert jobs.started[0].wait(WAIT) and jobs.started[1].wait(WAIT)
    assert limiter.statistics() == {"limit": 2, "running": 2, "waiting": 8, "total": 2}
    # Release in order: each release lets exactly the next waiting job in.
    for i in range(10):
        jobs.release[i].set()
        if i + 2 < 10:
            assert jobs.started[i + 2].wait(WAIT)
            assert jobs.started_now() == list(range(i + 3))
    assert jobs.all_delivered.wait(WAIT)
    assert jobs.most == 2
    assert jobs.delivered == {i: (i, None) for i in range(10)}
    assert limiter.statistics() == {"limit": 2, "running": 0, "waiting": 0, "total": 10}


def test_jobs_run_two_at_a_time_under_load(pool: qiotask.WorkerPool) -> None:
    """Unscripted: 10 jobs that each meet one other job at a Barrier(2) --
    only possible if two run together -- and never see a third."""
    limiter = Limiter(2)
    barrier = threading.Barrier(2, timeout=WAIT)
    lock = threading.Lock()
    running = [0, 0]  # now, most
    done = threading.Semaphore(0)
    outcomes: list[tuple[Any, BaseException | None]] = []

    def fn() -> str:
        with lock:
            running[0] += 1
            running[1] = max(running)
        try:
            barrier.wait()
        finally:
            with lock:
                running[0] -= 1
        return threading.current_thread().name

    def deliver(result: Any, exc: BaseException | None) -> None:
        outcomes.append((result, exc))
        done.release()

    for _ in range(10):
        limiter._submit(pool, fn, deliver)
    for _ in range(10):
        assert done.acquire(timeout=WAIT)
    assert running[1] == 2
    assert [exc for _, exc in outcomes] == [None] * 10
    assert all(name.startswith("test-pool-worker-") for name, _ in outcomes)
    assert limiter.statistics()["running"] == 0


def test_a_pool_thread_never_waits_for_a_slot(jobs: Jobs) -> None:
    """One pool thread, Limiter(1): the waiting job is not handed to the pool
    (which would make its only thread block on the slot); the thread that
    delivers the running job starts it."""
    single = new_pool(1)
    try:
        limiter = Limiter(1)
        jobs.submit(limiter, single, 0)
        jobs.submit(limiter, single, 1)
        assert jobs.started[0].wait(WAIT)
        assert single.statistics()["queued"] == 0
        assert limiter.statistics()["waiting"] == 1
        jobs.release[0].set()
        jobs.release[1].set()
        assert jobs.all_delivered.wait(WAIT)
        assert jobs.threads[0] == jobs.threads[1]
    finally:
        assert single.shutdown(wait=True, timeout=WAIT)


def test_statistics_while_blocked(pool: qiotask.WorkerPool, jobs: Jobs) -> None:
    limiter = Limiter(3)
    assert limiter.statistics() == {"limit": 3, "running": 0, "waiting": 0, "total": 0}
    for i in range(5):
        jobs.submit(limiter, pool, i)
    for i in range(3):
        assert jobs.started[i].wait(WAIT)
    assert limiter.statistics() == {"limit": 3, "running": 3, "waiting": 2, "total": 3}
    assert repr(limiter) == "<Limiter limit=3 running=3 waiting=2>"
    jobs.release[0].set()
    assert jobs.started[3].wait(WAIT)
    wait_for(lambda: limiter.statistics()["total"] == 4, what="the fourth job to count")
    assert limiter.statistics() == {"limit": 3, "running": 3, "waiting": 1, "total": 4}
    for event in jobs.release.values():
        event.set()
    assert jobs.all_delivered.wait(WAIT)
    assert limiter.statistics() == {"limit": 3, "running": 0, "waiting": 0, "total": 5}


def test_raising_the_limit_starts_waiting_jobs(pool: qiotask.WorkerPool, jobs: Jobs) -> None:
    limiter = Limiter(1)
    for i in range(4):
        jobs.submit(limiter, pool, i)
    assert jobs.started[0].wait(WAIT)
    assert limiter.statistics()["waiting"] == 3
    limiter.limit = 3
    assert limiter.limit == 3
    assert jobs.started[1].wait(WAIT) and jobs.started[2].wait(WAIT)
    assert limiter.statistics() == {"limit": 3, "running": 3, "waiting": 1, "total": 3}
    assert not jobs.started[3].is_set()
    for event in jobs.release.values():
        event.set()
    assert jobs.all_delivered.wait(WAIT)
    assert jobs.most == 3


def test_lowering_the_limit_stops_nothing_running(pool: qiotask.WorkerPool, jobs: Jobs) -> None:
    limiter = Limiter(3)
    for i in range(4):
        jobs.submit(limiter, pool, i)
    for i in range(3):
        assert jobs.started[i].wait(WAIT)
    limiter.limit = 1
    jobs.release[0].set()
    jobs.release[1].set()
    wait_for(lambda: limiter.statistics()["running"] == 1, what="two jobs to be delivered")
    # Two slots freed, but one job still runs: the limit of 1 is reached.
    assert not jobs.started[3].is_set()
    assert limiter.statistics()["waiting"] == 1
    jobs.release[2].set()
    assert jobs.started[3].wait(WAIT)
    jobs.release[3].set()
    assert jobs.all_delivered.wait(WAIT)


def test_two_pools_share_one_limiter(jobs: Jobs) -> None:
    first, second = new_pool(4, "test-pool-a"), new_pool(4, "test-pool-b")
    try:
        limiter = Limiter(2)
        # Two jobs for the first pool run; four wait, alternating pools.
        for i in range(6):
            jobs.submit(limiter, first if i % 2 == 0 else second, i)
        assert jobs.started[0].wait(WAIT) and jobs.started[1].wait(WAIT)
        assert limiter.statistics()["waiting"] == 4
        for i in range(6):
            jobs.release[i].set()
            if i + 2 < 6:
                assert jobs.started[i + 2].wait(WAIT)
        assert jobs.all_delivered.wait(WAIT)
        assert jobs.most == 2
        # Each ran in the pool it was meant for, whoever freed its slot.
        for i, name in jobs.threads.items():
            assert name.startswith("test-pool-a-" if i % 2 == 0 else "test-pool-b-"), (i, name)
        assert first.statistics()["submitted"] == 3
        assert second.statistics()["submitted"] == 3
    finally:
        assert first.shutdown(wait=True, timeout=WAIT)
        assert second.shutdown(wait=True, timeout=WAIT)


def test_a_job_that_returns_at_once_or_raises_frees_its_slot(pool: qiotask.WorkerPool) -> None:
    """As a task cancelled while it waited for a slot: its job returns a
    sentinel at once; and a job that raises is delivered its exception."""
    limiter = Limiter(1)
    outcomes: list[tuple[Any, BaseException | None]] = []
    done = threading.Semaphore(0)

    def deliver(result: Any, exc: BaseException | None) -> None:
        outcomes.append((result, exc))
        done.release()

    def fail() -> None:
        raise OSError("disk")

    for _ in range(5):
        limiter._submit(pool, lambda: "never ran", deliver)
        limiter._submit(pool, fail, deliver)
    for _ in range(10):
        assert done.acquire(timeout=WAIT)
    assert [r for r, _ in outcomes[::2]] == ["never ran"] * 5
    assert all(isinstance(e, OSError) for _, e in outcomes[1::2])
    assert limiter.statistics() == {"limit": 1, "running": 0, "waiting": 0, "total": 10}


def test_a_deliver_that_raises_frees_its_slot(pool: qiotask.WorkerPool, caplog: pytest.LogCaptureFixture) -> None:
    limiter = Limiter(1)
    second = threading.Event()

    def bad_deliver(result: Any, exc: BaseException | None) -> None:
        raise RuntimeError("deliver broke")

    limiter._submit(pool, lambda: 1, bad_deliver)
    limiter._submit(pool, lambda: 2, lambda r, e: second.set())
    assert second.wait(WAIT)
    wait_for(lambda: limiter.statistics()["running"] == 0, what="the slot to be freed")
    # The pool logs the exception after the slot was freed (and the next job started).
    wait_for(lambda: "deliver callback" in caplog.text, what="the pool to log the exception")


def test_submit_to_a_shut_down_pool(pool: qiotask.WorkerPool, jobs: Jobs) -> None:
    limiter = Limiter(1)
    closed = new_pool(1)
    closed.shutdown(wait=True)
    # A free slot: the pool refuses at once, the caller hears it, the slot is free.
    with pytest.raises(RuntimeError, match="shut down"):
        limiter._submit(closed, lambda: None, lambda r, e: None)
    assert limiter.statistics() == {"limit": 1, "running": 0, "waiting": 0, "total": 0}
    # A waiting job whose pool shut down meanwhile is delivered the error.
    late = new_pool(1)
    jobs.submit(limiter, pool, 0)
    assert jobs.started[0].wait(WAIT)
    refused: list[tuple[Any, BaseException | None]] = []
    limiter._submit(late, lambda: "ran", lambda r, e: refused.append((r, e)))
    jobs.submit(limiter, pool, 1, hold=False)  # waits behind the refused job
    assert late.shutdown(wait=True, timeout=WAIT)
    jobs.release[0].set()
    assert jobs.all_delivered.wait(WAIT)
    assert len(refused) == 1
    result, exc = refused[0]
    assert result is None and isinstance(exc, RuntimeError) and "shut down" in str(exc)
    assert limiter.statistics() == {"limit": 1, "running": 0, "waiting": 0, "total": 2}


def test_priority_is_passed_to_the_pool(jobs: Jobs) -> None:
    """Once handed over, a job takes its place in its pool's queue by priority."""
    single = new_pool(1)
    try:
        limiter = Limiter(3)
        jobs.submit(limiter, single, 0)  # occupies the pool's only thread
        assert jobs.started[0].wait(WAIT)
        order: list[str] = []
        done = threading.Semaphore(0)
        for name, priority in (("low", 0), ("high", 5)):
            limiter._submit(
                single, lambda name=name: order.append(name), lambda r, e: done.release(), priority=priority
            )
        assert limiter.statistics()["waiting"] == 0  # both handed to the pool
        jobs.release[0].set()
        for _ in range(2):
            assert done.acquire(timeout=WAIT)
        assert order == ["high", "low"]
    finally:
        assert single.shutdown(wait=True, timeout=WAIT)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_fork_waits_for_the_limiters_lock_and_the_child_starts_it_empty(pool: qiotask.WorkerPool, jobs: Jobs) -> None:
    limiter = Limiter(1)
    jobs.submit(limiter, pool, 0)  # holds the slot
    jobs.submit(limiter, pool, 1)  # waits for it
    assert jobs.started[0].wait(WAIT)
    forking = threading.Event()
    forked = threading.Event()
    pids: list[int] = []

    def child() -> int:
        if limiter.statistics() != {"limit": 1, "running": 0, "waiting": 0, "total": 0}:
            return 2  # the parent's slots and waiting jobs came along
        delivered = threading.Event()
        outcome: list[Any] = []

        def deliver(result: Any, exc: BaseException | None) -> None:
            outcome.append(result)
            delivered.set()

        limiter._submit(pool, lambda: "child", deliver)
        if not delivered.wait(WAIT) or outcome != ["child"]:
            return 3
        return 0

    def fork() -> None:
        forking.set()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 99
            try:
                code = child()
            finally:
                os._exit(code)
        pids.append(pid)
        forked.set()

    forker = threading.Thread(target=fork, name="test-limiter-forker")
    with limiter._lock:  # another thread in the middle of a locked step
        forker.start()
        assert forking.wait(WAIT)
        # A bounded wait for what must not happen: the fork cannot complete
        # while the limiter's lock is held.
        assert not forked.wait(0.2)
    forker.join(WAIT)
    assert forked.is_set()
    status = 0

    def reaped() -> bool:
        nonlocal status
        got, status = os.waitpid(pids[0], os.WNOHANG)
        return got == pids[0]

    try:
        wait_for(reaped, 2 * WAIT, "the forked child to exit")
    except AssertionError:
        os.kill(pids[0], signal.SIGKILL)
        os.waitpid(pids[0], 0)
        raise
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status:#x}"
    # The parent got the lock back: its jobs carry on.
    jobs.release[0].set()
    jobs.release[1].set()
    assert jobs.all_delivered.wait(WAIT)
    assert limiter.statistics() == {"limit": 1, "running": 0, "waiting": 0, "total": 2}


def test_bad_arguments() -> None:
    for bad in ("2", 2.0, None, True):
        with pytest.raises(TypeError, match="the limit must be an int"):
            Limiter(bad)  # type: ignore[arg-type]
    for bad_value in (0, -1):
        with pytest.raises(ValueError, match="at least 1, got"):
            Limiter(bad_value)
    limiter = Limiter(2)
    with pytest.raises(ValueError, match="at least 1, got 0"):
        limiter.limit = 0
    with pytest.raises(TypeError, match="the limit must be an int, not float"):
        limiter.limit = 1.5  # type: ignore[assignment]
    assert limiter.limit == 2


@pytest.mark.skipif(
    "limiter" not in inspect.signature(qiotask.Task.run_in_thread).parameters,
    reason="Task.run_in_thread(limiter=) is not wired to Limiter yet",
)
def test_tasks_through_run_in_thread(pool: qiotask.WorkerPool) -> None:
    """Ten tasks, Limiter(2): at most two workers at once; a task cancelled
    while it waits for a slot completes at once and never runs."""
    context = qiotask.MainContext(name="limiter")
    loop = qiotask.MainLoop(context)
    limiter = Limiter(2)
    lock = threading.Lock()
    running = [0, 0]
    release = threading.Event()
    ran: list[int] = []
    finished: list[BaseException | None] = []

    def worker(task: qiotask.Task[Any], i: int) -> int:
        with lock:
            running[0] += 1
            running[1] = max(running)
            ran.append(i)
        release.wait(WAIT)
        with lock:
            running[0] -= 1
        return i

    def func(source: Any, err: BaseException | None, opaque: Any) -> None:
        finished.append(err)
        if len(finished) == 10:
            loop.quit()

    tasks = []
    for i in range(10):
        task: qiotask.Task[int] = qiotask.Task(None, func, context=context)
        task.run_in_thread(worker, i, pool=pool, limiter=limiter)  # type: ignore[call-arg]
        tasks.append(task)
    wait_for(lambda: len(ran) == 2, what="two workers to start")
    tasks[9].cancel()  # waiting for a slot: completes now, never runs
    context.call_soon(release.set)
    loop.run()
    context.close()
    # A slot is given back after the job's deliver returned, which posted the
    # completion: the last ones may still be on their way.
    wait_for(lambda: limiter.statistics()["running"] == 0, what="the last slots to be given back")
    assert running[1] == 2
    assert 9 not in ran
    assert sum(isinstance(e, qiotask.TaskCancelled) for e in finished) == 1
    assert limiter.statistics() == {"limit": 2, "running": 0, "waiting": 0, "total": 10}


def test_a_task_cancelled_while_it_waits_for_a_slot_lets_go_of_its_worker(pool: qiotask.WorkerPool) -> None:
    """Its job keeps its place in the limiter until a slot frees (it starts
    nothing then), but not what the worker would have used: the worker, its
    arguments' closure and the copied contextvars are freed at the cancel,
    however long the slot takes."""
    context = qiotask.MainContext(name="limiter")
    limiter = Limiter(1)
    release = threading.Event()
    started = threading.Event()

    def blocker(task: qiotask.Task[Any], opaque: Any) -> None:
        started.set()
        release.wait(WAIT)

    class Payload:
        pass

    def worker_of(payload: Payload) -> Callable[[qiotask.Task[Any], Any], Payload]:
        return lambda task, opaque: payload

    payload, carried = Payload(), Payload()
    gone = weakref.ref(payload), weakref.ref(carried)
    held = qiotask.Task(None, context=context)
    held.run_in_thread(blocker, pool=pool, limiter=limiter)
    started.wait(WAIT)
    waiting = qiotask.Task(None, context=context)
    token = _carried.set(carried)  # copied into the job with the caller's contextvars
    waiting.run_in_thread(worker_of(payload), pool=pool, limiter=limiter)
    _carried.reset(token)
    del payload, carried
    try:
        waiting.cancel()
        assert waiting.done() and isinstance(waiting.exception(), qiotask.TaskCancelled)
        assert limiter.statistics()["waiting"] == 1  # its place, until the slot frees
        assert gone[0]() is None, "the cancelled job still holds its worker"
        assert gone[1]() is None, "the cancelled job still holds the caller's contextvars"
    finally:
        release.set()
        held.wait_thread()
    wait_for(lambda: limiter.statistics()["running"] == 0, what="the slots to be given back")
    assert limiter.statistics()["total"] == 2
    context.close()
