"""Progress: reports from the worker, delivered coalesced on the context thread.

The worker (any thread) reports; the latest report wins; the report that
finds none pending posts one delivery, and later ones only replace the
pending report until the loop takes it -- so at most one delivery per loop
iteration, however often the worker reports.  The last report is delivered
before the completion (``_delivery`` asks for it).  Both the report and the
take are one hold of the task's lock.

A progress callback's ``Exception`` goes to the context's exception handler;
a ``KeyboardInterrupt``/``SystemExit`` is re-raised on the context thread
once every callback had the report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _delivery  # a cycle: _delivery asks this module for the last report
from ._checks import check_callable
from ._state import DELIVERING

if TYPE_CHECKING:
    from ._state import TaskCore

__all__ = ["connect", "deliver_latest", "report"]

ProgressFunc = Callable[[Any, float, "float | None", "str | None"], Any]


def report(task: TaskCore, done: float, total: float | None, message: str | None) -> None:
    """``Task.report_progress`` (see its docstring)."""
    if not isinstance(done, (int, float)) or isinstance(done, bool):
        raise TypeError(f"report_progress: done must be a number, not {type(done).__name__}")
    if total is not None and (not isinstance(total, (int, float)) or isinstance(total, bool)):
        raise TypeError(f"report_progress: total must be a number or None, not {type(total).__name__}")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"report_progress: message must be a str or None, not {type(message).__name__}")
    if done != done or (total is not None and total != total):  # NaN compares unequal to itself
        raise ValueError(f"report_progress: done and total must be numbers, not NaN (got {done}, {total})")
    if done < 0 or (total is not None and total < 0):
        raise ValueError(f"report_progress: done and total must not be negative, got {done}, {total}")
    ctl = task._own_ctl()
    with task._lock:
        if task._s >= DELIVERING:
            return  # the last report was delivered with the completion
        previous, ctl.progress = ctl.progress, (done, total, message)
        post = previous is None and ctl.progress_fns is not None
    if post:
        task._context.call_soon(_deliver_posted, task)


def connect(task: TaskCore, fn: ProgressFunc) -> None:
    """``Task.connect_progress`` (see its docstring)."""
    check_callable(fn, "connect_progress")
    ctl = task._own_ctl()
    with task._lock:
        ctl.progress_fns = [*(ctl.progress_fns or ()), fn]
        post = ctl.progress is not None
    if post:
        task._context.call_soon(_deliver_posted, task)


def deliver_latest(task: TaskCore) -> BaseException | None:
    """On the context thread: the latest report, once, to every callback.
    Returns a KeyboardInterrupt/SystemExit a callback raised, to re-raise."""
    ctl = task._ctl
    with task._lock:
        latest, ctl.progress = ctl.progress, None
        fns = ctl.progress_fns
    if latest is None or not fns:
        return None
    pending: BaseException | None = None
    for fn in fns:
        pending = _delivery.first(pending, _delivery.notify(task, fn, "progress callback", task, *latest))
    return pending


def _deliver_posted(task: TaskCore) -> None:
    _delivery.reraise(deliver_latest(task))
