"""The trio adapter: attached runs (get_context/attach inside trio.run), await
under trio and anyio, cancellation of awaiters, sources in an attached run,
the end of a run with tasks in flight, and standalone contexts run by
MainLoop.  The per-loop contract runs in tests/conformance."""

from __future__ import annotations

import contextvars
import logging
import operator
import os
import socket
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import qiotask
from qiotask import IO_HUP, IO_IN, IO_OUT, ContextClosedError, IOCondition, MainLoop, Task, TaskStateError

from .conftest import SocketPair, join, start_thread

try:
    import anyio
    import trio
    import trio.lowlevel
    import trio.testing

    from qiotask.loops.trio import TrioContext, _wait_task
except ImportError as exc:  # as tests/backends does: skipped, except in CI
    if os.environ.get("QIOTASK_REQUIRE_ALL_LOOPS") == "1":
        raise
    pytest.skip(f"trio or anyio cannot be loaded here: {exc}", allow_module_level=True)

LIMIT = 5.0  # seconds: every wait in a trio run is bounded by fail_after(LIMIT)


# -- finding the context --------------------------------------------------------


def test_get_context_in_a_run_is_the_attached_token() -> None:
    async def main() -> None:
        ctx = qiotask.get_context()
        assert isinstance(ctx, TrioContext)
        assert ctx is qiotask.attach(trio.lowlevel.current_trio_token())
        assert ctx is qiotask.get_context()  # the same one each time
        assert ctx.thread is threading.current_thread() and ctx.is_owner()
        assert not ctx.closed
        task: Task[None] = Task(None)
        assert task.context is ctx
        task.complete()  # on the context thread: delivered here, now
        assert task.done()

    trio.run(main)
    # Outside the run the default context is back.
    assert qiotask.get_context() is qiotask.default_context()


def test_each_run_has_its_own_context() -> None:
    contexts: list[qiotask.MainContext] = []

    async def main() -> None:
        contexts.append(qiotask.get_context())

    trio.run(main)
    trio.run(main)
    assert contexts[0] is not contexts[1]
    assert all(ctx.closed for ctx in contexts)


def test_attach_from_another_thread() -> None:
    seen: dict[str, Any] = {}

    async def main() -> None:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def func(source: Any, err: BaseException | None, opaque: Any) -> None:
            seen["func"] = (threading.current_thread(), err)
            done.set()

        def attach_and_complete() -> None:
            # The first attach of this token: the context learns its thread
            # from the run, and complete() from here is handed over.
            ctx = seen["ctx"] = qiotask.attach(token)
            assert not ctx.is_owner()
            task: Task[str] = Task(None, func, context=ctx)
            task.complete("from thread")

        thread = start_thread(attach_and_complete, "attacher")
        with trio.fail_after(LIMIT):
            await done.wait()
        join(thread)
        assert seen["ctx"] is qiotask.get_context()
        assert seen["ctx"].thread is threading.current_thread()

    trio.run(main)
    assert seen["func"] == (threading.current_thread(), None)


def test_attach_after_the_run_ended() -> None:
    tokens: list[trio.lowlevel.TrioToken] = []

    async def main() -> None:
        tokens.append(trio.lowlevel.current_trio_token())

    trio.run(main)
    ctx = qiotask.attach(tokens[0])
    assert ctx.closed
    seen: list[str] = []
    task: Task[None] = Task(
        None, lambda s, e, o: seen.append("func"), None, lambda o: seen.append("destroy"), context=ctx
    )
    join(start_thread(task.complete, "completer"))
    assert seen == ["destroy"]
    assert isinstance(task.propagate_error(), ContextClosedError)


def test_attached_context_is_not_run_by_mainloop() -> None:
    async def main() -> None:
        ctx = qiotask.get_context()
        with pytest.raises(TaskStateError, match=r"trio\.run"):
            MainLoop(ctx).run()
        standalone = TrioContext(name="inner")
        with pytest.raises(TaskStateError, match="inside a trio run"):
            MainLoop(standalone).run()
        standalone.close()

    trio.run(main)


