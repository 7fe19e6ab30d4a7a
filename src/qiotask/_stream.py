"""Streaming: the items a generator yields in a worker, handed to the loop.

``qiotask.iterate_in_thread(gen_fn, *args, buffer=16)`` is an async
iterator (asyncio, trio) over what ``gen_fn(*args)`` yields, run in a worker
thread::

    async for line in qiotask.iterate_in_thread(read_lines, path):
        show(line)

- **In order, in batches.** The worker appends to a queue; the loop takes
  everything queued at once and hands it out item by item, so a fast
  producer costs one wake-up of the loop per batch, not per item.
- **Bounded.** The worker blocks once ``buffer`` items are waiting, counting
  those the loop took and has not handed out yet: memory stays bounded
  whatever the producer's speed.
- **Errors.** An exception from the generator is raised from ``__anext__``
  after the items yielded before it.
- **Closing.** ``aclose()``, a cancel of the waiting coroutine, or dropping
  the iterator (``break`` out of ``async for``, once nothing else holds it)
  closes the generator *in its worker thread* -- its ``finally`` runs there
  -- and frees the thread.  Use ``contextlib.aclosing`` where "at once" must
  not depend on the iterator being dropped.

The callback form, for loops that run no coroutines (GLib, Qt, Tk) and for
the callback style anywhere: ``task.connect_items(fn, buffer=16)`` before
the worker starts, ``task.send_item(item)`` in the worker (blocking while
``buffer`` items are out), and ``fn(task, item)`` runs on the context
thread once per item, in order, in batches, before ``func``.  If the loop
goes away, ``send_item`` raises ``ContextClosedError`` in the worker.

Who decides what: the queue, the count of items out, "closed" and the
consumer's waiter are guarded by the stream's lock; the worker blocks on a
condition of that lock while the buffer is full.  The loop waits for items
by awaiting a qiotask task (``Task.__await__``: asyncio and trio alike) that
the worker completes when it queues the first item after the loop started
waiting, or when it ends.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._checks import check_callable, check_sync
from ._errors import ContextClosedError, TaskStateError

if TYPE_CHECKING:
    from ._context import MainContext

__all__ = ["ItemStream", "Items", "connect_items", "iterate_in_thread", "send_item"]

#: How often (seconds) a worker waiting for room looks whether the loop that
#: takes its items is gone: the longest it then waits in vain.
CLOSED_CHECK = 0.5

T = TypeVar("T")


class ItemStream(Generic[T]):
    """The worker's side and the loop's side of a bounded stream of items."""

    def __init__(self, buffer: int, context: MainContext) -> None:
        self.buffer = buffer
        # The context whose loop takes the items: a worker waiting for room
        # looks now and then whether that loop is gone (nothing else may
        # tell it: a loop that ends with the consumer's iterator still held).
        self._context = context
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # the worker waits here while full
        self._queue: collections.deque[T] = collections.deque()
        self._out = 0  # items queued or taken by the loop and not yet handed out
        self._closed = False  # the loop is done with the stream
        self._ended = False  # the worker is done producing
        # How to wake the loop when it waits for items: set by take() when it
        # found none, called (once) by the put or end that comes next.
        self._waiter: Callable[[], Any] | None = None

    # -- the worker's side ---------------------------------------------------------

    def put(self, item: T) -> bool:
        """From the worker: queue ``item``, blocking while ``buffer`` items
        are out; False once the stream is closed (stop producing): by the
        loop, by the completion, or because the loop is gone."""
        while True:
            with self._lock:
                if self._closed:
                    return False
                if self._out < self.buffer:
                    self._queue.append(item)
                    self._out += 1
                    waiter, self._waiter = self._waiter, None
                    break
                if self._room.wait(CLOSED_CHECK):
                    continue  # room was made (or the stream closed): look again
            # A while without room: the loop may be gone for good.  Asked
            # without the stream's lock: a context found closed fails what
            # it holds here, and that may close this stream.
            if self._context.closed:
                self.close()
                return False
        if waiter is not None:
            waiter()  # the loop waits for items: wake it (once per batch)
            with self._lock:
                # The wake-up found the loop gone and closed the stream:
                # this item is dropped with the rest, so say so now.
                return not self._closed
        return True

    def end(self) -> None:
        """From the worker, last: nothing more comes."""
        with self._lock:
            self._ended = True
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter()

    # -- the loop's side --------------------------------------------------------------

    def take(
        self, handed_out: int, wake: Callable[[], Any] | None, last: bool = False
    ) -> tuple[collections.deque[T], bool]:
        """On the loop: give back ``handed_out`` items (handed out since the
        last take) and take what is queued: ``(items, ended)``.  With nothing
        queued and the worker not done, ``wake()`` is called when items
        come (or the worker ends) -- or, with ``last``, the stream closes in
        the same step: no item can come between the last take and the close."""
        with self._lock:
            if handed_out:
                self._out -= handed_out
                self._room.notify()
            items, self._queue = self._queue, collections.deque()
            if not items:
                if last:
                    self._closed = True
                    self._room.notify()
                elif not self._ended:
                    self._waiter = wake
            return items, self._ended

    def close(self) -> Callable[[], Any] | None:
        """On the loop: done with the stream; the worker stops at its next
        item (or at once, if it waits for room).  Returns the loop's wake-up
        if one was pending (the caller calls it: nobody else will)."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._room.notify()
            waiter, self._waiter = self._waiter, None
            return waiter


