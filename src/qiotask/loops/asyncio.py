"""The asyncio adapter, and the embedded context that qiotask runs itself.

Any asyncio event loop can be a task's main context: ``qiotask.attach(loop)``,
or simply create the task inside a coroutine (or callback) running on that
loop.  Completions reach the loop through ``call_soon_threadsafe``, once per
batch; timers use ``call_later`` and fd watches ``add_reader``/``add_writer``.

:class:`EmbeddedContext` owns an asyncio loop of its own; the process-wide
default context is one, run by ``qiotask.MainLoop().run()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import math
import sys
import threading
import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from .._adapters import Adapter, attach_once, register
from .._checks import check_awaitable
from .._context import MainContext
from .._driver import CancelLatch, ClosedAtExit, ContextPort, LoopDriver, TimerHandle
from .._errors import ContextClosedError, TaskCancelled, TaskStateError

__all__ = ["AsyncioContext", "AsyncioDriver", "EmbeddedContext", "resolve_soon"]

# The attribute under which a loop keeps its context, so that attach() and
# get_context() find it with one getattr instead of a weak mapping lookup.
_ATTR = "_qiotask_context"
_fallback: dict[int, AsyncioContext] = {}  # loops that refuse attributes
_attach_lock = threading.Lock()
logger = logging.getLogger("qiotask")
#: How often (seconds) a worker in ``from_thread.run()`` looks whether the
#: loop closed under its running coroutine: the longest it then waits.
_CLOSED_CHECK = 0.5


class AsyncioDriver(LoopDriver):
    """The loop side of an asyncio context (see ``qiotask._driver``)."""

    def __init__(self, port: ContextPort, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(port)
        self.loop = loop
        # post() asks the probe on every item queued behind a wake-up.
        # asyncio's own loops answer from their _closed attribute: read it
        # through a C partial rather than call the Python method.
        if type(loop).is_closed is asyncio.BaseEventLoop.is_closed and hasattr(loop, "_closed"):
            self.probe = functools.partial(getattr, loop, "_closed")
        else:
            self.probe = loop.is_closed

    def wake(self) -> None:
        wake = _Wake()
        wake.port = self.port
        try:
            if _get_running_loop() is self.loop:
                # On the thread running the loop (a batch's end): no
                # self-pipe write needed.
                self.loop.call_soon(wake)
            else:
                self.loop.call_soon_threadsafe(wake)
        except RuntimeError as exc:
            if self.loop.is_closed():
                raise ContextClosedError(f"{self.port.name}: the event loop is closed") from exc
            raise

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        return self.loop.call_later(delay, fn)

    def nests(self) -> bool:
        # An asyncio loop refuses to run inside its own callback, unless
        # nest_asyncio patched it (it marks the loop so).
        return getattr(self.loop, "_nest_patched", False)

    def set_fd_interest(self, fd: int, read: bool, write: bool, old: tuple[bool, bool] | None) -> None:
        # Only the side that changed; old None (a change failed): both.
        old_read, old_write = (not read, not write) if old is None else old
        loop = self.loop
        # The callback holds the context (port.keepsake()) while the fd is
        # watched: a closed context stops watching the fd the next time it
        # is ready (MainContext._fd_ready); freed before that, it could
        # not, and the loop would call a no-op for ever on a ready fd.
        port = self.port
        if read != old_read:
            if read:
                loop.add_reader(fd, _fd_ready, port, fd, port.keepsake())
            else:
                loop.remove_reader(fd)
        if write != old_write:
            if write:
                loop.add_writer(fd, _fd_ready, port, fd, port.keepsake())
            else:
                loop.remove_writer(fd)

    def run_coroutine(
        self,
        async_fn: Callable[..., Any],
        args: tuple[Any, ...],
        context: contextvars.Context,
        on_cancel: Callable[[Callable[[], None]], None],
    ) -> Any:
        # As asyncio.run_coroutine_threadsafe, but the coroutine is made and
        # its task created in the worker's context (create_task copies the
        # current one), so that it sees the worker's contextvars; and a
        # cancel of the worker's task cancels it.
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        loop = self.loop
        latch = CancelLatch()

        def start() -> None:  # on the loop's thread, from the context's queue
            if not done.set_running_or_notify_cancel():
                return  # the worker's post failed: it waits no more
            if latch.asked:
                done.set_exception(TaskCancelled(f"from_thread.run(): cancelled before {async_fn!r} started"))
                return
            try:
                task = context.run(_create_task, loop, async_fn, args)
            except BaseException as exc:
                done.set_exception(exc)
                return
            latch.attach(task)

            def finished(task: asyncio.Task[Any]) -> None:
                if task.cancelled():
                    reason = "the worker's task was cancelled" if latch.asked else f"{async_fn!r} was cancelled"
                    done.set_exception(TaskCancelled(f"from_thread.run(): {reason}"))
                elif task.exception() is not None:
                    done.set_exception(task.exception())
                else:
                    done.set_result(task.result())

            task.add_done_callback(finished)

        def stop() -> None:  # any thread: the worker's task was cancelled
            try:
                loop.call_soon_threadsafe(latch.cancel)
            except RuntimeError:  # the loop is closed: nothing will run the coroutine
                if not done.done():
                    done.set_exception(ContextClosedError(f"from_thread.run(): {self.port.name}: the loop is closed"))

        # Through the context's queue, as run_sync's request goes: if the
        # loop is gone, or goes before it ran the request, the queue fails
        # it (_Start._context_closed) and the wait below ends.
        try:
            self.port.post(_Start(start, done, async_fn))
        except BaseException:
            done.cancel()  # if still queued, it never starts: nobody waits for it
            raise
        on_cancel(stop)
        # Once started, the coroutine is the loop's; asyncio.run() cancels
        # it on its way out, but a loop closed with it pending (run_until_
        # complete() of something else, then close()) says nothing, and no
        # callback of a closed loop runs again.  So look now and then.
        while True:
            try:
                return done.result(_CLOSED_CHECK)
            except concurrent.futures.TimeoutError:  # (not the builtin one on Python 3.10)
                if done.done():  # the coroutine's own TimeoutError, or it just finished
                    return done.result()
                if loop.is_closed() and not done.done():
                    raise ContextClosedError(
                        f"from_thread.run(): {self.port.name}: the event loop closed before {async_fn!r} finished"
                    ) from None

    def run(self) -> None:
        if self.loop.is_closed():
            raise ContextClosedError(f"{self.port.name}: the event loop is closed")
        if self.loop.is_running():
            raise TaskStateError(f"{self.port.name}: the event loop is already running")
        self.loop.run_forever()

    def stop(self) -> None:
        self.loop.stop()


def _create_task(loop: asyncio.AbstractEventLoop, async_fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``from_thread.run()``'s coroutine, as a task of ``loop`` (in the
    context this is called in, which the task copies)."""
    coro = async_fn(*args)
    check_awaitable(coro, async_fn, "from_thread.run")
    return loop.create_task(coro) if asyncio.iscoroutine(coro) else asyncio.ensure_future(coro, loop=loop)


