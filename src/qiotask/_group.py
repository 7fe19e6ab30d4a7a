"""TaskGroup: wait for many tasks; on the first error, cancel the rest.

A group watches tasks through their done-callbacks, so it works for tasks of
any context, and offers three ways to wait, one for each kind of caller.

In a coroutine, under asyncio or trio: leaving the block waits::

    async with qiotask.TaskGroup() as group:
        for url in urls:
            group.run_in_thread(fetch, url)
    # every task has finished here; errors were raised as one TaskGroupError

On a GUI loop, which cannot block: a callback once all have finished::

    group = qiotask.TaskGroup(on_done=lambda group: show(group.errors))
    for path in paths:
        group.run_in_thread(checksum, path)
    group.close()            # no more tasks; on_done runs on the loop thread

On a thread that is not the tasks' context thread (a worker, a script whose
loop runs elsewhere): leaving the block blocks until all have finished::

    with qiotask.TaskGroup() as group:
        group.add(task)

What all three share:

- The first task to fail makes the group cancel every other task it holds
  (``task.cancel()``, in the thread that ran the failed task's
  done-callback), and every task added later as soon as it is added.  The
  group waits for the cancelled tasks too: a cancel is a request, and a
  running worker finishes when it looks.
- Every error is kept, in the order the tasks finished, except the
  ``TaskCancelled`` of a task the group cancelled itself.  A task cancelled
  by someone else, or timed out, counts as failed.
- Leaving a ``with`` or ``async with`` block with errors raises
  :class:`TaskGroupError`, which holds them in ``.exceptions``: on Python
  3.11 and later an ``ExceptionGroup`` (``except*`` works) that is also a
  :class:`~qiotask.TaskError`; on 3.10 a ``TaskError`` with the same
  ``.exceptions`` and ``.message``.
"""

from __future__ import annotations

import itertools
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from . import _adapters
from ._adapters import Adapter
from ._checks import check_callable
from ._context import MainContext, attach, get_context
from ._errors import TaskCancelled, TaskError, TaskStateError
from ._task import Task

__all__ = ["TaskGroup", "TaskGroupError"]

OnDone = Callable[["TaskGroup"], Any]

if sys.version_info >= (3, 11):

    class TaskGroupError(ExceptionGroup[Exception], TaskError):  # noqa: F821 (a builtin from 3.11 on)
        """Raised when tasks of a :class:`TaskGroup` failed: the errors are
        in ``.exceptions``, in the order the tasks finished."""

        def derive(self, excs: Sequence[Exception]) -> TaskGroupError:  # type: ignore[override]
            # except* and split() keep the type, so `except TaskError`
            # still catches what is left.
            return TaskGroupError(self.message, excs)

else:

    class TaskGroupError(TaskError):
        """Raised when tasks of a :class:`TaskGroup` failed: the errors are
        in ``.exceptions``, in the order the tasks finished.

        Python 3.10 has no ``ExceptionGroup``: this one carries the same
        ``message`` and ``exceptions`` attributes.
        """

        def __init__(self, message: str, exceptions: Sequence[Exception]) -> None:
            if not isinstance(message, str):
                raise TypeError(f"TaskGroupError: message must be a str, not {type(message).__name__}")
            self.message = message
            self.exceptions: tuple[Exception, ...] = tuple(exceptions)
            if not self.exceptions:
                raise ValueError("TaskGroupError: exceptions must be a non-empty sequence")
            super().__init__(message, list(self.exceptions))

        def __str__(self) -> str:
            n = len(self.exceptions)
            return f"{self.message} ({n} sub-exception{'s' if n > 1 else ''})"


_counter = itertools.count(1)


