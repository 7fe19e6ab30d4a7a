"""Main contexts: the event loops that tasks deliver their completions on.

A :class:`MainContext` is what a task belongs to.  It has one *thread* (the
thread running its loop; before the loop runs, the thread that made or
attached it) and offers, from any thread:

- ``post(item)``: run ``item._dispatch()`` on the context thread soon, through
  the context's queue (``_dispatch.Dispatcher``: one wake-up per batch, and
  the one record of whether the context is closed).
- ``timeout_add``, ``idle_add`` and ``io_add_watch``: GLib's three kinds of
  source, with GLib's rule that a source repeats while its function returns
  True.

A context holds the driver of its loop (``_driver.LoopDriver``, one per loop
adapter in ``qiotask.loops.*``): wake the loop, call later, watch an fd,
run, stop, let go.  The driver reaches the context only through the
``_driver.ContextPort`` it is made with; everything else is shared here.  A
driver that learns its loop is gone says so with one call,
``port.loop_gone()`` -- or, where that must happen under a lock of the
driver's own (Qt, GLib, Tk, trio), with its two halves, ``port.shut()``
under that lock and ``port.fail()`` after -- and asks ``port.closed``
afterwards; it keeps no flag of its own.

The context's thread is one record, ``_owner`` = ``(ident, thread)``,
replaced whole (by an attach, or by ``MainLoop.run()`` on another thread),
so a reader never pairs the ident of one thread with another thread.

Guarantees / assumes: sources (timeouts, idles, fd watches) live on the
context thread; the one move another thread makes is ``Source.remove()``,
which sets the source's "removed" flag under the context's lock, and the
context thread decides each call under that lock (``Source._live``), so a
removal that returned is never followed by a new call.  The context thread
itself also sets the flag without the lock (its own ``remove()``, a function
returning False): a flag that only goes from False to True, whose stale
read costs at most one redundant detach.  ``is_owner()`` reads ``_owner``
without a lock: one attribute load of a tuple that is replaced whole, which
is atomic with the GIL and on the free-threaded build alike.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import select
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from . import _adapters, _fork
from ._checks import LONGEST_WAIT, check_callable, check_duration, check_fd
from ._dispatch import Dispatchable, Dispatcher
from ._driver import ContextPort, LoopDriver, TimerHandle
from ._errors import TaskStateError

__all__ = [
    "IO_ERR",
    "IO_HUP",
    "IO_IN",
    "IO_OUT",
    "IOCondition",
    "MainContext",
    "MainLoop",
    "Source",
    "attach",
    "default_context",
    "get_context",
]

logger = logging.getLogger("qiotask")


class IOCondition(enum.IntFlag):
    """What an fd watch waits for; the values are GLib's, which are poll(2)'s
    on Linux (spelled out so that the module imports where poll() is missing)."""

    IN = 1
    OUT = 4
    ERR = 8
    HUP = 16


IO_IN = IOCondition.IN
IO_OUT = IOCondition.OUT
IO_ERR = IOCondition.ERR
IO_HUP = IOCondition.HUP
_IO_ALWAYS = IOCondition.ERR | IOCondition.HUP
_POLLNVAL = 32  # poll(2)'s "fd not open", reported as IO_ERR

#: The longest single timer a source asks its loop for (see _checks).
_TIMER_STEP = LONGEST_WAIT

#: How often a watch for only IO_ERR/IO_HUP looks at an fd that has unread
#: data: event loops wake on "readable" but not on "hung up" alone, so while
#: data sits unread such a watch polls, 100 times a second at most.
HANGUP_POLL_INTERVAL = 0.01
_IO_READ_SIDE = IOCondition.IN | IOCondition.ERR | IOCondition.HUP

# The fd-watch path works on plain ints: an IntFlag operation costs about
# 0.5 us (enum.__call__ for every | and &), a dozen of them per event.
_IN_BITS = int(IO_IN)
_OUT_BITS = int(IO_OUT)
_ERR_BITS = int(IO_ERR)
_ALL_BITS = int(IO_IN | IO_OUT | IO_ERR | IO_HUP)
_ALWAYS_BITS = int(_IO_ALWAYS)
_READ_SIDE_BITS = int(_IO_READ_SIDE)
#: The IOCondition of every mix of the four bits, made once.
_CONDITIONS = tuple(IOCondition(bits) for bits in range(_ALL_BITS + 1))


class _Call:
    """A plain function call posted to a context."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...] = ()) -> None:
        self.fn = fn
        self.args = args

    def _dispatch(self) -> None:
        self.fn(*self.args)

    def _context_closed(self, context: MainContext) -> None:
        # A plain call has nobody waiting for it: like a GLib source of a
        # destroyed context, it is dropped.
        pass


