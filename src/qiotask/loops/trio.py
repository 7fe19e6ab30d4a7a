"""The trio adapter: tasks whose completion runs inside a trio run.

Quickstart -- inside ``trio.run`` nothing needs setting up: a task created in a
trio task belongs to that run, and ``await`` works on it::

    import socket
    import trio
    import qiotask

    def lookup(task, name):                 # a worker, on a pool thread
        return socket.getaddrinfo(name, 80)

    async def main():
        task = qiotask.Task(None)
        task.run_in_thread(lookup, "localhost")
        print(await task)                   # the worker's result
        print(await qiotask.to_thread(sum, [1, 2]))  # like trio.to_thread.run_sync

    trio.run(main)

``qiotask.get_context()`` inside the run returns the run's context, the same
one ``qiotask.attach(trio.lowlevel.current_trio_token())`` returns; another
thread may attach the token too and create tasks against it.  anyio's trio
backend is trio: the same holds under ``anyio.run(main, backend="trio")``.

A run of qiotask's own -- a :class:`TrioContext` made outside any run, which
:class:`qiotask.MainLoop` runs with ``trio.run`` on the calling thread::

    ctx = TrioContext()
    qiotask.Task(obj, func, context=ctx).run_in_thread(worker)
    loop = qiotask.MainLoop(ctx)
    loop.run()        # one trio.run(), until loop.quit() (e.g. from func)
    ctx.close()

Which thread runs what:

- ``func``, done-callbacks, destroy notifiers, and the functions of
  ``timeout_add``/``idle_add``/``io_add_watch`` run on the trio thread.
  Completions arrive through ``TrioToken.run_sync_soon``, once per batch, and
  run as trio's run_sync_soon callbacks do: synchronously, between trio tasks,
  protected from ``KeyboardInterrupt``.  Timers and fd watches are trio system
  tasks (``trio.sleep``, ``wait_readable``/``wait_writable``), each in a
  ``CancelScope`` that removing the source cancels.
- Workers run on qiotask's pool threads, not in trio's thread cache.
- ``await task`` parks the trio task until the qiotask task has finished,
  whichever loop that task belongs to.  Cancelling the trio task (a cancel
  scope, a timeout) raises ``trio.Cancelled`` in it at once; the qiotask task
  is not stopped: its worker runs to its end and its completion runs as
  usual, its result dropped unless someone else reads it.

Clean shutdown: an attached context lives as long as its run.  When the main
task returns, the context closes; a task still in flight then finishes with
``ContextClosedError`` (``func`` is not called; its destroy notifiers run
once, in the thread that completed it).  So await every task, or
``task.wait()`` for it from another thread, before ``main`` returns.
``ctx.close()`` detaches qiotask from a run early.

A standalone :class:`TrioContext` is like an embedded asyncio context: each
``MainLoop.run()`` is one ``trio.run``, and the context stays open between
runs.  What completes while no run is active waits in the queue, as before the
first run, and the next run delivers it first thing; timers and fd watches
pause with a run and resume with the next one.  Only :meth:`TrioContext.close`
(or interpreter exit) closes it; tasks in flight then finish with
``ContextClosedError``.
"""

from __future__ import annotations

import contextvars
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

import trio
import trio.lowlevel as _lowlevel

from .._adapters import Adapter, attach_once, register
from .._checks import check_awaitable
from .._context import HANGUP_POLL_INTERVAL, MainContext
from .._driver import CancelLatch, ClosedAtExit, ContextPort, LoopDriver
from .._errors import ContextClosedError, TaskCancelled, TaskStateError

if TYPE_CHECKING:
    from .._task import Task

__all__ = ["TrioContext", "TrioDriver"]

_in_trio_run = _lowlevel.in_trio_run
_current_trio_token = _lowlevel.current_trio_token

# The context of each run that has one.  Weak values: an attached context is
# kept alive by its run (a system task refers to it) and by its tasks; once
# both are gone, so is the entry.  _attach_lock makes "look up, else create"
# atomic, so a token has one context even when threads attach it together.
_contexts: weakref.WeakValueDictionary[_lowlevel.TrioToken, TrioContext] = weakref.WeakValueDictionary()
_attach_lock = threading.Lock()


