"""TaskGroup: ``async with`` under asyncio and trio, the ``on_done`` callback
form on the embedded and the GLib loop, ``with`` from a worker thread; the
first error cancels the rest; which errors are reported; misuse.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio

import qiotask
from qiotask import Task, TaskCancelled, TaskError, TaskStateError, TaskTimeout
from qiotask._group import TaskGroup, TaskGroupError

from .backends import open_backend
from .conftest import LoopRunner, join, start_thread

WAIT = 5.0  # seconds: the longest any one wait of a test may take


def here() -> str:
    return threading.current_thread().name


def double(task: Task[Any], x: int) -> tuple[int, str]:
    return 2 * x, here()


def fail(task: Task[Any], message: str) -> None:
    raise ValueError(message)


def wait_for_release(task: Task[Any], release: threading.Event) -> str:
    release.wait(WAIT)
    return "released"


def start_blocker(group: TaskGroup, **kwargs: Any) -> Task[Any]:
    """A task whose worker blocks until the task is cancelled (its on_cancel
    hook sets the event the worker waits on)."""
    release = threading.Event()
    task = group.run_in_thread(wait_for_release, release, **kwargs)
    task.on_cancel(lambda task: release.set())
    return task


class Recorder:
    """An on_done that records the call and the thread; optionally quits a loop."""

    def __init__(self, runner: LoopRunner | None = None) -> None:
        self.calls: list[tuple[list[BaseException], str]] = []
        self.runner = runner

    def __call__(self, group: TaskGroup) -> None:
        self.calls.append((group.errors, here()))
        if self.runner is not None:
            self.runner.quit()


# -- async with, asyncio ---------------------------------------------------------


def test_async_with_waits_for_every_task() -> None:
    callback_threads: list[str] = []

    async def main() -> tuple[list[Task[Any]], TaskGroup, str]:
        async with TaskGroup(name="doubles") as group:
            tasks = [group.run_in_thread(double, i) for i in range(5)]
            for task in tasks:
                task.add_done_callback(lambda task: callback_threads.append(here()))
        assert all(task.done() for task in tasks)
        return tasks, group, here()

    tasks, group, loop_thread = asyncio.run(main())
    assert [task.get_result()[0] for task in tasks] == [0, 2, 4, 6, 8]
    assert all(task.get_result()[1] != loop_thread for task in tasks)  # workers ran off the loop
    assert callback_threads == [loop_thread] * 5
    assert group.done() and group.closed and group.errors == []
    assert repr(group) == "<TaskGroup 'doubles' done pending=0 errors=0>"


def test_async_first_error_cancels_the_rest() -> None:
    async def main() -> tuple[list[Task[Any]], Task[Any], TaskGroupError]:
        try:
            async with TaskGroup() as group:
                blockers = [start_blocker(group) for _ in range(3)]
                failing = group.run_in_thread(fail, "boom")
        except TaskGroupError as eg:
            return blockers, failing, eg
        raise AssertionError("no TaskGroupError")

    blockers, failing, eg = asyncio.run(main())
    # Only the real error: the TaskCancelled of the tasks the group cancelled is not one.
    assert [type(e) for e in eg.exceptions] == [ValueError]
    assert str(eg.exceptions[0]) == "boom"
    assert eg.exceptions[0].__traceback__ is not None
    assert isinstance(eg, TaskError)
    if sys.version_info >= (3, 11):
        assert isinstance(eg, ExceptionGroup)  # noqa: F821 (a builtin from 3.11 on)
    assert failing.had_error()
    for task in blockers:
        assert task.cancelled() and task.done()
        assert isinstance(task.propagate_error(), TaskCancelled)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="except* is Python 3.11+")
def test_except_star_splits_the_group() -> None:
    code = """
async def main():
    caught = []
    try:
        async with TaskGroup() as group:
            first, second = group.add(Task(None)), group.add(Task(None))
            # From another thread: both fail before the group hears of either.
            aborter = threading.Thread(target=lambda: (first.abort(ValueError("v")), second.abort(OSError("o"))))
            aborter.start()
            aborter.join()
    except* ValueError as eg:
        caught.append(eg)
    except* OSError as eg:
        caught.append(eg)
    return caught
