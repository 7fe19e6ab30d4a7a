"""Deadlines: call ``fn()`` at a monotonic time, on one timer thread.

Used for ``run_in_thread(timeout=...)``.  A deadline must fire even when the
task's loop is busy or not running (a worker timed out while the loop sits
in ``wait_thread()``), so it cannot be a timer of that loop: one daemon
thread, started on first use, sleeps until the earliest deadline.  It knows
nothing of tasks.

Guarantees: ``fn`` runs at most once, on the timer thread, not before its
time; after ``handle.cancel()`` returns it does not start (a call already
running finishes).  An exception from ``fn`` is logged on ``qiotask``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

__all__ = ["Deadline", "call_at"]

logger = logging.getLogger("qiotask")

#: The name of the timer thread (the tests' leak check knows it).
THREAD_NAME = "qiotask-deadlines"


class Deadline:
    """A pending call; ``cancel()`` it once it is not needed any more."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], object] | None) -> None:
        self.fn = fn

    def cancel(self) -> None:
        """Do not call ``fn``; safe from any thread, more than once."""
        self.fn = None  # one store: atomic, read once by the timer thread


# _cond's lock guards _heap, _compact_at and _thread.
_cond = threading.Condition(threading.Lock())
_heap: list[tuple[float, int, Deadline]] = []
#: A cancel leaves its entry in the heap (it is one store, with no lock); most
#: deadlines are cancelled long before they are due (a task that finishes in
#: time), so the heap is swept of them whenever it doubles in size: O(1) per
#: deadline, amortized, and memory bounded by twice the live ones.
_MIN_COMPACT = 64
_compact_at = _MIN_COMPACT
_seq = itertools.count()
_thread: threading.Thread | None = None


def call_at(when: float, fn: Callable[[], object]) -> Deadline:
    """Call ``fn()`` on the timer thread at ``time.monotonic()`` == ``when``."""
    global _thread, _compact_at
    deadline = Deadline(fn)
    with _cond:
        if len(_heap) >= _compact_at:
            _heap[:] = [entry for entry in _heap if entry[2].fn is not None]
            heapq.heapify(_heap)
            _compact_at = max(_MIN_COMPACT, 2 * len(_heap))
        heapq.heappush(_heap, (when, next(_seq), deadline))
        if _thread is None:
            _thread = threading.Thread(target=_run, name=THREAD_NAME, daemon=True)
            _thread.start()
        elif _heap[0][2] is deadline:
            _cond.notify()  # earlier than what the thread sleeps until
    return deadline


def _run() -> None:
    while True:
        with _cond:
            while True:
                # Drop cancelled deadlines from the top so that they cost no
                # wake-up.
                while _heap and _heap[0][2].fn is None:
                    heapq.heappop(_heap)
                now = time.monotonic()
                if _heap and _heap[0][0] <= now:
                    deadline = heapq.heappop(_heap)[2]
                    break
                # A far deadline is waited for in steps: Condition.wait
                # refuses a timeout beyond threading.TIMEOUT_MAX.
                _cond.wait(None if not _heap else min(_heap[0][0] - now, threading.TIMEOUT_MAX))
        fn, deadline.fn = deadline.fn, None
        if fn is None:
            continue
        try:
            fn()
        except Exception:
            logger.exception("exception in a deadline callback %r", fn)


def _after_fork_in_child() -> None:
    # The timer thread does not exist in the child: start afresh.
    global _cond, _thread, _compact_at
    _cond = threading.Condition(threading.Lock())
    _heap.clear()
    _compact_at = _MIN_COMPACT
    _thread = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
