"""Leaving cleanly: the wait and the report at interpreter exit, and
``qiotask.shutdown(timeout)`` (issue 13).

Exits run in child processes, with every warning an error; the children
may sleep (that is the work being cut off), the tests never do: each child
is timed from the outside, against a bound far above what it should take,
and far below what a hang would take.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import qiotask
from qiotask import MainContext, Task
from qiotask._exit import DEFAULT_EXIT_TIMEOUT, EXIT_TIMEOUT_VARIABLE, exit_timeout, set_exit_timeout
from qiotask.testing import LoopRunner

from .conftest import STRICT_WARNINGS, MakePool

pytestmark = pytest.mark.timeout(90)

#: What a loaded CI machine may add to a child's run (start-up included).
MARGIN = 8.0

#: The line of the report that opens it.
REPORT = "qiotask: at exit, waited"


CHILDKIT = """\
import os
import threading


def say(line):
    print(line + "\\n", end="", flush=True)


def watchdog(seconds):
    timer = threading.Timer(seconds, lambda: os._exit(3))
    timer.daemon = True
    timer.start()


# Task 'running', whose worker blocks for ever holding a Limiter(1), and
# task 'queued' behind it; returns once the first one runs.
def block_two(queued_destroy=None):
    import qiotask

    running = threading.Event()

    def blocked(task, opaque):
        running.set()
        threading.Event().wait()  # for ever

    limiter = qiotask.Limiter(1)
    qiotask.Task(None, name="running").run_in_thread(blocked, limiter=limiter)
    qiotask.Task(None, name="queued", destroy=queued_destroy).run_in_thread(blocked, limiter=limiter)
    running.wait()


def fork():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process
        return os.fork()
"""


def run_child(tmp_path: Path, body: str, exit_timeout: str | None) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``body`` as a script (so that its source lines can be shown) in a
    fresh interpreter (warnings are errors) with QIOTASK_EXIT_TIMEOUT set to
    ``exit_timeout`` (None: unset); return the finished process and how
    long it took.  The script may ``from childkit import ...``:
    ``say(line)`` prints a line in one write, for notifiers that run on
    several pool threads at once (print()'s separate writes of a line and
    its end interleave between threads); ``watchdog(seconds)`` ends the
    child with status 3 if it is still running then (a hang);
    ``block_two()`` leaves a worker running for ever and one queued behind
    it; ``fork()`` forks without the warning about a threaded process."""
    (tmp_path / "childkit.py").write_text(CHILDKIT)
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ)
    env.pop(EXIT_TIMEOUT_VARIABLE, None)
    if exit_timeout is not None:
        env[EXIT_TIMEOUT_VARIABLE] = exit_timeout
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-X", "dev", *STRICT_WARNINGS, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return done, time.monotonic() - started


BLOCKED_WORKERS = """
    import threading, time
    import qiotask
    from qiotask import Task
    from childkit import say

    started = threading.Barrier(5)

    def sleeper(task, opaque):
        started.wait()
        time.sleep(30)  # the line the report must show

    for i in range(4):
        Task(None, name=f"sleeper-{i}").run_in_thread(sleeper, i, lambda o: say(f"destroyed sleeper {o}"))
    quick = Task(None, name="quick", destroy=lambda o: say("destroyed quick"))
    quick.run_in_thread(lambda task, opaque: "done", "q", lambda o: say("destroyed quick's worker"))
    started.wait()  # the four sleep: they are cut off, not queued
    print("exiting", flush=True)
"""


def test_exit_with_blocked_workers_waits_the_exit_timeout_then_reports_them_once(tmp_path: Path) -> None:
    done, elapsed = run_child(tmp_path, BLOCKED_WORKERS, "1.5")
    assert done.returncode == 0, done.stderr
    assert 1.4 <= elapsed < 1.5 + MARGIN  # it waited, and no longer than the exit timeout
    stderr = done.stderr
    assert stderr.count(REPORT) == 1, stderr
    report = stderr[stderr.index(REPORT) :]
    assert "the exit timeout is 1.5 s" in report
    for i in range(4):
        # Named, with state, age and thread, and the line its worker is blocked on.
        line = next(line for line in report.splitlines() if f"'sleeper-{i}'" in line)
        assert "(running): its worker runs, for " in line and "on thread 'qiotask-worker-" in line
    assert report.count("in sleeper: time.sleep(30)  # the line the report must show") == 4
    # The quick task's worker returned during the wait; its loop never ran,
    # so it finished with ContextClosedError: named in the same report, and
    # its destroy notifiers ran.  The sleepers' did not.
    assert "1 task finished with ContextClosedError" in report and "'quick'" in report
    assert "its context 'default' is gone; its loop was never run" in report
    assert done.stdout.splitlines() == ["exiting", "destroyed quick's worker", "destroyed quick"]
    # One report, not a line per task.
    assert "finished with ContextClosedError: its context" not in stderr
    assert "nobody retrieved" not in stderr


