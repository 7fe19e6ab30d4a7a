"""The task state machine under hypothesis: complete, abort, set_error and
set_result from the context thread and from several threads at once.

Whatever the interleaving: at most one completion is accepted, func runs
exactly once, every destroy notifier runs exactly once, and the error func
gets is one that was recorded (None if none was).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import qiotask
from qiotask import Task, TaskStateError

OPS = ("complete", "abort", "set_error", "set_result")


class TaskMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ctx = qiotask.MainContext(name="hypothesis")
        self.delivered: list[tuple[BaseException | None, str]] = []
        self.destroyed: list[Any] = []
        self.result_destroyed: list[Any] = []
        self.task: Task[Any] = Task(None, self.func, "opaque", self.destroyed.append, context=self.ctx, name="machine")
        self.claims = 0
        self.errors: list[BaseException] = []  # errors some call succeeded in recording
        self.results_set = 0
        self.worker_started = False
        self.lock = threading.Lock()

    def func(self, source: Any, err: BaseException | None, opaque: Any) -> None:
        self.delivered.append((err, threading.current_thread().name))

    # One operation, on whatever thread calls it; returns whether it took.
    def apply(self, op: str, n: int) -> None:
        task = self.task
        try:
            if op == "complete":
                task.complete()
            elif op == "abort":
                err = ValueError(f"abort {n}")
                task.abort(err)
            elif op == "set_error":
                err = KeyError(f"set_error {n}")
                task.set_error(err)
            else:
                task.set_result(n, self.result_destroyed.append)
        except TaskStateError:
            return
        with self.lock:
            if op in ("complete", "abort"):
                self.claims += 1
            if op in ("abort", "set_error"):
                self.errors.append(err)
            if op == "set_result":
                self.results_set += 1

    @rule(op=st.sampled_from(OPS), n=st.integers(0, 1000))
    def on_context_thread(self, op: str, n: int) -> None:
        self.apply(op, n)

    @rule(ops=st.lists(st.sampled_from(OPS), min_size=2, max_size=4), n=st.integers(0, 1000))
    def racing_threads(self, ops: list[str], n: int) -> None:
        barrier = threading.Barrier(len(ops))

        def run(op: str, i: int) -> None:
            barrier.wait(5)
            self.apply(op, n + i)

        threads = [threading.Thread(target=run, args=(op, i)) for i, op in enumerate(ops)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
            assert not t.is_alive()

    @precondition(lambda self: not self.worker_started and self.claims == 0)
    @rule(fail=st.booleans())
    def start_worker(self, fail: bool) -> None:
        def worker(task: Task[Any], opaque: Any) -> str:
            if fail:
                raise OSError("worker failed")
            return "from worker"

        try:
            self.task.run_in_thread(worker, None, self.destroyed.append)
        except TaskStateError:
            return
        self.worker_started = True
        self.claims += 1  # the worker owns the completion
        if fail:
            self.errors.append(OSError("worker failed"))

    @rule()
    def dispatch(self) -> None:
        if self.worker_started:
            self.task.wait_thread()
        self.ctx._dispatch()

    @invariant()
    def at_most_one_of_everything(self) -> None:
        assert self.claims <= 1
        assert len(self.delivered) <= 1
        assert len(self.destroyed) <= (2 if self.worker_started else 1)
        assert self.result_destroyed.count(None) == 0

    def teardown(self) -> None:
        if self.claims == 0:
            self.task.complete()
        if self.worker_started:
            self.task.wait_thread()
        self.ctx._dispatch()
        assert len(self.delivered) == 1, self.delivered
        err, thread = self.delivered[0]
        assert thread == threading.current_thread().name
        if self.errors:
            assert err is not None
            assert any(type(err) is type(e) and str(err) == str(e) for e in self.errors), (err, self.errors)
        else:
            assert err is None
        expected_destroys = ["opaque"] + ([None] if self.worker_started else [])
        assert sorted(map(str, self.destroyed)) == sorted(map(str, expected_destroys))
        # Every value set with a destroy notifier was destroyed exactly once.
        assert len(self.result_destroyed) == self.results_set
        self.ctx.close()  # type: ignore[attr-defined]


TaskMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.timeout(120)
class TestTaskMachine(TaskMachine.TestCase):  # type: ignore[name-defined,misc]
    pass
