"""qiotask.tasks(): the tasks in flight, at each stage, on every loop."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

import qiotask
from qiotask.testing import LoopRunner
from tests.conftest import MakePool, join, start_thread


def by_name(infos: list[qiotask.TaskInfo]) -> dict[str, qiotask.TaskInfo]:
    return {info.name: info for info in infos}


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of the test whatever happens, so that no worker stays blocked."""
    gate = threading.Event()
    yield gate
    gate.set()


def blocked_worker(started: threading.Event, gate: threading.Event) -> Any:
    def worker(task: qiotask.Task[Any], opaque: Any) -> str:
        task.report_progress(3, 10, "reading")
        started.set()
        gate.wait(30)  # the line the listing shows as where it is blocked
        return "read"

    return worker


def test_a_task_that_waits_for_a_limiter_slot_is_aged_from_its_submit_to_its_end(
    make_pool: MakePool, release: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limiter's clock runs 100 s behind: an age near 100 s is counted
    # from the limiter's submit, one near 0 from the pool's.
    real = time.monotonic
    monkeypatch.setattr(qiotask._limiter, "time", types.SimpleNamespace(monotonic=lambda: real() - 100.0))
    pool = make_pool(2)
    limiter = qiotask.Limiter(1)
    context = qiotask.MainContext(name="limited")
    first_started, second_started, second_gate = threading.Event(), threading.Event(), threading.Event()
    first: qiotask.Task[Any] = qiotask.Task(None, name="first", context=context)
    first.run_in_thread(blocked_worker(first_started, release), pool=pool, limiter=limiter)
    assert first_started.wait(10)
    second: qiotask.Task[Any] = qiotask.Task(None, name="second", context=context)
    second.run_in_thread(blocked_worker(second_started, second_gate), pool=pool, limiter=limiter)
    try:
        infos = by_name(qiotask.tasks())
        assert infos["second"].waiting_for == "limiter"
        assert infos["second"].age is not None and 100.0 <= infos["second"].age < 110.0  # was None
        assert infos["first"].age is not None and infos["first"].age < 10.0  # never waited: from its pool's submit

        release.set()  # the first returns; its slot goes to the second
        assert second_started.wait(10)
        infos = by_name(qiotask.tasks())
        assert infos["second"].waiting_for == "worker"
        assert infos["second"].age is not None and 100.0 <= infos["second"].age < 110.0  # still from the limiter
    finally:
        release.set()
        second_gate.set()
        LoopRunner(context).run_until_done(first, second)
        context.close()  # type: ignore[attr-defined]
    assert first.result() == second.result() == "read"
    assert limiter._waited == {}  # nothing kept past the delivery


@pytest.mark.qiotask_loops
def test_each_stage_is_listed_with_what_it_waits_for(
    qiotask_context: qiotask.MainContext,
    qiotask_runner: LoopRunner,
    make_pool: MakePool,
    release: threading.Event,
) -> None:
    pool = make_pool(1)
    limiter = qiotask.Limiter(1)
    started = threading.Event()
    worker = blocked_worker(started, release)

    running = qiotask.Task("the running one", name="running")
    running.run_in_thread(worker, pool=pool, limiter=limiter)
    assert started.wait(10)
    queued = qiotask.Task(b"bytes source", name="queued")
    queued.run_in_thread(worker, pool=pool)
    limited = qiotask.Task(None, name="limited")
    limited.run_in_thread(worker, pool=pool, limiter=limiter)
    pending = qiotask.Task(None, name="pending")
    pending.cancel()  # asked, not yet settled: a pending task completes by itself
    completing = qiotask.Task(None, name="completing")
    thread = start_thread(completing.complete, "completer")  # handed to a loop that is not running now
    join(thread)

    infos = by_name(qiotask.tasks(stacks=True))

    assert infos["running"].state is qiotask.TaskState.RUNNING
    assert infos["running"].waiting_for == "worker"
    assert infos["running"].thread is not None and infos["running"].thread.startswith(pool.name)
    assert infos["running"].progress == (3, 10, "reading")
    assert infos["running"].age is not None and infos["running"].age >= 0
    assert infos["running"].context == qiotask_context.name
    assert infos["running"].source == "'the running one'"
    stack = infos["running"].stack
    assert stack is not None and "in worker: gate.wait(30)" in stack[0]
    assert all("_pool.py" not in frame for frame in stack)  # the pool's own frames are left out

    assert infos["queued"].state is qiotask.TaskState.QUEUED
    assert infos["queued"].waiting_for == "pool"
    assert infos["queued"].thread is None and infos["queued"].stack is None
    assert infos["queued"].age is not None

    assert infos["limited"].state is qiotask.TaskState.QUEUED
    assert infos["limited"].waiting_for == "limiter"
    assert infos["limited"].age is not None  # counted from its run_in_thread, in the limiter

    assert infos["pending"].state is qiotask.TaskState.PENDING
    assert infos["pending"].waiting_for == "completion"
    assert infos["pending"].cancelled

    assert infos["completing"].state is qiotask.TaskState.COMPLETING
    assert infos["completing"].waiting_for == "loop"

    # Oldest first: the running worker was submitted before the queued one.
    names = [info.name for info in qiotask.tasks()]
    assert names.index("running") < names.index("queued")

    release.set()
    pending.complete()
    qiotask_runner.run_until_done(running, queued, limited, pending, completing)
    assert isinstance(pending.exception(), qiotask.TaskCancelled)
    left = {info.name for info in qiotask.tasks()}
    assert not left & {"running", "queued", "limited", "pending", "completing"}


def test_a_worker_in_an_executor_is_listed_as_such(
    qiotask_context: qiotask.MainContext, qiotask_runner: LoopRunner, release: threading.Event
) -> None:
    started = threading.Event()

    def call() -> str:
        started.set()
        release.wait(30)
        return "done"

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        task = qiotask.Task(None, name="in executor")
        task.run_in_executor(executor, call)
        assert started.wait(10)
        info = by_name(qiotask.tasks(stacks=True))["in executor"]
        assert (info.state, info.waiting_for, info.thread, info.stack) == (
            qiotask.TaskState.RUNNING,
            "executor",
            None,
            None,
        )
        release.set()
        qiotask_runner.run_until_done(task)


def test_it_answers_from_any_thread_and_a_failing_repr_is_shown_not_raised(
    qiotask_context: qiotask.MainContext, qiotask_runner: LoopRunner
) -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise ValueError("no")

    task = qiotask.Task(Unprintable(), name="odd source")
    seen: list[list[qiotask.TaskInfo]] = []
    join(start_thread(lambda: seen.append(qiotask.tasks()), "asker"))
    info = by_name(seen[0])["odd source"]
    assert info.source.startswith("<Unprintable")  # reprlib's stand-in, or ours
    assert info.as_dict()["state"] == "pending"
    task.complete()
    qiotask_runner.run_until_done(task)


def test_the_table_has_a_line_per_task_and_the_stacks_below() -> None:
    from qiotask._inspect import format_tasks

    assert format_tasks([]) == "no task in flight\n"
    info = qiotask.TaskInfo(
        name="fetch",
        id=7,
        state=qiotask.TaskState.RUNNING,
        waiting_for="worker",
        age=12.34,
        context="default",
        thread="qiotask-worker-1",
        progress=(2, 5, "pages"),
        cancelled=True,
        source="'x'",
        stack=("a.py:1 in f: g()", "b.py:2 in g: block()"),
    )
    lines = format_tasks([info]).splitlines()
    assert lines[0].split() == ["TASK", "STATE", "WAITING", "FOR", "AGE", "CONTEXT", "THREAD", "PROGRESS"]
    assert lines[1].split() == [
        "fetch",
        "(cancelled)",
        "running",
        "worker",
        "12.3s",
        "default",
        "qiotask-worker-1",
        "2/5",
        "pages",
    ]
    assert lines[2:] == ["    a.py:1 in f: g()", "    b.py:2 in g: block()"]


def test_objects_whose_class_cannot_be_asked_do_not_stop_the_listing(
    qiotask_context: qiotask.MainContext, qiotask_runner: LoopRunner
) -> None:
    # gc.get_objects() returns every tracked object; isinstance() asks an
    # object that is not a task for its __class__, which a dead weakref.proxy
    # answers with ReferenceError and a lazy proxy (werkzeug's LocalProxy
    # outside its context) with an error of its own.
    import weakref

    class Target:
        pass

    class Proxy:
        @property  # type: ignore[misc]
        def __class__(self) -> type:
            raise RuntimeError("working outside of a context")

    target = Target()
    dead = weakref.proxy(target)
    del target
    odd = Proxy()
    task = qiotask.Task(None, name="listed")
    assert "listed" in by_name(qiotask.tasks())
    task.complete()
    qiotask_runner.run_until_done(task)
    del dead, odd


def test_limiters_made_while_it_lists_do_not_break_it() -> None:
    # The registry of limiters is a WeakSet: iterating it while another
    # thread adds to it raises "Set changed size during iteration" unless
    # the registry's lock is held (as the fork handlers hold it).
    import sys

    limiters = [qiotask.Limiter(1) for _ in range(20000)]
    stop = threading.Event()

    def make() -> None:
        for _ in range(20000):  # bounded: the registry must not outgrow the lister
            if stop.is_set():
                return
            limiters.append(qiotask.Limiter(1))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    maker = start_thread(make, "limiter-maker")
    try:
        while maker.is_alive():
            qiotask.tasks()
    finally:
        stop.set()
        join(maker)
        sys.setswitchinterval(interval)


def test_the_listing_shows_progress_of_any_size() -> None:
    from qiotask._inspect import _progress_text

    assert _progress_text((10**400, 10**401, "far")) == f"{10**400}/{10**401} far"
    assert _progress_text((1.5, None, None)) == "1.5"
