"""Throughput and hand-back latency of no-op jobs on GLib, Qt, Tk, trio and uvloop: qiotask against each loop's peers.

What is measured
----------------
For each loop, ``--inflight`` (64) no-op jobs are kept in flight on worker threads; each job's completion is
handled on that loop's thread, which records it and starts the next job until ``--jobs`` (20,000) have run.
qiotask runs against the idiomatic ways of doing the same on that loop:

``glib`` (``GLib.MainLoop().run()`` on the default ``GLib.MainContext``)
    - ``qiotask``: ``Task(None, func, opaque, context=qiotask.attach(GLib.MainContext.default()))
      .run_in_thread(worker, opaque)``;
    - ``Gio.Task.run_in_thread``: ``Gio.Task.new(None, None, callback, data).run_in_thread(fn)``; ``fn`` calls
      ``task.return_int(...)`` on GIO's pool thread, ``callback`` runs on the loop thread and calls
      ``propagate_int()``;
    - ``TPE + GLib.idle_add``: a ``concurrent.futures.ThreadPoolExecutor`` worker calls ``GLib.idle_add(cb)``.
``qt`` (PySide6 ``QCoreApplication.exec()``, ``QT_QPA_PLATFORM=offscreen``)
    - ``qiotask``: the same callback style with ``context=qiotask.attach(app)``;
    - ``QThreadPool + Signal``: ``QThreadPool.globalInstance().start(runnable)``; the ``QRunnable`` emits a
      ``Signal(float)`` of one main-thread ``QObject``, connected with ``Qt.QueuedConnection`` to a ``Slot`` of a
      main-thread receiver;
    - ``QThreadPool.start(fn) + Signal``: the same, with a plain function passed to ``start`` (PySide6 wraps it);
    - ``QThreadPool + WorkerSignals``: the tutorial variant, a ``QObject`` with its own signal per runnable,
      created (so living) in the main thread and connected to the same slot.
``tk`` (``tkinter.Tk().mainloop()`` under an Xvfb the benchmark starts with ``-displayfd`` and kills at the end)
    - ``qiotask``: the callback style with ``context=qiotask.attach(root)``;
    - ``TPE + after(1 ms) poll``: workers put into a ``queue.Queue``; ``root.after(1, poll)`` drains it every
      millisecond while a measurement runs (the common idiom; Tk's timer makes it ~1.1-1.4 ms a tick);
    - ``TPE + event_generate``: workers put into the queue and call ``root.event_generate('<<...>>', when='tail')``
      (tkinter marshals that call to the Tk thread); the bound handler takes one item per event.
``trio`` (``trio.run``)
    - ``qiotask.to_thread``: ``inflight`` tasks in a nursery, each awaiting ``qiotask.to_thread(noop)`` in a loop;
    - ``qiotask``: the callback style inside the run, ``context=qiotask.attach(trio.lowlevel.current_trio_token())``;
    - ``trio.to_thread.run_sync`` and ``anyio.to_thread.run_sync``: the awaiting pattern, with their default
      limiter (40 threads).
``uvloop`` (``uvloop.run``)
    - ``qiotask`` (callback style) and ``qiotask.to_thread``;
    - ``asyncio.to_thread`` and ``loop.run_in_executor(None, ...)``: the awaiting pattern.

The ``ThreadPoolExecutor`` peers use its default size, ``min(32, cpus + 4)``, which is also qiotask's pool size;
GIO's, Qt's, trio's and anyio's pools keep their defaults.  Peers known to be slow (Gio.Task, QThreadPool,
event_generate, trio/anyio ``to_thread``) run ``--jobs // 4`` jobs: rates are compared, not totals.

For each contender it reports, as ``throughput.py`` does:

- jobs/s: jobs divided by the wall time from the first submission to the last completion;
- p50/p99 latency from worker return to callback: the worker records ``time.perf_counter()`` just before
  returning (or posting), the loop side records it when the callback runs or the ``await`` resumes;
- CPU µs/job: process CPU time (all threads) divided by jobs;
- the ratio of its jobs/s to the loop's best peer (the peer with the highest median jobs/s), as the median of
  the per-round ratios.

How
---
Each loop runs in a child process of its own (so that one toolkit's threads, dispatcher or crash cannot touch
the next), and all of a loop's measurements run in one run of that loop.  The run is made of ``--rounds`` (5)
rounds; each round runs every contender once, after a warm-up of the same contender (1,000 jobs), with the
order rotated from round to round.  Every figure is the median over the rounds; ratios are medians of the
per-round ratios, each between two measurements made seconds apart -- the machines are small and noisy, and
only such ratios mean anything.  A contender that fails or takes longer than 20 s is reported and dropped for
the remaining rounds.  The summary compares each qiotask contender with the loop's best peer against a target
of 3x, and shows the range of the per-round ratios.

Other processes distort the figures, and not evenly: with a CPU hog beside it, ``TPE + GLib.idle_add`` got
*faster* here (its CPU per job fell from ~27 to ~8-15 µs, as completions pile up per loop iteration) while
qiotask's p99 rose to ~4 ms (its hand-overs between loop thread and worker wait for a CPU), so ratios moved by
up to 2x.  Each loop's header therefore says how many CPUs other processes used during its run (from
``/proc/stat``, minus this process's own CPU time), and the report warns above 0.25.

Beside the tables it writes a PNG chart, ``--chart`` (``benchmarks/results/loops.png``): a row per loop, with
jobs/s and p99 per contender, each contender's ratio to the best peer and the 3x target (``chart.py``; it needs
matplotlib, ``pip install 'qiotask[bench]'``).

This is a report, not a test: the exit status is 0 whatever the figures are.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

# Shared with throughput.py (benchmarks/ is sys.path[0] when either script runs).
from throughput import (
    AsyncRun,
    Sample,
    add_chart_options,
    awaiting,
    busy_warning,
    describe_environment,
    environment,
    load_chart,
    machine_busy_seconds,
    make_sample,
    noop,
    run_in_executor,
    warn_if_busy,
    write_json,
)

import qiotask

LOOPS = ("glib", "qt", "tk", "trio", "uvloop")
TARGET_RATIO = 3.0
WARMUP_JOBS = 1000
SLOW_DIVISOR = 4  # peers known to be slow run jobs // SLOW_DIVISOR jobs
TK_POLL_MS = 1
MEASURE_TIMEOUT = 20.0  # seconds; a contender that takes longer is dropped
LOOP_TIMEOUT = 170.0  # seconds; a child process that takes longer is killed
RESULT_MARK = "@@loops-result "

perf_counter = time.perf_counter


# -- results ----------------------------------------------------------------------------------------------


@dataclass
class LoopResult:
    """What a child process measured on one loop."""

    loop: str
    versions: str = ""
    contenders: list[str] = field(default_factory=list)  # in the order they were defined
    qiotask_contenders: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # contender (or "loop") -> what went wrong
    elapsed: float = 0.0
    other_cpus: float | None = None  # CPUs used by other processes during the run, on average

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopResult:
        samples = [Sample(**s) for s in data.pop("samples")]
        return cls(samples=samples, **data)


@dataclass
class Summary:
    """The medians over the rounds of one contender."""

    contender: str
    is_qiotask: bool
    jobs: int
    rounds: int
    jobs_per_s: float
    p50_us: float
    p99_us: float
    cpu_us_per_job: float
    ratio: float | None  # median of the per-round ratios of jobs/s to the best peer's
    ratios: list[float]


def plan(names: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, contender) in run order: every contender once a round, the order rotated each round."""
    order: list[tuple[int, str]] = []
    for r in range(rounds):
        shift = r % len(names)
        order += [(r + 1, name) for name in names[shift:] + names[:shift]]
    return order


