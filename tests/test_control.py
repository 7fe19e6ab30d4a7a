"""Progress reports, calls back to the loop, and executors (processes, Dask)."""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import qiotask
from qiotask import ContextClosedError, Task, TaskCancelled, TaskStateError

from .backends import open_backend, thread_default
from .conftest import LoopRunner, wait_for


def counting_dispatches(ctx: qiotask.MainContext, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    count = [0]
    original = ctx._dispatch

    def dispatch() -> None:
        count[0] += 1
        original()

    monkeypatch.setattr(ctx, "_dispatch", dispatch)
    return count


@pytest.fixture(params=["asyncio", "qt"])
def ctx(request: pytest.FixtureRequest) -> Iterator[qiotask.MainContext]:
    """Every test here runs on the embedded asyncio context and on a Qt
    application's loop."""
    with thread_default(open_backend(request.param)) as backend:
        yield backend.context


# -- progress ---------------------------------------------------------------------------


def test_a_million_reports_do_not_flood_the_loop(runner: LoopRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    dispatches = counting_dispatches(runner.context, monkeypatch)
    posts = [0]
    call_soon = runner.context.call_soon

    def counting_call_soon(*args: Any) -> None:
        posts[0] += 1
        call_soon(*args)

    monkeypatch.setattr(runner.context, "call_soon", counting_call_soon)
    seen: list[tuple[Any, ...]] = []
    order: list[str] = []
    reports = 1_000_000

    def worker(task: Task[Any], opaque: Any) -> None:
        for i in range(1, reports + 1):
            task.report_progress(i, reports, "working")

    def on_progress(task: Task[Any], done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message, threading.current_thread().name))
        order.append("progress")

    task = Task(None, lambda s, e, o: order.append("func"))
    task.connect_progress(on_progress, max_rate=None)  # no time limit: once per loop iteration
    task.add_done_callback(runner.quit)
    task.run_in_thread(worker)
    runner.run()
    print(f"{reports:,} reports -> {len(seen):,} deliveries in {dispatches[0]:,} loop dispatches")
    assert 1 <= len(seen) <= dispatches[0]  # at most one delivery per loop iteration
    assert len(seen) < reports / 10  # one per loop iteration, not one per report
    assert posts[0] <= len(seen) + 1  # and nothing queued for the reports in between
    assert seen[-1][:3] == (reports, reports, "working")  # the last report is always delivered
    assert order[-1] == "func" and order[-2] == "progress"  # ... before the completion
    assert {s[3] for s in seen} == {threading.current_thread().name}
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)  # never older than the one before


def test_progress_is_delivered_at_most_max_rate_times_a_second(runner: LoopRunner) -> None:
    # The worker reports without a pause until the callback has had six
    # reports; each came at least 1/max_rate s after the one before.
    max_rate = 20.0
    stop = threading.Event()
    times: list[float] = []
    order: list[Any] = []

    def worker(task: Task[Any], opaque: Any) -> int:
        i = 0
        while not stop.is_set() and i < 50_000_000:  # bounded: about a minute at worst
            i += 1
            task.report_progress(i)
        return i

    def on_progress(task: Task[Any], done: float, total: float | None, message: str | None) -> None:
        times.append(time.monotonic())
        order.append(("progress", done))
        if len(times) == 6:
            stop.set()

    task = Task(None, lambda s, e, o: order.append("func"))
    task.connect_progress(on_progress, max_rate=max_rate)
    task.add_done_callback(runner.quit)
    task.run_in_thread(worker)
    runner.run(timeout=60)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= 6
    # (less 5 ms: each time is read a little after the delivery was decided)
    assert all(gap >= 1 / max_rate - 0.005 for gap in gaps[:5]), gaps
    assert order[-2:] == [("progress", task.get_result()), "func"]  # the last report, then func


def test_a_report_held_back_by_the_rate_arrives_without_another_report(runner: LoopRunner) -> None:
    # The second report comes right after the first was delivered, and the
    # worker then waits for the callback to see it: only the rate's timer
    # can deliver it (no report follows, and the completion, which would,
    # waits for it).
    seen: list[tuple[float, float]] = []
    got = {1: threading.Event(), 2: threading.Event()}

    def worker(task: Task[Any], opaque: Any) -> bool:
        task.report_progress(1)
        if not got[1].wait(20):
            return False
        task.report_progress(2)
        return got[2].wait(20)

    def on_progress(task: Task[Any], done: float, total: float | None, message: str | None) -> None:
        seen.append((done, time.monotonic()))
        got[int(done)].set()

    task = Task(None, runner.quit)
    task.connect_progress(on_progress, max_rate=10)
    task.run_in_thread(worker)
    runner.run(timeout=30)
    assert task.get_result() is True  # the second report came while the worker waited
    assert [done for done, _ in seen] == [1, 2]
    assert seen[1][1] - seen[0][1] >= 0.1 - 0.005  # it waited out the rate (10 a second)


