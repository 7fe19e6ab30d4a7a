"""TaskWatch: the tasks made on one context while a test ran, and what a
test left behind there.

A watch is a trace listener (``qiotask.trace.add_listener``): it sees each
task's ``qio_task_new`` event on the thread that made the task and keeps a
weak reference to those of its context, so it changes no task's lifetime.
It also sees each of them finish (``qio_task_complete``/``qio_task_abort``),
so that one collected before it finished is reported too -- whatever the
warning filters make of the ``ResourceWarning`` such a task emits.
Listening makes every task made meanwhile a traced one (an event per
step); that costs microseconds per task, and only while a watch runs.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from .. import _trace
from .._context import MainContext
from .._errors import TaskCancelled, TaskStateError
from .._inspect import waiting_text
from .._task import Task, TaskState

__all__ = ["TaskWatch"]

#: How long :meth:`TaskWatch.settle` runs the loop for tasks a failed test
#: left behind, in seconds.
SETTLE_TIMEOUT = 5.0


class TaskWatch:
    """Records the tasks made on ``context`` from :meth:`start` to :meth:`stop`."""

    def __init__(self, context: MainContext) -> None:
        self.context = context
        # Written by the listener on any thread that makes a task; the lock
        # makes each add and each snapshot whole.
        self._lock = threading.Lock()
        self._tasks: weakref.WeakSet[Task[Any]] = weakref.WeakSet()
        # Each watched task's number -> a weak reference whose callback
        # notes the task's name if it is collected unfinished; dropped when
        # the task finishes.
        self._unfinished: dict[int, weakref.ref[Task[Any]]] = {}
        self._dropped: list[str] = []
        self._remove: Any = None

    def _listen(self, event: str, task: Any, fields: dict[str, Any]) -> None:
        if event == "qio_task_new":
            if task.context is self.context:
                number, name = task._id, task.name
                with self._lock:
                    self._tasks.add(task)
                    self._unfinished[number] = weakref.ref(task, lambda _ref: self._collected(number, name))
        elif event in ("qio_task_complete", "qio_task_abort"):
            with self._lock:
                self._unfinished.pop(task._id, None)

    def _collected(self, number: int, name: str) -> None:
        # A weak reference's callback, wherever the task was collected.
        with self._lock:
            if self._unfinished.pop(number, None) is not None:
                self._dropped.append(name)

    def start(self) -> None:
        self._remove = _trace.add_listener(self._listen)

    def stop(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None

    def pending(self) -> list[Task[Any]]:
        """The watched tasks that have not finished, oldest first."""
        with self._lock:
            tasks = list(self._tasks)
        return sorted((task for task in tasks if task.state is not TaskState.FINISHED), key=lambda task: task._id)

    def problems(self, loop_runs: int | None) -> str | None:
        """What the test left behind on the context, as a message; None if nothing.

        Call it on the context's thread, before anything runs the loop again.

        Args:
            loop_runs: how many times the test ran the loop, if known (a
                ``LoopRunner``'s ``runs``); 0 words the message as "never run".
        """
        tasks = self.pending()
        queued = 0 if self.context.closed else len(self.context._dispatcher)
        with self._lock:
            dropped = list(self._dropped)
        if not tasks and not queued and not dropped:
            return None
        lines = [
            f"task {name!r} was garbage-collected without completing: nothing completed it, "
            "and its func and destroy notifiers never ran"
            for name in dropped
        ]
        if tasks:
            lines.append(f"{len(tasks)} task(s) made on {self.context.name} were not finished when the test ended:")
            lines += [f"    {_describe(task)}" for task in tasks]
        if queued:
            lines.append(
                f"{queued} completion(s) or call(s) were handed to {self.context.name} and are still queued: "
                "the loop did not run after they came"
            )
        if not tasks and not queued:
            pass  # only tasks dropped unfinished: running the loop would not have helped
        elif loop_runs == 0:
            lines.append("The loop was never run: qiotask_runner.run_until_done(task) runs it until the task finished.")
        else:
            lines.append("Run the loop until they finish: qiotask_runner.run_until_done(task, timeout=...).")
        return "\n".join(lines)

    def settle(self) -> None:
        """On the context's thread, after :meth:`problems` reported: finish
        what the test left, so that it does not leak into later tests.

        Tasks nobody completed are aborted with ``TaskCancelled``, workers
        are asked to stop, and the loop runs (at most
        :data:`SETTLE_TIMEOUT` seconds) until their completions have run.
        """
        if self.context.closed:
            return
        from ._runner import LoopRunner

        tasks = self.pending()
        for task in tasks:
            if task.state is TaskState.PENDING:
                # No worker and no completion yet: nobody else will finish it.
                try:
                    task.abort(TaskCancelled(f"{task.name} was left pending at the end of the test"))
                except TaskStateError:
                    task.cancel()  # claimed meanwhile by another thread, or given a worker
            else:
                task.cancel()
        runner = LoopRunner(self.context)
        try:
            runner.run_until(lambda: not self.pending() and not len(self.context._dispatcher), SETTLE_TIMEOUT)
        except AssertionError:
            pass  # what is still running fails with ContextClosedError when the context closes
        for task in tasks:
            if task.done():
                task.exception()  # the leak report told of it: no "nobody retrieved" at exit


def _describe(task: Task[Any]) -> str:
    """``<Task 'name' running>`` and what it waits for, in the words of
    qiotask's own reports."""
    return f"{task!r}: {waiting_text(task._s)}"