def _fd_ready(port: ContextPort, fd: int, _keepsake: object) -> None:
    port.fd_ready(fd)


class _Wake:
    """What a wake-up hands to the loop: called, it runs the context's batch.

    asyncio has no word for "the loop closed": ``close()`` drops the
    callbacks it still holds, and whatever waits in the context's queue for
    this one would wait for ever (a worker in ``from_thread.run_sync()``
    or ``run()``, a completion).  Dropped unrun, this callback says it for
    them: its ``__del__`` runs where the last reference goes -- in
    ``close()``, in the thread closing the loop -- and reports the loop gone
    (``port.loop_gone()``), which fails what the queue holds there, as any
    close does.  Called, it lets go of the port first.  (A loop freed
    unclosed by the cyclic GC has its context freed with it: the port then
    does nothing.)  Made with no ``__init__``: one per batch, on the hot path.
    """

    __slots__ = ("port",)
    port: ContextPort | None

    def __call__(self) -> None:
        port, self.port = self.port, None  # run: nothing to report when dropped
        if port is not None:
            port.dispatch()

    def __del__(self) -> None:
        if self.port is not None:
            try:
                self.port.loop_gone()
            except BaseException:  # from a destroy notifier: nowhere to raise it in a __del__
                logger.exception("exception while failing what waited for a closed asyncio loop")


class _Start:
    """``from_thread.run()``'s request in the context's queue: started on
    the loop, or failed with the context (``done`` then holds
    ``ContextClosedError``).  ``done`` is ``concurrent.futures``': its
    ``set_running_or_notify_cancel()`` decides start-or-refuse against the
    worker's own ``cancel()``, under the future's lock."""

    __slots__ = ("async_fn", "done", "start")

    def __init__(
        self, start: Callable[[], None], done: concurrent.futures.Future[Any], async_fn: Callable[..., Any]
    ) -> None:
        self.start = start
        self.done = done
        self.async_fn = async_fn

    def _dispatch(self) -> None:
        self.start()

    def _context_closed(self, context: MainContext) -> None:
        if self.done.set_running_or_notify_cancel():
            what = f"from_thread.run(): context {context.name!r} is gone; {self.async_fn!r} never started"
            self.done.set_exception(ContextClosedError(what))


