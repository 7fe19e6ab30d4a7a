"""Task: completion, errors, results, threads, waiting, awaiting, misuse."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import math
import threading
import traceback
import weakref
from typing import Any

import pytest

import qiotask
from qiotask import Task, TaskState, TaskStateError

from .conftest import LoopRunner, join, start_thread


class Source:
    """A source object that can be weakly referenced."""


class Recorder:
    """Records every callback with the thread it ran on."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, str]] = []
        self.lock = threading.Lock()

    def add(self, what: str, value: Any = None) -> None:
        with self.lock:
            self.events.append((what, value, threading.current_thread().name))

    def names(self) -> list[str]:
        return [e[0] for e in self.events]

    def func(self, source: Any, err: BaseException | None, opaque: Any) -> None:
        self.add("func", (source, err, opaque))

    def destroy(self, opaque: Any) -> None:
        self.add("destroy", opaque)


# -- completing on the context thread ----------------------------------------


def test_complete_on_context_thread_runs_func_synchronously(ctx: qiotask.MainContext) -> None:
    rec = Recorder()
    src = Source()
    task = Task(src, rec.func, "op", rec.destroy)
    assert task.state is TaskState.PENDING and not task.done()
    task.complete()
    assert rec.names() == ["func", "destroy"]
    assert rec.events[0][1] == (src, None, "op")
    assert rec.events[1][1] == "op"
    assert task.done() and task.state is TaskState.FINISHED


def test_abort_delivers_the_error(ctx: qiotask.MainContext) -> None:
    rec = Recorder()
    err = ValueError("boom")
    task = Task(Source(), rec.func, None, rec.destroy)
    task.abort(err)
    assert rec.events[0][1][1] is err
    assert rec.names() == ["func", "destroy"]
    assert task.had_error()


