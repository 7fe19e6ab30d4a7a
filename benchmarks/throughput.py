"""Throughput and hand-back latency of no-op jobs completed on an asyncio loop thread.

What is measured
----------------
Each contender runs ``--jobs`` (20,000) no-op jobs on worker threads with ``--inflight`` (64) of them in
flight at any time; every job's completion is handled on the asyncio loop thread.  The contenders:

``qiotask``
    The callback style: ``qiotask.Task(None, func).run_in_thread(worker)``.  ``func`` runs on the loop
    thread, records the latency and starts the next task until all jobs have been started; the last
    callback resolves an asyncio future that the benchmark awaits.
``qiotask.to_thread``
    ``inflight`` coroutines, each awaiting ``qiotask.to_thread(noop)`` in a loop.
``qiotask.run_sync``
    The same with ``qiotask.run_sync(noop)`` (trio's and anyio's cancellation).
``asyncio.to_thread``
    The same pattern with ``asyncio.to_thread(noop)`` -- the reference every ratio is taken against.
``loop.run_in_executor``
    The same pattern with ``loop.run_in_executor(None, noop)`` (the loop's default executor).

For each contender it reports:

- jobs/s: jobs divided by the wall time from the first submission to the last completion;
- p50/p99 latency from worker return to callback: the worker records ``time.perf_counter()`` just
  before returning, the loop side records it when the callback runs or the ``await`` resumes;
- CPU µs/job: process CPU time (all threads) divided by jobs -- less sensitive than wall time to the
  other load on the machine, though not to its clock speed;
- the ratio of its jobs/s to ``asyncio.to_thread``'s.

Why interleaved rounds
----------------------
The machines this runs on are small (2 cores) and noisy: single-thread speed swings about 2x from second
to second.  Timing one contender for a while and then the next would compare different machines.  So the
run is made of ``--rounds`` (5) rounds; each round runs every contender once (after a brief warm-up of
the same contender), and the order is rotated from round to round so that no contender always goes
first or last.  Every figure printed is the median over the rounds; the ratios are the medians of the
per-round ratios, each taken between two measurements made seconds apart.  Everything runs in one
process and one ``asyncio.run``; only the ratios are meant to be compared across runs or machines.

Other processes distort the figures (see ``loops.py``): the heading says how many CPUs they used during the
run (from ``/proc/stat``, minus this process's own CPU time), and the report warns above 0.25, before its
verdicts.

Beside the table it writes a PNG chart, ``--chart`` (``benchmarks/results/throughput.png``): jobs/s and p99
per contender, with the spread over the rounds, each contender's ratio and the targets (``chart.py``).  It
needs matplotlib (``pip install 'qiotask[bench]'``); without it the run says so in one line and prints the
table as ever.

This is a report, not a test: the exit status is 0 whatever the figures are.

``loops.py`` and ``net.py`` import their shared pieces from here (``Sample``, ``make_sample``, the jobs,
``awaiting``, the environment, ``machine_busy_seconds``, ``warn_if_busy``/``busy_warning``, and
``load_chart`` with ``RESULTS``, where charts go).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import qiotask

REFERENCE = "asyncio.to_thread"
TARGET_RATIO = 5.0
#: qiotask.to_thread's and qiotask.run_sync's target against the reference.
TO_THREAD_TARGET = 3.0
#: Tasks queued for the memory measurement.
MEMORY_TASKS = 10000
WARMUP_JOBS = 1000
#: Where the charts go by default: beside the scripts, whatever the working directory (git ignores it).
RESULTS = Path(__file__).resolve().parent / "results"

perf_counter = time.perf_counter

#: A contender that awaits: ``run(jobs, inflight)`` returns the latencies in seconds.
AsyncRun = Callable[[int, int], Awaitable[list[float]]]


@dataclass
class Sample:
    """One measurement of one contender in one round."""

    contender: str
    round: int
    jobs: int
    seconds: float
    cpu_seconds: float
    p50_us: float
    p99_us: float

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds

    @property
    def cpu_us_per_job(self) -> float:
        return self.cpu_seconds / self.jobs * 1e6


@dataclass
class Summary:
    """The medians over the rounds of one contender."""

    contender: str
    jobs_per_s: float
    p50_us: float
    p99_us: float
    cpu_us_per_job: float
    ratio: float  # median of the per-round ratios of jobs/s to the reference's
    ratios: list[float]


# -- the jobs -------------------------------------------------------------------------------------------


def noop() -> float:
    """The job of the awaiting contenders: return the time it returns at."""
    return perf_counter()


def stamp(task: qiotask.Task[None], slot: list[float]) -> None:
    """The worker of the callback contender: record the time it returns at in its slot."""
    slot[0] = perf_counter()


def environment() -> dict[str, Any]:
    """What the figures were measured with, for the JSON output."""
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "qiotask": qiotask.__version__,
        "max_workers": qiotask.DEFAULT_MAX_WORKERS,
    }


def describe_environment(elapsed: float) -> str:
    """The same, and how long the run took, for a report's heading."""
    return (
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"qiotask {qiotask.__version__}, {qiotask.DEFAULT_MAX_WORKERS} workers; run took {elapsed:.1f} s"
    )