def test_each_callback_has_its_own_rate(runner: LoopRunner) -> None:
    fast: list[float] = []
    slow: list[float] = []
    stop = threading.Event()

    def worker(task: Task[Any], opaque: Any) -> int:
        i = 0
        while not stop.is_set() and i < 50_000_000:
            i += 1
            task.report_progress(i)
        return i

    def on_slow(task: Task[Any], done: float, total: float | None, message: str | None) -> None:
        slow.append(done)
        if len(slow) == 3:
            stop.set()

    task = Task(None)
    task.connect_progress(lambda t, done, total, message: fast.append(done), max_rate=None)
    task.connect_progress(on_slow, max_rate=4)
    task.add_done_callback(runner.quit)
    task.run_in_thread(worker)
    runner.run(timeout=60)
    # Three slow deliveries take at least half a second (4 a second), in
    # which the unlimited callback got one per loop iteration.
    assert len(fast) > len(slow) >= 3
    assert fast[-1] == slow[-1] == task.get_result()  # both get the last report


def test_connect_progress_bad_max_rate(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    with pytest.raises(TypeError, match="max_rate must be a number or None"):
        task.connect_progress(print, max_rate="fast")  # type: ignore[arg-type]
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="max_rate must be positive"):
            task.connect_progress(print, max_rate=bad)
    task.connect_progress(print, max_rate=10**400)  # as good as no limit (was an OverflowError)
    task.complete()


@pytest.mark.parametrize("kind", ["asyncio", "glib", "qt"])
@pytest.mark.parametrize("rate", [1e-9, 1e-310])
def test_a_tiny_max_rate_holds_reports_back_without_overflowing_the_loops_timers(
    kind: str, rate: float, caplog: pytest.LogCaptureFixture
) -> None:
    # One delivery in 31 years, or in 1e310 s: longer than a loop's timer
    # takes (Qt: int milliseconds; inf for none).  The held report still
    # arrives before func, and nothing is logged.
    seen: list[Any] = []
    first = threading.Event()

    def worker(task: Task[Any], opaque: Any) -> None:
        task.report_progress(1)
        assert first.wait(10)  # delivered: the next one is held back by the rate
        task.report_progress(2)  # a timer is set for it, on the loop
        qiotask.from_thread.run_sync(lambda: None)  # (served after that report was handled)

    def on_progress(task: Task[Any], done: float, total: float | None, message: str | None) -> None:
        seen.append(done)
        first.set()

    with thread_default(open_backend(kind)) as backend, caplog.at_level("ERROR", logger="qiotask"):
        runner = LoopRunner(backend.context)
        task: Task[None] = Task(None, lambda s, e, o: seen.append("func"))
        task.connect_progress(on_progress, max_rate=rate)
        task.add_done_callback(runner.quit)
        task.run_in_thread(worker)
        runner.run()
    assert seen[-2:] == [2, "func"]
    assert caplog.records == []


def test_no_progress_is_delivered_off_the_loop_once_it_is_gone() -> None:
    # The completion then runs in the worker's thread, without func; the
    # progress callback (a GUI's widget update) must not run there either.
    ctx = qiotask.MainContext(name="gone soon")
    threads: list[str] = []
    reported = threading.Event()
    closed = threading.Event()

    def worker(task: Task[Any], opaque: Any) -> None:
        task.report_progress(1)
        reported.set()
        assert closed.wait(10)

    task: Task[None] = Task(None, context=ctx)
    task.connect_progress(lambda t, done, total, message: threads.append(threading.current_thread().name))
    task.run_in_thread(worker)
    assert reported.wait(10)
    ctx.close()
    closed.set()
    assert task.wait(10)
    assert isinstance(task.exception(), qiotask.ContextClosedError)
    assert threads == []  # not on the worker's thread


def test_progress_on_a_glib_loop() -> None:
    backend = open_backend("glib")
    try:
        runner = LoopRunner(backend.context)
        seen: list[float] = []
        task = Task(None, context=backend.context)
        task.connect_progress(lambda t, done, total, message: seen.append(done))
        task.add_done_callback(runner.quit)
        task.run_in_thread(lambda t, o: [t.report_progress(i) for i in range(1000)] and None)
        runner.run()
        assert seen and seen[-1] == 999
    finally:
        backend.cleanup()


