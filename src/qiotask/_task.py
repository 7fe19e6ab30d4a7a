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

import concurrent.futures
import logging
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _executor, _points, _progress, _stream, _threadjob, _trace
from ._adapters import async_adapter, no_framework
from ._checks import check_callable, check_duration, check_sync, wait_timeout
from ._context import MainContext, attach, get_context, supported_loops
from ._delivery import ask_cancel, context_closed, deliver, hand_over, notify, reraise, time_out
from ._errors import TaskStateError
from ._limiter import Limiter
from ._outcome import DestroyNotify as DestroyNotify
from ._pool import WorkerPool
from ._progress import DEFAULT_MAX_RATE, ProgressFunc
from ._state import (
    COMPLETING,
    DELIVERING,
    FINISHED,
    NO_CONTROL,
    PENDING,
    PUBLIC_STATE,
    STRIPES,
    TaskCore,
    TaskState,
    _holds,
)

__all__ = ["Task", "TaskState"]

if TYPE_CHECKING:
    # For type checkers only (PEP 696): a task whose result type nothing
    # says -- ``Task(source, func)`` -- is a ``Task[Any]``, not an error
    # asking for an annotation.  At run time a plain TypeVar, so that
    # qiotask needs no typing_extensions and ``Task[int]`` works on 3.10.
    from typing_extensions import TypeVar as _DefaultTypeVar

    T = _DefaultTypeVar("T", default=Any)
else:
    T = TypeVar("T")
R = TypeVar("R")
logger = logging.getLogger("qiotask")

TaskFunc = Callable[[Any, "BaseException | None", Any], Any]

_STRIPE_MASK = STRIPES - 1
_count_created = _trace.count_created
_count_failed = _trace.count_failed
_debug_enabled = _trace.logger.isEnabledFor
# logging keeps each logger's isEnabledFor answers in a dict, level -> bool,
# and empties it (in place) whenever a level changes: a lookup there is a C
# call where isEnabledFor is a Python one.  None: not known yet (or no such
# cache in this Python), ask isEnabledFor.
_debug_known: Callable[[int], bool | None] = getattr(_trace.logger, "_cache", {}).get
_DEBUG = logging.DEBUG