class _Iterator(Generic[T]):
    """What ``iterate_in_thread`` returns: an async iterator over the items."""

    def __init__(self, stream: ItemStream[T], task: Any) -> None:
        self._stream = stream
        self._task = task  # the worker's task: its outcome is the generator's end
        self._batch: collections.deque[T] = collections.deque()
        self._handed = 0  # items of the batch handed out, given back at the next take
        self._done = False
        self._waiting = False  # an __anext__ waits for items (the stream keeps one waiter)

    def __aiter__(self) -> _Iterator[T]:
        return self

    async def __anext__(self) -> T:
        batch = self._batch
        if batch:
            self._handed += 1
            return batch.popleft()
        from ._task import Task  # (a cycle: _task imports this module)

        if self._waiting:
            raise RuntimeError(
                "iterate_in_thread: another coroutine already waits for the next item of this iterator; "
                "iterate it from one coroutine at a time"
            )
        while True:
            if self._done:
                raise StopAsyncIteration
            items, ended = self._stream.take(self._handed, None)
            self._handed = 0
            waiter: Task[None] | None = None
            if not items and not ended:
                # Nothing yet: ask to be woken (taking again in the same
                # step, in case items came meanwhile).
                waiter = Task(None)
                items, ended = self._stream.take(0, waiter.complete)
                if items or ended:
                    waiter.complete()  # not needed after all: nobody awaits it
                    waiter = None
            if items:
                self._batch = batch = items
                self._handed = 1
                return batch.popleft()
            if ended:
                self._done = True
                await self._task  # the generator's exception, if it raised
                raise StopAsyncIteration
            assert waiter is not None
            self._waiting = True
            try:
                await waiter
            except BaseException:
                self._finish()
                raise
            finally:
                self._waiting = False

    async def aclose(self) -> None:
        """Close the generator, in its worker thread, and wait for it (also
        when a cancel closed it already: its ``finally`` may still run)."""
        if not self._done:
            self._finish()
        if self._task.done():
            return
        try:
            await self._task
        except Exception:
            pass  # the generator's own error on its way out: closing is what was asked

    def _finish(self) -> None:
        self._done = True
        self._batch.clear()
        wake = self._stream.close()
        if wake is not None:
            wake()  # taken from the stream under its lock: nobody else calls it

    def __del__(self) -> None:
        if not self._done:
            self._stream.close()  # dropped mid-way (a break): the worker stops


def _produce(task: Any, job: tuple[Callable[..., Iterable[Any]], tuple[Any, ...], ItemStream[Any]]) -> None:
    gen_fn, args, stream = job
    iterator: Any = None
    try:
        iterator = iter(gen_fn(*args))
        for item in iterator:
            if not stream.put(item):
                break  # the loop closed the stream
    finally:
        stream.end()
        close = getattr(iterator, "close", None)
        if close is not None:
            close()  # here, in the worker: the generator's finally runs in its thread


