"""The tkinter adapter: what the contract suite cannot see.

attach() identity, callbacks that touch widgets while ``root.mainloop()``
runs, worker threads that never call Tcl, the after()/createfilehandler
sources, the polling fallback (with the whole loop contract run on it), a
root destroyed with tasks in flight, and a load of completions from two
threads.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import tkinter
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

import qiotask
from qiotask import IO_IN, IO_OUT, IOCondition, Task, TaskState, WorkerPool
from qiotask.loops import tk as tk_module  # tkinter ships with Python

from .backends import settle, thread_default, unavailable
from .backends.tk import new_root, root_alive
from .conformance import test_loop_contract as contract
from .conftest import LoopRunner, SocketPair, count_wakeups

TkContext = tk_module.TkContext

# How long a test may run its mainloop before it is stopped and failed.
GUARD_MS = 10_000


@pytest.fixture
def root() -> Iterator[tkinter.Tk]:
    try:
        made = new_root()
    except RuntimeError as exc:
        unavailable(str(exc))
    yield made
    if root_alive(made):
        made.destroy()
    del made
    gc.collect()  # widget cycles die here, on the Tk thread (see backends/tk.py)


@pytest.fixture
def ctx(root: tkinter.Tk) -> Iterator[qiotask.MainContext]:
    context = qiotask.attach(root)
    yield context
    settle(context)


@pytest.fixture
def poll_ctx(root: tkinter.Tk) -> Iterator[qiotask.MainContext]:
    context = TkContext(root, polling=True)
    yield context
    settle(context)


def run_mainloop(root: tkinter.Tk) -> None:
    """``root.mainloop()`` until a callback calls ``root.quit()`` (or destroys
    the root); fail if that takes over GUARD_MS."""
    timed_out: list[bool] = []

    def give_up() -> None:
        timed_out.append(True)
        root.quit()

    guard = root.after(GUARD_MS, give_up)
    root.mainloop()
    if root_alive(root):
        root.after_cancel(guard)
    else:
        root.tk.call("after", "cancel", guard)  # the interpreter outlives the window
    assert not timed_out, f"mainloop ran {GUARD_MS} ms without quit()"


def pending_afters(root: tkinter.Tk) -> tuple[str, ...]:
    return tuple(root.tk.splitlist(root.tk.call("after", "info")))


class TclCallRecorder:
    """A profile hook recording every call into a Tcl interpreter (a C method
    of ``_tkinter.tkapp``) made by the threads it is installed in."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        # Nothing from threading.current_thread() here: the hook also runs in
        # a thread's bootstrap, under the lock that call would take.
        if event == "c_call" and type(getattr(arg, "__self__", None)).__name__ == "tkapp":
            self.calls.append((threading.get_ident(), arg.__name__))


