"""Workers are synchronous: async functions are refused where they would only
make a coroutine in a thread, and a worker that returns an awaitable fails."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest

import qiotask
from qiotask import Task, TaskState

from .conftest import LoopRunner


async def fetch(url: str = "x") -> str:
    return url


async def stream() -> AsyncIterator[int]:
    yield 1


class Client:
    async def get(self) -> str:
        return "got"


ASYNC_CALLABLES = {
    "async function": fetch,
    "partial of one": functools.partial(fetch, "y"),
    "partial of a partial": functools.partial(functools.partial(fetch), "y"),
    "bound async method": Client().get,
    "async generator function": stream,
}


@pytest.mark.parametrize("fn", ASYNC_CALLABLES.values(), ids=ASYNC_CALLABLES.keys())
def test_run_in_thread_refuses_an_async_worker(ctx: qiotask.MainContext, fn: Any) -> None:
    task = Task(None, None)
    with pytest.raises(TypeError, match=r"run_in_thread: worker .*(fetch|get|stream) is an async function"):
        task.run_in_thread(fn)
    assert task.state is TaskState.PENDING  # nothing was submitted: it may still run a worker
    task.run_in_thread(lambda t, o: "sync")
    assert task.wait_thread() is None and task.get_result() == "sync"


@pytest.mark.parametrize("fn", ASYNC_CALLABLES.values(), ids=ASYNC_CALLABLES.keys())
def test_to_thread_refuses_an_async_function(fn: Any) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match=r"to_thread: fn .* is an async function"):
            await qiotask.to_thread(fn)

    asyncio.run(main())


def test_to_thread_refuses_an_async_function_under_trio() -> None:
    trio = pytest.importorskip("trio")

    async def main() -> None:
        with pytest.raises(TypeError, match=r"to_thread: fn fetch is an async function"):
            await qiotask.to_thread(fetch)

    trio.run(main)


def test_an_async_function_never_runs_nor_leaves_a_coroutine(recwarn: pytest.WarningsRecorder) -> None:
    ran: list[str] = []

    async def job() -> None:
        ran.append("ran")

    async def main() -> None:
        with pytest.raises(TypeError):
            await qiotask.to_thread(job)

    asyncio.run(main())
    assert ran == []
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def error_of(runner: LoopRunner, worker: Any) -> BaseException | None:
    """Run ``worker`` in a task on the runner's loop; the task's error."""
    task = Task(None, runner.quit)
    task.run_in_thread(worker)
    runner.run()
    assert task.get_result() is None  # nothing kept as the result
    return task.exception()


def test_call_in_main_refuses_an_async_function(runner: LoopRunner) -> None:
    def worker(task: Task[Any], opaque: Any) -> None:
        task.call_in_main(fetch)

    err = error_of(runner, worker)
    assert isinstance(err, TypeError)
    assert "call_in_main: fn fetch is an async function" in str(err)


def test_run_in_executor_refuses_an_async_function(ctx: qiotask.MainContext) -> None:
    from concurrent.futures import ThreadPoolExecutor

    task = Task(None, None)
    with ThreadPoolExecutor(1) as executor, pytest.raises(TypeError, match=r"run_in_executor: fn fetch is an async"):
        task.run_in_executor(executor, fetch)
    task.complete()


def test_a_worker_that_returns_a_coroutine_fails_and_the_coroutine_is_closed(
    runner: LoopRunner, recwarn: pytest.WarningsRecorder
) -> None:
    made: list[Any] = []

    def worker(task: Task[Any], opaque: Any) -> Any:
        coro = fetch()  # a sync function returning a coroutine: easy to write by mistake
        made.append(coro)
        return coro

    err = error_of(runner, worker)
    assert isinstance(err, TypeError)
    assert "the worker returned an awaitable (coroutine)" in str(err)
    assert inspect.getcoroutinestate(made[0]) == inspect.CORO_CLOSED
    del made[:]
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_a_worker_that_returns_a_future_fails(runner: LoopRunner) -> None:
    loop = asyncio.new_event_loop()
    try:
        err = error_of(runner, lambda t, o: loop.create_future())
        assert isinstance(err, TypeError) and "(Future)" in str(err)
    finally:
        loop.close()


def test_to_thread_of_a_sync_function_returning_a_coroutine_fails() -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match=r"the worker returned an awaitable \(coroutine\)"):
            await qiotask.to_thread(lambda: fetch())

    asyncio.run(main())


def test_sync_callables_of_every_kind_are_accepted(ctx: qiotask.MainContext) -> None:
    class Callable:
        def __call__(self, task: Task[Any], opaque: Any) -> str:
            return "object"

    class Worker:
        def run(self, task: Task[Any], opaque: Any) -> str:
            return "method"

    def plain(task: Task[Any], opaque: Any, suffix: str = "") -> str:
        return "plain" + suffix

    for worker, expected in [
        (plain, "plain"),
        (functools.partial(plain, suffix="!"), "plain!"),
        (Worker().run, "method"),
        (Callable(), "object"),
    ]:
        task = Task(None, None)
        task.run_in_thread(worker)
        task.wait_thread()
        assert task.get_result() == expected