class Items:
    """A task's ``connect_items`` callback and its stream."""

    def __init__(self, task: Any, fn: Callable[[Any, Any], Any], buffer: int) -> None:
        self.task = task
        self.fn = fn
        self.stream: ItemStream[Any] = ItemStream(buffer, task._context)
        self.stream.take(0, self.wake)  # the first item posts a hand-over

    def wake(self) -> None:
        """From the worker: items wait; hand them over on the context thread
        (or, if the loop is gone, close the stream: the worker is told)."""
        from ._context import _CallOnce

        self.task._context.post(_CallOnce(self.deliver, (), on_closed=self.stream.close))

    def deliver(self) -> None:
        """On the context thread: every item queued now, one callback each."""
        _reraise(self._hand_over(self.wake))

    def finish(self, run: bool) -> BaseException | None:
        """The completion, before ``func``: the items still queued (``run``:
        on the context thread; else the loop is gone and they are dropped).
        Returns a KeyboardInterrupt/SystemExit a callback raised."""
        if not run:
            self.stream.close()
            return None
        # The last takes close the stream once it is empty (callbacks' errors
        # are collected, not raised, on the way): a worker still sending (one
        # a cancel abandoned) is told, instead of waiting for room nobody
        # makes, and no item is taken in and lost.
        return self._hand_over(None, last=True)

    def _hand_over(self, wake: Callable[[], Any] | None, last: bool = False) -> BaseException | None:
        from ._delivery import first, notify

        pending: BaseException | None = None
        handed = 0
        while True:
            items, _ = self.stream.take(handed, wake, last)
            if not items:
                return pending  # (wake is registered for the next item)
            for item in items:
                pending = first(pending, notify(self.task, self.fn, "item callback", self.task, item))
            handed = len(items)


def _reraise(pending: BaseException | None) -> None:
    if pending is not None:
        raise pending


def connect_items(task: Any, fn: Callable[[Any, Any], Any], buffer: int) -> None:
    """``Task.connect_items`` (see its docstring)."""
    check_callable(fn, "connect_items")
    check_sync(fn, "connect_items")
    _check_buffer(buffer, "connect_items")
    ctl = task._own_ctl()
    with task._lock:
        if ctl.items is not None:
            raise TaskStateError(f"task {task.name!r}: connect_items() may be called once")
        if task.done():
            raise TaskStateError(f"task {task.name!r} is finished; connect_items() must come before")
        ctl.items = Items(task, fn, buffer)


def send_item(task: Any, item: Any) -> None:
    """``Task.send_item`` (see its docstring)."""
    items = task._ctl.items
    if items is None and not task.done():
        raise TaskStateError(f"task {task.name!r}: send_item() needs a connect_items() callback first")
    if task._context.is_owner():
        raise TaskStateError(
            f"task {task.name!r}: send_item() from the context thread itself, which would wait for the room "
            "only this thread makes; call the items callback directly"
        )
    if items is None or not items.stream.put(item):
        if task.done():
            # Completed while its worker still sends: a cancel abandoned it.
            task.raise_if_cancelled()
            raise TaskStateError(f"task {task.name!r} has completed: send_item() comes too late")
        raise ContextClosedError(f"task {task.name!r}: send_item(): context {task.context.name!r} is gone")


def _check_buffer(buffer: Any, where: str) -> None:
    if not isinstance(buffer, int) or isinstance(buffer, bool):
        raise TypeError(f"{where}: buffer must be an int, not {type(buffer).__name__}")
    if buffer < 1:
        raise ValueError(f"{where}: buffer must be at least 1, got {buffer}")


def iterate_in_thread(gen_fn: Callable[..., Iterable[T]], /, *args: Any, buffer: int = 16) -> _Iterator[T]:
    """An async iterator over the items ``gen_fn(*args)`` yields in a worker
    thread (see the module docstring): ``async for item in ...`` under
    asyncio or trio.

    Raises:
        TypeError: ``gen_fn`` not callable, or an async function; ``buffer``
            not an int.
        ValueError: ``buffer`` below 1.
        RuntimeError: no asyncio event loop or trio run runs in this thread.
    """
    check_callable(gen_fn, "iterate_in_thread", "gen_fn")
    check_sync(gen_fn, "iterate_in_thread", "gen_fn")
    _check_buffer(buffer, "iterate_in_thread")
    from ._adapters import async_adapter
    from ._api import settle_unsubmitted
    from ._task import Task

    if async_adapter() is None:
        # The stream's task belongs to the loop running here: made anywhere
        # else, its end would be delivered to a loop that never runs.
        raise RuntimeError(
            "iterate_in_thread: no asyncio event loop or trio run is running in this thread; "
            "call it in the coroutine that iterates"
        )
    task: Task[None] = Task(None, name=f"iterate_in_thread({getattr(gen_fn, '__qualname__', gen_fn)})")
    stream: ItemStream[T] = ItemStream(buffer, task.context)
    try:
        task.run_in_thread(_produce, (gen_fn, args, stream))
    except BaseException as exc:
        settle_unsubmitted(task, exc)
        raise
    return _Iterator(stream, task)