def in_thread(fn: Callable[[], Any], name: str = "helper") -> Any:
    """Run ``fn()`` on a new thread; return its result or raise its error."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join(10)
    assert outcome, f"thread {name!r} did not finish"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


# -- attach -------------------------------------------------------------------


def test_attach_returns_the_same_context(root: tkinter.Tk) -> None:
    ctx = qiotask.attach(root)
    assert isinstance(ctx, TkContext)
    assert qiotask.attach(root) is ctx
    assert qiotask.attach(tkinter.Label(root)) is ctx  # a widget: its root's context
    assert ctx.thread is threading.current_thread()
    assert not ctx.closed and not ctx.polling  # type: ignore[attr-defined]

    # From another thread: the same context, without a call into Tcl there.
    recorder = TclCallRecorder()

    def attach_recorded() -> qiotask.MainContext:
        sys.setprofile(recorder)
        try:
            return qiotask.attach(root)
        finally:
            sys.setprofile(None)

    assert in_thread(attach_recorded) is ctx
    assert recorder.calls == []
    with pytest.raises(qiotask.TaskStateError, match="already has a qiotask context"):
        TkContext(root)


def test_attach_a_subclass_of_tk(root: tkinter.Tk) -> None:
    class App(tkinter.Tk):
        pass

    app = App()
    app.update_idletasks()  # see new_root()
    try:
        assert isinstance(qiotask.attach(app), TkContext)
    finally:
        app.destroy()


def test_first_attach_off_the_tk_thread_fails(root: tkinter.Tk) -> None:
    with pytest.raises(qiotask.TaskStateError, match="thread that created it"):
        in_thread(lambda: qiotask.attach(root))
    assert isinstance(qiotask.attach(root), TkContext)  # the Tk thread still can


def test_mainloop_runs_on_the_tk_thread_only(ctx: qiotask.MainContext) -> None:
    with pytest.raises(qiotask.TaskStateError, match="thread that created it"):
        in_thread(qiotask.MainLoop(ctx).run)
    assert ctx.thread is threading.current_thread()


def test_attach_a_destroyed_root_gives_a_closed_context(root: tkinter.Tk) -> None:
    root.destroy()
    ctx = qiotask.attach(root)
    assert ctx.closed and qiotask.attach(root) is ctx
    task = Task(None, lambda s, e, o: pytest.fail("func ran"), context=ctx, name="late")
    task.complete()
    assert isinstance(task.propagate_error(), qiotask.ContextClosedError)


# -- completions ---------------------------------------------------------------


def test_worker_result_updates_a_label_in_mainloop(root: tkinter.Tk, ctx: qiotask.MainContext) -> None:
    label = tkinter.Label(root, text="working")
    label.pack()
    threads: dict[str, threading.Thread] = {}

    def worker(task: Task[str], opaque: Any) -> str:
        threads["worker"] = threading.current_thread()
        return "done"

    def func(source: tkinter.Label, err: BaseException | None, opaque: Any) -> None:
        threads["func"] = threading.current_thread()
        source["text"] = task.get_result()  # tkinter, from the callback
        root.quit()

    task: Task[str] = Task(label, func, context=ctx)
    task.run_in_thread(worker)
    run_mainloop(root)
    assert label.cget("text") == "done"
    assert threads["func"] is threading.current_thread()
    assert threads["worker"] is not threading.current_thread()


def test_workers_never_call_tcl(root: tkinter.Tk, ctx: qiotask.MainContext, pair: Any) -> None:
    a, _ = pair
    delivered: list[tuple[str, threading.Thread]] = []
    expected = 25  # 20 tasks, idle, timeout, io, call_soon, done-callback

    def note(what: str) -> Callable[..., bool]:
        def fn(*_: Any) -> bool:
            delivered.append((what, threading.current_thread()))
            if len(delivered) == expected:
                root.quit()
            return False

        return fn

    tasks = [Task(None, note("func"), context=ctx) for _ in range(20)]

    def post_sources() -> None:
        ctx.idle_add(note("idle"))
        ctx.timeout_add(1, note("timeout"))
        ctx.io_add_watch(a, IO_OUT, note("io"))
        ctx.timeout_add(60_000, note("never")).remove()
        ctx.call_soon(note("call_soon"))
        tasks[0].add_done_callback(note("done-callback"))

    # Every thread started from here on records its calls into Tcl.  The Tk
    # thread stays out of mainloop meanwhile: a Tcl call from another thread
    # would wait a second for it, then raise.
    recorder = TclCallRecorder()
    threading.setprofile(recorder)
    try:
        pool = WorkerPool(2, name="test-pool-tk")
        for task in tasks:
            task.run_in_thread(lambda t, o: "result", pool=pool)
        in_thread(post_sources, name="poster")
        assert pool.shutdown(timeout=10)  # the workers have returned and posted
    finally:
        threading.setprofile(None)
    assert recorder.calls == []
    assert delivered == []  # nothing runs before the Tk thread is back in its loop
    assert {task.state for task in tasks} == {TaskState.COMPLETING}

    run_mainloop(root)
    assert sorted({what for what, _ in delivered}) == ["call_soon", "done-callback", "func", "idle", "io", "timeout"]
    assert len(delivered) == expected
    assert {thread for _, thread in delivered} == {threading.current_thread()}


def test_exceptions_in_callbacks_do_not_end_mainloop(
    root: tkinter.Tk, ctx: qiotask.MainContext, pair: Any, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair

    def boom(*_: Any) -> None:
        raise ValueError("boom")

    Task(None, boom, context=ctx).run_in_thread(lambda t, o: None)
    ctx.io_add_watch(a, IO_IN, boom)
    b.send(b"x")
    ctx.timeout_add(1, boom)
    ctx.timeout_add(30, lambda: root.quit())
    with caplog.at_level(logging.ERROR, "qiotask"):
        run_mainloop(root)
    booms = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], ValueError)]
    assert len(booms) == 3


# -- sources -------------------------------------------------------------------


def test_timeout_add_is_a_tk_after(root: tkinter.Tk, ctx: qiotask.MainContext) -> None:
    before = pending_afters(root)
    fired: list[threading.Thread] = []

    def tick() -> bool:
        fired.append(threading.current_thread())
        if len(fired) == 2:
            root.quit()
            return False
        return True

    ticker = ctx.timeout_add(5, tick)
    assert len(pending_afters(root)) == len(before) + 1
    cancelled = ctx.timeout_add(60_000, lambda: pytest.fail("removed timer fired"))
    assert len(pending_afters(root)) == len(before) + 2
    cancelled.remove()
    assert len(pending_afters(root)) == len(before) + 1  # after_cancel
    run_mainloop(root)
    assert fired == [threading.current_thread()] * 2
    assert ticker.removed
    assert pending_afters(root) == before


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_in_a_timer_comes_out_of_the_loop(root: tkinter.Tk, ctx: qiotask.MainContext, kind: Any) -> None:
    # As from a completion or an idle source: tkinter's own after() would
    # print a KeyboardInterrupt and go on (its callback wrapper reports every
    # error but SystemExit), and MainLoop.run() would never return.
    def interrupt() -> bool:
        raise kind()

    source = ctx.timeout_add(1, interrupt)
    guard = root.after(GUARD_MS, root.quit)
    try:
        with pytest.raises(kind):
            qiotask.MainLoop(ctx).run()
    finally:
        root.after_cancel(guard)
    assert source.removed


def test_a_repeating_zero_ms_timer_starves_no_completion(root: tkinter.Tk, ctx: qiotask.MainContext) -> None:
    # A 0 ms timer re-armed from its own handler keeps a Tcl event pending
    # for ever, so Tcl never goes idle: a batch waiting for idle must run
    # anyway (it ran only once the timer stopped).
    ticks = [0]

    def tick() -> bool:
        ticks[0] += 1
        return True

    ticker = ctx.timeout_add(0, tick)
    task: Task[int] = Task(None, lambda s, e, o: root.quit(), context=ctx)
    task.run_in_thread(lambda t, o: 1)
    try:
        run_mainloop(root)
    finally:
        ticker.remove()
    assert task.done() and task.get_result() == 1
    assert ticks[0] > 0


def test_read_and_write_watches_share_one_file_handler(
    root: tkinter.Tk, ctx: qiotask.MainContext, pair: SocketPair
) -> None:
    a, b = pair
    fd = a.fileno()
    seen: list[tuple[str, IOCondition, threading.Thread]] = []

    def watch(fd: int, condition: IOCondition, label: str) -> bool:
        seen.append((label, condition, threading.current_thread()))
        if label == "in":
            assert a.recv(100) == b"ping"
        if {s[0] for s in seen} == {"in", "out"}:
            root.quit()
        return False

    reader = ctx.io_add_watch(a, IO_IN, watch, "in")
    writer = ctx.io_add_watch(fd, IO_OUT, watch, "out")
    assert ctx._driver._fd_handlers == {fd}  # type: ignore[attr-defined]
    assert ctx._io_mask[fd] == (True, True)
    b.send(b"ping")
    run_mainloop(root)
    assert sorted(s[0] for s in seen) == ["in", "out"]
    assert all(s[1] & (IO_IN if s[0] == "in" else IO_OUT) for s in seen)
    assert {s[2] for s in seen} == {threading.current_thread()}
    assert reader.removed and writer.removed
    assert ctx._driver._fd_handlers == set()  # type: ignore[attr-defined]


@pytest.mark.parametrize("flood", ["idle-source", "thread"])
def test_a_flood_starves_neither_idle_handlers_nor_timers(
    root: tkinter.Tk, ctx: qiotask.MainContext, flood: str
) -> None:
    # Tk redraws in idle handlers, which Tcl runs only when no event is
    # pending, and a chain of idle handlers keeps Tcl's timers from firing.
    # Flooded by an idle_add source that repeats forever (batches posted on
    # the Tk thread), or by a thread completing tasks as fast as the loop
    # takes them (batches handed over through the pipe), Tk's own timers and
    # idle handlers still take their turns.
    ticks: list[float] = []
    idles: list[float] = []
    flooded = [0]
    # Guards the flooding thread's state: stopping, and whether its burst ran.
    cond = threading.Condition()
    state = {"stop": False, "delivered": False}

    def tick() -> None:
        ticks.append(time.monotonic())
        if len(ticks) < 10:
            root.after(2, tick)
        else:
            root.quit()

    def idle_probe() -> None:
        idles.append(time.monotonic())
        root.after(1, lambda: root.after_idle(idle_probe))

    def spin() -> bool:
        flooded[0] += 1
        return True

    def set_state(key: str) -> None:
        with cond:
            state[key] = True
            cond.notify_all()

    def complete_bursts() -> None:
        # Each burst is handed over as soon as the last one ran: the loop
        # always has a batch waiting, and its queue stays short.
        while True:
            with cond:
                if state["stop"]:
                    return
                state["delivered"] = False
            burst: list[Task[None]] = [Task(None, context=ctx) for _ in range(10)]
            burst[-1].add_done_callback(lambda t: set_state("delivered"))
            for task in burst:
                task.complete()
            flooded[0] += 1
            with cond:
                cond.wait_for(lambda: state["stop"] or state["delivered"], timeout=10)

    root.after(2, tick)
    root.after_idle(idle_probe)
    if flood == "idle-source":
        source = ctx.idle_add(spin)
        try:
            run_mainloop(root)
        finally:
            source.remove()
    else:
        flooder = threading.Thread(target=complete_bursts, name="flooder")
        flooder.start()
        try:
            run_mainloop(root)
        finally:
            set_state("stop")
            flooder.join(10)
    assert len(ticks) == 10
    assert len(idles) >= 5
    assert flooded[0] > 10


def test_update_idletasks_returns_while_a_source_repeats(root: tkinter.Tk, ctx: qiotask.MainContext) -> None:
    # update_idletasks() runs idle handlers until none is left: were every
    # batch an idle handler, a source that re-posts itself would keep it
    # looping.  The source gives up after give_up spins, to fail, not hang.
    give_up = 100_000
    spins = [0]
    spins_inside: list[int] = []

    def spin() -> bool:
        spins[0] += 1
        return spins[0] < give_up

    def update() -> None:
        before = spins[0]
        root.update_idletasks()
        spins_inside.append(spins[0] - before)
        root.quit()

    source = ctx.idle_add(spin)
    root.after(5, update)
    try:
        run_mainloop(root)
    finally:
        source.remove()
    assert spins[0] < give_up  # the source never had to give up
    assert spins_inside and spins_inside[0] <= 1  # at most the batch that was at idle


# -- the polling fallback ------------------------------------------------------


def test_polling_is_chosen_without_createfilehandler(root: tkinter.Tk) -> None:
    assert tk_module._has_filehandler(root.tk)
    assert not tk_module._has_filehandler(object())  # a Windows tkapp has none


def test_polling_fallback(root: tkinter.Tk, poll_ctx: qiotask.MainContext, pair: Any) -> None:
    a, b = pair
    assert poll_ctx.polling and poll_ctx._driver._pipe is None  # type: ignore[attr-defined]
    assert qiotask.attach(root) is poll_ctx
    seen: list[tuple[str, threading.Thread]] = []
    wanted = {"worker", "completer", "io", "timeout"}

    def note(what: str) -> Callable[..., bool]:
        def fn(*args: Any) -> bool:
            seen.append((what, threading.current_thread()))
            if what == "io":
                a.recv(100)
            if {s[0] for s in seen} == wanted:
                root.quit()
            return False

        return fn

    Task(None, note("worker"), context=poll_ctx).run_in_thread(lambda t, o: "r")
    other = Task(None, note("completer"), context=poll_ctx)
    in_thread(other.complete)
    poll_ctx.io_add_watch(a, IO_IN, note("io"))
    poll_ctx.timeout_add(5, note("timeout"))
    in_thread(lambda: b.send(b"x"))
    started = time.monotonic()
    run_mainloop(root)
    assert {s[0] for s in seen} == wanted and len(seen) == len(wanted)
    assert {s[1] for s in seen} == {threading.current_thread()}
    assert time.monotonic() - started < 5
    root.destroy()
    assert poll_ctx.closed and pending_afters(root) == ()  # the polling tick is gone too


class TestPollingContract:
    """The per-loop contract (tests/conformance/test_loop_contract.py) again,
    on a context forced to poll, as on a Tcl without createfilehandler."""

    class Backend:
        def __init__(self, root: tkinter.Tk) -> None:
            self.root = root
            self.context = TkContext(root, polling=True, name="test-tk-polling")

        def close_loop(self) -> None:
            self.root.destroy()

        def cleanup(self) -> None:
            settle(self.context)

    @pytest.fixture
    def backend(self, root: tkinter.Tk) -> Iterator[TestPollingContract.Backend]:
        with thread_default(self.Backend(root)) as opened:
            yield opened

    @pytest.fixture
    def runner(self, backend: TestPollingContract.Backend) -> LoopRunner:
        return LoopRunner(backend.context)


for _name, _test in vars(contract).items():
    if _name.startswith("test_") and callable(_test):
        setattr(TestPollingContract, _name, staticmethod(_test))


# -- a root that goes away ------------------------------------------------------


def test_root_destroyed_with_tasks_in_flight(
    root: tkinter.Tk, ctx: qiotask.MainContext, pair: Any, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = pair
    seen: list[tuple[str, threading.Thread]] = []
    release = threading.Event()
    started = threading.Event()

    def note(what: str) -> Callable[..., None]:
        return lambda *_: seen.append((what, threading.current_thread()))

    def worker(task: Task[Any], opaque: Any) -> str:
        started.set()
        release.wait(10)
        return "late"

    running = Task(object(), note("running func"), None, note("running destroy"), context=ctx, name="running")
    running.run_in_thread(worker)
    queued = Task(object(), note("queued func"), None, note("queued destroy"), context=ctx, name="queued")
    in_thread(queued.complete)  # handed over, not yet dispatched: the Tk thread is busy here
    ctx.timeout_add(10, note("timer"))
    io_watch = ctx.io_add_watch(a, IO_OUT, note("io"))
    assert started.wait(5)
    assert len(pending_afters(root)) == 1  # the timer (the batch's wake-up waits in the pipe)
    pipe = ctx._driver._pipe  # type: ignore[attr-defined]

    with caplog.at_level(logging.WARNING, "qiotask"):
        root.destroy()
        assert ctx.closed
        # The queued completion failed at once, its destroy notifier ran here.
        assert seen == [("queued destroy", threading.current_thread())]
        assert isinstance(queued.propagate_error(), qiotask.ContextClosedError)
        # The running one fails when its worker returns, in the worker's thread.
        release.set()
        assert running.wait(10)
        err = running.propagate_error()
        assert isinstance(err, qiotask.ContextClosedError) and "running" in str(err)
        assert [s[0] for s in seen] == ["queued destroy", "running destroy"]
        assert seen[1][1] is not threading.current_thread()
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "'queued'" in warned and "'running'" in warned

    # What was Tk's is gone: timers, the batch, the file handlers, the pipe.
    assert pending_afters(root) == ()
    assert ctx._driver._fd_handlers == set()  # type: ignore[attr-defined]
    assert pipe.closed
    # The watches are let go too: their functions may hold widgets, and the
    # context lives on in the running task.
    assert io_watch.removed and ctx._io == {}
    with pytest.raises(qiotask.ContextClosedError):
        ctx._wakeup()
    with pytest.raises(qiotask.ContextClosedError):
        qiotask.MainLoop(ctx).run()
    assert qiotask.attach(root) is ctx
    late = Task(None, note("late func"), context=ctx)
    with caplog.at_level(logging.ERROR, "qiotask"):
        late.complete()
    assert isinstance(late.propagate_error(), qiotask.ContextClosedError)
    assert "late func" not in [s[0] for s in seen]


def test_root_destroyed_by_a_callback_in_mainloop(root: tkinter.Tk, ctx: qiotask.MainContext) -> None:
    seen: list[str] = []
    first = Task(None, lambda s, e, o: (seen.append("first"), root.destroy()), context=ctx, name="first")
    second = Task(None, lambda s, e, o: seen.append("second"), context=ctx, name="second")

    def complete_both() -> None:  # one batch
        first.complete()
        second.complete()

    in_thread(complete_both)
    run_mainloop(root)  # returns: no Tk window is left
    assert seen == ["first"]
    assert ctx.closed
    assert first.propagate_error() is None
    assert isinstance(second.propagate_error(), qiotask.ContextClosedError)


def test_only_the_root_destroys_the_context(root: tkinter.Tk, ctx: qiotask.MainContext) -> None:
    destroyed: list[str] = []
    root.bind("<Destroy>", lambda e: destroyed.append(str(e.widget)))  # replaces, no "+"
    label = tkinter.Label(root)
    label.destroy()
    assert destroyed == [str(label)]
    assert not ctx.closed
    root.destroy()
    assert ctx.closed
    assert destroyed[-1] == "."


def test_the_context_lets_go_of_a_destroyed_root() -> None:
    # Tasks in flight keep their context, and may drop it in a worker
    # thread; Tcl aborts the process if a Tk interpreter is deleted outside
    # its thread, so the context must not be what keeps a root alive.
    try:
        root = new_root()
    except RuntimeError as exc:
        unavailable(str(exc))
    ctx = qiotask.attach(root)
    release = threading.Event()
    task = Task(None, context=ctx, name="outliving")
    task.run_in_thread(lambda t, o: release.wait(10))
    root_ref = weakref.ref(root)
    root.destroy()
    del root
    assert root_ref() is None  # freed here, on the Tk thread, by its last reference
    with pytest.raises(qiotask.ContextClosedError):
        ctx.root  # type: ignore[attr-defined]  # noqa: B018
    release.set()
    assert task.wait(10)
    assert isinstance(task.propagate_error(), qiotask.ContextClosedError)


# -- load --------------------------------------------------------------------


def test_twenty_thousand_completions_from_two_threads(
    root: tkinter.Tk, ctx: qiotask.MainContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = 20_000
    calls = [0] * total
    delivered = [0]
    threads: set[threading.Thread] = set()
    wakeups = count_wakeups(ctx, monkeypatch)

    def func(source: Any, err: BaseException | None, i: int) -> None:
        calls[i] += 1
        threads.add(threading.current_thread())
        delivered[0] += 1
        if delivered[0] == total:
            root.quit()

    tasks = [Task(None, func, i, context=ctx) for i in range(total)]
    go = threading.Event()

    def complete(part: list[Task[Any]]) -> None:
        go.wait(10)
        for task in part:
            task.complete()

    completers = [threading.Thread(target=complete, args=(tasks[k::2],), name=f"completer-{k}") for k in range(2)]
    for thread in completers:
        thread.start()
    root.after_idle(go.set)  # start once the loop runs
    started = time.monotonic()
    run_mainloop(root)
    elapsed = time.monotonic() - started
    for thread in completers:
        thread.join(10)
    assert calls == [1] * total
    assert threads == {threading.current_thread()}
    assert 1 <= wakeups[0] <= total
    assert elapsed < 30


# -- get_context() on the Tk thread, references of late tasks -------------------------


def test_when_the_root_attached_last_is_destroyed_the_one_before_is_found_again(root: tkinter.Tk) -> None:
    first = qiotask.attach(root)
    second_root = new_root()
    second = qiotask.attach(second_root)
    assert qiotask.get_context() is second  # the live root attached last
    second_root.destroy()
    assert second.closed
    assert qiotask.get_context() is first  # not the default context: root lives on
    del second_root
    gc.collect()


def test_a_task_made_on_the_tk_thread_belongs_to_its_root(root: tkinter.Tk) -> None:
    ctx = qiotask.attach(root)
    assert qiotask.get_context() is ctx  # no context= needed in a Tk program
    seen: list[str] = []

    def done(source: Any, err: BaseException | None, opaque: Any) -> None:
        seen.append(threading.current_thread().name)
        root.quit()

    def start() -> None:  # a Tk callback making a task, as GUI code does
        Task(None, done).run_in_thread(lambda t, o: None)

    root.after(0, start)
    guard = root.after(GUARD_MS, root.quit)
    root.mainloop()
    root.after_cancel(guard)
    assert seen == [threading.current_thread().name]
    root.destroy()
    assert qiotask.get_context() is not ctx  # a destroyed root is nobody's context


def test_widgets_of_a_late_task_are_freed_on_the_tk_thread(tmp_path: Any) -> None:
    # In a child process: freeing a Tk interpreter off its thread aborts the
    # whole process (Tcl_AsyncDelete), which must not take pytest with it.
    import subprocess
    import textwrap

    from .backends.tk import ensure_display

    ensure_display()
    script = tmp_path / "late.py"
    script.write_text(
        textwrap.dedent(
            """
            import gc, threading, tkinter, qiotask
            root = tkinter.Tk()
            root.withdraw()
            label = tkinter.Label(root, text="x")
            ctx = qiotask.attach(root)
            release = threading.Event()
            task = qiotask.Task(label, lambda s, e, o: None, context=ctx)
            task.run_in_thread(lambda t, o: release.wait(10))
            root.destroy()
            del root, label, ctx   # only the task holds the widgets now
            release.set()
            assert task.wait(10)   # completed in the worker: the loop is gone
            del task
            gc.collect()
            print("survived")
            """
        )
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "survived"


def test_a_closed_context_stops_watching_its_fd_while_the_root_lives(root: tkinter.Tk) -> None:
    # close() with the root alive: the watch of a ready fd goes the next time
    # Tk reports it, and its Tcl file handler with it (before, the handler
    # stayed: a ready fd nobody watches spun the mainloop).
    import socket

    ctx = qiotask.attach(root)
    r, w = socket.socketpair()
    try:
        watch = ctx.io_add_watch(r.fileno(), qiotask.IO_IN, lambda fd, cond: True)
        ctx.close()
        w.send(b"x")
        for _ in range(3):  # Tk event loop passes with the fd ready
            root.update()
        assert watch.removed
        assert ctx._driver._fd_handlers == set()
    finally:
        r.close()
        w.close()