class _Entry:
    """A context's place in the attach table (``_contexts``), for its driver:
    a standalone run enters it there for the run's token, and the run's end
    or ``close()`` takes it out.  Holds the context weakly, as the port does;
    the driver never sees the context itself."""

    __slots__ = ("_ref",)

    def __init__(self, context: TrioContext) -> None:
        self._ref = weakref.ref(context)

    def enter(self, token: _lowlevel.TrioToken) -> None:
        """``get_context()`` inside the run of ``token`` finds the context."""
        context = self._ref()
        if context is not None:
            with _attach_lock:
                _contexts[token] = context

    def leave(self, token: _lowlevel.TrioToken) -> None:
        """The context no longer serves the run of ``token`` (if it did)."""
        context = self._ref()
        if context is not None:
            with _attach_lock:
                if _contexts.get(token) is context:
                    del _contexts[token]


class _Timer:
    """A ``call_later`` handle: a system task sleeping in a CancelScope.

    Touched on the context thread only, like every handle of the protocol.
    """

    __slots__ = ("_deadline", "_driver", "_fn", "_scope")

    def __init__(self, driver: TrioDriver, delay: float, fn: Callable[[], None]) -> None:
        self._driver = driver
        self._fn = fn
        # time.monotonic() based, so that a timer created outside a run (or
        # paused by the end of one) knows how long it has left.
        self._deadline = time.monotonic() + delay
        # The scope of the system task sleeping now, if one is.
        self._scope: trio.CancelScope | None = None

    def cancel(self) -> None:
        self._driver._timers.discard(self)
        scope, self._scope = self._scope, None
        if scope is not None:
            scope.cancel()


