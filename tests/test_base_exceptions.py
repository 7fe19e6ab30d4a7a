"""KeyboardInterrupt, SystemExit and other BaseExceptions from user code.

The rule (docs/errors.md): on the thread that runs a user callback for a
caller -- the context thread, or the thread calling ``cancel()`` -- such an
exception is re-raised there once every remaining callback and notifier of
the step has run; on qiotask's own threads (the deadline thread, a pool
thread's hand-over) nobody can receive it, so it is logged and the thread
carries on.  Either way nothing is skipped and nothing is lost.

Each case runs in a child process: a mistake here could take the test
runner down with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(60)

SRC = str(Path(__file__).resolve().parents[1] / "src")

PRELUDE = """
import gc, json, logging, sys, threading, weakref
import qiotask
from qiotask import Task

logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="LOG %(levelname)s %(message)s")
events = []

class Source:
    pass

class Custom(BaseException):
    pass

def done(**fields):
    print("RESULT " + json.dumps(fields), flush=True)

def context_with_a_loop():
    ctx = qiotask.MainContext(name="ctx")
    ctx.push_thread_default()
    return ctx, qiotask.MainLoop(ctx)
"""


def run_child(body: str) -> tuple[dict[str, Any], str]:
    """Run PRELUDE + body in a fresh interpreter; return the fields it
    reported with done(...) and its stderr."""
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=45,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULT ") :]), proc.stderr


RAISERS = {
    "KeyboardInterrupt": "KeyboardInterrupt()",
    "SystemExit": "SystemExit(3)",
    "custom BaseException": "Custom('custom')",
}


@pytest.mark.parametrize("kind", RAISERS)
def test_a_destroy_notifier_raising_on_the_deadline_thread_does_not_stop_later_timeouts(kind: str) -> None:
    # Item 3 of issue 9: a timed-out task on a closed context is settled on
    # the deadline thread, which runs its destroy notifier there.
    result, stderr = run_child(
        f"""
        ctx = qiotask.MainContext(name="gone")
        ctx.close()
        gate = threading.Event()

        def raising_destroy(opaque):
            events.append("destroy")
            raise {RAISERS[kind]}

        first = Task(None, None, None, raising_destroy, context=ctx, name="first")
        first.run_in_thread(lambda t, o: gate.wait(20), abandon_on_cancel=True, timeout=0.01)
        first_done = first.wait(10)
        second = Task(None, context=ctx, name="second")
        second.run_in_thread(lambda t, o: gate.wait(20), abandon_on_cancel=True, timeout=0.01)
        second_done = second.wait(10)
        gate.set()
        done(events=events, first=first_done, second=second_done,
             second_error=type(second.exception()).__name__,
             deadline_thread=any(t.name == "qiotask-deadlines" for t in threading.enumerate()))
        """
    )
    assert result["events"] == ["destroy"]
    assert result["first"] is True
    assert result["second"] is True, "the deadline thread stopped firing"
    assert result["second_error"] == "TaskTimeout"
    assert result["deadline_thread"] is True
    name = "Custom" if kind == "custom BaseException" else kind
    assert name in stderr, "the exception was not reported"


@pytest.mark.parametrize("kind", ["KeyboardInterrupt", "SystemExit"])
def test_an_exception_handler_raising_does_not_skip_the_rest_of_the_completion(kind: str) -> None:
    # Item 4 of issue 9.
    result, _ = run_child(
        f"""
        ctx, _ = context_with_a_loop()

        def handler(message, exc):
            events.append("handler")
            raise {RAISERS[kind]}

        ctx.exception_handler = handler

        def func(source, err, opaque):
            events.append("func")
            raise ValueError("func failed")

        source = Source()
        source_ref = weakref.ref(source)
        task = Task(source, func, "opaque", lambda o: events.append("destroy"))
        task.add_done_callback(lambda t: events.append("done-callback"))
        task.set_result("value", lambda v: events.append("result destroy"))
        del source
        raised = None
        try:
            task.complete()
        except BaseException as exc:
            raised = type(exc).__name__
        waited = []
        waiter = threading.Thread(target=lambda: waited.append(task.wait(5)))
        waiter.start()
        waiter.join(10)
        gc.collect()
        done(events=events, raised=raised, waited=waited, pending=qiotask.stats()["pending"],
             source_alive=source_ref() is not None, state=task.state.value)
        """
    )
    assert result["events"] == ["func", "handler", "done-callback", "destroy", "result destroy"]
    assert result["raised"] == kind
    assert result["waited"] == [True]
    assert result["pending"] == 0
    assert result["source_alive"] is False
    assert result["state"] == "finished"


@pytest.mark.parametrize("kind", ["KeyboardInterrupt", "SystemExit"])
def test_a_cancel_hook_raising_is_reraised_by_cancel_after_the_other_hooks(kind: str) -> None:
    # Item 5 of issue 9, the hooks that run inside cancel().
    result, _ = run_child(
        f"""
        ctx, _ = context_with_a_loop()

        def raising_hook(task):
            events.append("raising hook")
            raise {RAISERS[kind]}

        task = Task(None, lambda s, e, o: events.append("func " + type(e).__name__))
        task.on_cancel(raising_hook)
        task.on_cancel(lambda t: events.append("second hook"))
        raised = None
        try:
            task.cancel()
        except BaseException as exc:
            raised = type(exc).__name__
        cancelled = task.cancelled()
        late_raised = None
        try:
            task.on_cancel(raising_hook)  # added after the cancel: runs at once, here
        except BaseException as exc:
            late_raised = type(exc).__name__
        task.complete()
        done(events=events, raised=raised, late_raised=late_raised, cancelled=cancelled)
        """
    )
    assert result["events"] == ["raising hook", "second hook", "raising hook", "func TaskCancelled"]
    assert result["raised"] == kind
    assert result["late_raised"] == kind
    assert result["cancelled"] is True


@pytest.mark.parametrize("kind", ["KeyboardInterrupt", "SystemExit"])
def test_a_progress_callback_raising_is_reraised_on_the_loop_after_the_other_callbacks(kind: str) -> None:
    # Item 5 of issue 9, progress: the loop's run() raises it, as it does
    # for func's.
    result, _ = run_child(
        f"""
        ctx, loop = context_with_a_loop()
        reported = threading.Event()
        finish = threading.Event()

        def raising(task, done_, total, message):
            events.append("raising progress")
            raise {RAISERS[kind]}

        task = Task(None, lambda s, e, o: (events.append("func"), loop.quit()))
        task.connect_progress(raising)
        task.connect_progress(lambda t, d, total, m: events.append("second progress"))

        def worker(task, opaque):
            task.report_progress(1, 2)
            reported.set()
            finish.wait(10)

        task.run_in_thread(worker)
        reported.wait(10)
        guard = ctx.timeout_add(5000, loop.quit)  # if nothing stops the loop
        raised = None
        try:
            loop.run()
        except BaseException as exc:
            raised = type(exc).__name__
        guard.remove()
        finish.set()
        loop.run()  # the completion is still delivered
        done(events=events, raised=raised, finished=task.done())
        """
    )
    assert result["events"] == ["raising progress", "second progress", "func"]
    assert result["raised"] == kind
    assert result["finished"] is True


def test_the_first_and_last_results_of_to_thread_are_released_after_asyncio_run() -> None:
    # Item 6 of issue 9: nothing of a finished job stays referenced by the
    # pool (its first job, its last result) once asyncio.run() returned.
    result, _ = run_child(
        """
        import asyncio

        class Value:
            pass

        refs = []

        def make():
            value = Value()
            refs.append(weakref.ref(value))
            return value

        async def main():
            for _ in range(3):
                await qiotask.to_thread(make)

        asyncio.run(main())
        gc.collect()
        done(alive=[ref() is not None for ref in refs])
        """
    )
    assert result["alive"] == [False, False, False]


def test_errors_nobody_retrieved_are_logged_once_the_task_is_collected() -> None:
    # The docs/tasks.md example that printed nothing while the pool kept the
    # last task alive.
    _, stderr = run_child(
        """
        import asyncio

        def fails():
            raise OSError("disk on fire")

        async def main():
            task = Task(None)
            task.run_in_thread(lambda t, o: fails())
            while not task.done():
                await asyncio.sleep(0.01)

        asyncio.run(main())
        gc.collect()
        done()
        """
    )
    assert "nobody retrieved its error" in stderr
    assert "disk on fire" in stderr


@pytest.mark.parametrize("kind", ["KeyboardInterrupt", "SystemExit"])
def test_a_replaced_results_destroy_raising_does_not_strand_the_completion(kind: str) -> None:
    # complete(result) replaces a result set before, whose destroy notifier
    # raises: the completion still runs (here, on the context thread), then
    # the exception comes out; the same from a worker's return value, where
    # the pool thread logs it.
    result, stderr = run_child(
        f"""
        ctx, loop = context_with_a_loop()

        def raising(value):
            events.append("old destroyed")
            raise {RAISERS[kind]}

        task = Task(None, lambda s, e, o: events.append("func"))
        task.set_result("old", raising)
        raised = None
        try:
            task.complete("new")
        except BaseException as exc:
            raised = type(exc).__name__
        worker_task = Task(None, lambda s, e, o: (events.append("worker func"), loop.quit()))
        worker_task.set_result("old", raising)
        worker_task.run_in_thread(lambda t, o: "new")
        ctx.timeout_add(5000, loop.quit)
        loop.run()
        # The pool thread logs the exception after it posted the completion,
        # so "worker func" may run first: wait for the pool's threads.
        qiotask.shutdown(5)
        done(events=events, raised=raised, finished=[task.done(), worker_task.done()],
             results=[task.get_result(), worker_task.get_result()], pending=qiotask.stats()["pending"])
        """
    )
    assert result["events"] == ["old destroyed", "func", "old destroyed", "worker func"]
    assert result["raised"] == kind
    assert result["finished"] == [True, True]
    assert result["results"] == ["new", "new"]
    assert result["pending"] == 0
    assert kind in stderr  # the pool thread's logged it
