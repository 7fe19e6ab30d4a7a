"""MainContext: sources, fd watches, the batching dispatcher, MainLoop,
attach/get_context, thread-default contexts and closed contexts."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import math
import os
import select
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import qiotask
from qiotask import (
    IO_ERR,
    IO_HUP,
    IO_IN,
    IO_OUT,
    ContextClosedError,
    IOCondition,
    MainContext,
    MainLoop,
    Task,
    TaskState,
    TaskStateError,
)
from qiotask.loops.asyncio import AsyncioContext, EmbeddedContext

from .conftest import (
    STRICT_WARNINGS,
    LoopRunner,
    SocketPair,
    count_calls,
    count_dispatches,
    count_wakeups,
    join,
    start_thread,
)

FdCheck = Callable[[socket.socket], None]


@pytest.fixture
def assert_unwatched(ctx: MainContext) -> FdCheck:
    """``assert_unwatched(sock)`` asserts that no watch of the context is left
    on ``sock``'s fd: here, that the asyncio loop has no reader or writer on it.
    (tests/test_loop_qt.py, which runs the tests using it again on a
    QtContext, overrides it.)"""

    def check(sock: socket.socket) -> None:
        assert ctx.loop.remove_reader(sock.fileno()) is False  # type: ignore[attr-defined]
        assert ctx.loop.remove_writer(sock.fileno()) is False  # type: ignore[attr-defined]

    return check


# -- timeout_add ---------------------------------------------------------------


def test_timeout_add_repeats_while_true_on_the_context_thread(runner: LoopRunner) -> None:
    ctx = runner.context
    calls: list[tuple[Any, ...]] = []
    threads: list[threading.Thread] = []

    def tick(a: str, b: int) -> bool:
        calls.append((a, b))
        threads.append(threading.current_thread())
        if len(calls) < 3:
            return True
        # Let the loop run on: a source that kept repeating would be seen.
        ctx.timeout_add(30, runner.quit)
        return False

    source = ctx.timeout_add(1, tick, "x", 2)
    assert isinstance(source, qiotask.Source)
    assert not source.removed
    runner.run(timeout=5)
    assert calls == [("x", 2)] * 3
    assert threads == [threading.current_thread()] * 3
    assert source.removed


def test_timeout_add_stops_on_none_false_and_remove(runner: LoopRunner) -> None:
    ctx = runner.context
    counts = {"none": 0, "false": 0, "self-removed": 0, "never": 0, "ticker": 0}
    removed_at: list[int] = []

    def returns_none() -> None:
        counts["none"] += 1

    def returns_false() -> bool:
        counts["false"] += 1
        return False

    def removes_itself() -> bool:
        counts["self-removed"] += 1
        self_removed.remove()
        return True  # remove() wins over True

    def never() -> bool:
        counts["never"] += 1
        return True

    def ticker() -> bool:
        counts["ticker"] += 1
        if counts["ticker"] == 2:
            ctx.idle_add(remove_ticker)
        return True

    def remove_ticker() -> bool:
        ticking.remove()
        removed_at.append(counts["ticker"])
        # Run on for a while: a 1 ms ticker still attached would fire again.
        ctx.timeout_add(30, runner.quit)
        return False

    s_none = ctx.timeout_add(1, returns_none)
    s_false = ctx.timeout_add(1, returns_false)
    self_removed = ctx.timeout_add(1, removes_itself)
    s_never = ctx.timeout_add(1, never)
    s_never.remove()
    s_never.remove()  # idempotent
    assert s_never.removed
    ticking = ctx.timeout_add(1, ticker)
    runner.run(timeout=5)
    assert counts["none"] == 1 and counts["false"] == 1 and counts["self-removed"] == 1
    assert counts["never"] == 0
    assert removed_at and counts["ticker"] == removed_at[0] >= 2
    assert s_none.removed and s_false.removed and self_removed.removed and ticking.removed


# -- idle_add ------------------------------------------------------------------


def test_idle_add_runs_once_per_iteration_while_true(runner: LoopRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = runner.context
    dispatches = count_dispatches(ctx, monkeypatch)
    log: list[tuple[str, int]] = []
    threads: set[threading.Thread] = set()

    def idle(name: str, limit: int) -> bool:
        log.append((name, dispatches[0]))
        threads.add(threading.current_thread())
        return sum(1 for entry in log if entry[0] == name) < limit

    a = ctx.idle_add(idle, "a", 3)
    b = ctx.idle_add(idle, "b", 3)
    runner.run_until(lambda: a.removed and b.removed, timeout=5)
    # Each call in its own dispatch: a source that returned True is not run
    # again in the same iteration, and the two interleave.
    assert log == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    assert threads == {threading.current_thread()}


# -- io_add_watch ----------------------------------------------------------------


def test_io_watch_in_fires_when_the_peer_writes(runner: LoopRunner, pair: SocketPair) -> None:
    ctx = runner.context
    a, b = pair
    seen: list[tuple[Any, ...]] = []
    writers: list[threading.Thread] = []

    def on_in(fd: int, condition: IOCondition, tag: str) -> bool:
        seen.append((fd, condition, tag, threading.current_thread(), a.recv(16)))
        runner.quit()
        return False

    def start_writer() -> bool:
        # Nothing was readable yet, so the watch has not fired.
        seen.append(("before write",))
        writers.append(start_thread(lambda: b.sendall(b"ping"), "writer"))
        return False

    source = ctx.io_add_watch(a.fileno(), IO_IN, on_in, "tag")
    ctx.idle_add(start_writer)
    runner.run(timeout=5)
    join(writers[0])
    assert len(seen) == 2 and seen[0] == ("before write",)
    fd, condition, tag, thread, data = seen[1]
    assert type(fd) is int and fd == a.fileno()
    assert isinstance(condition, IOCondition) and IO_IN in condition
    assert tag == "tag" and data == b"ping"
    assert thread is threading.current_thread() and thread is not writers[0]
    assert source.removed


def test_io_watch_accepts_an_object_with_fileno(runner: LoopRunner, pair: SocketPair) -> None:
    ctx = runner.context
    a, b = pair
    seen: list[tuple[Any, IOCondition]] = []

    def on_in(fd: Any, condition: IOCondition) -> bool:
        seen.append((fd, condition))
        a.recv(16)
        runner.quit()
        return False

    b.sendall(b"x")
    ctx.io_add_watch(a, IO_IN, on_in)
    runner.run(timeout=5)
    assert len(seen) == 1
    assert type(seen[0][0]) is int and seen[0][0] == a.fileno()
    assert IO_IN in seen[0][1]


def test_io_watch_out_fires_on_a_writable_socket(runner: LoopRunner, pair: SocketPair) -> None:
    ctx = runner.context
    _, b = pair
    seen: list[tuple[int, IOCondition, threading.Thread]] = []

    def on_out(fd: int, condition: IOCondition) -> bool:
        seen.append((fd, condition, threading.current_thread()))
        runner.quit()
        return False

    ctx.io_add_watch(b, IO_OUT, on_out)
    runner.run(timeout=5)
    assert len(seen) == 1
    fd, condition, thread = seen[0]
    assert fd == b.fileno()
    assert IO_OUT in condition and IO_IN not in condition  # nothing to read
    assert thread is threading.current_thread()


def test_io_watch_reports_hup_when_the_peer_closes(runner: LoopRunner, pair: SocketPair) -> None:
    ctx = runner.context
    a, b = pair
    seen: list[tuple[IOCondition, bytes]] = []

    def on_in(fd: int, condition: IOCondition) -> bool:
        seen.append((condition, a.recv(16)))
        runner.quit()
        return False

    def close_peer() -> bool:
        b.close()
        return False

    ctx.io_add_watch(a, IO_IN, on_in)
    ctx.idle_add(close_peer)
    runner.run(timeout=5)
    assert len(seen) == 1
    condition, data = seen[0]
    # HUP is reported even though the watch asked for IN only, as poll(2) does.
    assert IO_HUP in condition
    assert data == b""


def test_io_two_watches_on_one_fd_both_fire_and_removing_one_keeps_the_other(
    runner: LoopRunner, pair: SocketPair, assert_unwatched: FdCheck
) -> None:
    ctx = runner.context
    a, b = pair
    calls: list[str] = []

    def first(fd: int, condition: IOCondition) -> bool:
        calls.append("first")
        return True

    def second(fd: int, condition: IOCondition) -> bool:
        calls.append("second")
        if len(calls) == 2:
            w1.remove()  # the data is left unread: the fd stays readable
            return True
        a.recv(16)
        runner.quit()
        return False

    w1 = ctx.io_add_watch(a, IO_IN, first)
    w2 = ctx.io_add_watch(a.fileno(), IO_IN, second)
    b.sendall(b"x")
    runner.run(timeout=5)
    assert calls == ["first", "second", "second"]
    assert w1.removed and w2.removed
    # The last watch gone, the fd is no longer registered with the loop.
    assert_unwatched(a)


def test_io_in_and_out_watches_on_one_fd(runner: LoopRunner, pair: SocketPair, assert_unwatched: FdCheck) -> None:
    ctx = runner.context
    a, b = pair
    seen: list[tuple[str, IOCondition]] = []

    def on_out(fd: int, condition: IOCondition) -> bool:
        seen.append(("out", condition))
        b.sendall(b"x")  # now make the IN watch fire
        return False

    def on_in(fd: int, condition: IOCondition) -> bool:
        seen.append(("in", condition))
        a.recv(16)
        runner.quit()
        return False

    w_in = ctx.io_add_watch(a, IO_IN, on_in)
    w_out = ctx.io_add_watch(a, IO_OUT, on_out)
    runner.run(timeout=5)
    assert [name for name, _ in seen] == ["out", "in"]
    assert IO_OUT in seen[0][1] and IO_IN not in seen[0][1]
    # Each watch sees only what it asked for (plus ERR/HUP), not the other's.
    assert IO_IN in seen[1][1] and IO_OUT not in seen[1][1]
    assert w_in.removed and w_out.removed
    assert_unwatched(a)


def test_io_watch_returning_false_is_removed(runner: LoopRunner, pair: SocketPair, assert_unwatched: FdCheck) -> None:
    ctx = runner.context
    a, b = pair
    calls: list[IOCondition] = []
    iterations = [0]

    def on_in(fd: int, condition: IOCondition) -> bool:
        calls.append(condition)
        ctx.idle_add(spin)
        return False  # without reading: the fd stays readable

    def spin() -> bool:
        # A few loop iterations, each polling the still-readable fd.
        iterations[0] += 1
        if iterations[0] < 10:
            return True
        runner.quit()
        return False

    b.sendall(b"x")
    source = ctx.io_add_watch(a, IO_IN, on_in)
    runner.run(timeout=5)
    assert len(calls) == 1 and IO_IN in calls[0]
    assert iterations[0] == 10
    assert source.removed
    assert select.select([a], [], [], 0)[0] == [a]  # still readable
    assert_unwatched(a)


# -- sources and threads ---------------------------------------------------------


def test_sources_added_from_another_thread_run_on_the_context_thread(runner: LoopRunner) -> None:
    ctx = runner.context
    seen: dict[str, tuple[threading.Thread, tuple[Any, ...]]] = {}
    added: list[qiotask.Source] = []

    def record(name: str, *args: Any) -> bool:
        seen[name] = (threading.current_thread(), args)
        if len(seen) == 2:
            runner.quit()
        return False

    def adder() -> None:
        added.append(ctx.timeout_add(1, record, "timeout", 1))
        added.append(ctx.idle_add(record, "idle", 2, 3))

    def start_adder() -> bool:
        threads.append(start_thread(adder, "adder"))
        return False

    threads: list[threading.Thread] = []
    ctx.idle_add(start_adder)
    runner.run(timeout=5)
    join(threads[0])
    main = threading.current_thread()
    assert seen == {"timeout": (main, (1,)), "idle": (main, (2, 3))}
    assert threads[0] is not main
    assert all(s.removed for s in added)


def test_remove_from_another_thread(runner: LoopRunner) -> None:
    ctx = runner.context
    ticks: list[threading.Thread] = []
    idles = [0]
    idle_count_at_removal: list[int] = []
    removed_in_time: list[bool] = []
    threads: list[threading.Thread] = []
    removed = threading.Event()

    def remove_timer() -> None:
        timer.remove()
        removed.set()

    def tick() -> bool:
        ticks.append(threading.current_thread())
        if len(ticks) == 1:
            # Removed from another thread while this call runs: the call
            # finishes, but its True does not re-arm the source.
            threads.append(start_thread(remove_timer, "timer-remover"))
            removed_in_time.append(removed.wait(5))
        return True

    def remove_idle() -> None:
        spinner.remove()
        idle_count_at_removal.append(idles[0])
        # Run on a while, added from this thread too.
        ctx.timeout_add(30, runner.quit)

    def spin() -> bool:
        idles[0] += 1
        if idles[0] == 1:
            threads.append(start_thread(remove_idle, "idle-remover"))
        return True

    timer = ctx.timeout_add(1, tick)
    spinner = ctx.idle_add(spin)
    runner.run(timeout=5)
    for thread in threads:
        join(thread)
    assert removed_in_time == [True]
    assert ticks == [threading.current_thread()]  # a 1 ms timer ran once in 30 ms
    assert timer.removed and spinner.removed
    # At most the call that was running when remove() returned.
    assert idle_count_at_removal and idles[0] <= idle_count_at_removal[0] + 1


def test_remove_from_another_thread_of_a_source_about_to_run(runner: LoopRunner) -> None:
    ctx = runner.context
    victim_calls: list[threading.Thread] = []
    removed_in_time: list[bool] = []
    threads: list[threading.Thread] = []
    removed = threading.Event()

    def remove_victim() -> None:
        victim.remove()
        removed.set()

    def blocker() -> bool:
        # The victim's call is queued right behind this one, in the same
        # batch; it is removed from another thread before its turn comes.
        threads.append(start_thread(remove_victim, "victim-remover"))
        removed_in_time.append(removed.wait(5))
        ctx.timeout_add(20, runner.quit)
        return False

    def victim_fn() -> bool:
        victim_calls.append(threading.current_thread())
        return True

    ctx.idle_add(blocker)
    victim = ctx.idle_add(victim_fn)
    runner.run(timeout=5)
    join(threads[0])
    assert removed_in_time == [True]
    assert victim_calls == []  # remove() had returned: never called
    assert victim.removed


# -- bad input -------------------------------------------------------------------


def test_sources_reject_bad_arguments(ctx: MainContext, pair: SocketPair, assert_unwatched: FdCheck) -> None:
    a, _ = pair

    def fn(*args: Any) -> bool:
        return False

    with pytest.raises(ValueError, match="negative"):
        ctx.timeout_add(-1, fn)
    with pytest.raises(ValueError, match=r"^timeout_add: ms must be a number of milliseconds, not NaN$"):
        ctx.timeout_add(float("nan"), fn)  # would fire at once
    with pytest.raises(TypeError):
        ctx.timeout_add("x", fn)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ctx.timeout_add(True, fn)
    with pytest.raises(TypeError):
        ctx.timeout_add(1, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ctx.idle_add(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^io_add_watch: fd must be a file descriptor \(0 or more\), got -1$"):
        ctx.io_add_watch(-1, IO_IN, fn)
    with pytest.raises(ValueError, match=r"^io_add_watch: fd 1099511627776 is not a file descriptor: they go up to "):
        ctx.io_add_watch(2**40, IO_IN, fn)  # was OverflowError from poll()
    with pytest.raises(TypeError, match=r"^io_add_watch: fd must be an int or have fileno\(\), not str$"):
        ctx.io_add_watch("x", IO_IN, fn)
    with pytest.raises(TypeError, match=r"^io_add_watch: fd must be an int or have fileno\(\), not float$"):
        ctx.io_add_watch(float("nan"), IO_IN, fn)

    class Odd:
        def __init__(self, value: Any) -> None:
            self.value = value

        def fileno(self) -> Any:
            return self.value

    with pytest.raises(
        TypeError, match=r"^io_add_watch: fd's fileno\(\) must return an int, but Odd.fileno\(\) returned str '3'$"
    ):
        ctx.io_add_watch(Odd("3"), IO_IN, fn)
    with pytest.raises(TypeError, match=r"fileno\(\) must return an int, but Odd.fileno\(\) returned float nan$"):
        ctx.io_add_watch(Odd(float("nan")), IO_IN, fn)
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError, match=r"^io_add_watch: fd socket is closed \(its fileno\(\) returned -1\)$"):
        ctx.io_add_watch(closed, IO_IN, fn)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError, match=rf"^\[Errno {errno.EBADF}\] io_add_watch: fd {r} is not open"):
        ctx.io_add_watch(r, IO_IN, fn)  # (a loop would watch it for ever: Tk's notifier spins)
    with pytest.raises(ValueError):
        ctx.io_add_watch(a, 0, fn)
    with pytest.raises(ValueError):
        ctx.io_add_watch(a, 1024, fn)
    with pytest.raises(TypeError):
        ctx.io_add_watch(a, "in", fn)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ctx.io_add_watch(a, IO_IN, None)  # type: ignore[arg-type]
    # Nothing was registered by the rejected calls.
    assert ctx._io == {}
    assert_unwatched(a)


def test_io_condition_values_are_poll_values() -> None:
    assert IOCondition.IN == select.POLLIN
    assert IOCondition.OUT == select.POLLOUT
    assert IOCondition.ERR == select.POLLERR
    assert IOCondition.HUP == select.POLLHUP
    assert qiotask.IO_IN is IOCondition.IN
    assert qiotask.IO_OUT is IOCondition.OUT
    assert qiotask.IO_ERR is IOCondition.ERR
    assert qiotask.IO_HUP is IOCondition.HUP
    assert isinstance(IO_IN | IO_HUP, IOCondition)
    assert IO_ERR not in IO_IN | IO_OUT | IO_HUP


# -- exceptions in sources ---------------------------------------------------------


def test_exception_in_a_source_is_logged_and_removes_it(
    runner: LoopRunner, pair: SocketPair, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = runner.context
    a, b = pair
    calls: list[str] = []
    later: list[threading.Thread] = []

    def bad_timeout() -> bool:
        calls.append("timeout")
        raise RuntimeError("timeout boom")

    def bad_idle() -> bool:
        calls.append("idle")
        raise RuntimeError("idle boom")

    def bad_io(fd: int, condition: IOCondition) -> bool:
        calls.append("io")
        raise RuntimeError("io boom")  # the data stays unread

    def still_running() -> None:
        later.append(threading.current_thread())
        runner.quit()

    b.sendall(b"x")
    sources = [ctx.timeout_add(1, bad_timeout), ctx.idle_add(bad_idle), ctx.io_add_watch(a, IO_IN, bad_io)]
    # 30 ms later: sources that were not removed would have run again.
    ctx.timeout_add(30, still_running)
    with caplog.at_level(logging.ERROR, logger="qiotask"):
        runner.run(timeout=5)
    assert sorted(calls) == ["idle", "io", "timeout"]
    assert later == [threading.current_thread()]
    assert all(s.removed for s in sources)
    records = [r for r in caplog.records if r.name == "qiotask"]
    assert len(records) == 3
    assert all(r.levelno == logging.ERROR and r.exc_info for r in records)
    errors = sorted(str(r.exc_info[1]) for r in records if r.exc_info)
    assert errors == ["idle boom", "io boom", "timeout boom"]


# -- the batching dispatcher -------------------------------------------------------


def test_one_wakeup_per_batch(runner: LoopRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = runner.context
    wakeups = count_wakeups(ctx, monkeypatch)
    dispatches = count_dispatches(ctx, monkeypatch)
    ran: list[tuple[int, int, threading.Thread]] = []

    def func(source: Any, err: BaseException | None, opaque: int) -> None:
        ran.append((opaque, dispatches[0], threading.current_thread()))

    tasks: list[Task[None]] = [Task(None, func, i, context=ctx) for i in range(1000)]

    def complete_all() -> None:
        for task in tasks:
            task.complete()

    join(start_thread(complete_all, "completer"))
    # The loop is not running: all 1000 are queued behind one wake-up.
    assert wakeups[0] == 1
    assert ran == []
    assert all(t.state is TaskState.COMPLETING for t in tasks)
    runner.run_until(lambda: len(ran) == 1000, timeout=5)
    assert [r[0] for r in ran] == list(range(1000))  # in order
    assert {r[1] for r in ran} == {1}  # one dispatch drained the batch
    assert {r[2] for r in ran} == {threading.current_thread()}
    assert all(t.done() for t in tasks)


def test_posts_from_other_threads_during_a_batch_send_no_wakeup_of_their_own(
    runner: LoopRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncio cannot run a nested loop in a callback: items posted while a
    # batch runs are left to the batch's end, which sends the next wake-up
    # from the loop's thread (call_soon, no self-pipe write).
    ctx = runner.context
    threadsafe = count_calls(ctx.loop, "call_soon_threadsafe", monkeypatch, with_args=True)  # type: ignore[attr-defined]
    ran: list[int] = []
    posted = threading.Event()

    def in_batch() -> None:
        def poster() -> None:
            for i in range(100):
                ctx.call_soon(ran.append, i)
            posted.set()

        join(start_thread(poster, "poster"))

    ctx.call_soon(in_batch)
    runner.run_until(lambda: len(ran) == 100, timeout=5)
    assert posted.is_set() and ran == list(range(100))
    # One cross-thread wake-up: the first post's, from this thread before
    # the loop ran; the poster's 100 sent none.
    assert threadsafe[0] == 1


def test_callback_posted_while_dispatching_runs_in_a_later_dispatch(
    runner: LoopRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = runner.context
    dispatches = count_dispatches(ctx, monkeypatch)
    order: list[tuple[str, int]] = []

    def first() -> None:
        order.append(("first", dispatches[0]))
        # An ordinary loop callback scheduled now must not wait behind a
        # producer that keeps posting.
        ctx.loop.call_soon(lambda: order.append(("loop callback", dispatches[0])))  # type: ignore[attr-defined]
        ctx.call_soon(second)

    def second() -> None:
        order.append(("second", dispatches[0]))
        runner.quit()

    ctx.call_soon(first)
    runner.run(timeout=5)
    assert order == [("first", 1), ("loop callback", 1), ("second", 2)]


# -- attach and get_context ----------------------------------------------------------


def test_attach_an_asyncio_loop() -> None:
    loop = asyncio.new_event_loop()
    try:
        attached = qiotask.attach(loop)
        assert isinstance(attached, AsyncioContext)
        assert attached.loop is loop
        assert qiotask.attach(loop) is attached
        assert qiotask.get_context() is not attached  # the loop is not running here

        async def main() -> tuple[MainContext, MainContext, MainContext]:
            task: Task[str] = Task(None)
            task.complete("done")
            return qiotask.get_context(), task.context, qiotask.attach(asyncio.get_running_loop())

        in_loop, task_context, again = loop.run_until_complete(main())
        assert in_loop is attached and task_context is attached and again is attached
        assert attached.thread is threading.current_thread()
    finally:
        loop.close()
    with pytest.raises(TypeError, match="asyncio"):
        qiotask.attach(object())
    embedded = MainContext()
    try:
        assert qiotask.attach(embedded) is embedded
        assert qiotask.attach(embedded.loop) is embedded  # type: ignore[attr-defined]
    finally:
        embedded.close()  # type: ignore[attr-defined]


def test_get_context_thread_default_nesting_and_default(ctx: MainContext) -> None:
    assert qiotask.get_context() is ctx
    inner = MainContext(name="inner")
    try:
        inner.push_thread_default()
        assert qiotask.get_context() is inner
        with pytest.raises(TaskStateError):
            ctx.pop_thread_default()  # not on top
        assert qiotask.get_context() is inner
        inner.pop_thread_default()
        assert qiotask.get_context() is ctx

        # The thread default wins over a running asyncio loop too.
        async def inside() -> MainContext:
            return qiotask.get_context()

        assert asyncio.run(inside()) is ctx
    finally:
        inner.close()  # type: ignore[attr-defined]

    seen: dict[str, Any] = {}

    def fresh_thread() -> None:
        seen["context"] = qiotask.get_context()
        seen["default"] = qiotask.default_context()
        try:
            ctx.pop_thread_default()  # nothing pushed in this thread
        except TaskStateError as exc:
            seen["pop"] = exc

    join(start_thread(fresh_thread, "fresh"))
    assert seen["context"] is seen["default"] is qiotask.default_context()
    assert seen["context"] is not ctx
    assert qiotask.default_context().thread is threading.main_thread()
    assert isinstance(seen["pop"], TaskStateError)
    assert qiotask.get_context() is ctx  # this thread's stack is untouched


# -- custom contexts and MainLoop ------------------------------------------------------


def test_custom_context_run_in_another_thread_receives_the_callback() -> None:
    custom = MainContext(name="custom")
    assert isinstance(custom, EmbeddedContext) and isinstance(custom, MainContext)
    loop = MainLoop(custom)
    seen: dict[str, threading.Thread] = {}
    running = threading.Event()

    def func(source: Any, err: BaseException | None, opaque: Any) -> None:
        seen["func"] = threading.current_thread()
        seen["context thread"] = custom.thread
        loop.quit()

    def loop_thread() -> None:
        custom.idle_add(lambda: running.set())
        loop.run()

    def complete() -> None:
        seen["completer"] = threading.current_thread()
        task.complete("result")

    task: Task[str] = Task(None, func, context=custom)
    try:
        runner_thread = start_thread(loop_thread, "custom-loop")
        assert running.wait(5)
        join(start_thread(complete, "completer"))
        assert task.wait(5)
        join(runner_thread)
    finally:
        if loop.is_running():
            loop.quit()  # do not leave the thread behind if the test failed
            runner_thread.join(5)
        custom.close()  # type: ignore[attr-defined]
    assert seen["func"] is runner_thread
    assert seen["func"] is not threading.main_thread()
    assert seen["func"] is not seen["completer"]
    assert seen["context thread"] is runner_thread
    assert task.get_result() == "result"


def test_quit_before_run_is_not_remembered(runner: LoopRunner) -> None:
    ctx = runner.context
    fired: list[threading.Thread] = []

    def timer() -> None:
        fired.append(threading.current_thread())
        runner.quit()

    runner.quit()
    assert not runner.loop.is_running()
    ctx.timeout_add(20, timer)
    runner.run(timeout=5)
    assert fired == [threading.current_thread()]


def test_quit_from_another_thread(runner: LoopRunner) -> None:
    ctx = runner.context
    threads: list[threading.Thread] = []

    def start_quitter() -> bool:
        threads.append(start_thread(runner.quit, "quitter"))
        return False

    ctx.idle_add(start_quitter)
    runner.run(timeout=5)  # returns only because the other thread quit it
    join(threads[0])
    assert not runner.loop.is_running()


def test_is_running_and_run_while_running(runner: LoopRunner) -> None:
    ctx = runner.context
    seen: dict[str, Any] = {}

    def inside() -> None:
        seen["running"] = runner.loop.is_running()
        try:
            runner.loop.run()
        except TaskStateError as exc:
            seen["error"] = exc
        seen["still running"] = runner.loop.is_running()
        if seen["still running"]:
            runner.quit()
        else:  # broken: stop the loop anyway, so that the test fails fast
            ctx.loop.stop()  # type: ignore[attr-defined]

    assert not runner.loop.is_running()
    ctx.idle_add(inside)
    runner.run(timeout=5)
    assert seen["running"] is True
    assert isinstance(seen.get("error"), TaskStateError)
    assert seen["still running"] is True
    assert not runner.loop.is_running()


# -- closed contexts ---------------------------------------------------------------


def test_context_closed_while_the_worker_runs(caplog: pytest.LogCaptureFixture) -> None:
    closing = MainContext(name="closing")
    started = threading.Event()
    release = threading.Event()
    threads: dict[str, list[threading.Thread]] = {"func": [], "destroy": [], "worker": [], "worker-destroy": []}

    def func(source: Any, err: BaseException | None, opaque: Any) -> None:
        threads["func"].append(threading.current_thread())

    def worker(task: Task[int], opaque: Any) -> int:
        threads["worker"].append(threading.current_thread())
        started.set()
        assert release.wait(5)
        return 1

    task: Task[int] = Task(
        None,
        func,
        "op",
        lambda o: threads["destroy"].append(threading.current_thread()),
        context=closing,
        name="doomed",
    )
    task.run_in_thread(worker, "w", lambda o: threads["worker-destroy"].append(threading.current_thread()))
    assert started.wait(5)
    closing.close()  # type: ignore[attr-defined]
    assert closing.closed
    with caplog.at_level(logging.WARNING, logger="qiotask"):
        release.set()
        # From the thread that made the context: its loop is gone, so waiting
        # here cannot deadlock; the completing thread finishes the task.
        assert task.wait(5) is True
    assert task.state is TaskState.FINISHED
    assert threads["func"] == []
    worker_thread = threads["worker"][0]
    assert threads["worker-destroy"] == [worker_thread]
    assert threads["destroy"] == [worker_thread]
    error = task.propagate_error()
    assert isinstance(error, ContextClosedError)
    assert "doomed" in str(error)

    async def awaiter() -> None:
        await task

    with pytest.raises(ContextClosedError, match="doomed"):
        asyncio.run(awaiter())
    warnings = [r for r in caplog.records if r.name == "qiotask" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "doomed" in warnings[0].getMessage()


def test_wait_from_the_creating_thread_after_the_context_closed() -> None:
    closing = MainContext(name="closing")
    started = threading.Event()
    release = threading.Event()

    def worker(task: Task[None], opaque: Any) -> None:
        started.set()
        release.wait(5)

    task: Task[None] = Task(None, context=closing, name="doomed")
    task.run_in_thread(worker)
    assert started.wait(5)
    with pytest.raises(TaskStateError):
        task.wait(0)  # open: this thread is the one that would run the completion
    closing.close()  # type: ignore[attr-defined]
    try:
        # The loop is gone, so nothing would deadlock: a waiter here waits for
        # the completing thread (DESIGN §3: wait() sees the error).  Still
        # running: not finished, and no TaskStateError.
        assert task.wait(0.01) is False
    finally:
        release.set()
    assert task.wait(5) is True
    assert isinstance(task.propagate_error(), ContextClosedError)


class Recorder:
    """``func`` and ``destroy`` of tasks, recording ``(what, opaque, thread)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, threading.Thread]] = []

    def func(self, source: Any, err: BaseException | None, opaque: int) -> None:
        self.events.append(("func", opaque, threading.current_thread()))

    def destroy(self, opaque: int) -> None:
        self.events.append(("destroy", opaque, threading.current_thread()))