def progress(result: LoopResult, round_no: int) -> None:
    done = [s for s in result.samples if s.round == round_no]
    print(
        f"  {result.loop} round {round_no}: " + ", ".join(f"{s.contender} {s.jobs_per_s:,.0f}/s" for s in done),
        file=sys.stderr,
        flush=True,
    )


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:200]


# -- jobs kept in flight by callbacks ---------------------------------------------------------------------


class Chain:
    """Keeps ``inflight`` jobs going until ``jobs`` have completed.

    ``submit(chain)`` starts one job; whatever handles its completion on the loop thread calls
    ``chain.finish(returned_at)`` with the ``perf_counter()`` the worker recorded.  ``done(chain)`` is called
    once, on the loop thread, when all jobs completed, one failed, or the chain was abandoned.
    """

    __slots__ = (
        "done",
        "ended_at",
        "error",
        "finished",
        "inflight",
        "jobs",
        "latencies",
        "over",
        "started",
        "submit",
    )

    def __init__(
        self, jobs: int, inflight: int, submit: Callable[[Chain], object], done: Callable[[Chain], None]
    ) -> None:
        self.jobs = jobs
        self.inflight = inflight
        self.submit = submit
        self.done = done
        self.latencies: list[float] = []
        self.started = 0
        self.finished = 0
        self.over = False
        self.error: BaseException | None = None
        self.ended_at = 0.0

    def begin(self) -> None:
        first = min(self.inflight, self.jobs)
        self.started = first
        for _ in range(first):
            self.submit(self)

    def finish(self, returned_at: float) -> None:
        if self.over:
            return
        self.latencies.append(perf_counter() - returned_at)
        self.finished += 1
        if self.started < self.jobs:
            self.started += 1
            self.submit(self)
        elif self.finished == self.jobs:
            self.ended_at = perf_counter()
            self.over = True
            self.done(self)

    def fail(self, exc: BaseException) -> None:
        if self.over:
            return
        self.error = exc
        self.over = True
        self.done(self)


class Job:
    """Per-job state shared by a worker and the loop-side completion."""

    __slots__ = ("chain", "returned_at")

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.returned_at = 0.0


# -- qiotask's callback style, the same on every loop -----------------------------------------------------


def _qiotask_worker(task: qiotask.Task[None], job: Job) -> None:
    job.returned_at = perf_counter()


def _qiotask_done(source: None, err: BaseException | None, job: Job) -> None:
    if err is not None:
        job.chain.fail(err)
    else:
        job.chain.finish(job.returned_at)