def test_close_an_attached_context_during_its_run(pair: SocketPair) -> None:
    a, b = pair
    seen: list[str] = []

    async def main() -> None:
        ctx = qiotask.get_context()
        assert isinstance(ctx, TrioContext)
        ctx.timeout_add(1, lambda: seen.append("timer"))
        ctx.io_add_watch(a, IO_IN, lambda fd, cond: seen.append("watch"))
        task: Task[None] = Task(None, lambda s, e, o: seen.append("func"), None, lambda o: seen.append("destroy"))
        await trio.testing.wait_all_tasks_blocked()  # the timer and watcher tasks wait
        living = trio.lowlevel.current_statistics().tasks_living
        ctx.close()
        ctx.close()  # more than once is fine
        assert ctx.closed and not ctx._driver._timers and not ctx._driver._fd_scopes
        await trio.testing.wait_all_tasks_blocked()
        # The timer, the fd watcher and the run watcher have ended: nothing
        # of qiotask is left in the run to fire.
        assert trio.lowlevel.current_statistics().tasks_living == living - 3
        b.send(b"x")
        join(start_thread(task.complete, "completer"))
        assert seen == ["destroy"]  # ContextClosedError: func cannot run
        assert isinstance(task.propagate_error(), ContextClosedError)
        # The run goes on without qiotask; a new context serves it now.
        again = qiotask.get_context()
        assert again is not ctx and not again.closed
        with trio.fail_after(LIMIT):
            assert await qiotask.to_thread(operator.neg, 1) == -1

    trio.run(main)


def test_close_a_running_standalone_context_from_another_thread() -> None:
    ctx = TrioContext(name="closed while running")
    loop = MainLoop(ctx)
    closer: list[threading.Thread] = []
    ctx.idle_add(lambda: closer.append(start_thread(ctx.close, "closer")))
    ctx.timeout_add(LIMIT * 1000, loop.quit)  # the guard: close() must end the run first
    loop.run()
    join(closer[0])
    assert ctx.closed and not loop.is_running()
    with pytest.raises(ContextClosedError):
        loop.run()


# -- completions and await ---------------------------------------------------------


def test_worker_completion_runs_on_the_trio_thread() -> None:
    seen: list[tuple[str, Any, threading.Thread]] = []

    async def main() -> None:
        both = trio.Event()

        def func(source: Any, err: BaseException | None, opaque: Any) -> None:
            seen.append(("func", (opaque, err), threading.current_thread()))

        def destroy(opaque: Any) -> None:
            seen.append(("destroy", opaque, threading.current_thread()))
            if sum(1 for what, _, _ in seen if what == "destroy") == 2:
                both.set()

        def worker(task: Task[Any], opaque: Any) -> str:
            seen.append(("worker", opaque, threading.current_thread()))
            return "value"

        threaded: Task[str] = Task(object(), func, "threaded", destroy)
        threaded.run_in_thread(worker, "w")
        completed: Task[str] = Task(object(), func, "completed", destroy)
        thread = start_thread(lambda: completed.complete("from thread"), "completer")
        with trio.fail_after(LIMIT):
            await both.wait()
        join(thread)
        assert threaded.get_result() == "value" and completed.get_result() == "from thread"

    trio.run(main)
    me = threading.current_thread()
    assert {t for what, _, t in seen if what != "worker"} == {me}
    assert [t for what, _, t in seen if what == "worker"] != [me]
    assert sorted(v for what, v, _ in seen if what == "func") == [("completed", None), ("threaded", None)]


def test_await_task_result_and_error_with_traceback() -> None:
    def failing_worker(task: Task[Any], opaque: Any) -> None:
        raise ValueError("boom")

    async def main() -> None:
        with trio.fail_after(LIMIT):
            ok: Task[str] = Task(None)
            ok.run_in_thread(lambda task, opaque: threading.current_thread().name)
            assert await ok != threading.current_thread().name

            bad: Task[None] = Task(None)
            bad.run_in_thread(failing_worker)
            with pytest.raises(ValueError, match="boom") as info:
                await bad
            assert "failing_worker" in [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]

            # A task that has finished already: await returns at once.
            assert await ok != threading.current_thread().name

    trio.run(main)


def test_to_thread_carries_contextvars() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    def read(prefix: str, *, suffix: str) -> tuple[str, str]:
        return prefix + var.get() + suffix, threading.current_thread().name

    async def main() -> None:
        var.set("set in the trio task")
        with trio.fail_after(LIMIT):
            value, thread_name = await qiotask.to_thread(read, "<", suffix=">")
            assert await qiotask.to_thread(operator.add, 1, 2) == 3
        assert value == "<set in the trio task>"
        assert thread_name != threading.current_thread().name

    trio.run(main)


