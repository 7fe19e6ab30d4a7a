"""The thread job: a task's worker on a pool thread, and the calls between
that worker and the context thread.

Which thread does what:

- the caller of ``run_in_thread`` makes the job, moves the task to QUEUED,
  arms the deadline (``timeout=``) and hands the job to the pool;
- a pool thread runs :meth:`ThreadJob.run` (the start move, then the worker)
  and :meth:`ThreadJob.done` (the worker_returned move, then the hand-over);
- the deadline thread runs :meth:`ThreadJob.time_out` (a cancel);
- the context thread runs the completion, and serves ``call_in_main``
  requests -- from its loop, or from inside ``wait_thread()`` when it waits
  for this very worker, so the two cannot deadlock.

No field is handed between threads by a plain store and a later load: the
task's moves (``_state``) publish what the other side needs under the
task's lock (the job's deadline is set before the submit move publishes the
job), and ``_MainCall.served`` is decided under the same lock.
"""

from __future__ import annotations

import contextvars
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from . import _deadline, _points, _trace
from . import _pool as _pool_module
from ._checks import ASYNC_FLAGS, awaitable_type, check_callable, check_duration, check_sync, refuse_awaitable
from ._delivery import deliver, hand_over, notify, post_failed, reraise, time_out
from ._errors import ContextClosedError, TaskStateError
from ._limiter import Limiter
from ._pool import WorkerPool
from ._state import DROPPED, LATE, LATE_DELIVERY_RUNS_DESTROY, NEVER_RAN, WORKER_DONE, JobCore

if TYPE_CHECKING:
    from ._context import MainContext
    from ._outcome import Held
    from ._state import TaskCore

__all__ = ["ThreadJob", "call_in_main", "current_task", "run_in_thread", "wait_thread"]

_copy_context = contextvars.copy_context
_ZERO = 0  # priority's default, tested by identity (an IntEnum 0 is checked)
_monotonic = time.monotonic


class ThreadJob(JobCore):
    """One ``run_in_thread`` call: the worker, what it needs, and the two
    functions the pool calls.  The pool's hold on ``run``/``done`` keeps the
    job (and its task) alive until the worker has returned, even after an
    abandoning cancel finished the task."""

    __slots__ = ("ctx", "deadline", "task", "worker")

    def __init__(
        self,
        task: TaskCore,
        worker: Callable[..., Any],
        opaque: Any,
        destroy: Callable[[Any], Any] | None,
        ctx: contextvars.Context | None,
        abandon: bool,
    ) -> None:
        # JobCore's fields, set here: one call less on every job.
        self.opaque = opaque
        self.destroy = destroy
        self.abandon = abandon
        self.abandoned = False
        self.returned = False
        self.task = task
        self.worker = worker
        self.ctx = ctx
        self.deadline: _deadline.Deadline | None = None

    def forget_work(self) -> None:
        # Under the task's lock, the task QUEUED: run() is refused by the
        # same lock before it reads these, so it never sees them go.
        self.worker = _refused
        self.ctx = None

    def run(self) -> Any:
        """On a pool thread: start the worker, unless a cancel came first."""
        task = self.task
        hook = _points.hook
        if hook is not None:
            hook("task.start", task)
        if not task._move_start():
            return NEVER_RAN  # cancelled while queued: it completed already
        if hook is not None:
            hook("task.started", task)
        if task._traced:
            _trace.emit("qio_task_thread_run", task)
        if self.ctx is not None:
            return self.ctx.run(self.worker, task, self.opaque)
        return self.worker(task, self.opaque)

    def done(self, result: Any, exc: BaseException | None) -> None:
        """On the pool thread, right after the worker returned or raised."""
        if result is not None:
            if result is NEVER_RAN:
                return
            if awaitable_type(type(result)):
                exc = refuse_awaitable(result, "")
                result = None
        task = self.task
        if task._traced:
            _trace.emit("qio_task_thread_exit", task, result=result, err=exc)
        if self.deadline is not None:
            self.deadline.cancel()
        if _points.hook is not None:
            _points.hook("task.worker-returned", task)
        verdict = task._move_worker_returned(self, result, exc)
        pending = None
        if verdict is not None:
            if verdict is LATE_DELIVERY_RUNS_DESTROY or verdict is DROPPED:
                return  # the outcome is dropped; the delivery runs the destroy, after func
            if verdict is LATE:
                # A cancel completed the task while this worker ran: its
                # outcome is dropped (released when this frame ends); its
                # destroy notifier, which the delivery skipped, runs now.
                if self.destroy is not None:
                    task._context._call_soon_once(_late_destroy, task, self.destroy, self.opaque)
                return
            # The worker's value replaced a result set before: its destroy
            # runs now, here (set_result's documented "at once").
            released = cast("Held", verdict)
            assert released[1] is not None
            pending = notify(task, released[1], "result destroy notifier", released[0])
        if task._traced:
            _trace.emit("qio_task_thread_source_attach", task, context=task._context)
        try:
            task._context.post(task)  # type: ignore[arg-type]
        except BaseException as exc:
            post_failed(task, exc)  # finished here: never left COMPLETING
            raise
        if pending is not None:
            raise pending  # only once the completion is on its way

    def time_out(self) -> None:
        """On the deadline thread: the timeout, a cancel with a reason."""
        time_out(self.task, thread_job=True)