def test_an_exit_timeout_of_zero_does_not_wait(tmp_path: Path) -> None:
    done, elapsed = run_child(tmp_path, BLOCKED_WORKERS, "0")
    assert done.returncode == 0, done.stderr
    assert elapsed < MARGIN  # far below the 30 s sleep
    assert done.stderr.count(REPORT) == 1
    assert "waited 0.0 s for workers (the exit timeout is 0 s" in done.stderr
    assert done.stderr.count("in sleeper: time.sleep(30)") == 4


def test_nothing_in_flight_exits_at_once_and_says_nothing(tmp_path: Path) -> None:
    # Work done and delivered, idle pool threads left: with an exit timeout
    # of 30 s, a wait would show.
    done, elapsed = run_child(
        tmp_path,
        """
        import qiotask
        from qiotask import MainLoop, Task

        loop = MainLoop()
        task = Task(None, lambda source, err, opaque: print("func", err), name="done")
        task.run_in_thread(lambda task, opaque: 1, None, lambda o: print("destroyed"))
        task.add_done_callback(lambda t: loop.quit())
        loop.run()
        """,
        "30",
    )
    assert done.returncode == 0, done.stderr
    assert elapsed < MARGIN
    assert done.stdout.splitlines() == ["func None", "destroyed"]
    assert done.stderr == ""


def test_workers_that_return_within_the_exit_timeout_end_the_wait(tmp_path: Path) -> None:
    # The workers return long before the 30 s exit timeout: the exit takes
    # about as long as they do.  Nothing is cut off; their completions
    # cannot run (the default loop never ran), their destroy notifiers do.
    done, elapsed = run_child(
        tmp_path,
        """
        import time
        from qiotask import Task
        from childkit import say

        def short(task, opaque):
            time.sleep(0.3)

        for i in range(3):
            Task(None, name=f"short-{i}").run_in_thread(short, i, lambda o: say(f"destroyed {o}"))
        """,
        "30",
    )
    assert done.returncode == 0, done.stderr
    assert elapsed < MARGIN  # not the 30 s of the exit timeout
    assert sorted(done.stdout.splitlines()) == ["destroyed 0", "destroyed 1", "destroyed 2"]
    assert done.stderr.count(REPORT) == 1
    assert "still in flight" not in done.stderr
    assert "3 tasks finished with ContextClosedError" in done.stderr


def test_workers_queued_at_exit_still_fan_out_while_it_waits(tmp_path: Path) -> None:
    # Eight one-second workers submitted on the last line, to a pool of eight
    # threads that never grows: the exit wait keeps the pool as it is, so
    # they run side by side (about 1 s), not one after another (8 s).
    done, elapsed = run_child(
        tmp_path,
        """
        import time
        import qiotask
        from qiotask import Task
        from childkit import say

        pool = qiotask.WorkerPool(8, grow_after=None, name="eight")
        for i in range(8):
            Task(None, name=f"second-{i}").run_in_thread(
                lambda task, opaque: time.sleep(1), i, lambda o: say(f"destroyed {o}"), pool=pool
            )
        """,
        "30",
    )
    assert done.returncode == 0, done.stderr
    assert elapsed < 1 + 5.0
    assert sorted(done.stdout.splitlines()) == [f"destroyed {i}" for i in range(8)]
    assert "cancelled" not in done.stderr and "still in flight" not in done.stderr


