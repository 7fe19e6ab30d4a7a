"""The exception types of qiotask.

Each one subclasses the builtin exception it refines, so code that already
catches ``RuntimeError`` or ``TimeoutError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "ContextClosedError",
    "TaskCancelled",
    "TaskError",
    "TaskStateError",
    "TaskTimeout",
]


class TaskError(RuntimeError):
    """Raised as the base of every error that qiotask itself reports."""


class TaskStateError(TaskError):
    """Raised when a task is used in a way its current state does not allow.

    Examples: completing a task twice, asking for the source of a finished
    task, or calling ``wait_thread()`` off the task's context thread.
    """


class TaskCancelled(TaskError):
    """Raised (or delivered to the callback) when a task was cancelled."""


class TaskTimeout(TaskError, TimeoutError):
    """Raised (or delivered to the callback) when a task's deadline passed."""


class ContextClosedError(TaskError):
    """Raised (or delivered) when a task's main context went away.

    The completion callback could not run because the thread of its event
    loop is gone; destroy notifiers still ran, in the completing thread.
    """
