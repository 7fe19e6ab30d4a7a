"""iterate_in_thread: a generator in a worker, its items on the loop, bounded."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import qiotask

from .backends import open_backend, thread_default
from .conftest import LoopRunner

MAIN = threading.current_thread().name


class Closing:
    """A generator function that records where its ``finally`` ran."""

    def __init__(self) -> None:
        self.finally_thread: str | None = None
        self.closed = threading.Event()
        self.go = threading.Event()

    def __call__(self, n: int, pause_after: int | None = None) -> Iterator[int]:
        try:
            for i in range(n):
                if i == pause_after:
                    assert self.go.wait(10)
                yield i
        finally:
            self.finally_thread = threading.current_thread().name
            self.closed.set()


def test_items_arrive_in_order_from_a_worker() -> None:
    seen_in: set[str] = set()

    def numbers(n: int) -> Iterator[int]:
        seen_in.add(threading.current_thread().name)
        yield from range(n)

    async def main() -> list[int]:
        return [item async for item in qiotask.iterate_in_thread(numbers, 1000)]

    assert asyncio.run(main()) == list(range(1000))
    assert MAIN not in seen_in


def test_the_generators_error_comes_after_its_items() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise KeyError("disk gone")

    async def main() -> list[int]:
        got: list[int] = []
        with pytest.raises(KeyError, match="disk gone"):
            async for item in qiotask.iterate_in_thread(failing):
                got.append(item)
        return got

    assert asyncio.run(main()) == [1, 2]


@pytest.mark.parametrize("buffer", [1, 4, 16])
def test_a_fast_producer_against_a_slow_consumer_stays_bounded(buffer: int) -> None:
    consumed = [0]
    ahead: list[int] = []

    def fast(n: int) -> Iterator[int]:
        for produced in range(1, n + 1):
            ahead.append(produced - consumed[0])  # items made but not yet in the consumer's hands
            yield produced

    async def main() -> None:
        async for _ in qiotask.iterate_in_thread(fast, 300, buffer=buffer):
            await asyncio.sleep(0)  # a slow consumer: a loop pass per item
            consumed[0] += 1

    asyncio.run(main())
    assert consumed[0] == 300
    assert max(ahead) <= buffer + 1  # the buffer, and the one item being made


@pytest.mark.parametrize("how", ["dropped", "aclose"])
def test_break_closes_the_generator_in_its_worker_thread(how: str) -> None:
    gen = Closing()

    async def main() -> None:
        iterator = qiotask.iterate_in_thread(gen, 10**9)
        async for item in iterator:
            if item == 3:
                break
        if how == "aclose":
            await iterator.aclose()
            assert gen.closed.is_set()  # aclose() returned after the generator's finally
        else:
            del iterator  # dropped: the stream closes
            gc.collect()
            assert await asyncio.get_running_loop().run_in_executor(None, gen.closed.wait, 10)

    asyncio.run(main())
    assert gen.finally_thread is not None and gen.finally_thread != MAIN


def test_a_cancel_while_waiting_closes_the_generator_in_its_thread() -> None:
    gen = Closing()

    async def consume(got: list[int]) -> None:
        async for item in qiotask.iterate_in_thread(gen, 10, 1):
            got.append(item)

    async def main() -> list[int]:
        got: list[int] = []
        task = asyncio.ensure_future(consume(got))
        while not got:
            await asyncio.sleep(0)  # until the first item arrived (a loop pass at a time)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gen.go.set()  # the generator makes its next item, finds the stream closed, stops
        assert await asyncio.get_running_loop().run_in_executor(None, gen.closed.wait, 10)
        return got

    assert asyncio.run(main()) == [0]
    assert gen.finally_thread != MAIN


def test_iterate_in_thread_misuse() -> None:
    async def agen() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"gen_fn .*agen is an async function"):
        qiotask.iterate_in_thread(agen)
    with pytest.raises(ValueError, match="buffer must be at least 1"):
        qiotask.iterate_in_thread(range, 3, buffer=0)
    with pytest.raises(TypeError, match="buffer must be an int"):
        qiotask.iterate_in_thread(range, 3, buffer=1.5)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="no asyncio event loop or trio run"):
        qiotask.iterate_in_thread(range, 3)  # made outside the loop that would iterate it


def test_under_trio() -> None:
    trio = pytest.importorskip("trio")
    gen = Closing()

    async def main() -> tuple[list[int], Any]:
        items = [item async for item in qiotask.iterate_in_thread(range, 50, buffer=4)]
        got: list[int] = []
        with trio.move_on_after(10) as scope:  # cancelled below, not by this deadline
            async for item in qiotask.iterate_in_thread(gen, 10, 1):
                got.append(item)
                scope.cancel()  # cancels the wait for the next item
        gen.go.set()
        await qiotask.to_thread(gen.closed.wait, 10)
        return items, got

    items, got = trio.run(main)
    assert items == list(range(50))
    assert got == [0]
    assert gen.finally_thread != MAIN


# -- the callback form: connect_items / send_item, on every loop --------------------------------


@pytest.fixture(params=["asyncio", "glib", "qt", "tk"])
def loop_runner(request: pytest.FixtureRequest) -> Iterator[LoopRunner]:
    with thread_default(open_backend(request.param)) as backend:
        yield LoopRunner(backend.context)


@pytest.mark.parametrize("buffer", [1, 4])
def test_items_reach_the_loop_in_order_before_func(loop_runner: LoopRunner, buffer: int) -> None:
    seen: list[tuple[Any, str]] = []
    handed = [0]
    ahead: list[int] = []

    def worker(task: qiotask.Task[Any], opaque: Any) -> str:
        for made in range(1, 201):
            ahead.append(made - handed[0])
            task.send_item(made)
        return "sent"

    def on_item(task: qiotask.Task[Any], item: int) -> None:
        seen.append((item, threading.current_thread().name))
        handed[0] += 1

    task = qiotask.Task(None, lambda s, e, o: seen.append(("func", threading.current_thread().name)))
    task.connect_items(on_item, buffer=buffer)
    task.add_done_callback(loop_runner.quit)
    task.run_in_thread(worker)
    loop_runner.run()
    assert [item for item, _ in seen] == [*range(1, 201), "func"]  # every item, in order, then func
    assert {thread for _, thread in seen} == {threading.current_thread().name}  # on the loop thread
    assert max(ahead) <= buffer + 1


def test_send_item_raises_once_the_loop_is_gone() -> None:
    ctx = qiotask.MainContext(name="items")  # its loop never runs: items stay out
    errors: list[BaseException] = []

    def worker(task: qiotask.Task[Any], opaque: Any) -> None:
        try:
            for item in range(10):
                task.send_item(item)  # blocks at the second: the buffer is 1
        except qiotask.ContextClosedError as exc:
            errors.append(exc)

    task = qiotask.Task(None, context=ctx)
    task.connect_items(lambda t, item: None, buffer=1)
    task.run_in_thread(worker)
    ctx.close()  # the pending hand-over fails: the stream closes, the worker is told
    assert task.wait(10)
    assert len(errors) == 1 and "is gone" in str(errors[0])


def test_connect_items_misuse(ctx: qiotask.MainContext) -> None:
    task = qiotask.Task(None)
    with pytest.raises(qiotask.TaskStateError, match="needs a connect_items"):
        task.send_item(1)
    with pytest.raises(TypeError, match="connect_items: fn must be callable"):
        task.connect_items("nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffer must be at least 1"):
        task.connect_items(print, buffer=0)
    task.connect_items(print)
    with pytest.raises(qiotask.TaskStateError, match="may be called once"):
        task.connect_items(print)
    task.complete()