def test_queued_workers_are_cancelled_at_exit_and_never_start(tmp_path: Path) -> None:
    done, elapsed = run_child(
        tmp_path,
        """
        import threading
        import qiotask
        from qiotask import Task

        pool = qiotask.WorkerPool(1, grow_after=None, name="one")
        running = threading.Event()

        def blocked(task, opaque):
            running.set()
            threading.Event().wait()  # for ever

        def never(task, opaque):
            print("the queued worker ran", flush=True)

        Task(None, name="blocked").run_in_thread(blocked, None, lambda o: print("destroyed blocked"), pool=pool)
        queued = Task(None, name="queued", destroy=lambda o: print("destroyed queued", flush=True))
        queued.run_in_thread(never, None, lambda o: print("destroyed queued's worker", flush=True), pool=pool)
        running.wait()
        """,
        "0.5",
    )
    assert done.returncode == 0, done.stderr
    assert elapsed < 0.5 + MARGIN
    assert done.stdout.splitlines() == ["destroyed queued's worker", "destroyed queued"]
    report = done.stderr[done.stderr.index(REPORT) :]
    assert "1 task still in flight, cut off: its func and destroy notifiers never run:\n  'blocked' (running)" in report
    assert "called from " in report and "in blocked: threading.Event().wait()  # for ever" in report
    assert "1 task cancelled before a worker started (destroy notifiers ran):\n  'queued'" in report


def test_the_report_is_made_when_the_process_holds_a_dead_weak_proxy(tmp_path: Path) -> None:
    # The hook finds the tasks among every object; one whose __class__
    # raises (a dead weakref.proxy) must not cost the report.
    done, elapsed = run_child(
        tmp_path,
        """
        import threading, weakref
        import qiotask
        from qiotask import Task

        class Target:
            pass

        target = Target()
        dead = weakref.proxy(target)
        del target
        running = threading.Event()

        def blocked(task, opaque):
            running.set()
            threading.Event().wait()  # for ever

        Task(None, name="blocked").run_in_thread(blocked)
        running.wait()
        """,
        "0.2",
    )
    assert done.returncode == 0, done.stderr
    assert elapsed < 0.2 + MARGIN
    assert "Exception ignored" not in done.stderr, done.stderr
    assert done.stderr.count(REPORT) == 1, done.stderr
    assert "'blocked' (running)" in done.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is Unix's")
def test_a_forked_child_exits_at_once_and_leaves_the_parents_tasks_alone(tmp_path: Path) -> None:
    # The tasks the child inherited are the parent's: their workers are not
    # in the child (nothing to wait for), their destroy notifiers are the
    # parent's to run (not run twice), and the child has nothing to report.
    done, _ = run_child(
        tmp_path,
        """
        import os, sys, time
        from childkit import block_two, fork

        block_two(queued_destroy=lambda o: print(os.getpid(), "destroyed queued", flush=True))
        pid = fork()
        if pid == 0:
            sys.exit(0)  # the child: atexit hooks run
        started = time.monotonic()
        os.waitpid(pid, 0)
        print(f"the child took {time.monotonic() - started:.1f} s", flush=True)
        os._exit(0)  # the parent's own exit is not what this test is about
        """,
        "5",
    )
    assert done.returncode == 0, done.stderr
    assert REPORT not in done.stderr, done.stderr
    assert "destroyed" not in done.stdout
    took = float(done.stdout.split("the child took ")[1].split(" s")[0])
    assert took < 2.5  # not the exit timeout of 5 s


def test_a_bad_exit_timeout_variable_is_named_and_the_default_used(tmp_path: Path) -> None:
    done, elapsed = run_child(tmp_path, "import qiotask", "soon")
    assert done.returncode == 0
    assert elapsed < MARGIN
    assert f"{EXIT_TIMEOUT_VARIABLE}='soon' is not a number of seconds" in done.stderr
    assert f"waiting the default {DEFAULT_EXIT_TIMEOUT:g} s" in done.stderr


# -- the setting ---------------------------------------------------------------------


def test_set_exit_timeout_validates_and_returns_the_previous_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EXIT_TIMEOUT_VARIABLE, raising=False)
    previous = set_exit_timeout(None)
    try:
        assert exit_timeout() == DEFAULT_EXIT_TIMEOUT
        monkeypatch.setenv(EXIT_TIMEOUT_VARIABLE, "0.25")
        assert exit_timeout() == 0.25
        assert set_exit_timeout(0) is None
        assert exit_timeout() == 0.0  # the call wins over the environment
        assert set_exit_timeout(math.inf) == 0.0
        assert exit_timeout() == math.inf
        with pytest.raises(TypeError, match="set_exit_timeout: seconds must be a number of seconds or None, not str"):
            set_exit_timeout("3")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="must not be negative, got -1"):
            set_exit_timeout(-1)
        with pytest.raises(ValueError, match="not NaN"):
            set_exit_timeout(math.nan)
        assert exit_timeout() == math.inf  # a refused value changes nothing
        set_exit_timeout(None)
        monkeypatch.setenv(EXIT_TIMEOUT_VARIABLE, "-2")
        with pytest.raises(ValueError, match=f"{EXIT_TIMEOUT_VARIABLE}='-2' is not a number of seconds"):
            exit_timeout()
    finally:
        set_exit_timeout(previous)


