"""The concurrency protocol (DESIGN §6), one forced interleaving per race.

Each test pauses a thread at a named protocol point (``qiotask._points``)
while another thread makes the move that races it, so the interleaving is
the one named, every run.  What must hold whatever the order: ``func`` and
every destroy notifier run exactly once, a cancelled task never keeps a late
result, and a task's state never goes backwards.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

import pytest

import qiotask
from qiotask import ContextClosedError, Task, TaskCancelled, TaskState, TaskStateError, TaskTimeout

from .conftest import TIMEOUT, Log, LoopRunner, MakePool, join, start_thread, wait_for
from .interleave import interleaving

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pool(make_pool: MakePool) -> qiotask.WorkerPool:
    """A pool of one thread: the order of the jobs is the order submitted."""
    return make_pool(1)


@pytest.fixture
def log() -> Log:
    return Log()


def settle(runner: LoopRunner, pool: qiotask.WorkerPool) -> None:
    """Wait until the pool's threads are done, then run what they posted."""
    wait_for(lambda: pool.statistics()["busy"] == 0, what="the pool's workers to return")
    runner.context.call_soon(runner.quit)
    runner.run()


class Result:
    """A worker's result that a weakref can watch."""


# -- a running worker against a cancel ----------------------------------------------


def test_a_cancel_as_an_abandoned_worker_returns_drops_its_result_and_runs_its_destroy_once(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    # Item 1 of issue 9: the worker has returned and is about to report;
    # the cancel completes the task first.  Its late result must be dropped
    # (the result set before stays, destroyed once on the context thread)
    # and its own destroy must still run, once.
    late = Result()
    late_ref = weakref.ref(late)
    task: Task[Any] = Task(None, log.func, "task-opaque", log.destroyer("task destroy"))
    task.set_result("early", log.destroyer("result destroy"))

    def worker(task: Task[Any], opaque: Any) -> Result:
        nonlocal late
        made, late = late, None  # the worker's frame is the only holder left
        return made  # type: ignore[return-value]

    with interleaving() as il:
        returned = il.pause("task.worker-returned", task)
        task.run_in_thread(worker, "worker-opaque", log.destroyer("worker destroy"), pool=pool, abandon_on_cancel=True)
        returned.wait_reached()
        assert task.cancel() is True  # on the context thread: delivered now
        returned.release()
        settle(runner, pool)

    assert isinstance(log.value("func"), TaskCancelled)
    assert log.names().count("worker destroy") == 1
    assert log.names().count("task destroy") == 1
    assert log.names().count("result destroy") == 1
    assert log.value("result destroy") == "early"
    assert log.thread("result destroy") == threading.current_thread().name
    assert task.get_result() == "early"  # the late result was dropped
    assert late_ref() is None  # ... and released
    assert task.state is TaskState.FINISHED


def test_a_worker_cancelled_as_it_starts_never_sets_the_task_back_to_running(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    # Item 2 of issue 9: the worker was let start; an abandoning cancel on
    # the context thread completes and finishes the task before the worker
    # thread goes on.  The task must stay FINISHED.
    task: Task[Any] = Task(object(), log.func)
    with interleaving() as il:
        started = il.pause("task.started", task)
        task.run_in_thread(lambda t, o: log.add("worker"), None, log.destroyer("worker destroy"), pool=pool,
                           abandon_on_cancel=True)  # fmt: skip
        started.wait_reached()
        assert task.cancel() is True
        assert task.state is TaskState.FINISHED
        started.release()
        settle(runner, pool)

    assert task.state is TaskState.FINISHED
    assert task.done()
    assert log.names().count("func") == 1
    assert log.names().count("worker destroy") == 1
    with pytest.raises(TaskStateError):
        task.get_source()
    waited: list[bool] = []
    join(start_thread(lambda: waited.append(task.wait(TIMEOUT)), "waiter"))
    assert waited == [True]


def test_a_cancel_before_the_start_step_keeps_the_worker_from_running(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    task: Task[Any] = Task(None, log.func)
    with interleaving() as il:
        start = il.pause("task.start", task)
        task.run_in_thread(lambda t, o: log.add("worker"), None, log.destroyer("worker destroy"), pool=pool)
        start.wait_reached()
        assert task.cancel() is True  # the task was still queued: completed now
        start.release()
        settle(runner, pool)
    assert "worker" not in log.names()
    assert log.names() == ["func", "worker destroy"]
    assert isinstance(log.value("func"), TaskCancelled)


def test_a_cancel_of_a_running_worker_that_does_not_abandon_waits_for_it(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    task: Task[Any] = Task(None, log.func)
    with interleaving() as il:
        returned = il.pause("task.worker-returned", task)
        task.run_in_thread(lambda t, o: "late", None, log.destroyer("worker destroy"), pool=pool)
        returned.wait_reached()
        assert task.cancel() is True
        assert task.state is TaskState.RUNNING  # cancel wins, but only when the worker reports
        returned.release()
        runner.run_until(task.done)
        settle(runner, pool)
    assert isinstance(log.value("func"), TaskCancelled)
    assert log.names() == ["func", "worker destroy"]


def test_a_timeout_says_running_when_the_worker_started_before_it_was_decided(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    # The deadline fires while the worker is queued, but the worker starts
    # before the timeout's cancel is decided: it timed out while running.
    hold = threading.Event()
    pool.submit(lambda: hold.wait(TIMEOUT), lambda result, exc: None)
    running = threading.Event()
    finish = threading.Event()
    task: Task[Any] = Task(None, log.func)

    def worker(task: Task[Any], opaque: Any) -> None:
        running.set()
        finish.wait(TIMEOUT)

    with interleaving() as il:
        timing_out = il.pause("task.timeout", task)
        task.run_in_thread(worker, pool=pool, timeout=0.001)
        timing_out.wait_reached()
        hold.set()  # the pool's thread is free: the worker starts
        assert running.wait(TIMEOUT)
        timing_out.release()
        wait_for(task.cancelled, what="the timeout's cancel")
        finish.set()
        runner.run_until(task.done)
    err = log.value("func")
    assert isinstance(err, TaskTimeout)
    assert "while running" in str(err)


# -- waiting against completing ------------------------------------------------------


def test_wait_registered_before_the_finish_step_is_woken_by_it(ctx: qiotask.MainContext) -> None:
    task: Task[Any] = Task(None)
    waited: list[bool] = []
    waiters: list[threading.Thread] = []

    def start_waiter() -> None:
        # On this (the context) thread, inside the completion, just before
        # the finish step: a thread registers its wait and is let block.
        registered = il.pause("task.wait", task)
        waiters.append(start_thread(lambda: waited.append(task.wait(TIMEOUT)), "waiter"))
        registered.wait_reached()
        registered.release()

    with interleaving() as il:
        il.call("task.finish", start_waiter, task)
        task.complete()
        join(waiters[0])
    assert waited == [True]
    assert task.state is TaskState.FINISHED


def test_wait_on_a_finished_task_returns_at_once(ctx: qiotask.MainContext) -> None:
    task: Task[Any] = Task(None)
    task.complete()
    waited: list[bool] = []
    join(start_thread(lambda: waited.append(task.wait(0)), "waiter"))
    assert waited == [True]


def test_wait_thread_after_the_worker_reported_delivers_inline_once(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    task: Task[Any] = Task(None, log.func)
    with interleaving() as il:
        posting = il.pause("context.post", ctx)  # the worker, after its worker-returned step
        task.run_in_thread(lambda t, o: "value", pool=pool)
        posting.wait_reached()
        task.wait_thread()
        assert log.names() == ["func"]
        posting.release()
        settle(runner, pool)
    assert log.names() == ["func"]
    assert task.get_result() == "value"


def test_wait_thread_registered_before_the_worker_reports_is_woken(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    task: Task[Any] = Task(None, log.func)
    with interleaving() as il:
        returned = il.pause("task.worker-returned", task)
        task.run_in_thread(lambda t, o: "value", pool=pool)
        returned.wait_reached()
        # Runs on this (the context) thread once wait_thread has registered,
        # just before it blocks: only then may the worker report.
        il.call("task.wait-thread", returned.release, task)
        task.wait_thread()
        assert log.names() == ["func"]
        settle(runner, pool)
    assert log.names() == ["func"]


def test_call_in_main_published_before_wait_thread_is_served_by_it(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    task: Task[Any] = Task(None, log.func)

    def on_loop(x: int) -> int:
        log.add("on loop", x)
        return x * 2

    with interleaving() as il:
        posting = il.pause("context.post", ctx)  # the request is published, not posted yet
        task.run_in_thread(lambda t, o: t.call_in_main(on_loop, 21), pool=pool)
        posting.wait_reached()
        il.call("task.wait-thread", posting.release, task)
        task.wait_thread()
        settle(runner, pool)
    assert log.names() == ["on loop", "func"]
    assert log.thread("on loop") == threading.current_thread().name
    assert task.get_result() == 42


def test_call_in_main_published_after_wait_thread_registered_is_served_by_it(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    task: Task[Any] = Task(None, log.func)

    def on_loop(x: int) -> int:
        log.add("on loop", x)
        return x + 1

    with interleaving() as il:
        calling = il.pause("task.call-in-main", task)
        task.run_in_thread(lambda t, o: t.call_in_main(on_loop, 1), pool=pool)
        calling.wait_reached()
        il.call("task.wait-thread", calling.release, task)
        task.wait_thread()
        settle(runner, pool)
    assert log.names() == ["on loop", "func"]
    assert task.get_result() == 2


# -- a context's queue ----------------------------------------------------------------


def test_an_item_posted_while_the_dispatch_is_about_to_start_runs_in_that_batch(
    ctx: qiotask.MainContext, runner: LoopRunner
) -> None:
    log = Log()
    ctx.call_soon(log.add, "first")  # schedules the dispatch

    def late_poster() -> None:
        dispatching.wait_reached()
        ctx.call_soon(log.add, "second")  # a wake-up is on its way: none sent
        ctx.call_soon(runner.quit)
        dispatching.release()

    with interleaving() as il:
        dispatching = il.pause("context.dispatch", ctx)
        poster = start_thread(late_poster, "poster")
        runner.run()
        join(poster)
    assert log.names() == ["first", "second"]


def test_an_item_posted_as_its_wakeup_is_overtaken_runs_once(ctx: qiotask.MainContext, runner: LoopRunner) -> None:
    log = Log()
    with interleaving() as il:
        waking = il.pause("context.wakeup", ctx)
        poster = start_thread(lambda: ctx.call_soon(log.add, "item"), "poster")
        waking.wait_reached()
        ctx._dispatch()  # type: ignore[attr-defined]  # the loop takes the batch before the wake-up is sent
        assert log.names() == ["item"]
        waking.release()
        join(poster)
        ctx.call_soon(runner.quit)
        runner.run()
    assert log.names() == ["item"]


@pytest.fixture
def open_loop_context() -> Any:
    """The context of an asyncio loop that stays open after the context is
    closed (close() of an attached context does not close its loop)."""
    loop = asyncio.new_event_loop()
    context = qiotask.attach(loop)
    try:
        yield context
    finally:
        context.close()
        loop.run_until_complete(asyncio.sleep(0))  # what was posted after close must not run
        loop.close()


def test_a_post_after_close_fails_the_item_even_while_the_loop_lives(open_loop_context: Any) -> None:
    ctx = open_loop_context
    log = Log()
    task: Task[Any] = Task(None, log.func, None, log.destroyer("destroy"), context=ctx)
    ctx.close()
    join(start_thread(task.complete, "completer"))
    ctx.loop.run_until_complete(asyncio.sleep(0))
    assert log.names() == ["destroy"]  # func cannot run: the context is closed
    assert isinstance(task.exception(), ContextClosedError)


@pytest.mark.parametrize("point", ["context.post", "context.wakeup"])
def test_close_racing_a_post_fails_the_item_once(open_loop_context: Any, point: str) -> None:
    # Paused before its enqueue step, the post finds the context closed and
    # fails the item in its own thread; paused after it (before the
    # wake-up), the item is in the queue that close() takes and fails here.
    ctx = open_loop_context
    log = Log()
    task: Task[Any] = Task(None, log.func, None, log.destroyer("destroy"), context=ctx)
    with interleaving() as il:
        posting = il.pause(point, ctx)
        completer = start_thread(task.complete, "completer")
        posting.wait_reached()
        ctx.close()
        posting.release()
        join(completer)
    ctx.loop.run_until_complete(asyncio.sleep(0))  # a wake-up sent after close() finds nothing
    assert log.names() == ["destroy"]
    expected = "completer" if point == "context.post" else threading.current_thread().name
    assert log.thread("destroy") == expected
    assert isinstance(task.exception(), ContextClosedError)


# -- a hand-over that raises -------------------------------------------------------------
#
# The worker's done step (or a complete() from another thread) hands the
# completion to the context with post().  If that raises, the task must
# still finish, once, with its notifiers run: never left COMPLETING.


def fail_next_wakeup(ctx: qiotask.MainContext, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Make the context's next wake-up raise ``error`` (a self-pipe that is
    gone, a toolkit refusing the call)."""
    real = ctx._wakeup
    raised: list[BaseException] = []

    def wakeup() -> None:
        if not raised:
            raised.append(error)
            raise error
        real()

    monkeypatch.setattr(ctx, "_wakeup", wakeup)


WAKEUP_ERRORS = pytest.mark.parametrize(
    "error", [OSError(9, "Bad file descriptor"), RuntimeError("no loop to reach")], ids=["OSError", "RuntimeError"]
)


@WAKEUP_ERRORS
def test_a_worker_whose_wakeup_raises_still_finishes_once_with_its_notifiers(
    ctx: qiotask.MainContext,
    pool: qiotask.WorkerPool,
    log: Log,
    error: BaseException,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    task: Task[Any] = Task(None, log.func, None, log.destroyer("destroy"), context=ctx)
    fail_next_wakeup(ctx, monkeypatch, error)
    task.run_in_thread(lambda t, o: "result", None, log.destroyer("worker destroy"), pool=pool)
    wait_for(lambda: "destroy" in log.names(), timeout=TIMEOUT, what="the task to finish")
    # The loop cannot be reached: the context is closed, and the completion
    # fails as for a closed context, in the thread that found it so.
    assert log.names() == ["worker destroy", "destroy"]
    assert log.thread("destroy").startswith("test-pool")
    assert isinstance(task.exception(), ContextClosedError)
    assert ctx.closed
    assert "wake-up" in caplog.text and str(error) in caplog.text  # reported, not swallowed


@WAKEUP_ERRORS
def test_a_complete_from_another_thread_whose_wakeup_raises_still_finishes_once(
    ctx: qiotask.MainContext, log: Log, error: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    task: Task[Any] = Task(None, log.func, None, log.destroyer("destroy"), context=ctx)
    fail_next_wakeup(ctx, monkeypatch, error)
    join(start_thread(task.complete, "completer"))
    assert task.state is TaskState.FINISHED
    assert log.names() == ["destroy"] and log.thread("destroy") == "completer"
    assert isinstance(task.exception(), ContextClosedError)


def test_a_worker_whose_post_raises_still_finishes_once_with_its_notifiers(
    ctx: qiotask.MainContext, pool: qiotask.WorkerPool, log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The post raises before the completion is queued (a MemoryError in
    # the enqueue step): nothing will ever dispatch it.
    real = ctx.post
    failures = [MemoryError("no room to queue")]

    def post(item: Any) -> None:
        if failures:
            raise failures.pop()
        real(item)

    monkeypatch.setattr(ctx, "post", post)
    task: Task[Any] = Task(None, log.func, None, log.destroyer("destroy"), context=ctx)
    task.run_in_thread(lambda t, o: "result", None, log.destroyer("worker destroy"), pool=pool)
    wait_for(lambda: "destroy" in log.names(), timeout=TIMEOUT, what="the task to finish")
    assert log.names() == ["worker destroy", "destroy"]
    assert log.thread("destroy").startswith("test-pool")
    err = task.exception()
    assert isinstance(err, ContextClosedError) and "MemoryError('no room to queue')" in str(err)
    assert not ctx.closed  # only this completion was lost to the loop


# -- deadlines against completion --------------------------------------------------------


def test_a_deadline_firing_as_the_worker_returns_does_not_cancel_the_task(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    finish = threading.Event()
    task: Task[Any] = Task(None, log.func)
    with interleaving() as il:
        firing = il.pause("deadline.fire")
        task.run_in_thread(lambda t, o: finish.wait(TIMEOUT) and "value", pool=pool, timeout=0.001)
        firing.wait_reached()  # the timer thread decided to call the task's timeout
        finish.set()
        runner.run_until(task.done)  # the worker returned first: it completes the task
        firing.release()
        settle(runner, pool)
    assert log.names() == ["func"]
    assert log.value("func") is None
    assert task.get_result() == "value"
    assert not task.cancelled()


def test_an_abandoned_worker_returning_before_the_cancel_hands_over_is_destroyed_after_func(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    # Found by tests/test_stress.py: a cancel from another thread abandons
    # the running worker (one step), runs its hooks, then posts the
    # completion.  If the worker returns in that gap, its destroy must still
    # come after func (DESIGN §4), run by the delivery itself.
    running = threading.Event()
    release = threading.Event()

    def worker(task: Task[Any], opaque: Any) -> Any:
        running.set()
        release.wait(TIMEOUT)
        return "late"

    task: Task[Any] = Task(None, log.func)
    task.run_in_thread(worker, "opaque", log.destroyer("worker destroy"), pool=pool, abandon_on_cancel=True)
    assert running.wait(TIMEOUT)
    with interleaving() as il:
        job_done = il.pause("pool.job-done", pool)

        def in_the_gap(task: Task[Any]) -> None:
            release.set()  # the worker returns ...
            job_done.wait_reached()  # ... and its late report is made
            job_done.release()

        task.on_cancel(in_the_gap)
        join(start_thread(task.cancel, "canceller"))
    runner.run_until(lambda: len(log.names()) == 2)
    assert log.names() == ["func", "worker destroy"]
    assert isinstance(log.value("func"), TaskCancelled)
    assert log.thread("worker destroy") == threading.current_thread().name


# -- found by the read-through ------------------------------------------------------------


def test_a_job_refused_by_its_limiters_pool_after_a_cancel_finished_the_task_changes_nothing(
    ctx: qiotask.MainContext, runner: LoopRunner, make_pool: MakePool
) -> None:
    # A task cancelled while its job waits in a Limiter finishes at once; if
    # the job's pool is then shut down, the limiter reports the refusal to
    # the job, which must not move the finished task back.
    pool = make_pool(2)
    limiter = qiotask.Limiter(1)
    gate = threading.Event()
    holder: Task[Any] = Task(None)
    holder.run_in_thread(lambda t, o: gate.wait(TIMEOUT), pool=pool, limiter=limiter)
    log = Log()
    waiting: Task[Any] = Task(None, log.func, None, log.destroyer("destroy"))
    waiting.run_in_thread(lambda t, o: log.add("worker"), None, log.destroyer("worker destroy"), pool=pool,
                          limiter=limiter)  # fmt: skip
    pending = qiotask.stats()["pending"]
    assert waiting.cancel() is True  # delivered now, on this thread
    assert log.names() == ["func", "worker destroy", "destroy"]
    pool.shutdown(wait=False)
    gate.set()  # the holder's job is delivered: the limiter hands the waiting job to the shut pool
    runner.run_until(holder.done)
    wait_for(lambda: limiter.statistics()["waiting"] == 0, what="the limiter to let the refused job go")
    assert waiting.state is TaskState.FINISHED and waiting.done()
    assert log.names() == ["func", "worker destroy", "destroy"]
    assert qiotask.stats()["pending"] == pending - 2  # both finished; nothing came back


def test_a_cancel_before_run_in_thread_keeps_the_worker_from_running(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    # Cancelled before it had a worker, a task given one never starts it: it
    # completes with the cancel, as a queued worker's task does.
    task: Task[Any] = Task(None, log.func)
    task.cancel()
    task.run_in_thread(lambda t, o: log.add("worker"), None, log.destroyer("worker destroy"), pool=pool)
    assert log.names() == ["func", "worker destroy"]  # on the context thread: now
    assert isinstance(log.value("func"), TaskCancelled)
    settle(runner, pool)
    assert "worker" not in log.names()


def test_a_deadline_that_passes_before_the_submit_keeps_the_worker_from_running(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    # The deadline is armed before the job is published; here it fires
    # before the submit step, which finds the cancel: the worker never runs,
    # and the timeout says the worker was queued.
    task: Task[Any] = Task(None, log.func)
    with interleaving() as il:
        il.call("task.submit", lambda: wait_for(task.cancelled, what="the deadline's cancel"), task)
        task.run_in_thread(lambda t, o: log.add("worker"), pool=pool, timeout=0)
    settle(runner, pool)
    assert log.names() == ["func"]
    err = log.value("func")
    assert isinstance(err, TaskTimeout) and "while queued" in str(err)


def test_progress_reported_after_the_completion_reaches_nobody(
    ctx: qiotask.MainContext, runner: LoopRunner, pool: qiotask.WorkerPool, log: Log
) -> None:
    finish = threading.Event()
    task: Task[Any] = Task(None, log.func)
    task.connect_progress(lambda t, done, total, message: log.add("progress", done))

    def worker(task: Task[Any], opaque: Any) -> None:
        finish.wait(TIMEOUT)
        task.report_progress(2)  # after the abandoning cancel finished the task

    task.run_in_thread(worker, pool=pool, abandon_on_cancel=True)
    task.cancel()
    finish.set()
    settle(runner, pool)
    ctx.call_soon(runner.quit)
    runner.run()
    assert log.names() == ["func"]


def test_a_finished_task_lets_go_of_its_hooks_and_listeners(ctx: qiotask.MainContext) -> None:
    class Hook:
        def __call__(self, *args: Any) -> None:
            pass

    hook, listener = Hook(), Hook()
    refs = [weakref.ref(hook), weakref.ref(listener)]
    task: Task[Any] = Task(None)
    task.on_cancel(hook)
    task.connect_progress(listener)
    del hook, listener
    task.complete()
    assert [ref() for ref in refs] == [None, None]  # the task itself is still here
