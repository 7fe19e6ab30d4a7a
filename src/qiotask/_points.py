"""Named points of the concurrency protocol, for forced-interleaving tests.

The code marks each moment where another thread's move could change the
outcome -- just before or just after one of the locked steps of DESIGN §6 --
with a name::

    if _points.hook is not None:
        _points.hook("task.worker-returned", task)

``hook`` is None unless a test installs one (``tests/interleave.py``), so in
a program the mark costs one module attribute load.  A test pauses the thread
that reaches a point until another thread has made its move, so each race is
forced, not hoped for.  A point is never inside a lock: a paused thread holds
nothing another thread needs.

The names, by module (``<module>.<moment>``); the object passed is the one
the step concerns (a task, a context, a deadline, a pool):

- task: ``task.submit`` (run_in_thread, after the deadline is armed, before
  the submit step), ``task.start`` (pool thread, before start-or-refuse), ``task.started``
  (after the worker was let start, before it is called),
  ``task.worker-returned`` (before the worker-returned step),
  ``task.cancel`` (before the cancel step), ``task.timeout`` (deadline
  thread, before its cancel), ``task.finish`` (after the notifiers, before finish),
  ``task.wait`` (after wait() registered, before it blocks),
  ``task.wait-thread`` (after wait_thread() registered, before it blocks), ``task.call-in-main`` (before the request is
  published);
- context: ``context.post`` (before the enqueue step), ``context.wakeup``
  (after it, before the wake-up is sent), ``context.dispatch`` (before the
  batch is taken), ``context.close`` (before close's swap);
- deadline: ``deadline.fire`` (timer thread, after it decided to call a due
  deadline's function, before calling it);
- pool: ``pool.job-done`` (pool thread, after ``deliver`` returned, before
  the next-job step).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["hook"]

#: ``hook(point, obj)``, or None (the normal case).
hook: Callable[[str, object], None] | None = None