class _CallOnce(_Call):
    """A call that must run exactly once, as a cleanup does: on the context
    thread, or -- if the loop goes away first -- in the thread that finds
    it gone, as ``on_closed(*closed_args)`` (by default the call itself)."""

    __slots__ = ("closed_args", "on_closed")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        on_closed: Callable[..., Any] | None = None,
        closed_args: tuple[Any, ...] = (),
    ) -> None:
        super().__init__(fn, args)
        self.on_closed = on_closed
        self.closed_args = closed_args

    def _context_closed(self, context: MainContext) -> None:
        if self.on_closed is None:
            self.fn(*self.args)
        else:
            self.on_closed(*self.closed_args)


class MainContext:
    """The event loop a task delivers its completion on.

    ``MainContext()`` makes a new embedded context (an asyncio event loop of
    its own) that a :class:`MainLoop` can run on any thread, as
    ``GLib.MainContext()`` does.  Contexts for existing loops come from
    :func:`attach`.
    """

    #: ``post(item)``, from any thread: run ``item._dispatch()`` on the
    #: context thread.  If the context is closed, ``item._context_closed(ctx)``
    #: runs instead, in the calling thread; so does that of every item still
    #: queued when it closes.  (The dispatcher's method, bound in __init__:
    #: every completion goes through it.)
    post: Callable[[Dispatchable], None]
    #: Whether :class:`MainLoop` is what runs this kind of context (an
    #: embedded one); the others are run by their toolkit.
    _run_by_main_loop = False
    #: ``_dispatch()``, on the context thread: run the batch queued now (the
    #: thread running it becomes the context's thread).  Adapters call it
    #: from their loop's callback.  (The dispatcher's method, bound.)
    _dispatch: Callable[[], None]

    def __new__(cls, *args: Any, **kwargs: Any) -> MainContext:
        if cls is MainContext:
            from .loops.asyncio import EmbeddedContext

            return super().__new__(EmbeddedContext)
        return super().__new__(cls)

    def __init__(
        self,
        *,
        name: str | None = None,
        uvloop: bool = False,
        driver: Callable[[ContextPort], LoopDriver] | None = None,
    ) -> None:
        # uvloop=True is for MainContext() itself, which makes an embedded
        # context (see loops/asyncio.py); other kinds have no use for it.
        # ``driver(port)`` makes the loop side (see _driver), given the port
        # through which it reaches this context.
        self.name = name or type(self).__name__
        thread = threading.current_thread()
        # The thread that runs callbacks, as (ident, thread); adapters move it
        # to the thread that runs the loop.
        self._owner: tuple[int | None, threading.Thread] = (thread.ident, thread)
        self._dispatcher = Dispatcher(self)
        self.post = self._dispatcher.post
        self._dispatch = self._dispatcher.dispatch
        # fd -> watches; touched on the context thread only.
        self._io: dict[int, list[Source]] = {}
        # fd -> (read, write): what the loop was last told to watch for; None
        # if telling it failed (the loop's state is unknown: tell both sides).
        self._io_mask: dict[int, tuple[bool, bool] | None] = {}
        self.exception_handler: Callable[[str, BaseException], None] | None = None
        self._driver: LoopDriver = driver(ContextPort(self)) if driver is not None else LoopDriver(ContextPort(self))
        self._confirm_owner = self._driver.confirm_owner
        self._dispatcher.probe = self._driver.probe
        # Whether MainLoop.run() ever ran it: a closed context that never
        # ran says so, with how to run it (_closed_hint).
        self._ran = False
        with _contexts_lock:
            _all_contexts.add(self)

    # -- the loop, through the driver (see _driver) ----------------------------

    def _wakeup(self) -> None:
        """From any thread: make the loop call ``self._dispatch()`` soon.

        Raises:
            ContextClosedError: the loop is gone.
        """
        self._driver.wake()

    def _call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        """On the context thread: call ``fn()`` after ``delay`` seconds."""
        return self._driver.call_later(delay, fn)

    def _loop_nests(self) -> bool:
        """Whether a callback may run a nested loop of this context."""
        return self._driver.nests()

    def _set_fd_interest(self, fd: int, read: bool, write: bool, old: tuple[bool, bool] | None) -> None:
        self._driver.set_fd_interest(fd, read, write, old)

    def _run_coroutine(
        self, async_fn: Callable[..., Any], args: tuple[Any, ...], context: Any, on_cancel: Callable[..., None]
    ) -> Any:
        """From a worker thread: ``async_fn(*args)`` on the loop (see
        ``LoopDriver.run_coroutine``)."""
        return self._driver.run_coroutine(async_fn, args, context, on_cancel)

    def _run_loop(self) -> None:
        """Run the loop on this thread until ``_stop_loop()``."""
        self._ran = True
        self._driver.run()

    def _stop_loop(self) -> None:
        """On the context thread: make ``_run_loop()`` return."""
        self._driver.stop()

    # -- threads --------------------------------------------------------------

    @property
    def thread(self) -> threading.Thread:
        """The thread that runs this context's callbacks."""
        return self._owner[1]

    def is_owner(self) -> bool:
        """Whether the calling thread is this context's thread."""
        if threading.get_ident() != self._owner[0]:
            return False
        confirm = self._confirm_owner
        return confirm is None or confirm()

    def _runs_on(self, thread: threading.Thread) -> bool:
        """Whether ``thread`` is known to be this context's thread (False
        while no thread is known: a loop attached as it runs elsewhere)."""
        return self._owner[0] == thread.ident

    def _set_owner(self, thread: threading.Thread) -> None:
        self._owner = (thread.ident, thread)

    @property
    def closed(self) -> bool:
        """Whether the loop is gone: nothing posted here will run."""
        dispatcher = self._dispatcher
        if dispatcher.closed:
            return True
        probe = dispatcher.probe
        if probe is not None and probe():
            # The loop went away without telling us (asyncio has no hook).
            dispatcher.close()
            return True
        return False

    # -- the batching dispatcher ----------------------------------------------

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """From any thread: call ``fn(*args)`` once on the context thread.

        Dropped if the loop is gone.  An exception from ``fn`` goes to the
        context's exception handler.
        """
        self._dispatcher.post(_Call(fn, args))

    def _call_soon_once(self, fn: Callable[..., Any], *args: Any) -> None:
        """From any thread: ``fn(*args)`` once, for a cleanup that must run
        -- on the context thread, or, if the loop is gone (or goes before the
        call ran), in the thread that finds it gone."""
        self._dispatcher.post(_CallOnce(fn, args))

    def _call_here_or_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """:meth:`_call_soon_once`, but at once when called on the context
        thread."""
        if self.is_owner():
            fn(*args)
        else:
            self._call_soon_once(fn, *args)

    def close(self) -> None:
        """Close the context for good: nothing posted to it runs any more.

        Completions still queued fail with ``ContextClosedError`` here, in
        the calling thread (their destroy notifiers run, a warning names each
        task); so do completions posted later, in their posting thread.
        Adapters also release what they hold of their loop.
        """
        self._driver.close()

    def _adopt(self, refs: tuple[Any, ...]) -> None:
        """Take the last references of a task completed off this context's
        thread after the loop went away (see ``LoopDriver.adopt``)."""
        self._driver.adopt(refs)

    def _closed_hint(self) -> str:
        """For the messages of a completion that failed because this
        context closed: how to run its loop, if it is one that
        :class:`MainLoop` runs and never did; else ""."""
        if not self._run_by_main_loop or self._ran:
            return ""
        if self is _default:
            how = (
                "call qiotask.MainLoop().run() on the main thread once the work is started, or make the tasks "
                "inside asyncio.run() (in a coroutine or a callback of its loop), where they belong to that loop"
            )
        else:
            how = f"call qiotask.MainLoop(context).run() with this context ({self.name!r})"
        return f"; its loop was never run: {how}"

    def settle(self) -> None:
        """Fail what is queued if the loop is gone; used by ``qiotask.shutdown``."""
        self.closed  # noqa: B018  (asks the loop, and closes if it is gone)

    def __del__(self) -> None:
        # A context collected with completions still queued (its loop died
        # without a word): fail them, so that their destroy notifiers run.
        dispatcher = getattr(self, "_dispatcher", None)
        if dispatcher is not None and len(dispatcher):
            try:
                dispatcher.close(self)
            except Exception:
                pass

    # -- errors ---------------------------------------------------------------

    def report_exception(self, message: str, exc: BaseException) -> None:
        """Hand an exception from a user callback to the exception handler.

        The default handler logs it on the ``qiotask`` logger at ERROR level
        with its traceback.  A handler set in ``exception_handler`` is called
        as ``handler(message, exc)``; if it raises, both are logged.
        """
        handler = self.exception_handler
        if handler is not None:
            try:
                handler(message, exc)
                return
            except Exception as handler_exc:
                logger.error("exception handler of %s raised", self.name, exc_info=handler_exc)
        logger.error("%s", message, exc_info=exc)

    # -- thread-default contexts ------------------------------------------

    def push_thread_default(self) -> None:
        """Make this the context that :func:`get_context` returns on the
        calling thread, until :meth:`pop_thread_default` (they nest)."""
        _local.stack = (*_local.stack, self)

    def pop_thread_default(self) -> None:
        """Undo the last :meth:`push_thread_default` of this context.

        Raises:
            TaskStateError: this context is not the calling thread's default.
        """
        stack = _local.stack
        if not stack or stack[-1] is not self:
            raise TaskStateError(f"{self.name} is not the thread-default context of this thread")
        _local.stack = stack[:-1]

    # -- GLib-style sources ---------------------------------------------------

    def timeout_add(self, ms: float, fn: Callable[..., Any], *args: Any) -> Source:
        """Call ``fn(*args)`` on the context thread after ``ms`` milliseconds,
        and again every ``ms`` while it returns True.  Any thread may call it.

        Raises:
            TypeError: ``fn`` is not callable or ``ms`` is not a number.
            ValueError: ``ms`` is negative or NaN.

        An ``ms`` of ``math.inf`` (or beyond ``threading.TIMEOUT_MAX``
        seconds) never fires.
        """
        check_callable(fn, "timeout_add")
        ms = check_duration(ms, "timeout_add", "ms", unit="milliseconds")
        source = Source(self, "timeout", fn, args)
        source._interval = ms / 1000.0
        self._attach_source(source)
        return source

    def idle_add(self, fn: Callable[..., Any], *args: Any) -> Source:
        """Call ``fn(*args)`` on the context thread at its next iteration,
        and once per iteration while it returns True.  Any thread may call it.

        Raises:
            TypeError: ``fn`` is not callable.
        """
        check_callable(fn, "idle_add")
        source = Source(self, "idle", fn, args)
        self._attach_source(source)
        return source

    def io_add_watch(self, fd: Any, condition: IOCondition | int, fn: Callable[..., Any], *args: Any) -> Source:
        """Call ``fn(fd, condition, *args)`` on the context thread when ``fd``
        is ready, for as long as it returns True.  Any thread may call it.

        ``fd`` is an int or an object with ``fileno()``; ``condition`` says
        what to wait for (``IO_IN``, ``IO_OUT``, ...).  The condition passed
        to ``fn`` is what is ready now; ``IO_ERR`` and ``IO_HUP`` are always
        reported, as poll(2) does, so a watch learns that its peer went away.
        Several watches on one fd are allowed.

        Raises:
            TypeError: ``fn`` is not callable, ``fd`` is not a file descriptor
                or ``condition`` is not an ``IOCondition``/int.
            ValueError: ``fd`` is negative or ``condition`` is empty or has
                unknown bits.
            OSError: ``fd`` is not open; or, on the context thread, the loop
                refused the fd (asyncio: a regular file); nothing is left
                registered.
        """
        check_callable(fn, "io_add_watch")
        fd = check_fd(fd, "io_add_watch")
        if os.name == "posix":
            # Every loop would take an fd that is not open, and then watch it
            # in vain (GLib, Qt) or spin (Tk's notifier): refuse it here, as
            # asyncio's selector does, with the number said.
            try:
                os.fstat(fd)
            except OSError as exc:
                raise OSError(exc.errno, f"io_add_watch: fd {fd} is not open ({exc.strerror})") from None
        if not isinstance(condition, int) or isinstance(condition, bool):
            raise TypeError(f"io_add_watch: condition must be an IOCondition, not {type(condition).__name__}")
        bits = int(condition)
        if bits == 0 or bits & ~_ALL_BITS:
            raise ValueError(
                f"io_add_watch: condition {condition!r} must be a non-empty mix of IO_IN, IO_OUT, IO_ERR, IO_HUP"
            )
        source = Source(self, "io", fn, (fd, *args))
        source._fd = fd
        source._condition = bits
        self._attach_source(source)
        return source

    def _attach_source(self, source: Source) -> None:
        # On a closed context a source is over before it began: returned
        # removed (as call_soon's call is dropped), never an error from the
        # dead loop.  Posted from another thread, _attach runs even if the
        # context closes first, and finds it closed.
        if self.is_owner() or self.closed:
            source._attach()
        else:
            self.post(_CallOnce(source._attach))

    # fd multiplexing: loops allow one reader and one writer per fd, so the
    # context keeps every watch of an fd and registers the union.

    def _io_add(self, source: Source) -> None:
        fd = source._fd
        watches = self._io.setdefault(fd, [])
        watches.append(source)
        try:
            self._io_refresh(fd)
        except BaseException:
            # The loop refused the fd (asyncio: a regular file, a closed fd):
            # leave nothing behind for a later fd of that number to trip on.
            watches.remove(source)
            if not watches:
                del self._io[fd]
            source._removed = True
            raise

    def _io_remove(self, source: Source) -> None:
        fd = source._fd
        watches = self._io.get(fd)
        if watches is None or source not in watches:
            return
        watches.remove(source)
        if not watches:
            del self._io[fd]
        self._io_refresh(fd)

    def _io_refresh(self, fd: int) -> None:
        mask = 0
        for watch in self._io.get(fd, ()):
            mask |= watch._condition
        read = bool(mask & _READ_SIDE_BITS)
        write = bool(mask & _OUT_BITS)
        old = self._io_mask.get(fd, (False, False))
        if old != (read, write):
            try:
                self._set_fd_interest(fd, read, write, old)
            except BaseException:
                self._io_mask[fd] = None  # what the loop holds is unknown now
                raise
            if read or write:
                self._io_mask[fd] = (read, write)
            else:
                self._io_mask.pop(fd, None)

    def _fd_ready(self, fd: int) -> None:
        """Adapter callback, context thread: ``fd`` is ready for something."""
        watches = self._io.get(fd)
        if not watches:
            return
        if self._dispatcher.closed:
            # A closed context runs no source (its loop may live on: an
            # attached asyncio loop); stop watching the fd, here on the
            # loop's thread, so that the loop does not spin on it.
            for watch in self._io.pop(fd):
                watch._removed = True
            self._io_refresh(fd)
            return
        mask = 0
        for watch in watches:
            mask |= watch._condition
        raw = _poll_now(fd, mask | _IN_BITS)
        revents = raw & _ALL_BITS
        if raw & _POLLNVAL:
            revents |= _ERR_BITS
        if not revents & (mask | _ALWAYS_BITS):
            if revents & _IN_BITS and not mask & _IN_BITS:
                # Readable, but every watch wants only IO_ERR/IO_HUP: the loop
                # would call us again at once, forever.  Stop reading for a
                # moment (loops cannot wait for "hang-up only" the way poll()
                # can) and look again then.
                self._pause_reader(fd)
            return
        for watch in list(watches):
            fired = revents & (watch._condition | _ALWAYS_BITS)
            if fired and watch._live():
                watch._fire_io(_CONDITIONS[fired])

    def _drop_fd_watches(self) -> None:
        """Remove every fd watch at once (see ``ContextPort.drop_fd_watches``)."""
        for watches in list(self._io.values()):
            for watch in list(watches):
                watch.remove()

    def _pause_reader(self, fd: int) -> None:
        old = self._io_mask.get(fd)
        if not old or not old[0]:
            return
        self._set_fd_interest(fd, False, old[1], old)
        self._io_mask[fd] = (False, old[1])
        self._call_later(HANGUP_POLL_INTERVAL, lambda: self._io_refresh(fd))

    def __repr__(self) -> str:
        state = "closed" if self._dispatcher.closed else "open"
        return f"<{type(self).__name__} {self.name!r} thread={self._owner[1].name!r} {state}>"