# -- shutdown(timeout) -----------------------------------------------------------------


def test_shutdown_returns_on_time_while_workers_block_and_reports_them(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(2)
    context = MainContext(name="shutdown-test")
    release = threading.Event()
    destroyed: list[str] = []

    def blocked(task: Task[None], opaque: str) -> None:
        release.wait(30)

    tasks: list[Task[None]] = []
    for name in ("first", "second"):
        task: Task[None] = Task(None, name=name, context=context)
        task.run_in_thread(blocked, name, destroyed.append, pool=pool)
        tasks.append(task)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="qiotask"):
            assert qiotask.shutdown(timeout=0.3) is False
        assert time.monotonic() - started < 0.3 + 2.0
        reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("qiotask.shutdown()")]
        assert len(reports) == 1
        for name in ("first", "second"):
            assert f"'{name}' (" in reports[0]
        assert "in blocked: release.wait(30)" in reports[0]
        assert destroyed == []  # a running worker owns its opaque: nothing of it is settled
    finally:
        release.set()
        LoopRunner(context).run_until_done(*tasks)
        context.close()  # type: ignore[attr-defined]
    assert sorted(destroyed) == ["first", "second"]


@pytest.mark.parametrize("timeout", [0.3, None])
def test_shutdown_never_waits_on_a_loop_that_is_not_running(
    timeout: float | None, caplog: pytest.LogCaptureFixture
) -> None:
    # The completion is queued on a context of another thread, whose loop
    # does not run: nobody will run it while shutdown() waits.
    made: list[MainContext] = []
    maker = threading.Thread(target=lambda: made.append(MainContext(name="not running")), name="maker")
    maker.start()
    maker.join()
    (context,) = made
    task: Task[int] = Task(None, context=context, name="stranded")
    task.complete(1)  # from this thread, not the context's: handed over, queued
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="qiotask"):
            assert qiotask.shutdown(timeout) is False
        assert time.monotonic() - started < 2.0
        report = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("qiotask.shutdown()"))
        assert "'stranded' (completing): its completion waits for its context's loop, context 'not running'" in report
        assert task.state is qiotask.TaskState.COMPLETING  # left queued, not failed
    finally:
        context.close()  # type: ignore[attr-defined]
    assert isinstance(task.exception(), qiotask.ContextClosedError)


def test_shutdown_on_a_loops_own_thread_runs_what_is_queued_for_it() -> None:
    # The loop is not running, but this is its thread: shutdown() runs the
    # completions queued for it here, as the loop would.
    context = MainContext(name="mine")
    ran: list[str] = []
    task: Task[str] = Task(
        None, lambda source, err, opaque: ran.append(threading.current_thread().name), context=context
    )
    task.run_in_thread(lambda t, o: "ok")
    try:
        assert qiotask.shutdown(timeout=5) is True
        assert ran == [threading.current_thread().name]
        assert task.result() == "ok"
    finally:
        context.close()  # type: ignore[attr-defined]


def test_shutdown_on_a_loops_own_thread_answers_a_worker_that_calls_into_it() -> None:
    # The worker waits in call_in_main() for this thread's loop, which is
    # this thread, blocked in shutdown(): shutdown() must serve it, not wait
    # for the worker (with no timeout it would wait for ever).
    context = MainContext(name="mine")
    task: Task[int] = Task(None, context=context, name="asks")
    task.run_in_thread(lambda t, o: t.call_in_main(lambda: 42))
    try:
        started = time.monotonic()
        assert qiotask.shutdown(timeout=5) is True
        assert time.monotonic() - started < 2.0
        assert task.result() == 42
    finally:
        context.close()  # type: ignore[attr-defined]


