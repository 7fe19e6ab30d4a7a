"""qiotask.from_thread: a worker calls back into its loop with no handle."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from typing import Any

import pytest

import qiotask
from qiotask import ContextClosedError, Task, TaskCancelled, TaskGroup, from_thread

from .backends import open_backend
from .conftest import TIMEOUT, LoopRunner, wait_for
from .interleave import interleaving

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


def where() -> tuple[str, str]:
    """The thread a call runs on, and the contextvar it sees."""
    return threading.current_thread().name, var.get()


# -- run_sync ---------------------------------------------------------------------------


def test_run_sync_from_to_thread_runs_on_the_loop_thread_in_the_workers_context() -> None:
    def work(x: int) -> tuple[Any, ...]:
        var.set("worker's")
        return (threading.current_thread().name, *from_thread.run_sync(where), from_thread.run_sync(pow, x, 2))

    async def main() -> tuple[Any, ...]:
        var.set("caller's")
        return await qiotask.to_thread(work, 7)

    worker_thread, thread, seen, square = asyncio.run(main())
    assert thread == threading.current_thread().name != worker_thread
    assert seen == "worker's"  # the worker's contextvars, as trio's from_thread
    assert square == 49


def test_run_sync_raises_what_fn_raised(runner: LoopRunner) -> None:
    def worker(task: Task[Any], opaque: Any) -> str:
        with pytest.raises(ZeroDivisionError):
            from_thread.run_sync(lambda: 1 / 0)
        return "went on"

    task = Task(None, runner.quit)
    task.run_in_thread(worker)
    runner.run()
    assert task.get_result() == "went on"


def test_run_sync_is_served_while_the_loop_thread_waits_in_wait_thread(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    task.run_in_thread(lambda t, o: from_thread.run_sync(where)[0])
    task.wait_thread()  # the loop is not running: wait_thread serves the call
    assert task.get_result() == threading.current_thread().name


def test_run_sync_from_a_task_group_worker() -> None:
    async def main() -> Any:
        async with TaskGroup() as group:
            task = group.run_in_thread(lambda t, o: from_thread.run_sync(where)[0])
        return task.get_result()

    assert asyncio.run(main()) == threading.current_thread().name


def test_run_sync_refuses_an_async_function(runner: LoopRunner) -> None:
    async def coro() -> None:
        pass

    def worker(task: Task[Any], opaque: Any) -> None:
        from_thread.run_sync(coro)

    task = Task(None, runner.quit)
    task.run_in_thread(worker)
    runner.run()
    assert isinstance(task.exception(), TypeError)
    assert "from_thread.run_sync: fn" in str(task.exception())


# -- run ----------------------------------------------------------------------------------


async def on_the_loop(x: int) -> tuple[str, str, int]:
    await asyncio.sleep(0)
    return (*where(), x + 1)


def test_run_awaits_a_coroutine_on_the_asyncio_loop() -> None:
    def work() -> Any:
        var.set("worker's")
        return from_thread.run(on_the_loop, 41)

    async def main() -> Any:
        return await qiotask.to_thread(work)

    assert asyncio.run(main()) == (threading.current_thread().name, "worker's", 42)


def test_run_raises_what_the_coroutine_raised() -> None:
    async def failing() -> None:
        await asyncio.sleep(0)
        raise KeyError("on the loop")

    async def main() -> None:
        with pytest.raises(KeyError, match="on the loop"):
            await qiotask.to_thread(from_thread.run, failing)

    asyncio.run(main())


def test_run_awaits_a_coroutine_in_the_trio_run() -> None:
    trio = pytest.importorskip("trio")

    async def in_trio(x: int) -> tuple[str, str, int]:
        await trio.sleep(0)
        return (*where(), x * 3)

    def work() -> Any:
        var.set("worker's")
        return from_thread.run(in_trio, 5)

    async def main() -> Any:
        return await qiotask.to_thread(work)

    assert trio.run(main) == (threading.current_thread().name, "worker's", 15)


def test_run_on_a_loop_without_coroutines_says_what_it_needs() -> None:
    backend = open_backend("glib")
    try:
        runner = LoopRunner(backend.context)

        def worker(task: Task[Any], opaque: Any) -> None:
            from_thread.run(on_the_loop, 1)

        task = Task(None, runner.quit, context=backend.context)
        task.run_in_thread(worker)
        runner.run()
        err = task.exception()
        assert isinstance(err, RuntimeError)
        assert "needs an asyncio loop or a trio run" in str(err)
    finally:
        backend.cleanup()


# -- check_cancelled ------------------------------------------------------------------------


def test_check_cancelled_raises_once_the_task_is_cancelled(runner: LoopRunner) -> None:
    before_cancel = threading.Event()
    cancelled = threading.Event()
    checks: list[str] = []

    def worker(task: Task[Any], opaque: Any) -> None:
        from_thread.check_cancelled()  # not cancelled yet: nothing
        checks.append("passed")
        before_cancel.set()
        assert cancelled.wait(10)
        from_thread.check_cancelled()
        checks.append("not raised")

    task = Task(None, runner.quit)
    task.run_in_thread(worker)
    assert before_cancel.wait(10)
    task.cancel()
    cancelled.set()
    runner.run()
    assert checks == ["passed"]
    assert isinstance(task.exception(), TaskCancelled)


# -- outside a worker -------------------------------------------------------------------------


@pytest.mark.parametrize("call", [lambda: from_thread.run_sync(print), from_thread.check_cancelled])
def test_outside_a_worker_raises_runtime_error(call: Any) -> None:
    with pytest.raises(RuntimeError, match="must be called from inside a qiotask worker"):
        call()  # the main thread, which runs the loop here

    errors: list[BaseException] = []

    def own_thread() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=own_thread)
    thread.start()
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)


def test_a_thread_the_worker_starts_is_not_a_worker(runner: LoopRunner) -> None:
    def worker(task: Task[Any], opaque: Any) -> str:
        errors: list[BaseException] = []

        def inner() -> None:
            try:
                from_thread.run_sync(print)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=inner)
        thread.start()
        thread.join(10)
        return type(errors[0]).__name__

    task = Task(None, runner.quit)
    task.run_in_thread(worker)
    runner.run()
    assert task.get_result() == "RuntimeError"


def test_run_keeps_no_cancel_hook_once_it_returned() -> None:
    # A worker may call run() many times: each call's cancel hook goes with it.
    async def one() -> int:
        return 1

    def work() -> Any:
        total = sum(from_thread.run(one) for _ in range(50))
        task = qiotask._threadjob.current_task()
        assert task is not None
        return total, task._ctl.cancel_hooks

    async def main() -> Any:
        return await qiotask.to_thread(work)

    total, hooks = asyncio.run(main())
    assert total == 50
    assert not hooks


# -- the loop goes away while a call waits --------------------------------------------------


def _call_as_the_loop_closes(call: Any, close: Any, loop: Any = None) -> BaseException | None:
    """Run a worker on a stopped asyncio loop (a new one by default) that
    makes ``call()``; ``close(loop)`` closes the loop (once the request is
    on its way); return what the call raised (None if it returned)."""
    if loop is None:
        loop = asyncio.new_event_loop()
    ctx = qiotask.attach(loop)
    outcome: list[BaseException | None] = []

    def worker(task: Task[Any], opaque: Any) -> None:
        workers.append(threading.get_ident())
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    workers: list[int] = []
    task = Task(None, context=ctx)
    try:
        task.run_in_thread(worker)
        close(loop, workers)
    finally:
        loop.close()
    # The worker's own completion then fails too: the loop is gone.
    wait_for(lambda: bool(outcome) and task.done(), timeout=TIMEOUT, what="the worker's call to give up")
    assert isinstance(task.exception(), ContextClosedError)
    assert len(outcome) == 1
    return outcome[0]


CALLS = pytest.mark.parametrize(
    "call", [lambda: from_thread.run(on_the_loop, 1), lambda: from_thread.run_sync(where)], ids=["run", "run_sync"]
)


@CALLS
def test_a_call_queued_on_a_stopped_loop_fails_when_the_loop_closes(call: Any) -> None:
    # The request reached the loop, which is not running; close() drops
    # what it still holds.  The worker must hear of it, not wait for ever.
    def close(loop: asyncio.AbstractEventLoop, workers: list[int]) -> None:
        # asyncio's ready queue: there is no event to wait on for "a
        # callback was handed to a loop that is not running".
        wait_for(lambda: len(loop._ready) > 0, what="the request to reach the loop")  # type: ignore[attr-defined]
        loop.close()

    assert isinstance(_call_as_the_loop_closes(call, close), ContextClosedError)


def _waits_for_the_loop(ident: int) -> bool:
    """Whether thread ``ident`` waits for its call's answer: the request
    and its wake-up went out before that wait (``call_in_main`` for
    ``run_sync``, the adapter's ``run_coroutine`` for ``run``)."""
    frame = sys._current_frames().get(ident)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names[:1] == ["wait"] and ("call_in_main" in names or "run_coroutine" in names)


@CALLS
def test_a_call_queued_on_a_stopped_uvloop_fails_when_the_loop_closes(call: Any) -> None:
    # uvloop's close() drops the callbacks it holds too, and keeps its
    # ready queue out of reach: wait for the worker to wait for its answer.
    open_backend("uvloop").cleanup()  # skips (or fails in CI) without uvloop
    import uvloop

    def close(loop: asyncio.AbstractEventLoop, workers: list[int]) -> None:
        wait_for(lambda: bool(workers) and _waits_for_the_loop(workers[0]), what="the worker to wait for the loop")
        loop.close()

    assert isinstance(_call_as_the_loop_closes(call, close, uvloop.new_event_loop()), ContextClosedError)


def test_run_whose_request_is_queued_as_the_loop_closes_fails() -> None:
    # run()'s request goes through the context's queue, as run_sync()'s
    # does: queued, its wake-up not sent yet when the loop closes, the
    # wake-up finds the loop closed and fails what waits for it.
    with interleaving() as il:
        waking = il.pause("context.wakeup")

        def close(loop: asyncio.AbstractEventLoop, workers: list[int]) -> None:
            waking.wait_reached()
            loop.close()
            waking.release()

        assert isinstance(_call_as_the_loop_closes(lambda: from_thread.run(on_the_loop, 1), close), ContextClosedError)


def test_run_whose_coroutine_is_pending_when_its_loop_closes_fails() -> None:
    # Started, the coroutine is the loop's; a loop closed with it pending
    # (not by asyncio.run(), which cancels it) must not keep the worker.
    loop = asyncio.new_event_loop()
    ctx = qiotask.attach(loop)
    outcome: list[BaseException] = []
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    def worker(task: Task[Any], opaque: Any) -> None:
        try:
            from_thread.run(forever)
        except BaseException as exc:
            outcome.append(exc)

    task = Task(None, context=ctx)
    try:
        task.run_in_thread(worker)
        loop.run_until_complete(started.wait())
    finally:
        loop.close()
    wait_for(lambda: bool(outcome) and task.done(), timeout=TIMEOUT, what="the worker's call to give up")
    assert isinstance(outcome[0], ContextClosedError) and "closed before" in str(outcome[0])


@pytest.mark.parametrize("runner", ["asyncio", "trio"])
def test_run_of_a_function_that_returns_no_awaitable_names_it(runner: str) -> None:
    def not_async() -> int:
        return 5

    def worker() -> BaseException | None:
        try:
            from_thread.run(not_async)  # type: ignore[arg-type]
        except BaseException as exc:
            return exc
        return None

    async def main() -> BaseException | None:
        return await qiotask.to_thread(worker)

    if runner == "trio":
        trio = pytest.importorskip("trio")
        error = trio.run(main)
    else:
        error = asyncio.run(main())
    assert isinstance(error, TypeError)
    assert "from_thread.run: async_fn" in str(error) and "not_async returned int, not an awaitable" in str(error)
