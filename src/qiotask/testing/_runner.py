"""LoopRunner: run a context's loop on the calling thread, always bounded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._context import MainContext, MainLoop
from .._task import Task, TaskState

__all__ = ["LoopRunner"]

#: How long a run may last by default, in seconds: far above what a passing
#: test needs, far below a CI job's patience.
DEFAULT_TIMEOUT = 10.0


class LoopRunner:
    """Runs ``context``'s loop on the calling thread, for a bounded time.

    Every method runs the loop with ``qiotask.MainLoop(context).run()``, so
    the context's callbacks (task completions, timers, fd watches) run on
    the calling thread, and raises ``AssertionError`` if the run outlasts
    its ``timeout``.

    Args:
        context: the context to run; the calling thread must be allowed to
            run it (its own thread, for Tk and Qt).
    """

    def __init__(self, context: MainContext) -> None:
        self.context = context
        self.loop = MainLoop(context)
        #: How many times the loop was run (a leak check tells "never ran"
        #: from "did not run long enough").
        self.runs = 0
        self.timed_out = False

    def quit(self, *_: Any) -> None:
        """Make the current run return; from any thread, and usable as a
        callback (it ignores its arguments)."""
        self.loop.quit()

    def run(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Run until :meth:`quit`.

        Raises:
            AssertionError: ``quit()`` did not come within ``timeout`` seconds.
        """
        self.timed_out = False

        def give_up() -> bool:
            self.timed_out = True
            self.loop.quit()
            return False

        self.runs += 1
        guard = self.context.timeout_add(timeout * 1000, give_up)
        try:
            self.loop.run()
        finally:
            guard.remove()
        assert not self.timed_out, f"the loop ran {timeout} s without quit()"

    def run_until(self, predicate: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT) -> None:
        """Run until ``predicate()`` holds, asking it after every batch of
        callbacks; the loop runs at least once, even if it holds already.
        The loop spins meanwhile: prefer :meth:`run_until_done` when waiting
        for tasks.

        Raises:
            AssertionError: ``predicate()`` was still false after ``timeout`` seconds.
        """

        def check() -> bool:
            if predicate():
                self.loop.quit()
                return False
            return True

        watch = self.context.idle_add(check)
        try:
            self.run(timeout)
        finally:
            watch.remove()

    def run_until_done(self, *tasks: Task[Any], timeout: float = DEFAULT_TIMEOUT) -> None:
        """Run until every one of ``tasks`` has finished: its ``func``,
        done-callbacks and destroy notifiers have run.

        The loop sleeps while it waits: each task quits it from a
        done-callback once all are done.

        Raises:
            AssertionError: a task had not finished after ``timeout`` seconds
                (the message names those tasks and their states).
        """
        waiting = [task for task in tasks if not task.done()]
        if waiting:

            def quit_if_all_done(_: Task[Any]) -> None:
                if all(task.done() for task in waiting):
                    self.loop.quit()

            for task in waiting:
                task.add_done_callback(quit_if_all_done)
            try:
                self.run(timeout)
            except AssertionError:
                late = ", ".join(repr(task) for task in tasks if not task.done())
                raise AssertionError(f"the loop ran {timeout} s and these tasks did not finish: {late}") from None
        # A task is done from the moment its func runs, and finished once its
        # notifiers ran too; both happen in one dispatch, which the quit
        # above follows.
        unfinished = [task for task in tasks if task.state is not TaskState.FINISHED]
        assert not unfinished, f"tasks not finished after their completion ran: {unfinished}"
