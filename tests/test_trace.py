"""Trace events (QEMU's names, DESIGN §4 order), listeners, logging, stats."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

import qiotask
from qiotask import Task

from .conftest import LoopRunner


class Events:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, Any, str]] = []

    def __call__(self, event: str, task: Any, fields: dict[str, Any]) -> None:
        with self.lock:
            self.seen.append((event, task, threading.current_thread().name))

    def names(self, task: Any) -> list[str]:
        return [e for e, t, _ in self.seen if t is task]


@pytest.fixture
def events() -> Any:
    recorder = Events()
    remove = qiotask.trace.add_listener(recorder)
    yield recorder
    remove()


def test_threaded_task_emits_qemu_events_in_order(runner: LoopRunner, events: Events) -> None:
    task = Task(None, lambda s, e, o: runner.quit())
    task.run_in_thread(lambda t, o: 1)
    runner.run()
    assert events.names(task) == [
        "qio_task_new",
        "qio_task_thread_start",
        "qio_task_thread_run",
        "qio_task_thread_exit",
        "qio_task_thread_source_attach",
        "qio_task_thread_result",
        "qio_task_complete",
    ]
    threads = {e: th for e, t, th in events.seen if t is task}
    main = threading.current_thread().name
    assert threads["qio_task_thread_run"] != main
    assert threads["qio_task_thread_exit"] != main
    assert threads["qio_task_thread_result"] == main
    assert threads["qio_task_complete"] == main
    assert set(events.names(task)) <= set(qiotask.trace.EVENTS)


def test_failed_and_waited_tasks(ctx: qiotask.MainContext, events: Events) -> None:
    def boom(task: Task[Any], opaque: Any) -> None:
        raise ValueError("x")

    task = Task(None)
    task.run_in_thread(boom)
    task.wait_thread()
    assert task.had_error()
    names = events.names(task)
    assert "qio_task_thread_source_cancel" in names
    assert names[-2:] == ["qio_task_thread_result", "qio_task_abort"]
    plain = Task(None)
    plain.abort(KeyError("k"))
    assert events.names(plain) == ["qio_task_new", "qio_task_abort"]


def test_removed_listener_hears_nothing_and_bad_listener(ctx: qiotask.MainContext) -> None:
    recorder = Events()
    remove = qiotask.trace.add_listener(recorder)
    remove()
    Task(None).complete()
    assert recorder.seen == []
    qiotask.trace.remove_listener(recorder)  # removing twice is harmless
    with pytest.raises(TypeError, match="callable"):
        qiotask.trace.add_listener(42)  # type: ignore[arg-type]


def test_listener_exception_is_logged(ctx: qiotask.MainContext, caplog: pytest.LogCaptureFixture) -> None:
    def bad(event: str, task: Any, fields: dict[str, Any]) -> None:
        raise RuntimeError("listener broke")

    remove = qiotask.trace.add_listener(bad)
    try:
        with caplog.at_level(logging.ERROR, logger="qiotask"):
            task = Task(None)
            task.complete()
    finally:
        remove()
    assert task.done()
    assert any("trace listener" in r.getMessage() for r in caplog.records)


def test_debug_logging_carries_the_events(ctx: qiotask.MainContext, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="qiotask"):
        task = Task(None, name="logged")
        task.complete()
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("qio_task_new") and "logged" in line for line in lines)
    assert any(line.startswith("qio_task_complete") for line in lines)
    quiet = Task(None, name="quiet")  # DEBUG off again: nothing logged
    caplog.clear()
    quiet.complete()
    assert caplog.records == []


def test_stats_count_tasks(runner: LoopRunner) -> None:
    before = qiotask.stats()
    ok = Task(None)
    bad = Task(None)
    mid = qiotask.stats()
    assert mid["created"] == before["created"] + 2
    assert mid["pending"] == before["pending"] + 2
    ok.complete()
    bad.run_in_thread(lambda t, o: 1 / 0)
    bad.add_done_callback(runner.quit)
    runner.run()
    after = qiotask.stats()
    assert after["completed"] == before["completed"] + 1
    assert after["failed"] == before["failed"] + 1
    assert after["pending"] == before["pending"]
    assert after["threads"] >= 1
    assert set(after) == {"created", "completed", "failed", "pending", "threads"}


def test_a_field_whose_repr_raises_does_not_stop_the_task(runner: LoopRunner, caplog: pytest.LogCaptureFixture) -> None:
    # The DEBUG line of an event is made between the halves of a task's
    # steps: a result whose repr() raises is logged there, and the task
    # completes all the same.
    class Unprintable:
        def __repr__(self) -> str:
            raise ValueError("no repr")

    value = Unprintable()
    ran: list[object] = []
    caplog.set_level(logging.DEBUG, logger="qiotask")
    task: Task[Any] = Task(None, lambda source, err, opaque: ran.append(err))
    task.run_in_thread(lambda t, o: value)
    runner.run_until(task.done)
    assert ran == [None] and task.get_result() is value
    assert "could not be logged" in caplog.text


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
def test_a_listener_raising_a_base_exception_leaves_no_step_half_made(
    runner: LoopRunner, caplog: pytest.LogCaptureFixture, kind: type[BaseException]
) -> None:
    # A listener runs between the halves of a task's steps: its Ctrl-C (or
    # SystemExit) is logged and ignored like any error, or the task would
    # be left running, completing or finished without func and notifiers.
    def bad(event: str, task: Any, fields: dict[str, Any]) -> None:
        raise kind("listener broke")

    done: list[str] = []
    remove = qiotask.trace.add_listener(bad)
    try:
        with caplog.at_level(logging.ERROR, logger="qiotask"):
            task: Task[int] = Task(None, lambda s, e, o: done.append("func"), destroy=lambda o: done.append("destroy"))
            task.run_in_thread(lambda t, o: 1, None, lambda o: done.append("worker destroy"))
            task.add_done_callback(lambda t: runner.quit())
            runner.run()
    finally:
        remove()
    assert task.done() and task.get_result() == 1
    assert done == ["func", "worker destroy", "destroy"]
    assert any("trace listener" in r.getMessage() for r in caplog.records)
