"""The loop side of a context: what a loop adapter implements, and the one
object through which it reaches its context.

A :class:`~qiotask.MainContext` holds a :class:`LoopDriver`: the few things
the context needs of an event loop (wake it, call later, watch an fd, run
and stop it, let it go), and no more.  The driver is made with a
:class:`ContextPort` and reaches its context through it alone: it runs the
queued batch, reports fd readiness, reports that its loop is gone, and says
which thread runs the loop.  It never reads or writes a field of the
context; the queue, the "closed" flag, the fd bookkeeping and the owner
thread stay the context's (DESIGN §6).

Which thread calls what:

- ``wake()``: any thread (a worker posting a completion), at most once per
  batch;
- ``call_later()``, ``set_fd_interest()``, ``nests()``: the context thread;
- ``run()``/``stop()``: ``qiotask.MainLoop`` on the thread that runs it;
- ``close()``: any thread, once per ``MainContext.close()``;
- ``adopt()``: the thread that completed a task after the loop went away;
- ``confirm_owner()``: any thread, from ``MainContext.is_owner()``.

Guarantees / assumes: a port holds its context weakly (a context holds its
driver, and the driver its port: a strong reference back would make every
context a reference cycle, freed with its loop only by the cyclic GC); a
call through the port of a context that was freed does nothing.  The port's
methods are the context's own locked steps (the dispatcher's post, dispatch
and close), so a driver calling them from any thread needs no lock of its
own for them.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from . import _fork
from ._errors import ContextClosedError, TaskStateError

if TYPE_CHECKING:
    from ._context import MainContext
    from ._dispatch import Dispatchable

__all__ = ["NO_TIMER", "CancelLatch", "ClosedAtExit", "ContextPort", "Graves", "LoopDriver", "TimerHandle"]


class TimerHandle(Protocol):
    """What ``LoopDriver.call_later`` returns."""

    def cancel(self) -> None: ...


class _NoTimer:
    """The handle of a timer asked of a loop that is gone: nothing to cancel."""

    __slots__ = ()

    def cancel(self) -> None:
        pass


#: What a driver's ``call_later`` returns once its loop is gone (like a
#: source of a destroyed GLib context, it never runs).
NO_TIMER = _NoTimer()


class ContextPort:
    """A context's face to its driver: everything a driver may ask of it."""

    __slots__ = ("_context", "shut")

    def __init__(self, context: MainContext) -> None:
        self._context = weakref.ref(context)
        dispatcher = context._dispatcher
        #: For a driver that must mark the loop gone under a lock of its
        #: own: mark the context closed and take what is queued (None if it
        #: was closed before); then :meth:`fail` it, after that lock.
        self.shut: Callable[[], deque[Dispatchable] | None] = dispatcher.shut

    @property
    def name(self) -> str:
        """The context's name, for the driver's errors and logs."""
        context = self._context()
        return "a freed context" if context is None else context.name

    @property
    def closed(self) -> bool:
        """Whether the context is closed (its loop reported gone, or
        ``close()`` was called).  Once True, always True."""
        context = self._context()
        return context is None or context._dispatcher.closed

    def keepsake(self) -> object:
        """An opaque object that keeps the context alive while it is held
        (None if the context was freed already): for a driver to hand to
        the loop with a pending callback, where the context must live until
        the callback ran (GLib's sources, a trio run's watcher), as it did
        when the callback was the context's own method.  The driver must
        not keep it in a field of its own (that would be a cycle)."""
        return self._context()

    def dispatch(self) -> None:
        """On the loop's thread, from the loop's callback: run the batch
        queued now (the thread running it becomes the context's thread)."""
        context = self._context()
        if context is not None:
            context._dispatch()

    def post(self, item: Dispatchable) -> None:
        """From any thread: ``item._dispatch()`` on the loop's thread, or
        ``item._context_closed(context)`` here if the context is closed
        (the context's own post: a request a driver makes of its loop
        fails with the context, as every completion does)."""
        context = self._context()
        if context is None:
            raise ContextClosedError("the context was freed")
        context._dispatcher.post(item)

    def loop_gone(self) -> bool:
        """The loop is gone for good: the context is closed and what is
        queued fails here, in this thread.  True for the call that closed it."""
        context = self._context()
        return context is not None and context._dispatcher.close(context)

    def fail(self, items: deque[Dispatchable]) -> None:
        """Fail what :attr:`shut` returned, in this thread."""
        context = self._context()
        if context is not None:
            context._dispatcher.fail(items, context)

    def queued(self) -> int:
        """How many items wait in the queue: a hint (a polling loop's tick
        dispatches when it is not 0)."""
        context = self._context()
        return 0 if context is None else len(context._dispatcher)

    def fd_ready(self, fd: int) -> None:
        """On the context thread: ``fd`` may be ready for what was asked
        (``set_fd_interest``); the context polls it and runs its watches."""
        context = self._context()
        if context is not None:
            context._fd_ready(fd)

    def fd_interest(self) -> dict[int, tuple[bool, bool]]:
        """On the context thread: what the context asked to watch, as
        ``{fd: (read, write)}`` (a copy), for a driver that polls the fds
        itself or must register them again on a new run."""
        context = self._context()
        if context is None:
            return {}
        return {fd: mask for fd, mask in context._io_mask.items() if mask}

    def drop_fd_watches(self) -> None:
        """On the context thread, once the loop is gone: remove every fd
        watch (their functions may hold what the loop's objects hold, Tk's
        root through a widget; none can fire any more)."""
        context = self._context()
        if context is not None:
            context._drop_fd_watches()

    def forget_fds(self) -> None:
        """The loop forgot every fd it watched (its run ended): the next
        watch registers from scratch."""
        context = self._context()
        if context is not None:
            context._io_mask.clear()

    def runs_on(self, thread: threading.Thread | None) -> None:
        """The loop runs on ``thread`` from now on; None: no thread is the
        context's until the loop says which (everything is then posted)."""
        context = self._context()
        if context is None:
            return
        if thread is None:
            context._owner = (None, context._owner[1])
        else:
            context._set_owner(thread)

    def is_owner(self) -> bool:
        """Whether the calling thread is the context's thread."""
        context = self._context()
        return context is not None and context.is_owner()

    def report_exception(self, message: str, exc: BaseException) -> None:
        """Hand an exception from a user callback to the context's handler."""
        context = self._context()
        if context is not None:
            context.report_exception(message, exc)


