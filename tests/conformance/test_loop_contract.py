"""The contract every loop adapter keeps, run on every loop (see conftest).

Worker thread != loop thread, callback thread == loop thread, exactly once;
timeout_add, idle_add and io_add_watch on a socketpair; completion from
another thread; the batching dispatcher; a loop that goes away with tasks
in flight.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

import qiotask
from qiotask import IO_HUP, IO_IN, IO_OUT, IOCondition, Task

from ..backends import Backend
from ..conftest import LoopRunner, SocketPair, count_wakeups


class Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, Any, threading.Thread]] = []

    def add(self, what: str, value: Any = None) -> None:
        with self.lock:
            self.events.append((what, value, threading.current_thread()))

    def names(self) -> list[str]:
        return [e[0] for e in self.events]

    def thread_of(self, what: str) -> threading.Thread:
        return next(t for w, _, t in self.events if w == what)


def test_worker_and_callback_threads(runner: LoopRunner) -> None:
    seen = Seen()
    loop_thread: list[threading.Thread] = []

    def worker(task: Task[Any], opaque: Any) -> str:
        seen.add("worker")
        return "value"

    def func(source: Any, err: BaseException | None, opaque: Any) -> None:
        seen.add("func", err)
        loop_thread.append(runner.context.thread)

    def destroy(opaque: Any) -> None:
        seen.add("destroy", opaque)
        runner.quit()

    task = Task(object(), func, "op", destroy)
    assert task.context is runner.context
    task.run_in_thread(worker, "wop", lambda o: seen.add("worker-destroy", o))
    runner.run()
    assert seen.names() == ["worker", "func", "worker-destroy", "destroy"]
    me = threading.current_thread()
    assert seen.thread_of("worker") is not me
    assert seen.thread_of("func") is me and loop_thread == [me]
    assert seen.thread_of("destroy") is me
    assert task.get_result() == "value"


def test_many_tasks_each_complete_exactly_once(runner: LoopRunner) -> None:
    calls: dict[int, int] = {}
    destroyed: list[int] = []
    total = 300

    def func(source: Any, err: BaseException | None, i: int) -> None:
        assert err is None
        calls[i] = calls.get(i, 0) + 1

    def destroy(i: int) -> None:
        destroyed.append(i)
        if len(destroyed) == total:
            runner.quit()

    for i in range(total):
        Task(None, func, i, destroy).run_in_thread(lambda t, o: o, i)
    runner.run()
    assert calls == {i: 1 for i in range(total)}
    assert sorted(destroyed) == list(range(total))


def test_completion_from_another_thread(runner: LoopRunner) -> None:
    seen = Seen()
    task = Task(None, lambda s, e, o: (seen.add("func", e), runner.quit()))
    thread = threading.Thread(target=task.complete, args=("from thread",), name="completer")
    thread.start()
    thread.join(5)
    runner.run()
    assert seen.names() == ["func"]
    assert seen.thread_of("func") is threading.current_thread()
    assert task.get_result() == "from thread"


def test_timeout_add_repeats_while_true(runner: LoopRunner) -> None:
    seen = Seen()

    def tick(label: str) -> bool:
        seen.add(label)
        if len(seen.events) == 3:
            runner.quit()
            return False
        return True

    source = runner.context.timeout_add(5, tick, "tick")
    runner.run()
    assert seen.names() == ["tick"] * 3
    assert {t for _, _, t in seen.events} == {threading.current_thread()}
    assert source.removed


def test_idle_add_and_sources_from_other_threads(runner: LoopRunner) -> None:
    seen = Seen()

    def idle(label: str) -> bool:
        seen.add(label)
        if seen.names().count(label) < 2:
            return True
        if label == "from-thread":
            runner.quit()
        return False

    runner.context.idle_add(idle, "here")
    thread = threading.Thread(target=runner.context.idle_add, args=(idle, "from-thread"))
    thread.start()
    thread.join(5)
    runner.run()
    assert seen.names().count("here") == 2
    assert seen.names().count("from-thread") == 2
    assert {t for _, _, t in seen.events} == {threading.current_thread()}


def test_io_add_watch_on_a_socketpair(runner: LoopRunner, pair: SocketPair) -> None:
    a, b = pair
    seen = Seen()

    def readable(fd: int, condition: IOCondition, label: str) -> bool:
        seen.add(label, condition)
        data = a.recv(100)
        if data == b"":
            runner.quit()
            return False
        return True

    def writable(fd: int, condition: IOCondition) -> bool:
        seen.add("out", condition)
        b.send(b"ping")
        return False

    runner.context.io_add_watch(a, IO_IN | IO_HUP, readable, "in")
    runner.context.io_add_watch(b.fileno(), IO_OUT, writable)
    runner.context.timeout_add(50, lambda: b.shutdown(socket.SHUT_WR))
    runner.run()
    names = seen.names()
    assert names[0] == "out" and seen.events[0][1] & IO_OUT
    assert names.count("in") >= 2  # the ping, then the end of the stream
    assert seen.events[1][1] & IO_IN
    assert {t for _, _, t in seen.events} == {threading.current_thread()}


def test_two_watches_on_one_fd(runner: LoopRunner, pair: SocketPair) -> None:
    a, b = pair
    seen = Seen()

    def watch(fd: int, condition: IOCondition, label: str) -> bool:
        seen.add(label)
        if set(seen.names()) == {"one", "two"}:
            a.recv(100)
            runner.quit()
        return False

    runner.context.io_add_watch(a, IO_IN, watch, "one")
    runner.context.io_add_watch(a, IO_IN, watch, "two")
    b.send(b"x")
    runner.run()
    assert sorted(seen.names()) == ["one", "two"]


def test_one_wakeup_per_batch(backend: Backend, runner: LoopRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = runner.context
    wakeups = count_wakeups(ctx, monkeypatch)
    tasks = [Task(None) for _ in range(500)]
    done = [0]

    def count(task: Task[Any]) -> None:
        done[0] += 1
        if done[0] == len(tasks):
            runner.quit()

    for task in tasks:
        task.add_done_callback(count)
    thread = threading.Thread(target=lambda: [t.complete() for t in tasks])
    thread.start()
    thread.join(10)
    assert wakeups[0] == 1  # 500 completions, one wake-up: the loop has not run yet
    runner.run()
    assert done[0] == 500


def test_loop_closed_with_tasks_in_flight(backend: Backend) -> None:
    seen = Seen()
    release = threading.Event()
    started = threading.Event()

    def worker(task: Task[Any], opaque: Any) -> str:
        started.set()
        release.wait(10)
        return "late"

    task = Task(object(), lambda s, e, o: seen.add("func"), "op", lambda o: seen.add("destroy"), name="in-flight")
    task.run_in_thread(worker, None, lambda o: seen.add("worker-destroy"))
    assert started.wait(5)
    backend.close_loop()
    release.set()
    assert task.wait(10)
    assert seen.names() == ["worker-destroy", "destroy"]  # func cannot run: its loop is gone
    err = task.propagate_error()
    assert isinstance(err, qiotask.ContextClosedError)
    assert "in-flight" in str(err)
