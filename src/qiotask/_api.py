"""Conveniences on top of Task: ``to_thread`` and ``shutdown``."""

from __future__ import annotations

import atexit
import functools
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from . import _trace
from ._checks import ASYNC_FLAGS, check_callable, check_duration, check_sync, wait_timeout
from ._context import all_contexts
from ._pool import all_pools
from ._task import Task

__all__ = ["shutdown", "to_thread"]

P = ParamSpec("P")
R = TypeVar("R")


def _call(task: Task[Any], call: Callable[[], Any]) -> Any:
    return call()


async def to_thread(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``fn(*args, **kwargs)`` in a worker thread and return its result.

    A drop-in for ``asyncio.to_thread``: the worker sees a copy of the
    caller's contextvars; the awaiting coroutine is resumed on its own loop.
    If the coroutine is cancelled, the worker still runs to its end (a
    thread cannot be interrupted) and its result is dropped.

    Raises:
        TypeError: ``fn`` is not callable, or is an async function (at
            the await), or returned an awaitable.
        Exception: whatever ``fn`` raised, with its traceback.
    """
    if not callable(fn):
        check_callable(fn, "to_thread")
    code = getattr(fn, "__code__", None)  # check_sync(), inlined for a plain function
    if code is None or code.co_flags & ASYNC_FLAGS:
        check_sync(fn, "to_thread")
    task: Task[R] = Task(None)
    task.run_in_thread(_call, functools.partial(fn, *args, **kwargs) if args or kwargs else fn)
    return await task


@atexit.register
def _settle_at_exit() -> None:
    # Completions queued on loops that closed without a word still run their
    # destroy notifiers before the interpreter goes.
    for ctx in all_contexts():
        try:
            ctx.settle()
        except Exception:
            pass


def shutdown(timeout: float | None = None) -> bool:
    """Settle what is left before the program exits.

    Waits up to ``timeout`` seconds in all for the workers of every pool to
    return (pools stop accepting work; the default pool is made anew on next
    use), then fails, with ``ContextClosedError``, the completions queued on
    contexts whose loop is closed, so that their destroy notifiers run.

    Args:
        timeout: seconds, or None (or ``math.inf``) to wait as long as it
            takes.

    Returns:
        True if no task is left pending.

    Raises:
        TypeError, ValueError: ``timeout`` is not a number of seconds.
    """
    seconds = wait_timeout(check_duration(timeout, "shutdown", optional=True))
    deadline = None if seconds is None else time.monotonic() + seconds
    for pool in all_pools():
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        pool.shutdown(wait=True, timeout=remaining)
    for ctx in all_contexts():
        ctx.settle()
    return _trace.stats()["pending"] == 0
