"""``qiotask.tasks()``: the tasks in flight now, for a person to read.

What it answers: which tasks are alive and not finished, in which state,
waiting for what (a pool thread, a limiter slot, their worker, their loop),
for how long, on which worker thread, with what progress -- and, on
request, where each running worker is blocked.

Cost: next to nothing on the hot path.  Tasks are found by asking the
garbage collector for every object it tracks (``gc.get_objects()``: a task
is a tracked object from its creation), pool and limiter queues are read
under their own locks, and a pool thread keeps the job it runs in one slot
(``_Worker.running``): two stores per job, on the pool thread, the only
cost paid when nobody lists (a job that waits for a :class:`Limiter` slot
also takes the time it began waiting: only those over the limit).  A call costs time in proportion to
the number of objects in the process -- milliseconds for a large program --
so it is for looking, not for polling in a loop.

Guarantees / assumes (without the GIL too): each task's fields are read
under the task's own lock, one task at a time (a thread never holds two
task locks), so a task's line is one consistent moment of that task; the
pool and limiter queues are copied under their locks (and the registry of
limiters, a WeakSet, is copied under its own: iterating one while another
thread adds to it fails); a worker's running job is one attribute load.
The jobs seen in the queues are held until the tasks are read, so that
their ids, which key what was seen, cannot be reused meanwhile.  A task is
recognised by its type alone (:func:`all_tasks`): ``isinstance()`` would
ask every other object for its ``__class__``, which runs their code (a
lazy proxy's, a dead ``weakref.proxy``'s, which raises).  Different tasks
are read at slightly different moments: the listing is a snapshot per
task, not of the whole process.
``sys._current_frames()`` (for ``stacks=True``) is CPython's debugging
interface; on a free-threaded build it stops the other threads to take
their frames.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import reprlib
import sys
import threading
import time
import traceback
import weakref
from typing import Any

from ._context import MainContext, all_contexts
from ._limiter import _all_limiters, _registry_lock
from ._pool import all_pools
from ._state import (
    COMPLETING,
    DELIVERING,
    FINISHED,
    NO_CONTROL,
    PENDING,
    PUBLIC_STATE,
    QUEUED,
    RUNNING,
    TaskCore,
    TaskState,
)
from ._threadjob import _RUN_CODE, ThreadJob

__all__ = ["TaskInfo", "format_tasks", "tasks"]

#: What a task in each state waits for (QUEUED and RUNNING are refined by
#: where its job is: see ``_waiting_for``).
_WAITING = {
    PENDING: "completion",  # complete()/abort() from a timer, an fd watch or your code
    QUEUED: "pool",  # a pool thread to start its worker
    RUNNING: "worker",  # its worker to return
    COMPLETING: "loop",  # its context's loop to run the completion
    DELIVERING: "callbacks",  # func and the notifiers, running now
}

#: Each ``waiting_for`` in words, for reports (the exit report, shutdown()'s,
#: the pytest plugin's leak check).
WAITING_TEXT = {
    "worker": "its worker runs",
    "pool": "queued for a pool thread",
    "limiter": "queued for a Limiter slot",
    "executor": "runs in an executor",
    "loop": "its completion waits for its context's loop",
    "callbacks": "its completion runs now",
    "completion": "nothing completed it",
}


def waiting_text(state: int) -> str:
    """What a task in ``state`` waits for, in words, from its state alone
    (without looking where its job is, as :func:`tasks` does)."""
    return WAITING_TEXT[_WAITING[state]]


_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One task in flight, as :func:`qiotask.tasks` saw it.

    Attributes:
        name: the task's name.
        id: its number (``Task-<id>`` unless named).
        state: its :class:`TaskState`: FINISHED only for a task listed
            from inside its own completion (its done-callbacks still to
            run: ``waiting_for`` is ``"callbacks"``).
        waiting_for: what it waits for: ``"completion"`` (nothing runs it:
            a timer, an fd watch or your code is to complete it),
            ``"limiter"`` (a slot of its :class:`Limiter`), ``"pool"`` (a
            pool thread), ``"worker"`` (its worker, running on ``thread``),
            ``"executor"`` (its ``run_in_executor`` call), ``"loop"`` (its
            context's loop to run the completion) or ``"callbacks"``
            (``func`` and the notifiers, running now).
        age: seconds since its worker was submitted (queued or running):
            to its :class:`Limiter`, if it had to wait for a slot, else to
            its pool; else None.
        context: the name of its context.
        thread: the name of the pool thread running its worker, else None.
        progress: its last ``report_progress()`` as ``(done, total,
            message)``, else None.
        cancelled: whether a cancel (or a timeout) was asked.
        source: a short ``repr()`` of its source.
        stack: with ``stacks=True``, the running worker's stack, outermost
            call first, from the worker function down, one
            ``"file:line in function: source line"`` each; else None.
    """

    name: str
    id: int
    state: TaskState
    waiting_for: str
    age: float | None
    context: str
    thread: str | None
    progress: tuple[float, float | None, str | None] | None
    cancelled: bool
    source: str
    stack: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain JSON types (the state as its value)."""
        fields = dataclasses.asdict(self)
        fields["state"] = self.state.value
        fields["stack"] = list(self.stack) if self.stack is not None else None
        fields["progress"] = list(self.progress) if self.progress is not None else None
        return fields


def tasks(*, stacks: bool = False) -> list[TaskInfo]:
    """The tasks alive and not yet finished, oldest first.  In a forked
    child, not those it inherited: they are the parent's, and their
    workers are not in the child.

    Args:
        stacks: also take each running worker's stack (``TaskInfo.stack``).

    Returns:
        One :class:`TaskInfo` per task: tasks with an age first, oldest
        first, then the others by number.

    Any thread may call it; nothing it reads is changed.  See
    docs/tracing.md ("Observing qiotask").
    """
    now = time.monotonic()
    queued_at: dict[int, float] = {}  # id(ThreadJob) -> when submitted
    job_of: dict[int, int] = {}  # id(fn) -> id(ThreadJob), for the jobs the pools hold
    threads: dict[int, threading.Thread] = {}  # id(ThreadJob) -> the thread running it
    seen: list[Any] = []  # the jobs the ids above name, held so that no id is reused
    for pool in all_pools():
        queued, running = pool.jobs()
        seen.append((queued, running))
        for fn, at in queued:
            job = getattr(fn, "__self__", None)
            queued_at[id(job)] = at
            job_of[id(fn)] = id(job)
        for thread, fn, at in running:
            job = getattr(fn, "__self__", None)
            queued_at[id(job)] = at
            job_of[id(fn)] = id(job)
            threads[id(job)] = thread
    waiting_in_limiter: set[int] = set()
    with _registry_lock:  # a WeakSet: not to be iterated while a limiter is added
        limiters = list(_all_limiters)
    for limiter in limiters:
        with limiter._lock:
            waiting = [(fn, at) for _, fn, _, _, at in limiter._waiting]
            waited = list(limiter._waited.items())
        seen.append(waiting)
        for fn, at in waiting:
            key = id(getattr(fn, "__self__", None))
            waiting_in_limiter.add(key)
            queued_at[key] = at
        # A job that waited for a slot counts its age from then, not from
        # its hand-over to the pool.  Read after the pools: an id in
        # _waited names a job alive now, and one seen in a pool is held, so
        # the same id is the same job.
        for fn_id, at in waited:
            handed = job_of.get(fn_id)
            if handed is not None:
                queued_at[handed] = at
    frames = sys._current_frames() if stacks else {}

    infos = []
    for task in all_tasks():
        info = _describe(task, now, queued_at, threads, waiting_in_limiter, frames)
        if info is not None:
            infos.append(info)
    del seen
    infos.sort(key=lambda info: (info.age is None, -(info.age or 0.0), info.id))
    return infos


def all_tasks() -> list[TaskCore]:
    """Every task object of this process alive (finished or not), found
    through the garbage collector; in a forked child, not those it
    inherited (:func:`inherited_tasks`).  By type alone: ``isinstance()``
    would ask each other object for its ``__class__``, and a proxy's answer
    may raise."""
    every = [obj for obj in gc.get_objects() if issubclass(type(obj), TaskCore)]
    if not _inherited:
        return every
    return [task for task in every if getattr(task, "_context", None) not in _inherited]


def inherited_tasks() -> list[TaskCore]:
    """In a forked child, the task objects it inherited that are alive
    (finished or not); else none."""
    if not _inherited:
        return []
    every = [obj for obj in gc.get_objects() if issubclass(type(obj), TaskCore)]
    return [task for task in every if getattr(task, "_context", None) in _inherited]


def _describe(
    task: TaskCore,
    now: float,
    queued_at: dict[int, float],
    threads: dict[int, threading.Thread],
    waiting_in_limiter: set[int],
    frames: dict[int, Any],
) -> TaskInfo | None:
    lock = getattr(task, "_lock", None)
    if lock is None:
        return None  # still in Task.__init__
    with lock:
        state = getattr(task, "_s", FINISHED)
        if state == FINISHED:
            return None
        job = task._job
        ctl = task._ctl
        source = task._source
        progress = ctl.progress if ctl is not NO_CONTROL else None
        cancelled = ctl is not NO_CONTROL and ctl.cancel is not None
    key = id(job)
    waiting_for = _WAITING[state]
    thread = threads.get(key) if isinstance(job, ThreadJob) else None
    if state == QUEUED and key in waiting_in_limiter:
        waiting_for = "limiter"
    elif state == RUNNING and job is not None and key not in queued_at:
        waiting_for = "executor"  # run_in_executor: no pool of ours runs it
    stack = None
    if thread is not None and thread.ident in frames:
        stack = _worker_stack(frames[thread.ident])
    at = queued_at.get(key) if state in (QUEUED, RUNNING) else None
    return TaskInfo(
        name=task.name,
        id=task._id,
        state=PUBLIC_STATE[state],
        waiting_for=waiting_for,
        age=None if at is None else max(0.0, now - at),
        context=task._context.name,
        thread=thread.name if thread is not None else None,
        progress=progress,
        cancelled=cancelled,
        source=_safe_repr(source),
        stack=stack,
    )


def _worker_stack(frame: Any) -> tuple[str, ...]:
    """The frames from the worker function down (the pool's own frames above
    ``ThreadJob.run`` are left out), outermost first."""
    summary = traceback.extract_stack(frame)
    codes = []
    walk = frame
    while walk is not None:
        codes.append(walk.f_code)
        walk = walk.f_back
    codes.reverse()  # outermost first, as extract_stack gives them
    start = 0
    for index, code in enumerate(codes):
        if code is _RUN_CODE:
            start = index + 1
    return tuple(
        f"{entry.filename}:{entry.lineno} in {entry.name}" + (f": {entry.line}" if entry.line else "")
        for entry in summary[start:]
    )


def _safe_repr(obj: Any) -> str:
    try:
        return _short.repr(obj)
    except Exception as exc:  # a user's __repr__ may fail: say so, not raise
        return f"<{type(obj).__name__}: repr() raised {type(exc).__name__}>"


def format_tasks(infos: list[TaskInfo]) -> str:
    """``infos`` as a table for people, one task per line; with stacks, each
    running worker's stack below its line."""
    if not infos:
        return "no task in flight\n"
    rows = [("TASK", "STATE", "WAITING FOR", "AGE", "CONTEXT", "THREAD", "PROGRESS")]
    for info in infos:
        rows.append(
            (
                info.name + (" (cancelled)" if info.cancelled else ""),
                info.state.value,
                info.waiting_for,
                "-" if info.age is None else f"{info.age:.1f}s",
                info.context,
                info.thread or "-",
                _progress_text(info.progress),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        stack = infos[index - 1].stack if index else None
        if stack:
            lines.extend(f"    {frame}" for frame in stack)
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    """A progress figure, short: ``:g``, or all its digits for an int too
    large for a float (report_progress takes any int)."""
    try:
        return f"{value:g}"
    except OverflowError:
        return str(value)


def _progress_text(progress: tuple[float, float | None, str | None] | None) -> str:
    if progress is None:
        return "-"
    done, total, message = progress
    text = _number(done) if total is None else f"{_number(done)}/{_number(total)}"
    return f"{text} {message}" if message else text


# -- fork -----------------------------------------------------------------------

#: In a forked child, the contexts alive at the fork: the parent's, which
#: ``_context`` closes in the child without running or failing what they
#: hold.  Their tasks are the parent's too: their workers are not in the
#: child, and their destroy notifiers are the parent's to run, so the child
#: neither lists them (:func:`tasks`), nor waits for, cancels or reports
#: them (``_exit``).  A task's context is set before the task is shared and
#: never changed.  Filled in the child, while it has one thread, before any
#: of its own contexts exists; afterwards only asked (a set lookup).
_inherited: weakref.WeakSet[MainContext] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Runs after _context's handler (registered first: this module imports
    # it), which released the registry's lock in the child.  Not a
    # _fork.guard: the tests run those handlers in the parent by hand.
    _inherited.update(all_contexts())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
