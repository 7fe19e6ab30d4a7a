"""Conveniences on top of Task: ``to_thread`` and ``shutdown``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from . import _exit
from ._adapters import Adapter, async_adapter, no_framework
from ._checks import ASYNC_FLAGS, check_callable, check_sync
from ._limiter import Limiter
from ._pool import WorkerPool
from ._task import Task
from ._threadname import thread_named as _thread_named

__all__ = ["run_sync", "shutdown", "to_thread"]

P = ParamSpec("P")
R = TypeVar("R")


def _call(task: Task[Any], call: Callable[[], Any]) -> Any:
    return call()


def _call_named(task: Task[Any], job: tuple[Callable[[], Any], str]) -> Any:
    call, name = job
    with _thread_named(name):
        return call()


async def to_thread(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``fn(*args, **kwargs)`` in a worker thread and return its result.

    A drop-in for ``asyncio.to_thread``: the worker sees a copy of the
    caller's contextvars; the awaiting coroutine is resumed on its own loop.
    Under asyncio a cancel ends the await at once, as ``asyncio.to_thread``
    does; under trio the await waits for the worker first, as trio's does
    (:func:`run_sync` chooses).  Either way a call cancelled before its
    worker started never runs it, and a running worker is told
    (``from_thread.check_cancelled()`` raises, ``on_cancel`` hooks run).

    Raises:
        TypeError: ``fn`` is not callable, or is an async function (at
            the await), or returned an awaitable.
        RuntimeError: no asyncio event loop or trio run runs here.
        Exception: whatever ``fn`` raised, with its traceback.
    """
    if not callable(fn):
        check_callable(fn, "to_thread")
    code = getattr(fn, "__code__", None)  # check_sync(), inlined for a plain function
    if code is None or code.co_flags & ASYNC_FLAGS:
        check_sync(fn, "to_thread")
    adapter = _framework("to_thread")
    abandon = adapter.to_thread_abandons
    pending = adapter.cancel_point()  # type: ignore[misc]
    if pending is not None:
        await pending
    task: Task[R] = Task(None)
    try:
        task.run_in_thread(
            _call, functools.partial(fn, *args, **kwargs) if args or kwargs else fn, abandon_on_cancel=abandon
        )
    except BaseException as exc:
        settle_unsubmitted(task, exc)
        raise
    return await adapter.wait_worker(task, abandon)  # type: ignore[misc,no-any-return]


async def run_sync(
    fn: Callable[..., R],
    /,
    *args: Any,
    abandon_on_cancel: bool = False,
    limiter: Limiter | None = None,
    priority: int = 0,
    pool: WorkerPool | None = None,
    timeout: float | None = None,
    thread_name: str | None = None,
) -> R:
    """Run ``fn(*args)`` in a worker thread and return its result, with
    trio's and anyio's cancellation under asyncio and trio alike.

    - A call made while a cancel of the awaiting coroutine is pending, or
      cancelled while its worker waits for a pool thread or for its
      ``limiter``, never runs ``fn``.
    - Cancelled while ``fn`` runs: the qiotask task is cancelled (its
      ``on_cancel`` hooks run; ``from_thread.check_cancelled()`` raises in
      ``fn``) and the await waits for ``fn`` to return, then raises the
      cancellation -- or, with ``abandon_on_cancel``, raises it at once;
      ``fn``'s late result is then dropped and released.

    ``limiter``, ``priority``, ``pool`` and ``timeout`` mean what they mean
    for ``Task.run_in_thread``.  ``thread_name`` names the OS thread (as
    ``ps`` and ``top`` show it; Linux keeps 15 bytes) and the Python thread
    while ``fn`` runs; the old names come back after.

    Raises:
        TypeError: ``fn`` is not callable, or is an async function, or
            returned an awaitable; a bad ``thread_name`` (or another
            argument, as ``run_in_thread`` says).
        RuntimeError: no asyncio event loop or trio run runs here.
        TaskTimeout: ``timeout`` passed.
        Exception: whatever ``fn`` raised, with its traceback.
    """
    if not callable(fn):
        check_callable(fn, "run_sync")
    check_sync(fn, "run_sync")
    if thread_name is not None and not isinstance(thread_name, str):
        raise TypeError(f"run_sync: thread_name must be a str or None, not {type(thread_name).__name__}")
    adapter = _framework("run_sync")
    pending = adapter.cancel_point()  # type: ignore[misc]
    if pending is not None:
        await pending
    call = functools.partial(fn, *args) if args else fn
    task: Task[R] = Task(None)
    try:
        task.run_in_thread(
            _call if thread_name is None else _call_named,
            call if thread_name is None else (call, thread_name),
            abandon_on_cancel=abandon_on_cancel,
            limiter=limiter,
            priority=priority,
            pool=pool,
            timeout=timeout,
        )
    except BaseException as exc:
        settle_unsubmitted(task, exc)
        if isinstance(exc, (TypeError, ValueError)) and str(exc).startswith(_RUN_IN_THREAD):
            # An option it passed on: name it as run_sync's own.
            raise type(exc)(f"run_sync: {str(exc)[len(_RUN_IN_THREAD) :]}") from None
        raise
    return await adapter.wait_worker(task, abandon_on_cancel)  # type: ignore[misc,no-any-return]


#: How run_in_thread's argument errors begin (``_checks`` and ``_threadjob``).
_RUN_IN_THREAD = "run_in_thread: "


def settle_unsubmitted(task: Task[Any], exc: BaseException) -> None:
    """``run_in_thread`` refused a task made for one call (a bad argument, a
    pool shut down): complete it with the error, seen, so that it neither
    warns that it never completed nor reports an error nobody retrieved;
    the caller raises the error itself."""
    task.abort(exc)
    task.exception()


def _framework(where: str) -> Adapter:
    """The adapter of the framework awaiting here, checked before anything
    is made or submitted: under another loop the call fails whole."""
    adapter = async_adapter()
    if adapter is None or adapter.wait_worker is None:
        raise no_framework(
            where,
            "On another loop, nothing was run: run the work with qiotask.Task(source, func).run_in_thread(worker), "
            "whose func gets the outcome on the loop's thread",
        )
    return adapter


# shutdown() lives with the exit report it shares (``_exit``); re-exported here,
# where the public conveniences are.
shutdown = _exit.shutdown
