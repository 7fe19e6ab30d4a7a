"""Task: report the outcome of one background operation on the loop's thread.

The promise: a task's callback ``func(source, err, opaque)`` runs exactly
once, on the thread of the task's main context, however the operation ended
-- from a timer, an fd watch, a worker thread or another process.  The task
keeps ``source`` alive until ``func``, the done-callbacks and every destroy
notifier have run, then lets it go.

Completed by a timer that polls (the seed's first example)::

    import qiotask

    def operation(obj, func, opaque=None, destroy=None):
        task = qiotask.Task(obj, func, opaque, destroy)
        polls = []

        def tick():
            polls.append(1)
            if len(polls) < 3:
                return True          # keep polling
            task.complete()          # runs func here, on the loop thread
            return False

        qiotask.get_context().timeout_add(1000, tick)

Completed from an fd watch::

    def on_readable(fd, condition, task):
        task.complete(os.read(fd, 4096))
        return False

    ctx.io_add_watch(fd, qiotask.IO_IN, on_readable, task)

Run in a worker thread (the seed's second example)::

    def listen_worker(task, address):
        sock = socket.create_server(address)   # DNS and bind, off the loop
        return sock                            # becomes the result

    task = qiotask.Task(obj, func)
    task.run_in_thread(listen_worker, ("localhost", 0))
    # func(obj, err, None) later runs on the loop thread;
    # task.get_result() is the socket.

Awaited under asyncio::

    sock = await task

Which thread runs what: the worker runs on a pool thread; ``func``,
done-callbacks and destroy notifiers run on the context thread, in the order
``func`` -> done-callbacks -> worker's destroy -> task's destroy -> result's
destroy, after which the source is released.  An exception from any of them
goes to the context's exception handler (logged) and does not skip the rest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import enum
import logging
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from . import _deadline, _trace
from . import _pool as _pool_module
from ._checks import check_callable, check_duration
from ._context import MainContext, attach, await_hook, get_context
from ._errors import ContextClosedError, TaskCancelled, TaskStateError, TaskTimeout
from ._limiter import Limiter
from ._pool import WorkerPool, default_pool

__all__ = ["Task", "TaskState"]

T = TypeVar("T")
logger = logging.getLogger("qiotask")

TaskFunc = Callable[[Any, "BaseException | None", Any], Any]
DestroyNotify = Callable[[Any], Any]
ProgressFunc = Callable[[Any, float, "float | None", "str | None"], Any]
R = TypeVar("R")
# (worker, opaque, destroy, contextvars or None, abandon_on_cancel, deadline or None)
_ThreadJob = tuple[
    Callable[..., Any], Any, "DestroyNotify | None", "contextvars.Context | None", bool, "_deadline.Deadline | None"
]
_copy_context = contextvars.copy_context
_Future = asyncio.Future


class TaskState(enum.Enum):
    """Where a task is in its life (see DESIGN §4)."""

    #: Created; nothing has completed it and no worker was started.
    PENDING = "pending"
    #: ``run_in_thread`` was called; the worker waits for a pool thread.
    QUEUED = "queued"
    #: The worker is running on a pool thread.
    RUNNING = "running"
    #: The outcome is fixed; the completion is on its way to the context.
    COMPLETING = "completing"
    #: The completion ran (``func``, done-callbacks, destroy notifiers).
    FINISHED = "finished"


# The state as a small int, so that "claimed", "delivered" and "released"
# are comparisons on one field.  _S_DELIVERING: func and the notifiers are
# running; _S_FINISHED: they ran and the source was released.
_S_PENDING, _S_QUEUED, _S_RUNNING, _S_COMPLETING, _S_DELIVERING, _S_FINISHED = range(6)
_PUBLIC_STATE = (
    TaskState.PENDING,
    TaskState.QUEUED,
    TaskState.RUNNING,
    TaskState.COMPLETING,
    TaskState.FINISHED,
    TaskState.FINISHED,
)

# _lock guards, for every task, the moves between states (_s),
# the hand-over of waiters (_waiter, _event) and of done-callbacks
# (_callbacks), and the first-error-wins test of _error.  One lock for all
# tasks: each hold is a few attribute stores, and a lock per task would cost
# an allocation on every task.
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock, _ctl_lock
    _lock = threading.Lock()  # its holder, if any, does not exist here
    _ctl_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
_WORKER_DONE = object()
_NEVER_RAN = object()
_NO_TOKEN: list[bool] = []  # executors: the work starts where we cannot stop it


class _Control:
    """What cancellation, progress and call_in_main need of a task.  A task
    shares _NO_CONTROL (never written) until one of them is first used."""

    __slots__ = ("abandoned", "cancel", "cancel_hooks", "main_calls", "progress", "progress_fns")

    def __init__(self) -> None:
        # The exception a cancel() asked for: once set it is what the
        # completion delivers ("cancel wins").
        self.cancel: TaskCancelled | TaskTimeout | None = None
        self.cancel_hooks: list[Callable[[Any], Any]] | None = None
        # Set when a cancel completed the task while its worker still runs
        # (abandon_on_cancel): (worker destroy, opaque) to run once it returns.
        self.abandoned: tuple[DestroyNotify | None, Any] | None = None
        # call_in_main() requests not served yet (see wait_thread).
        self.main_calls: list[_MainCall] | None = None
        # The latest progress report not yet delivered, and the listeners.
        self.progress: tuple[float, float | None, str | None] | None = None
        self.progress_fns: list[ProgressFunc] | None = None


_NO_CONTROL = _Control()
_ctl_lock = threading.Lock()  # makes a task's own _Control once


class _MainCall:
    """A call_in_main() request: served once, by the loop or by wait_thread."""

    __slots__ = ("args", "done", "error", "fn", "result", "served")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.result: Any = None
        self.error: BaseException | None = None
        self.served = False  # guarded by _lock
        self.done = threading.Event()

    def _dispatch(self) -> None:
        with _lock:
            if self.served:
                return
            self.served = True
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:
            self.error = exc
        self.done.set()

    def _context_closed(self, context: MainContext) -> None:
        with _lock:
            if self.served:
                return
            self.served = True
        self.error = ContextClosedError(f"call_in_main(): context {context.name!r} is gone")
        self.done.set()  # what a pool job returns for a worker cancelled while queued


_monotonic = time.monotonic

_count_created = _trace.count_created
_count_completed = _trace.count_completed
_count_failed = _trace.count_failed
_listeners = _trace.has_listeners
_debug_enabled = _trace.logger.isEnabledFor
_DEBUG = logging.DEBUG


class Task(Generic[T]):
    """One background operation on ``source``, reported on the loop thread.

    Args:
        source: the object the operation works on; kept alive until the task
            has finished, then released.
        func: ``func(source, err, opaque)``, called once on the context
            thread; ``err`` is None on success, else the exception.
        opaque: passed to ``func`` and ``destroy``.
        destroy: ``destroy(opaque)``, called once after ``func``.
        context: the :class:`MainContext` (or a loop object accepted by
            :func:`qiotask.attach`); by default :func:`qiotask.get_context`.
        name: a name for logs, traces and warnings.

    Raises:
        TypeError: ``func`` or ``destroy`` is not callable, ``name`` is not a
            str, or ``context`` is not a context or loop.
    """

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_context",
        "_ctl",
        "_destroy",
        "_error",
        "_event",
        "_func",
        "_id",
        "_name",
        "_opaque",
        "_propagated",
        "_result",
        "_result_destroy",
        "_retrieved",
        "_s",
        "_source",
        "_start_token",
        "_thread",
        "_traced",
        "_waiter",
    )

    def __init__(
        self,
        source: Any,
        func: TaskFunc | None = None,
        opaque: Any = None,
        destroy: DestroyNotify | None = None,
        *,
        context: Any = None,
        name: str | None = None,
    ) -> None:
        check_callable(func, "Task", "func", optional=True)
        check_callable(destroy, "Task", "destroy", optional=True)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"Task: name must be a str or None, not {type(name).__name__}")
        if context is None:
            context = get_context()
        elif not isinstance(context, MainContext):
            context = attach(context)
        self._context: MainContext = context
        self._name = name
        self._source = source
        self._func = func
        self._opaque = opaque
        self._destroy = destroy
        self._result: Any = None
        self._result_destroy: DestroyNotify | None = None
        self._error: BaseException | None = None
        self._propagated = False
        self._callbacks: list[Callable[[Task[T]], Any] | asyncio.Future[Any]] | None = None
        # (worker, opaque, destroy, contextvars) once run_in_thread was called.
        self._thread: _ThreadJob | None = None
        self._waiter: queue.SimpleQueue[object] | None = None
        self._event: threading.Event | None = None
        # Cancellation, progress and call_in_main state: a shared empty one
        # until first used, so that plain tasks pay one store for all of it.
        self._ctl: _Control = _NO_CONTROL
        self._traced = _listeners() or _debug_enabled(_DEBUG)
        self._id = _count_created()
        self._s = _S_PENDING  # last: from here on __del__ checks completion
        if self._traced:
            _trace.emit("qio_task_new", self, source=source, func=func, opaque=opaque)

    # -- introspection ------------------------------------------------------

    @property
    def state(self) -> TaskState:
        """The task's :class:`TaskState`."""
        return _PUBLIC_STATE[self._s]

    @property
    def name(self) -> str:
        """The task's name (``Task-<n>`` unless one was given)."""
        return self._name if self._name is not None else f"Task-{self._id}"

    @name.setter
    def name(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Task.name must be a str, not {type(value).__name__}")
        self._name = value

    @property
    def context(self) -> MainContext:
        """The main context whose thread runs the completion."""
        return self._context

    def done(self) -> bool:
        """Whether the completion has run (True from the moment ``func`` is
        called, as a Future is done inside its callbacks)."""
        return self._s >= _S_DELIVERING

    def get_source(self) -> Any:
        """The source object.

        Raises:
            TaskStateError: the task finished and released its source.
        """
        if self._s == _S_FINISHED:
            raise TaskStateError(f"task {self.name!r} has finished and released its source")
        return self._source

    def __repr__(self) -> str:
        return f"<Task {self.name!r} {self.state.value}>"

    # -- results and errors -------------------------------------------------

    def set_error(self, err: BaseException) -> None:
        """Record ``err`` as the task's error, unless one is already set
        (the first error wins).  Any thread may call it before completion.

        Raises:
            TypeError: ``err`` is not an exception instance.
            TaskStateError: the task's outcome is already fixed.
        """
        _check_exception(err, "set_error")
        with _lock:
            if self._s >= _S_COMPLETING:
                raise TaskStateError(f"task {self.name!r} is already completed; set_error() must come before")
            if self._error is None:
                self._error = err

    def exception(self) -> BaseException | None:
        """The task's error (the one ``func`` got), or None; it does not use
        up :meth:`propagate_error`'s answer."""
        err = self._error
        if err is not None:
            self._retrieved = True
        return err

    def had_error(self) -> bool:
        """Whether an error was recorded."""
        if self._error is None:
            return False
        self._retrieved = True
        return True

    def propagate_error(self) -> BaseException | None:
        """Return the error the first time it is asked for, then None.

        Asking before any error was recorded returns None and does not use
        up the answer.  The error stays the task's (``had_error()``, ``await``).
        """
        with _lock:
            if self._error is None:
                return None
            self._retrieved = True
            if self._propagated:
                return None
            self._propagated = True
            return self._error

    def set_result(self, value: T, destroy: DestroyNotify | None = None) -> None:
        """Record the result; ``destroy(value)`` runs once the task finished
        (or at once, if a later ``set_result`` replaces the value).

        Raises:
            TypeError: ``destroy`` is not callable.
            TaskStateError: the task's outcome is already fixed.
        """
        check_callable(destroy, "set_result", "destroy", optional=True)
        with _lock:
            if self._s >= _S_COMPLETING:
                raise TaskStateError(f"task {self.name!r} is already completed; set_result() must come before")
            old, old_destroy = self._result, self._result_destroy
            self._result, self._result_destroy = value, destroy
        if old_destroy is not None:
            self._notify(old_destroy, old, "result destroy notifier")

    def get_result(self) -> T:
        """The result: the worker's return value, ``complete(result)``'s
        argument or ``set_result``'s value; None if there is none.  It stays
        readable after the task finished."""
        return self._result  # type: ignore[no-any-return]

    # -- completing ---------------------------------------------------------

    def complete(self, result: T | None = None) -> None:
        """Mark the operation as done.

        On the context thread, ``func`` and the notifiers run before this
        returns; from another thread the completion is handed to the context.
        A ``result`` of None keeps a result set before.  If an error was set,
        it is what ``func`` receives.

        Raises:
            TaskStateError: the task was already completed, or a worker owns
                its completion.
        """
        self._claim("complete")
        if result is not None:
            self._replace_result(result)
        self._hand_over()

    def _replace_result(self, value: Any) -> None:
        # A new result (by complete() or the worker) replaces one set before:
        # the old one's destroy notifier runs now.  Only the completing
        # thread calls this, once the outcome is claimed: no lock.
        old, old_destroy = self._result, self._result_destroy
        self._result, self._result_destroy = value, None
        if old_destroy is not None:
            self._notify(old_destroy, old, "result destroy notifier")

    def abort(self, err: BaseException) -> None:
        """Mark the operation as failed with ``err`` (unless an error was set
        before: the first one wins).  Threads as :meth:`complete`.

        Raises:
            TypeError: ``err`` is not an exception instance.
            TaskStateError: as :meth:`complete`.
        """
        _check_exception(err, "abort")
        self._claim("abort", err)
        self._hand_over()

    def _claim(self, what: str, err: BaseException | None = None) -> None:
        with _lock:
            state = self._s
            if state >= _S_COMPLETING:
                raise TaskStateError(
                    f"task {self.name!r} is already completed; complete() and abort() may be called once"
                )
            if state != _S_PENDING:
                raise TaskStateError(
                    f"task {self.name!r} runs a worker; it completes when the worker returns, not by {what}()"
                )
            self._s = _S_COMPLETING
            if err is not None and self._error is None:
                self._error = err

    def _hand_over(self) -> None:
        context = self._context
        if context.is_owner():
            if context.closed:
                self._context_closed(context)
            else:
                self._deliver()
        else:
            if self._traced:
                _trace.emit("qio_task_thread_source_attach", self, context=self._context)
            self._context.post(self)

    # The dispatcher protocol (see _context.Dispatchable).

    def _context_closed(self, context: MainContext) -> None:
        if self._s >= _S_DELIVERING:
            return  # already completed inline (wait_thread): nothing was lost
        cause = self._error
        error = ContextClosedError(
            f"task {self.name!r}: context {context.name!r} closed before its completion ran; func was not called"
        )
        error.__cause__ = cause
        self._error = error
        logger.warning("task %r finished with ContextClosedError: its context %r is gone", self.name, context.name)
        self._deliver(call_func=False)

    def _deliver(self, call_func: bool = True) -> None:
        """Run the completion: func, done-callbacks, destroy notifiers."""
        with _lock:
            if self._s >= _S_DELIVERING:
                return
            self._s = _S_DELIVERING
            # From here on add_done_callback() schedules instead of appending.
            callbacks, self._callbacks = self._callbacks, None
            ctl = self._ctl
            if ctl.cancel is not None:
                self._error = ctl.cancel  # cancel wins
        err = self._error
        if ctl.progress is not None:
            self._deliver_progress()  # the last report comes before the completion
        thread = self._thread
        if self._traced:
            if thread is not None:
                _trace.emit("qio_task_thread_result", self, err=err)
            if err is None:
                _trace.emit("qio_task_complete", self, result=self._result)
            else:
                _trace.emit("qio_task_abort", self, err=err)
        pending: BaseException | None = None
        func = self._func
        if err is not None and ((func is not None and call_func) or callbacks):
            self._retrieved = True  # someone was told
        if func is not None and call_func:
            try:
                func(self._source, err, self._opaque)
            except Exception as exc:
                self._context.report_exception(f"exception in completion callback {func!r} of task {self.name!r}", exc)
            except BaseException as exc:
                pending = exc
        if callbacks:
            for cb in callbacks:
                if isinstance(cb, _Future):  # an awaiting coroutine (see __await__)
                    _resolve_soon(cb)
                else:
                    pending = self._notify(cb, self, "done-callback") or pending
        if thread is not None and thread[2] is not None and ctl.abandoned is None:
            pending = self._notify(thread[2], thread[1], "worker destroy notifier") or pending
        if self._destroy is not None:
            pending = self._notify(self._destroy, self._opaque, "destroy notifier") or pending
        if self._result_destroy is not None:
            pending = self._notify(self._result_destroy, self._result, "result destroy notifier") or pending
        if not call_func and not self._context.is_owner():
            # Completed off its thread because the loop is gone: let the
            # context decide where the last references die.
            self._context._adopt((self._source, func, self._opaque, self._destroy, thread, callbacks))
        callbacks = None
        # Release everything but the outcome.
        self._source = self._func = self._opaque = self._destroy = None
        self._thread = self._result_destroy = None
        # No lock for the hand-over to wait(): publish the state, then look
        # for an event; wait() publishes its event, then looks at the state.
        self._s = _S_FINISHED
        event = self._event
        if err is None:
            _count_completed()
        else:
            _count_failed()
        if event is not None:
            event.set()
        if pending is not None:
            raise pending

    # The dispatcher protocol: a queued completion runs as _deliver().
    _dispatch = _deliver

    def _notify(self, fn: Callable[..., Any], arg: Any, what: str, *more: Any) -> BaseException | None:
        """Call a user callback; report what it raises; never raise, but hand
        back a KeyboardInterrupt or SystemExit to re-raise once all ran."""
        try:
            fn(arg, *more)
        except Exception as exc:
            self._context.report_exception(f"exception in {what} {fn!r} of task {self.name!r}", exc)
        except BaseException as exc:
            return exc
        return None

    def _own_ctl(self) -> _Control:
        """The task's own _Control, made on first use (never call with
        _lock held: making it takes _ctl_lock)."""
        ctl = self._ctl
        if ctl is _NO_CONTROL:
            with _ctl_lock:
                ctl = self._ctl
                if ctl is _NO_CONTROL:
                    ctl = self._ctl = _Control()
        return ctl

    # -- progress -------------------------------------------------------------

    def report_progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """From the worker (any thread): tell the loop how far the work is.

        Deliveries are coalesced: the latest report wins, at most one
        delivery per loop iteration, and the last report is always delivered
        before the completion.  Cheap to call often.

        Raises:
            TypeError: ``done``/``total`` not numbers, ``message`` not a str.
            ValueError: ``done`` negative, or ``total`` negative.
        """
        if not isinstance(done, (int, float)) or isinstance(done, bool):
            raise TypeError(f"report_progress: done must be a number, not {type(done).__name__}")
        if total is not None and (not isinstance(total, (int, float)) or isinstance(total, bool)):
            raise TypeError(f"report_progress: total must be a number or None, not {type(total).__name__}")
        if message is not None and not isinstance(message, str):
            raise TypeError(f"report_progress: message must be a str or None, not {type(message).__name__}")
        if done < 0 or (total is not None and total < 0):
            raise ValueError(f"report_progress: done and total must not be negative, got {done}, {total}")
        # The report that finds none pending posts the delivery; later ones
        # only replace it (latest wins) until the loop has taken it.
        ctl = self._own_ctl()
        with _lock:
            previous, ctl.progress = ctl.progress, (done, total, message)
            post = previous is None and ctl.progress_fns is not None
        if post:
            self._context.call_soon(self._deliver_progress)

    def connect_progress(self, fn: ProgressFunc) -> None:
        """Call ``fn(task, done, total, message)`` on the context thread for
        the progress reports (coalesced, see :meth:`report_progress`).

        Raises:
            TypeError: ``fn`` is not callable.
        """
        check_callable(fn, "connect_progress")
        ctl = self._own_ctl()
        with _lock:
            ctl.progress_fns = [*(ctl.progress_fns or ()), fn]
        if ctl.progress is not None:
            self._context.call_soon(self._deliver_progress)

    def _deliver_progress(self) -> None:
        # On the context thread: the latest report, once.
        ctl = self._ctl
        with _lock:
            report, ctl.progress = ctl.progress, None
        if report is None:
            return
        for fn in ctl.progress_fns or ():
            self._notify(fn, self, "progress callback", *report)

    # -- calls back to the loop ------------------------------------------------

    def call_in_main(self, fn: Callable[..., R], *args: Any) -> R:
        """From the worker: run ``fn(*args)`` on the context thread and
        return its result (or raise its exception) here.

        Served by the loop, or -- when the context thread sits in
        :meth:`wait_thread` for this task -- by that wait, so the two cannot
        deadlock.

        Raises:
            TaskStateError: called on the context thread itself.
            ContextClosedError: the context's loop is gone.
            Exception: whatever ``fn`` raised.
        """
        check_callable(fn, "call_in_main")
        if self._context.is_owner():
            raise TaskStateError(
                f"task {self.name!r}: call_in_main() from the context thread itself; call the function directly"
            )
        call: _MainCall = _MainCall(fn, args)
        # Publish the call, then look for a waiter (wait_thread publishes
        # its waiter, then looks at the calls): one of the two sees it.
        ctl = self._own_ctl()
        with _lock:
            ctl.main_calls = [*(ctl.main_calls or ()), call]
        waiter = self._waiter
        if waiter is not None:
            waiter.put(call)
        self._context.post(call)
        call.done.wait()
        with _lock:
            if ctl.main_calls is not None and call in ctl.main_calls:
                ctl.main_calls.remove(call)
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[no-any-return]

    # -- executors --------------------------------------------------------------

    def run_in_executor(self, executor: concurrent.futures.Executor, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in any ``concurrent.futures.Executor`` -- a
        process pool, or a Dask ``distributed`` client's executor -- and
        complete the task with its outcome on the context thread.

        ``fn`` and ``args`` must be picklable for process and cluster
        executors.  :meth:`cancel` maps to the future's ``cancel()``: a call
        that has not started never runs; one running completes the task with
        :class:`TaskCancelled` when it ends (cancel wins).

        Raises:
            TypeError: ``executor`` has no ``submit``, ``fn`` not callable.
            TaskStateError: the task already runs a worker or was completed.
            Exception: whatever ``executor.submit`` raises (e.g. shut down).
        """
        if not callable(getattr(executor, "submit", None)):
            raise TypeError(f"run_in_executor: executor must have submit(), not {type(executor).__name__}")
        check_callable(fn, "run_in_executor")
        with _lock:
            if self._s != _S_PENDING:
                raise TaskStateError(
                    f"task {self.name!r} is {self.state.value}; run_in_executor() may be called once, before completion"
                )
            self._s = _S_RUNNING  # queued or running in the executor: it does not say
        self._thread = (fn, None, None, None, False, None)
        try:
            future = executor.submit(fn, *args)
        except BaseException:
            with _lock:
                self._s = _S_PENDING
            self._thread = None
            raise
        self.on_cancel(lambda task: future.cancel())
        future.add_done_callback(self._future_done)

    def _future_done(self, future: concurrent.futures.Future[Any]) -> None:
        # On whatever thread the executor completes futures on.
        if future.cancelled():
            self._worker_done(None, TaskCancelled(f"task {self.name!r} was cancelled in its executor"))
            return
        exc = future.exception()
        self._worker_done(None if exc is not None else future.result(), exc)

    # -- cancellation ---------------------------------------------------------

    def cancel(self) -> bool:
        """Ask the task to stop; safe from any thread.

        Cancel wins: from now on the task completes with
        :class:`TaskCancelled`, whatever its worker returns.  The hooks added
        with :meth:`on_cancel` run now, as ``fn(task)``, in this thread.
        A worker still queued never starts: the task completes now (on the
        context thread, before this returns; from another thread, handed
        over).  A running worker sees :meth:`cancelled`; with
        ``abandon_on_cancel`` the task completes now and the worker's late
        result is dropped.  A task with no worker completes with
        :class:`TaskCancelled` when its owner completes it.

        Returns:
            True if this call asked for the cancel; False if the task was
            already cancelled or completed.
        """
        return self._ask_cancel(TaskCancelled(f"task {self.name!r} was cancelled"))

    def _time_out(self) -> None:
        # On the deadline thread.
        where = "while queued" if self._s == _S_QUEUED else "while running"
        self._ask_cancel(TaskTimeout(f"task {self.name!r} timed out {where}"))

    def _ask_cancel(self, reason: TaskCancelled | TaskTimeout) -> bool:
        ctl = self._own_ctl()
        with _lock:
            state = self._s
            if ctl.cancel is not None or state >= _S_COMPLETING:
                return False
            ctl.cancel = reason
            hooks, ctl.cancel_hooks = ctl.cancel_hooks, None
            thread = self._thread
            claim = False
            if thread is not None:
                try:
                    # Whoever pops the start token first decides: we did, so
                    # the queued worker will never start.
                    getattr(self, "_start_token", _NO_TOKEN).pop()
                    claim = True
                except IndexError:  # the worker has started (or runs elsewhere)
                    if thread[4]:
                        claim = True
                        ctl.abandoned = (thread[2], thread[1])
            if claim:
                self._s = _S_COMPLETING
        if hooks:
            for fn in hooks:
                self._notify(fn, self, "cancel hook")
        if claim:
            if thread is not None and thread[5] is not None:
                thread[5].cancel()
            waiter = self._waiter
            if waiter is not None:
                waiter.put(_WORKER_DONE)  # wait_thread() returns: the task completed
            self._hand_over()
        return True

    def cancelled(self) -> bool:
        """Whether a cancel (or timeout) was asked; workers poll this."""
        return self._ctl.cancel is not None

    def raise_if_cancelled(self) -> None:
        """For cooperative workers: raise the cancel's exception if asked.

        Raises:
            TaskCancelled: the task was cancelled (TaskTimeout if it timed
                out).
        """
        reason = self._ctl.cancel
        if reason is not None:
            raise reason

    def on_cancel(self, fn: Callable[[Task[T]], Any]) -> None:
        """Call ``fn(task)`` when a cancel is asked, in the cancelling thread
        (at once, here, if it was asked already) -- e.g. to close the socket
        a worker blocks on.  Not called if the task completes uncancelled.

        Raises:
            TypeError: ``fn`` is not callable.
        """
        check_callable(fn, "on_cancel")
        ctl = self._own_ctl()
        with _lock:
            if ctl.cancel is None:
                if ctl.cancel_hooks is None:
                    ctl.cancel_hooks = [fn]
                else:
                    ctl.cancel_hooks.append(fn)
                return
        self._notify(fn, self, "cancel hook")

    # -- done-callbacks and waiting ------------------------------------------

    def add_done_callback(self, fn: Callable[[Task[T]], Any]) -> None:
        """Call ``fn(task)`` on the context thread after ``func``.

        If the completion has started already, ``fn`` is scheduled on the
        context thread (or, if that context is closed, called at once here).

        Raises:
            TypeError: ``fn`` is not callable.
        """
        check_callable(fn, "add_done_callback")
        with _lock:
            if self._s < _S_DELIVERING:
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        # Like a Future's: a callback added once the completion started runs
        # later on the context thread, after func and the callbacks before it.
        self._context._call_soon_once(self._notify, fn, self, "done-callback")

    def wait(self, timeout: float | None = None) -> bool:
        """From a thread other than the context's: block until the task has
        finished (its completion ran).

        Returns:
            True if finished, False if ``timeout`` seconds passed first.

        Raises:
            TaskStateError: called on the context thread, where it would
                block the loop that has to run the completion.
        """
        if self._s == _S_FINISHED:
            return True
        if self._context.is_owner() and not self._context.closed:
            raise TaskStateError(
                f"task {self.name!r}: wait() on the context thread would deadlock; await it or use wait_thread()"
            )
        with _lock:  # several waiters share one event
            event = self._event
            if event is None:
                event = self._event = threading.Event()
        # Publish the event, then look at the state (see _deliver).
        if self._s == _S_FINISHED:
            return True
        return event.wait(timeout)

    # -- threads --------------------------------------------------------------

    def run_in_thread(
        self,
        worker: Callable[[Task[T], Any], T],
        opaque: Any = None,
        destroy: DestroyNotify | None = None,
        *,
        pool: WorkerPool | None = None,
        copy_context: bool = True,
        timeout: float | None = None,
        abandon_on_cancel: bool = False,
        priority: int = 0,
        limiter: Limiter | None = None,
    ) -> None:
        """Run ``worker(task, opaque)`` on a pool thread; complete with its
        outcome on the context thread.

        The return value becomes the result (None keeps one set before); an
        exception the worker raises becomes the error, traceback included.
        ``destroy(opaque)`` runs on the context thread after ``func`` and the
        done-callbacks.  With ``copy_context`` (the default) the worker runs
        in a copy of the caller's contextvars, as ``asyncio.to_thread`` does.

        ``timeout`` (seconds) is a :meth:`cancel` with a reason: the task
        completes with :class:`TaskTimeout`, saying whether the deadline
        passed while the worker was queued or running.  With
        ``abandon_on_cancel`` a cancel (or timeout) of a running worker
        completes the task at once and drops the worker's late result; the
        worker's ``destroy(opaque)`` then runs once the worker has returned,
        and the pool counts the thread busy until then.

        ``priority``: queued workers start highest priority first, first come
        first served within one.  ``limiter``: a :class:`qiotask.Limiter`
        capping how many workers of its kind run at once; the task waits,
        queued, for a slot (no pool thread waits).

        Raises:
            TypeError: ``worker``/``destroy`` not callable, ``pool`` not a
                WorkerPool, ``timeout`` not a number, ``priority`` not an
                int, ``limiter`` not a Limiter.
            ValueError: ``timeout`` negative.
            TaskStateError: the task already runs a worker or was completed.
            RuntimeError: the pool was shut down.
        """
        check_callable(worker, "run_in_thread", "worker")
        check_callable(destroy, "run_in_thread", "destroy", optional=True)
        if pool is None:
            pool = _pool_module._default_pool
            if pool is None or pool._shutdown:
                pool = default_pool()
        elif not isinstance(pool, WorkerPool):
            raise TypeError(f"run_in_thread: pool must be a WorkerPool, not {type(pool).__name__}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"run_in_thread: priority must be an int, not {type(priority).__name__}")
        if limiter is not None and not isinstance(limiter, Limiter):
            raise TypeError(f"run_in_thread: limiter must be a qiotask.Limiter, not {type(limiter).__name__}")
        check_duration(timeout, "run_in_thread", optional=True)
        with _lock:
            if self._s != _S_PENDING:
                raise TaskStateError(
                    f"task {self.name!r} is {self.state.value}; run_in_thread() may be called once, before completion"
                )
            self._s = _S_QUEUED
        deadline = None
        if timeout is not None:
            deadline = _deadline.call_at(_monotonic() + timeout, self._time_out)
        self._thread = (worker, opaque, destroy, _copy_context() if copy_context else None, abandon_on_cancel, deadline)
        self._start_token = [True]
        if self._traced:
            _trace.emit("qio_task_thread_start", self, worker=worker, opaque=opaque)
        try:
            if limiter is not None:
                limiter._submit(pool, self._run_worker, self._worker_done, priority)
            elif priority:
                pool.submit(self._run_worker, self._worker_done, priority)
            else:
                pool.submit(self._run_worker, self._worker_done)
        except BaseException:
            if deadline is not None:
                deadline.cancel()
            with _lock:
                self._s = _S_PENDING
            self._thread = None
            raise

    def _run_worker(self) -> Any:
        # On a pool thread.
        try:
            # One atomic pop decides between this start and a cancel of the
            # queued worker (cheaper than the lock on every job).
            self._start_token.pop()
        except IndexError:
            return _NEVER_RAN  # cancelled while queued: it completed already
        self._s = _S_RUNNING
        if self._traced:
            _trace.emit("qio_task_thread_run", self)
        worker, opaque, _, ctx, _, _ = self._thread  # type: ignore[misc]
        if ctx is not None:
            return ctx.run(worker, self, opaque)
        return worker(self, opaque)

    def _worker_done(self, result: Any, exc: BaseException | None) -> None:
        # On the pool thread, right after the worker returned or raised.
        if result is _NEVER_RAN:
            return
        if self._traced:
            _trace.emit("qio_task_thread_exit", self, result=result, err=exc)
        thread = self._thread
        if thread is not None and thread[5] is not None:
            thread[5].cancel()  # the deadline
        abandoned = self._ctl.abandoned
        if abandoned is not None:
            # A cancel completed the task while this worker ran: its outcome
            # is dropped; only its destroy notifier is left to run.
            destroy, opaque = abandoned
            if destroy is not None:
                self._context._call_soon_once(self._notify, destroy, opaque, "worker destroy notifier")
            return
        if exc is not None:
            with _lock:
                if self._error is None:
                    self._error = exc
        elif result is not None:
            self._replace_result(result)  # the worker's value replaces one it set before
        if thread is not None and thread[4]:
            # abandon_on_cancel: a cancel may take the completion over at any
            # moment; decide under the lock which of the two completes.
            with _lock:
                if self._ctl.abandoned is not None:
                    return
                self._s = _S_COMPLETING
        else:
            # Otherwise only this thread completes a running task (a cancel
            # just sets the flag), so no lock.  The hand-over to
            # wait_thread(): this thread publishes the state, then looks for
            # a waiter; wait_thread() publishes its waiter, then looks at the
            # state.  One of the two sees the other's store.
            self._s = _S_COMPLETING
        waiter = self._waiter
        if waiter is not None:
            waiter.put(_WORKER_DONE)
        if self._traced:
            _trace.emit("qio_task_thread_source_attach", self, context=self._context)
        self._context.post(self)

    def wait_thread(self) -> None:
        """On the context thread: block until the worker has returned, then
        run the completion here, now (once: the completion already posted to
        the loop will find nothing left to do).

        Returns at once if the completion already ran.

        Raises:
            TaskStateError: called off the context thread, or the task has no
                worker.
        """
        if not self._context.is_owner():
            raise TaskStateError(f"task {self.name!r}: wait_thread() must be called on its context thread")
        with _lock:
            if self._s >= _S_DELIVERING:
                return
            if self._thread is None:
                raise TaskStateError(f"task {self.name!r} has no worker thread to wait for")
        if self._s < _S_COMPLETING:
            # Publish the waiter, then look at the state (see _worker_done)
            # and at the calls to the loop the worker made meanwhile (see
            # call_in_main): this thread is the loop, serving them is its job.
            waiter: queue.SimpleQueue[object] = queue.SimpleQueue()
            self._waiter = waiter
            for call in self._ctl.main_calls or ():
                call._dispatch()
            if self._s < _S_COMPLETING:
                while (item := waiter.get()) is not _WORKER_DONE:
                    if isinstance(item, _MainCall):
                        item._dispatch()
        if self._traced:
            _trace.emit("qio_task_thread_source_cancel", self)
        self._deliver()

    # -- awaiting -------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, T]:
        """``await task`` under asyncio or trio: the result, or the error raised.

        Raises:
            RuntimeError: neither an asyncio loop nor a trio run is running
                in this thread.
        """
        loop = asyncio._get_running_loop()
        if loop is None:
            # trio (or another loop with an await hook); its wait is a
            # checkpoint even for a finished task, as its own awaitables are.
            wait = await_hook()
            if wait is None:
                raise RuntimeError("await task: no asyncio event loop or trio run is running in this thread")
            yield from wait(self).__await__()
            return self._outcome()
        if self._s < _S_DELIVERING:
            future = loop.create_future()
            with _lock:
                if self._s < _S_DELIVERING:
                    # The future itself goes on the callback list: _deliver
                    # resolves it without a wrapper function per await.
                    if self._callbacks is None:
                        self._callbacks = [future]
                    else:
                        self._callbacks.append(future)
                else:
                    _resolve(future)
            yield from future
        return self._outcome()

    def _outcome(self) -> T:
        if self._error is not None:
            self._retrieved = True
            raise self._error
        return self._result  # type: ignore[no-any-return]

    # -- leaks ----------------------------------------------------------------

    def __del__(self) -> None:
        state = getattr(self, "_s", None)
        if state is None:
            return  # __init__ failed: there never was a task
        if state == _S_FINISHED:
            if self._error is not None and not getattr(self, "_retrieved", False):
                # Like asyncio's "exception was never retrieved": nobody had
                # a func, a done-callback or an await to hear of it.
                logger.error("task %r failed and nobody retrieved its error", self.name, exc_info=self._error)
            return
        if state < _S_COMPLETING:
            # Counted as failed: it will never finish, and "pending" means
            # tasks that still can.
            _count_failed()
            warnings.warn(
                f"task {self.name!r} was garbage-collected without completing; "
                "its callback and destroy notifiers never ran",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )


def _resolve_soon(future: asyncio.Future[Any]) -> None:
    """Wake an awaiting coroutine from the task's context thread."""
    loop = future.get_loop()
    if asyncio._get_running_loop() is loop:
        _resolve(future)
    else:
        try:
            loop.call_soon_threadsafe(_resolve, future)
        except RuntimeError:
            pass  # the awaiting loop is closed: nobody is left to wake


def _resolve(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


def _check_exception(err: Any, where: str) -> None:
    if not isinstance(err, BaseException):
        raise TypeError(f"{where}: err must be an exception instance, not {type(err).__name__}")