_RUN_CODE = ThreadJob.run.__code__


def current_task() -> TaskCore | None:
    """The task whose worker runs in this thread now, or None.

    Found by walking up the calling thread's frames to :meth:`ThreadJob.run`,
    which calls every worker (through ``Context.run``, a C call with no frame
    of its own), and reading its ``task``: nothing is recorded per job, so
    the hot path pays nothing for a question few workers ask.  A worker's own
    threads are not workers: their frames do not lead there.  The frames are
    the calling thread's own, so this holds without the GIL too.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _RUN_CODE:
            return frame.f_locals["task"]  # type: ignore[no-any-return]
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _refused(task: TaskCore, opaque: Any) -> None:
    """A queued job's worker once a cancel completed its task (never called:
    the job is refused its start)."""
    raise AssertionError(f"task {task.name!r}: a cancelled job's worker was started")


def _late_destroy(task: TaskCore, destroy: Callable[[Any], Any], opaque: Any) -> None:
    reraise(notify(task, destroy, "worker destroy notifier", opaque))


def run_in_thread(
    task: TaskCore,
    worker: Callable[..., Any],
    opaque: Any = None,
    destroy: Callable[[Any], Any] | None = None,
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

    ``timeout`` (seconds; ``math.inf`` or None for none) is a
    :meth:`cancel` with a reason: the task completes with
    :class:`TaskTimeout`, saying whether the deadline passed while the
    worker was queued or running.  With ``abandon_on_cancel`` a cancel
    (or timeout) of a running worker completes the task at once and
    drops the worker's late result; the worker's ``destroy(opaque)`` then
    runs once the worker has returned, and the pool counts the thread
    busy until then.

    ``priority``: queued workers start highest priority first, first come
    first served within one.  ``limiter``: a :class:`qiotask.Limiter`
    capping how many workers of its kind run at once; the task waits,
    queued, for a slot (no pool thread waits).

    Raises:
        TypeError: ``worker``/``destroy`` not callable, ``worker`` an
            async function (see ``_checks.check_sync``), ``pool`` not a
            WorkerPool, ``timeout`` not a number, ``priority`` not an
            int, ``limiter`` not a Limiter.
        ValueError: ``timeout`` negative or NaN.
        TaskStateError: the task already runs a worker or was completed.
        RuntimeError: the pool was shut down.
    """
    if not callable(worker) or (destroy is not None and not callable(destroy)):
        check_callable(worker, "run_in_thread", "worker")
        check_callable(destroy, "run_in_thread", "destroy", optional=True)
    code = getattr(worker, "__code__", None)  # check_sync(), inlined for a plain function
    if code is None or code.co_flags & ASYNC_FLAGS:
        check_sync(worker, "run_in_thread", "worker")
    if pool is None:
        pool = _pool_module._default_pool
        if pool is None or pool._shutdown:
            pool = _pool_module.default_pool()
    elif not isinstance(pool, WorkerPool):
        raise TypeError(f"run_in_thread: pool must be a WorkerPool, not {type(pool).__name__}")
    if priority is not _ZERO and (not isinstance(priority, int) or isinstance(priority, bool)):
        raise TypeError(f"run_in_thread: priority must be an int, not {type(priority).__name__}")
    if limiter is not None and not isinstance(limiter, Limiter):
        raise TypeError(f"run_in_thread: limiter must be a qiotask.Limiter, not {type(limiter).__name__}")
    job = ThreadJob(task, worker, opaque, destroy, _copy_context() if copy_context else None, abandon_on_cancel)
    if timeout is not None:
        seconds = check_duration(timeout, "run_in_thread")
        if seconds != math.inf:
            # Armed before the job is published: every thread that can see
            # the job sees its deadline.  One that fires before the submit
            # below is a cancel asked before it, which the submit move finds.
            job.deadline = _deadline.call_at(_monotonic() + seconds, job.time_out)
    if _points.hook is not None:
        _points.hook("task.submit", task)
    try:
        cancelled = task._move_submit(job, "run_in_thread")
    except BaseException:
        if job.deadline is not None:
            job.deadline.cancel()
        raise
    if cancelled:  # a cancel came first: the worker never starts
        if job.deadline is not None:
            job.deadline.cancel()
        hand_over(task)
        return
    if task._traced:
        _trace.emit("qio_task_thread_start", task, worker=worker, opaque=opaque, pool=pool)
    try:
        if limiter is not None:
            limiter._submit(pool, job.run, job.done, priority)
        elif priority:
            pool.submit(job.run, job.done, priority)
        else:
            pool.submit(job.run, job.done)
    except BaseException:
        if job.deadline is not None:
            job.deadline.cancel()
        task._move_unsubmit()
        raise