def qiotask_submit(ctx: qiotask.MainContext) -> Callable[[Chain], None]:
    Task = qiotask.Task

    def submit(chain: Chain) -> None:
        job = Job(chain)
        task: qiotask.Task[None] = Task(None, _qiotask_done, job, context=ctx)
        task.run_in_thread(_qiotask_worker, job)

    return submit


# -- callback loops: contenders and the sequencer that runs them ------------------------------------------


@dataclass
class CallbackContender:
    """A contender on a callback loop: ``submit`` starts one job (see :class:`Chain`)."""

    name: str
    is_qiotask: bool
    slow: bool
    submit: Callable[[Chain], object]
    open: Callable[[Chain], None] | None = None  # before the first submit of a run
    close: Callable[[Chain], None] | None = None  # after the run ended


def qiotask_on(result: LoopResult, loop_object: object) -> list[CallbackContender]:
    """The qiotask contender on ``qiotask.attach(loop_object)``; none, and the failure noted, if that fails."""
    try:
        ctx = qiotask.attach(loop_object)
    except Exception as exc:
        result.failures["qiotask"] = f"adapter not available: {describe(exc)}"
        return []
    return [CallbackContender("qiotask", True, False, qiotask_submit(ctx))]


@dataclass
class LoopHooks:
    """How the sequencer uses a loop; every function is called on the loop thread."""

    call_soon: Callable[[Callable[[], None]], None]
    call_later: Callable[[float, Callable[[], None]], Callable[[], None]]  # returns a cancel function
    quit: Callable[[], None]


def one_shot_timers(
    add: Callable[[int, Callable[[], bool]], Any], remove: Callable[[Any], object]
) -> Callable[[float, Callable[[], None]], Callable[[], None]]:
    """A :attr:`LoopHooks.call_later` from a loop's timer calls: ``add(ms, fire)`` returns an id, ``remove(id)``
    cancels it; ``fire`` returns False (a GLib source that does not repeat; Tk ignores it)."""

    def call_later(seconds: float, fn: Callable[[], None]) -> Callable[[], None]:
        fired = [False]

        def fire() -> bool:
            fired[0] = True
            fn()
            return False

        timer_id = add(int(seconds * 1000), fire)

        def cancel() -> None:
            if not fired[0]:
                fired[0] = True
                remove(timer_id)

        return cancel

    return call_later


class Sequencer:
    """Runs the warm-ups and measurements of a callback loop one after the other, inside one run of the loop."""

    def __init__(
        self,
        contenders: list[CallbackContender],
        args: argparse.Namespace,
        hooks: LoopHooks,
        result: LoopResult,
    ) -> None:
        self.by_name = {c.name: c for c in contenders}
        self.plan = plan([c.name for c in contenders], args.rounds)
        self.jobs: int = args.jobs
        self.inflight: int = args.inflight
        self.hooks = hooks
        self.result = result
        self.last_round = 0

    def start(self) -> None:
        self.hooks.call_soon(self._next)

    def _next(self) -> None:
        while self.plan:
            round_no, name = self.plan.pop(0)
            if round_no != self.last_round and self.last_round:
                progress(self.result, self.last_round)
            self.last_round = round_no
            if name in self.result.failures:
                continue
            contender = self.by_name[name]
            jobs = self.jobs // SLOW_DIVISOR if contender.slow else self.jobs
            jobs = max(1, jobs)
            self._run(contender, min(WARMUP_JOBS, jobs), lambda c, r=round_no, j=jobs: self._measure(c, r, j))
            return
        if self.last_round:
            progress(self.result, self.last_round)
        self.hooks.quit()

    def _measure(self, contender: CallbackContender, round_no: int, jobs: int) -> None:
        gc.collect()
        cpu0 = time.process_time()
        t0 = perf_counter()

        def measured(chain: Chain) -> None:
            cpu_seconds = time.process_time() - cpu0
            self.result.samples.append(
                make_sample(contender.name, round_no, chain.ended_at - t0, cpu_seconds, chain.latencies)
            )
            self.hooks.call_soon(self._next)

        self._run(contender, jobs, measured, t0)

    def _run(
        self,
        contender: CallbackContender,
        jobs: int,
        then: Callable[..., None],
        t0: float | None = None,
    ) -> None:
        """Run ``jobs`` jobs of ``contender``; then ``then(contender)`` (warm-up) or ``then(chain)``."""
        cancel_watchdog: Callable[[], None] = _nothing

        def ended(chain: Chain) -> None:
            cancel_watchdog()
            if contender.close is not None:
                try:
                    contender.close(chain)
                except Exception as exc:
                    chain.error = chain.error or exc
            if chain.error is not None:
                self.result.failures[contender.name] = describe(chain.error)
                print(f"  {contender.name}: {self.result.failures[contender.name]}", file=sys.stderr, flush=True)
                self.hooks.call_soon(self._next)
            elif t0 is None:
                self.hooks.call_soon(lambda: then(contender))
            else:
                then(chain)

        chain = Chain(jobs, self.inflight, contender.submit, ended)

        def timed_out() -> None:
            chain.fail(TimeoutError(f"{chain.finished}/{jobs} jobs completed after {MEASURE_TIMEOUT:g} s"))

        try:
            if contender.open is not None:
                contender.open(chain)
            cancel_watchdog = self.hooks.call_later(MEASURE_TIMEOUT, timed_out)
            chain.begin()
        except Exception as exc:
            chain.fail(exc)


