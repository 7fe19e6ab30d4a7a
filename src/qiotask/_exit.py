"""Leaving cleanly: :func:`shutdown`, the wait at interpreter exit, and the
report of what they could not settle.

The promise, at interpreter exit (one ``atexit`` hook, :func:`_at_exit`):

- A program with no task in flight pays nothing: no wait, no report.
- The embedded contexts whose loop is not running (the default one, a
  ``MainContext()``) are closed, as before this module existed: nothing
  will run their loops any more.  Completions queued there finish with
  ``ContextClosedError``: ``func`` does not run (its loop is gone), the
  destroy notifiers do, in the completing thread.
- If tasks are in flight, the hook then waits, at most
  :func:`exit_timeout` seconds in all (``qiotask.set_exit_timeout()``, else
  ``QIOTASK_EXIT_TIMEOUT``, else :data:`DEFAULT_EXIT_TIMEOUT`; 0 does not
  wait), for the tasks whose worker is queued or running to get past it.
  Pool threads are daemon threads: without this wait the interpreter stops
  them wherever they are.  A worker that returns during the wait completes
  its task at once, in its pool thread (its context is closed), so the wait
  ends with the last worker, not at the timeout.  The pools are not shut
  down for it: queued workers still fan out to spare threads.
- The wait covers the workers a cancel abandoned (``abandon_on_cancel``)
  too: their tasks finished at the cancel, but each still owns its opaque,
  and its destroy notifier runs when it returns -- in its pool thread, its
  context being closed.  One still running after the wait is cut off and
  named in the report.
- Workers still queued after the wait are cancelled: they never start,
  their tasks finish with ``TaskCancelled``, destroy notifiers included.
- A worker still running is left to run: it owns its opaque, so no destroy
  notifier of its task may run while it does, and nothing can stop a
  thread from outside.  It is *cut off*: the interpreter stops it.
- What did not finish normally is told in ONE warning on the ``qiotask``
  logger, which shows with no logging configured (``logging.lastResort``
  prints WARNING and above to stderr): each task in flight with its state,
  age, thread and the line its worker is blocked on, the tasks cancelled
  before they started, and the tasks that finished with
  ``ContextClosedError`` -- which then log no warning of their own, nor,
  once collected, "failed and nobody retrieved its error": the report told.
  A task cut off whose worker returns later, while the interpreter
  finalizes, is quiet for the same reason.  Tasks that run no worker and
  wait for someone to complete them are not listed: nothing was cut off.
- A forked child leaves the tasks it inherited alone: they are the
  parent's (no wait for their workers, which are not in the child; no
  cancel, which would run their destroy notifiers a second time; no report).

:func:`shutdown` waits the same way at any time, with its own ``timeout``,
but closes nothing and cancels nothing: the program may still run its
loops.  It reports what is left with the same lines (:func:`format_report`).

Why one hook, which closes the contexts itself: ``atexit`` runs the last
registered hook first, and the loop adapters that own contexts
(``loops/asyncio.py``, ``loops/trio.py``) are imported lazily, after this
module.  Had they hooks of their own, those would run before this one and
close the contexts before the report collects: each task would warn alone.
So they register their contexts with ``_driver.ClosedAtExit``, and this
hook closes them once the report collects.

Guarantees / assumes: ``_exit_timeout`` is one module global, stored
whole by ``set_exit_timeout()`` and loaded whole at exit (atomic on every
build); the report's lists are changed under ``_lock`` only,
from the exiting thread and from pool threads whose late completion fails;
``_delivery.on_closed`` is set once, before any context closes, and read
without a lock (one load of a module global).  The states of tasks are read
without their lock only to choose what to wait for; every decision is a
move (``cancel()``), or a wait on the task's own event.  In a forked
child, ``_inspect.all_tasks()`` leaves out the tasks it inherited (see
``_inspect._inherited``).  ``shutdown()`` may run on a loop's own thread
inside that loop's dispatch (from ``func``; with a timeout if that loop
is asyncio's or trio's): the
dispatch it runs then is a nested one, which the queue allows (each item is
taken by one ``popleft``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence

from . import _adapters, _delivery, _trace
from ._checks import check_duration, wait_timeout
from ._context import MainContext, all_contexts
from ._driver import ClosedAtExit
from ._inspect import WAITING_TEXT, TaskInfo, all_tasks, inherited_tasks, tasks
from ._pool import all_pools
from ._state import COMPLETING, DELIVERING, FINISHED, QUEUED, RUNNING, TaskCore
from ._threadjob import ThreadJob

__all__ = [
    "DEFAULT_EXIT_TIMEOUT",
    "EXIT_TIMEOUT_VARIABLE",
    "exit_timeout",
    "format_report",
    "set_exit_timeout",
    "shutdown",
]

logger = logging.getLogger("qiotask")

#: Seconds the exit waits for workers by default: long enough for work that
#: is about to end (a write, a DNS answer), short enough that a program
#: whose worker hangs still ends soon, and says why.
DEFAULT_EXIT_TIMEOUT = 3.0

#: The environment variable read when ``set_exit_timeout()`` was not called.
EXIT_TIMEOUT_VARIABLE = "QIOTASK_EXIT_TIMEOUT"

#: What set_exit_timeout() set; None: the environment's, else the default.
_exit_timeout: float | None = None

#: How often a wait for a loop that may stop looks again whether it still
#: runs (a wait ends at once when its task finishes).
_LOOP_RECHECK = 0.05


def set_exit_timeout(seconds: float | None) -> float | None:
    """Set how long interpreter exit waits for running workers.

    Args:
        seconds: the most seconds to wait, in all; 0 does not wait;
            ``math.inf`` waits as long as the workers run.  None goes back
            to ``QIOTASK_EXIT_TIMEOUT``, else the default
            (:data:`DEFAULT_EXIT_TIMEOUT`, 3 s).

    Returns:
        The previous setting (None if it was not set).

    Raises:
        TypeError: ``seconds`` is not a number or None.
        ValueError: ``seconds`` is negative or NaN.
    """
    global _exit_timeout
    value = check_duration(seconds, "set_exit_timeout", "seconds", optional=True)
    previous, _exit_timeout = _exit_timeout, value
    return previous


def exit_timeout() -> float:
    """The seconds interpreter exit waits for running workers now.

    Raises:
        ValueError: ``QIOTASK_EXIT_TIMEOUT`` is not a number of seconds (its
            value is named).
    """
    if _exit_timeout is not None:
        return _exit_timeout
    text = os.environ.get(EXIT_TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_EXIT_TIMEOUT
    try:
        return check_duration(float(text), "", EXIT_TIMEOUT_VARIABLE)
    except ValueError as exc:
        raise ValueError(f"{EXIT_TIMEOUT_VARIABLE}={text!r} is not a number of seconds (0 or more)") from exc


# -- shutdown -------------------------------------------------------------------


def shutdown(timeout: float | None = None) -> bool:
    """Settle what is left before the program exits.

    Shuts down every pool (the default pool is made anew on next use) and
    waits for their workers to return; fails, with ``ContextClosedError``,
    the completions queued on contexts whose loop is closed, so that their
    destroy notifiers run; and waits for completions on its way to a loop
    that another thread runs.  ``timeout`` bounds all of it together.
    Completions queued for a context of the calling thread run here, on
    that thread, as its loop would run them.  It never waits on a loop that
    is not running, and closes and cancels nothing: completions queued on a
    context of another thread that nobody runs now stay queued (run the
    loop, or they fail at exit).

    What is left when it returns False is logged in one WARNING on the
    ``qiotask`` logger, as the exit report is (docs/tracing.md).

    It waits for workers, so it cannot run in one: called on a pool
    thread, it raises.  With no timeout it cannot run inside a running
    asyncio loop (a ``MainLoop`` running a ``MainContext()`` included) or
    trio run either: that loop would stop while it waits,
    and a worker waiting for the loop (``qiotask.from_thread.run()``) would
    wait for ever; it raises, and a timeout bounds the stop.

    Args:
        timeout: seconds, or None (or ``math.inf``) to wait as long as
            workers run.

    Returns:
        True if no task is left pending (``qiotask.stats()["pending"]``;
        in a forked child, not counting the tasks it inherited, which are
        the parent's).

    Raises:
        TypeError, ValueError: ``timeout`` is not a number of seconds.
        RuntimeError: called on a thread of a pool (a worker, or a
            completion run there), or with no timeout inside a running
            asyncio loop or trio run.  Nothing was shut down.
    """
    seconds = wait_timeout(check_duration(timeout, "shutdown", optional=True))
    me = threading.current_thread()
    for pool in all_pools():
        if pool._owns(me):
            # It would wait for this thread's own worker; and two workers
            # calling it would each wait for the other.
            raise RuntimeError(
                f"qiotask.shutdown() called on {me.name!r}, a thread of pool {pool.name!r}: it waits for every "
                "pool's workers, this thread's too; call it from a thread outside the pools"
            )
    if seconds is None and _adapters.async_adapter() is not None:
        raise RuntimeError(
            "qiotask.shutdown() with no timeout inside a running asyncio loop or trio run: it would block "
            "that loop for as long as workers run, and a worker waiting for it (qiotask.from_thread.run()) "
            "for ever; pass a timeout, or call it once the loop has returned"
        )
    started = time.monotonic()
    deadline = None if seconds is None else started + seconds
    own = [ctx for ctx in all_contexts() if not ctx.closed and ctx.thread is me]
    if own:
        _drain_pools_serving(own, deadline)
    else:
        _drain_pools(deadline)
    for ctx in all_contexts():
        ctx.settle()
        if not ctx.closed and ctx.thread is me:
            # This thread's own loop: run what is queued for it here, as the
            # loop would (no other thread can, and it may never run again).
            ctx._dispatch()
    if _pending():
        _wait_for_loops(deadline)  # (a look at every object: only if needed)
    if _pending() == 0:
        return True
    infos = tasks(stacks=True)
    if infos:
        headline = f"qiotask.shutdown() returns False after {time.monotonic() - started:.1f} s"
        logger.warning("%s", format_report(headline, infos))
    return False


def _drain_pools(deadline: float | None) -> bool:
    """Shut down every pool; wait until ``deadline`` for their threads."""
    drained = True
    for pool in all_pools():
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        drained = pool.shutdown(wait=True, timeout=remaining) and drained
    return drained


def _drain_pools_serving(own: list[MainContext], deadline: float | None) -> None:
    """:func:`_drain_pools`, running meanwhile what is queued for ``own``,
    the calling thread's contexts: a worker may wait for one of them
    (``call_in_main()``, ``from_thread.run_sync()``), and this thread,
    blocked here, is the one that runs them -- without this, ``shutdown()``
    would wait for a worker that waits for it.  (Not ``from_thread.run()``
    inside a running loop: its coroutine needs the loop itself to turn.)"""
    while True:
        slice_end = time.monotonic() + _LOOP_RECHECK
        if _drain_pools(slice_end if deadline is None else min(deadline, slice_end)):
            return
        for ctx in own:
            if not ctx.closed and len(ctx._dispatcher):
                ctx._dispatch()
        if deadline is not None and time.monotonic() >= deadline:
            return


def _in_states(states: Iterable[int]) -> list[TaskCore]:
    """This process's tasks in one of ``states`` now (a lock-free look at
    each state, which only moves forward: whatever is decided after goes
    through a move).  Not those a forked child inherited (``all_tasks()``
    leaves them out)."""
    wanted = frozenset(states)
    return [task for task in all_tasks() if getattr(task, "_s", FINISHED) in wanted]


def _pending() -> int:
    """``qiotask.stats()["pending"]``, less, in a forked child, the tasks
    it inherited that are not finished: the parent's, which no thread of
    the child will finish."""
    pending = _trace.stats()["pending"]
    if pending:
        pending -= sum(1 for task in inherited_tasks() if getattr(task, "_s", FINISHED) != FINISHED)
    return pending


def _wait_for_loops(deadline: float | None) -> None:
    """Wait until ``deadline`` for completions on their way to a loop that
    another thread runs.  With no deadline, only for loops known to run
    now, and only while they do: never for a loop that nobody runs."""
    me = threading.current_thread()
    for task in _in_states((COMPLETING, DELIVERING)):
        ctx = task._context
        while task._s != FINISHED:
            if ctx.closed or ctx.thread is me or not ctx.thread.is_alive():
                break  # nobody else will run this completion
            if deadline is None:
                if ClosedAtExit.loop_runs(ctx) is not True:
                    break
                slice_ = _LOOP_RECHECK
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                slice_ = min(left, _LOOP_RECHECK)
            task.wait(slice_)  # type: ignore[attr-defined]


# -- the report -------------------------------------------------------------------


def format_report(
    headline: str,
    left: list[TaskInfo],
    cancelled: Sequence[str] = (),
    closed: dict[str, list[str]] | None = None,
    cut_off: str = "",
    abandoned: Sequence[tuple[str, str]] = (),
) -> str:
    """The report of what did not finish, one task a line: the tasks
    ``left`` in flight (name, what they wait for, for how long, on which
    thread, and the worker's innermost frame), the tasks ``cancelled``
    before their worker started, the tasks that finished with
    ``ContextClosedError`` (``closed``: their names by why), and the
    workers a cancel abandoned that still run (``abandoned``: their
    tasks' names and threads).  ``cut_off`` ends the line above the tasks
    in flight."""
    lines = [headline + ":"]
    if left:
        lines.append(f"{_count(len(left))} still in flight{cut_off}:")
        for info in left:
            line = f"  {info.name!r} ({info.state.value}): {WAITING_TEXT.get(info.waiting_for, info.waiting_for)}"
            if info.age is not None:
                line += f", for {info.age:.1f} s"
            if info.thread is not None:
                line += f", on thread {info.thread!r}"
            if info.waiting_for in ("loop", "callbacks"):
                line += f", context {info.context!r}"
            if info.cancelled:
                line += ", cancel asked"
            lines.append(line)
            lines.extend(f"      {where}" for where in _blocked_at(info.stack))
    if cancelled:
        lines.append(f"{_count(len(cancelled))} cancelled before a worker started (destroy notifiers ran):")
        lines.append("  " + ", ".join(repr(name) for name in cancelled))
    if abandoned:
        if len(abandoned) == 1:
            lines.append("1 worker abandoned by a cancel still runs, cut off: its destroy notifier never runs:")
        else:
            lines.append(
                f"{len(abandoned)} workers abandoned by a cancel still run, cut off: their destroy notifiers never run:"
            )
        lines.extend(f"  {name!r} on thread {thread!r}" for name, thread in abandoned)
    for why, names in (closed or {}).items():
        lines.append(
            f"{_count(len(names))} finished with ContextClosedError, func not called (destroy notifiers ran): {why}:"
        )
        lines.append("  " + ", ".join(repr(name) for name in names))
    return "\n".join(lines)


#: Where the standard library lives: a worker blocked in ``Event.wait()``
#: is shown at its own line too, below the library's.
_STDLIB = os.path.dirname(threading.__file__) + os.sep


def _blocked_at(stack: tuple[str, ...] | None) -> list[str]:
    """The worker's innermost frame, and if that is the standard library's,
    the innermost one of the worker's own code."""
    if not stack:
        return []
    lines = [f"at {stack[-1]}"]
    if stack[-1].startswith(_STDLIB):
        own = next((frame for frame in reversed(stack) if not frame.startswith(_STDLIB)), None)
        if own is not None:
            lines.append(f"called from {own}")
    return lines


def _count(n: int) -> str:
    return f"{n} task" if n == 1 else f"{n} tasks"


# -- interpreter exit -----------------------------------------------------------------

# _lock guards the three below: what the exit report collects, and the ids
# of the tasks it named.
_lock = threading.Lock()
_collecting = False
_closed: dict[str, list[str]] = {}  # why -> names of tasks that finished with ContextClosedError
_named: set[int] = set()


def _closed_at_exit(task: TaskCore) -> bool:
    """``_delivery.on_closed``: take the warning of a task that finished
    with ContextClosedError into the report (True), or leave it (False)."""
    with _lock:
        if _collecting:
            ctx = task._context
            why = f"its context {ctx.name!r} is gone{ctx._closed_hint()}"
            _closed.setdefault(why, []).append(task.name)
        elif task._id not in _named:
            return False  # a task the report did not name: it warns itself
    task._retrieved = True  # the report told of its error
    return True


def _at_exit() -> None:
    """The interpreter exits: wait for the workers in flight, settle what
    can be settled, report what could not (see the module's docstring)."""
    global _collecting
    try:
        _exit_report()
    finally:
        # Whatever stopped the report (a Ctrl-C, an error), stop collecting:
        # a task that closes later warns on its own rather than into a
        # report that will never be made (those it named stay quiet).
        with _lock:
            _collecting = False


def _exit_report() -> None:
    global _collecting
    try:
        limit = exit_timeout()
    except ValueError as exc:
        logger.warning("%s; waiting the default %g s", exc, DEFAULT_EXIT_TIMEOUT)
        limit = DEFAULT_EXIT_TIMEOUT
    abandoned = _abandoned_workers()
    in_flight = _trace.stats()["pending"] > 0 or bool(abandoned)
    if in_flight:
        with _lock:
            _collecting = True
        _delivery.on_closed = _closed_at_exit  # before any context closes
    # Closed before the wait: a worker that returns during it completes its
    # task at once, in its own thread, so the wait ends with the last one.
    for ctx in ClosedAtExit.idle_contexts():
        _quietly(ctx.close)
    for ctx in all_contexts():
        _quietly(ctx.settle)  # loops closed without a word: fail what they hold
    if not in_flight:
        return
    started = time.monotonic()
    seconds = wait_timeout(limit)
    deadline = None if seconds is None else started + seconds
    try:
        _wait_for_workers(deadline)
        _wait_for_abandoned(abandoned, deadline)
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: stop waiting, report now
    waited = time.monotonic() - started
    cancelled = []
    for task in _in_states((QUEUED,)):
        if _quietly(task.cancel):  # type: ignore[attr-defined]
            task._retrieved = True  # the report names it
            cancelled.append(task.name)
    left = [info for info in tasks(stacks=True) if info.waiting_for != "completion"]
    still = [(job.task.name, thread.name) for thread, job in _abandoned_workers()]
    with _lock:
        _collecting = False
        _named.update(info.id for info in left)
        closed = dict(_closed)
    if left or cancelled or closed or still:
        headline = (
            f"qiotask: at exit, waited {waited:.1f} s for workers (the exit timeout is {limit:g} s: "
            f"qiotask.set_exit_timeout() or {EXIT_TIMEOUT_VARIABLE} sets it); these tasks did not finish normally"
        )
        cut_off = f", cut off: {'its' if len(left) == 1 else 'their'} func and destroy notifiers never run"
        logger.warning("%s", format_report(headline, left, cancelled, closed, cut_off, still))


def _abandoned_workers() -> list[tuple[threading.Thread, ThreadJob]]:
    """The workers a cancel abandoned that still run, ``(thread, job)``:
    their tasks finished at the cancel, so no task lists them, but each
    owns its opaque until it returns, and its destroy notifier runs then.
    Their pools know them: the job a pool thread runs is ``ThreadJob.run``."""
    found = []
    for pool in all_pools():
        for thread, fn, _ in pool.jobs()[1]:
            job = getattr(fn, "__self__", None)
            if isinstance(job, ThreadJob) and job.abandoned:
                found.append((thread, job))
    return found


def _wait_for_abandoned(abandoned: list[tuple[threading.Thread, ThreadJob]], deadline: float | None) -> None:
    """Wait until ``deadline`` for the pool threads that ran ``abandoned``
    workers to be done with them: the worker returned and its destroy
    notifier ran (at exit its context is closed, so in that thread).  No
    event marks it; the pools' running jobs are looked at every
    :data:`_ABANDONED_RECHECK` seconds."""
    jobs = {id(job) for _, job in abandoned}
    while jobs:
        running = {id(job) for _, job in _abandoned_workers()}
        jobs &= running
        if not jobs:
            return
        slice_ = _ABANDONED_RECHECK
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            slice_ = min(left, slice_)
        time.sleep(slice_)


#: How often (seconds) the exit looks whether abandoned workers returned.
_ABANDONED_RECHECK = 0.02


def _wait_for_workers(deadline: float | None) -> None:
    """Wait until ``deadline`` for the tasks whose worker is queued or
    running now to get past it.  The pools are left as they are (not shut
    down), so that queued workers still fan out to spare threads."""
    for task in _in_states((QUEUED, RUNNING)):
        event = task._move_register_wait()  # (wait() refuses the context's thread: at exit it need not)
        while event is not None and task._s in (QUEUED, RUNNING):
            # A task of a closed context finishes as its worker returns;
            # one of a loop still open only gets its completion queued,
            # which sets no event: look at its state again every so often.
            slice_ = None if task._context.closed else _LOOP_RECHECK
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                slice_ = left if slice_ is None else min(left, slice_)
            event.wait(slice_)


def _quietly(fn: object) -> bool:
    """``fn()`` at exit, where an exception has nobody to reach: logged."""
    try:
        return bool(fn())  # type: ignore[operator]
    except Exception:
        logger.exception("qiotask: error while settling tasks at exit")
        return False


# Registered when qiotask is imported, before any loop adapter: see the
# module's docstring for why this one hook does the closing.
atexit.register(_at_exit)
