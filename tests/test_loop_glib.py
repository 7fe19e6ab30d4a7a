"""The GLib adapter: attach identity, threads, coexistence with GLib's own
sources, close(), bad input, and a load test.

The loop contract every adapter keeps runs in tests/conformance.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import qiotask
import qiotask._context
from qiotask import IO_IN, ContextClosedError, IOCondition, Task, TaskStateError, _adapters
from qiotask.loops.asyncio import AsyncioContext

from .conftest import SocketPair, count_wakeups, join

try:
    from gi.repository import GLib  # type: ignore[import-untyped]

    from qiotask.loops import glib as glib_adapter
    from qiotask.loops.glib import GLibContext
except ImportError as exc:  # the toolkit is missing
    if os.environ.get("QIOTASK_REQUIRE_ALL_LOOPS") == "1":
        raise
    pytest.skip(f"GLib cannot be loaded here: {exc}", allow_module_level=True)


@pytest.fixture
def glib_ctx() -> Iterator[Any]:
    """A fresh GLib.MainContext; its qiotask attachment is closed afterwards."""
    context = GLib.MainContext()
    yield context
    attached = glib_adapter._attached_to(hash(context))
    if attached is not None:
        attached._dispatch()  # completions handed over at the very end
        attached.close()


def glib_source(source: Any, glib_ctx: Any, fn: Callable[[], Any]) -> Any:
    """Attach a plain GLib source (GLib's side, not qiotask's) running ``fn``."""
    source.set_callback(lambda *_data: bool(fn()))  # PyGObject < 3.51 passes a None
    source.attach(glib_ctx)
    return source


def run_glib(loop: Any, timeout: float = 10.0) -> None:
    """Run a GLib.MainLoop until its quit(); fail if that takes ``timeout`` s."""
    timed_out: list[bool] = []

    def give_up() -> bool:
        timed_out.append(True)
        loop.quit()
        return False

    guard = glib_source(GLib.timeout_source_new(int(timeout * 1000)), loop.get_context(), give_up)
    try:
        loop.run()
    finally:
        guard.destroy()
    assert not timed_out, f"the GLib loop ran {timeout} s without quit()"


def attach(glib_object: Any) -> GLibContext:
    """qiotask.attach(), typed for this adapter."""
    ctx = qiotask.attach(glib_object)
    assert isinstance(ctx, GLibContext)
    return ctx


# -- attach ---------------------------------------------------------------------


def test_attach_returns_one_context_per_glib_context(glib_ctx: Any) -> None:
    first, second = GLib.MainContext.default(), GLib.MainContext.default()
    assert first is not second  # two wrappers of one GMainContext
    default = attach(first)
    assert qiotask.attach(second) is default
    assert qiotask.attach(GLib.MainLoop()) is default  # a loop means its context

    mine = attach(glib_ctx)
    assert mine is not default
    assert qiotask.attach(glib_ctx) is mine
    assert qiotask.attach(GLib.MainLoop.new(glib_ctx, False)) is mine
    glib_ctx.push_thread_default()
    try:
        other_wrapper = GLib.MainContext.ref_thread_default()
        assert other_wrapper is not glib_ctx
        assert qiotask.attach(other_wrapper) is mine
    finally:
        glib_ctx.pop_thread_default()
    assert mine.glib_context is glib_ctx
    task: Task[Any] = Task(None, context=glib_ctx)  # Task(context=) attaches too
    assert task.context is mine
    task.complete()


def test_attach_from_many_threads_at_once_makes_one_context(glib_ctx: Any) -> None:
    results: list[qiotask.MainContext] = []
    barrier = threading.Barrier(4)

    def attach() -> None:
        barrier.wait(10)
        results.append(qiotask.attach(glib_ctx))

    threads = [threading.Thread(target=attach, name=f"attacher-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        join(thread)
    assert len(results) == 4 and len({id(ctx) for ctx in results}) == 1


def test_an_attachment_lives_while_used_and_is_not_kept_after() -> None:
    glib_ctx = GLib.MainContext()
    key = hash(glib_ctx)
    ctx = attach(glib_ctx)
    ref = weakref.ref(ctx)
    task: Task[Any] = Task(None, context=ctx)
    del ctx
    gc.collect()
    assert ref() is not None  # the task holds it
    assert qiotask.attach(glib_ctx) is ref()
    task.complete()  # on the context thread: runs here, now
    del task
    gc.collect()
    assert ref() is None
    assert key not in glib_adapter._attached

    # GLib's global default context is attached for the life of the process.
    default_ref = weakref.ref(qiotask.attach(GLib.MainContext.default()))
    gc.collect()
    assert default_ref() is qiotask.attach(GLib.MainContext.default())


def test_bad_input(glib_ctx: Any) -> None:
    with pytest.raises(TypeError, match="cannot attach to a Variant"):
        qiotask.attach(GLib.Variant("i", 1))  # a GLib object, but no context
    with pytest.raises(TypeError, match=r"needs a GLib\.MainContext"):
        GLibContext(object())
    ctx = attach(glib_ctx)
    with pytest.raises(ValueError, match="attached already"):
        GLibContext(glib_ctx)
    assert qiotask.attach(glib_ctx) is ctx


# -- threads ----------------------------------------------------------------------


def test_worker_completion_on_the_global_default_context_run_by_glib() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("needs the main thread, which the global default context belongs to")
    loop = GLib.MainLoop()
    ctx = attach(GLib.MainContext.default())
    assert ctx.thread is threading.main_thread()
    assert qiotask.get_context() is not ctx  # outside a GLib callback: nothing detected
    seen: dict[str, Any] = {}

    def worker(task: Task[Any], opaque: Any) -> int:
        seen["worker"] = threading.current_thread()
        return 42

    def func(source: Any, err: BaseException | None, opaque: Any) -> None:
        seen["func"] = threading.current_thread()
        seen["err"] = err
        seen["detected"] = qiotask.get_context()  # inside a GLib callback
        loop.quit()

    task: Task[Any] = Task(None, func, context=ctx)
    task.run_in_thread(worker)
    run_glib(loop)
    assert seen["func"] is threading.main_thread()
    assert seen["worker"] is not threading.main_thread()
    assert seen["err"] is None and task.get_result() == 42
    assert seen["detected"] is ctx


def test_the_global_default_belongs_to_the_main_thread_when_attached_elsewhere() -> None:
    attach(GLib.MainContext.default()).close()  # so that the worker attaches anew
    seen: dict[str, Any] = {}

    def attach_here() -> None:
        ctx = attach(GLib.MainContext.default())
        seen["ctx"] = ctx
        seen["owner"] = ctx.is_owner()

    thread = threading.Thread(target=attach_here, name="attacher")
    thread.start()
    join(thread)
    assert seen["ctx"].thread is threading.main_thread()
    assert not seen["owner"]


def test_thread_default_context_of_another_thread_gets_its_completions(glib_ctx: Any) -> None:
    loop = GLib.MainLoop.new(glib_ctx, False)
    running = threading.Event()
    seen: list[tuple[str, threading.Thread, Any]] = []
    made: list[Task[Any]] = []

    def record(label: str) -> Callable[[Any, BaseException | None, Any], None]:
        def func(source: Any, err: BaseException | None, opaque: Any) -> None:
            seen.append((label, threading.current_thread(), err))
            if len(seen) == 2:
                loop.quit()

        return func

    def started() -> bool:
        # In a GLib callback of the thread-default context: Task() finds it.
        task: Task[Any] = Task(None, record("worker"))
        made.append(task)
        task.run_in_thread(lambda task, opaque: "from a worker")
        running.set()
        return False

    def thread_main() -> None:
        glib_ctx.push_thread_default()
        try:
            glib_source(GLib.idle_source_new(), glib_ctx, started)
            run_glib(loop)
        finally:
            glib_ctx.pop_thread_default()

    thread = threading.Thread(target=thread_main, name="glib-thread")
    thread.start()
    assert running.wait(10)
    ctx = attach(glib_ctx)  # from here, while glib-thread runs it
    assert made[0].context is ctx
    assert not ctx.is_owner()
    from_here: Task[Any] = Task(None, record("main"), context=ctx)
    from_here.complete("from the main thread")  # handed over to glib-thread
    join(thread)
    assert sorted(label for label, _, _ in seen) == ["main", "worker"]
    assert {t for _, t, _ in seen} == {thread}
    assert all(err is None for _, _, err in seen)
    assert made[0].get_result() == "from a worker"
    assert from_here.get_result() == "from the main thread"
    assert ctx.thread is thread


def test_owner_is_the_thread_running_the_glib_loop_even_before_it_dispatches(glib_ctx: Any) -> None:
    ctx = attach(glib_ctx)
    me = threading.current_thread()
    assert ctx.is_owner() and ctx.thread is me  # the attaching thread, before the loop runs
    loop = GLib.MainLoop.new(glib_ctx, False)
    running = threading.Event()
    called: list[threading.Thread] = []

    def thread_main() -> None:
        glib_source(GLib.idle_source_new(), glib_ctx, running.set)
        run_glib(loop)

    thread = threading.Thread(target=thread_main, name="glib-runner")
    thread.start()
    assert running.wait(10)
    # GLib says another thread runs the context: completing here hands over.
    assert not ctx.is_owner()

    def func(source: Any, err: BaseException | None, opaque: Any) -> None:
        called.append(threading.current_thread())
        loop.quit()

    task: Task[Any] = Task(None, func, context=ctx)
    task.complete()
    join(thread)
    assert called == [thread]
    assert ctx.thread is thread
    # The GLib loop is gone: the thread recorded last is this context's thread.
    assert not ctx.is_owner()


def test_a_loop_running_on_top_of_glib_wins_the_detection() -> None:
    # Qt's event dispatcher (on Linux) and PyGObject's asyncio loop run inside
    # GLib dispatches; here an asyncio loop run from a GLib callback stands in
    # for them.  GLib's row of the adapter table is a fallback: asked last.
    assert _adapters.spec("glib").fallback
    glib_ctx = GLib.MainContext()
    loop = GLib.MainLoop.new(glib_ctx, False)
    seen: dict[str, Any] = {}

    async def in_asyncio() -> None:
        seen["asyncio"] = qiotask.get_context()
        seen["running"] = asyncio.get_running_loop()

    def in_glib() -> bool:
        seen["glib"] = qiotask.get_context()
        asyncio.run(in_asyncio())
        loop.quit()
        return False

    glib_ctx.push_thread_default()
    try:
        glib_source(GLib.idle_source_new(), glib_ctx, in_glib)
        run_glib(loop)
    finally:
        glib_ctx.pop_thread_default()
    try:
        assert seen["glib"] is attach(glib_ctx)
        assert isinstance(seen["asyncio"], AsyncioContext) and seen["asyncio"].loop is seen["running"]
    finally:
        seen["glib"].close()


def test_qiotask_mainloop_runs_it_as_the_thread_default(glib_ctx: Any) -> None:
    ctx = attach(glib_ctx)
    loop = qiotask.MainLoop(ctx)
    seen: dict[str, Any] = {}

    def inside() -> None:
        seen["thread_default"] = GLib.MainContext.ref_thread_default()
        seen["detected"] = qiotask.get_context()
        loop.quit()

    ctx.idle_add(inside)
    guard = ctx.timeout_add(10_000, loop.quit)
    loop.run()
    guard.remove()
    assert seen["thread_default"] == glib_ctx
    assert seen["detected"] is ctx
    assert GLib.MainContext.ref_thread_default() != glib_ctx  # popped again


def test_qiotask_mainloop_refuses_a_context_another_thread_runs(glib_ctx: Any) -> None:
    ctx = attach(glib_ctx)
    glib_loop = GLib.MainLoop.new(glib_ctx, False)
    running = threading.Event()

    def thread_main() -> None:
        glib_source(GLib.idle_source_new(), glib_ctx, running.set)
        run_glib(glib_loop)

    thread = threading.Thread(target=thread_main, name="glib-runner")
    thread.start()
    try:
        assert running.wait(10)
        with pytest.raises(TaskStateError, match="another thread runs"):
            qiotask.MainLoop(ctx).run()
    finally:
        glib_loop.quit()
        join(thread)


def test_keyboard_interrupt_in_a_batch_stops_qiotask_mainloop_and_the_rest_stays_scheduled(glib_ctx: Any) -> None:
    # PyGObject prints an exception escaping a callback and loops on; under
    # qiotask.MainLoop it stops the loop, as on asyncio.
    ctx = attach(glib_ctx)
    loop = qiotask.MainLoop(ctx)
    ran: list[str] = []

    def interrupt() -> None:
        ran.append("interrupt")
        raise KeyboardInterrupt

    def give_up() -> bool:
        ran.append("timed out")
        ctx._stop_loop()
        return False

    guard = glib_source(GLib.timeout_source_new(10_000), glib_ctx, give_up)
    try:
        ctx.call_soon(interrupt)
        ctx.call_soon(ran.append, "after")
        with pytest.raises(KeyboardInterrupt):
            loop.run()
        ctx.call_soon(loop.quit)  # a second run finds "after" still scheduled
        loop.run()
    finally:
        guard.destroy()
    assert ran == ["interrupt", "after"]


# -- coexistence -----------------------------------------------------------------


def test_glib_sources_and_qiotask_sources_share_the_context(glib_ctx: Any, pair: SocketPair) -> None:
    a, b = pair
    ctx = attach(glib_ctx)
    loop = GLib.MainLoop.new(glib_ctx, False)
    seen: list[tuple[str, threading.Thread]] = []
    expected = {"glib-timeout", "glib-idle", "glib-fd", "qiotask-timeout", "qiotask-idle", "qiotask-io", "task"}

    def add(label: str) -> None:
        seen.append((label, threading.current_thread()))
        if {name for name, _ in seen} == expected:
            loop.quit()

    def qiotask_readable(fd: int, condition: IOCondition) -> bool:
        assert condition & IO_IN
        add("qiotask-io")
        a.recv(100)
        return False

    # GLib's side: plain GLib sources on the same context, one on the same fd.
    glib_source(GLib.timeout_source_new(5), glib_ctx, lambda: add("glib-timeout"))
    glib_source(GLib.idle_source_new(), glib_ctx, lambda: add("glib-idle"))
    # (GLibUnix.fd_source_new, or GLib.unix_fd_source_new before GLib 2.80.)
    fd_source_new = glib_adapter._fd_source_new()
    glib_source(fd_source_new(a.fileno(), GLib.IOCondition.IN), glib_ctx, lambda: add("glib-fd"))

    # qiotask's side.
    def qiotask_timeout() -> bool:
        add("qiotask-timeout")
        b.send(b"x")
        return False

    ctx.timeout_add(5, qiotask_timeout)
    ctx.idle_add(add, "qiotask-idle")
    ctx.io_add_watch(a, IO_IN, qiotask_readable)
    task: Task[None] = Task(None, lambda s, e, o: add("task"), context=ctx)
    task.run_in_thread(lambda task, opaque: None)
    run_glib(loop)
    assert {name for name, _ in seen} == expected
    assert {thread for _, thread in seen} == {threading.current_thread()}


def test_timers_and_watches_attach_to_this_context_not_the_global_default(glib_ctx: Any, pair: SocketPair) -> None:
    ctx = attach(glib_ctx)
    timer = ctx.timeout_add(1000, lambda: False)
    ctx.io_add_watch(pair[0], IO_IN, lambda fd, condition: False)
    glib_sources = [timer._handle._source, *ctx._driver._fd_sources.values()]  # type: ignore[union-attr]
    assert len(glib_sources) == 2
    assert all(source.get_context() == glib_ctx for source in glib_sources)
    assert all(source.get_context() != GLib.MainContext.default() for source in glib_sources)


# -- close ---------------------------------------------------------------------------


def test_close_removes_qiotask_sources_and_leaves_glibs(glib_ctx: Any, pair: SocketPair) -> None:
    a, b = pair
    ctx = attach(glib_ctx)
    fired: list[str] = []
    ctx.timeout_add(1, lambda: fired.append("qiotask-timeout"))
    ctx.io_add_watch(a, IO_IN, lambda fd, condition: fired.append("qiotask-io"))
    ctx.idle_add(lambda: fired.append("qiotask-idle"))  # a wake-up source is pending
    b.send(b"x")  # the watch would fire at once
    ours = [ctx._driver._wake_source, *ctx._driver._fd_sources.values(), *(t._source for t in ctx._driver._timers)]
    assert len(ours) == 3
    ctx.close()
    assert ctx.closed
    assert all(source.is_destroyed() for source in ours)
    # GLib's own sources still run; qiotask's, due sooner, never do.
    loop = GLib.MainLoop.new(glib_ctx, False)

    def glib_timeout() -> bool:
        fired.append("glib-timeout")
        loop.quit()
        return False

    glib_source(GLib.timeout_source_new(30), glib_ctx, glib_timeout)
    run_glib(loop)
    assert fired == ["glib-timeout"]
    ctx.close()  # again: nothing happens
    assert ctx.closed


def test_close_fails_queued_and_later_completions(glib_ctx: Any) -> None:
    ctx = attach(glib_ctx)
    seen: list[tuple[str, Any, threading.Thread]] = []

    def make(name: str) -> Task[Any]:
        return Task(
            None,
            lambda s, e, o: seen.append(("func", o, threading.current_thread())),
            name,
            lambda o: seen.append(("destroy", o, threading.current_thread())),
            context=ctx,
            name=name,
        )

    queued, later = make("queued"), make("later")
    thread = threading.Thread(target=queued.complete, name="completer")
    thread.start()
    join(thread)  # handed over; the loop has not run
    ctx.close()
    assert seen == [("destroy", "queued", threading.current_thread())]  # failed in close()
    err = queued.propagate_error()
    assert isinstance(err, ContextClosedError) and "queued" in str(err)

    thread = threading.Thread(target=later.complete, name="late-completer")
    thread.start()
    join(thread)
    assert seen[1:] == [("destroy", "later", thread)]  # failed in the completing thread
    assert isinstance(later.propagate_error(), ContextClosedError)

    with pytest.raises(ContextClosedError):
        ctx._wakeup()
    with pytest.raises(ContextClosedError):
        qiotask.MainLoop(ctx).run()
    fresh = attach(glib_ctx)
    assert fresh is not ctx and not fresh.closed


def test_close_from_another_thread_ends_a_running_qiotask_mainloop(glib_ctx: Any) -> None:
    ctx = attach(glib_ctx)
    started = threading.Event()
    timed_out: list[bool] = []

    def give_up() -> bool:
        timed_out.append(True)
        ctx._stop_loop()  # MainLoop.quit() would go through the closed context
        return False

    guard = glib_source(GLib.timeout_source_new(10_000), glib_ctx, give_up)
    ctx.call_soon(started.set)

    def close_when_started() -> None:
        assert started.wait(10)
        ctx.close()

    closer = threading.Thread(target=close_when_started, name="closer")
    closer.start()
    try:
        qiotask.MainLoop(ctx).run()
    finally:
        guard.destroy()
        join(closer)
    assert not timed_out and ctx.closed


def test_close_in_a_callback_leaves_the_glib_loop_running(glib_ctx: Any) -> None:
    ctx = attach(glib_ctx)
    loop = GLib.MainLoop.new(glib_ctx, False)
    errors: list[BaseException | None] = []

    def func(source: Any, err: BaseException | None, opaque: Any) -> None:
        ctx.close()  # on the context thread, from qiotask's own dispatch
        late: Task[Any] = Task(None, context=ctx)
        late.complete()  # closed: fails at once, here
        errors.append(late.propagate_error())
        glib_source(GLib.idle_source_new(), glib_ctx, loop.quit)  # GLib goes on

    Task(None, func, context=ctx).complete()  # on the owner thread: func runs now
    run_glib(loop)
    assert len(errors) == 1 and isinstance(errors[0], ContextClosedError)


# -- load ------------------------------------------------------------------------------


def test_load_20000_completions_from_two_threads_delivered_exactly_once(
    glib_ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = 20_000
    ctx = attach(glib_ctx)
    loop = GLib.MainLoop.new(glib_ctx, False)
    wakeups = count_wakeups(ctx, monkeypatch)
    calls = [0] * total
    done = [0]
    threads_seen: set[threading.Thread] = set()

    def func(source: Any, err: BaseException | None, i: int) -> None:
        assert err is None
        calls[i] += 1
        done[0] += 1
        threads_seen.add(threading.current_thread())
        if done[0] == total:
            loop.quit()

    tasks: list[Task[Any]] = [Task(None, func, i, context=ctx) for i in range(total)]
    # The producers start once the loop runs, so that posting and
    # dispatching overlap (the loop thread is the barrier's third party).
    go = threading.Barrier(3)

    def complete_all(part: list[Task[Any]]) -> None:
        go.wait(10)
        for task in part:
            task.complete(task.name)

    producers = [threading.Thread(target=complete_all, args=(tasks[i::2],), name=f"producer-{i}") for i in range(2)]
    for producer in producers:
        producer.start()
    glib_source(GLib.idle_source_new(), glib_ctx, lambda: go.wait(10) and False)
    try:
        run_glib(loop, timeout=30)
    finally:
        for producer in producers:
            join(producer)
    assert calls == [1] * total
    assert threads_seen == {threading.current_thread()}
    assert all(task.get_result() == task.name for task in tasks)
    assert 1 <= wakeups[0] <= total