def test_shutdown_waits_for_completions_of_a_loop_another_thread_runs() -> None:
    context = MainContext(name="elsewhere")
    loop = qiotask.MainLoop(context)
    running = threading.Event()
    context.call_soon(running.set)
    thread = threading.Thread(target=loop.run, name="loop-thread")
    thread.start()
    delivered: list[str] = []
    try:
        assert running.wait(5)
        task: Task[str] = Task(
            None, lambda source, err, opaque: delivered.append(threading.current_thread().name), context=context
        )
        # A busy loop: the completion queues behind this, so a shutdown()
        # that did not wait for it would return False.
        context.call_soon(time.sleep, 0.3)
        task.run_in_thread(lambda t, o: "ok")
        assert qiotask.shutdown(timeout=None) is True  # the worker and then the completion, on the loop's thread
        assert delivered == ["loop-thread"]
    finally:
        loop.quit()
        thread.join(5)
        context.close()  # type: ignore[attr-defined]
    assert not thread.is_alive()


def test_shutdown_with_nothing_in_flight_returns_true_at_once(caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="qiotask"):
        assert qiotask.shutdown(timeout=None) is True
    assert time.monotonic() - started < 2.0
    assert caplog.records == []


def test_shutdown_called_by_two_workers_at_once_raises_in_both_and_never_hangs(tmp_path: Path) -> None:
    # Each waited for the pool's threads but its own, so for the other: for
    # ever.  A watchdog in the child ends a hang (exit status 3).
    done, _ = run_child(
        tmp_path,
        """
        import os, threading
        import qiotask
        from qiotask import Task
        from childkit import watchdog

        watchdog(10)
        both = threading.Barrier(2)

        def worker(task, opaque):
            both.wait()
            try:
                qiotask.shutdown()
            except RuntimeError as exc:
                return str(exc)
            return "returned"

        tasks = [Task(None, name=f"caller-{i}") for i in range(2)]
        for task in tasks:
            task.run_in_thread(worker)
        for task in tasks:
            task.wait_thread()
            print(task.result(), flush=True)
        os._exit(0)
        """,
        None,
    )
    assert done.returncode == 0, done.stderr  # 3: it hung
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    for line in lines:
        assert line.startswith("qiotask.shutdown() called on 'qiotask-worker-"), line
        assert "a thread of pool 'qiotask': it waits for every pool's workers" in line


def test_shutdown_with_no_timeout_inside_asyncio_does_not_hang_a_worker_in_from_thread_run(tmp_path: Path) -> None:
    # The worker waits for the loop (from_thread.run), the loop's thread
    # waited in shutdown() for the worker: for ever.  Now it is refused,
    # and the loop goes on to answer the worker.
    done, _ = run_child(
        tmp_path,
        """
        import asyncio, os, threading
        import qiotask
        from childkit import watchdog

        watchdog(10)

        async def on_loop():
            await asyncio.sleep(0)
            return "answered"

        async def main():
            asking = threading.Event()

            def worker():
                asking.wait()
                return qiotask.from_thread.run(on_loop)

            waiting = asyncio.ensure_future(qiotask.to_thread(worker))
            await asyncio.sleep(0)  # the worker is submitted
            asking.set()
            try:
                qiotask.shutdown()
            except RuntimeError as exc:
                print(exc, flush=True)
            print(await waiting, flush=True)
            print(qiotask.shutdown(timeout=5), flush=True)

        asyncio.run(main())
        """,
        None,
    )
    assert done.returncode == 0, done.stderr  # 3: it hung
    assert done.stdout.splitlines() == [
        "qiotask.shutdown() with no timeout inside a running asyncio loop or trio run: it would block that loop "
        "for as long as workers run, and a worker waiting for it (qiotask.from_thread.run()) for ever; pass a "
        "timeout, or call it once the loop has returned",
        "answered",
        "True",
    ], done.stderr


