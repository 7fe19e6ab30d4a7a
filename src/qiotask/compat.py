"""The seed's C-style API, line for line.

For code ported from QEMU, or written from its documentation::

    from qiotask.compat import (Error, ErrorPtr, error_setg, qio_task_new,
                                qio_task_run_in_thread, qio_task_get_source)

    def myobject_listen_worker(task, errp, opaque):
        obj = qio_task_get_source(task)
        addr = opaque
        try:
            obj.sock = socket.create_server(addr)
        except OSError as exc:
            error_setg(errp, "cannot listen on %s: %s", addr, exc)
            return -1
        return 0

    def myobject_listen_async(obj, addr, func, opaque, notify):
        task = qio_task_new(obj, func, opaque, notify)
        qio_task_run_in_thread(task, myobject_listen_worker, tuple(addr), None)

``func(source, err, opaque)`` runs on the context thread, as with
:class:`qiotask.Task`; ``err`` is an :class:`Error` (or the exception a worker
raised) or None.  C's ``Error **errp`` becomes an :class:`ErrorPtr`, whose
``value`` is the error or None; where C passes NULL, pass None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._checks import check_callable, check_sync
from ._errors import TaskStateError
from ._task import Task

__all__ = [
    "Error",
    "ErrorPtr",
    "error_free",
    "error_get_pretty",
    "error_propagate",
    "error_setg",
    "qio_task_abort",
    "qio_task_complete",
    "qio_task_get_result_pointer",
    "qio_task_get_source",
    "qio_task_new",
    "qio_task_propagate_error",
    "qio_task_run_in_thread",
    "qio_task_set_error",
    "qio_task_set_result_pointer",
    "qio_task_wait_thread",
]

QIOTaskFunc = Callable[[Any, "BaseException | None", Any], Any]
QIOTaskWorker = Callable[[Task[Any], "ErrorPtr", Any], int]
GDestroyNotify = Callable[[Any], Any]


class Error(Exception):
    """QEMU's ``Error``: a message, raised or passed like any exception."""

    @property
    def message(self) -> str:
        """The formatted message (``error_get_pretty``)."""
        return str(self)


class ErrorPtr:
    """C's ``Error **errp``: a slot an error is stored into."""

    __slots__ = ("value",)

    def __init__(self, value: BaseException | None = None) -> None:
        self.value = value

    def __bool__(self) -> bool:
        return self.value is not None

    def __repr__(self) -> str:
        return f"<ErrorPtr {self.value!r}>"


def error_setg(errp: ErrorPtr | None, fmt: str, *args: Any) -> None:
    """Store ``Error(fmt % args)`` in ``errp``; with ``errp`` None, drop it.

    Raises:
        TaskStateError: ``errp`` already holds an error (QEMU asserts this).
    """
    if errp is None:
        return
    if errp.value is not None:
        raise TaskStateError(f"error_setg: errp already holds {errp.value!r}; an error may be set once")
    errp.value = Error(fmt % args if args else fmt)


def error_propagate(dst: ErrorPtr | None, err: BaseException | None) -> None:
    """Move ``err`` into ``dst`` unless ``dst`` is None or already set."""
    if dst is not None and err is not None and dst.value is None:
        dst.value = err


def error_free(err: BaseException | None) -> None:
    """Nothing to free in Python; kept so ported code reads the same."""


def error_get_pretty(err: BaseException) -> str:
    """The error's message."""
    return str(err)


def qio_task_new(
    source: Any, func: QIOTaskFunc | None, opaque: Any = None, destroy: GDestroyNotify | None = None
) -> Task[Any]:
    """Create a task on ``source``; ``func(source, err, opaque)`` reports it."""
    return Task(source, func, opaque, destroy)


_FALLBACK_MESSAGE = "task worker failed without setting an error"


def _compat_worker(task: Task[Any], data: tuple[QIOTaskWorker, Any]) -> None:
    worker, opaque = data
    errp = ErrorPtr()
    ret = worker(task, errp, opaque)
    if ret < 0:
        raise errp.value if errp.value is not None else Error(_FALLBACK_MESSAGE)
    if errp.value is not None:
        task.set_error(errp.value)


def qio_task_run_in_thread(
    task: Task[Any], worker: QIOTaskWorker, opaque: Any = None, destroy: GDestroyNotify | None = None
) -> None:
    """Run ``worker(task, errp, opaque)`` in a thread.

    A return of 0 completes the task on the context thread, a negative return
    aborts it with the error set in ``errp`` (or a generic :class:`Error` when
    the worker set none).  ``destroy(opaque)`` runs after ``func``.
    """
    check_callable(worker, "qio_task_run_in_thread", "worker")
    check_callable(destroy, "qio_task_run_in_thread", "destroy", optional=True)
    check_sync(worker, "qio_task_run_in_thread", "worker")
    worker_destroy = None
    if destroy is not None:

        def worker_destroy(data: tuple[QIOTaskWorker, Any]) -> None:
            destroy(data[1])

    task.run_in_thread(_compat_worker, (worker, opaque), worker_destroy)


def qio_task_complete(task: Task[Any]) -> None:
    """Mark the task done; on the context thread ``func`` runs now."""
    task.complete()


def qio_task_abort(task: Task[Any], err: BaseException) -> None:
    """Mark the task failed with ``err``; on the context thread ``func`` runs now."""
    task.abort(err)


def qio_task_get_source(task: Task[Any]) -> Any:
    """The task's source object."""
    return task.get_source()


def qio_task_set_error(task: Task[Any], err: BaseException | None) -> None:
    """Record ``err`` unless an error was recorded before (first wins)."""
    if err is not None:
        task.set_error(err)


def qio_task_propagate_error(task: Task[Any], errp: ErrorPtr | None) -> bool:
    """Move the task's error into ``errp``; True if there was one."""
    err = task.propagate_error()
    if err is None:
        return False
    error_propagate(errp, err)
    return True


def qio_task_set_result_pointer(task: Task[Any], result: Any, notify: GDestroyNotify | None = None) -> None:
    """Record the result; ``notify(result)`` runs once the task finished."""
    task.set_result(result, notify)


def qio_task_get_result_pointer(task: Task[Any]) -> Any:
    """The result recorded by ``qio_task_set_result_pointer``."""
    return task.get_result()


def qio_task_wait_thread(task: Task[Any]) -> None:
    """On the context thread: wait for the worker, then run ``func`` here."""
    task.wait_thread()