def wait_thread(task: TaskCore) -> None:
    """``Task.wait_thread`` (see its docstring)."""
    if not task._context.is_owner():
        raise TaskStateError(f"task {task.name!r}: wait_thread() must be called on its context thread")
    registered = task._move_register_wait_thread()
    if registered is None:
        return  # the completion ran already
    waiter, calls = registered
    if waiter is not None:
        if _points.hook is not None:
            _points.hook("task.wait-thread", task)
        # This thread is the loop: serving the worker's calls to it is its
        # job while it waits (each call is served once, by whoever comes first).
        for call in calls:
            call.dispatch()
        while (item := waiter.get()) is not WORKER_DONE:
            item.dispatch()  # type: ignore[attr-defined]
    if task._traced:
        _trace.emit("qio_task_thread_source_cancel", task)
    deliver(task)


class _MainCall:
    """A call_in_main() request: served once, by the loop or by wait_thread,
    whichever takes it first under the task's lock."""

    __slots__ = ("args", "done", "error", "fn", "lock", "result", "served")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], lock: threading.Lock) -> None:
        self.fn = fn
        self.args = args
        self.lock = lock
        self.result: Any = None
        self.error: BaseException | None = None
        self.served = False  # guarded by lock
        self.done = threading.Event()

    def _take(self) -> bool:
        with self.lock:
            if self.served:
                return False
            self.served = True
            return True

    def dispatch(self) -> None:
        if not self._take():
            return
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:
            self.error = exc
        self.done.set()

    # The dispatcher protocol (see _dispatch.Dispatchable).
    _dispatch = dispatch

    def _context_closed(self, context: MainContext) -> None:
        if self._take():
            self.error = ContextClosedError(f"call_in_main(): context {context.name!r} is gone")
            self.done.set()


def call_in_main(task: TaskCore, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``Task.call_in_main`` (see its docstring)."""
    check_callable(fn, "call_in_main")
    check_sync(fn, "call_in_main")
    context = task._context
    if context.is_owner():
        raise TaskStateError(
            f"task {task.name!r}: call_in_main() from the context thread itself; call the function directly"
        )
    call = _MainCall(fn, args, task._lock)
    if _points.hook is not None:
        _points.hook("task.call-in-main", task)
    task._move_publish_main_call(call)  # wait_thread() can serve it from now on
    try:
        context.post(call)
    except BaseException:
        call._take()  # if still queued, it never runs: nobody waits for it
        task._move_withdraw_main_call(call)
        raise
    call.done.wait()
    task._move_withdraw_main_call(call)
    if call.error is not None:
        raise call.error
    return call.result
