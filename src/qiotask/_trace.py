"""Trace events, listeners, DEBUG logging and process-wide statistics.

Every step of a task's life emits an event named as QEMU's trace points are
(``qio_task_new``, ``qio_task_thread_start``, ...), in the order of DESIGN §4.
An event reaches:

- every listener added with :func:`add_listener`, as ``fn(event, task, fields)``
  on the thread where the step happened;
- the ``qiotask`` logger at DEBUG level.

When neither is active a task pays one boolean test per step: whether a task
is traced is decided once, when it is created.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from . import _fork

__all__ = [
    "EVENTS",
    "Listener",
    "add_listener",
    "remove_listener",
    "stats",
]

logger = logging.getLogger("qiotask")

#: The events, in the order a threaded task emits them.
EVENTS = (
    "qio_task_new",
    "qio_task_thread_start",
    "qio_task_thread_run",
    "qio_task_thread_exit",
    "qio_task_thread_source_attach",
    "qio_task_thread_source_cancel",
    "qio_task_thread_result",
    "qio_task_complete",
    "qio_task_abort",
)

Listener = Callable[[str, Any, "dict[str, Any]"], None]

# Copy-on-write: emit() iterates a tuple that add/remove replace whole, so a
# listener may add or remove listeners without a lock on the hot path.
_listeners: tuple[Listener, ...] = ()
_listeners_lock = threading.Lock()


# Held across a fork, so that the child never copies a half-made add or
# remove; a leaf lock (nothing else is taken under it).
_fork.guard(lambda: [_listeners_lock])


def add_listener(fn: Listener) -> Callable[[], None]:
    """Call ``fn(event, task, fields)`` for every trace event from now on.

    ``fn`` runs on the thread where the event happened (a pool thread for
    ``qio_task_thread_run`` and ``qio_task_thread_exit``); it must be quick
    and thread-safe.  An exception it raises is logged and ignored.

    Returns:
        A function that removes the listener again.

    Raises:
        TypeError: ``fn`` is not callable.
    """
    global _listeners
    if not callable(fn):
        raise TypeError(f"trace listener must be callable, not {type(fn).__name__}")
    with _listeners_lock:
        _listeners = (*_listeners, fn)
    return lambda: remove_listener(fn)


def remove_listener(fn: Listener) -> None:
    """Stop calling ``fn``; removing one that is not there does nothing."""
    global _listeners
    with _listeners_lock:
        items = list(_listeners)
        if fn in items:
            items.remove(fn)
        _listeners = tuple(items)


def emit(event: str, task: Any, **fields: Any) -> None:
    """Send one event to the listeners and the DEBUG log.  It never raises:
    an event is emitted between the halves of a task's steps, which must
    not be left half made (a listener's error, KeyboardInterrupt and
    SystemExit included, or a field's repr() failing, is logged)."""
    if logger.isEnabledFor(logging.DEBUG):
        try:
            detail = " ".join(f"{k}={v!r}" for k, v in fields.items())
            logger.debug("%s task=%r thread=%s %s", event, task, threading.current_thread().name, detail)
        except Exception:
            logger.exception("trace event %s could not be logged", event)
    for fn in _listeners:
        try:
            fn(event, task, fields)
        except BaseException:  # KeyboardInterrupt too: nothing may stop a step half made
            logger.exception("trace listener %r raised", fn)


# -- statistics ---------------------------------------------------------------

# Counters as itertools.count objects.  Guarantees / assumes: next() on one
# is atomic -- a single C call under the GIL, and an atomic compare-and-swap
# on the free-threaded build since CPython 3.13 (gh-117657) -- so tasks
# finishing on many threads need no lock to count, and every task gets its
# own number.  stats() reads a count through repr(): a snapshot that may be
# a few counts old while tasks finish (an atomic load on free-threaded
# builds since gh-153908; a benign read of one machine word before it), never
# a wrong number of a settled process.
_created = itertools.count(1)
_completed = itertools.count(1)
_failed = itertools.count(1)

#: Each returns the counter's value before the call and advances it; a task
#: takes its number (``Task-<n>``) from count_created.
count_created = _created.__next__
count_completed = _completed.__next__
count_failed = _failed.__next__


def _value(counter: itertools.count[int]) -> int:
    # repr() is "count(N)": the one way to read a count without advancing it.
    return int(repr(counter)[6:-1]) - 1


def stats() -> dict[str, int]:
    """Process-wide counters.

    Returns:
        ``created``, ``completed`` (without error), ``failed`` (with an
        error, cancellation included, and tasks garbage-collected without
        ever completing), ``pending`` (created but not yet
        finished) and ``threads`` (worker threads alive in all pools).
    """
    from ._pool import all_pools

    completed, failed = _value(_completed), _value(_failed)
    created = _value(_created)
    threads = sum(p.statistics()["threads"] for p in all_pools())
    return {
        "created": created,
        "completed": completed,
        "failed": failed,
        "pending": created - completed - failed,
        "threads": threads,
    }
