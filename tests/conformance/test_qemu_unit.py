"""QEMU's own unit tests of QIOTask (tests/unit/test-io-task.c), rewritten.

Each test runs twice: against the Pythonic API and against qiotask.compat,
the seed's C-style functions.  The thread assertions are QEMU's: the worker
runs on a thread other than the loop's, the callback on the loop's.
"""

from __future__ import annotations

import gc
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import pytest

import qiotask
from qiotask import Task, compat
from qiotask.compat import Error, ErrorPtr, error_setg

from ..conftest import LoopRunner


class DummyObject:
    """Stands in for QEMU's TYPE_DUMMY object."""


@dataclass
class CallbackData:
    source: Any = None
    err: BaseException | None = None
    freed: bool = False
    calls: int = 0
    callback_thread: threading.Thread | None = None
    worker_thread: threading.Thread | None = None
    fail: bool = False
    loop: LoopRunner | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def task_callback(source: Any, err: BaseException | None, data: CallbackData) -> None:
    data.source = source
    data.err = err
    data.calls += 1
    data.callback_thread = threading.current_thread()
    if data.loop is not None:
        data.loop.quit()


def task_data_free(data: CallbackData) -> None:
    data.freed = True


class PythonicAPI:
    name = "pythonic"

    @staticmethod
    def new(source: Any, data: CallbackData, with_free: bool = False) -> Task[Any]:
        return Task(source, task_callback, data, task_data_free if with_free else None)

    @staticmethod
    def complete(task: Task[Any]) -> None:
        task.complete()

    @staticmethod
    def abort(task: Task[Any], err: BaseException) -> None:
        task.abort(err)

    @staticmethod
    def get_source(task: Task[Any]) -> Any:
        return task.get_source()

    @staticmethod
    def run_in_thread(task: Task[Any], data: CallbackData) -> None:
        def worker(task: Task[Any], data: CallbackData) -> None:
            data.worker_thread = threading.current_thread()
            if data.fail:
                raise Error("Testing fail")

        task.run_in_thread(worker, data)

    @staticmethod
    def make_error(message: str) -> BaseException:
        return ValueError(message)


class CompatAPI:
    name = "compat"

    @staticmethod
    def new(source: Any, data: CallbackData, with_free: bool = False) -> Task[Any]:
        return compat.qio_task_new(source, task_callback, data, task_data_free if with_free else None)

    @staticmethod
    def complete(task: Task[Any]) -> None:
        compat.qio_task_complete(task)

    @staticmethod
    def abort(task: Task[Any], err: BaseException) -> None:
        compat.qio_task_abort(task, err)

    @staticmethod
    def get_source(task: Task[Any]) -> Any:
        return compat.qio_task_get_source(task)

    @staticmethod
    def run_in_thread(task: Task[Any], data: CallbackData) -> None:
        def worker(task: Task[Any], errp: ErrorPtr, data: CallbackData) -> int:
            data.worker_thread = threading.current_thread()
            if data.fail:
                error_setg(errp, "Testing %s", "fail")
                return -1
            return 0

        compat.qio_task_run_in_thread(task, worker, data, None)

    @staticmethod
    def make_error(message: str) -> BaseException:
        errp = ErrorPtr()
        error_setg(errp, "%s", message)
        assert errp.value is not None
        return errp.value


API = PythonicAPI | CompatAPI


@pytest.fixture(params=[PythonicAPI, CompatAPI], ids=lambda a: a.name)
def api(request: pytest.FixtureRequest) -> API:
    return request.param  # type: ignore[no-any-return]


def test_task_complete(ctx: qiotask.MainContext, api: API) -> None:
    obj = DummyObject()
    data = CallbackData()
    task = api.new(obj, data)
    src = api.get_source(task)
    api.complete(task)
    assert obj is src
    assert data.source is obj
    assert data.err is None
    assert data.freed is False
    assert data.calls == 1


def test_task_datafree(ctx: qiotask.MainContext, api: API) -> None:
    obj = DummyObject()
    data = CallbackData()
    task = api.new(obj, data, with_free=True)
    assert data.freed is False
    api.complete(task)
    assert data.freed is True
    assert data.calls == 1


def test_task_failure(ctx: qiotask.MainContext, api: API) -> None:
    obj = DummyObject()
    data = CallbackData()
    task = api.new(obj, data)
    err = api.make_error("Some error")
    api.abort(task, err)
    assert data.source is obj
    assert data.err is err
    assert str(data.err) == "Some error"
    assert data.calls == 1


