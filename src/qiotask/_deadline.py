"""Deadlines: call ``fn()`` at a monotonic time, on one timer thread.

Used for ``run_in_thread(timeout=...)``, the TLS handshake's timeout and the
pools' growth checks.  A deadline must fire even when the task's loop is busy
or not running (a worker timed out while the loop sits in ``wait_thread()``),
so it cannot be a timer of that loop: one daemon thread, started on first
use, sleeps until the earliest deadline.  It knows nothing of tasks.  The
whole interface::

    handle = call_at(time.monotonic() + 5.0, fn)   # fn() on the timer thread
    handle.cancel()   # True: fn will never run; False: it was already decided

Guarantees:

- ``fn`` runs at most once, on the timer thread, never before ``when``.
- Cancel and fire are decided under one lock.  The timer thread takes a due
  deadline and marks it spent in one locked step, and only then, without
  the lock, calls ``fn``; ``handle.cancel()`` clears the deadline in one
  locked step.  So ``cancel()`` returns True exactly when it stopped the call
  (``fn`` never starts), and False when the call was already decided (``fn``
  is about to start, is running or has run) or the deadline was cancelled
  before.  A caller that got False knows ``fn`` runs, or ran, once.
- ``call_at(math.inf, fn)`` never fires and costs nothing: no heap entry, no
  thread.  A finite deadline, however far, is waited for in steps of at most
  ``threading.TIMEOUT_MAX``, so no wait overflows.
- A cancelled deadline costs O(1), amortized: the heap is swept of cancelled
  entries whenever it reaches twice what the last sweep left, so memory
  stays within about twice the live deadlines (most deadlines are cancelled long before they are due: a task
  that finishes in time).
- The timer thread survives whatever ``fn`` raises, and tells:

  * an ``Exception`` is logged on the ``qiotask`` logger at ERROR, with its
    traceback;
  * a ``KeyboardInterrupt``, ``SystemExit`` or any other ``BaseException``
    is logged the same way, with a message saying that it was raised on
    qiotask's deadline thread and could not be raised to anyone.

  Either way the thread carries on with the next deadline.  Letting such an
  exception end the thread would end every later timeout and the pools'
  growth, process-wide; and re-raising it would reach nobody (a thread's
  ``SystemExit`` ends that thread only, silently).  Code that must stop the
  program from a deadline does so through its own channel (a loop's
  ``call_soon``, ``_thread.interrupt_main()``).
- Once ``fn`` has been called, the timer thread keeps no reference to it,
  nor to its handle, while it waits for the next deadline.
- The timer thread is started once, under the lock, and runs in an empty
  ``contextvars.Context()`` (on a free-threaded build a new thread would
  otherwise start with a copy of the context of whichever ``call_at`` started
  it: trio #3472, anyio #1224).
- Fork: ``before`` takes the lock and the parent releases it after the fork,
  so the child never copies a heap in the middle of a push; the child starts
  with no deadline and no timer thread (the parent's do not exist there), and
  its first ``call_at`` starts one.

Protocol point (:mod:`qiotask._points`): ``deadline.fire``, on the timer
thread, after it decided to call ``fn`` (the deadline is spent: ``cancel()``
returns False from then on), before the call (the handle is passed).

Guarantees / assumes: no step is lock-free.  ``Deadline.fn``, the heap,
``_seq``, ``_compact_at`` and ``_thread`` are read and changed under
``_cond``'s lock only (``call_at(math.inf, ...)`` touches no shared state).
That lock is a leaf: no other lock of qiotask is taken while it is held
(starting the thread takes ``threading``'s own, which CPython re-creates in
a forked child), and ``fn`` runs without it, so ``fn`` may call :func:`call_at` and ``cancel()`` itself.  A
caller may hold a lock of its own when it calls them: a module that imports
this one registers its fork handler after this one's, so its ``before`` runs
first and the fork takes the locks in the same order as such a caller.
"""

from __future__ import annotations

import contextvars
import heapq
import logging
import math
import threading
import time
from collections.abc import Callable

from . import _fork, _points

__all__ = ["THREAD_NAME", "Deadline", "call_at"]

logger = logging.getLogger("qiotask")

#: The name of the timer thread (the tests' leak check knows it).
THREAD_NAME = "qiotask-deadlines"

_INF = math.inf