def _nothing() -> None:
    pass


# -- GLib ---------------------------------------------------------------------------------------------------


def run_glib(args: argparse.Namespace, result: LoopResult) -> None:
    import gi
    from gi.repository import Gio, GLib

    result.versions = f"GLib {GLib.MAJOR_VERSION}.{GLib.MINOR_VERSION}.{GLib.MICRO_VERSION}, PyGObject {gi.__version__}"
    contenders = qiotask_on(result, GLib.MainContext.default())

    # Gio.Task: the worker returns the time through the task; the callback runs on the loop thread.
    def gio_worker(task: Any, source: Any, data: Any, cancellable: Any) -> None:
        task.return_int(time.perf_counter_ns())

    def gio_callback(source: Any, res: Any, chain: Chain) -> None:
        try:
            returned_ns = res.propagate_int()
        except Exception as exc:
            chain.fail(exc)
            return
        chain.finish(returned_ns / 1e9)

    def gio_submit(chain: Chain) -> None:
        Gio.Task.new(None, None, gio_callback, chain).run_in_thread(gio_worker)

    contenders.append(CallbackContender("Gio.Task.run_in_thread", False, True, gio_submit))

    # ThreadPoolExecutor + GLib.idle_add from the worker.
    executor = ThreadPoolExecutor(thread_name_prefix="bench-tpe")
    idle_add = GLib.idle_add

    def idle_done(job: Job) -> bool:
        job.chain.finish(job.returned_at)
        return False

    def idle_worker(job: Job) -> None:
        job.returned_at = perf_counter()
        idle_add(idle_done, job)

    def idle_submit(chain: Chain) -> None:
        executor.submit(idle_worker, Job(chain))

    contenders.append(CallbackContender("TPE + GLib.idle_add", False, False, idle_submit))

    loop = GLib.MainLoop()

    def once(fn: Callable[[], None]) -> bool:
        fn()
        return False

    hooks = LoopHooks(
        call_soon=lambda fn: GLib.idle_add(once, fn),
        call_later=one_shot_timers(GLib.timeout_add, GLib.source_remove),
        quit=loop.quit,
    )
    register(result, contenders)
    Sequencer(contenders, args, hooks, result).start()
    try:
        loop.run()
    finally:
        executor.shutdown(wait=True)


# -- Qt -----------------------------------------------------------------------------------------------------


def run_qt(args: argparse.Namespace, result: LoopResult) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import PySide6
    from PySide6.QtCore import QCoreApplication, QObject, QRunnable, Qt, QThreadPool, QTimer, Signal, Slot, qVersion

    app = QCoreApplication.instance() or QCoreApplication([])
    pool = QThreadPool.globalInstance()
    result.versions = f"Qt {qVersion()}, PySide6 {PySide6.__version__}, QThreadPool of {pool.maxThreadCount()}"
    contenders = qiotask_on(result, app)

    class Receiver(QObject):
        """Lives in the main thread; its slot handles every completion."""

        def __init__(self) -> None:
            super().__init__()
            self.chain: Chain | None = None

        @Slot(float)
        def on_done(self, returned_at: float) -> None:
            chain = self.chain
            if chain is not None:
                chain.finish(returned_at)

    class Emitter(QObject):
        done = Signal(float)

    receiver = Receiver()
    emitter = Emitter()  # made here, so it lives in the main thread; emitted from pool threads
    emitter.done.connect(receiver.on_done, Qt.ConnectionType.QueuedConnection)

    class Runnable(QRunnable):
        def run(self) -> None:
            emitter.done.emit(perf_counter())

    def open_receiver(chain: Chain) -> None:
        receiver.chain = chain

    def close_receiver(chain: Chain) -> None:
        receiver.chain = None

    contenders.append(
        CallbackContender(
            "QThreadPool + Signal",
            False,
            True,
            lambda chain: pool.start(Runnable()),
            open=open_receiver,
            close=close_receiver,
        )
    )

    class WorkerSignals(QObject):
        finished = Signal(float)

    class Worker(QRunnable):
        """The tutorial pattern: a signals object of its own per runnable."""

        def __init__(self) -> None:
            super().__init__()
            self.signals = WorkerSignals()
            self.signals.finished.connect(receiver.on_done, Qt.ConnectionType.QueuedConnection)

        def run(self) -> None:
            self.signals.finished.emit(perf_counter())

    def emit_now() -> None:
        emitter.done.emit(perf_counter())

    contenders.append(
        CallbackContender(
            "QThreadPool.start(fn) + Signal",
            False,
            True,
            lambda chain: pool.start(emit_now),
            open=open_receiver,
            close=close_receiver,
        )
    )

    contenders.append(
        CallbackContender(
            "QThreadPool + WorkerSignals",
            False,
            True,
            lambda chain: pool.start(Worker()),
            open=open_receiver,
            close=close_receiver,
        )
    )

    timers: list[QTimer] = []

    def call_later(seconds: float, fn: Callable[[], None]) -> Callable[[], None]:
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(fn)
        timer.start(int(seconds * 1000))
        timers.append(timer)

        def cancel() -> None:
            timer.stop()
            if timer in timers:
                timers.remove(timer)

        return cancel

    hooks = LoopHooks(call_soon=lambda fn: QTimer.singleShot(0, fn), call_later=call_later, quit=app.quit)
    register(result, contenders)
    Sequencer(contenders, args, hooks, result).start()
    app.exec()
    for timer in timers:
        timer.stop()
    pool.waitForDone(5000)


