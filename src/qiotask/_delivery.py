"""Delivery: the order in which a completion runs, and where.

Once a task's outcome is fixed (``_state``'s claim, worker_returned or an
abandoning cancel), the completion is handed to the context: run here and
now on the context thread, else posted to it.  It runs, on the context
thread, as::

    begin_delivery -> last progress report -> func -> done-callbacks (and
    awaiters) -> worker's destroy -> task's destroy -> result's destroy ->
    finish (the source and callbacks released, wait() woken)

If the loop went away first, the same runs in the thread that finds it gone,
without ``func`` (its thread is gone) and with ``ContextClosedError``; so it
does in the posting thread if the post itself raises (:func:`post_failed`).

Exceptions from user code: an ``Exception`` goes to the context's exception
handler and the rest still runs; a ``KeyboardInterrupt``, ``SystemExit`` or
other ``BaseException`` -- from the code or from the exception handler -- is
re-raised once the rest has run, so nothing is skipped and nothing is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _points, _trace
from ._errors import ContextClosedError, TaskCancelled, TaskTimeout
from ._progress import deliver_latest
from ._state import NO_CONTROL, PENDING, QUEUED

if TYPE_CHECKING:
    from ._context import MainContext
    from ._state import TaskCore

__all__ = [
    "ask_cancel",
    "context_closed",
    "deliver",
    "first",
    "hand_over",
    "notify",
    "post_failed",
    "reraise",
    "time_out",
]

logger = logging.getLogger("qiotask")

_count_completed = _trace.count_completed
_count_failed = _trace.count_failed

#: Set by ``qiotask._exit`` at interpreter exit: ``on_closed(task)``, told of
#: each task that finishes with ``ContextClosedError`` from then on, returns
#: True if the exit report names it (the task then logs no warning of its
#: own: one report, not a line per task).  Read on any thread without a
#: lock: one load of a module global, atomic on every build.
on_closed: Callable[[TaskCore], bool] | None = None


def notify(task: TaskCore, fn: Callable[..., Any], what: str, *args: Any) -> BaseException | None:
    """Call a user callback; an Exception goes to the exception handler.
    Never raises: a BaseException (from ``fn`` or from the handler) is
    returned, for the caller to re-raise once the rest has run."""
    try:
        fn(*args)
    except Exception as exc:
        return _report(task, f"exception in {what} {fn!r} of task {task.name!r}", exc)
    except BaseException as exc:
        return exc
    return None


def reraise(pending: BaseException | None) -> None:
    """Raise what a step collected (see :func:`notify`), once it is done."""
    if pending is not None:
        raise pending


def first(pending: BaseException | None, new: BaseException | None) -> BaseException | None:
    """Of the BaseExceptions one step collects to re-raise, keep the first;
    log any later one (it cannot be raised too)."""
    if pending is None:
        return new
    if new is not None:
        logger.error("%r raised after %r in the same step; the first is raised", new, pending, exc_info=new)
    return pending


def _report(task: TaskCore, message: str, exc: Exception) -> BaseException | None:
    """Hand ``exc`` to the context's exception handler; return what the
    handler itself raised, if it is not an Exception (it logs those)."""
    try:
        task._context.report_exception(message, exc)
    except BaseException as handler_exc:
        return handler_exc
    return None


def hand_over(task: TaskCore) -> None:
    """The outcome is fixed: run the completion now if this is the context
    thread, else post it there."""
    context = task._context
    if context.is_owner():
        if context.closed:
            context_closed(task, context)
        else:
            deliver(task)
    else:
        if task._traced:
            _trace.emit("qio_task_thread_source_attach", task, context=context)
        try:
            context.post(task)  # type: ignore[arg-type]
        except BaseException as exc:
            post_failed(task, exc)
            raise


def post_failed(task: TaskCore, exc: BaseException) -> None:
    """The post of a fixed outcome raised (a MemoryError, an interrupt):
    the completion may never reach the context thread.  Complete here, as
    for a closed context, with a ``ContextClosedError`` naming ``exc`` (its
    ``__cause__`` is the error it hides, if any, as for every such error);
    once: if the post had queued it, its dispatch finds it made.  The
    caller then re-raises ``exc``."""
    context = task._context
    error = ContextClosedError(
        f"task {task.name!r}: its completion could not be handed to context {context.name!r} ({exc!r}); "
        "func was not called"
    )
    deliver(task, error)


def context_closed(task: TaskCore, context: MainContext) -> None:
    """The loop is gone before the completion ran: complete here, without
    ``func``, with ``ContextClosedError``."""
    error = ContextClosedError(
        f"task {task.name!r}: context {context.name!r} closed before its completion ran; func was not called"
        f"{context._closed_hint()}"
    )
    deliver(task, error)


def deliver(task: TaskCore, closed: ContextClosedError | None = None) -> None:
    """Run the completion (once: a second call finds it made)."""
    plan = task._move_begin_delivery(closed)
    if plan is None:
        return
    callbacks, err, job = plan
    pending: BaseException | None = None
    if closed is not None or task._traced or task._ctl is not NO_CONTROL:
        pending = _before_func(task, err, closed)
    func = task._func
    if func is not None and closed is None:
        if err is not None:
            task._retrieved = True  # someone was told
        try:  # notify(), inlined: every task with a func comes here
            func(task._source, err, task._opaque)
        except Exception as exc:
            pending = first(
                pending, _report(task, f"exception in completion callback {func!r} of task {task.name!r}", exc)
            )
        except BaseException as exc:
            pending = first(pending, exc)
    if callbacks:
        if err is not None:
            task._retrieved = True
        for entry in callbacks:
            if type(entry) is tuple:  # an awaiter: (wake, its future), see the loop adapters
                entry[0](entry[1])
            else:
                pending = first(pending, notify(task, entry, "done-callback", task))
    if job is not None:
        assert job.destroy is not None
        pending = first(pending, notify(task, job.destroy, "worker destroy notifier", job.opaque))
    if task._destroy is not None:
        pending = first(pending, notify(task, task._destroy, "destroy notifier", task._opaque))
    if task._result_destroy is not None:
        pending = first(pending, notify(task, task._result_destroy, "result destroy notifier", task._result))
    if closed is not None and not task._context.is_owner():
        # Completed off its thread because the loop is gone: let the context
        # decide where the last references die (Qt, Tk: on their thread).
        # Before finish, so that whoever wait() wakes finds them adopted.
        # (Since begin_delivery, this thread alone touches these fields.)
        task._context._adopt((task._source, task._func, task._opaque, task._destroy, task._job, callbacks))
    if _points.hook is not None:
        _points.hook("task.finish", task)
    task._move_finish()
    if err is None:
        _count_completed()
    else:
        _count_failed()
    if pending is not None:
        del plan, callbacks  # not kept alive by the traceback
        raise pending


def _before_func(task: TaskCore, err: BaseException | None, closed: ContextClosedError | None) -> BaseException | None:
    """What a completion does before ``func`` in the rarer cases: say that
    the loop is gone, hand over the items still queued, deliver the last
    progress report, trace."""
    pending = None
    if closed is not None and err is closed and (on_closed is None or not on_closed(task)):  # (a cancel wins)
        logger.warning(
            "task %r finished with ContextClosedError: its context %r is gone%s",
            task.name,
            task._context.name,
            task._context._closed_hint(),
        )
        task._retrieved = True  # that warning told of it: not a second report when the task is freed
    ctl = task._ctl
    if ctl.items is not None:
        pending = ctl.items.finish(closed is None)  # the items still queued, before func
    if ctl.progress is not None and closed is None:
        # The last report comes before func -- and, like func, only on the
        # loop's thread: with the loop gone, nowhere.
        pending = first(pending, deliver_latest(task))
    if task._traced:
        if task._job is not None:
            _trace.emit("qio_task_thread_result", task, err=err)
        if err is None:
            _trace.emit("qio_task_complete", task, result=task._result)
        else:
            _trace.emit("qio_task_abort", task, err=err)
    return pending


def ask_cancel(task: TaskCore, *, timeout: bool = False, unsubmitted_job: bool = False) -> bool:
    """The cancel move, then its consequences in this thread: the hooks, and
    the completion if the move completed the task.  A BaseException from a
    hook is re-raised once the rest is done.

    ``timeout``: a deadline's cancel, whose ``TaskTimeout`` says whether the
    worker had started, as the move finds the task (``unsubmitted_job``: a
    PENDING task is a thread job about to be submitted, so not started)."""
    if _points.hook is not None:
        _points.hook("task.cancel", task)
    name = task.name

    def reason(state: int) -> TaskCancelled | TaskTimeout:
        if not timeout:
            return TaskCancelled(f"task {name!r} was cancelled")
        queued = state == QUEUED or (state == PENDING and unsubmitted_job)
        return TaskTimeout(f"task {name!r} timed out {'while queued' if queued else 'while running'}")

    asked, hooks, completes = task._move_cancel(reason)
    if not asked:
        return False
    pending: BaseException | None = None
    if hooks:
        for fn in hooks:
            pending = first(pending, notify(task, fn, "cancel hook", task))
    if completes:
        # The job as the move saw it: by now another thread may have run the
        # completion and dropped it from the task.
        deadline = getattr(completes, "deadline", None)
        if deadline is not None:
            deadline.cancel()
        try:
            hand_over(task)  # on the context thread: the completion runs here
        except BaseException as exc:
            if pending is None:
                raise
            logger.error("task %r: %r from its completion, after %r from a cancel hook", task.name, exc, pending)
    if pending is not None:
        raise pending
    return True


def time_out(task: TaskCore, thread_job: bool = False) -> None:
    """A deadline passed (on the deadline thread): a cancel whose
    ``TaskTimeout`` says whether the worker was still queued, as the cancel
    move finds it (``thread_job``: the deadline of a run_in_thread job, armed
    just before the job is submitted)."""
    if _points.hook is not None:
        _points.hook("task.timeout", task)
    ask_cancel(task, timeout=True, unsubmitted_job=thread_job)