class Deadline:
    """A pending call; ``cancel()`` it once it is not needed any more."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], object] | None) -> None:
        # Guarded by _cond's lock: the call still to make, None once it was
        # decided (taken by the timer thread, or cancelled).
        self.fn = fn

    def cancel(self) -> bool:
        """Stop the call if it is still to come; from any thread, any number
        of times (``fn`` itself included).

        Returns:
            True if this stopped the call: ``fn`` will never start.  False if
            the timer thread had already decided to call it (``fn`` is about
            to start, runs or has run), or it was cancelled before.
        """
        with _cond:
            fn, self.fn = self.fn, None
        return fn is not None  # fn is dropped here, outside the lock


# _cond's lock guards every Deadline's fn, _heap, _seq, _compact_at and
# _thread; the timer thread waits on _cond for the earliest deadline.
_cond = threading.Condition(threading.Lock())
_heap: list[tuple[float, int, Deadline]] = []
_seq = 0  # ties between equal times go first come, first served
#: A cancel leaves its entry in the heap (popping it out of the middle would
#: cost O(n)); the heap is swept of cancelled entries whenever it reaches
#: _compact_at, which is then set to twice what is left: O(1) per deadline,
#: amortized, and memory bounded by twice the live ones.
_MIN_COMPACT = 64
_compact_at = _MIN_COMPACT
_thread: threading.Thread | None = None


def call_at(when: float, fn: Callable[[], object]) -> Deadline:
    """Call ``fn()`` on the timer thread once ``time.monotonic()`` reaches ``when``.

    ``when`` may be ``math.inf``: never (the handle is returned all the same).

    Returns:
        The handle whose ``cancel()`` stops the call.

    Raises:
        ValueError: ``when`` is NaN.
        RuntimeError: the timer thread could not be started (at the process's
            thread limit); nothing was scheduled.
    """
    global _seq, _compact_at, _thread
    deadline = Deadline(fn)
    if not when < _INF:
        if when == _INF:
            return deadline  # never due: no heap entry, no thread
        raise ValueError(f"call_at: when must be a time, got {when!r}")
    with _cond:
        if _thread is None:
            # Started under the lock, so that two first calls start one
            # thread; it waits for the lock before it looks at the heap.
            thread = threading.Thread(target=contextvars.Context().run, args=(_run,), name=THREAD_NAME, daemon=True)
            thread.start()  # if this raises, nothing was queued
            _thread = thread
        if len(_heap) >= _compact_at:
            _heap[:] = [entry for entry in _heap if entry[2].fn is not None]
            heapq.heapify(_heap)
            _compact_at = max(_MIN_COMPACT, 2 * len(_heap))
        _seq += 1
        heapq.heappush(_heap, (when, _seq, deadline))
        if _heap[0][2] is deadline:
            _cond.notify()  # earlier than what the thread sleeps until
    return deadline


def _run() -> None:
    """The timer thread: wait for the earliest deadline, decide, call; forever."""
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
                    # The decision: from here on cancel() returns False.
                    fn, deadline.fn = deadline.fn, None
                    break
                # A far deadline is waited for in steps: Condition.wait
                # refuses a timeout beyond threading.TIMEOUT_MAX.
                _cond.wait(None if not _heap else min(_heap[0][0] - now, threading.TIMEOUT_MAX))
        assert fn is not None  # entries with None were dropped above
        if _points.hook is not None:
            _points.hook("deadline.fire", deadline)
        _call(fn)
        # Hold nothing of this deadline while waiting for the next one.
        del fn, deadline


def _call(fn: Callable[[], object]) -> None:
    """Call ``fn``; whatever it raises is logged and goes no further."""
    try:
        fn()
    except Exception:
        logger.exception("exception in a deadline callback %r", fn)
    except BaseException as exc:
        # KeyboardInterrupt, SystemExit, or another BaseException: there is
        # nobody on this thread to raise it to (see Guarantees).
        logger.error(
            "%s raised by the deadline callback %r on qiotask's deadline thread, where it could not be"
            " raised to anyone; the deadline thread carries on",
            type(exc).__name__,
            fn,
            exc_info=True,
        )


# -- fork -----------------------------------------------------------------------


def _after_fork_in_child() -> None:
    # The timer thread does not exist in the child: start afresh, with a
    # condition nobody waits on.  The parent's deadlines are dropped (their fn
    # stays set, so a cancel() in the child still returns True: the call
    # never happens).
    global _cond, _thread, _compact_at
    _cond = threading.Condition(threading.Lock())
    _heap.clear()
    _compact_at = _MIN_COMPACT
    _thread = None


_fork.guard(lambda: [_cond], child=_after_fork_in_child)
