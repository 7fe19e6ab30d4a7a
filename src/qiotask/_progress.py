"""Progress: reports from the worker, delivered coalesced on the context thread.

The worker (any thread) reports; the latest report wins.  Each listener
(``connect_progress``) gets the latest report at most once per loop
iteration and, by default, at most ``max_rate`` times a second (25, Qt's
figure for ``QFutureInterface``: a progress bar repainted more often only
costs the GUI its time).  A report that finds no delivery on its way posts
one; later reports only replace the latest until the loop takes it, so a
worker reporting a million times costs the loop a handful of iterations.  A
listener that got a report less than ``1 / max_rate`` seconds ago waits: the
delivery arms one timer for the first listener due, and reports meanwhile
post nothing.  The last report reaches every listener before the completion
(``_delivery`` asks for it), whatever the rate.

Which thread does what: the report, ``connect`` and the taking of the
latest report are holds of the task's lock; a listener's record (when it
last got a report, which one) is the context thread's alone.

A progress callback's ``Exception`` goes to the context's exception handler;
a ``KeyboardInterrupt``/``SystemExit`` is re-raised on the context thread
once every callback due had the report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _delivery  # a cycle: _delivery asks this module for the last report
from ._checks import check_callable, check_sync
from ._state import DELIVERING

if TYPE_CHECKING:
    from ._state import Control, TaskCore

__all__ = ["DEFAULT_MAX_RATE", "Listener", "connect", "deliver_latest", "report"]

ProgressFunc = Callable[[Any, float, "float | None", "str | None"], Any]

#: Deliveries per second a progress callback gets at most, by default.
DEFAULT_MAX_RATE = 25.0

_monotonic = time.monotonic
#: The longest wait between two deliveries, whatever ``max_rate`` says: 24
#: days, which Qt's timers (int milliseconds) take too.  A report held that
#: long still comes before the completion.
MAX_INTERVAL = 24 * 86400.0


class Listener:
    """A progress callback and its delivery record (context thread only)."""

    __slots__ = ("fn", "interval", "last", "seen")

    def __init__(self, fn: ProgressFunc, max_rate: float | None) -> None:
        self.fn = fn
        #: Seconds between two deliveries at least (0: once per iteration);
        #: at most MAX_INTERVAL, which every loop's timers take.
        self.interval = 0.0 if max_rate is None or max_rate > 1e300 else min(1.0 / max_rate, MAX_INTERVAL)
        self.last = -math.inf  # when it last got a report (monotonic)
        self.seen = 0  # the number of the last report it got


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
        ctl.progress = (done, total, message)
        ctl.progress_seq += 1
        post = not ctl.progress_pending and ctl.progress_fns is not None
        if post:
            ctl.progress_pending = True
    if post:
        task._context.call_soon(_deliver_posted, task)


def connect(task: TaskCore, fn: ProgressFunc, max_rate: float | None) -> None:
    """``Task.connect_progress`` (see its docstring)."""
    check_callable(fn, "connect_progress")
    check_sync(fn, "connect_progress")
    if max_rate is not None:
        if not isinstance(max_rate, (int, float)) or isinstance(max_rate, bool):
            raise TypeError(f"connect_progress: max_rate must be a number or None, not {type(max_rate).__name__}")
        if not max_rate > 0:  # NaN too
            raise ValueError(f"connect_progress: max_rate must be positive (deliveries per second), got {max_rate}")
    listener = Listener(fn, max_rate)
    ctl = task._own_ctl()
    with task._lock:
        ctl.progress_fns = [*(ctl.progress_fns or ()), listener]
        post = ctl.progress_seq > 0 and not ctl.progress_pending
        if post:
            ctl.progress_pending = True
    if post:
        task._context.call_soon(_deliver_posted, task)


def deliver_latest(task: TaskCore) -> BaseException | None:
    """On the context thread, before the completion: the latest report to
    every listener that has not had it, whatever its rate.  Returns a
    KeyboardInterrupt/SystemExit a callback raised, to re-raise."""
    ctl = task._ctl
    with task._lock:
        ctl.progress_pending = False  # a posted delivery or an armed timer finds nothing left
        latest, seq, listeners = ctl.progress, ctl.progress_seq, ctl.progress_fns
    if latest is None or not listeners:
        return None
    return _deliver(task, latest, seq, listeners, math.inf)


def _deliver(
    task: TaskCore, latest: tuple[float, float | None, str | None], seq: int, listeners: list[Listener], now: float
) -> BaseException | None:
    """Report ``latest`` (number ``seq``) to each listener behind on it and
    due by ``now`` (``math.inf``: all of them)."""
    pending: BaseException | None = None
    for listener in listeners:
        if listener.seen >= seq or now - listener.last < listener.interval:
            continue
        listener.seen = seq
        listener.last = now if now != math.inf else _monotonic()
        pending = _delivery.first(pending, _delivery.notify(task, listener.fn, "progress callback", task, *latest))
    return pending


def _deliver_posted(task: TaskCore) -> None:
    """On the context thread: deliver to the listeners due, then make sure
    the others get the latest report when they are due."""
    ctl = task._ctl
    with task._lock:
        if task._s >= DELIVERING:
            return  # the completion delivered the last report
        latest, seq, listeners = ctl.progress, ctl.progress_seq, ctl.progress_fns
    pending = None
    if latest is not None and listeners:
        pending = _deliver(task, latest, seq, listeners, _monotonic())
    _schedule_next(task, ctl)
    _delivery.reraise(pending)


def _schedule_next(task: TaskCore, ctl: Control) -> None:
    """After a delivery: nothing more on its way if every listener has the
    latest report; else the next delivery, at once or when the first
    listener behind is due."""
    with task._lock:
        if task._s >= DELIVERING:
            return
        seq, listeners = ctl.progress_seq, ctl.progress_fns or ()
        due = min((listener.last + listener.interval for listener in listeners if listener.seen < seq), default=None)
        if due is None:
            ctl.progress_pending = False
            return
    delay = due - _monotonic()
    if delay <= 0:
        task._context.call_soon(_deliver_posted, task)
    else:
        task._context._call_later(delay, lambda: _deliver_posted(task))