def queue_completions(context: MainContext, recorder: Recorder, count: int = 3) -> list[Task[None]]:
    """``count`` tasks ``queued-<i>`` of ``context``, completed from another
    thread while no loop runs it: their completions wait in its queue."""
    tasks: list[Task[None]] = [
        Task(None, recorder.func, i, recorder.destroy, context=context, name=f"queued-{i}") for i in range(count)
    ]

    def complete_all() -> None:
        for task in tasks:
            task.complete()

    join(start_thread(complete_all, "completer"))
    assert recorder.events == []  # queued: the loop never ran
    return tasks


def assert_failed_in_close(tasks: list[Task[None]], recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    """The queued completions of ``tasks`` failed in close(), on this thread:
    destroyed without func, ContextClosedError naming each, one warning each."""
    main = threading.current_thread()
    assert recorder.events == [("destroy", i, main) for i in range(len(tasks))]
    for i, task in enumerate(tasks):
        assert task.state is TaskState.FINISHED
        error = task.propagate_error()
        assert isinstance(error, ContextClosedError) and f"queued-{i}" in str(error)
    messages = [r.getMessage() for r in caplog.records if r.name == "qiotask" and r.levelno == logging.WARNING]
    assert len(messages) == len(tasks)
    assert all(f"queued-{i}" in m for i, m in enumerate(messages))


def test_completions_queued_before_close_fail_in_close(caplog: pytest.LogCaptureFixture) -> None:
    closing = MainContext(name="closing")
    recorder = Recorder()
    tasks = queue_completions(closing, recorder)
    with caplog.at_level(logging.WARNING, logger="qiotask"):
        closing.close()  # type: ignore[attr-defined]
    assert_failed_in_close(tasks, recorder, caplog)
    closing.close()  # type: ignore[attr-defined]  # twice is harmless
    assert len(recorder.events) == 3


# -- shutdown ----------------------------------------------------------------------


def test_shutdown_returns_true_when_nothing_is_pending(runner: LoopRunner) -> None:
    task: Task[str] = Task(None)
    task.add_done_callback(runner.quit)
    task.run_in_thread(lambda t, o: "ok")
    runner.run(timeout=5)
    assert task.get_result() == "ok"
    assert qiotask.shutdown(timeout=5) is True


# -- watches for hang-up only, interrupted batches ------------------------------------


def test_hangup_only_watch_does_not_spin_on_unread_data(
    runner: LoopRunner, pair: SocketPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = runner.context
    a, b = pair
    ready_calls = [0]
    original = ctx._fd_ready

    def counting_fd_ready(fd: int) -> None:
        ready_calls[0] += 1
        original(fd)

    monkeypatch.setattr(ctx, "_fd_ready", counting_fd_ready)
    hangups: list[IOCondition] = []

    def on_hangup(fd: int, condition: IOCondition) -> bool:
        hangups.append(condition)
        runner.quit()
        return False

    ctx.io_add_watch(a, IO_HUP, on_hangup)
    b.send(b"unread data")  # readable for good: a watch for IO_HUP alone must not spin
    ctx.timeout_add(100, lambda: b.close())
    runner.run()
    assert len(hangups) == 1 and hangups[0] & IO_HUP
    # In the 100 ms before the hang-up, at most ~1 wake-up per HANGUP_POLL_INTERVAL.
    assert ready_calls[0] <= 0.1 / qiotask._context.HANGUP_POLL_INTERVAL + 5, ready_calls[0]


def test_keyboard_interrupt_in_a_batch_leaves_the_rest_scheduled(runner: LoopRunner) -> None:
    ctx = runner.context
    ran: list[str] = []

    def interrupt() -> None:
        ran.append("interrupt")
        raise KeyboardInterrupt

    ctx.call_soon(interrupt)
    ctx.call_soon(ran.append, "after")
    with pytest.raises(KeyboardInterrupt):
        runner.loop.run()
    ctx.call_soon(runner.quit)  # a second run finds "after" still scheduled
    runner.run()
    assert ran == ["interrupt", "after"]


def test_fd_the_loop_refuses_leaves_nothing_behind(ctx: qiotask.MainContext, runner: Any, tmp_path: Any) -> None:
    """asyncio refuses a regular file (EPERM from epoll): io_add_watch
    raises, and nothing is left registered -- a socket that gets the same
    fd number next is watched as any other."""
    with open(tmp_path / "file", "wb") as file:
        fd = file.fileno()
        with pytest.raises(OSError):
            ctx.io_add_watch(fd, qiotask.IO_IN, lambda *_: False)
    a, b = socket.socketpair()
    with a, b:
        if fd not in (a.fileno(), b.fileno()):
            pytest.skip("the fd number was not reused; nothing to check")
        reader = a if a.fileno() == fd else b
        fired: list[qiotask.IOCondition] = []
        ctx.io_add_watch(reader, qiotask.IO_IN, lambda _fd, cond: fired.append(cond))
        (b if reader is a else a).send(b"x")
        runner.run_until(lambda: bool(fired))
        assert fired == [qiotask.IO_IN]


def test_sources_added_to_a_closed_context_are_removed_at_once(pair: SocketPair) -> None:
    """A closed context runs nothing: timeout_add, idle_add and io_add_watch
    return a removed source (no error from the dead loop), whether called
    on its thread or from another one."""
    a, _ = pair
    closed = qiotask.MainContext(name="closed")
    closed.close()
    made: list[qiotask.Source] = []

    def add_all() -> None:
        made.append(closed.timeout_add(10, lambda: True))
        made.append(closed.idle_add(lambda: True))
        made.append(closed.io_add_watch(a, qiotask.IO_IN, lambda *_: True))

    add_all()
    other = threading.Thread(target=add_all, name="adder")
    other.start()
    other.join(5)
    assert len(made) == 6 and all(source.removed for source in made)


@pytest.mark.parametrize("ms", [10**400, math.inf, 1e300], ids=["10**400", "inf", "1e300"])
def test_a_timeout_beyond_any_clock_is_accepted_and_never_fires(
    ctx: MainContext, runner: LoopRunner, ms: float
) -> None:
    # It used to raise OverflowError (10**400) or overflow the loop's timer.
    fired: list[float] = []
    source = ctx.timeout_add(ms, fired.append, ms)
    ctx.timeout_add(20, runner.quit)
    runner.run()
    assert fired == []
    assert not source.removed
    source.remove()


def test_a_timeout_longer_than_a_loop_timer_waits_in_steps(
    ctx: MainContext, runner: LoopRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qiotask._context, "_TIMER_STEP", 0.01)
    asked: list[float] = []
    call_later = ctx._call_later  # type: ignore[attr-defined]

    def counting(delay: float, fn: Any) -> Any:
        asked.append(delay)
        return call_later(delay, fn)

    monkeypatch.setattr(ctx, "_call_later", counting)
    start = time.monotonic()
    fired: list[float] = []
    ctx.timeout_add(50, lambda: fired.append(time.monotonic() - start) or runner.quit())
    runner.run()
    assert len(fired) == 1 and fired[0] >= 0.05
    assert len(asked) >= 5 and max(asked) <= 0.01


def test_closing_an_attached_asyncio_context_stops_its_sources_and_attach_makes_a_new_one(pair: SocketPair) -> None:
    # close() of a context whose asyncio loop lives on: its timeouts and fd
    # watches run no more (the fd is no longer watched by the loop), and the
    # loop gets a fresh context from attach().
    a, b = pair
    loop = asyncio.new_event_loop()
    try:
        ctx = qiotask.attach(loop)
        ran: list[str] = []
        ctx.timeout_add(0, lambda: ran.append("timeout") or True)
        ctx.io_add_watch(a, IO_IN, lambda fd, cond: ran.append("watch") or True)
        b.send(b"x")  # a readable for good: a live watch would fire on every pass
        ctx.close()
        loop.run_until_complete(asyncio.sleep(0.05))
        assert ran == []
        assert not loop._selector.get_map() or a.fileno() not in loop._selector.get_map()  # type: ignore[attr-defined]
        fresh = qiotask.attach(loop)
        assert fresh is not ctx and not fresh.closed
        fresh.call_soon(ran.append, "fresh")
        loop.run_until_complete(asyncio.sleep(0))
        assert ran == ["fresh"]
        fresh.close()
    finally:
        loop.close()


def test_a_source_raising_keyboard_interrupt_is_removed(ctx: MainContext, runner: LoopRunner, pair: SocketPair) -> None:
    # GLib's rule -- a source whose function raises is over -- holds for
    # KeyboardInterrupt too: it stops the loop once, not on every pass.
    a, b = pair
    calls: list[str] = []

    def interrupt(*args: Any) -> bool:
        calls.append("called")
        raise KeyboardInterrupt

    watch = ctx.io_add_watch(a, IO_IN, interrupt)
    timer = ctx.timeout_add(0, interrupt)
    b.send(b"x")
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            runner.run(timeout=5)
    assert calls == ["called", "called"]
    assert watch.removed and timer.removed
    ctx.timeout_add(20, runner.quit)
    runner.run()  # neither fires again
    assert calls == ["called", "called"]


def test_a_context_collected_with_completions_queued_fails_them() -> None:
    # A context dropped with completions still queued is freed by the cyclic
    # GC (its queue holds tasks that hold it), which clears weak references
    # before finalizers run: its __del__ must still fail them, once.
    loop = asyncio.new_event_loop()
    ctx = qiotask.attach(loop)
    destroyed: list[str] = []
    task: Task[None] = Task(None, None, "opaque", destroyed.append, context=ctx)
    join(start_thread(task.complete, "completer"))  # queued; the loop never runs
    assert destroyed == []
    del task, ctx, loop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the unclosed loop's own warning
        gc.collect()
    assert destroyed == ["opaque"]


def test_contexts_of_qiotasks_own_loops_are_closed_at_exit() -> None:
    # An embedded asyncio context and a standalone trio context that no loop
    # ran: at exit, before the interpreter starts tearing down, they are
    # closed (the loop's fds with them, so no "unclosed" ResourceWarning),
    # and the completion still queued on each fails, running its destroy
    # notifier; func never runs.
    import subprocess
    import sys
    import textwrap

    from .conftest import STRICT_WARNINGS

    script = textwrap.dedent(
        """
        import atexit
        atexit.register(lambda: print("last exit handler", flush=True))  # runs after qiotask's
        import threading, qiotask
        from qiotask.loops.trio import TrioContext

        contexts = [qiotask.MainContext(name="embedded"), TrioContext(name="standalone")]
        for ctx in contexts:
            task = qiotask.Task(None, lambda s, e, o: print("func ran"), ctx.name,
                                lambda name: print("destroyed", name, flush=True), context=ctx)
            thread = threading.Thread(target=task.complete)  # posted: not the context's thread
            thread.start()
            thread.join()
        print("exiting", flush=True)
        """
    )
    out = subprocess.run([sys.executable, *STRICT_WARNINGS, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "exiting"
    assert sorted(lines[1:3]) == ["destroyed embedded", "destroyed standalone"]
    assert lines[3:] == ["last exit handler"]
    assert "ResourceWarning" not in out.stderr


def test_a_closed_attached_context_stops_watching_its_fd_even_once_freed(pair: SocketPair) -> None:
    # The fd watch of a closed context goes the next time the fd is ready,
    # on the loop's thread; the loop's reader keeps the context alive until
    # then, even after attach() made the loop a new context and nothing
    # else holds the old one (before, a freed context left a reader that
    # did nothing, and a ready fd spun the loop).
    r, w = pair

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        ctx = qiotask.attach(loop)
        ctx.io_add_watch(r.fileno(), qiotask.IO_IN, lambda fd, cond: True)
        ctx.close()
        assert qiotask.attach(loop) is not ctx
        del ctx
        gc.collect()
        w.send(b"x")
        for _ in range(3):  # loop iterations with the fd ready
            await asyncio.sleep(0)
        return loop.remove_reader(r.fileno())  # True: a reader was still there

    assert asyncio.run(main()) is False


# -- guardrails: the default context stranded, a loop never run ------------------


def test_a_task_stranded_on_the_default_context_warns_and_only_then() -> None:
    made: list[Task[Any]] = []

    def plain_thread() -> None:
        made.append(Task(None, name="stranded"))  # no context=: the default one

    async def main() -> None:
        # Joined from the loop on purpose: the mistake is made while asyncio.run() runs here.
        join(start_thread(plain_thread, "plain"))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
    assert made[0].context is qiotask.default_context()
    made[0].complete()  # here, the default context's thread: settled at once
    [warning] = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    message = str(warning.message)
    assert "thread 'plain' runs no event loop, so a task made here belongs to the default context" in message
    assert "while the main thread runs asyncio.run(): the task's completion would never run" in message
    assert "Pass context= the loop's context (qiotask.get_context() called on the loop's thread" in message
    assert warning.filename == __file__  # it points at the Task(...) line, not into qiotask

    # Not stranded: made before the default loop runs (the main thread runs
    # no loop), or while it runs.
    made.clear()
    loop = MainLoop()

    def from_the_loop() -> None:
        join(start_thread(plain_thread, "while the loop runs"))
        for task in made:
            task.complete()  # on the context thread: func runs now
        loop.quit()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        join(start_thread(plain_thread, "before the loop runs"))
        qiotask.default_context().call_soon(from_the_loop)
        loop.run()
    assert [str(w.message) for w in caught] == []
    assert len(made) == 2 and all(task.done() and task.context is qiotask.default_context() for task in made)


def test_a_loop_attached_from_another_thread_while_it_runs_delivers_on_its_own_thread() -> None:
    ran_on: list[str] = []

    def plain_thread(loop: asyncio.AbstractEventLoop) -> None:
        task: Task[int] = Task(
            None, lambda source, err, opaque: ran_on.append(threading.current_thread().name), context=loop
        )
        task.complete(1)  # not this thread's loop: posted to it, not run here

    async def main() -> None:
        loop = asyncio.get_running_loop()
        join(start_thread(lambda: plain_thread(loop), "plain"))
        await asyncio.sleep(0)  # the posted completion runs
        while not ran_on:
            await asyncio.sleep(0.001)

    asyncio.run(main())
    assert ran_on == [threading.current_thread().name]


def test_a_context_closed_before_its_loop_ever_ran_says_how_to_run_it(caplog: pytest.LogCaptureFixture) -> None:
    never = MainContext(name="never run")
    ran = MainContext(name="ran once")
    tasks = [Task(None, context=context, name=context.name) for context in (never, ran)]
    loop = MainLoop(ran)
    ran.call_soon(loop.quit)
    loop.run()
    with caplog.at_level(logging.WARNING, logger="qiotask"):
        for task in tasks:
            join(start_thread(task.complete, "completer"))  # posted: queued until the loop runs
        for context in (never, ran):
            context.close()  # type: ignore[attr-defined]
    errors = [str(task.exception()) for task in tasks]
    hint = "; its loop was never run: call qiotask.MainLoop(context).run() with this context ('never run')"
    assert errors[0].endswith("func was not called" + hint)
    assert errors[1].endswith("func was not called")  # it ran, then stopped: no such hint
    assert [r.getMessage().endswith(hint) for r in caplog.records] == [True, False]


DEFAULT_NEVER_RUN = """
import threading
import qiotask
task = qiotask.Task("localhost", lambda source, err, opaque: print("func ran"))
completer = threading.Thread(target=task.complete, args=(42,))
completer.start()
completer.join()  # posted to the default context, whose loop nobody runs
"""


def test_the_default_loop_never_run_says_so_at_exit() -> None:
    done = subprocess.run(
        [sys.executable, *STRICT_WARNINGS, "-c", DEFAULT_NEVER_RUN], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout == ""
    assert (
        "its context 'default' is gone; its loop was never run: call qiotask.MainLoop().run() on the main thread "
        "once the work is started, or make the tasks inside asyncio.run()"
    ) in done.stderr