@pytest.mark.parametrize("framework", ["asyncio", "trio", "MainLoop"])
def test_shutdown_with_no_timeout_is_refused_inside_a_running_loop_and_changes_nothing(framework: str) -> None:
    # (A MainLoop runs a MainContext(), whose loop is asyncio's.)
    results: list[object] = []

    def check() -> None:
        pool = qiotask.WorkerPool(1, name="kept")
        for timeout in (None, math.inf):
            with pytest.raises(RuntimeError, match=r"^qiotask.shutdown\(\) with no timeout inside a running asyncio"):
                qiotask.shutdown(timeout)
        results.append(pool._shutdown)  # refused before anything was shut down
        results.append(qiotask.shutdown(timeout=5))  # a bounded stop of the loop is allowed
        results.append(pool._shutdown)

    async def main() -> None:
        check()

    if framework == "asyncio":
        import asyncio

        asyncio.run(main())
    elif framework == "trio":
        trio = pytest.importorskip("trio")
        trio.run(main)
    else:
        context = MainContext(name="refuses")
        loop = qiotask.MainLoop(context)

        def on_loop() -> None:
            try:
                check()
            finally:
                loop.quit()

        context.call_soon(on_loop)
        context.timeout_add(10_000, loop.quit)  # a guard (ms): never hang
        try:
            loop.run()
        finally:
            context.close()  # type: ignore[attr-defined]
    assert results == [False, True, True]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is Unix's")
def test_in_a_forked_child_tasks_and_shutdown_leave_the_parents_tasks_out(tmp_path: Path) -> None:
    # Before, the child listed the parent's tasks, and shutdown() counted
    # them pending: it returned False, with a report of the parent's tasks.
    done, _ = run_child(
        tmp_path,
        """
        import logging, os, sys
        import qiotask
        from qiotask import Task
        from childkit import block_two, fork, watchdog

        watchdog(20)
        parents = Task(None, name="pending")  # nothing completes it
        block_two()
        print("parent lists", sorted(info.name for info in qiotask.tasks()), flush=True)
        pid = fork()
        if pid == 0:
            try:
                logging.basicConfig(stream=sys.stdout, format="logged: %(message)s")
                own = Task(None, name="own")
                print("child lists", sorted(info.name for info in qiotask.tasks()), flush=True)
                own.complete(1)
                print("child shutdown", qiotask.shutdown(), flush=True)  # no timeout: nothing to wait for
                print("child lists", sorted(info.name for info in qiotask.tasks()), flush=True)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status), flush=True)
        os._exit(0)
        """,
        None,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "parent lists ['pending', 'queued', 'running']",
        "child lists ['own']",
        "child shutdown True",
        "child lists []",
        "child exit 0",
    ], done.stdout + done.stderr


ABANDONED_WORKER = """
    import asyncio, threading, time
    import qiotask
    from qiotask import Task
    from childkit import say

    release = threading.Event()
    started = threading.Event()

    def worker(task, opaque):
        started.set()
        release.wait(30)  # the worker a cancel abandons, released DELAY s after the cancel
        say("worker returned")
        return "late"

    async def main():
        task = Task(None, name="abandoned")
        task.run_in_thread(worker, "w", lambda o: say("destroyed the abandoned worker's opaque"),
                           abandon_on_cancel=True)
        await asyncio.get_running_loop().run_in_executor(None, started.wait)
        task.cancel()  # completes the task now; the worker runs on
        try:
            await task
        except qiotask.TaskCancelled:
            say("cancelled")
        timer = threading.Timer(DELAY, release.set)
        timer.daemon = True  # nothing but the exit's own wait keeps the interpreter for the worker
        timer.start()

    asyncio.run(main())
    print("exiting", flush=True)
"""


@pytest.mark.parametrize("returns", ["during the wait", "after the exit timeout"])
def test_exit_waits_for_a_worker_a_cancel_abandoned_and_runs_its_destroy(tmp_path: Path, returns: str) -> None:
    # Its task finished at the cancel, but its worker still runs and owns
    # its opaque: the exit waits for it as for any worker (its destroy then
    # runs), or names it in the report as cut off.
    delay, limit = ("0.3", "3") if returns == "during the wait" else ("20", "1")
    done, elapsed = run_child(tmp_path, ABANDONED_WORKER.replace("DELAY", delay), limit)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    if returns == "during the wait":
        assert out == ["cancelled", "exiting", "worker returned", "destroyed the abandoned worker's opaque"], done
        assert REPORT not in done.stderr, done.stderr
        assert elapsed < 3 + MARGIN
    else:
        assert out == ["cancelled", "exiting"], done
        report = done.stderr[done.stderr.index(REPORT) :]
        assert "1 worker abandoned by a cancel still runs, cut off: its destroy notifier never runs:" in report
        assert "'abandoned' on thread 'qiotask-worker-" in report
        assert 0.9 <= elapsed < 1 + MARGIN