class Task(TaskCore, Generic[T]):
    """One background operation on ``source``, reported on the loop thread.

    Args:
        source: the object the operation works on; kept alive until the task
            has finished, then released.
        func: ``func(source, err, opaque)``, called once on the context
            thread; ``err`` is None on success, else the exception.
        opaque: passed to ``func`` and ``destroy``.
        destroy: ``destroy(opaque)``, called once after ``func``.
        context: the :class:`MainContext` (or a loop object accepted by
            :func:`qiotask.attach`); by default :func:`qiotask.get_context`,
            which warns (``RuntimeWarning``) when that is the default
            context stranded: made in a thread with no loop while the main
            thread runs another loop than the default one.
        name: a name for logs, traces and warnings.

    Raises:
        TypeError: ``func`` or ``destroy`` is not callable, ``name`` is not a
            str, or ``context`` is not a context or loop.

    Every change of the task's state is one locked step of ``qiotask._state``
    (which thread makes which is listed there and in docs/tasks.md); the
    methods below are its public face.
    """

    __slots__ = ("__weakref__",)

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
        if (func is not None and not callable(func)) or (destroy is not None and not callable(destroy)):
            check_callable(func, "Task", "func", optional=True)
            check_callable(destroy, "Task", "destroy", optional=True)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"Task: name must be a str or None, not {type(name).__name__}")
        if context is None:
            context = get_context()
        elif not isinstance(context, MainContext):
            try:
                context = attach(context)
            except TypeError:
                raise TypeError(
                    f"Task: context must be a qiotask.MainContext or a loop object ({supported_loops()}), "
                    f"not {type(context).__name__}"
                ) from None
        self._context = context
        self._name = name
        self._source = source
        self._func = func
        self._opaque = opaque
        self._destroy = destroy
        self._result = None
        self._result_destroy = None
        self._error = None
        self._propagated = False
        self._retrieved = False
        self._callbacks = None
        self._job = None
        self._waiter = None
        self._event = None
        # Cancellation, progress and call_in_main state: a shared empty one
        # until first used, so that plain tasks pay one store for all of it.
        self._ctl = NO_CONTROL
        # Read the listener tuple directly: a call per task costs more.
        debug = _debug_known(_DEBUG)
        if debug is None:
            debug = _debug_enabled(_DEBUG)
        self._traced = debug or bool(_trace._listeners)
        self._id = number = _count_created()
        self._lock = _holds[number & _STRIPE_MASK]
        self._s = PENDING  # last: from here on __del__ checks completion
        if self._traced:
            _trace.emit("qio_task_new", self, source=source, func=func, opaque=opaque)

    # -- introspection ------------------------------------------------------

    @property
    def state(self) -> TaskState:
        """The task's :class:`TaskState`."""
        return PUBLIC_STATE[self._s]

    @property
    def context(self) -> MainContext:
        """The main context whose thread runs the completion."""
        return self._context

    def done(self) -> bool:
        """Whether the completion has run (True from the moment ``func`` is
        called, as a Future is done inside its callbacks)."""
        return self._s >= DELIVERING

    def get_source(self) -> Any:
        """The source object.

        Raises:
            TaskStateError: the task finished and released its source.
        """
        with self._lock:  # the finish step drops the source and moves the state together
            if self._s == FINISHED:
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
        self._move_set_error(err)

    def exception(self) -> BaseException | None:
        """The task's error (the one ``func`` got), or None; it does not use
        up :meth:`propagate_error`'s answer."""
        err = self._error
        if err is not None:
            self._retrieved = True
        return err

    def had_error(self) -> bool:
        """Whether an error was recorded."""
        return self.exception() is not None

    def propagate_error(self) -> BaseException | None:
        """Return the error the first time it is asked for, then None.

        Asking before any error was recorded returns None and does not use
        up the answer.  The error stays the task's (``had_error()``, ``await``).
        """
        return self._move_propagate_error()

    def set_result(self, value: T, destroy: DestroyNotify | None = None) -> None:
        """Record the result; ``destroy(value)`` runs once the task finished
        (or at once, here, if a later result replaces the value).

        Raises:
            TypeError: ``destroy`` is not callable.
            TaskStateError: the task's outcome is already fixed.
        """
        check_callable(destroy, "set_result", "destroy", optional=True)
        released = self._move_set_result(value, destroy)
        if released is not None:
            reraise(notify(self, released[1], "result destroy notifier", released[0]))  # type: ignore[arg-type]

    def get_result(self) -> T | None:
        """The result as it stands, QEMU's ``qio_task_get_result_pointer``:
        the worker's return value, ``complete(result)``'s argument or
        ``set_result``'s value; None if there is none -- before the
        completion, after an error or a cancel, or when the task completed
        without one.  It stays readable after the task finished.  Any thread.

        Typed ``T | None`` because it can be None whatever ``T`` is; in
        ``func`` (or a done-callback) of a task known to have succeeded,
        :meth:`result` returns a plain ``T``.
        """
        return self._result  # type: ignore[no-any-return]

    def result(self) -> T:
        """The outcome once the task completed, as ``Future.result()``: the
        result (None if the task completed without one), or the task's
        error raised.  For ``func`` and done-callbacks, where the task is
        done; any thread.

        Raises:
            TaskStateError: the task has not completed yet (its completion
                has not started to run); await it, or wait() for it.
            BaseException: the task's error (TaskCancelled after a cancel).
        """
        if self._s < DELIVERING:
            raise TaskStateError(
                f"task {self.name!r} has not completed; result() is for func, a done-callback or after wait() "
                "(await the task to wait for it, or use get_result(), which returns None until then)"
            )
        return self._outcome()

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
        released = self._move_claim("complete", None, result)
        pending = None
        if released is not None:
            pending = notify(self, released[1], "result destroy notifier", released[0])  # type: ignore[arg-type]
        try:
            hand_over(self)
        finally:
            reraise(pending)  # once the completion is handed over

    def abort(self, err: BaseException) -> None:
        """Mark the operation as failed with ``err`` (unless an error was set
        before: the first one wins).  Threads as :meth:`complete`.

        Raises:
            TypeError: ``err`` is not an exception instance.
            TaskStateError: as :meth:`complete`.
        """
        _check_exception(err, "abort")
        self._move_claim("abort", err, None)
        hand_over(self)

    # The dispatcher protocol (see _dispatch.Dispatchable): a queued
    # completion runs as _dispatch(), or fails if the loop went away.

    _dispatch = deliver
    _context_closed = context_closed

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

        Raises:
            BaseException: a KeyboardInterrupt or SystemExit a hook raised,
                once the other hooks ran and the cancel took effect.
        """
        return ask_cancel(self)

    def _time_out(self) -> None:
        # For deadlines of tasks with no thread job (net's TLS handshake).
        time_out(self)

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
            BaseException: a KeyboardInterrupt or SystemExit ``fn`` raised
                when run at once.
        """
        check_callable(fn, "on_cancel")
        if not self._move_add_cancel_hook(fn):
            reraise(notify(self, fn, "cancel hook", self))

    # -- done-callbacks and waiting ------------------------------------------

    def add_done_callback(self, fn: Callable[[Task[T]], Any]) -> None:
        """Call ``fn(task)`` on the context thread after ``func``.

        If the completion has started already, ``fn`` is scheduled on the
        context thread (or, if that context is closed, called at once here).

        Raises:
            TypeError: ``fn`` is not callable, or is an async function.
        """
        check_callable(fn, "add_done_callback")
        check_sync(fn, "add_done_callback")
        if not self._move_add_callback(fn):
            # Like a Future's: a callback added once the completion started
            # runs later on the context thread, after func and the callbacks
            # before it.
            self._context._call_soon_once(self._late_callback, fn)

    def _late_callback(self, fn: Callable[[Task[T]], Any]) -> None:
        reraise(notify(self, fn, "done-callback", self))

    def wait(self, timeout: float | None = None) -> bool:
        """From a thread other than the context's: block until the task has
        finished (its completion ran).

        Args:
            timeout: seconds, or None (or ``math.inf``) to wait as long as
                it takes.

        Returns:
            True if finished, False if ``timeout`` seconds passed first.

        Raises:
            TypeError, ValueError: ``timeout`` is not a number of seconds.
            TaskStateError: called on the context thread, where it would
                block the loop that has to run the completion.
        """
        seconds = check_duration(timeout, "wait", optional=True)
        if self._s == FINISHED:
            return True
        if self._context.is_owner() and not self._context.closed:
            raise TaskStateError(
                f"task {self.name!r}: wait() on the context thread would deadlock; await it or use wait_thread()"
            )
        event = self._move_register_wait()
        if event is None:
            return True
        if _points.hook is not None:
            _points.hook("task.wait", self)
        return event.wait(wait_timeout(seconds))

    # -- threads --------------------------------------------------------------

    if TYPE_CHECKING:

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
        ) -> None: ...

    else:
        # The function itself, not a method that calls it: one frame less on
        # every job.  Its docstring is the method's.
        run_in_thread = _threadjob.run_in_thread

    def wait_thread(self) -> None:
        """On the context thread: block until the worker has returned, then
        run the completion here, now (once: the completion already posted to
        the loop will find nothing left to do).

        Returns at once if the completion already ran.  While it waits it
        serves the worker's :meth:`call_in_main` requests.

        Raises:
            TaskStateError: called off the context thread, or the task has no
                worker.
        """
        _threadjob.wait_thread(self)

    def call_in_main(self, fn: Callable[..., R], *args: Any) -> R:
        """From the worker: run ``fn(*args)`` on the context thread and
        return its result (or raise its exception) here.

        Served by the loop, or -- when the context thread sits in
        :meth:`wait_thread` for this task -- by that wait, so the two cannot
        deadlock.

        Raises:
            TypeError: ``fn`` is not callable, or is an async function.
            TaskStateError: called on the context thread itself.
            ContextClosedError: the context's loop is gone.
            Exception: whatever ``fn`` raised.
        """
        return _threadjob.call_in_main(self, fn, args)  # type: ignore[no-any-return]

    def run_in_executor(self, executor: concurrent.futures.Executor, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in any ``concurrent.futures.Executor`` -- a
        process pool, or a Dask ``distributed`` client's executor -- and
        complete the task with its outcome on the context thread.

        ``fn`` and ``args`` must be picklable for process and cluster
        executors.  :meth:`cancel` maps to the future's ``cancel()``: a call
        that has not started never runs; one running completes the task with
        :class:`TaskCancelled` when it ends (cancel wins) -- as the executor
        counts "started" (docs/scaling.md: a process pool, Dask).

        Raises:
            TypeError: ``executor`` has no ``submit`` (or is a class), its
                ``submit()`` returned no future, ``fn`` not callable or an
                async function.
            TaskStateError: the task already runs a worker or was completed.
            Exception: whatever ``executor.submit`` raises (e.g. shut down).
        """
        _executor.run_in_executor(self, executor, fn, args)

    # -- progress -------------------------------------------------------------

    def report_progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """From the worker (any thread): tell the loop how far the work is.

        Deliveries are coalesced: the latest report wins, each callback
        gets at most one delivery per loop iteration and at most its
        ``max_rate`` per second (see :meth:`connect_progress`), and the last
        report is always delivered before the completion.  Cheap to call
        often.

        Raises:
            TypeError: ``done``/``total`` not numbers, ``message`` not a str.
            ValueError: ``done`` or ``total`` negative or NaN.
        """
        _progress.report(self, done, total, message)

    def connect_progress(self, fn: ProgressFunc, max_rate: float | None = DEFAULT_MAX_RATE) -> None:
        """Call ``fn(task, done, total, message)`` on the context thread for
        the progress reports: the latest one, at most once per loop
        iteration and at most ``max_rate`` times a second (25 by default,
        as Qt's ``QFutureInterface``: a GUI repainted more often only loses
        its time; None: once per iteration, no time limit).  A report held
        back by the rate arrives when the callback is due again, and the
        last report arrives before the completion whatever the rate.

        Raises:
            TypeError: ``fn`` is not callable or is an async function,
                ``max_rate`` not a number.
            ValueError: ``max_rate`` is not positive.
        """
        _progress.connect(self, fn, max_rate)

    # -- streaming items ------------------------------------------------------

    def connect_items(self, fn: Callable[[Task[T], Any], Any], buffer: int = 16) -> None:
        """Call ``fn(task, item)`` on the context thread for each item the
        worker sends with :meth:`send_item`: once per item, in order, in
        batches, all of them before ``func``.  The worker blocks while
        ``buffer`` items are out.  Call it before the worker starts.

        Raises:
            TypeError: ``fn`` is not callable or is an async function,
                ``buffer`` not an int.
            ValueError: ``buffer`` below 1.
            TaskStateError: called twice, or after the completion.
        """
        _stream.connect_items(self, fn, buffer)

    def send_item(self, item: Any) -> None:
        """From the worker: hand ``item`` to the :meth:`connect_items`
        callback on the context thread; blocks while ``buffer`` items are
        out (the loop is behind).

        Raises:
            TaskStateError: no :meth:`connect_items` callback; called on the
                context thread (which alone makes room); or the task
                completed without a cancel.
            TaskCancelled: the task was cancelled and completed while its
                worker still sends (``abandon_on_cancel``): stop sending.
            ContextClosedError: the context's loop is gone (stop sending).
        """
        _stream.send_item(self, item)

    # -- awaiting -------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, T]:
        """``await task`` under asyncio or trio: the result, or the error raised.

        Raises:
            RuntimeError: no loop that can await a task (asyncio, trio) is
                running in this thread; the message says what runs the
                coroutine, if it can tell.  (A worker the task runs was
                started by ``run_in_thread`` before the await, and goes on.)
        """
        adapter = async_adapter()
        if adapter is None:
            raise no_framework(
                "await task",
                "Elsewhere, take the outcome in the task's func or a done-callback (they run on the task's "
                "loop thread), or block a thread that is not the loop's with task.wait()",
            )
        return adapter.await_task(self)  # type: ignore[misc,no-any-return]

    def _outcome(self) -> T:
        """What an await returns: the result, or the error raised."""
        if self._error is not None:
            self._retrieved = True
            raise self._error
        return self._result  # type: ignore[no-any-return]

    # -- leaks ----------------------------------------------------------------

    def __del__(self) -> None:
        try:
            state = self._s
        except AttributeError:
            return  # __init__ failed: there never was a task
        if state == FINISHED:
            if self._error is not None and not self._retrieved and self._error is not self._ctl.cancel:
                # Like asyncio's "exception was never retrieved": nobody had
                # a func, a done-callback or an await to hear of it.  (Not a
                # task's own cancel, as not a cancelled Future's: whoever
                # cancelled it knows.)
                logger.error("task %r failed and nobody retrieved its error", self.name, exc_info=self._error)
            return
        if state < COMPLETING:
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


def _check_exception(err: Any, where: str) -> None:
    if not isinstance(err, BaseException):
        raise TypeError(f"{where}: err must be an exception instance, not {type(err).__name__}")