"""
    namespace: dict[str, Any] = {"TaskGroup": TaskGroup, "Task": Task, "threading": threading}
    exec(code, namespace)
    caught = asyncio.run(namespace["main"]())
    assert [type(eg) for eg in caught] == [TaskGroupError, TaskGroupError]  # derive() keeps the type
    assert [type(e) for eg in caught for e in eg.exceptions] == [ValueError, OSError]


def test_every_error_is_reported_in_order() -> None:
    """Two tasks fail before the group hears of either: cancelling the
    second comes too late, so its error is reported too."""

    async def main() -> TaskGroupError:
        try:
            async with TaskGroup() as group:
                first, second, third = (group.add(Task(None, name=f"t{i}")) for i in range(3))
                third.on_cancel(lambda task: task.complete())  # its owner completes it when asked

                def abort_both() -> None:  # another thread: the completions are handed over
                    first.abort(ValueError("first"))
                    second.abort(OSError("second"))

                join(start_thread(abort_both, "aborter"))
        except TaskGroupError as eg:
            assert third.cancelled() and third.done()  # with the group's own TaskCancelled
            return eg
        raise AssertionError("no TaskGroupError")

    eg = asyncio.run(main())
    assert [repr(e) for e in eg.exceptions] == ["ValueError('first')", "OSError('second')"]
    assert str(eg).startswith("2 errors in task group 'TaskGroup-")


def test_cancels_and_timeouts_from_elsewhere_are_errors() -> None:
    async def main() -> TaskGroupError:
        try:
            async with TaskGroup() as group:
                mine = group.add(Task(None))
                mine.cancel()  # not the group's cancel: its later one finds it cancelled
                slow = start_blocker(group, timeout=0.01)
                while not slow.done():
                    await asyncio.sleep(0.001)
                mine.complete()
        except TaskGroupError as eg:
            return eg
        raise AssertionError("no TaskGroupError")

    eg = asyncio.run(main())
    assert [type(e) for e in eg.exceptions] == [TaskTimeout, TaskCancelled]


def test_an_error_in_the_body_cancels_the_tasks_and_is_reported() -> None:
    async def main() -> tuple[Task[Any], TaskGroupError]:
        try:
            async with TaskGroup() as group:
                task = start_blocker(group)
                raise KeyError("body")
        except TaskGroupError as eg:
            return task, eg
        raise AssertionError("no TaskGroupError")

    task, eg = asyncio.run(main())
    assert [repr(e) for e in eg.exceptions] == ["KeyError('body')"]
    assert task.cancelled() and task.done()


def test_cancelling_the_waiting_coroutine_cancels_and_waits() -> None:
    """asyncio.wait_for cancels the coroutine while it waits on leaving the
    block: the tasks are cancelled and waited for, then the cancellation
    goes on (wait_for turns it into TimeoutError)."""
    tasks: list[Task[Any]] = []

    async def body() -> None:
        async with TaskGroup() as group:
            tasks.extend(start_blocker(group) for _ in range(2))

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(body(), 0.05)
        assert all(task.done() and task.cancelled() for task in tasks)

    asyncio.run(main())


def test_cancelling_the_body_cancels_and_waits() -> None:
    tasks: list[Task[Any]] = []

    async def body() -> None:
        async with TaskGroup() as group:
            tasks.append(start_blocker(group))
            await asyncio.sleep(WAIT)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(body(), 0.05)
        assert tasks[0].done() and tasks[0].cancelled()

    asyncio.run(main())


def test_with_is_refused_under_a_running_loop() -> None:
    async def main() -> None:
        group = TaskGroup()
        with pytest.raises(TaskStateError, match="use `async with`"):
            with group:
                pass  # pragma: no cover

    asyncio.run(main())


def test_async_with_needs_a_loop() -> None:
    coro = TaskGroup().__aenter__()
    with pytest.raises(RuntimeError, match="no asyncio event loop or trio run"):
        coro.send(None)


# -- async with, trio --------------------------------------------------------------


def test_trio_async_with() -> None:
    async def main() -> None:
        with trio.fail_after(WAIT):
            async with TaskGroup() as group:
                tasks = [group.run_in_thread(double, i) for i in range(3)]
            assert [task.get_result()[0] for task in tasks] == [0, 2, 4]

            with pytest.raises(TaskGroupError) as caught:
                async with TaskGroup() as group:
                    blocker = start_blocker(group)
                    group.run_in_thread(fail, "trio")
            assert [str(e) for e in caught.value.exceptions] == ["trio"]
            assert blocker.done() and blocker.cancelled()

    trio.run(main)


def test_trio_cancel_scope_cancels_and_waits() -> None:
    async def main() -> None:
        with trio.fail_after(WAIT):
            # Cancelled while waiting on leaving the block.
            with trio.move_on_after(0.05) as scope:
                async with TaskGroup() as group:
                    first = start_blocker(group)
            assert scope.cancelled_caught
            assert first.done() and first.cancelled()
            # Cancelled in the body.
            with trio.move_on_after(0.05) as scope:
                async with TaskGroup() as group:
                    second = start_blocker(group)
                    await trio.sleep(WAIT)
            assert scope.cancelled_caught
            assert second.done() and second.cancelled()
            # Cancelled in the body while a nursery there has children: what
            # leaves the body is a group of Cancelled (trio groups strictly),
            # still a cancellation.
            with trio.move_on_after(0.05) as scope:
                async with TaskGroup() as group:
                    third = start_blocker(group)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(trio.sleep, WAIT)
                        nursery.start_soon(trio.sleep, WAIT)
            assert scope.cancelled_caught
            assert third.done() and third.cancelled()

    trio.run(main)


# -- the on_done callback --------------------------------------------------------------


def test_on_done_runs_on_the_context_thread_once(runner: LoopRunner) -> None:
    on_done = Recorder(runner)
    group = TaskGroup(on_done)
    tasks = [group.run_in_thread(double, i) for i in range(4)]
    group.close()
    runner.run()
    assert on_done.calls == [([], here())]  # here: the loop's thread
    assert group.done()
    assert [task.get_result()[0] for task in tasks] == [0, 2, 4, 6]


def test_on_done_after_an_error(runner: LoopRunner) -> None:
    on_done = Recorder(runner)
    group = TaskGroup(on_done)
    blockers = [start_blocker(group) for _ in range(3)]
    group.run_in_thread(fail, "gui")
    group.close()
    runner.run()
    [(errors, thread)] = on_done.calls
    assert [str(e) for e in errors] == ["gui"] and thread == here()
    assert all(task.cancelled() for task in blockers)


def test_a_task_added_after_the_error_is_cancelled_at_once(runner: LoopRunner) -> None:
    on_done = Recorder()
    group = TaskGroup(on_done)
    failing = group.run_in_thread(fail, "first")
    runner.run_until(failing.done)
    late = start_blocker(group)
    assert late.cancelled()
    manual = group.add(Task(None))
    assert manual.cancelled()
    manual.complete()
    group.close()
    # A worker cancelled while queued completes inline, and so may the group.
    runner.run_until(lambda: bool(on_done.calls))
    assert [str(e) for e in group.errors] == ["first"]


def test_close_with_nothing_pending_runs_on_done_inline(ctx: qiotask.MainContext) -> None:
    on_done = Recorder()
    group = TaskGroup(on_done)
    task = group.add(Task(None))
    task.complete()  # on the context thread: the group hears of it now
    assert on_done.calls == []
    group.close()
    assert on_done.calls == [([], here())]
    group.close()  # closing twice does nothing
    assert len(on_done.calls) == 1


def test_close_from_another_thread_hands_on_done_to_the_context(runner: LoopRunner) -> None:
    on_done = Recorder(runner)
    group = TaskGroup(on_done)
    join(start_thread(group.close, "closer"))
    assert on_done.calls == []
    runner.run()
    assert on_done.calls == [([], here())]


def test_cancel_cancels_every_task_and_reports_nothing(runner: LoopRunner) -> None:
    on_done = Recorder()
    group = TaskGroup(on_done)
    tasks = [start_blocker(group) for _ in range(3)]
    group.cancel()
    assert all(task.cancelled() for task in tasks)
    assert start_blocker(group).cancelled()  # and what is added later
    group.close()
    runner.run_until(lambda: bool(on_done.calls))  # queued workers complete inline
    assert on_done.calls == [([], here())]


def test_on_done_error_goes_to_the_exception_handler(runner: LoopRunner) -> None:
    reported: list[tuple[str, BaseException]] = []
    runner.context.exception_handler = lambda message, exc: reported.append((message, exc))

    def broken(group: TaskGroup) -> None:
        runner.quit()
        raise OSError("on_done broke")

    group = TaskGroup(broken, name="broken")
    group.run_in_thread(double, 1)
    group.close()
    runner.run()
    [(message, exc)] = reported
    assert "on_done" in message and "'broken'" in message and str(exc) == "on_done broke"


def test_on_done_on_glib() -> None:
    backend = open_backend("glib")
    try:
        runner = LoopRunner(backend.context)
        on_done = Recorder(runner)
        group = TaskGroup(on_done, context=backend.context)
        tasks = [group.run_in_thread(double, i, context=backend.context) for i in range(3)]
        blocker = start_blocker(group, context=backend.context)
        group.run_in_thread(fail, "glib", context=backend.context)
        group.close()
        runner.run()
        [(errors, thread)] = on_done.calls
        assert [str(e) for e in errors] == ["glib"] and thread == here()
        assert blocker.cancelled()
        assert all(task.done() for task in tasks)
    finally:
        backend.cleanup()


def test_an_unclosed_group_with_on_done_warns(ctx: qiotask.MainContext) -> None:
    group = TaskGroup(lambda group: None, name="forgotten")
    with pytest.warns(ResourceWarning, match="'forgotten' was garbage-collected without close"):
        del group
        gc.collect()


# -- with, from another thread ---------------------------------------------------------


def test_with_from_a_worker_thread(runner: LoopRunner) -> None:
    """The loop runs on the test thread; a plain thread waits for tasks of it."""
    context = runner.context
    seen: dict[str, Any] = {}

    def in_thread() -> None:
        with TaskGroup() as group:
            tasks = [group.run_in_thread(double, i, context=context) for i in range(3)]
        seen["results"] = [task.get_result()[0] for task in tasks]
        try:
            with TaskGroup() as group:
                blocker = start_blocker(group, context=context)
                group.run_in_thread(fail, "sync", context=context)
        except TaskGroupError as eg:
            seen["errors"] = [str(e) for e in eg.exceptions]
            seen["blocker"] = blocker.cancelled() and blocker.done()
        try:
            with TaskGroup() as group:
                group.add(Task(None, context=context)).abort(SystemExit(3))
        except SystemExit as exc:  # not an Exception: raised as is, as asyncio does
            seen["exit"] = exc.code
        context.call_soon(runner.quit)

    thread = start_thread(in_thread, "group-waiter")
    runner.run()
    join(thread)
    assert seen == {"results": [0, 2, 4], "errors": ["sync"], "blocker": True, "exit": 3}


def test_with_on_the_context_thread_is_refused(ctx: qiotask.MainContext) -> None:
    task: Task[None] = Task(None)  # of ctx, whose thread is this one
    with pytest.raises(TaskGroupError) as caught:
        with TaskGroup() as group:
            group.add(task)
    [error] = caught.value.exceptions  # the body's error, as any other
    assert isinstance(error, TaskStateError)
    assert "would wait for itself forever" in str(error)
    task.complete()
    before = qiotask.stats()["created"]
    with pytest.raises(TaskGroupError):
        with TaskGroup() as group:
            group.run_in_thread(double, 1)
    assert qiotask.stats()["created"] == before  # refused before any task was made


# -- misuse -------------------------------------------------------------------------------


def test_misuse(ctx: qiotask.MainContext) -> None:
    with pytest.raises(TypeError, match="on_done must be callable"):
        TaskGroup(on_done=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be a str"):
        TaskGroup(name=3)  # type: ignore[arg-type]
    group = TaskGroup()
    with pytest.raises(TypeError, match=r"expected a qiotask\.Task, not int"):
        group.add(5)  # type: ignore[arg-type]
    task = group.add(Task(None))
    with pytest.raises(TaskStateError, match=r"in task group .* already"):
        group.add(task)
    with pytest.raises(TypeError, match="worker must be callable"):
        group.run_in_thread(5)  # type: ignore[arg-type]
    group.close()
    assert not group.done()  # one task is still pending
    late: Task[None] = Task(None, name="late")
    with pytest.raises(TaskStateError, match="is closed; no task can be added"):
        group.add(late)
    late.complete()
    with pytest.raises(TaskStateError, match="is closed"):
        group.run_in_thread(double, 1)
    with pytest.raises(TaskStateError, match="is closed"):
        with group:
            pass  # pragma: no cover
    task.complete()
    assert group.done() and group.errors == []
    # A group is entered once.
    used = TaskGroup()
    join(start_thread(lambda: used.__enter__(), "enter"))
    with pytest.raises(TaskStateError, match="entered already"):
        used.__enter__()


def test_refused_run_in_thread_leaves_no_task_behind(runner: LoopRunner) -> None:
    pool = qiotask.WorkerPool(1, name="test-pool")
    pool.shutdown()
    on_done = Recorder()
    group = TaskGroup(on_done)
    with pytest.raises(RuntimeError, match="shut down"):
        group.run_in_thread(double, 1, pool=pool)
    with pytest.raises(ValueError, match="timeout must not be negative"):
        group.run_in_thread(double, 1, timeout=-1)
    # Both tasks were finished at once, on this (the context) thread.
    group.close()
    assert on_done.calls == [([], here())]


@pytest.fixture
def legacy_group_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """qiotask._group as Python 3.10 sees it (no ExceptionGroup)."""
    monkeypatch.setattr(sys, "version_info", (3, 10, 0, "final", 0))
    spec = importlib.util.spec_from_file_location("qiotask._group_py310", qiotask._group.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.undo()
    yield module


def test_python_3_10_error_type(legacy_group_module: Any) -> None:
    error_type = legacy_group_module.TaskGroupError
    if sys.version_info >= (3, 11):
        assert not issubclass(error_type, BaseExceptionGroup)  # noqa: F821
    group = legacy_group_module.TaskGroup(name="old")
    group._fail(ValueError("a"))
    group._fail(OSError("b"))
    group.close()
    with pytest.raises(error_type) as caught:
        group._raise_errors()
    assert isinstance(caught.value, TaskError) and isinstance(caught.value, RuntimeError)
    eg: Any = caught.value
    assert eg.message == "2 errors in task group 'old'"
    assert [repr(e) for e in eg.exceptions] == ["ValueError('a')", "OSError('b')"]
    assert str(eg) == "2 errors in task group 'old' (2 sub-exceptions)"
    with pytest.raises(ValueError, match="non-empty"):
        error_type("none", [])


def test_timeout_reason_is_kept(runner: LoopRunner) -> None:
    """A task that timed out is not mistaken for one the group cancelled,
    even when the group cancels it afterwards."""
    on_done = Recorder()
    group = TaskGroup(on_done)
    slow = start_blocker(group, timeout=0.01)
    group.close()
    runner.run_until(lambda: bool(on_done.calls))
    assert slow.cancelled()
    [error] = group.errors
    assert isinstance(error, TaskTimeout)


def test_a_group_closed_with_no_loop_running_still_cancels_and_closes() -> None:
    # The coroutine is closed after its loop is gone (as the garbage
    # collector does): __aexit__ gets GeneratorExit with no loop running,
    # and must still cancel the tasks and close the group.
    groups: list[qiotask.TaskGroup] = []
    workers: list[qiotask.Task[Any]] = []
    release = threading.Event()

    async def body() -> None:
        async with qiotask.TaskGroup() as group:
            groups.append(group)
            workers.append(group.run_in_thread(lambda task, opaque: release.wait(10)))
            await asyncio.sleep(3600)

    loop = asyncio.new_event_loop()
    coro = body()
    task = loop.create_task(coro)
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # we close its coroutine ourselves
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    try:
        coro.close()  # GeneratorExit, in no loop
    finally:
        release.set()
    assert groups[0].closed
    assert workers[0].cancelled()
    assert workers[0].wait(10)
    del task


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_with_for_a_loop_attached_while_it_runs_on_another_thread(kind: str) -> None:
    # Attached here while another thread runs it: this thread is not its
    # thread, so `with` may wait for its tasks (it blocks this thread only).
    if kind == "uvloop":
        open_backend("uvloop").cleanup()  # skips (or fails in CI) without uvloop
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    thread = start_thread(loop.run_forever, "loop-thread")
    try:
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(WAIT)  # it runs there now
        context = qiotask.attach(loop)
        assert not context.is_owner()
        if kind == "asyncio":  # its loop says which thread runs it
            assert context.thread is thread
        with TaskGroup() as group:
            task = group.run_in_thread(double, 5, context=context)
        assert task.get_result()[0] == 10
    finally:
        loop.call_soon_threadsafe(loop.stop)
        join(thread)
        context.close()
        loop.close()