# -- Tk -----------------------------------------------------------------------------------------------------


def start_xvfb() -> tuple[subprocess.Popen[bytes], str]:
    """Start Xvfb on the first free display; return the process and the display name."""
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(w), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
            pass_fds=(w,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        line = f.readline()  # blocks until Xvfb is ready; empty if it died
    if not line.strip():
        proc.kill()
        proc.wait()
        raise RuntimeError("Xvfb did not start")
    return proc, ":" + line.decode().strip()


def run_tk(args: argparse.Namespace, result: LoopResult) -> None:
    import queue
    import tkinter

    xvfb, display = start_xvfb()
    try:
        os.environ["DISPLAY"] = display
        root = tkinter.Tk()
        root.withdraw()
        root.update()  # event_generate from threads is dropped until the root was updated once
        result.versions = f"Tk {root.tk.call('info', 'patchlevel')}, Xvfb {display}"
        try:
            _run_tk(args, result, root, tkinter, queue)
        finally:
            root.destroy()
    finally:
        xvfb.terminate()
        try:
            xvfb.wait(5)
        except subprocess.TimeoutExpired:
            xvfb.kill()
            xvfb.wait()


def _run_tk(args: argparse.Namespace, result: LoopResult, root: Any, tkinter: Any, queue: Any) -> None:
    contenders = qiotask_on(result, root)

    executor = ThreadPoolExecutor(thread_name_prefix="bench-tpe")

    # ThreadPoolExecutor + a queue.Queue polled by root.after(TK_POLL_MS) while a run is on.
    polled: queue.Queue[Job] = queue.Queue()
    poll_timer: list[str | None] = [None]

    def poll_worker(job: Job) -> None:
        job.returned_at = perf_counter()
        polled.put(job)

    def poll() -> None:
        poll_timer[0] = None
        get = polled.get_nowait
        while True:
            try:
                job = get()
            except queue.Empty:
                break
            job.chain.finish(job.returned_at)
        if poll_timer[0] is None and not job_chain[0].over:
            poll_timer[0] = root.after(TK_POLL_MS, poll)

    job_chain: list[Chain] = []

    def open_poll(chain: Chain) -> None:
        job_chain[:] = [chain]
        poll_timer[0] = root.after(TK_POLL_MS, poll)

    def close_poll(chain: Chain) -> None:
        if poll_timer[0] is not None:
            root.after_cancel(poll_timer[0])
            poll_timer[0] = None

    contenders.append(
        CallbackContender(
            f"TPE + after({TK_POLL_MS} ms) poll",
            False,
            False,
            lambda chain: executor.submit(poll_worker, Job(chain)),
            open=open_poll,
            close=close_poll,
        )
    )

    # ThreadPoolExecutor + event_generate from the worker; one item taken per event.
    generated: queue.Queue[Job] = queue.Queue()
    event_name = "<<qiotask-bench-done>>"

    def event_worker(job: Job) -> None:
        job.returned_at = perf_counter()
        generated.put(job)
        root.event_generate(event_name, when="tail")

    def on_event(event: Any) -> None:
        try:
            job = generated.get_nowait()
        except queue.Empty:
            return
        job.chain.finish(job.returned_at)

    root.bind(event_name, on_event)
    contenders.append(
        CallbackContender(
            "TPE + event_generate",
            False,
            True,
            lambda chain: executor.submit(event_worker, Job(chain)),
        )
    )

    hooks = LoopHooks(
        call_soon=lambda fn: root.after(0, fn),
        call_later=one_shot_timers(root.after, root.after_cancel),
        quit=root.quit,
    )
    register(result, contenders)
    Sequencer(contenders, args, hooks, result).start()
    root.mainloop()
    # Workers must not be left blocked in event_generate once the Tk thread stops serving them.
    executor.shutdown(wait=True)


# -- awaiting loops (trio, uvloop) ---------------------------------------------------------------------------


@dataclass
class AsyncContender:
    name: str
    is_qiotask: bool
    slow: bool
    run: AsyncRun


#: Makes, for one run of :func:`chained`, ``(finish, wait)``: ``finish()`` is called on the loop thread when
#: the chain ends; ``await wait()`` returns once it was.
Finished = Callable[[], tuple[Callable[[], object], Callable[[], Awaitable[object]]]]


def chained(submit: Callable[[Chain], object], finished: Finished) -> AsyncRun:
    """The callback style on an awaiting loop: a :class:`Chain` of jobs, awaited until it ends."""

    async def run(jobs: int, inflight: int) -> list[float]:
        finish, wait = finished()
        chain = Chain(jobs, inflight, submit, lambda chain: finish())
        chain.begin()
        try:
            await wait()
        finally:
            chain.over = True
        if chain.error is not None:
            raise chain.error
        return chain.latencies

    return run


async def drive_async(
    contenders: list[AsyncContender],
    args: argparse.Namespace,
    result: LoopResult,
    with_timeout: Callable[[AsyncRun, int, int, float], Awaitable[list[float]]],
) -> None:
    """The async twin of :class:`Sequencer`."""
    by_name = {c.name: c for c in contenders}
    last_round = 0
    for round_no, name in plan(list(by_name), args.rounds):
        if round_no != last_round and last_round:
            progress(result, last_round)
        last_round = round_no
        if name in result.failures:
            continue
        contender = by_name[name]
        jobs = max(1, args.jobs // SLOW_DIVISOR if contender.slow else args.jobs)
        try:
            await with_timeout(contender.run, min(WARMUP_JOBS, jobs), args.inflight, MEASURE_TIMEOUT)
            gc.collect()
            cpu0 = time.process_time()
            t0 = perf_counter()
            latencies = await with_timeout(contender.run, jobs, args.inflight, MEASURE_TIMEOUT)
            seconds = perf_counter() - t0
            cpu_seconds = time.process_time() - cpu0
            if len(latencies) != jobs:
                raise RuntimeError(f"{len(latencies)} completions for {jobs} jobs")
        except Exception as exc:
            result.failures[name] = describe(exc)
            print(f"  {name}: {result.failures[name]}", file=sys.stderr, flush=True)
            continue
        result.samples.append(make_sample(name, round_no, seconds, cpu_seconds, latencies))
    if last_round:
        progress(result, last_round)


def run_trio(args: argparse.Namespace, result: LoopResult) -> None:
    import importlib.metadata

    import anyio
    import anyio.to_thread
    import trio

    result.versions = f"trio {trio.__version__}, anyio {importlib.metadata.version('anyio')}"

    async def in_nursery(one: Callable[[], Awaitable[None]], count: int) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)

    def trio_awaiting(call: Callable[[], Awaitable[float]]) -> AsyncRun:
        return awaiting(call, in_nursery)

    def finished() -> tuple[Callable[[], object], Callable[[], Awaitable[object]]]:
        event = trio.Event()
        return event.set, event.wait

    async def with_timeout(run: AsyncRun, jobs: int, inflight: int, seconds: float) -> list[float]:
        with trio.move_on_after(seconds):
            return await run(jobs, inflight)
        raise TimeoutError(f"no result after {seconds:g} s")

    async def main() -> None:
        contenders: list[AsyncContender] = []
        try:
            ctx = qiotask.attach(trio.lowlevel.current_trio_token())
        except Exception as exc:
            reason = f"adapter not available: {describe(exc)}"
            result.failures["qiotask"] = result.failures["qiotask.to_thread"] = reason
        else:
            contenders += [
                AsyncContender("qiotask", True, False, chained(qiotask_submit(ctx), finished)),
                AsyncContender("qiotask.to_thread", True, False, trio_awaiting(lambda: qiotask.to_thread(noop))),
            ]
        contenders += [
            AsyncContender(
                "trio.to_thread.run_sync", False, True, trio_awaiting(lambda: trio.to_thread.run_sync(noop))
            ),
            AsyncContender(
                "anyio.to_thread.run_sync", False, True, trio_awaiting(lambda: anyio.to_thread.run_sync(noop))
            ),
        ]
        register(result, contenders)
        await drive_async(contenders, args, result, with_timeout)

    trio.run(main)


def run_uvloop(args: argparse.Namespace, result: LoopResult) -> None:
    import importlib.metadata

    import uvloop

    result.versions = f"uvloop {importlib.metadata.version('uvloop')}"

    async def with_timeout(run: AsyncRun, jobs: int, inflight: int, seconds: float) -> list[float]:
        try:
            return await asyncio.wait_for(run(jobs, inflight), seconds)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no result after {seconds:g} s") from None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        result.versions += f" ({type(loop).__module__}.{type(loop).__qualname__})"
        contenders: list[AsyncContender] = []
        ctx = qiotask.attach(loop)

        def finished() -> tuple[Callable[[], object], Callable[[], Awaitable[object]]]:
            future: asyncio.Future[None] = loop.create_future()
            return lambda: future.set_result(None), lambda: future

        contenders += [
            AsyncContender("qiotask", True, False, chained(qiotask_submit(ctx), finished)),
            AsyncContender("qiotask.to_thread", True, False, awaiting(lambda: qiotask.to_thread(noop))),
            AsyncContender("asyncio.to_thread", False, False, awaiting(lambda: asyncio.to_thread(noop))),
            AsyncContender("loop.run_in_executor", False, False, awaiting(run_in_executor)),
        ]
        register(result, contenders)
        await drive_async(contenders, args, result, with_timeout)

    uvloop.run(main())


def register(result: LoopResult, contenders: list[CallbackContender] | list[AsyncContender]) -> None:
    for c in contenders:
        result.contenders.append(c.name)
        if c.is_qiotask:
            result.qiotask_contenders.append(c.name)
    for name in list(result.failures):
        if name not in result.contenders:
            # A qiotask contender that could not even be set up is still listed, as failed.
            result.contenders.insert(0, name)
            result.qiotask_contenders.append(name)


RUNNERS: dict[str, Callable[[argparse.Namespace, LoopResult], None]] = {
    "glib": run_glib,
    "qt": run_qt,
    "tk": run_tk,
    "trio": run_trio,
    "uvloop": run_uvloop,
}


def child_main(args: argparse.Namespace) -> int:
    """In the child process: measure one loop and print the result as one JSON line on stdout."""
    result = LoopResult(loop=args.child)
    busy0, cpu0, t0 = machine_busy_seconds(), time.process_time(), perf_counter()
    try:
        RUNNERS[args.child](args, result)
    except Exception as exc:
        result.failures["loop"] = describe(exc)
        traceback.print_exc()
    busy1, cpu1 = machine_busy_seconds(), time.process_time()
    result.elapsed = perf_counter() - t0
    if busy0 is not None and busy1 is not None:
        result.other_cpus = max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / result.elapsed
    print(RESULT_MARK + json.dumps(result.to_json()), flush=True)
    # Skip interpreter teardown: toolkits' pool threads and atexit handlers have nothing left to tell.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def measure_loop(loop: str, args: argparse.Namespace) -> LoopResult:
    """Run one loop's measurements in a child process."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        loop,
        "--jobs",
        str(args.jobs),
        "--inflight",
        str(args.inflight),
        "--rounds",
        str(args.rounds),
    ]
    t0 = perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=LOOP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return LoopResult(loop=loop, failures={"loop": f"killed after {LOOP_TIMEOUT:g} s"}, elapsed=LOOP_TIMEOUT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return LoopResult.from_json(json.loads(line[len(RESULT_MARK) :]))
    return LoopResult(
        loop=loop,
        failures={"loop": f"the child process died (exit status {proc.returncode}) without a result"},
        elapsed=perf_counter() - t0,
    )


# -- the report --------------------------------------------------------------------------------------------


def summarize(result: LoopResult) -> tuple[list[Summary], str | None]:
    """Summaries in contender order, and the best peer's name."""
    by_name: dict[str, list[Sample]] = {}
    for s in result.samples:
        by_name.setdefault(s.contender, []).append(s)
    peers = [n for n in result.contenders if n not in result.qiotask_contenders and by_name.get(n)]
    best = max(peers, key=lambda n: statistics.median(s.jobs_per_s for s in by_name[n]), default=None)
    reference = {s.round: s.jobs_per_s for s in by_name[best]} if best else {}
    summaries = []
    for name in result.contenders:
        mine = by_name.get(name)
        if not mine:
            continue
        ratios = [s.jobs_per_s / reference[s.round] for s in mine if s.round in reference]
        summaries.append(
            Summary(
                contender=name,
                is_qiotask=name in result.qiotask_contenders,
                jobs=mine[0].jobs,
                rounds=len(mine),
                jobs_per_s=statistics.median(s.jobs_per_s for s in mine),
                p50_us=statistics.median(s.p50_us for s in mine),
                p99_us=statistics.median(s.p99_us for s in mine),
                cpu_us_per_job=statistics.median(s.cpu_us_per_job for s in mine),
                ratio=statistics.median(ratios) if ratios else None,
                ratios=ratios,
            )
        )
    return summaries, best


def report_loop(result: LoopResult, summaries: list[Summary], best: str | None, args: argparse.Namespace) -> None:
    print()
    print(
        f"== {result.loop} ({result.versions or 'versions unknown'}; {args.inflight} in flight, "
        f"median of {args.rounds} interleaved rounds; took {result.elapsed:.1f} s"
        + (f"; other processes used {result.other_cpus:.2f} CPUs)" if result.other_cpus is not None else ")")
    )
    if summaries:
        header = (
            f"{'contender':<30} {'jobs':>6} {'jobs/s':>10} {'p50 µs':>9} {'p99 µs':>9} {'CPU µs/job':>11} "
            f"{'vs best peer':>13}"
        )
        print(header)
        print("-" * len(header))
        for s in summaries:
            ratio = f"{s.ratio:.2f}x" if s.ratio is not None else "-"
            rounds = "" if s.rounds == args.rounds else f"  ({s.rounds} rounds)"
            print(
                f"{s.contender:<30} {s.jobs:>6} {s.jobs_per_s:>10,.0f} {s.p50_us:>9.1f} {s.p99_us:>9.1f} "
                f"{s.cpu_us_per_job:>11.1f} {ratio:>13}{rounds}"
            )
        if best is not None:
            print(f"best peer: {best}")
        for s in summaries:
            if s.is_qiotask and s.ratios:
                print(f"per-round {s.contender} / {best}: " + ", ".join(f"{r:.2f}x" for r in s.ratios))
    for name, what in result.failures.items():
        print(f"FAILED {name}: {what}")


def report_summary(rows: list[tuple[str, str, str, Summary | None, Summary | None, str]]) -> None:
    print()
    print(f"Summary: qiotask against each loop's best peer (target >= {TARGET_RATIO:g}x)")
    header = (
        f"{'loop':<7} {'qiotask contender':<18} {'best peer':<30} {'qiotask jobs/s':>14} {'peer jobs/s':>11} "
        f"{'ratio':>7} {'round range':>13}  result"
    )
    print(header)
    print("-" * len(header))
    for loop, mine, peer, ours, theirs, verdict in rows:
        ours_rate = f"{ours.jobs_per_s:,.0f}" if ours else "-"
        peer_rate = f"{theirs.jobs_per_s:,.0f}" if theirs else "-"
        ratio = f"{ours.ratio:.2f}x" if ours and ours.ratio is not None else "-"
        spread = f"{min(ours.ratios):.1f}-{max(ours.ratios):.1f}x" if ours and ours.ratios else "-"
        print(f"{loop:<7} {mine:<18} {peer:<30} {ours_rate:>14} {peer_rate:>11} {ratio:>7} {spread:>13}  {verdict}")


def write_chart(path: str, results: list[LoopResult], summarized: list[tuple[list[Summary], str | None]]) -> None:
    """The chart of the run (see chart.py), or one line saying why there is none."""
    chart = load_chart()
    groups = []
    for result, (summaries, best) in zip(results, summarized, strict=True):
        rows = [
            chart.Row(
                contender=s.contender,
                jobs_per_s=[x.jobs_per_s for x in result.samples if x.contender == s.contender],
                p99_us=[x.p99_us for x in result.samples if x.contender == s.contender],
                ratio=s.ratio,
                ours=s.is_qiotask,
            )
            for s in summaries
        ]
        targets = {TARGET_RATIO: ", ".join(s.contender for s in summaries if s.is_qiotask)}
        groups.append(chart.Group(result.loop, best or "", rows, targets))
    other_cpus = max((r.other_cpus for r in results if r.other_cpus is not None), default=None)
    if chart.write_chart(path, "qiotask against each loop's best peer", groups, busy_warning(other_cpus, "up to ")):
        print(f"chart: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--loops", default=",".join(LOOPS), help=f"comma-separated, from {','.join(LOOPS)}")
    parser.add_argument(
        "--jobs", type=int, default=20000, help=f"jobs per measurement (default 20000; slow peers: / {SLOW_DIVISOR})"
    )
    parser.add_argument("--inflight", type=int, default=64, help="jobs in flight at once (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    add_chart_options(parser, "loops.png")
    parser.add_argument("--child", choices=LOOPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.inflight < 1 or args.rounds < 1:
        parser.error("--jobs, --inflight and --rounds must be at least 1")
    if args.child:
        return child_main(args)
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    unknown = [name for name in loops if name not in LOOPS]
    if unknown:
        parser.error(f"unknown loop(s) {', '.join(unknown)}; choose from {', '.join(LOOPS)}")

    print(f"measuring {', '.join(loops)}: {args.rounds} rounds, {args.jobs:,} jobs ...", file=sys.stderr, flush=True)
    t0 = perf_counter()
    results = [measure_loop(loop, args) for loop in loops]
    elapsed = perf_counter() - t0

    print()
    print(
        f"{args.jobs:,} no-op jobs ({args.jobs // SLOW_DIVISOR:,} for slow peers), {args.inflight} in flight, "
        f"median of {args.rounds} interleaved rounds ({describe_environment(elapsed)})"
    )
    rows: list[tuple[str, str, str, Summary | None, Summary | None, str]] = []
    reasons: list[str] = []
    summarized = [summarize(result) for result in results]
    for result, (summaries, best) in zip(results, summarized, strict=True):
        report_loop(result, summaries, best, args)
        by_name = {s.contender: s for s in summaries}
        theirs = by_name.get(best) if best else None
        mine_names = result.qiotask_contenders or ["qiotask"]
        for mine in mine_names:
            ours = by_name.get(mine)
            if ours is None or ours.ratio is None:
                reason = result.failures.get(mine, result.failures.get("loop", "no measurement"))
                if reason not in reasons:
                    reasons.append(reason)
                verdict = f"n/a [{reasons.index(reason) + 1}]"
            else:
                verdict = "PASS" if ours.ratio >= TARGET_RATIO else "FAIL"
            rows.append((result.loop, mine, best or "-", ours, theirs, verdict))
    report_summary(rows)
    warn_if_busy(max((r.other_cpus for r in results if r.other_cpus is not None), default=None), "up to ")
    for i, reason in enumerate(reasons, 1):
        print(f"[{i}] {reason}")
    if args.chart:
        write_chart(args.chart, results, summarized)

    if args.json:
        data: dict[str, Any] = {
            "config": {
                "jobs": args.jobs,
                "slow_divisor": SLOW_DIVISOR,
                "inflight": args.inflight,
                "rounds": args.rounds,
                "warmup_jobs": WARMUP_JOBS,
                "tk_poll_ms": TK_POLL_MS,
                **environment(),
                "elapsed_s": elapsed,
            },
            "target_ratio": TARGET_RATIO,
            "loops": [
                r.to_json() | {"summary": [asdict(s) for s in summaries], "best_peer": best}
                for r, (summaries, best) in zip(results, summarized, strict=True)
            ],
        }
        write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