class EmbeddedDriver(AsyncioDriver):
    """An embedded context's loop is qiotask's own: closing the context
    closes it."""

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.close()  # RuntimeError if it runs: quit it first
        self.port.loop_gone()


class AsyncioContext(MainContext):
    """The context of an asyncio event loop.

    Its thread is the thread running the loop; before the loop runs, the
    thread that attached it.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        name: str | None = None,
        thread: threading.Thread | None = None,
        _driver: type[AsyncioDriver] = AsyncioDriver,
    ) -> None:
        super().__init__(name=name or f"asyncio loop {id(loop):#x}", driver=lambda port: _driver(port, loop))
        #: The asyncio event loop.
        self.loop = loop
        if thread is not None:
            self._set_owner(thread)
        elif loop.is_running() and _get_running_loop() is not loop:
            # Attached from another thread while it runs elsewhere: this
            # thread is not its thread.  asyncio's own loops say which one
            # is; for others, no thread is until the first dispatch says (so
            # every completion is posted to the loop, none runs here).
            ident = getattr(loop, "_thread_id", None)
            running = next((t for t in threading.enumerate() if t.ident == ident), None) if ident else None
            if running is not None:
                self._set_owner(running)
            else:
                self._owner = (None, self._owner[1])


class EmbeddedContext(AsyncioContext):
    """A context with an asyncio loop of its own, run by ``qiotask.MainLoop``.

    ``qiotask.MainContext()`` makes one; ``MainContext(uvloop=True)`` makes
    it on a uvloop loop (``pip install 'qiotask[uvloop]'``).  Call :meth:`close` when done with
    it; tasks whose completion had not run then finish with
    ``ContextClosedError``.
    """

    _run_by_main_loop = True

    def __init__(
        self, *, name: str | None = None, thread: threading.Thread | None = None, uvloop: bool = False
    ) -> None:
        if uvloop:
            try:
                import uvloop as _uvloop
            except ImportError as exc:
                raise ImportError("MainContext(uvloop=True) needs uvloop: pip install 'qiotask[uvloop]'") from exc
            loop: asyncio.AbstractEventLoop = _uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        super().__init__(
            loop, name=name or ("embedded uvloop" if uvloop else "embedded"), thread=thread, _driver=EmbeddedDriver
        )
        _remember(loop, self)
        _embedded.add(self)

    def close(self) -> None:
        """Close the loop; queued completions fail with ``ContextClosedError``.

        Raises:
            RuntimeError: the loop is running (quit it first).
        """
        super().close()


# Embedded loops are qiotask's own: those not running at exit are closed.
_embedded = ClosedAtExit(lambda ctx: ctx.loop.is_running())


def _remember(loop: asyncio.AbstractEventLoop, ctx: AsyncioContext) -> None:
    try:
        setattr(loop, _ATTR, ctx)
    except AttributeError:
        _fallback[id(loop)] = ctx


def _attach_loop(loop: Any) -> MainContext:
    # A context closed by close() is over: the loop gets a new one (as Qt,
    # GLib and trio contexts do), unless the loop itself is closed.

    def find() -> AsyncioContext | None:
        ctx = _known(loop)
        return None if ctx is None or _replaceable(ctx) else ctx

    def make() -> AsyncioContext:
        ctx = AsyncioContext(loop)
        _remember(loop, ctx)
        return ctx

    return attach_once(_attach_lock, find, make)


def _known(loop: Any) -> AsyncioContext | None:
    """The context last attached to ``loop``, if any."""
    ctx = getattr(loop, _ATTR, None)
    if ctx is None:
        ctx = _fallback.get(id(loop))
        if ctx is not None and ctx.loop is not loop:
            return None  # a loop that reused the id of a dead one
    return ctx


_get_running_loop = asyncio._get_running_loop


def _replaceable(ctx: AsyncioContext) -> bool:
    """A closed context whose loop lives on (close() of an attached one)."""
    return ctx._dispatcher.closed and not ctx.loop.is_closed()


def _detect() -> MainContext | None:
    loop = _get_running_loop()
    if loop is None:
        return None
    ctx = getattr(loop, _ATTR, None)
    if ctx is not None and not ctx._dispatcher.closed:
        return ctx  # type: ignore[no-any-return]
    return _attach_loop(loop)


# -- awaiting a task -------------------------------------------------------------


def _await_task(task: Any) -> Generator[Any, None, Any]:
    """What ``await task`` runs under asyncio: a future of the running loop,
    resolved by the task's delivery after ``func`` and the done-callbacks
    before it.  The future itself rides on the task's callback list (as
    ``(resolve_soon, future)``), with no wrapper function per await."""
    if not task.done():
        future = _get_running_loop().create_future()  # type: ignore[union-attr]
        if task._move_add_callback((resolve_soon, future)):
            yield from future
    return task._outcome()


def _cancel_point() -> Awaitable[None] | None:
    """``run_sync``'s first step: a cancel asked of the current asyncio task
    before this call is delivered now, before anything is submitted (as
    trio's and anyio's ``run_sync`` check first).  asyncio throws it into
    the coroutine at its next suspension (``Task._must_cancel``, set by
    ``cancel()`` while the task runs), so suspend once, only then."""
    current = asyncio.current_task()
    if current is None:
        return None
    if getattr(current, "_must_cancel", False):
        return asyncio.sleep(0)
    # anyio on asyncio cancels a scope's task only at its next checkpoint
    # (its own run_sync starts with one): ask anyio, if it runs here at all
    # (its asyncio backend is imported when it first runs on asyncio).
    anyio_backend = sys.modules.get("anyio._backends._asyncio")
    if anyio_backend is not None:
        deadline = anyio_backend.AsyncIOBackend.current_effective_deadline()
        if deadline != math.inf and deadline <= current.get_loop().time():
            return asyncio.sleep(0)  # cancelled, or its deadline passed: anyio's checkpoint delivers it
    return None


@types.coroutine
def _wait_worker(task: Any, abandon: bool) -> Generator[Any, None, Any]:
    """``run_sync``'s wait under asyncio (see ``_adapters.Adapter``)."""
    loop = _get_running_loop()
    assert loop is not None
    future = loop.create_future()
    if task._move_add_callback((resolve_soon, future)):
        try:
            yield from future
        except asyncio.CancelledError:
            task.cancel()  # refused start if queued; told (hooks) if running
            if not abandon:
                # Wait for the worker, through further cancels: asyncio has
                # no shielded scope, so each one is caught and waited past.
                while True:
                    future = loop.create_future()
                    if not task._move_add_callback((resolve_soon, future)):
                        break
                    try:
                        yield from future
                        break
                    except asyncio.CancelledError:
                        continue
            raise
    return task._outcome()