#: CPUs used by other processes during a run above which a report warns.
BUSY_WARNING = 0.25


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have used since boot (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        return None


def busy_warning(other_cpus: float | None, how: str = "") -> str | None:
    """The warning to show if other processes used more than BUSY_WARNING CPUs, else None."""
    if other_cpus is None or other_cpus <= BUSY_WARNING:
        return None
    return (
        f"warning: other processes used {how}{other_cpus:.2f} of {os.cpu_count()} CPUs during the run; "
        "the figures are unreliable: run again on a quiet machine"
    )


def warn_if_busy(other_cpus: float | None, how: str = "") -> None:
    """Print a warning if other processes used more than BUSY_WARNING CPUs."""
    warning = busy_warning(other_cpus, how)
    if warning:
        print(warning)


def other_cpus_since(busy0: float | None, cpu0: float, elapsed: float) -> float | None:
    """CPUs other processes used on average since ``busy0 = machine_busy_seconds()`` and
    ``cpu0 = time.process_time()`` were read ``elapsed`` seconds ago (None where /proc/stat is missing)."""
    busy1 = machine_busy_seconds()
    if busy0 is None or busy1 is None or elapsed <= 0:
        return None
    return max(0.0, (busy1 - busy0) - (time.process_time() - cpu0)) / elapsed


def add_chart_options(parser: argparse.ArgumentParser, name: str) -> None:
    """``--chart PATH`` (default ``RESULTS/name``) and ``--no-chart``, into ``args.chart``."""
    default = RESULTS / name
    parser.add_argument(
        "--chart", metavar="PATH", default=str(default), help=f"write the PNG chart to PATH (default {default})"
    )
    parser.add_argument("--no-chart", dest="chart", action="store_const", const=None, help="write no chart")


def load_chart() -> ModuleType:
    """benchmarks/chart.py, loaded by its path: ``python -m qiotask bench`` runs this script with runpy,
    which does not put benchmarks/ on ``sys.path`` as running the script does."""
    name = "qiotask_benchmarks_chart"  # not "chart": a module of that name may be installed
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name("chart.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it: dataclasses and typing look their module up there
        spec.loader.exec_module(module)
    return module


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..1) of an already sorted list."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_sample(name: str, round_no: int, seconds: float, cpu_seconds: float, latencies: list[float]) -> Sample:
    """The sample of one measurement of ``len(latencies)`` jobs; sorts ``latencies``."""
    latencies.sort()
    return Sample(
        contender=name,
        round=round_no,
        jobs=len(latencies),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        p50_us=percentile(latencies, 0.50) * 1e6,
        p99_us=percentile(latencies, 0.99) * 1e6,
    )


# -- the contenders -------------------------------------------------------------------------------------


async def run_callback(jobs: int, inflight: int) -> list[float]:
    """The qiotask callback style; returns the latencies in seconds."""
    loop = asyncio.get_running_loop()
    finished_all: asyncio.Future[None] = loop.create_future()
    latencies: list[float] = []
    started = 0
    finished = 0

    def start() -> None:
        slot = [0.0]
        task: qiotask.Task[None] = qiotask.Task(None, on_done, slot)
        task.run_in_thread(stamp, slot)

    def on_done(source: None, err: BaseException | None, slot: list[float]) -> None:
        nonlocal started, finished
        latencies.append(perf_counter() - slot[0])
        finished += 1
        if err is not None:
            if not finished_all.done():
                finished_all.set_exception(err)
            return
        if started < jobs:
            started += 1
            start()
        elif finished == jobs and not finished_all.done():
            finished_all.set_result(None)

    first = min(inflight, jobs)
    started = first
    for _ in range(first):
        start()
    await finished_all
    return latencies


async def gather(one: Callable[[], Awaitable[None]], count: int) -> None:
    """Run ``count`` instances of ``one()`` concurrently with ``asyncio.gather``."""
    await asyncio.gather(*(one() for _ in range(count)))


def awaiting(
    call: Callable[[], Awaitable[float]],
    run_all: Callable[[Callable[[], Awaitable[None]], int], Awaitable[None]] = gather,
) -> AsyncRun:
    """A contender made of ``inflight`` coroutines that each await ``call()`` in a loop.

    ``run_all(one, count)`` runs ``count`` of them concurrently (``asyncio.gather`` by default).
    """

    async def run(jobs: int, inflight: int) -> list[float]:
        latencies: list[float] = []
        remaining = jobs

        async def one() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                returned = await call()
                latencies.append(perf_counter() - returned)

        await run_all(one, min(inflight, jobs))
        return latencies

    return run


def run_in_executor() -> Awaitable[float]:
    return asyncio.get_running_loop().run_in_executor(None, noop)


CONTENDERS: dict[str, AsyncRun] = {
    "qiotask": run_callback,
    "qiotask.to_thread": awaiting(lambda: qiotask.to_thread(noop)),
    "asyncio.to_thread": awaiting(lambda: asyncio.to_thread(noop)),
    "loop.run_in_executor": awaiting(run_in_executor),
}
if hasattr(qiotask, "run_sync"):  # (compare.py runs this script against older trees too)
    CONTENDERS["qiotask.run_sync"] = awaiting(lambda: qiotask.run_sync(noop))


# -- the run --------------------------------------------------------------------------------------------


async def measure(name: str, round_no: int, jobs: int, inflight: int) -> Sample:
    run = CONTENDERS[name]
    await run(min(WARMUP_JOBS, jobs), inflight)
    gc.collect()
    cpu0 = time.process_time()
    t0 = perf_counter()
    latencies = await run(jobs, inflight)
    seconds = perf_counter() - t0
    cpu_seconds = time.process_time() - cpu0
    if len(latencies) != jobs:
        raise RuntimeError(f"{name}: {len(latencies)} completions for {jobs} jobs")
    return make_sample(name, round_no, seconds, cpu_seconds, latencies)


async def run_rounds(jobs: int, inflight: int, rounds: int) -> list[Sample]:
    names = list(CONTENDERS)
    samples: list[Sample] = []
    for r in range(rounds):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            sample = await measure(name, r + 1, jobs, inflight)
            samples.append(sample)
        print(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{s.contender} {s.jobs_per_s:,.0f}/s" for s in samples if s.round == r + 1),
            file=sys.stderr,
            flush=True,
        )
    return samples


def summarize(samples: list[Sample]) -> list[Summary]:
    reference = {s.round: s.jobs_per_s for s in samples if s.contender == REFERENCE}
    summaries = []
    for name in CONTENDERS:
        mine = [s for s in samples if s.contender == name]
        ratios = [s.jobs_per_s / reference[s.round] for s in mine]
        summaries.append(
            Summary(
                contender=name,
                jobs_per_s=statistics.median(s.jobs_per_s for s in mine),
                p50_us=statistics.median(s.p50_us for s in mine),
                p99_us=statistics.median(s.p99_us for s in mine),
                cpu_us_per_job=statistics.median(s.cpu_us_per_job for s in mine),
                ratio=statistics.median(ratios),
                ratios=ratios,
            )
        )
    return summaries


def report(
    summaries: list[Summary], jobs: int, inflight: int, rounds: int, elapsed: float, other_cpus: float | None
) -> tuple[bool, bool]:
    print()
    print(
        f"{jobs:,} no-op jobs, {inflight} in flight, median of {rounds} interleaved rounds "
        f"({describe_environment(elapsed)}"
        + (f"; other processes used {other_cpus:.2f} CPUs)" if other_cpus is not None else ")")
    )
    header = f"{'contender':<22} {'jobs/s':>10} {'p50 µs':>9} {'p99 µs':>9} {'CPU µs/job':>11} {'vs ' + REFERENCE:>21}"
    print(header)
    print("-" * len(header))
    for s in summaries:
        print(
            f"{s.contender:<22} {s.jobs_per_s:>10,.0f} {s.p50_us:>9.1f} {s.p99_us:>9.1f} "
            f"{s.cpu_us_per_job:>11.1f} {s.ratio:>20.2f}x"
        )
    by_name = {s.contender: s for s in summaries}
    ours, ref = by_name["qiotask"], by_name[REFERENCE]
    print()
    print("per-round qiotask / asyncio.to_thread: " + ", ".join(f"{r:.2f}x" for r in ours.ratios))
    warn_if_busy(other_cpus)
    ratio_ok = ours.ratio >= TARGET_RATIO
    p99_ok = ours.p99_us < ref.p99_us
    print(
        f"qiotask / asyncio.to_thread = {ours.ratio:.1f}x (target >= {TARGET_RATIO:g}x): "
        f"{'PASS' if ratio_ok else 'FAIL'}"
    )
    print(
        f"qiotask p99 {ours.p99_us:.1f} µs vs asyncio.to_thread p99 {ref.p99_us:.1f} µs: "
        f"{'lower: PASS' if p99_ok else 'not lower: FAIL'}"
    )
    return ratio_ok, p99_ok


def write_chart(
    path: str,
    samples: list[Sample],
    summaries: list[Summary],
    jobs: int,
    rounds: int,
    elapsed: float,
    other_cpus: float | None,
) -> None:
    """The chart of the run (see chart.py), or one line saying why there is none."""
    chart = load_chart()
    rows = [
        chart.Row(
            contender=s.contender,
            jobs_per_s=[x.jobs_per_s for x in samples if x.contender == s.contender],
            p99_us=[x.p99_us for x in samples if x.contender == s.contender],
            ratio=s.ratio,
            ours=s.contender.startswith("qiotask"),
        )
        for s in summaries
    ]
    awaited = ", ".join(s.contender for s in summaries if s.contender in ("qiotask.to_thread", "qiotask.run_sync"))
    targets = {TARGET_RATIO: "qiotask", **({TO_THREAD_TARGET: awaited} if awaited else {})}
    group = chart.Group("asyncio", REFERENCE, rows, targets)
    title = f"{jobs:,} no-op jobs, median of {rounds} interleaved rounds ({describe_environment(elapsed)})"
    if chart.write_chart(path, title, [group], busy_warning(other_cpus)):
        print(f"chart: {path}")


def queued_task_bytes(count: int = MEMORY_TASKS) -> float:
    """Memory per queued threaded task: ``Task(None, func)`` plus
    ``run_in_thread(worker)`` while the pool's only thread is busy, so each
    task sits in the queue with everything it holds there (task, thread job,
    the pool's entry), as tracemalloc counts it."""
    import threading
    import tracemalloc

    context = qiotask.MainContext(name="memory")
    # One thread, kept busy, and no growth: nothing else allocates meanwhile.
    pool = qiotask.WorkerPool(1, name="memory", grow_after=None)
    busy, release = threading.Event(), threading.Event()
    pool.submit(lambda: (busy.set(), release.wait()), lambda result, exc: None)
    busy.wait()

    def func(source: None, err: BaseException | None, opaque: None) -> None:
        pass

    def worker(task: qiotask.Task[None], opaque: None) -> None:
        return None

    # Made before the measurement, so that only the tasks are counted.
    tasks: list[qiotask.Task[None] | None] = [None] * count
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(count):
        task: qiotask.Task[None] = qiotask.Task(None, func, context=context)
        task.run_in_thread(worker, pool=pool)
        tasks[i] = task
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    release.set()
    pool.shutdown(wait=True)
    context._dispatch()  # type: ignore[attr-defined]
    context.close()  # type: ignore[attr-defined]
    return (after - before) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=20000, help="jobs per measurement (default 20000)")
    parser.add_argument("--inflight", type=int, default=64, help="jobs in flight at once (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    add_chart_options(parser, "throughput.png")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.inflight < 1 or args.rounds < 1:
        parser.error("--jobs, --inflight and --rounds must be at least 1")

    print(
        f"running {args.rounds} rounds of {len(CONTENDERS)} contenders x {args.jobs:,} jobs ...",
        file=sys.stderr,
        flush=True,
    )
    t0 = perf_counter()
    busy0, cpu0 = machine_busy_seconds(), time.process_time()
    samples = asyncio.run(run_rounds(args.jobs, args.inflight, args.rounds))
    elapsed = perf_counter() - t0
    other_cpus = other_cpus_since(busy0, cpu0, elapsed)
    summaries = summarize(samples)
    ratio_ok, p99_ok = report(summaries, args.jobs, args.inflight, args.rounds, elapsed, other_cpus)
    for name in ("qiotask.to_thread", "qiotask.run_sync"):
        awaited = next((s for s in summaries if s.contender == name), None)
        if awaited is None:
            continue
        print(
            f"{name} / asyncio.to_thread = {awaited.ratio:.1f}x (target >= {TO_THREAD_TARGET:g}x): "
            f"{'PASS' if awaited.ratio >= TO_THREAD_TARGET else 'FAIL'}"
        )
    memory = queued_task_bytes()
    print(f"memory per queued task: {memory:,.0f} bytes (Task + run_in_thread, waiting for a busy pool; tracemalloc)")
    if args.chart:
        write_chart(args.chart, samples, summaries, args.jobs, args.rounds, elapsed, other_cpus)

    if args.json:
        result: dict[str, Any] = {
            "config": {
                "jobs": args.jobs,
                "inflight": args.inflight,
                "rounds": args.rounds,
                "warmup_jobs": WARMUP_JOBS,
                **environment(),
                "elapsed_s": elapsed,
                "other_cpus": other_cpus,
            },
            "reference": REFERENCE,
            "summary": [asdict(s) for s in summaries],
            "samples": [asdict(s) | {"jobs_per_s": s.jobs_per_s, "cpu_us_per_job": s.cpu_us_per_job} for s in samples],
            "target_ratio": TARGET_RATIO,
            "queued_task_bytes": memory,
            "ratio_pass": ratio_ok,
            "p99_lower": p99_ok,
        }
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
