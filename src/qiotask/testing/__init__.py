"""Testing code that uses qiotask: a context of each loop, a bounded loop
runner, a leak check, and the pytest plugin that serves them as fixtures.

The pytest plugin (:mod:`qiotask.testing.plugin`) is registered as a
``pytest11`` entry point, so it is there whenever qiotask is installed; it
does nothing for a test that uses none of its fixtures.  A test asks for
``qiotask_context`` (a fresh context of the loop named by the
``qiotask_loop`` fixture, "asyncio" unless overridden or parametrized) and
``qiotask_runner`` (a :class:`LoopRunner` for it); when the test ends, it
fails if a task made on that context is not finished.  See docs/testing.md.

Without pytest, the same parts serve any test runner::

    handle = open_loop("trio")  # LoopUnavailable if trio is missing
    watch = TaskWatch(handle.context)
    watch.start()
    ...  # make tasks, LoopRunner(handle.context).run_until_done(task)
    watch.stop()
    assert watch.problems(loop_runs=None) is None
    handle.cleanup()

Importing this package imports no toolkit: each loop's toolkit is imported
when that loop is opened.
"""

from __future__ import annotations

from ._leaks import TaskWatch as TaskWatch
from ._loops import LOOPS as LOOPS
from ._loops import LoopHandle as LoopHandle
from ._loops import LoopUnavailable as LoopUnavailable
from ._loops import open_loop as open_loop
from ._runner import LoopRunner as LoopRunner

__all__ = [
    "LOOPS",
    "LoopHandle",
    "LoopRunner",
    "LoopUnavailable",
    "TaskWatch",
    "open_loop",
]
