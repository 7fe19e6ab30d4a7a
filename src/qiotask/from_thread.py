"""Calls from a worker thread back to its loop, with no handle passed.

Inside any qiotask worker -- ``qiotask.to_thread(fn)``,
``Task.run_in_thread(worker)``, ``TaskGroup.run_in_thread(worker)`` -- these
find the task the worker runs for, as trio's ``trio.from_thread`` finds its
run::

    def download(url):
        for chunk in fetch(url):
            qiotask.from_thread.check_cancelled()       # stop when asked
            qiotask.from_thread.run_sync(bar.advance, len(chunk))   # on the loop
        return "done"

    await qiotask.to_thread(download, url)

- :func:`run_sync` calls a function on the task's context thread and returns
  its result (or raises its exception).  It is ``Task.call_in_main``: served
  by the loop, or by ``wait_thread()`` when the loop thread waits for this
  very worker, so the two never deadlock.
- :func:`run` awaits a coroutine function on the loop (asyncio, trio) and
  returns its result.  The loop must be running: under ``wait_thread()`` it
  would wait for ever.
- :func:`check_cancelled` raises the task's cancel (``TaskCancelled``, or
  ``TaskTimeout`` for a timeout) once one was asked.

The function or coroutine runs in a copy of the worker's contextvars, as
trio's does.  Under trio, ``run_sync`` is not protected from Ctrl-C.

Each raises ``RuntimeError`` when called outside a qiotask worker: in a
thread of the application's own, or on the loop's thread (call the function
directly there).
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._checks import check_callable, check_sync
from ._task import Task
from ._threadjob import current_task

__all__ = ["check_cancelled", "run", "run_sync"]

R = TypeVar("R")


def run_sync(fn: Callable[..., R], *args: Any) -> R:
    """From a worker: ``fn(*args)`` on the task's context thread.

    Returns:
        What ``fn`` returned.

    Raises:
        RuntimeError: not called from inside a qiotask worker.
        TypeError: ``fn`` is not callable, or is an async function (use
            :func:`run`).
        ContextClosedError: the context's loop is gone.
        Exception: whatever ``fn`` raised.
    """
    task = _worker_task("run_sync")
    check_callable(fn, "from_thread.run_sync")
    check_sync(fn, "from_thread.run_sync")
    return task.call_in_main(contextvars.copy_context().run, fn, *args)  # type: ignore[no-any-return]


def run(async_fn: Callable[..., Awaitable[R]], *args: Any) -> R:
    """From a worker: ``await async_fn(*args)`` on the task's loop (an
    asyncio loop or a trio run), blocking the worker until it is done.

    Returns:
        The coroutine's result.

    Raises:
        RuntimeError: not called from inside a qiotask worker, or the
            task's loop runs no coroutines (GLib, Qt, Tk: use
            :func:`run_sync`).
        TypeError: ``async_fn`` is not callable.
        ContextClosedError: the loop is gone.
        TaskCancelled: the worker's task was cancelled meanwhile (the
            coroutine is cancelled with it).
        Exception: whatever the coroutine raised.
    """
    task = _worker_task("run")
    check_callable(async_fn, "from_thread.run", "async_fn")
    hooks: list[Callable[[Any], None]] = []

    def on_cancel(stop: Callable[[], None]) -> None:
        hooks.append(lambda _task: stop())  # the task cancelled: so is the coroutine
        task.on_cancel(hooks[0])

    try:
        return task.context._run_coroutine(  # type: ignore[no-any-return]
            async_fn, args, contextvars.copy_context(), on_cancel
        )
    finally:
        if hooks:  # this call's hook, not the task's: a worker may call run() a million times
            task._move_remove_cancel_hook(hooks[0])


def check_cancelled() -> None:
    """From a worker: raise the task's cancel if one was asked.

    Raises:
        RuntimeError: not called from inside a qiotask worker.
        TaskCancelled: the task was cancelled (``TaskTimeout`` if its
            deadline passed).
    """
    _worker_task("check_cancelled").raise_if_cancelled()


def _worker_task(what: str) -> Task[Any]:
    task = current_task()
    if task is None:
        raise RuntimeError(
            f"from_thread.{what}() must be called from inside a qiotask worker (to_thread, Task.run_in_thread, "
            "TaskGroup.run_in_thread); this thread runs none (on the loop's own thread, call the function directly)"
        )
    return task  # type: ignore[return-value]