class TaskGroup:
    """Waits for many tasks; on the first error, cancels the rest.

    Args:
        on_done: ``on_done(group)``, called once, on ``context``'s thread,
            when the group is closed and every task in it has finished.
        context: where ``on_done`` runs (a :class:`MainContext` or a loop
            object accepted by :func:`qiotask.attach`); by default
            :func:`qiotask.get_context` now.  Used only for ``on_done``.
        name: a name for messages and ``repr``.

    Raises:
        TypeError: ``on_done`` not callable, ``name`` not a str, ``context``
            not a context or loop.
    """

    def __init__(
        self,
        on_done: OnDone | None = None,
        *,
        context: Any = None,
        name: str | None = None,
    ) -> None:
        check_callable(on_done, "TaskGroup", "on_done", optional=True)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"TaskGroup: name must be a str or None, not {type(name).__name__}")
        if context is not None and not isinstance(context, MainContext):
            context = attach(context)
        elif context is None and on_done is not None:
            context = get_context()
        self._context: MainContext | None = context
        self._on_done = on_done
        self._name = name if name is not None else f"TaskGroup-{next(_counter)}"
        # The thread a `with` block blocks on leaving; tasks of its context
        # would never finish (see _check_thread).
        self._sync_thread: threading.Thread | None = None
        self._entered = False
        # _lock guards every field below.  It is never held while a task is
        # cancelled or a callback runs: a cancel on the context thread can
        # complete the task, and so run _task_done, before it returns.
        self._lock = threading.Lock()
        self._pending: dict[Task[Any], None] = {}  # an ordered set
        self._errors: list[BaseException] = []
        # Tasks whose cancel() the group called and whose done-callback has
        # not run yet: their TaskCancelled is the group's own, not an error.
        self._cancelled_by_group: set[Task[Any]] = set()
        self._cancelling = False  # an error or cancel(): cancel what is added
        self._closed = False
        self._finished = False  # closed and nothing pending: waiters woken
        self._waiters: list[Callable[[], None]] = []

    # -- introspection ------------------------------------------------------

    @property
    def name(self) -> str:
        """The group's name (``TaskGroup-<n>`` unless one was given)."""
        return self._name

    @property
    def errors(self) -> list[BaseException]:
        """The errors so far, in the order the tasks finished (a copy).

        Not in it: the ``TaskCancelled`` of tasks the group cancelled.
        """
        with self._lock:
            return list(self._errors)

    @property
    def closed(self) -> bool:
        """Whether the group takes no more tasks."""
        return self._closed

    def done(self) -> bool:
        """Whether the group is closed and every task in it has finished."""
        return self._finished

    def __repr__(self) -> str:
        with self._lock:
            pending, errors = len(self._pending), len(self._errors)
        state = "done" if self._finished else "closed" if self._closed else "open"
        return f"<TaskGroup {self._name!r} {state} pending={pending} errors={errors}>"

    # -- adding -------------------------------------------------------------

    def add(self, task: Task[Any]) -> Task[Any]:
        """Watch ``task``; returns it.

        A task added after a failure (or :meth:`cancel`) is cancelled at once.
        A task may be in several groups; each counts it.

        Raises:
            TypeError: ``task`` is not a :class:`~qiotask.Task`.
            TaskStateError: the group is closed, the task is in it already,
                or (``with`` form) the task completes on the thread that
                will wait for it.
        """
        if not isinstance(task, Task):
            raise TypeError(f"TaskGroup.add: expected a qiotask.Task, not {type(task).__name__}")
        self._check_thread(task.context, f"task {task.name!r}")
        if self._track(task):
            self._cancel_tasks([task])
        return task

    def run_in_thread(
        self,
        worker: Callable[[Task[Any], Any], Any],
        opaque: Any = None,
        *,
        source: Any = None,
        context: Any = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> Task[Any]:
        """Make a task, run ``worker(task, opaque)`` in a thread, add it.

        The shorthand for ``group.add(task)`` after
        ``task = Task(source, context=context, name=name)`` and
        ``task.run_in_thread(worker, opaque, **kwargs)`` -- ``kwargs`` being
        ``run_in_thread``'s own (``destroy``, ``pool``, ``timeout``,
        ``abandon_on_cancel``, ...).  The task belongs to ``context``, by
        default :func:`qiotask.get_context` on this thread.  The worker's
        value is ``task.get_result()`` (or ``await task``).

        Returns:
            The task.

        Raises:
            TaskStateError: as :meth:`add`.
            TypeError, ValueError, RuntimeError: as ``Task`` and
                ``Task.run_in_thread``; the task then never ran, and the
                group does not count it.
        """
        context = get_context() if context is None else attach(context)  # attach() returns a context as is
        self._check_thread(context, "a task")
        if self._closed:
            raise self._closed_error()
        task: Task[Any] = Task(source, context=context, name=name)
        try:
            cancel = self._track(task)
            task.run_in_thread(worker, opaque, **kwargs)
        except BaseException:
            # It never ran: finish it, so that nothing waits for it (a task
            # the group tracked counts as finished without error).
            task.complete()
            raise
        if cancel:
            # After run_in_thread: a task cancelled while queued never starts.
            self._cancel_tasks([task])
        return task

    def _track(self, task: Task[Any]) -> bool:
        """Count ``task`` in; True if it is to be cancelled at once."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if task in self._pending:
                raise TaskStateError(f"task {task.name!r} is in task group {self._name!r} already")
            self._pending[task] = None
            cancel = self._cancelling
        task.add_done_callback(self._task_done)
        return cancel

    def _closed_error(self) -> TaskStateError:
        return TaskStateError(f"task group {self._name!r} is closed; no task can be added to it")

    def _check_thread(self, context: MainContext, what: str) -> None:
        thread = self._sync_thread
        if thread is not None and context._runs_on(thread) and not context.closed:
            raise TaskStateError(
                f"task group {self._name!r}: {what} of context {context.name!r} completes on this thread, "
                "which leaving the `with` block blocks: it would wait for itself forever. On the loop's "
                "thread use `async with` or TaskGroup(on_done=...) and close(); `with` is for other threads"
            )

    # -- closing and cancelling -----------------------------------------------

    def close(self) -> None:
        """Take no more tasks.  Once every task has finished, ``on_done``
        runs; if they all have already, on the group's context thread it
        runs before ``close()`` returns (as ``complete()`` runs ``func``),
        from any other thread it is handed to that context.  Closing twice
        does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            finish = self._finish_locked()
        if finish is not None:
            self._finish(finish)

    def cancel(self) -> None:
        """Cancel every task in the group, and every task added from now on.

        Their ``TaskCancelled`` is not an error of the group; the group still
        waits for them.  Safe from any thread.
        """
        with self._lock:
            self._cancelling = True
            tasks = list(self._pending)
        self._cancel_tasks(tasks)

    def _fail(self, err: BaseException) -> None:
        """Record ``err``; if it is the first, cancel the tasks in the group."""
        with self._lock:
            tasks = self._fail_locked(err)
        self._cancel_tasks(tasks)

    def _fail_locked(self, err: BaseException) -> list[Task[Any]]:
        """Record ``err``; return the tasks to cancel if it is the first."""
        self._errors.append(err)
        tasks = [] if self._cancelling else list(self._pending)
        self._cancelling = True
        return tasks

    def _cancel_tasks(self, tasks: list[Task[Any]]) -> None:
        for task in tasks:
            with self._lock:
                if task not in self._pending:
                    continue  # finished meanwhile
                # Marked first: on its context thread cancel() can complete
                # the task, and run _task_done, before it returns.
                self._cancelled_by_group.add(task)
            if not task.cancel():
                # Already cancelled by someone else, or completing: its
                # outcome is its own.
                with self._lock:
                    self._cancelled_by_group.discard(task)

    # -- completion ---------------------------------------------------------

    def _task_done(self, task: Task[Any]) -> None:
        # The task's done-callback: on its context thread (or, if that
        # context is closed, in whatever thread completed it).
        # exception(), not propagate_error(): func may have used up its "once".
        err = task.exception()
        with self._lock:
            self._pending.pop(task, None)
            ours = task in self._cancelled_by_group
            self._cancelled_by_group.discard(task)
            # The group's cancel() makes exactly a TaskCancelled, and cancel
            # wins: that is what the task delivers.  A TaskTimeout, or any
            # other error, is the task's own.
            to_cancel: list[Task[Any]] = []
            if err is not None and not (ours and type(err) is TaskCancelled):
                # Under the same hold as the pop: the group cannot finish
                # (in a close() elsewhere) without this error.
                to_cancel = self._fail_locked(err)
            finish = self._finish_locked()
        self._cancel_tasks(to_cancel)
        if finish is not None:
            self._finish(finish)

    def _finish_locked(self) -> list[Callable[[], None]] | None:
        """If the group is done now, mark it and return the waiters to wake."""
        if self._finished or not self._closed or self._pending:
            return None
        self._finished = True
        waiters, self._waiters = self._waiters, []
        return waiters

    def _finish(self, waiters: list[Callable[[], None]]) -> None:
        for wake in waiters:
            wake()
        on_done = self._on_done
        if on_done is None:
            return
        context = self._context
        assert context is not None
        # If the loop is gone, here and now, as Task.add_done_callback does.
        context._call_here_or_soon(self._call_on_done, on_done, context)

    def _call_on_done(self, on_done: OnDone, context: MainContext) -> None:
        try:
            on_done(self)
        except Exception as exc:
            context.report_exception(f"exception in on_done {on_done!r} of task group {self._name!r}", exc)

    def _add_waiter(self, wake: Callable[[], None]) -> bool:
        """Call ``wake()`` once the group is done; False if it is already."""
        with self._lock:
            if self._finished:
                return False
            self._waiters.append(wake)
            return True

    def _remove_waiter(self, wake: Callable[[], None]) -> None:
        with self._lock:
            if wake in self._waiters:
                self._waiters.remove(wake)

    def _raise_errors(self) -> None:
        with self._lock:
            errors = list(self._errors)
        if not errors:
            return
        exceptions: list[Exception] = []
        for err in errors:
            if not isinstance(err, Exception):
                # KeyboardInterrupt, SystemExit from a worker: raised as is,
                # as asyncio.TaskGroup does (an ExceptionGroup cannot hold it).
                raise err
            exceptions.append(err)
        n = len(exceptions)
        message = f"{n} error{'s' if n > 1 else ''} in task group {self._name!r}"
        raise TaskGroupError(message, exceptions) from None

    def _enter(self) -> None:
        if self._entered:
            raise TaskStateError(f"task group {self._name!r} was entered already; a TaskGroup is used once")
        if self._closed:
            raise self._closed_error()
        self._entered = True

    # -- async with -----------------------------------------------------------

    async def __aenter__(self) -> TaskGroup:
        """Enter the group in a coroutine (asyncio or trio).

        Raises:
            RuntimeError: neither an asyncio loop nor a trio run is running
                in this thread.
            TaskStateError: the group was entered or closed before.
        """
        _async_adapter()
        self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the group and wait for every task.

        An exception leaving the body counts as the first error (the tasks
        are cancelled) and is raised in the group.  If this coroutine is
        cancelled (the body, or the wait here), the tasks are cancelled and
        still waited for, then the cancellation goes on; the errors are left
        in :attr:`errors`.  KeyboardInterrupt and SystemExit cancel the tasks
        and go on at once.
        """
        body_cancelled = False
        if exc is not None:
            if _is_cancellation(exc):
                body_cancelled = True
                self.cancel()
            elif not isinstance(exc, Exception):
                self.cancel()
                self.close()
                return
            else:
                self._fail(exc)  # before close(): on_done, if any, sees it
        self.close()
        cancelled = await self._wait_async(shielded=body_cancelled)
        if body_cancelled:
            return  # the body's cancellation goes on
        if cancelled is not None:
            raise cancelled
        self._raise_errors()

    async def _wait_async(self, shielded: bool) -> BaseException | None:
        """Wait until the group is done, the running framework's way (its
        adapter's ``wait_group``).  A cancellation of this coroutine cancels
        the tasks and is returned once they have all finished."""
        wait_group = _async_adapter().wait_group
        assert wait_group is not None  # every adapter that runs coroutines has one
        return await wait_group(self, shielded)

    # -- with (threads) ---------------------------------------------------------

    def __enter__(self) -> TaskGroup:
        """Enter the group on a thread that is not its tasks' context thread.

        Raises:
            TaskStateError: an asyncio loop or a trio run runs in this thread
                (use ``async with``), or the group was entered or closed
                before.
        """
        if _adapters.async_adapter() is not None:
            raise TaskStateError(
                f"task group {self._name!r}: `with` would block the event loop running in this thread "
                "until its own tasks finish, a deadlock; use `async with`"
            )
        self._enter()
        self._sync_thread = threading.current_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the group and block until every task has finished.

        An exception leaving the body counts as the first error (the tasks
        are cancelled) and is raised in the group.  KeyboardInterrupt and
        SystemExit, from the body or while blocked here, cancel the tasks and
        go on at once, without waiting.
        """
        if exc is not None:
            if not isinstance(exc, Exception):
                self.cancel()
                self.close()
                return
            self._fail(exc)  # before close(): on_done, if any, sees it
        self.close()
        event = threading.Event()
        if self._add_waiter(event.set):
            try:
                event.wait()
            except BaseException:
                self.cancel()
                raise
        self._raise_errors()

    # -- leaks ----------------------------------------------------------------

    def __del__(self) -> None:
        if getattr(self, "_on_done", None) is not None and not getattr(self, "_closed", True):
            warnings.warn(
                f"task group {self._name!r} was garbage-collected without close(); its on_done never ran",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )


def _async_adapter() -> Adapter:
    """The adapter of the async framework running in this thread."""
    adapter = _adapters.async_adapter()
    if adapter is None:
        problems = "".join(
            f"; the {name} adapter could not load: {problem}"
            for name in ("asyncio", "trio")
            if (problem := _adapters.problem(name)) is not None
        )
        raise RuntimeError(
            f"async with TaskGroup: no asyncio event loop or trio run is running in this thread{problems}"
        )
    return adapter


def _is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the cancellation of an async framework (asked of
    every one loaded, not only of the one running: a coroutine closed after
    its loop is gone has none running)."""
    return _adapters.is_cancellation(exc)