def test_second_completion_raises(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    task.complete()
    with pytest.raises(TaskStateError, match="already completed"):
        task.complete()
    with pytest.raises(TaskStateError, match="already completed"):
        task.abort(ValueError())


def test_second_completion_from_other_thread_raises_at_once(runner: LoopRunner) -> None:
    rec = Recorder()
    task = Task(None, rec.func)
    errors: list[BaseException] = []

    def other() -> None:
        task.complete()
        try:
            task.complete()
        except TaskStateError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1
    task.add_done_callback(runner.quit)
    runner.run()
    assert rec.names() == ["func"]


def test_abort_requires_an_exception(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    with pytest.raises(TypeError, match="exception instance"):
        task.abort("not an error")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exception instance"):
        task.abort(ValueError)  # type: ignore[arg-type]  # the class, not an instance
    task.complete()  # the bad calls did not claim the completion


def test_bad_constructor_arguments(ctx: qiotask.MainContext) -> None:
    with pytest.raises(TypeError, match="func must be callable"):
        Task(None, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="destroy must be callable"):
        Task(None, None, None, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be a str"):
        Task(None, name=3)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"^Task: context must be a qiotask.MainContext or a loop object .*, not object$"
    ):
        Task(None, context=object())
    with pytest.raises(TypeError, match=r"^Task: context must be .*an asyncio event loop.*, not int$"):
        Task(None, context=42)


def test_complete_from_other_thread_is_handed_to_the_context(runner: LoopRunner) -> None:
    rec = Recorder()
    task = Task(Source(), rec.func, "op", rec.destroy)
    main = threading.current_thread().name
    done_in_thread = threading.Event()

    def other() -> None:
        task.complete("value")
        # Handed over: nothing ran on this thread.
        assert rec.events == []
        done_in_thread.set()

    threading.Thread(target=other, name="completer").start()
    assert done_in_thread.wait(5)
    task.add_done_callback(runner.quit)
    runner.run()
    assert rec.names() == ["func", "destroy"]
    assert {e[2] for e in rec.events} == {main}
    assert task.get_result() == "value"


# -- errors and results --------------------------------------------------------


def test_first_error_wins(ctx: qiotask.MainContext) -> None:
    rec = Recorder()
    e1, e2 = ValueError("first"), KeyError("second")
    task = Task(None, rec.func)
    task.set_error(e1)
    task.set_error(e2)
    task.abort(e2)
    assert rec.events[0][1][1] is e1


def test_complete_after_set_error_delivers_the_error(ctx: qiotask.MainContext) -> None:
    rec = Recorder()
    e1 = ValueError("x")
    task = Task(None, rec.func)
    task.set_error(e1)
    task.complete()
    assert rec.events[0][1][1] is e1


def test_worker_error_after_set_error_keeps_the_first(runner: LoopRunner) -> None:
    rec = Recorder()
    e1 = ValueError("first")

    def worker(task: Task[Any], opaque: Any) -> None:
        task.set_error(e1)
        raise KeyError("second")

    task = Task(None, rec.func)
    task.add_done_callback(runner.quit)
    task.run_in_thread(worker)
    runner.run()
    assert rec.events[0][1][1] is e1


def test_set_error_checks_its_argument(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    with pytest.raises(TypeError, match="exception instance"):
        task.set_error("no")  # type: ignore[arg-type]
    task.complete()
    with pytest.raises(TaskStateError):
        task.set_error(ValueError())
    with pytest.raises(TaskStateError):
        task.set_result(1)


def test_propagate_error_once(ctx: qiotask.MainContext) -> None:
    err = ValueError("x")
    task = Task(None)
    task.abort(err)
    assert task.propagate_error() is err
    assert task.propagate_error() is None
    assert task.had_error()


def test_propagate_error_without_error(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    task.complete()
    assert task.propagate_error() is None
    assert not task.had_error()


def test_result_none_never_overwrites(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    task.set_result("kept")
    task.complete()
    assert task.get_result() == "kept"


def test_result_readable_after_finish_and_destroy_order(ctx: qiotask.MainContext) -> None:
    rec = Recorder()
    task = Task(Source(), rec.func, "op", rec.destroy)
    task.set_result("res", lambda v: rec.add("result-destroy", v))
    task.add_done_callback(lambda t: rec.add("done-callback"))
    task.complete()
    assert rec.names() == ["func", "done-callback", "destroy", "result-destroy"]
    assert task.get_result() == "res"


def test_set_result_replacing_a_value_destroys_the_old_one(ctx: qiotask.MainContext) -> None:
    rec = Recorder()
    task = Task(None)
    task.set_result("a", lambda v: rec.add("destroy-a", v))
    task.set_result("b", lambda v: rec.add("destroy-b", v))
    assert rec.names() == ["destroy-a"]
    task.complete()
    assert rec.names() == ["destroy-a", "destroy-b"]


def test_complete_with_a_result_destroys_the_one_set_before(ctx: qiotask.MainContext) -> None:
    """complete(result) replaces set_result's value: the old value's destroy
    runs (with the old value), and the new value has none."""
    rec = Recorder()
    task = Task(None)
    task.set_result("old", lambda v: rec.add("destroy", v))
    task.complete("new")
    assert task.get_result() == "new"
    assert [(name, value) for name, value, _ in rec.events] == [("destroy", "old")]


# -- the source ------------------------------------------------------------


def test_source_kept_alive_then_released(runner: LoopRunner) -> None:
    src = Source()
    ref = weakref.ref(src)
    alive_in_func: list[bool] = []
    worker_started = threading.Event()
    release = threading.Event()

    def worker(task: Task[Any], opaque: Any) -> None:
        worker_started.set()
        assert release.wait(5)

    def func(source: Any, err: BaseException | None, opaque: Any) -> None:
        alive_in_func.append(ref() is not None)
        runner.quit()

    task = Task(src, func)
    task.run_in_thread(worker)
    del src
    assert worker_started.wait(5)
    gc.collect()
    assert ref() is not None, "the task must keep its source alive"
    assert task.get_source() is ref()
    release.set()
    runner.run()
    assert alive_in_func == [True]
    gc.collect()
    assert ref() is None, "the source must be released once the task finished"
    with pytest.raises(TaskStateError, match="released its source"):
        task.get_source()


# -- threads --------------------------------------------------------------------


def test_run_in_thread_threads_and_order(runner: LoopRunner) -> None:
    rec = Recorder()
    main = threading.current_thread()

    def worker(task: Task[Any], opaque: Any) -> str:
        rec.add("worker", opaque)
        assert threading.current_thread() is not main
        return "result"

    task = Task(Source(), rec.func, "op", rec.destroy)
    task.add_done_callback(lambda t: rec.add("done-callback"))
    task.add_done_callback(runner.quit)
    task.run_in_thread(worker, "wop", lambda o: rec.add("worker-destroy", o))
    assert task.state in (TaskState.QUEUED, TaskState.RUNNING, TaskState.COMPLETING)
    runner.run()
    assert rec.names() == ["worker", "func", "done-callback", "worker-destroy", "destroy"]
    worker_thread = rec.events[0][2]
    assert worker_thread != main.name
    assert all(e[2] == main.name for e in rec.events[1:])
    assert task.get_result() == "result"
    assert rec.events[3][1] == "wop"


def test_worker_exception_reaches_func_with_traceback(runner: LoopRunner) -> None:
    got: list[BaseException | None] = []

    def failing_worker(task: Task[Any], opaque: Any) -> None:
        raise ValueError("from the worker")

    def func(source: Any, err: BaseException | None, opaque: Any) -> None:
        got.append(err)
        runner.quit()

    Task(None, func).run_in_thread(failing_worker)
    runner.run()
    (err,) = got
    assert isinstance(err, ValueError)
    frames = "".join(traceback.format_tb(err.__traceback__))
    assert "failing_worker" in frames


def test_contextvars_carried_into_the_worker(runner: LoopRunner) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller")
    seen: list[str] = []

    def worker(task: Task[Any], opaque: Any) -> None:
        seen.append(var.get())
        var.set("changed in worker")

    t1 = Task(None)
    t1.run_in_thread(worker)
    t2 = Task(None)
    t2.run_in_thread(worker, copy_context=False)
    t2.add_done_callback(lambda t: t1.add_done_callback(runner.quit))
    runner.run()
    assert seen[0] == "caller" or seen[1] == "caller"
    assert "unset" in seen  # copy_context=False: the pool thread's own context
    assert var.get() == "caller"  # the worker's change did not leak back


def test_run_in_thread_twice_raises(runner: LoopRunner) -> None:
    release = threading.Event()
    task = Task(None)
    task.run_in_thread(lambda t, o: release.wait(5))
    with pytest.raises(TaskStateError, match="run_in_thread"):
        task.run_in_thread(lambda t, o: None)
    with pytest.raises(TaskStateError, match="runs a worker"):
        task.complete()
    release.set()
    task.add_done_callback(runner.quit)
    runner.run()


def test_run_in_thread_bad_arguments(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    with pytest.raises(TypeError, match="worker must be callable"):
        task.run_in_thread(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="destroy must be callable"):
        task.run_in_thread(lambda t, o: None, None, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="WorkerPool"):
        task.run_in_thread(lambda t, o: None, pool="pool")  # type: ignore[arg-type]
    task.complete()


def test_run_in_thread_on_a_shut_down_pool(ctx: qiotask.MainContext) -> None:
    pool = qiotask.WorkerPool(1, name="test-pool")
    pool.shutdown()
    task = Task(None)
    with pytest.raises(RuntimeError, match="shut down"):
        task.run_in_thread(lambda t, o: None, pool=pool)
    assert task.state is TaskState.PENDING
    task.complete()


# -- wait_thread and wait ------------------------------------------------------


def test_wait_thread_runs_completion_inline_exactly_once(runner: LoopRunner) -> None:
    rec = Recorder()
    task = Task(None, rec.func, None, rec.destroy)
    task.run_in_thread(lambda t, o: "r")
    task.wait_thread()
    assert rec.names() == ["func", "destroy"]
    assert task.done()
    # The completion posted to the loop finds nothing left to do.
    runner.context.idle_add(runner.quit)
    runner.run()
    assert rec.names() == ["func", "destroy"]
    task.wait_thread()  # finished: returns at once
    assert rec.names() == ["func", "destroy"]


def test_wait_thread_after_worker_finished(ctx: qiotask.MainContext) -> None:
    rec = Recorder()
    posted = threading.Event()

    def listener(event: str, task: Any, fields: dict[str, Any]) -> None:
        if event == "qio_task_thread_source_attach":
            posted.set()

    remove = qiotask.trace.add_listener(listener)
    try:
        task = Task(None, rec.func)
        task.run_in_thread(lambda t, o: None)
        # The worker has returned and its completion is queued on the loop,
        # which is not running: wait_thread() runs it here and now.
        assert posted.wait(5)
        assert task.state is TaskState.COMPLETING
        task.wait_thread()
        assert rec.names() == ["func"]
    finally:
        remove()


def test_wait_thread_misuse(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    with pytest.raises(TaskStateError, match="no worker"):
        task.wait_thread()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            task.wait_thread()
        except TaskStateError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors and "context thread" in str(errors[0])
    task.complete()


def test_wait_from_other_thread(runner: LoopRunner) -> None:
    task = Task(None)
    results: list[bool] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        results.append(task.wait(10))
        runner.quit()

    t = threading.Thread(target=waiter)
    t.start()
    assert started.wait(5)
    task.run_in_thread(lambda t, o: None)
    runner.run()
    t.join()
    assert results == [True]


def test_wait_timeout_and_context_thread(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    with pytest.raises(TaskStateError, match="deadlock"):
        task.wait()
    results: list[bool] = []
    t = threading.Thread(target=lambda: results.append(task.wait(0.01)))
    t.start()
    t.join()
    assert results == [False]
    task.complete()
    assert task.wait() is True  # finished: no deadlock possible


# -- done-callbacks, exceptions in callbacks ----------------------------------


def test_exceptions_in_callbacks_are_logged_and_skip_nothing(
    ctx: qiotask.MainContext, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()

    def bad_func(source: Any, err: BaseException | None, opaque: Any) -> None:
        rec.add("func")
        raise RuntimeError("func failed")

    def bad_destroy(opaque: Any) -> None:
        rec.add("destroy")
        raise RuntimeError("destroy failed")

    def bad_callback(task: Task[Any]) -> None:
        rec.add("cb")
        raise RuntimeError("callback failed")

    task = Task(None, bad_func, None, bad_destroy)
    task.add_done_callback(bad_callback)
    task.add_done_callback(lambda t: rec.add("cb2"))
    task.set_result(1, lambda v: rec.add("result-destroy"))
    with caplog.at_level(logging.ERROR, logger="qiotask"):
        task.complete()
    assert rec.names() == ["func", "cb", "cb2", "destroy", "result-destroy"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("completion callback" in m for m in messages)
    assert any("done-callback" in m for m in messages)
    assert any("destroy notifier" in m for m in messages)
    assert all(r.exc_info for r in caplog.records)


def test_exception_in_func_does_not_stop_the_loop(runner: LoopRunner, caplog: pytest.LogCaptureFixture) -> None:
    def bad_func(source: Any, err: BaseException | None, opaque: Any) -> None:
        raise RuntimeError("func failed")

    task = Task(None, bad_func)
    task.run_in_thread(lambda t, o: None)
    second = Task(None)
    second.add_done_callback(runner.quit)
    second.run_in_thread(lambda t, o: None)
    with caplog.at_level(logging.ERROR, logger="qiotask"):
        runner.run()
    assert task.done() and second.done()
    assert any("func failed" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_keyboard_interrupt_in_func_runs_notifiers_then_propagates(ctx: qiotask.MainContext) -> None:
    rec = Recorder()

    def func(source: Any, err: BaseException | None, opaque: Any) -> None:
        raise KeyboardInterrupt

    task = Task(None, func, None, rec.destroy)
    with pytest.raises(KeyboardInterrupt):
        task.complete()
    assert rec.names() == ["destroy"]


def test_done_callback_added_after_finish_runs_on_context_thread(runner: LoopRunner) -> None:
    task = Task(None)
    task.complete()
    seen: list[str] = []

    def cb(t: Task[Any]) -> None:
        seen.append(threading.current_thread().name)
        runner.quit()

    task.add_done_callback(cb)
    assert seen == []  # scheduled, like a Future's
    runner.run()
    assert seen == [threading.current_thread().name]
    with pytest.raises(TypeError):
        task.add_done_callback(3)  # type: ignore[arg-type]


# -- awaiting -----------------------------------------------------------------


def test_await_under_asyncio() -> None:
    async def main() -> tuple[Any, str, str]:
        task: Task[str] = Task(None)
        assert task.context is qiotask.attach(asyncio.get_running_loop())
        task.run_in_thread(lambda t, o: threading.current_thread().name)
        worker_name = await task
        failing: Task[None] = Task(None)

        def boom(t: Task[None], o: Any) -> None:
            raise ValueError("boom")

        failing.run_in_thread(boom)
        with pytest.raises(ValueError, match="boom") as info:
            await failing
        return worker_name, threading.current_thread().name, "".join(traceback.format_tb(info.tb))

    worker_name, loop_thread, tb = asyncio.run(main())
    assert worker_name != loop_thread
    assert "boom" in tb


def test_await_a_finished_task_and_one_completed_from_a_timer() -> None:
    async def main() -> list[Any]:
        done: Task[int] = Task(None)
        done.complete(1)
        later: Task[int] = Task(None)
        qiotask.get_context().timeout_add(1, lambda: later.complete(2))
        return [await done, await later]

    assert asyncio.run(main()) == [1, 2]


def test_await_a_task_of_another_loop(runner: LoopRunner) -> None:
    task: Task[str] = Task(None, context=runner.context)
    results: list[Any] = []

    def asyncio_thread() -> None:
        async def main() -> None:
            results.append(await task)
            runner.quit()

        asyncio.run(main())

    t = threading.Thread(target=asyncio_thread)
    t.start()
    task.run_in_thread(lambda t, o: "from worker")
    runner.run()
    t.join(5)
    assert results == ["from worker"]


# -- leak warning ---------------------------------------------------------------


def test_never_completed_task_warns_on_collection(ctx: qiotask.MainContext) -> None:
    before = qiotask.stats()
    task = Task(None, name="forgotten")
    with pytest.warns(ResourceWarning, match="forgotten"):
        del task
        gc.collect()
    after = qiotask.stats()
    assert after["pending"] == before["pending"]
    assert after["failed"] == before["failed"] + 1


def test_repr_name_and_states(ctx: qiotask.MainContext) -> None:
    task = Task(None, name="named")
    assert task.name == "named"
    assert "named" in repr(task) and "pending" in repr(task)
    auto = Task(None)
    assert auto.name.startswith("Task-")
    task.complete()
    auto.complete()
    assert "finished" in repr(task)


# -- errors nobody hears of, closed contexts -------------------------------------


def test_unretrieved_error_is_logged_when_collected(ctx: qiotask.MainContext, caplog: pytest.LogCaptureFixture) -> None:
    task = Task(None, name="unheard")
    task.abort(ValueError("lost?"))
    with caplog.at_level(logging.ERROR, logger="qiotask"):
        del task
        gc.collect()
    assert any("unheard" in r.getMessage() and "nobody retrieved" in r.getMessage() for r in caplog.records)
    heard = Task(None, name="heard")
    heard.abort(ValueError("seen"))
    assert heard.had_error()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="qiotask"):
        del heard
        gc.collect()
    assert caplog.records == []


def test_a_cancelled_task_nobody_heard_of_is_not_reported(
    ctx: qiotask.MainContext, caplog: pytest.LogCaptureFixture
) -> None:
    # As a cancelled asyncio Future: whoever cancelled it knows, so its
    # TaskCancelled is no error "nobody retrieved".
    task = Task(None, name="called off")
    task.cancel()
    task.complete()  # the cancel wins
    assert isinstance(task.exception(), qiotask.TaskCancelled)
    unheard = Task(None, name="called off, unheard")
    unheard.cancel()
    unheard.complete()
    with caplog.at_level(logging.ERROR, logger="qiotask"):
        del task, unheard
        gc.collect()
    assert caplog.records == []


def test_propagate_error_before_an_error_does_not_use_up_the_answer(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    assert task.propagate_error() is None
    err = ValueError("later")
    task.set_error(err)
    task.complete()
    assert task.propagate_error() is err
    assert task.propagate_error() is None


def test_complete_on_the_thread_of_a_closed_context(caplog: pytest.LogCaptureFixture) -> None:
    context = qiotask.MainContext(name="gone")
    rec = Recorder()
    task = Task(None, rec.func, "op", rec.destroy, context=context, name="late")
    context.close()  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="qiotask"):
        task.complete()
    assert rec.names() == ["destroy"]  # func cannot run: its loop is gone
    assert isinstance(task.propagate_error(), qiotask.ContextClosedError)
    assert any("late" in r.getMessage() for r in caplog.records)


def test_wait_thread_result_survives_the_context_closing(caplog: pytest.LogCaptureFixture) -> None:
    context = qiotask.MainContext(name="short-lived")
    rec = Recorder()
    task = Task(None, rec.func, context=context)
    task.run_in_thread(lambda t, o: "kept")
    task.wait_thread()
    with caplog.at_level(logging.WARNING, logger="qiotask"):
        context.close()  # type: ignore[attr-defined]  # the posted completion is still queued
    assert rec.names() == ["func"]
    assert not task.had_error() and task.get_result() == "kept"
    assert caplog.records == []


def test_tasks_waiting_on_later_tasks_all_finish_by_pool_growth(runner: LoopRunner) -> None:
    """2x pool-size tasks, each waiting for the one submitted after it: with
    no growth past max_workers they would deadlock."""
    pool = qiotask.WorkerPool(2, name="test-pool", grow_after=0.05)
    count = 4
    started = [threading.Event() for _ in range(count)]

    def worker(task: Task[Any], i: int) -> int:
        started[i].set()
        if i + 1 < count:
            assert started[i + 1].wait(10), f"task {i + 1} never started"
        return i

    tasks = []
    for i in range(count):
        task = Task(None)
        task.run_in_thread(worker, i, pool=pool)
        tasks.append(task)
    try:
        runner.run_until(lambda: all(t.done() for t in tasks))
        assert [t.get_result() for t in tasks] == list(range(count))
        assert not any(t.had_error() for t in tasks)
    finally:
        assert pool.shutdown(wait=True, timeout=10)


def test_wait_and_run_in_thread_take_an_unlimited_timeout(ctx: qiotask.MainContext, runner: LoopRunner) -> None:
    # math.inf or anything beyond threading.TIMEOUT_MAX means "no limit"
    # (it used to raise OverflowError).
    task: Task[Any] = Task(None)
    task.run_in_thread(lambda t, o: "value", timeout=10**400)
    waited: list[bool] = []
    waiter = start_thread(lambda: waited.append(task.wait(timeout=math.inf)), "waiter")
    runner.run_until(task.done)
    join(waiter)
    assert waited == [True]
    assert task.get_result() == "value"
    with pytest.raises(ValueError, match=r"^wait: timeout must be a number of seconds, not NaN$"):
        task.wait(float("nan"))
    with pytest.raises(TypeError, match=r"^wait: timeout must be a number of seconds or None, not str$"):
        task.wait("1")  # type: ignore[arg-type]


# -- result(): the outcome, as Future.result() -------------------------------------


def test_result_is_the_outcome_once_completed_and_refuses_before(ctx: qiotask.MainContext) -> None:
    seen: list[Any] = []
    task: Task[str] = Task(None, lambda source, err, opaque: seen.append(task.result()), name="quick")
    task.set_result("value")
    assert task.get_result() == "value"  # QEMU's: the result as it stands
    with pytest.raises(TaskStateError, match="'quick' has not completed; result\\(\\) is for func"):
        task.result()
    task.complete()
    assert seen == ["value"] and task.result() == "value"  # in func, and after


def test_result_raises_the_error_and_get_result_is_none(
    ctx: qiotask.MainContext, caplog: pytest.LogCaptureFixture
) -> None:
    task: Task[int] = Task(None)
    task.abort(ValueError("bad"))
    assert task.get_result() is None
    with pytest.raises(ValueError, match="bad"):
        task.result()
    with caplog.at_level(logging.ERROR, logger="qiotask"):
        del task
        gc.collect()
    assert caplog.records == []  # result() retrieved the error: nothing to log


def test_await_under_a_loop_with_no_adapter_says_what_runs_it(ctx: qiotask.MainContext) -> None:
    task: Task[int] = Task(None)

    async def awaiting() -> int:
        return await task

    coro = awaiting()
    with pytest.raises(RuntimeError) as info:
        coro.send(None)  # run by this test, as a loop qiotask does not know would
    message = str(info.value)
    assert message.startswith("await task: no asyncio event loop or trio run is running in this thread")
    assert f"(the awaiting coroutine is run by {__name__}.test_await_under_a_loop_with_no_adapter" in message
    assert "qiotask can await under asyncio (uvloop included) and trio" in message
    assert "take the outcome in the task's func or a done-callback" in message
    task.complete(1)