class LoopDriver:
    """The base of every loop driver: the defaults of the optional parts.

    A driver must implement :meth:`wake`, :meth:`call_later` and
    :meth:`set_fd_interest`; the rest has a default here.
    """

    #: For a loop that can go away without a word (asyncio drops a closed
    #: loop's callbacks): a cheap function, any thread, saying whether it
    #: did; a post that finds a wake-up already on its way asks it.  None
    #: for loops whose driver reports the loss (``port.loop_gone()``).
    probe: Callable[[], bool] | None = None
    #: Asked by ``MainContext.is_owner()`` when the calling thread is the
    #: recorded one; may still say no (GLib: another thread runs the GLib
    #: context now).  None: the recorded thread is the answer.
    confirm_owner: Callable[[], bool] | None = None

    def __init__(self, port: ContextPort) -> None:
        self.port = port

    def wake(self) -> None:
        """From any thread: make the loop call ``port.dispatch()`` soon.

        Raises:
            ContextClosedError: the loop is gone.
        """
        raise NotImplementedError

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        """On the context thread: call ``fn()`` after ``delay`` seconds."""
        raise NotImplementedError

    def set_fd_interest(self, fd: int, read: bool, write: bool, old: tuple[bool, bool] | None) -> None:
        """On the context thread: call ``port.fd_ready(fd)`` whenever ``fd``
        is readable (if ``read``) or writable (if ``write``); both False
        stops watching it.  ``old`` is what the loop was told before
        ((False, False) for a new fd), or None if that is unknown (the last
        change failed)."""
        raise NotImplementedError

    def nests(self) -> bool:
        """Whether a callback may run a nested loop of this context (a modal
        dialog): then items posted during a batch must wake the loop at once
        (see ``_dispatch.Dispatcher.dispatch``).  Asked once per batch."""
        return True

    def run(self) -> None:
        """``qiotask.MainLoop.run()``: run the loop on this thread until
        :meth:`stop`."""
        raise TaskStateError(f"{self.port.name} is run by its own toolkit, not by qiotask.MainLoop")

    def stop(self) -> None:
        """On the context thread: make :meth:`run` return."""
        raise TaskStateError(f"{self.port.name} is run by its own toolkit, not by qiotask.MainLoop")

    def close(self) -> None:
        """``MainContext.close()``: let go of the loop and close the context
        (``port.loop_gone()``, or ``port.shut()``/``port.fail()``)."""
        self.port.loop_gone()

    def adopt(self, refs: tuple[Any, ...]) -> None:
        """Take the last references of a task completed off the context's
        thread after the loop went away.  Dropping them here is right for
        most loops; Tk must drop Tcl objects on the Tk thread."""

    def run_coroutine(
        self,
        async_fn: Callable[..., Any],
        args: tuple[Any, ...],
        context: contextvars.Context,
        on_cancel: Callable[[Callable[[], None]], None],
    ) -> Any:
        """From a worker thread (``qiotask.from_thread.run``): run
        ``async_fn(*args)`` on the loop, in a copy of ``context``, blocking
        the calling thread until it is done; its result, or raise its
        exception.  ``on_cancel(stop)`` registers ``stop``, called from any
        thread if the worker's task is cancelled: it must cancel the
        coroutine, which then raises ``TaskCancelled`` here.  Only loops
        that run coroutines can."""
        raise RuntimeError(
            f"from_thread.run(): {self.port.name} does not run coroutines; it needs an asyncio loop or a trio run "
            "(from_thread.run_sync() works on every loop)"
        )