def test_cancelling_an_awaiter_leaves_the_task_running() -> None:
    release = threading.Event()
    seen: list[Any] = []
    before = qiotask.stats()["pending"]

    def worker(task: Task[Any], opaque: Any) -> str:
        release.wait(LIMIT)
        return "late"

    async def main() -> None:
        task: Task[str] = Task(None, lambda s, e, o: seen.append(("func", e)))
        task.run_in_thread(worker)
        scope = trio.CancelScope()

        async def awaiter() -> None:
            with scope:
                try:
                    await task
                except trio.Cancelled:
                    seen.append("cancelled")
                    raise
                seen.append("not cancelled")

        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(awaiter)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
            assert seen == ["cancelled"] and scope.cancelled_caught
            assert not task.done()

            finished = trio.Event()
            task.add_done_callback(lambda t: finished.set())
            release.set()
            await finished.wait()
        assert seen == ["cancelled", ("func", None)]
        assert task.get_result() == "late"
        # Awaiting it again now works.
        assert await task == "late"

    trio.run(main)
    assert qiotask.stats()["pending"] == before


def test_await_a_task_of_another_loop() -> None:
    other = qiotask.MainContext(name="other")
    started = threading.Event()
    other.call_soon(started.set)
    loop = MainLoop(other)
    thread = start_thread(loop.run, "other-loop")
    seen: list[threading.Thread] = []
    try:
        assert started.wait(LIMIT)

        async def main() -> None:
            task: Task[int] = Task(None, context=other)
            task.add_done_callback(lambda t: seen.append(threading.current_thread()))
            task.run_in_thread(lambda t, o: 42)
            with trio.fail_after(LIMIT):
                assert await task == 42

        trio.run(main)
        assert seen == [thread]  # woken from the other loop's thread
    finally:
        loop.quit()
        join(thread)
        other.close()


def test_wait_task_for_finished_tasks() -> None:
    # _wait_task is what `await task` calls for a task not finished yet; a
    # task can finish in between, on an open context or a closed one.
    async def main() -> None:
        with trio.fail_after(LIMIT):
            here: Task[int] = Task(None)
            here.complete(1)
            await _wait_task(here)  # the done-callback arrives through the queue

            closed = TrioContext(name="closed")
            closed.close()
            gone: Task[None] = Task(None, context=closed)
            gone.complete()  # its context is closed: finished with ContextClosedError
            await _wait_task(gone)  # the done-callback runs inside add_done_callback
            with pytest.raises(ContextClosedError):
                await gone

    trio.run(main)


# -- sources in an attached run ------------------------------------------------------


def test_sources_in_an_attached_run(pair: SocketPair) -> None:
    a, b = pair
    seen: list[tuple[str, Any, threading.Thread]] = []

    async def main() -> None:
        ctx = qiotask.get_context()
        assert isinstance(ctx, TrioContext)
        done = trio.Event()
        expected = {"tick": 3, "idle": 2, "out": 1, "in": 2}

        def add(what: str, value: Any = None) -> None:
            seen.append((what, value, threading.current_thread()))
            if all(sum(1 for w, _, _ in seen if w == k) == n for k, n in expected.items()):
                done.set()

        def tick() -> bool:
            add("tick")
            return sum(1 for w, _, _ in seen if w == "tick") < 3

        def idle() -> bool:
            add("idle")
            return sum(1 for w, _, _ in seen if w == "idle") < 2

        def writable(fd: int, condition: IOCondition) -> bool:
            add("out", condition)
            b.send(b"ping")
            return False

        def readable(fd: int, condition: IOCondition) -> bool:
            data = a.recv(100)
            add("in", (condition, data))
            if data == b"ping":
                b.shutdown(socket.SHUT_WR)
                return True
            return False

        def never(*args: Any) -> bool:
            add("removed source ran")
            return False

        # Removed at once: neither may ever run.
        ctx.timeout_add(1, never).remove()
        ctx.io_add_watch(a, IO_IN, never).remove()
        assert not ctx._driver._fd_scopes
        ctx.timeout_add(2, tick)
        ctx.idle_add(idle)
        ctx.io_add_watch(b, IO_OUT, writable)
        ctx.io_add_watch(a.fileno(), IO_IN | IO_HUP, readable)
        with trio.fail_after(LIMIT):
            await done.wait()
        # Every source has ended: no timer or fd watcher task is left.
        await trio.testing.wait_all_tasks_blocked()
        assert not ctx._driver._timers and not ctx._driver._fd_scopes and not ctx._io_mask

    trio.run(main)
    assert {t for _, _, t in seen} == {threading.current_thread()}
    names = [w for w, _, _ in seen]
    assert "removed source ran" not in names
    ins = [v for w, v, _ in seen if w == "in"]
    assert ins[0][0] & IO_IN and ins[0][1] == b"ping"
    assert ins[1][1] == b""  # the end of the stream