def _poll_now(fd: int, mask: int) -> int:
    """What is ready on ``fd`` now, as poll(2) revents, without waiting."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, mask)
        events = poller.poll(0)
        return events[0][1] if events else 0
    # No poll() (Windows): select() tells readable/writable/exceptional.
    want_read = fd if mask & (IO_IN | IO_HUP | IO_ERR) else None
    want_write = fd if mask & IO_OUT else None
    try:
        r, w, x = select.select(
            [want_read] if want_read is not None else [], [want_write] if want_write is not None else [], [fd], 0
        )
    except (OSError, ValueError):
        return int(IO_ERR)
    return (int(IO_IN) if r else 0) | (int(IO_OUT) if w else 0) | (int(IO_ERR) if x else 0)


class Source:
    """A handle on a ``timeout_add``/``idle_add``/``io_add_watch`` source.

    ``remove()`` may be called from any thread, any number of times; once it
    returns, the function is not called again (on the context thread a
    removal is immediate; from another thread, a call already running on the
    context thread finishes).
    """

    __slots__ = ("_args", "_condition", "_context", "_due", "_fd", "_fn", "_handle", "_interval", "_removed", "kind")

    def __init__(self, context: MainContext, kind: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._context = context
        self.kind = kind
        self._fn = fn
        self._args = args
        self._removed = False
        self._handle: TimerHandle | None = None
        self._interval = 0.0
        self._due = 0.0  # a long timeout's monotonic due time (see _arm_timer)
        self._fd = -1
        self._condition = 0  # the IOCondition bits of an io source, as an int

    @property
    def removed(self) -> bool:
        """Whether the source is gone (removed, or its function said stop)."""
        return self._removed

    def remove(self) -> None:
        """Stop the source; safe from any thread and more than once."""
        context = self._context
        if context.is_owner():
            if not self._removed:
                self._removed = True
                self._detach()
            return
        # From another thread: the flag is set under the context's lock,
        # which the context thread takes to decide each call (_live), so
        # once this returns no call is decided any more.
        with context._dispatcher._lock:
            if self._removed:
                return
            self._removed = True
        context.post(_Call(self._detach))

    def _live(self) -> bool:
        """On the context thread, before a call: whether the source may run
        (decided under the lock that a remove() from another thread and a
        close() take).  A closed context's sources are over."""
        dispatcher = self._context._dispatcher
        with dispatcher._lock:
            if dispatcher.closed:
                self._removed = True
            return not self._removed

    # Everything below runs on the context thread.

    def _attach(self) -> None:
        if self._removed:
            return
        if self._context.closed:
            self._removed = True
            return
        if self.kind == "timeout":
            self._arm_timer()
        elif self.kind == "idle":
            self._context.post(_Call(self._fire))
        else:
            self._context._io_add(self)

    def _detach(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        if self.kind == "io":
            self._context._io_remove(self)

    def _call(self, *args: Any) -> bool:
        try:
            return bool(self._fn(*args))
        except Exception as exc:
            self._context.report_exception(f"exception in {self.kind} source {self._fn!r}; source removed", exc)
            return False
        except BaseException:
            # KeyboardInterrupt, SystemExit: the loop stops, and the source
            # is over as for any exception (GLib's rule), not left to fire again.
            self._removed = True
            self._detach()
            raise

    def _arm_timer(self) -> None:
        interval = self._interval
        if interval == math.inf:
            return  # "no limit": never fires (see _checks)
        if interval > _TIMER_STEP:
            # Longer than some loops' timers take (Qt, GLib and Tk count
            # milliseconds in a C int): wait in steps, toward a due time.
            self._due = time.monotonic() + interval
            interval = _TIMER_STEP
        self._handle = self._context._call_later(interval, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if not self._live():
            return
        if self._interval > _TIMER_STEP:
            left = self._due - time.monotonic()
            if left > 0:
                self._handle = self._context._call_later(min(left, _TIMER_STEP), self._fire)
                return
        if self._call(*self._args) and not self._removed:
            self._attach()
        else:
            self._removed = True
            self._detach()

    def _fire_io(self, condition: IOCondition) -> None:
        fd, *rest = self._args
        if not self._call(fd, condition, *rest) and not self._removed:
            self._removed = True
            self._detach()

    def __repr__(self) -> str:
        state = "removed" if self._removed else "active"
        return f"<Source {self.kind} {self._fn!r} {state}>"


class MainLoop:
    """Runs a context's loop on the calling thread until :meth:`quit`.

    Args:
        context: the context to run; by default the process-wide default
            context.  Contexts of foreign toolkits are run by the toolkit.

    As in GLib, a ``quit()`` before ``run()`` is not remembered.
    """

    def __init__(self, context: MainContext | None = None) -> None:
        self.context = context if context is not None else default_context()
        # _lock guards _running and _generation against quit() from another
        # thread racing run()'s start and end.
        self._lock = threading.Lock()
        self._running = False
        self._generation = 0

    def run(self) -> None:
        """Run the loop on this thread; the context's callbacks run here.

        Raises:
            TaskStateError: the loop is already running.
            ContextClosedError: the context's loop is closed.
        """
        with self._lock:
            if self._running:
                raise TaskStateError("MainLoop.run(): this loop is already running")
            self._running = True
            self._generation += 1
        previous = self.context.thread
        try:
            self.context._set_owner(threading.current_thread())
            self.context._run_loop()
        finally:
            # The context goes back to its thread (the main thread, for the
            # default context) once the loop no longer runs here.
            self.context._set_owner(previous)
            with self._lock:
                self._running = False

    def quit(self) -> None:
        """Make :meth:`run` return; safe from any thread."""
        with self._lock:
            if not self._running:
                return
            generation = self._generation
        self.context.call_soon(self._quit_if, generation)

    def _quit_if(self, generation: int) -> None:
        with self._lock:
            if not self._running or self._generation != generation:
                return
        self.context._stop_loop()

    def is_running(self) -> bool:
        """Whether :meth:`run` is running now."""
        return self._running


# -- current and default contexts ---------------------------------------------


class _Local(threading.local):
    # The thread-default stack, as an immutable tuple replaced whole; the
    # class attribute is what a thread that never pushed sees.
    stack: tuple[MainContext, ...] = ()


_local = _Local()
# _contexts_lock guards adding to _all_contexts and taking snapshots of it (a
# WeakSet iterated while another thread adds raises "changed size").
_contexts_lock = threading.Lock()
_all_contexts: weakref.WeakSet[MainContext] = weakref.WeakSet()

_default: MainContext | None = None
_default_lock = threading.Lock()


def attach(obj: Any) -> MainContext:
    """Return the context for a loop object (the same one each time).

    Supported: an asyncio event loop (uvloop's included), a
    ``GLib.MainContext``, a Qt ``QCoreApplication``/``QApplication``, a
    ``tkinter.Tk`` and a trio token; a :class:`MainContext` is returned as is.

    Raises:
        TypeError: ``obj`` is not a loop of a supported kind.
    """
    if isinstance(obj, MainContext):
        return obj
    for _spec, adapter in _adapters.loaded():
        if adapter.accepts(obj):
            return adapter.attach(obj)
    # Every class of the object counts, not only its own: applications
    # subclass the toolkit's classes (class App(tkinter.Tk) in __main__).
    modules = [getattr(cls, "__module__", None) or "" for cls in type(obj).__mro__]
    for spec in _adapters.ADAPTERS:
        matches = spec.matches
        if matches is not None and any(matches(module) for module in modules):
            if _adapters.load(spec.name):
                return attach(obj)
            problem = _adapters.problem(spec.name)
            if problem is not None:
                raise ImportError(
                    f"qiotask.attach(): cannot attach to {spec.kind}: its adapter {spec.module} cannot load here: "
                    f"{problem}"
                ) from _adapters.error(spec.name)
    raise TypeError(f"qiotask.attach(): cannot attach to a {type(obj).__name__} object; supported: {supported_loops()}")


def supported_loops() -> str:
    """The loop objects :func:`attach` accepts, for error messages."""
    return ", ".join(spec.kind for spec in _adapters.ADAPTERS)


def default_context() -> MainContext:
    """The process-wide default context; its thread is the main thread."""
    global _default
    ctx = _default
    if ctx is None:
        with _default_lock:
            ctx = _default
            if ctx is None:
                from .loops.asyncio import EmbeddedContext

                ctx = EmbeddedContext(name="default", thread=threading.main_thread())
                _default = ctx
    return ctx


def get_context() -> MainContext:
    """The context a task created now on this thread belongs to.

    In order: the thread-default context (``push_thread_default``), the
    asyncio loop (or trio run) running in this thread, else the
    process-wide :func:`default_context`.

    Warns (``RuntimeWarning``) when that last choice strands the task: a
    thread with no loop of its own gets the default context while its loop
    is not running and the main thread runs another one (``asyncio.run()``,
    ``trio.run()``), so nothing would ever run the completion; pass
    ``context=`` instead (the message says how).
    """
    stack = _local.stack
    if stack:
        return stack[-1]
    ctx: MainContext | None
    for detect in _adapters.detectors:
        if (ctx := detect()) is not None:
            return ctx
    if _adapters.load_triggered():
        # A toolkit is in use and its adapter was not loaded: now it is,
        # with its detector (a trio run, a Qt loop, a GLib callback running
        # here); look again.
        return get_context()
    for detect in _adapters.fallback_detectors:
        if (ctx := detect()) is not None:
            return ctx
    ctx = default_context()
    if _get_ident() != ctx._owner[0]:
        _warn_if_stranded(ctx)
    return ctx


_get_ident = threading.get_ident


def _warn_if_stranded(default: MainContext) -> None:
    """get_context() picked the default context for a thread that is not
    its thread: warn if that context can only be stranded there -- its loop
    is not running, and the main thread, the one that would run it, runs
    another loop (``asyncio.run()`` in the main thread, a task made in a
    plain thread).  The completion would wait for ever, and at exit fail.

    Only this fallback pays for it, never a thread that runs a loop; the
    look at the main thread's frames only when the default loop is not
    running, so a task made here could only wait for a later run."""
    if default._dispatcher.closed or default._owner[1] is not threading.main_thread():
        return
    loop = getattr(default, "loop", None)
    if loop is None or loop.is_running():
        return
    running = _loop_on_main_thread()
    if running is None:
        return
    warnings.warn(
        f"qiotask: thread {threading.current_thread().name!r} runs no event loop, so a task made here belongs to "
        f"the default context, whose loop is not running, while the main thread runs {running}: the task's "
        "completion would never run.  Pass context= the loop's context (qiotask.get_context() called on the "
        "loop's thread, or the loop object itself), or hand the work to the loop's thread "
        "(asyncio.run_coroutine_threadsafe(), trio.from_thread.run(); task.call_in_main() from a qiotask worker)",
        RuntimeWarning,
        stacklevel=_caller_outside_qiotask(),
    )


#: (module, function) of the frames that show an event loop running: what
#: _loop_on_main_thread() looks for, and how it names it.
_LOOP_FRAMES: dict[tuple[str | None, str], str] = {
    ("asyncio.runners", "run"): "asyncio.run()",
    ("asyncio.base_events", "run_forever"): "an asyncio event loop",
    ("trio._core._run", "run"): "trio.run()",
}


_gil_enabled: Callable[[], bool] = getattr(sys, "_is_gil_enabled", lambda: True)


def _loop_on_main_thread() -> str | None:
    """The event loop the main thread runs now, as its frames show it
    (asyncio.run(), an asyncio loop's run_forever(), trio.run()), or None.
    For a warning only: it reads another thread's frames, which is safe
    where the GIL holds that thread still (a frame it pops meanwhile stays a
    valid object); on a free-threaded build it is not, and the answer is
    always None there."""
    if not _gil_enabled():
        return None
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    running: str | None = None
    while frame is not None:  # up to the outermost: asyncio.run() rather than the loop it runs
        running = _LOOP_FRAMES.get((frame.f_globals.get("__name__"), frame.f_code.co_name), running)
        frame = frame.f_back
    return running


def _caller_outside_qiotask() -> int:
    """The ``stacklevel`` that makes the warning of the function calling
    this point at the first caller outside qiotask."""
    level = 1
    frame = sys._getframe(2)  # the warning function's caller
    while frame is not None:
        module = frame.f_globals.get("__name__") or ""
        if module != "qiotask" and not module.startswith("qiotask."):
            break
        level += 1
        frame = frame.f_back  # type: ignore[assignment]
    return level + 1


def _fork_locks() -> Iterator[threading.Lock]:
    # Fork: no context's queue may be copied half-changed into a child.  The
    # contexts are listed once _contexts_lock is held (no context is added
    # meanwhile).
    yield _default_lock
    yield _contexts_lock
    for ctx in list(_all_contexts):
        yield ctx._dispatcher._lock


#: In a forked child: what the parent's contexts held (see below).
_forked_away: list[Any] = []


def _after_fork_in_child() -> None:
    """In a forked child: every context alive belongs to the parent, whose
    loops the child must never use (an asyncio loop's copy shares the
    parent's epoll instance and self-pipe).  Each is closed without running
    or failing what it holds -- the parent runs those -- and the default
    context is made anew on first use."""
    global _default
    _default = None
    for ctx in list(_all_contexts):
        # Kept, not freed: freeing them here could run finalizers (an object
        # that posts its own cleanup) while this context's lock, or the
        # task locks and pools' locks whose fork handlers run after this
        # one, are still held by the fork -- and hang the child.  They are
        # the parent's; in the child they are garbage that is never freed.
        _forked_away.append(ctx._dispatcher.forget())


_fork.guard(_fork_locks, child=_after_fork_in_child)


def all_contexts() -> list[MainContext]:
    """Every context still alive (for shutdown and diagnostics)."""
    with _contexts_lock:
        return list(_all_contexts)
