"""The executor bridge: a task completed by any ``concurrent.futures.Executor``.

``run_in_executor`` submits ``fn(*args)`` to the executor (a process pool,
loky, a Dask ``distributed`` client's executor) and completes the task with
its outcome on the context thread.  The executor's call is a thread job
whose start the task cannot see, so the task goes straight to RUNNING; its
cancel maps to the future's ``cancel()`` (a cancel hook): a call the
executor has not started never runs, one running completes the task with
``TaskCancelled`` when it ends (cancel wins).  "Started" is the executor's
word: a process pool counts the calls it handed to its processes ahead,
Dask's executor never marks a future running (its cancel always succeeds,
and a running call goes on unseen).  The future's done-callback, on whatever thread
the executor completes futures on, reports through the same worker_returned
move as a pool thread.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._checks import check_callable, check_sync
from ._delivery import hand_over
from ._errors import TaskCancelled
from ._threadjob import ThreadJob

if TYPE_CHECKING:
    from ._state import TaskCore

__all__ = ["run_in_executor"]


def run_in_executor(
    task: TaskCore, executor: concurrent.futures.Executor, fn: Callable[..., Any], args: tuple[Any, ...]
) -> concurrent.futures.Future[Any] | None:
    """``Task.run_in_executor`` (see its docstring); returns the future, or
    None if a cancel came first (nothing was submitted)."""
    if isinstance(executor, type):
        raise TypeError(f"run_in_executor: executor must be an executor, not the class {executor.__name__}")
    if not callable(getattr(executor, "submit", None)):
        raise TypeError(f"run_in_executor: executor must have submit(), not {type(executor).__name__}")
    check_callable(fn, "run_in_executor")
    check_sync(fn, "run_in_executor")
    job = ThreadJob(task, fn, None, None, None, False)
    if task._move_submit(job, "run_in_executor", running=True):
        hand_over(task)  # cancelled before: the call is never submitted
        return None
    try:
        future = executor.submit(fn, *args)
        if not (callable(getattr(future, "add_done_callback", None)) and callable(getattr(future, "cancel", None))):
            # Nothing would ever say when the call ends: the task would run
            # for ever.
            raise TypeError(
                f"run_in_executor: {type(executor).__name__}.submit() returned {type(future).__name__}, "
                "not a future (concurrent.futures.Future)"
            )
    except BaseException:
        task._move_unsubmit()
        raise

    def done(future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled():
            job.done(None, TaskCancelled(f"task {task.name!r} was cancelled in its executor"))
            return
        exc = future.exception()
        job.done(None if exc is not None else future.result(), exc)

    # The cancel hook first: the future cannot complete the task before it
    # is kept (the done-callback, added next, is what completes it), so it
    # is never left on a finished task.  A cancel asked meanwhile runs it now.
    def cancel_call(_task: Any) -> None:
        future.cancel()

    if not task._move_add_cancel_hook(cancel_call):
        future.cancel()
    try:
        future.add_done_callback(done)
    except BaseException:
        task._move_remove_cancel_hook(cancel_call)
        task._move_unsubmit()
        raise
    return future