def test_progress_bad_input(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    with pytest.raises(TypeError, match="done must be a number"):
        task.report_progress("half")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="total must be a number"):
        task.report_progress(1, "all")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="message must be a str"):
        task.report_progress(1, 2, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be negative"):
        task.report_progress(-1)
    with pytest.raises(
        ValueError, match=r"^report_progress: done and total must be numbers, not NaN \(got nan, None\)$"
    ):
        task.report_progress(float("nan"))
    with pytest.raises(ValueError, match=r"not NaN \(got 1, nan\)$"):
        task.report_progress(1, float("nan"))
    with pytest.raises(TypeError, match="connect_progress"):
        task.connect_progress(None)  # type: ignore[arg-type]
    task.complete()


# -- call_in_main -----------------------------------------------------------------------


def test_call_in_main_runs_on_the_loop_and_returns(runner: LoopRunner) -> None:
    loop_thread = threading.current_thread().name
    got: list[Any] = []

    def on_loop(x: int) -> tuple[int, str]:
        return x * 2, threading.current_thread().name

    def failing() -> None:
        raise KeyError("from the loop")

    def worker(task: Task[Any], opaque: Any) -> None:
        got.append(task.call_in_main(on_loop, 21))
        try:
            task.call_in_main(failing)
        except KeyError as exc:
            got.append(exc)

    task = Task(None)
    task.add_done_callback(runner.quit)
    task.run_in_thread(worker)
    runner.run()
    assert got[0] == (42, loop_thread)
    assert isinstance(got[1], KeyError)


def test_call_in_main_on_the_context_thread_is_refused(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    with pytest.raises(TaskStateError, match="context thread itself"):
        task.call_in_main(print)
    task.complete()


def test_final_progress_precedes_func_under_wait_thread(ctx: qiotask.MainContext) -> None:
    """With the loop not running (wait_thread), the last report is still
    delivered, and before func."""
    order: list[Any] = []

    def worker(task: Task[Any], opaque: Any) -> None:
        task.report_progress(1)
        task.report_progress(2)

    task = Task(None, lambda s, e, o: order.append("func"))
    task.connect_progress(lambda t, done, total, message: order.append(("progress", done)))
    task.run_in_thread(worker)
    task.wait_thread()
    assert order[-2:] == [("progress", 2), "func"], order


def test_wait_thread_serves_a_call_in_main_made_before_it(ctx: qiotask.MainContext) -> None:
    """A worker already blocked in call_in_main when the loop thread enters
    wait_thread() is served (else both would wait for ever)."""
    task: Task[str] = Task(None)
    task.run_in_thread(lambda t, o: t.call_in_main(lambda: "served"))
    wait_for(lambda: bool(task._ctl.main_calls), what="the worker to be blocked in call_in_main")
    done = threading.Event()

    def unblock_if_deadlocked() -> None:
        # Lets the test fail instead of hanging if wait_thread misses it.
        if not done.wait(5):
            for call in list(task._ctl.main_calls or ()):
                call._dispatch()

    watchdog = threading.Thread(target=unblock_if_deadlocked, name="watchdog")
    watchdog.start()
    start = time.monotonic()
    task.wait_thread()
    done.set()
    watchdog.join(5)
    assert time.monotonic() - start < 4, "wait_thread did not serve the pending call_in_main"
    assert task.get_result() == "served"


def test_call_in_main_while_the_loop_waits_in_wait_thread(ctx: qiotask.MainContext) -> None:
    served_on: list[str] = []

    def worker(task: Task[Any], opaque: Any) -> str:
        value: str = task.call_in_main(lambda: served_on.append(threading.current_thread().name) or "ok")
        return value

    task = Task(None)
    task.run_in_thread(worker)
    task.wait_thread()  # the loop does not run: wait_thread serves the call
    assert served_on == [threading.current_thread().name]
    assert task.get_result() == "ok"


def test_call_in_main_after_the_loop_is_gone() -> None:
    context = qiotask.MainContext()
    errors: list[BaseException] = []
    started = threading.Event()
    go = threading.Event()

    def worker(task: Task[Any], opaque: Any) -> None:
        started.set()
        go.wait(5)
        try:
            task.call_in_main(print, "never")
        except ContextClosedError as exc:
            errors.append(exc)

    task = Task(None, context=context)
    task.run_in_thread(worker)
    assert started.wait(5)
    context.close()
    go.set()
    assert task.wait(10)
    assert len(errors) == 1
    assert isinstance(task.propagate_error(), ContextClosedError)


# -- executors --------------------------------------------------------------------------


def test_run_in_executor_with_a_process_pool(runner: LoopRunner) -> None:
    seen: list[Any] = []
    with concurrent.futures.ProcessPoolExecutor(1) as executor:
        task = Task(None, lambda s, e, o: seen.append((e, threading.current_thread().name)))
        task.add_done_callback(runner.quit)
        task.run_in_executor(executor, os.getpid)
        runner.run()
        failing = Task(None, lambda s, e, o: seen.append((e, threading.current_thread().name)))
        failing.add_done_callback(runner.quit)
        failing.run_in_executor(executor, int, "not a number")
        runner.run()
    assert task.get_result() != os.getpid()  # another process ran it
    assert seen[0] == (None, threading.current_thread().name)
    assert isinstance(seen[1][0], ValueError) and seen[1][1] == threading.current_thread().name


def test_cancel_maps_to_the_futures_cancel(runner: LoopRunner) -> None:
    release = threading.Event()
    ran: list[int] = []
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        executor.submit(release.wait, 10)  # keeps the only thread busy
        task = Task(None)
        task.add_done_callback(runner.quit)
        task.run_in_executor(executor, ran.append, 1)
        assert task.cancel()
        runner.run()
        release.set()
    assert ran == []  # it never ran
    assert isinstance(task.propagate_error(), TaskCancelled)


def test_run_in_executor_bad_input(ctx: qiotask.MainContext) -> None:
    task = Task(None)
    with pytest.raises(TypeError, match="submit"):
        task.run_in_executor(object(), print)  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        with pytest.raises(TypeError, match="fn must be callable"):
            task.run_in_executor(executor, 3)  # type: ignore[arg-type]
        task.run_in_executor(executor, int, "5")
        with pytest.raises(TaskStateError):
            task.run_in_executor(executor, int, "6")
        task.wait_thread()
    assert task.get_result() == 5


def test_run_in_executor_refuses_what_is_no_executor_or_gives_no_future(ctx: qiotask.MainContext) -> None:
    class NoFuture(concurrent.futures.Executor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            return None  # a broken executor: nothing says when the call ends

    task: Task[Any] = Task(None)
    with pytest.raises(TypeError, match=r"^run_in_executor: NoFuture.submit\(\) returned NoneType, not a future"):
        task.run_in_executor(NoFuture(), print)
    with pytest.raises(TypeError, match="an executor, not the class ThreadPoolExecutor"):
        task.run_in_executor(concurrent.futures.ThreadPoolExecutor, print)  # type: ignore[arg-type]
    assert task.state is qiotask.TaskState.PENDING  # not stuck running: it can still be completed
    task.complete()
    assert task.done()


def test_a_cancel_hook_added_to_a_finished_task_is_not_kept(ctx: qiotask.MainContext) -> None:
    # Never called (the task completed uncancelled), so not kept: it would
    # hold what it refers to (run_in_executor's hook: the future and its
    # result) for as long as the task lives.
    import weakref

    class Held:
        pass

    task: Task[Any] = Task(None)
    task.complete()
    held = Held()
    gone = weakref.ref(held)
    task.on_cancel(lambda t, held=held: None)
    del held
    assert gone() is None


DASK_SCRIPT = """
import os, threading
import distributed
import qiotask

def main():
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as client:
        loop = qiotask.MainLoop()
        seen = []

        def func(source, err, opaque):
            seen.append((err, threading.current_thread() is threading.main_thread()))
            loop.quit()

        task = qiotask.Task(None, func)
        task.run_in_executor(client.get_executor(), os.getpid)
        loop.run()
        (err, on_main), = seen
        assert err is None and on_main, seen
        assert task.get_result() != os.getpid()
        print("dask worker pid differs; completion on the main thread")

if __name__ == "__main__":
    main()
"""


def test_run_in_executor_on_a_dask_cluster(tmp_path: Any) -> None:
    """A real distributed.LocalCluster on loopback, in a child process (Dask
    keeps threads of its own for the life of a process, and its workers are
    spawned, which wants a script with a __main__ guard)."""
    import subprocess
    import sys

    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        from .backends import unavailable

        unavailable(f"Dask cannot be loaded here: {exc}")
    script = tmp_path / "dask_task.py"
    script.write_text(DASK_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "completion on the main thread" in out.stdout