class TrioDriver(LoopDriver):
    """The loop side of a trio context (see ``qiotask._driver``): of an
    attached run (``token`` given), or of a standalone context whose every
    :meth:`run` is one ``trio.run``."""

    def __init__(self, port: ContextPort, token: _lowlevel.TrioToken | None, entry: _Entry) -> None:
        super().__init__(port)
        self._attached = token is not None
        self._entry = entry
        # The token of the run delivering completions now; None while a
        # standalone context is not running.  Set and cleared on the trio
        # thread, read by wake() from any thread.  The context is closed
        # (port.closed) when the attached run ends, or by close().
        self._token = token
        # Whether system tasks may be spawned: a run is active and not yet
        # shutting down.  Context thread only, like the two tables below.
        self._active = False
        # Sources survive the end of a standalone run: live timers, and the
        # fd interest (read, write) the context asked for (port.fd_interest).
        self._timers: set[_Timer] = set()
        # The watcher system task of each (fd, writable), by its scope.
        self._fd_scopes: dict[tuple[int, bool], trio.CancelScope] = {}
        # The scope of an attached context's run watcher (see _watch_run).
        self._watch_scope: trio.CancelScope | None = None
        # _run_lock guards _running, and orders a run's start (which
        # publishes _token) against close() (which closes and reads _token):
        # two MainLoops may not run a standalone context at once, a run
        # does not start after close(), and close() stops a run that started.
        self._run_lock = threading.Lock()
        self._running = False
        self._stop_event: trio.Event | None = None

    # -- the driver protocol ------------------------------------------------

    def wake(self) -> None:
        if self.port.closed:
            raise ContextClosedError(f"{self.port.name} is closed")
        token = self._token
        if token is None:
            return  # standalone, no run active: the next run dispatches the batch
        try:
            token.run_sync_soon(self.port.dispatch)
        except trio.RunFinishedError as exc:
            if not self._attached and not self.port.closed:
                # The run this token belonged to just ended; the batch stays
                # queued for the next run (_main dispatches it first thing).
                return
            raise ContextClosedError(f"{self.port.name}: the trio run has finished") from exc

    def run_coroutine(
        self,
        async_fn: Callable[..., Any],
        args: tuple[Any, ...],
        context: contextvars.Context,
        on_cancel: Callable[[Callable[[], None]], None],
    ) -> Any:
        token = self._token
        if token is None or self.port.closed:
            raise ContextClosedError(f"from_thread.run(): {self.port.name}: no trio run is active")
        latch = CancelLatch()

        async def in_a_scope() -> Any:
            with trio.CancelScope() as scope:
                latch.attach(scope)
                awaitable = async_fn(*args)
                check_awaitable(awaitable, async_fn, "from_thread.run")
                result = await awaitable
            if scope.cancelled_caught:
                raise TaskCancelled("from_thread.run(): the worker's task was cancelled")
            return result

        def stop() -> None:  # any thread: the worker's task was cancelled
            try:
                token.run_sync_soon(latch.cancel)
            except trio.RunFinishedError:
                pass  # the run is over: the call below says so

        on_cancel(stop)
        # trio runs it in a system task of the run, in the calling thread's
        # context: the worker's, here.  The run may end between the check
        # above and trio's own (its system nursery then refuses the task):
        # that is the loop gone, as everywhere else.
        try:
            return context.run(trio.from_thread.run, in_a_scope, trio_token=token)  # type: ignore[arg-type]
        except trio.RunFinishedError as exc:
            raise ContextClosedError(f"from_thread.run(): {self.port.name}: the trio run has finished") from exc

    def nests(self) -> bool:
        return False  # trio.run() cannot run inside a run

    def call_later(self, delay: float, fn: Callable[[], None]) -> _Timer:
        timer = _Timer(self, delay, fn)
        self._timers.add(timer)
        if self._active:
            self._start_timer(timer, delay)
        return timer

    def set_fd_interest(self, fd: int, read: bool, write: bool, old: tuple[bool, bool] | None) -> None:
        for writable, wanted in ((False, read), (True, write)):
            key = (fd, writable)
            scope = self._fd_scopes.get(key)
            if wanted and scope is None and self._active:
                scope = self._fd_scopes[key] = trio.CancelScope()
                if not self._spawn(self._watch_fd, fd, writable, scope):
                    del self._fd_scopes[key]
            elif not wanted and scope is not None:
                # Synchronous: trio's abort unregisters the waiter before
                # cancel() returns, so a new watcher may wait on fd at once.
                del self._fd_scopes[key]
                scope.cancel()

    def run(self) -> None:
        if self._attached:
            raise TaskStateError(f"{self.port.name} is run by its own trio.run(), not by qiotask.MainLoop")
        if _in_trio_run():
            raise TaskStateError(f"{self.port.name}: MainLoop.run() cannot start a trio run inside a trio run")
        with self._run_lock:
            if self.port.closed:
                raise ContextClosedError(f"{self.port.name} is closed")
            if self._running:
                raise TaskStateError(f"{self.port.name} is already running")
            self._running = True
        try:
            trio.run(self._main)
        finally:
            with self._run_lock:
                self._running = False

    def stop(self) -> None:
        if self._attached:
            super().stop()
        event = self._stop_event
        if event is not None:
            event.set()

    def close(self) -> None:
        """``TrioContext.close()``: close the context and stop what qiotask
        runs in trio (see there); any thread, more than once."""
        with self._run_lock:  # see _main
            queued = self.port.shut()
            token = self._token
        if queued is not None:
            if token is None:
                # A standalone context between runs: nothing runs in trio.
                self._timers.clear()
                self.port.forget_fds()
            else:
                self._entry.leave(token)
                if _in_trio_run() and _current_trio_token() is token:
                    self._release()
                else:
                    try:
                        token.run_sync_soon(self._release)
                    except trio.RunFinishedError:
                        pass  # the run is over, and its system tasks with it
            self.port.fail(queued)

    def _release(self) -> None:
        """On the trio thread: stop the system tasks qiotask runs there."""
        self._active = False
        scopes = [timer._scope for timer in self._timers]
        scopes += self._fd_scopes.values()
        scopes.append(self._watch_scope)
        self._timers.clear()
        self.port.forget_fds()
        self._fd_scopes.clear()
        for scope in scopes:
            if scope is not None:
                scope.cancel()
        if self._stop_event is not None:
            self._stop_event.set()  # a standalone run ends

    # -- standalone runs ------------------------------------------------------

    async def _main(self) -> None:
        """The main task of a standalone run: deliver what waited, then idle."""
        token = _current_trio_token()
        self._stop_event = stop = trio.Event()
        self._entry.enter(token)  # get_context() inside the run finds the context
        self._active = True
        try:
            with self._run_lock:  # see close()
                self._token = token
                if self.port.closed:
                    return
            self._resume_sources()
            # Completions posted before the run (their wake-up found no run
            # to wake) are delivered first.
            self.port.dispatch()
            await stop.wait()
        finally:
            # From here on, posts wait for the next run; wake-ups already
            # sent are still run by trio before trio.run() returns.  Timers
            # and fd watchers are cancelled with the system tasks and stay
            # registered for the next run.
            self._active = False
            self._token = None
            self._stop_event = None
            self._entry.leave(token)

    def _resume_sources(self) -> None:
        now = time.monotonic()
        for timer in list(self._timers):
            if timer._scope is None:
                self._start_timer(timer, max(0.0, timer._deadline - now))
        for fd, (read, write) in self.port.fd_interest().items():
            self.set_fd_interest(fd, read, write, None)

    # -- attached runs --------------------------------------------------------

    def bind(self) -> None:
        """An attached context's start: bind it to its run, at once if
        called in the run, else through the run (``run_sync_soon``).  The
        run keeps the context alive while it lasts (``port.keepsake()``):
        nothing else may hold it, and the port holds it only weakly."""
        keep = self.port.keepsake()
        token = self._token
        assert token is not None
        if _in_trio_run() and _current_trio_token() is token:
            self._bind_attached(keep)
        else:
            # Attached from another thread: the trio thread is not known
            # until the run answers; meanwhile no thread counts as the
            # context's, so everything is handed over through the queue,
            # behind this binding call (run_sync_soon is FIFO).
            self.port.runs_on(None)
            try:
                token.run_sync_soon(self._bind_attached, keep)
            except trio.RunFinishedError:
                self.port.loop_gone()

    def _bind_attached(self, keep: object) -> None:
        """On the trio thread, in the run: adopt the thread, watch the run."""
        if self.port.closed:
            return  # closed before the run got to this
        self.port.runs_on(threading.current_thread())
        self._active = True
        scope = self._watch_scope = trio.CancelScope()
        if not self._spawn(self._watch_run, scope, keep):
            self.port.loop_gone()

    async def _watch_run(self, scope: trio.CancelScope, keep: object) -> None:
        # A system task: cancelled when the main task has returned, or by
        # close().  It also keeps the context (keep) alive while the run
        # lasts.
        try:
            with scope:
                await trio.sleep_forever()
        finally:
            # The run is ending: no new system task may start, and whatever
            # is queued or completes from now on fails with
            # ContextClosedError (the wake-ups already sent find nothing).
            self._active = False
            self.port.loop_gone()

    # -- system tasks ----------------------------------------------------------

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: Any) -> bool:
        try:
            _lowlevel.spawn_system_task(fn, *args, name=f"qiotask {self.port.name}: {getattr(fn, '__name__', fn)}")
        except RuntimeError:
            # The system nursery is closed: the run is shutting down.
            self._active = False
            return False
        return True

    def _start_timer(self, timer: _Timer, delay: float) -> None:
        scope = timer._scope = trio.CancelScope()
        if not self._spawn(self._run_timer, timer, delay, scope):
            timer._scope = None

    async def _run_timer(self, timer: _Timer, delay: float, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await trio.sleep(delay)
        finally:
            # Cancelled by the end of the run (Cancelled propagates) or by
            # cancel() (caught by the scope): either way no task sleeps now.
            if timer._scope is scope:
                timer._scope = None
        if scope.cancelled_caught:
            return  # removed
        self._timers.discard(timer)
        timer._fn()

    async def _watch_fd(self, fd: int, writable: bool, scope: trio.CancelScope) -> None:
        wait = _lowlevel.wait_writable if writable else _lowlevel.wait_readable
        reported = False
        try:
            with scope:
                while True:
                    try:
                        await wait(fd)
                    except (OSError, trio.ClosedResourceError, trio.BusyResourceError) as exc:
                        # trio cannot wait on this fd: a regular file (epoll
                        # says EPERM), an fd closed behind our back, or one a
                        # trio task already waits on.  Poll it instead, as
                        # GLib would: port.fd_ready reports what poll() sees.
                        if isinstance(exc, trio.BusyResourceError) and not reported:
                            reported = True
                            self.port.report_exception(
                                f"{self.port.name}: another trio task waits on fd {fd}; "
                                f"qiotask polls it every {HANGUP_POLL_INTERVAL} s instead",
                                exc,
                            )
                        self.port.fd_ready(fd)
                        if scope.cancel_called:
                            break
                        await trio.sleep(HANGUP_POLL_INTERVAL)
                        continue
                    self.port.fd_ready(fd)
                    if scope.cancel_called:
                        # The interest changed inside fd_ready; waiting
                        # again could collide with a new watcher of fd.
                        break
        finally:
            if self._fd_scopes.get((fd, writable)) is scope:
                del self._fd_scopes[(fd, writable)]


class TrioContext(MainContext):
    """The context of a trio run.

    ``TrioContext()`` makes a standalone context that :class:`qiotask.MainLoop`
    runs (each ``run()`` is one ``trio.run`` on the calling thread); contexts
    of runs started elsewhere come from ``qiotask.attach(token)`` or
    ``qiotask.get_context()`` inside the run.

    Its thread is the thread running trio; before a standalone context runs,
    the thread that made it.
    """

    _driver: TrioDriver

    def __init__(self, *, name: str | None = None, _token: _lowlevel.TrioToken | None = None) -> None:
        attached = _token is not None
        entry = _Entry(self)
        super().__init__(
            name=name or (f"trio run {id(_token):#x}" if attached else "trio"),
            driver=lambda port: TrioDriver(port, _token, entry),
        )
        if attached:
            # The run keeps an attached context alive while it lasts.
            self._driver.bind()
        else:
            _standalone.add(self)

    def close(self) -> None:
        """Close the context for good; safe from any thread, more than once.

        Completions queued now fail with ``ContextClosedError`` in the
        calling thread, later ones in the thread that completes them
        (``func`` is not called; destroy notifiers run once).  The timers and
        fd watches qiotask runs in trio are cancelled; a running standalone
        context's ``MainLoop.run()`` returns.  An attached trio run goes on
        without qiotask: a later ``attach(token)`` or ``get_context()`` in
        it makes a new context.
        """
        super().close()


# Standalone contexts, closed at exit unless running (like embedded asyncio
# contexts), so that completions left in their queue run their notifiers.
_standalone = ClosedAtExit(lambda ctx: ctx._driver._running)


def _attach_token(token: _lowlevel.TrioToken) -> TrioContext:

    def make() -> TrioContext:
        ctx = _contexts[token] = TrioContext(_token=token)
        return ctx

    return attach_once(_attach_lock, lambda: _contexts.get(token), make)


def _detect() -> MainContext | None:
    if not _in_trio_run():
        return None
    token = _current_trio_token()
    ctx = _contexts.get(token)
    return ctx if ctx is not None else _attach_token(token)


# -- await task -----------------------------------------------------------------

# A waiter's states.  They change on the awaiting trio thread only (a wake-up
# from another thread is sent there first), so they need no lock.
_NOT_PARKED, _PARKED, _WOKEN, _ABORTED, _ABORTING = range(5)


class _Waiter:
    """Parks one trio task until a qiotask task has finished."""

    __slots__ = ("_ident", "_state", "_token", "_trio_task")

    def __init__(self) -> None:
        self._trio_task: _lowlevel.Task | None = _lowlevel.current_task()
        self._token = _current_trio_token()
        self._ident = threading.get_ident()
        self._state = _NOT_PARKED

    def done_callback(self, task: Task[Any]) -> None:
        """The qiotask task's done-callback: on its context's thread, or in
        whatever thread completed it if that context is closed."""
        if threading.get_ident() == self._ident:
            self._wake()
        else:
            try:
                self._token.run_sync_soon(self._wake)
            except trio.RunFinishedError:
                pass  # the awaiting run is over: nobody is left to wake

    def _wake(self) -> None:
        if self._state == _PARKED:
            self._state = _WOKEN
            trio_task, self._trio_task = self._trio_task, None
            assert trio_task is not None
            _lowlevel.reschedule(trio_task)
        elif self._state in (_NOT_PARKED, _ABORTING):
            # Called from inside add_done_callback (the task had already
            # finished: its context was closed), or by the completion a
            # worker wait's cancel ran: do not park (again).
            self._state = _WOKEN

    def _abort(self, raise_cancel: _lowlevel.RaiseCancelT) -> _lowlevel.Abort:
        # The awaiting trio task is cancelled; the qiotask task carries on,
        # and its done-callback will find nobody to wake.
        self._state = _ABORTED
        self._trio_task = None
        return _lowlevel.Abort.SUCCEEDED


class _WorkerWaiter(_Waiter):
    """Parks one trio task until a ``run_sync`` worker's task has finished;
    a cancel of the trio task cancels the qiotask task and, unless the
    worker is abandoned (or the cancel completed the task), keeps waiting
    for it, as ``trio.to_thread.run_sync`` does."""

    __slots__ = ("abandon", "hook_error", "raise_cancel", "task")

    def __init__(self, task: Task[Any], abandon: bool) -> None:
        super().__init__()
        self.task = task
        self.abandon = abandon
        self.raise_cancel: _lowlevel.RaiseCancelT | None = None
        self.hook_error: BaseException | None = None

    def _abort(self, raise_cancel: _lowlevel.RaiseCancelT) -> _lowlevel.Abort:
        self._state = _ABORTING  # a completion the cancel runs here wakes nobody
        try:
            self.task.cancel()  # refused start if queued; told (hooks) if running
        except BaseException as exc:  # a hook's KeyboardInterrupt: raised once awake
            self.hook_error = exc
        if self.abandon or self._state == _WOKEN or self.task.done():
            self._state = _ABORTED
            self._trio_task = None
            return _lowlevel.Abort.SUCCEEDED
        self._state = _PARKED
        self.raise_cancel = raise_cancel  # the Cancelled comes once the worker is back
        return _lowlevel.Abort.FAILED


async def _wait_worker(task: Task[Any], abandon: bool) -> Any:
    """``run_sync``'s wait under trio (see ``_adapters.Adapter``)."""
    if task.done():
        await _lowlevel.checkpoint()
        return task._outcome()
    waiter = _WorkerWaiter(task, abandon)
    task.add_done_callback(waiter.done_callback)
    if waiter._state != _WOKEN:
        waiter._state = _PARKED
        await _lowlevel.wait_task_rescheduled(waiter._abort)
    if waiter.hook_error is not None:
        raise waiter.hook_error
    if waiter.raise_cancel is not None:
        waiter.raise_cancel()  # cancelled while the worker ran: it is back now
    return task._outcome()


def _cancel_point() -> Awaitable[None]:
    return _lowlevel.checkpoint_if_cancelled()


async def _wait_task(task: Task[Any]) -> None:
    """Return once ``task`` has finished (Task.__await__ reads the outcome).

    Always a checkpoint, as trio's own awaitables are, even when the task
    finished already: a loop awaiting finished tasks stays cancellable.
    """
    if task.done():
        await _lowlevel.checkpoint()
        return
    waiter = _Waiter()
    task.add_done_callback(waiter.done_callback)
    if waiter._state == _WOKEN:
        return
    waiter._state = _PARKED
    await _lowlevel.wait_task_rescheduled(waiter._abort)


def _await_task(task: Task[Any]) -> Generator[Any, None, Any]:
    """What ``await task`` runs under trio."""
    yield from _wait_task(task).__await__()
    return task._outcome()


# -- async with TaskGroup ----------------------------------------------------------


async def _wait_group(group: Any, shielded: bool) -> BaseException | None:
    """``async with TaskGroup``'s wait under trio (see ``_adapters.Adapter``).
    ``shielded``: the body was cancelled, so the scope is cancelled and only
    a shielded wait can wait for the tasks it cancelled."""
    event = trio.Event()
    token = _current_trio_token()

    def wake() -> None:
        try:
            token.run_sync_soon(event.set)
        except trio.RunFinishedError:
            pass  # the waiting run is over: nobody is left to wake

    if not group._add_waiter(wake):
        if not shielded:
            await _lowlevel.checkpoint()  # trio's rule: every await may switch
        return None
    cancelled: BaseException | None = None
    if not shielded:
        try:
            await event.wait()
            return None
        except trio.Cancelled as exc:
            cancelled = exc
            group.cancel()
    # Once cancelled, every checkpoint of the scope raises again: only a
    # shield lets us wait for the tasks we just cancelled.
    with trio.CancelScope(shield=True):
        await event.wait()
    return cancelled


def _is_cancellation(exc: BaseException) -> bool:
    return isinstance(exc, trio.Cancelled)


register(
    "trio",
    Adapter(
        accepts=lambda obj: isinstance(obj, _lowlevel.TrioToken),
        attach=_attach_token,
        detect=_detect,
        running=_in_trio_run,
        await_task=_await_task,
        wait_group=_wait_group,
        is_cancellation=_is_cancellation,
        cancel_point=_cancel_point,
        wait_worker=_wait_worker,
    ),
)