def test_a_watch_on_a_regular_file_polls(tmp_path: Path) -> None:
    # epoll refuses regular files; like GLib, qiotask reports them ready.
    path = tmp_path / "data"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    seen: list[IOCondition] = []
    try:

        async def main() -> None:
            ctx = qiotask.get_context()
            done = trio.Event()

            def readable(fd: int, condition: IOCondition) -> bool:
                seen.append(condition)
                done.set()
                return False

            ctx.io_add_watch(fd, IO_IN, readable)
            with trio.fail_after(LIMIT):
                await done.wait()

        trio.run(main)
    finally:
        os.close(fd)
    assert seen and seen[0] & IO_IN


def test_a_watch_on_an_fd_a_trio_task_waits_on(pair: SocketPair) -> None:
    a, b = pair
    reported: list[BaseException] = []
    seen: list[bytes] = []

    async def main() -> None:
        ctx = qiotask.get_context()
        ctx.exception_handler = lambda message, exc: reported.append(exc)
        done = trio.Event()

        def readable(fd: int, condition: IOCondition) -> bool:
            seen.append(a.recv(100))
            done.set()
            return False

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.lowlevel.wait_readable, a)
            await trio.testing.wait_all_tasks_blocked()
            ctx.io_add_watch(a, IO_IN, readable)
            await trio.testing.wait_all_tasks_blocked()
            b.send(b"x")
            with trio.fail_after(LIMIT):
                await done.wait()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert seen == [b"x"]
    assert len(reported) == 1 and isinstance(reported[0], trio.BusyResourceError)


# -- the end of a run -------------------------------------------------------------------


