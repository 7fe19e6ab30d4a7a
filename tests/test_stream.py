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


# -- what a review found (each failed before its fix) ---------------------------------------------


def test_a_second_concurrent_anext_is_refused() -> None:
    # As an async generator refuses a second anext() while one waits: the
    # stream keeps one waiter, and a second would leave the first hung.
    go = threading.Event()

    def slow() -> Iterator[int]:
        assert go.wait(10)
        yield 1

    async def main() -> int:
        iterator = qiotask.iterate_in_thread(slow)
        first = asyncio.ensure_future(iterator.__anext__())
        await asyncio.sleep(0)  # the first waits for an item now
        with pytest.raises(RuntimeError, match="already waits for the next item"):
            await iterator.__anext__()
        go.set()
        item = await asyncio.wait_for(first, 10)
        await iterator.aclose()
        return item

    assert asyncio.run(main()) == 1


@pytest.mark.parametrize("runner", ["asyncio", "trio"])
def test_a_run_that_ends_with_an_iterator_open_frees_its_worker(runner: str) -> None:
    # Held past the end of the run, the iterator is neither dropped nor
    # closed; the worker, blocked on the full buffer, must notice the loop
    # is gone (within about half a second) and close the generator there.
    gen = Closing()
    kept: list[Any] = []

    async def main() -> int:
        iterator = qiotask.iterate_in_thread(gen, 100, buffer=2)
        kept.append(iterator)
        return await iterator.__anext__()

    if runner == "trio":
        trio = pytest.importorskip("trio")
        first = trio.run(main)
    else:
        first = asyncio.run(main())
    assert first == 0
    assert gen.closed.wait(10), "the worker still waits for room on a loop that is gone"
    assert gen.finally_thread != MAIN
    task = kept[0]._task
    assert task.wait(10)
    assert isinstance(task.exception(), qiotask.ContextClosedError)


def test_aclose_after_a_cancel_still_waits_for_the_generators_finally() -> None:
    import contextlib

    release = threading.Event()
    finished = threading.Event()

    def slow() -> Iterator[int]:
        try:
            yield 1
            release.wait(10)
            yield 2
        finally:
            finished.set()

    seen: list[bool] = []

    async def consume() -> None:
        try:
            async with contextlib.aclosing(qiotask.iterate_in_thread(slow)) as iterator:
                async for _ in iterator:
                    pass
        finally:
            seen.append(finished.is_set())

    async def main() -> None:
        task = asyncio.ensure_future(consume())
        for _ in range(1000):  # bounded: a loop pass at a time until it waits for the second item
            await asyncio.sleep(0)
            if release.is_set() or task.done():
                break
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == [True], "aclose() returned before the generator's finally ran"


def test_send_item_on_the_context_thread_is_refused(ctx: qiotask.MainContext) -> None:
    task = qiotask.Task(None)
    task.connect_items(lambda t, item: None, buffer=1)
    with pytest.raises(qiotask.TaskStateError, match=r"send_item\(\) from the context thread"):
        task.send_item(1)  # a full buffer would wait for this very thread
    task.complete()


def test_send_item_from_an_abandoned_worker_raises_the_cancel() -> None:
    # The task completed (cancelled, abandon_on_cancel) while its worker
    # still sends: the stream is closed with the completion, so the worker
    # is told instead of waiting for room nobody will make.
    ctx = qiotask.MainContext(name="abandoned")
    loop = qiotask.MainLoop(ctx)
    started = threading.Event()
    cancelled = threading.Event()
    outcome: list[BaseException | str] = []
    done = threading.Event()

    def worker(task: qiotask.Task[Any], opaque: Any) -> None:
        started.set()
        try:
            assert cancelled.wait(10)
            for item in range(5):
                task.send_item(item)  # buffer 1: the second would wait for ever
            outcome.append("sent all")
        except BaseException as exc:
            outcome.append(exc)
        finally:
            done.set()

    task = qiotask.Task(None, lambda s, e, o: loop.quit(), context=ctx)
    task.connect_items(lambda t, item: None, buffer=1)
    task.on_cancel(lambda t: cancelled.set())
    task.run_in_thread(worker, abandon_on_cancel=True)
    assert started.wait(10)  # running: the cancel abandons it (queued, it would never start)
    ctx.call_soon(task.cancel)
    loop.run()
    assert done.wait(10), "the abandoned worker waits in send_item for ever"
    assert len(outcome) == 1 and isinstance(outcome[0], qiotask.TaskCancelled)
    ctx.close()


def test_the_first_send_item_after_the_loop_is_gone_raises() -> None:
    ctx = qiotask.MainContext(name="gone")
    ctx.close()
    outcome: list[str] = []

    def worker(task: qiotask.Task[Any], opaque: Any) -> None:
        for item in range(3):
            try:
                task.send_item(item)
                outcome.append("accepted")
            except qiotask.ContextClosedError:
                outcome.append("ContextClosedError")

    task = qiotask.Task(None, context=ctx)
    task.connect_items(lambda t, item: None)
    task.run_in_thread(worker)
    assert task.wait(10)
    assert outcome == ["ContextClosedError"] * 3  # none accepted and then dropped


def test_loop_thread_callbacks_must_be_sync(ctx: qiotask.MainContext) -> None:
    async def on_loop(*args: Any) -> None:
        pass

    task = qiotask.Task(None)
    with pytest.raises(TypeError, match=r"connect_items: fn .*on_loop is an async function"):
        task.connect_items(on_loop)
    with pytest.raises(TypeError, match=r"connect_progress: fn .*on_loop is an async function"):
        task.connect_progress(on_loop)
    with pytest.raises(TypeError, match=r"add_done_callback: fn .*on_loop is an async function"):
        task.add_done_callback(on_loop)
    task.complete()