# -- what several drivers need, written once ------------------------------------


class Graves:
    """The last references of tasks completed off a loop's thread after the
    loop went away (``LoopDriver.adopt``), kept to be dropped on that thread:
    Qt's and Tk's objects must die on their own thread.

    :meth:`bury` from any thread, :meth:`free` on the loop's thread; the
    lock guards the list between them.
    """

    __slots__ = ("_lock", "_refs")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: list[tuple[Any, ...]] = []

    def bury(self, refs: tuple[Any, ...]) -> bool:
        """Keep ``refs``; True for the first since the last :meth:`free` (the
        caller then arranges a free on the loop's thread)."""
        with self._lock:
            self._refs.append(refs)
            return len(self._refs) == 1

    def free(self) -> None:
        """On the loop's thread: drop what was buried (after the lock: what
        dies may run any code)."""
        with self._lock:
            refs, self._refs = self._refs, []
        del refs


class ClosedAtExit:
    """Contexts whose loop is qiotask's own (an embedded asyncio loop, a
    standalone trio context), closed at interpreter exit unless their loop
    is running then: their fds are not reported as leaked, and what they
    still hold queued fails, running its destroy notifiers.

    It registers no ``atexit`` hook of its own: ``qiotask._exit``'s one hook
    closes them (:meth:`idle_contexts`), once it is ready to gather the
    tasks that fail there into its one exit report.  A hook per adapter,
    registered when the adapter is first imported, would run *before* that
    one (``atexit`` runs the last registered first), and each task would
    warn alone.

    Args:
        running: ``running(context)``, whether its loop runs now.
    """

    #: Every instance (one per adapter module: never freed).
    _every: ClassVar[list[ClosedAtExit]] = []

    def __init__(self, running: Callable[[Any], bool]) -> None:
        # Added to by any thread that makes such a context; iterated at
        # exit and by shutdown(): under _lock, as a WeakSet is not safe to
        # iterate while another thread adds to it.
        self._contexts: weakref.WeakSet[MainContext] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._running = running
        ClosedAtExit._every.append(self)

    def add(self, context: MainContext) -> None:
        """Close ``context`` at exit (held weakly: one freed before is not)."""
        with self._lock:
            self._contexts.add(context)

    def _members(self) -> list[MainContext]:
        with self._lock:
            return list(self._contexts)

    @classmethod
    def loop_runs(cls, context: MainContext) -> bool | None:
        """Whether ``context``'s loop runs now, if it is such a context;
        None for a context of a foreign loop (which cannot be asked)."""
        for kind in list(cls._every):
            if context in kind._members():
                return kind._running(context)
        return None

    @classmethod
    def idle_contexts(cls) -> list[MainContext]:
        """Every such context that is open and whose loop does not run now:
        nothing will deliver what is queued there unless someone runs it."""
        idle = []
        for kind in list(cls._every):
            for context in kind._members():
                if not context.closed and not kind._running(context):
                    idle.append(context)
        return idle


# No add() is half made in a forked child.
_fork.guard(lambda: [kind._lock for kind in list(ClosedAtExit._every)])


class CancelLatch:
    """Cancels what a driver started for ``from_thread.run`` (an asyncio
    task, a trio cancel scope: anything with ``cancel()``), whether the
    cancel comes before or after it started.  The loop thread's alone: the
    worker's cancel hook posts :meth:`cancel` to the loop."""

    __slots__ = ("asked", "target")

    def __init__(self) -> None:
        self.asked = False
        self.target: Any = None

    def attach(self, target: Any) -> None:
        """``target`` started; cancelled at once if that was asked already."""
        self.target = target
        if self.asked:
            target.cancel()

    def cancel(self) -> None:
        self.asked = True
        if self.target is not None:
            self.target.cancel()