def test_run_ending_with_a_task_in_flight(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    seen: list[tuple[str, threading.Thread]] = []
    made: dict[str, Any] = {}

    def note(what: str) -> Callable[[Any], None]:
        return lambda opaque: seen.append((what, threading.current_thread()))

    def worker(task: Task[Any], opaque: Any) -> str:
        release.wait(LIMIT)
        return "late"

    async def main() -> None:
        ctx = made["ctx"] = qiotask.get_context()
        task = made["task"] = Task(object(), lambda s, e, o: seen.append(("func", ctx.thread)), None, note("destroy"))
        task.run_in_thread(worker, None, note("worker-destroy"))
        # Never completed during the run: completed after it, by its owner.
        made["pending"] = Task(object(), lambda s, e, o: seen.append(("func2", ctx.thread)), None, note("destroy2"))

    with caplog.at_level(logging.WARNING, logger="qiotask"):
        trio.run(main)
        ctx, task, pending = made["ctx"], made["task"], made["pending"]
        assert ctx.closed
        release.set()
        assert task.wait(LIMIT)
        pending.complete()
    names = [what for what, _ in seen]
    assert names == ["worker-destroy", "destroy", "destroy2"]  # func cannot run: the run is over
    assert seen[0][1] is seen[1][1] is not threading.current_thread()  # the completing worker thread
    for t in (task, pending):
        assert isinstance(t.propagate_error(), ContextClosedError)
    assert sum("ContextClosedError" in r.getMessage() for r in caplog.records) == 2


def test_first_attach_while_the_run_shuts_down() -> None:
    # An async generator left open is finalized after trio's system tasks
    # have ended: a context first attached there is closed at once.
    made: dict[str, Any] = {}
    generators: list[Any] = []

    async def generator() -> Any:
        try:
            yield 1
        finally:
            made["ctx"] = qiotask.get_context()
            task = made["task"] = Task(None, lambda s, e, o: made.setdefault("func", e))
            task.complete("too late")

    async def main() -> None:
        gen = generator()
        generators.append(gen)  # still alive when main returns
        await gen.__anext__()

    trio.run(main)
    assert made["ctx"].closed and "func" not in made
    assert isinstance(made["task"].propagate_error(), ContextClosedError)


def test_awaiter_cancelled_and_run_ended_before_the_task_finishes() -> None:
    release = threading.Event()
    made: dict[str, Task[Any]] = {}

    async def main() -> None:
        task = made["task"] = Task(None, name="outlives the run")
        task.run_in_thread(lambda t, o: release.wait(LIMIT))
        with trio.move_on_after(0):  # cancelled as soon as it parks
            await task

    trio.run(main)
    release.set()
    task = made["task"]
    assert task.wait(LIMIT)  # its done-callback finds the awaiting run gone
    assert isinstance(task.propagate_error(), ContextClosedError)


# -- standalone contexts --------------------------------------------------------------------


def test_standalone_context_runs_again() -> None:
    ctx = TrioContext(name="again")
    loop = MainLoop(ctx)
    seen: list[Any] = []

    def first() -> None:
        seen.append(("first", qiotask.get_context() is ctx, ctx.thread is threading.current_thread()))
        loop.quit()

    def quit_when_all_ran() -> None:
        if {"func", "timer"} <= set(seen):
            loop.quit()

    def timer() -> bool:
        seen.append("timer")
        quit_when_all_ran()
        return False

    try:
        ctx.idle_add(first)
        # Longer than the first run: it pauses with it and resumes in the next.
        ctx.timeout_add(50, timer)
        loop.run()
        assert seen[0] == ("first", True, True)

        # Between runs a completion waits for the next run.
        def func(source: Any, err: BaseException | None, opaque: Any) -> None:
            seen.append("func")
            quit_when_all_ran()

        task: Task[str] = Task(None, func, context=ctx)
        join(start_thread(lambda: task.complete("between"), "completer"))
        assert not task.done()
        guard = ctx.timeout_add(LIMIT * 1000, loop.quit)
        loop.run()
        guard.remove()
        assert task.done() and task.get_result() == "between"
        assert sorted(s for s in seen if isinstance(s, str)) == ["func", "timer"]
    finally:
        ctx.close()
    with pytest.raises(ContextClosedError):
        loop.run()


def test_standalone_fd_watch_pauses_between_runs(pair: SocketPair) -> None:
    a, b = pair
    ctx = TrioContext(name="watching")
    loop = MainLoop(ctx)
    seen: list[bytes] = []

    def readable(fd: int, condition: IOCondition) -> bool:
        seen.append(a.recv(100))
        loop.quit()
        return False

    try:
        watch = ctx.io_add_watch(a, IO_IN, readable)
        ctx.idle_add(loop.quit)
        loop.run()  # ends with the watch active: its watcher task is cancelled
        assert not watch.removed and not ctx._driver._fd_scopes and seen == []
        b.send(b"after")
        guard = ctx.timeout_add(LIMIT * 1000, loop.quit)
        loop.run()  # the watch resumes and sees the data
        guard.remove()
        assert seen == [b"after"] and watch.removed
    finally:
        ctx.close()


def test_standalone_context_closed_fails_what_is_queued() -> None:
    ctx = TrioContext(name="closing")
    seen: list[str] = []
    task: Task[None] = Task(
        None, lambda s, e, o: seen.append("func"), None, lambda o: seen.append("destroy"), context=ctx
    )
    join(start_thread(task.complete, "completer"))  # queued: no run yet
    ctx.close()
    assert seen == ["destroy"]
    assert isinstance(task.propagate_error(), ContextClosedError)


# -- anyio -------------------------------------------------------------------------------------------


def test_anyio_on_the_trio_backend() -> None:
    def failing() -> None:
        raise KeyError("anyio")

    async def main() -> None:
        assert isinstance(qiotask.get_context(), TrioContext)
        with anyio.fail_after(LIMIT):
            task: Task[str] = Task(None)
            task.run_in_thread(lambda t, o: threading.current_thread().name)
            assert await task != threading.current_thread().name
            assert await qiotask.to_thread(operator.mul, 6, 7) == 42
            with pytest.raises(KeyError):
                await qiotask.to_thread(failing)
            # anyio's cancellation reaches an awaiter too.
            release = threading.Event()
            slow: Task[bool] = Task(None)
            slow.run_in_thread(lambda t, o: release.wait(LIMIT))
            with anyio.move_on_after(0) as scope:
                await slow
            assert scope.cancelled_caught
            release.set()
            assert await slow is True

    anyio.run(main, backend="trio")


def test_awaiting_a_finished_task_is_a_checkpoint() -> None:
    async def main() -> None:
        task: Task[int] = Task(None)
        task.complete(1)
        assert await task == 1
        with trio.CancelScope() as scope:
            scope.cancel()
            await task  # a checkpoint: the pending cancel is delivered here
            pytest.fail("awaiting a finished task did not check for cancellation")
        assert scope.cancelled_caught

    trio.run(main)


def test_from_thread_run_as_the_run_ends_raises_context_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The run may end between qiotask's look at it and trio's own: trio then
    # raises RunFinishedError, which is the loop gone, as everywhere else.
    def finished(*args: Any, **kwargs: Any) -> Any:
        raise trio.RunFinishedError("system nursery is closed")

    async def nothing() -> None:
        pass

    def worker() -> BaseException | None:
        monkeypatch.setattr(trio.from_thread, "run", finished)
        try:
            qiotask.from_thread.run(nothing)
        except BaseException as exc:
            return exc
        finally:
            monkeypatch.undo()
        return None

    async def main() -> BaseException | None:
        return await qiotask.to_thread(worker)

    error = trio.run(main)
    assert isinstance(error, ContextClosedError) and "the trio run has finished" in str(error)
    assert isinstance(error.__cause__, trio.RunFinishedError)