def test_task_thread_complete(runner: LoopRunner, api: API) -> None:
    obj = DummyObject()
    ref = weakref.ref(obj)
    data = CallbackData(loop=runner)
    task = api.new(obj, data)
    api.run_in_thread(task, data)
    del obj, task
    runner.run()
    assert data.source is ref()
    assert data.err is None
    assert data.calls == 1
    me = threading.current_thread()
    assert data.worker_thread is not None and data.worker_thread is not me
    assert data.callback_thread is me
    data.source = None
    gc.collect()
    assert ref() is None  # the task released its reference to the source


def test_task_thread_failure(runner: LoopRunner, api: API) -> None:
    obj = DummyObject()
    data = CallbackData(loop=runner, fail=True)
    task = api.new(obj, data)
    api.run_in_thread(task, data)
    runner.run()
    assert data.source is obj
    assert data.err is not None
    assert "Testing fail" in str(data.err)
    assert data.calls == 1
    me = threading.current_thread()
    assert data.worker_thread is not None and data.worker_thread is not me
    assert data.callback_thread is me
    assert task.done()


# -- the later QEMU additions ---------------------------------------------------


def test_compat_worker_failing_without_an_error_gets_the_fallback(runner: LoopRunner) -> None:
    data = CallbackData(loop=runner)
    task = compat.qio_task_new(DummyObject(), task_callback, data, None)
    compat.qio_task_run_in_thread(task, lambda task, errp, opaque: -1, None, None)
    runner.run()
    assert isinstance(data.err, Error)
    assert "without setting an error" in str(data.err)


def test_compat_wait_thread_and_result_pointer(ctx: qiotask.MainContext) -> None:
    data = CallbackData()
    freed: list[Any] = []

    def worker(task: Task[Any], errp: ErrorPtr, opaque: Any) -> int:
        compat.qio_task_set_result_pointer(task, {"fd": 7}, freed.append)
        return 0

    task = compat.qio_task_new(DummyObject(), task_callback, data, None)
    compat.qio_task_run_in_thread(task, worker, None, None)
    compat.qio_task_wait_thread(task)
    assert data.calls == 1
    assert compat.qio_task_get_result_pointer(task) == {"fd": 7}
    assert freed == [{"fd": 7}]
    errp = ErrorPtr()
    assert compat.qio_task_propagate_error(task, errp) is False
    assert errp.value is None


def test_compat_set_and_propagate_error(ctx: qiotask.MainContext) -> None:
    data = CallbackData()
    task = compat.qio_task_new(None, task_callback, data, None)
    first = Error("first")
    compat.qio_task_set_error(task, first)
    compat.qio_task_set_error(task, Error("second"))
    compat.qio_task_set_error(task, None)  # NULL is ignored, as in QEMU
    compat.qio_task_complete(task)
    assert data.err is first
    errp = ErrorPtr()
    assert compat.qio_task_propagate_error(task, errp) is True
    assert errp.value is first
    assert compat.qio_task_propagate_error(task, ErrorPtr()) is False


def test_compat_error_helpers() -> None:
    errp = ErrorPtr()
    assert not errp
    error_setg(errp, "bad %s %d", "value", 3)
    assert errp and compat.error_get_pretty(errp.value) == "bad value 3"  # type: ignore[arg-type]
    assert isinstance(errp.value, Error) and errp.value.message == "bad value 3"
    with pytest.raises(qiotask.TaskStateError, match="already holds"):
        error_setg(errp, "again")
    error_setg(None, "dropped, as with a NULL errp")
    dst = ErrorPtr()
    compat.error_propagate(dst, errp.value)
    assert dst.value is errp.value
    compat.error_free(errp.value)
    assert "ErrorPtr" in repr(dst)


def test_compat_worker_destroy_runs_once_with_opaque(runner: LoopRunner) -> None:
    data = CallbackData(loop=runner)
    destroyed: list[Any] = []
    task = compat.qio_task_new(None, task_callback, data, None)
    compat.qio_task_run_in_thread(task, lambda t, e, o: 0, "worker-opaque", destroyed.append)
    runner.run()
    runner.context.idle_add(runner.quit)
    runner.run()
    assert destroyed == ["worker-opaque"]
    other = compat.qio_task_new(None, None)
    with pytest.raises(TypeError, match="worker must be callable"):
        compat.qio_task_run_in_thread(other, None, None, None)  # type: ignore[arg-type]
    compat.qio_task_complete(other)


def test_compat_run_in_thread_checks_destroy_and_refuses_an_async_worker(ctx: qiotask.MainContext) -> None:
    async def worker(task: Any, errp: Any, opaque: Any) -> int:
        return 0

    task = compat.qio_task_new(None, lambda s, e, o: None, None, None)
    with pytest.raises(TypeError, match="destroy must be callable"):
        compat.qio_task_run_in_thread(task, lambda t, e, o: 0, None, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"worker .*worker is an async function"):
        compat.qio_task_run_in_thread(task, worker, None, None)  # type: ignore[arg-type]
    compat.qio_task_complete(task)