def resolve_soon(future: asyncio.Future[Any]) -> None:
    """Wake an awaiting coroutine: at once on its own loop's thread, else
    through ``call_soon_threadsafe``."""
    loop = future.get_loop()
    if _get_running_loop() is loop:
        if not future.done():  # (cancelled: the await is over)
            future.set_result(None)
    else:
        try:
            loop.call_soon_threadsafe(_resolve, future)
        except RuntimeError:
            pass  # the awaiting loop is closed: nobody is left to wake


def _resolve(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


# -- async with TaskGroup ----------------------------------------------------------


async def _wait_group(group: Any, shielded: bool) -> BaseException | None:
    """``async with TaskGroup``'s wait under asyncio (see ``_adapters.Adapter``).
    asyncio has no cancel scopes: a cancellation is one exception, so a
    shielded wait is an ordinary one."""
    loop = asyncio.get_running_loop()
    cancelled: BaseException | None = None
    while True:
        future: asyncio.Future[None] = loop.create_future()
        wake = functools.partial(resolve_soon, future)
        if not group._add_waiter(wake):
            return cancelled
        try:
            await future
            return cancelled
        except asyncio.CancelledError as exc:
            # Cancelled from outside: the tasks follow, and are waited for.
            group._remove_waiter(wake)
            if cancelled is None:
                cancelled = exc
            group.cancel()


def _is_cancellation(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError)


register(
    "asyncio",
    Adapter(
        accepts=lambda obj: isinstance(obj, asyncio.AbstractEventLoop),
        attach=_attach_loop,
        detect=_detect,
        running=_get_running_loop,
        await_task=_await_task,
        wait_group=_wait_group,
        is_cancellation=_is_cancellation,
        cancel_point=_cancel_point,
        wait_worker=_wait_worker,
        to_thread_abandons=True,
    ),
)
