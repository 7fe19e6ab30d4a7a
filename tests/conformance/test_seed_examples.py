"""The seed's two worked examples (include/io/task.h), live.

1. An operation whose timer polls until the work is done, then completes
   (or aborts) the task.
2. A socket listen whose name resolution and bind happen in a worker
   thread, reported on the main loop's thread.

Each is written twice: with the Pythonic API and with qiotask.compat, line
for line as the header shows it.
"""

from __future__ import annotations

import gc
import socket
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import qiotask
from qiotask import Task, compat
from qiotask.compat import ErrorPtr, error_setg

from ..conftest import LoopRunner

POLL_MS = 5  # the seed polls once a second; tests need not wait that long


class QMyObject:
    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.polls = 0
        self.fail_on_poll: int | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class Outcome:
    def __init__(self, runner: LoopRunner) -> None:
        self.runner = runner
        self.calls: list[tuple[Any, BaseException | None, Any, str]] = []
        self.freed: list[Any] = []

    def func(self, source: Any, err: BaseException | None, opaque: Any) -> None:
        self.calls.append((source, err, opaque, threading.current_thread().name))
        self.runner.quit()

    def notify(self, opaque: Any) -> None:
        self.freed.append(opaque)


# -- example 1: a timer completes the task ------------------------------------------


def myobject_operation_pythonic(
    obj: QMyObject, func: Callable[..., None], opaque: Any, notify: Callable[[Any], None]
) -> None:
    task = Task(obj, func, opaque, notify)

    def myobject_operation_timer(task: Task[Any]) -> bool:
        source: QMyObject = task.get_source()
        source.polls += 1
        if source.polls == source.fail_on_poll:
            task.abort(OSError(f"check failed on poll {source.polls}"))
            return False
        if source.polls == 3:  # ...work is completed...
            task.complete()
            return False
        return True  # carry on polling

    qiotask.get_context().timeout_add(POLL_MS, myobject_operation_timer, task)


def myobject_operation_compat(
    obj: QMyObject, func: Callable[..., None], opaque: Any, notify: Callable[[Any], None]
) -> None:
    task = compat.qio_task_new(obj, func, opaque, notify)

    def myobject_operation_timer(task: Task[Any]) -> bool:
        source: QMyObject = compat.qio_task_get_source(task)
        source.polls += 1
        errp = ErrorPtr()
        if source.polls == source.fail_on_poll:
            error_setg(errp, "check failed on poll %d", source.polls)
        if errp.value is not None:
            compat.qio_task_abort(task, errp.value)
            compat.error_free(errp.value)
            return False
        if source.polls == 3:
            compat.qio_task_complete(task)
            return False
        return True

    qiotask.get_context().timeout_add(POLL_MS, myobject_operation_timer, task)


OPERATIONS = {"pythonic": myobject_operation_pythonic, "compat": myobject_operation_compat}


@pytest.mark.parametrize("style", OPERATIONS)
def test_timer_example_completes_after_three_polls(runner: LoopRunner, style: str) -> None:
    obj = QMyObject()
    ref = weakref.ref(obj)
    out = Outcome(runner)
    OPERATIONS[style](obj, out.func, "opaque", out.notify)
    del obj
    runner.run()
    assert len(out.calls) == 1
    source, err, opaque, thread = out.calls[0]
    assert err is None and opaque == "opaque"
    assert thread == threading.current_thread().name
    assert source.polls == 3
    assert out.freed == ["opaque"]
    del source
    out.calls.clear()
    gc.collect()
    assert ref() is None  # once the timer returned False, nothing holds the object


@pytest.mark.parametrize("style", OPERATIONS)
def test_timer_example_aborts_on_error(runner: LoopRunner, style: str) -> None:
    obj = QMyObject()
    obj.fail_on_poll = 2
    out = Outcome(runner)
    OPERATIONS[style](obj, out.func, None, out.notify)
    runner.run()
    (_, err, _, _), *rest = out.calls
    assert not rest
    assert err is not None and "poll 2" in str(err)
    assert obj.polls == 2
    assert out.freed == [None]


# -- example 2: listen, with the lookup in a worker thread ---------------------------


def socket_listen(addr: tuple[str, int]) -> socket.socket:
    """QEMU's socket_listen(): resolve the name, bind the first address that
    works, listen.  Blocks in getaddrinfo() -- why the seed uses a thread."""
    host, port = addr
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.bind(sockaddr)
            sock.listen(1)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock
    raise last or OSError(f"no address for {host}")


def myobject_listen_worker_pythonic(task: Task[Any], addr: tuple[str, int]) -> None:
    obj: QMyObject = task.get_source()
    obj.sock = socket_listen(addr)


def myobject_listen_async_pythonic(
    obj: QMyObject, addr: tuple[str, int], func: Callable[..., None], opaque: Any, notify: Callable[[Any], None]
) -> Task[Any]:
    task = Task(obj, func, opaque, notify)
    task.run_in_thread(myobject_listen_worker_pythonic, tuple(addr))
    return task


def myobject_listen_worker_compat(task: Task[Any], errp: ErrorPtr, opaque: Any) -> int:
    obj: QMyObject = compat.qio_task_get_source(task)
    addr = opaque
    try:
        obj.sock = socket_listen(addr)
    except OSError as exc:
        error_setg(errp, "Unable to listen on %s:%d: %s", addr[0], addr[1], exc)
        return -1
    return 0


def myobject_listen_async_compat(
    obj: QMyObject, addr: tuple[str, int], func: Callable[..., None], opaque: Any, notify: Callable[[Any], None]
) -> Task[Any]:
    addr_copy = tuple(addr)  # QAPI_CLONE(SocketAddress, addr)
    task = compat.qio_task_new(obj, func, opaque, notify)
    compat.qio_task_run_in_thread(task, myobject_listen_worker_compat, addr_copy, None)
    return task


LISTENS = {"pythonic": myobject_listen_async_pythonic, "compat": myobject_listen_async_compat}


@pytest.mark.parametrize("style", LISTENS)
def test_listen_example_resolves_in_a_worker(runner: LoopRunner, style: str) -> None:
    obj = QMyObject()
    out = Outcome(runner)
    resolved_on: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def spying_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        resolved_on.append(threading.current_thread().name)
        return real_getaddrinfo(*args, **kwargs)

    socket.getaddrinfo = spying_getaddrinfo  # type: ignore[assignment]
    try:
        LISTENS[style](obj, ("localhost", 0), out.func, "opaque", out.notify)
        runner.run()
    finally:
        socket.getaddrinfo = real_getaddrinfo
    try:
        ((source, err, opaque, thread),) = out.calls
        assert err is None, err
        assert source is obj and opaque == "opaque" and out.freed == ["opaque"]
        main = threading.current_thread().name
        assert thread == main
        assert resolved_on and main not in resolved_on  # the lookup ran in a worker
        assert obj.sock is not None
        host, port = obj.sock.getsockname()[:2]
        with socket.create_connection((host, port), timeout=5):
            conn, _ = obj.sock.accept()
            conn.close()
    finally:
        obj.close()


@pytest.mark.parametrize("style", LISTENS)
def test_listen_example_reports_a_failure(runner: LoopRunner, style: str) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        obj = QMyObject()
        out = Outcome(runner)
        LISTENS[style](obj, ("127.0.0.1", port), out.func, None, out.notify)
        runner.run()
        ((_, err, _, thread),) = out.calls
        assert isinstance(err, OSError) or "Unable to listen" in str(err)
        assert thread == threading.current_thread().name
        assert obj.sock is None
        assert out.freed == [None]
    finally:
        taken.close()
