"""Stress: real threads racing the concurrency protocol (DESIGN §6).

tests/test_protocol.py forces each named interleaving once; these tests race
real threads instead, at ``sys.setswitchinterval(1e-6)`` so that the GIL
changes hands between almost any two bytecodes, and check what must hold
whatever the interleaving:

- ``func``, the task's destroy, the worker's destroy and every result's
  destroy run exactly once (a replaced result once, at its replacement), on
  the context thread where that is promised, ``func`` first;
- a cancel asked before the outcome was fixed is what ``func`` gets, and an
  abandoned worker's late result is never kept;
- a task's state never goes backwards, and every task ends FINISHED with its
  source released;
- a context's queue runs or fails each posted completion exactly once while
  another thread closes it;
- ``wait()``, ``wait_thread()`` and ``call_in_main()`` neither lose a wake-up
  nor deadlock.

Every test is bounded: a fixed number of tasks and operations, a wall-clock
cap on the racing, and a ``pytest.mark.timeout``.  Randomness is seeded (the
seed is in every failure message; set ``QIOTASK_STRESS_SEED`` to change it),
but which thread wins a race is not, so each assertion is one that holds for
every interleaving.  Nothing sleeps to synchronize: threads meet on Events.
"""

from __future__ import annotations

import collections
import os
import random
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import qiotask
from qiotask import ContextClosedError, Task, TaskCancelled, TaskState, TaskStateError, TaskTimeout

from .conftest import TIMEOUT, LoopRunner, MakePool, join, start_thread

SEED = int(os.environ.get("QIOTASK_STRESS_SEED", "90417"))

#: The order a task's public state moves in.
RANK = {
    TaskState.PENDING: 0,
    TaskState.QUEUED: 1,
    TaskState.RUNNING: 2,
    TaskState.COMPLETING: 3,
    TaskState.FINISHED: 4,
}

#: How long the racers race, at most (each test also has a fixed count).
RACE_SECONDS = 5.0
#: How long a test's loop goes on once the racing is over, at most, for the
#: completions still on their way (they take milliseconds): whatever has not
#: happened by then never will, and is reported.
SETTLE_SECONDS = 5.0
#: How long a test's loop may run in all.
LOOP_SECONDS = 30.0


@pytest.fixture(autouse=True)
def fast_switching() -> Iterator[None]:
    """Hand the GIL over every microsecond, so races happen at every step."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


# -- bookkeeping ---------------------------------------------------------------------


class Tally:
    """What ran, how often, in which order and on which thread.

    ``hit(kind, key, extra)`` is called from the notifiers under test; it
    holds its own lock for a few stores only.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._hits: dict[tuple[str, Any], list[tuple[int, int, Any]]] = {}
        self._totals: collections.Counter[str] = collections.Counter()

    def hit(self, kind: str, key: Any, extra: Any = None) -> None:
        ident = threading.get_ident()
        with self._lock:
            self._seq += 1
            self._hits.setdefault((kind, key), []).append((self._seq, ident, extra))
            self._totals[kind] += 1

    # The notifiers most races use, as they are: func records its error,
    # the task's and the worker's destroy notifiers that they ran.

    def func(self, source: Any, err: BaseException | None, i: int) -> None:
        self.hit("func", i, err)

    def destroy(self, i: int) -> None:
        self.hit("destroy", i)

    def worker_destroy(self, i: int) -> None:
        self.hit("wdestroy", i)

    def total(self, kind: str) -> int:
        with self._lock:
            return self._totals[kind]

    def hits(self, kind: str, key: Any) -> list[tuple[int, int, Any]]:
        """``[(order, thread ident, extra), ...]`` for one key."""
        with self._lock:
            return list(self._hits.get((kind, key), ()))

    def keys(self, kind: str) -> list[Any]:
        with self._lock:
            return [key for k, key in self._hits if k == kind]


def begin_race(seed: int) -> tuple[random.Random, Problems, Tally, int]:
    """What every race starts with: random numbers from its seed, the list
    of problems (reported with the seed), a tally of what ran, and the
    pending count that must be back when it ends."""
    return random.Random(seed), Problems(seed), Tally(), qiotask.stats()["pending"]


class Problems:
    """Failures found by any thread, reported together with the seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.found: list[str] = []  # list.append is atomic

    def add(self, text: str) -> None:
        self.found.append(text)

    def guard(self, name: str, body: Callable[[], Any]) -> Callable[[], None]:
        """``body`` for a thread: anything it raises becomes a problem."""

        def run() -> None:
            try:
                body()
            except BaseException:
                self.add(f"{name} raised:\n{traceback.format_exc()}")

        return run

    def check(self) -> None:
        if self.found:
            # How many of each kind (numbers and names blanked out), then the first few.
            kinds = collections.Counter(re.sub(r"\([^()]*\)|\d+", "_", text)[:100] for text in self.found)
            summary = "\n".join(f"{count:6} x {kind}" for kind, count in kinds.most_common())
            shown = "\n".join(self.found[:25])
            more = f"\n... and {len(self.found) - 25} more" if len(self.found) > 25 else ""
            pytest.fail(
                f"seed {self.seed} (QIOTASK_STRESS_SEED): {len(self.found)} problem(s):\n{summary}\n{shown}{more}"
            )

    def check_pending(self, before: int) -> None:
        """Nothing left pending: qiotask.stats() back to where it was."""
        pending = qiotask.stats()["pending"]
        if pending != before:
            self.add(f"stats()['pending'] is {pending}, was {before}")


def exactly_once(
    tally: Tally, kind: str, key: Any, problems: Problems, thread: int | None = None
) -> tuple[int, int, Any] | None:
    """The one hit of ``kind`` for ``key`` (on ``thread``, if given), else
    a problem; returns the first hit, if any."""
    hits = tally.hits(kind, key)
    if len(hits) != 1:
        problems.add(f"{kind} of {key!r} ran {len(hits)} times, not once")
    if hits and thread is not None and hits[0][1] != thread:
        problems.add(f"{kind} of {key!r} ran on thread {hits[0][1]}, not the context thread {thread}")
    return hits[0] if hits else None


def run_loop_until(
    runner: LoopRunner,
    done: Callable[[], bool],
    over: Callable[[], bool],
    missing: Callable[[], str],
    problems: Problems,
) -> None:
    """Run the test's loop until ``done()``, or until SETTLE_SECONDS after
    ``over()`` (the racing threads have finished) first held; then, if not
    ``done()``, record what is missing and let the test check the rest."""
    over_since: list[float] = []

    def check() -> bool:
        if done():
            return True
        if not over_since:
            if over():
                over_since.append(time.monotonic())
            return False
        return time.monotonic() - over_since[0] > SETTLE_SECONDS

    try:
        runner.run_until(check, LOOP_SECONDS)
    except AssertionError:
        problems.add(f"the loop ran {LOOP_SECONDS} s and the racing threads had not finished")
    if not done():
        problems.add(f"gave up {SETTLE_SECONDS} s after the racing threads finished: {missing()}")


class Source:
    """A task's source, naming its task."""

    __slots__ = ("__weakref__", "key")

    def __init__(self, key: Any) -> None:
        self.key = key


class RacerError(Exception):
    """An error a racer sets or aborts with."""


class WorkerError(Exception):
    """An error a worker raises or sets."""


def assert_finished(task: Task[Any], key: Any, problems: Problems) -> None:
    """Done, FINISHED, and its source released."""
    if not task.done() or task.state is not TaskState.FINISHED:
        problems.add(f"task {key!r} ended {task.state} (done() {task.done()}), not finished")
    try:
        task.get_source()
    except TaskStateError:
        pass
    else:
        problems.add(f"task {key!r}: get_source() did not raise TaskStateError after the task finished")


# -- random operations from racing threads --------------------------------------------

N_TASKS = 4000
N_RACERS = 3
#: Each racer makes at least OPS_MIN operations, and goes on while workers
#: are still being submitted, up to OPS_MAX.
OPS_MIN = 2000
OPS_MAX = 20000
#: Workers handed to the pool and not yet completed, at most.
IN_FLIGHT = 8
#: Racers aim at the tasks submitted last (whose workers run) ...
WINDOW = 3 * IN_FLIGHT
OPERATIONS = ("complete", "abort", "cancel", "set_error", "set_result", "progress", "callback", "peek")
WEIGHTS = (3, 2, 4, 2, 3, 1, 2, 1)
WORKER_PLANS = ("return", "raise", "set_error", "set_result", "nap", "poll", "progress")


@pytest.mark.timeout(60)
def test_random_operations_from_racing_threads_keep_every_promise(
    ctx: qiotask.MainContext, runner: LoopRunner, make_pool: MakePool
) -> None:
    # A few thousand tasks, most with a worker (some abandon on cancel, some
    # time out), handed to the pool a few at a time; three racer threads and
    # the context thread hit them with every operation while the workers
    # run, return, raise, set errors and results, and poll for the cancel;
    # a watcher samples their states.  Then every promise is checked, task
    # by task.
    seed = SEED
    rng, problems, tally, pending_before = begin_race(seed)
    pool = make_pool(4)
    loop_thread = threading.get_ident()  # the test thread runs ctx's loop
    n = N_TASKS

    # What the threads learn, for the checks at the end.  Lists indexed by
    # task are written by one thread each time (an item store is atomic);
    # the shared lists only get append() (atomic).
    registered: list[Any] = []  # every value stored together with a destroy
    errors_set: list[list[BaseException]] = [[] for _ in range(n)]  # set_error()/abort() that took
    cancels_won: list[int] = []  # tasks whose cancel() returned True
    callbacks_added: list[Any] = []
    started = [False] * n
    returned = [False] * n  # the worker function has returned or raised
    worker_value = [False] * n  # ... and it returned ("worker", i)
    worker_error: list[BaseException | None] = [None] * n
    returning: list[int] = []  # workers about to return: the racers aim at them
    nap = threading.Event()  # never set: a bounded pause, not a synchronization

    def func(source: Source, err: BaseException | None, i: int) -> None:
        tally.hit("func", i, (err, source.key))
        if has_worker[i]:
            slots.release()

    def destroy(i: int) -> None:
        tally.hit("destroy", i)

    def worker_destroy(i: int) -> None:
        tally.hit("wdestroy", i, (started[i], returned[i]))

    def result_destroy(value: Any) -> None:
        tally.hit("rdestroy", value)

    # Each worker's plan and pause are drawn here, from the seeded generator.
    plans = [rng.choice(WORKER_PLANS) for _ in range(n)]
    pauses = [rng.choice((0.0001, 0.0005, 0.002)) for _ in range(n)]

    def worker(task: Task[Any], i: int) -> Any:
        started[i] = True
        try:
            plan = plans[i]
            if plan == "raise":
                worker_error[i] = exc = WorkerError(f"worker {i} raised")
                returning.append(i)
                raise exc
            if plan == "set_error":
                exc = WorkerError(f"worker {i} set an error")
                try:
                    task.set_error(exc)
                except TaskStateError:
                    pass  # abandoned meanwhile
                else:
                    worker_error[i] = exc
            elif plan == "set_result":
                value = ("wset", i)
                try:
                    task.set_result(value, result_destroy)
                except TaskStateError:
                    pass
                else:
                    registered.append(value)
            elif plan == "nap":
                nap.wait(pauses[i])
            elif plan == "poll":
                for _ in range(40):
                    if task.cancelled():
                        break
                    nap.wait(pauses[i] / 4)
            elif plan == "progress":
                for k in range(5):
                    task.report_progress(k, 5, "working")
            worker_value[i] = True
            returning.append(i)
            return ("worker", i)
        finally:
            returned[i] = True

    # The tasks, and what each will do, drawn from the seeded generator.
    tasks: list[Task[Any]] = []
    has_worker = [rng.random() < 0.6 for _ in range(n)]
    abandons = [has_worker[i] and rng.random() < 0.4 for i in range(n)]
    timeouts = [rng.choice((None, None, None, 0.0005, 0.002, 0.01)) if has_worker[i] else None for i in range(n)]
    for i in range(n):
        task: Task[Any] = Task(Source(i), func, i, destroy, context=ctx, name=f"stress-{i}")
        tasks.append(task)
        if rng.random() < 0.3:
            value = ("set", i, "first")
            task.set_result(value, result_destroy)
            registered.append(value)
        if rng.random() < 0.2:
            task.connect_progress(lambda t, done, total, message, i=i: tally.hit("progress", i))
    n_workers = sum(has_worker)

    # The workers are handed to the pool a few at a time, so that most of
    # them run (rather than wait, queued) while the racers hit them: a slot
    # is taken per worker and given back by its task's func.
    slots = threading.Semaphore(IN_FLIGHT)
    ready = [0]  # tasks below this index may be raced: their worker was submitted
    submitted = threading.Event()

    def submit() -> None:
        for i in range(n):
            if has_worker[i]:
                if not slots.acquire(timeout=TIMEOUT):
                    problems.add(f"no func ran for {TIMEOUT} s to give a worker slot back (task {i})")
                tasks[i].run_in_thread(
                    worker, i, worker_destroy, pool=pool, abandon_on_cancel=abandons[i], timeout=timeouts[i]
                )
            ready[0] = i + 1
        submitted.set()

    def operate(r: random.Random, i: int, op: str, tag: Any) -> None:
        task = tasks[i]
        try:
            if op == "complete":
                task.complete(None if r.random() < 0.5 else ("complete", i, tag))
            elif op == "abort":
                exc = RacerError(f"abort {tag} of {i}")
                task.abort(exc)
                errors_set[i].append(exc)
            elif op == "cancel":
                if task.cancel():
                    cancels_won.append(i)
                    if abandons[i]:
                        # Its worker was queued or running (racers only see
                        # submitted tasks), so this cancel completed the task:
                        # from here on it can only be COMPLETING or FINISHED.
                        state = task.state
                        if RANK[state] < RANK[TaskState.COMPLETING]:
                            backwards.append(f"task {i} was {state.value} after the cancel that completed it")
            elif op == "set_error":
                exc = RacerError(f"set_error {tag} of {i}")
                task.set_error(exc)
                errors_set[i].append(exc)
            elif op == "set_result":
                value = ("set", i, tag)
                task.set_result(value, result_destroy)
                registered.append(value)
            elif op == "progress":
                task.report_progress(r.randrange(100), 100)
            elif op == "callback":
                key = (i, tag)
                callbacks_added.append(key)
                task.add_done_callback(lambda t, key=key: tally.hit("callback", key))
            else:
                task.done()
                task.get_result()
                task.exception()
                task.cancelled()
        except TaskStateError:
            pass  # too late for this operation: the one expected refusal

    racing = threading.Event()  # set when the racers have stopped
    race_deadline = time.monotonic() + RACE_SECONDS

    def pick(r: random.Random) -> int | None:
        # A worker about to return (the race that matters most), a task
        # submitted recently, or any task ready to race.
        if r.random() < 0.4:
            try:
                return returning.pop()
            except IndexError:
                pass
        top = ready[0]
        if top == 0:
            return None
        if r.random() < 0.8:
            return r.randrange(max(0, top - WINDOW), top)
        return r.randrange(top)

    def racer(k: int) -> None:
        r = random.Random(seed * 100 + k)
        for j in range(OPS_MAX):
            if time.monotonic() > race_deadline or (j >= OPS_MIN and submitted.is_set()):
                break
            i = pick(r)
            if i is not None:
                operate(r, i, r.choices(OPERATIONS, WEIGHTS)[0], (k, j))

    context_racer = random.Random(seed * 100 + 99)

    def on_the_context_thread() -> bool:
        # The same operations from the context thread, where complete() and
        # a cancel of a queued worker run the completion inline.
        if racing.is_set():
            return False
        try:
            for _ in range(3):
                i = pick(context_racer)
                if i is not None:
                    op = context_racer.choices(OPERATIONS, WEIGHTS)[0]
                    operate(context_racer, i, op, ("ctx", context_racer.random()))
        except BaseException:
            problems.add(f"the context thread's racer raised:\n{traceback.format_exc()}")
            return False
        return True

    def finish() -> None:
        # The racers stop; every task without a worker that nobody completed
        # is completed now (a cancel of such a task only set its flag).
        join(submitter)
        for thread in racers:
            join(thread)
        racing.set()
        for i in range(n):
            if not has_worker[i]:
                try:
                    tasks[i].complete()
                except TaskStateError:
                    pass

    watching = threading.Event()
    rank_name = {rank: state.value for state, rank in RANK.items()}
    backwards: list[str] = []
    sweeps = [0]

    def watch() -> None:
        # Every task now and then; in between, many times, the tasks
        # submitted last, whose workers start, run and return now.
        highest = [0] * n
        while not watching.is_set():
            top = ready[0]
            first = 0 if sweeps[0] % 20 == 0 else max(0, top - 2 * WINDOW)
            for i in range(first, top if first else n):
                rank = RANK[tasks[i].state]
                if rank < highest[i]:
                    backwards.append(f"task {i} went back from {rank_name[highest[i]]} to {rank_name[rank]}")
                highest[i] = max(highest[i], rank)
            sweeps[0] += 1

    watcher = start_thread(problems.guard("watcher", watch), "stress-watcher")
    submitter = start_thread(problems.guard("submitter", submit), "stress-submitter")
    racers = [
        start_thread(problems.guard(f"racer {k}", lambda k=k: racer(k)), f"stress-racer-{k}") for k in range(N_RACERS)
    ]
    finisher = start_thread(problems.guard("finisher", finish), "stress-finisher")
    ctx.timeout_add(0, on_the_context_thread)

    def settled() -> bool:
        return (
            racing.is_set()
            and not finisher.is_alive()
            and tally.total("func") >= n
            and tally.total("destroy") >= n
            and tally.total("wdestroy") >= n_workers
            and tally.total("callback") >= len(callbacks_added)
        )

    def missing() -> str:
        lost = [i for i in range(n) if not tally.hits("destroy", i)]
        lost_worker = [i for i in range(n) if has_worker[i] and not tally.hits("wdestroy", i)]
        return (
            f"finisher done: {not finisher.is_alive()}; tasks whose destroy never ran: {lost[:10]}; "
            f"worker destroys never run: {lost_worker[:10]} "
            f"(abandon_on_cancel {[abandons[i] for i in lost_worker[:10]]}, "
            f"states {[tasks[i].state.value for i in lost_worker[:10]]}); "
            f"callbacks {tally.total('callback')} of {len(callbacks_added)}"
        )

    try:
        run_loop_until(runner, settled, lambda: racing.is_set() and not finisher.is_alive(), missing, problems)
    finally:
        watching.set()
        racing.set()
        join(watcher)
        join(finisher)
        join(submitter)

    # -- what must hold for every task ------------------------------------------
    for text in backwards[:10]:
        problems.add(f"state went backwards: {text} (of {sweeps[0]} sweeps)")
    won = collections.Counter(cancels_won)
    for i, task in enumerate(tasks):
        # The cancel flag is only ever set before the outcome is fixed, and a
        # worker that started was RUNNING then: with abandon_on_cancel, its
        # task completed at once and the worker was abandoned.
        abandoned = abandons[i] and task.cancelled() and started[i]
        f = exactly_once(tally, "func", i, problems, loop_thread)
        d = exactly_once(tally, "destroy", i, problems, loop_thread)
        if f is not None and d is not None and d[0] < f[0]:
            problems.add(f"task {i}: destroy ran before func")
        if has_worker[i]:
            w = exactly_once(tally, "wdestroy", i, problems, loop_thread)
            if w is not None:
                ran, had_returned = w[2]
                if ran and not had_returned:
                    problems.add(f"task {i}: the worker's destroy ran before the worker returned")
                if f is not None and w[0] < f[0]:
                    problems.add(f"task {i}: the worker's destroy ran before func")
        assert_finished(task, i, problems)
        if f is None:
            continue
        err, key = f[2]
        if key != i:
            problems.add(f"task {i}: func got the source of task {key}")
        if task.exception() is not err:
            problems.add(f"task {i}: exception() is {task.exception()!r}, func got {err!r}")
        if task.cancelled():
            # The cancel flag is only set before the outcome is fixed: cancel wins.
            if not isinstance(err, (TaskCancelled, TaskTimeout)):
                problems.add(f"task {i} was cancelled before its outcome was fixed, yet func got {err!r}")
            if won[i] and type(err) is not TaskCancelled:
                problems.add(f"task {i}: its cancel() returned True, yet func got {err!r}")
            if isinstance(err, TaskTimeout):
                if timeouts[i] is None:
                    problems.add(f"task {i} had no timeout, yet func got {err!r}")
                elif ("while queued" in str(err)) == started[i]:
                    problems.add(f"task {i}: {err} but its worker {'ran' if started[i] else 'never ran'}")
        else:
            if won[i]:
                problems.add(f"task {i}: cancel() returned True but cancelled() is False")
            candidates = list(errors_set[i])
            if worker_error[i] is not None:
                candidates.append(worker_error[i])  # type: ignore[arg-type]
            if candidates and not any(err is c for c in candidates):
                problems.add(f"task {i}: func got {err!r}, not one of the errors set {candidates!r}")
            if not candidates and err is not None:
                problems.add(f"task {i}: func got {err!r} though no error was set")
        result = task.get_result()
        if abandoned and result == ("worker", i):
            problems.add(f"task {i}: the abandoned worker's late result {result!r} was kept")
        if has_worker[i] and worker_value[i] and not abandoned and result != ("worker", i):
            problems.add(f"task {i}: the worker returned ('worker', {i}) but the result is {result!r}")
        if has_worker[i] and not started[i] and not task.cancelled():
            problems.add(f"task {i}: the worker never ran but the task was not cancelled")

    # Every value stored with a destroy was destroyed once: at its
    # replacement or at the finish; nothing else was destroyed.
    destroyed = tally.keys("rdestroy")
    for value in registered:
        exactly_once(tally, "rdestroy", value, problems)
    for value in set(destroyed) - set(registered):
        problems.add(f"result {value!r} was destroyed but was never stored (its set_result() raised)")
    for key in callbacks_added:
        c = exactly_once(tally, "callback", key, problems, loop_thread)
        f_hits = tally.hits("func", key[0])
        if c is not None and f_hits and c[0] < f_hits[0][0]:
            problems.add(f"done-callback {key!r} ran before func")
    for i in range(n):
        for _, thread, _ in tally.hits("progress", i):
            if thread != loop_thread:
                problems.add(f"a progress callback of task {i} ran off the context thread")
    pending = qiotask.stats()["pending"]
    if pending != pending_before:
        problems.add(f"stats()['pending'] is {pending}, was {pending_before}")
    if sweeps[0] < 2:
        problems.add(f"the watcher swept the tasks only {sweeps[0]} time(s)")
    problems.check()


# -- the context queue against a close ------------------------------------------------

N_POSTERS = 3
POSTS_PER_POSTER = 4000
#: Posts each poster makes once close() returned: some certainly come after it.
POSTS_AFTER_CLOSE = 40
#: Completions the second context delivers before the closer stops it
#: (or fewer, if the posters have made all their posts first).
DELIVERED_BEFORE_CLOSE = 3000
#: Completions on the closing context posted and not yet ended, at most.
IN_FLIGHT_2 = 64
POST_KINDS = ("call", "task", "call2", "task2", "task2", "worker2")


class Post:
    """One thing a poster posted, and what it asked for."""

    __slots__ = ("after", "callback", "key", "kind", "outcome", "result", "task")

    def __init__(self, kind: str, key: Any, after: bool) -> None:
        self.kind = kind  # call/task: the test's context; call2/task2/worker2: the closing one
        self.key = key
        self.after = after  # made after ctx2.close() returned
        self.task: Task[Any] | None = None
        self.outcome: Any = None  # complete()'s value or abort()'s error
        self.result = False  # set_result(("set", key), destroy) was called
        self.callback = False  # a done-callback was added


@pytest.mark.timeout(60)
def test_posts_from_many_threads_run_or_fail_once_while_a_context_closes(
    ctx: qiotask.MainContext, runner: LoopRunner, make_pool: MakePool
) -> None:
    # Several threads post calls and task completions to two contexts (and a
    # pool posts its workers' completions): the test thread runs the first;
    # the second's loop runs in a thread of its own until it has delivered
    # some, then a closer thread stops it and closes it while posts keep
    # coming.  A completion on the closing context either ran there (func,
    # then its notifiers, on its thread) or failed with ContextClosedError
    # (no func, its notifiers once), never both, never twice.
    seed = SEED + 1
    _, problems, tally, pending_before = begin_race(seed)
    pool = make_pool(2)
    loop_thread = threading.get_ident()
    ctx2 = qiotask.MainContext(name="stress-closing")
    loop2 = qiotask.MainLoop(ctx2)
    loop2_thread: list[int] = []
    # Time to close ctx2: it delivered DELIVERED_BEFORE_CLOSE completions,
    # or the posters have made all their posts before the close.
    close_now = threading.Event()
    posted_before_close: list[int] = []
    loop2_ended = threading.Event()
    closed = threading.Event()  # ctx2.close() returned
    # Completions on ctx2 posted and not yet ended, at most: the posters
    # cannot run far ahead of its loop, so the close lands among the posts
    # (a quit() queues behind what was posted before it).
    in_flight = threading.Semaphore(IN_FLIGHT_2)

    def func(source: Source, err: BaseException | None, key: Any) -> None:
        tally.hit("func", key, (err, source.key))
        if key[0] != "task":
            tally.hit("func2", key)
            if tally.total("func2") >= DELIVERED_BEFORE_CLOSE:
                close_now.set()

    def destroy(key: Any) -> None:
        tally.hit("destroy", key)
        if key[0] == "task":
            tally.hit("destroy1", key)
        else:
            in_flight.release()

    def worker_destroy(key: Any) -> None:
        tally.hit("wdestroy", key)

    def result_destroy(value: Any) -> None:
        tally.hit("rdestroy", value)

    def worker(task: Task[Any], key: Any) -> Any:
        if key[2] % 3 == 0:
            raise WorkerError(f"worker {key}")
        return ("worker", key)

    posted: list[list[Post]] = [[] for _ in range(N_POSTERS)]

    def post_one(r: random.Random, mine: list[Post], kind: str, key: Any, after: bool) -> None:
        post = Post(kind, key, after)
        mine.append(post)
        if kind == "call":
            ctx.call_soon(tally.hit, "call", key)
            return
        if kind == "call2":
            ctx2.call_soon(tally.hit, "call2", key)
            return
        if kind == "task":
            context = ctx
        else:
            context = ctx2
            if not in_flight.acquire(timeout=TIMEOUT):
                problems.add(f"{key!r}: no completion on the closing context ended for {TIMEOUT} s")
        post.task = task = Task(Source(key), func, key, destroy, context=context, name=f"{key}")
        if r.random() < 0.3:
            post.result = True
            task.set_result(("set", key), result_destroy)
        if r.random() < 0.3:
            post.callback = True
            task.add_done_callback(lambda t: tally.hit("callback", key))
        if kind == "worker2":
            task.run_in_thread(worker, key, worker_destroy, pool=pool)
        elif r.random() < 0.5:
            post.outcome = ("complete", key)
            task.complete(post.outcome)
        else:
            post.outcome = RacerError(f"abort {key}")
            task.abort(post.outcome)

    def poster(k: int) -> None:
        r = random.Random(seed * 100 + k)
        mine = posted[k]
        deadline = time.monotonic() + RACE_SECONDS
        # Until the close (at most a fixed number, for a fixed time) ...
        for j in range(POSTS_PER_POSTER):
            if closed.is_set() or time.monotonic() > deadline:
                break
            kind = r.choice(POST_KINDS)
            post_one(r, mine, kind, (kind, k, j), False)
        posted_before_close.append(k)
        if len(posted_before_close) == N_POSTERS:
            close_now.set()
        # ... and a few more once close() has returned: these must all fail.
        if not closed.wait(TIMEOUT):
            problems.add(f"poster {k}: the closing context was not closed in {TIMEOUT} s")
            return
        for j in range(POSTS_PER_POSTER, POSTS_PER_POSTER + POSTS_AFTER_CLOSE):
            kind = ("task2", "worker2", "call2")[j % 3]
            post_one(r, mine, kind, (kind, k, j), True)

    def run_second_loop() -> None:
        loop2_thread.append(threading.get_ident())
        guard = ctx2.timeout_add(TIMEOUT * 1000, loop2.quit)  # a bug cannot keep it running
        try:
            loop2.run()
        finally:
            guard.remove()
            loop2_ended.set()

    def close_second() -> None:
        # A quit() before run() is not remembered: wait for a delivery
        # there, which shows the loop runs.
        if not close_now.wait(TIMEOUT):
            problems.add(f"the closing context delivered {tally.total('func2')} completions in {TIMEOUT} s")
        if tally.total("func2") == 0:
            problems.add("no completion ran on the closing context before its close")
        loop2.quit()
        if not loop2_ended.wait(TIMEOUT):
            problems.add("the closing context's loop did not stop")
            return
        ctx2.close()
        closed.set()

    second = start_thread(problems.guard("second loop", run_second_loop), "stress-loop2")
    posters = [
        start_thread(problems.guard(f"poster {k}", lambda k=k: poster(k)), f"stress-poster-{k}")
        for k in range(N_POSTERS)
    ]
    closer = start_thread(problems.guard("closer", close_second), "stress-closer")

    def here() -> list[Post]:
        return [post for mine in posted for post in mine if post.kind in ("call", "task")]

    def settled() -> bool:
        if any(thread.is_alive() for thread in posters):
            return False
        return tally.total("call") + tally.total("destroy1") >= len(here())

    def missing() -> str:
        lost = [post.key for post in here() if not tally.hits("call", post.key) and not tally.hits("destroy", post.key)]
        return f"posters alive: {[t.is_alive() for t in posters]}; never ran on the test's context: {lost[:10]}"

    try:
        run_loop_until(runner, settled, lambda: not any(t.is_alive() for t in posters), missing, problems)
    finally:
        for thread in (*posters, closer, second):
            join(thread)
        if not ctx2.closed:
            ctx2.close()

    (second_thread,) = loop2_thread
    for post in (post for mine in posted for post in mine):
        key = post.key
        if post.kind == "call":
            exactly_once(tally, "call", key, problems, loop_thread)
            continue
        if post.kind == "call2":
            # A plain call to a closed context is dropped: at most once.
            hits = tally.hits("call2", key)
            if len(hits) > 1 or (hits and (hits[0][1] != second_thread or post.after)):
                problems.add(
                    f"call_soon {key!r} to the closing context ran {len(hits)} times (after close: {post.after})"
                )
            continue
        task = post.task
        assert task is not None
        if not task.wait(TIMEOUT):  # the loop is done with it; any thread may wait now
            problems.add(f"task {key!r} never finished ({task.state})")
            continue
        assert_finished(task, key, problems)
        exactly_once(tally, "destroy", key, problems)
        if post.kind == "worker2":
            exactly_once(tally, "wdestroy", key, problems)
        if post.callback:
            exactly_once(tally, "callback", key, problems)
        if post.result:
            exactly_once(tally, "rdestroy", ("set", key), problems)
        funcs = tally.hits("func", key)
        if not funcs:
            if post.kind == "task":
                problems.add(f"task {key!r} on the open context: func never ran")
            if not isinstance(task.exception(), ContextClosedError):
                problems.add(f"task {key!r}: func never ran, yet its error is {task.exception()!r}")
            continue
        context_thread = loop_thread if post.kind == "task" else second_thread
        order, thread, (err, source_key) = funcs[0]
        if len(funcs) > 1:
            problems.add(f"task {key!r}: func ran {len(funcs)} times")
        if thread != context_thread:
            problems.add(f"task {key!r}: func ran on thread {thread}, not its context's {context_thread}")
        if source_key != key:
            problems.add(f"task {key!r}: func got the source of {source_key!r}")
        if post.after:
            problems.add(f"task {key!r} was completed after close() returned, yet func ran")
        destroys = tally.hits("destroy", key)
        if destroys and (destroys[0][1] != context_thread or destroys[0][0] < order):
            problems.add(f"task {key!r}: its destroy ran before func or off its context's thread")
        if post.kind == "worker2":
            expected = WorkerError if key[2] % 3 == 0 else type(None)
            if type(err) is not expected:
                problems.add(f"task {key!r}: func got {err!r}, expected a {expected.__name__}")
        elif isinstance(post.outcome, BaseException):
            if err is not post.outcome:
                problems.add(f"task {key!r}: func got {err!r}, not {post.outcome!r}")
        elif err is not None:
            problems.add(f"task {key!r}: func got {err!r}")
    # Both paths were taken: the closer waited for deliveries (checked
    # there), and each poster completed tasks after close() returned (each
    # checked above to have failed).
    if not any(post.after and post.kind == "task2" for mine in posted for post in mine):
        problems.add("no completion was posted after close()")
    problems.check_pending(pending_before)
    problems.check()


# -- wait() from other threads ------------------------------------------------------------

N_WAITED = 1500
N_WAITERS = 3
N_COMPLETERS = 2


@pytest.mark.timeout(60)
def test_wait_from_other_threads_returns_true_once_the_task_finished(
    ctx: qiotask.MainContext, runner: LoopRunner, make_pool: MakePool
) -> None:
    # Waiter threads wait for every task, blocking or polling with short
    # timeouts, while other threads and a pool complete, abort and cancel
    # them.  Each task completes only once a waiter said it is about to wait
    # for it, so the waits race the completions.  A wait() that returns True
    # comes after the whole completion: func and the destroy notifier ran,
    # the state is FINISHED; none may miss its wake-up.
    seed = SEED + 2
    rng, problems, tally, pending_before = begin_race(seed)
    pool = make_pool(3)
    loop_thread = threading.get_ident()
    n = N_WAITED
    nap = threading.Event()  # never set: a bounded pause, not a synchronization
    wanted = [threading.Event() for _ in range(n)]  # a waiter is about to wait for task i

    pauses = [rng.choice((0.0, 0.0, 0.0001, 0.0005)) for _ in range(n)]

    def worker(task: Task[Any], i: int) -> Any:
        wanted[i].wait(TIMEOUT)
        if pauses[i]:
            nap.wait(pauses[i])
        return ("worker", i)

    tasks: list[Task[Any]] = [
        Task(Source(i), tally.func, i, tally.destroy, context=ctx, name=f"waited-{i}") for i in range(n)
    ]
    has_worker = [rng.random() < 0.3 for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    # The pool runs the workers in the order they are waited for.
    for i in order:
        if has_worker[i]:
            tasks[i].run_in_thread(worker, i, tally.worker_destroy, pool=pool, abandon_on_cancel=rng.random() < 0.5)
    plain = [i for i in order if not has_worker[i]]
    waiters_done: list[int] = []

    def complete(k: int) -> None:
        r = random.Random(seed * 100 + k)
        for i in plain[k::N_COMPLETERS]:
            task = tasks[i]
            if not wanted[i].wait(TIMEOUT):
                problems.add(f"completer {k}: nobody waited for task {i}")
            if pauses[i]:
                nap.wait(pauses[i])
            how = r.random()
            if how < 0.5:
                task.complete(("complete", i))
            elif how < 0.8:
                task.abort(RacerError(f"abort {i}"))
            else:
                task.cancel()  # only the flag: the owner's completion delivers TaskCancelled
                task.complete()
            if r.random() < 0.2:
                tasks[r.choice(order)].cancel()  # and a worker, queued, running or done

    def wait_all(k: int) -> None:
        r = random.Random(seed * 100 + 50 + k)
        for i in order:
            task = tasks[i]
            wanted[i].set()
            if r.random() < 0.5:
                finished = task.wait(TIMEOUT)
            else:
                deadline = time.monotonic() + TIMEOUT
                while not (finished := task.wait(r.choice((0, 0.0001, 0.001)))):
                    if time.monotonic() > deadline:
                        break
            if not finished:
                problems.add(f"waiter {k}: task {i} did not finish within {TIMEOUT} s ({task.state})")
                break  # one is enough: do not wait TIMEOUT for each of the rest
            # wait() returned True: the completion has fully run.
            if task.state is not TaskState.FINISHED or not task.done():
                problems.add(f"waiter {k}: wait() returned True for task {i}, which is {task.state}")
            if len(tally.hits("func", i)) != 1 or len(tally.hits("destroy", i)) != 1:
                problems.add(f"waiter {k}: wait() returned True for task {i} before func and destroy ran")
            if not task.wait(0):
                problems.add(f"waiter {k}: wait(0) on finished task {i} returned False")
        waiters_done.append(k)

    waiters = [
        start_thread(problems.guard(f"waiter {k}", lambda k=k: wait_all(k)), f"stress-waiter-{k}")
        for k in range(N_WAITERS)
    ]
    completers = [
        start_thread(problems.guard(f"completer {k}", lambda k=k: complete(k)), f"stress-completer-{k}")
        for k in range(N_COMPLETERS)
    ]

    def settled() -> bool:
        return len(waiters_done) == N_WAITERS and tally.total("wdestroy") >= sum(has_worker)

    def missing() -> str:
        unfinished = [i for i in range(n) if not tasks[i].done()]
        return f"waiters done: {waiters_done}; unfinished tasks: {unfinished[:10]}"

    try:
        run_loop_until(runner, settled, lambda: not any(t.is_alive() for t in completers), missing, problems)
    finally:
        for thread in (*completers, *waiters):
            join(thread)

    for i, task in enumerate(tasks):
        exactly_once(tally, "func", i, problems, loop_thread)
        exactly_once(tally, "destroy", i, problems, loop_thread)
        if has_worker[i]:
            exactly_once(tally, "wdestroy", i, problems, loop_thread)
        assert_finished(task, i, problems)
        funcs = tally.hits("func", i)
        if funcs and task.cancelled() != isinstance(funcs[0][2], TaskCancelled):
            problems.add(f"task {i}: cancelled() is {task.cancelled()} but func got {funcs[0][2]!r}")
    problems.check_pending(pending_before)
    problems.check()


# -- wait_thread() against call_in_main() ---------------------------------------------------

N_WAVES = 250
WAVE = 4


@pytest.mark.timeout(60)
def test_call_in_main_while_the_context_thread_waits_in_wait_thread(
    ctx: qiotask.MainContext, runner: LoopRunner, make_pool: MakePool
) -> None:
    # In waves: the context thread starts a few workers, lets its loop turn
    # once or not, then calls wait_thread() on each in turn, while each
    # worker calls call_in_main() a few times and another thread cancels
    # some.  A call is served once, by the loop or by the wait, whichever
    # comes first; the wait returns with the completion run; nothing
    # deadlocks.  The pool has room for every worker of two waves, so a
    # worker never waits for a thread that a blocked worker holds.
    seed = SEED + 3
    rng, problems, tally, pending_before = begin_race(seed)
    pool = make_pool(3 * WAVE)
    loop_thread = threading.get_ident()
    n = N_WAVES * WAVE
    nap = threading.Event()  # never set: a bounded pause, not a synchronization
    calls = [rng.randrange(4) for _ in range(n)]
    abandons = [rng.random() < 0.3 for _ in range(n)]
    pauses = [rng.choice((0.0, 0.0001, 0.0005)) for _ in range(n)]
    turn_first = [rng.random() < 0.5 for _ in range(N_WAVES)]
    got: list[list[Any]] = [[] for _ in range(n)]
    started = [False] * n
    tasks: list[Task[Any]] = []
    waves = [threading.Event() for _ in range(N_WAVES)]  # wave w's workers were started
    all_waited = threading.Event()

    def in_main(i: int, c: int) -> Any:
        tally.hit("main", (i, c), inside[0])
        return ("main", i, c)

    def worker(task: Task[Any], i: int) -> Any:
        started[i] = True
        for c in range(calls[i]):
            if c and task.cancelled():
                break
            got[i].append(task.call_in_main(in_main, i, c))
            if pauses[i]:
                nap.wait(pauses[i])
        return ("worker", i)

    waves_left = list(range(N_WAVES))
    inside: list[int | None] = [None]  # the task the context thread waits for in wait_thread()
    phase = ["start"]
    waiter = random.Random(seed * 100 + 1)

    def step() -> bool:
        # On the context thread, one phase of one wave per loop iteration.
        try:
            w = waves_left[0]
            first = w * WAVE
            if phase[0] == "start":
                for i in range(first, first + WAVE):
                    task: Task[Any] = Task(Source(i), tally.func, i, tally.destroy, context=ctx, name=f"waited-{i}")
                    tasks.append(task)
                    task.run_in_thread(worker, i, tally.worker_destroy, pool=pool, abandon_on_cancel=abandons[i])
                waves[w].set()
                phase[0] = "wait"
                if turn_first[w]:
                    return True  # the loop turns once: it may serve some calls first
            order = list(range(first, first + WAVE))
            waiter.shuffle(order)
            for i in order:
                inside[0] = i
                tasks[i].wait_thread()
                inside[0] = None
                if not tasks[i].done() or len(tally.hits("func", i)) != 1:
                    problems.add(f"wait_thread() on task {i} returned before its completion ran")
            phase[0] = "start"
            waves_left.pop(0)
            if not waves_left:
                all_waited.set()
                return False
            return True
        except BaseException:
            problems.add(f"the context thread raised:\n{traceback.format_exc()}")
            all_waited.set()
            return False

    def cancel_some() -> None:
        r = random.Random(seed * 100 + 2)
        for w in range(N_WAVES):
            if not waves[w].wait(TIMEOUT):
                problems.add(f"wave {w} never started")
                return
            for _ in range(r.randrange(3)):
                if r.random() < 0.5:
                    nap.wait(r.choice((0.0001, 0.0005)))
                tasks[w * WAVE + r.randrange(WAVE)].cancel()

    canceller = start_thread(problems.guard("canceller", cancel_some), "stress-canceller")
    ctx.timeout_add(0, step)

    def settled() -> bool:
        return all_waited.is_set() and tally.total("wdestroy") >= len(tasks)

    def missing() -> str:
        lost = [i for i in range(len(tasks)) if not tally.hits("wdestroy", i)]
        return f"waves left: {len(waves_left)}; worker destroys never run: {lost[:10]}"

    try:
        run_loop_until(runner, settled, all_waited.is_set, missing, problems)
    finally:
        all_waited.set()
        for event in waves:
            event.set()
        join(canceller)

    for i, task in enumerate(tasks):
        f = exactly_once(tally, "func", i, problems, loop_thread)
        exactly_once(tally, "destroy", i, problems, loop_thread)
        exactly_once(tally, "wdestroy", i, problems, loop_thread)
        assert_finished(task, i, problems)
        if got[i] != [("main", i, c) for c in range(len(got[i]))]:
            problems.add(f"task {i}: call_in_main() returned {got[i]!r}")
        if len(got[i]) < calls[i] and not task.cancelled():
            problems.add(f"task {i}: its worker made {len(got[i])} of {calls[i]} calls, uncancelled")
        for c in range(len(got[i])):
            hit = exactly_once(tally, "main", (i, c), problems, loop_thread)
            if hit is not None and hit[2] not in (None, i):
                problems.add(f"call_in_main {c} of task {i} was served inside wait_thread() of task {hit[2]}")
        if f is not None:
            err = f[2]
            if task.cancelled() != isinstance(err, TaskCancelled):
                problems.add(f"task {i}: cancelled() is {task.cancelled()} but func got {err!r}")
            if err is None and task.get_result() != ("worker", i):
                problems.add(f"task {i}: result {task.get_result()!r}, not the worker's")
            if abandons[i] and task.cancelled() and started[i] and task.get_result() == ("worker", i):
                problems.add(f"task {i}: the abandoned worker's late result was kept")
    if len(tasks) != n:
        problems.add(f"only {len(tasks)} of {n} tasks were started")
    problems.check_pending(pending_before)
    problems.check()


# -- cancels on the context thread, timed around worker starts ------------------------------

N_STARTS = 20000
#: Tasks started and cancelled per loop iteration.
BATCH = 100
#: The cancel comes after 0 to SPIN turns of an empty loop: from before the
#: pool thread picks the job up to after the worker returned.
SPIN = 3000


@pytest.mark.timeout(60)
def test_cancels_timed_around_worker_starts_never_send_a_task_back(
    ctx: qiotask.MainContext, runner: LoopRunner, make_pool: MakePool
) -> None:
    # The context thread starts a worker on an idle one-thread pool, spins
    # for a random while, and cancels it: the cancel lands before, during or
    # after the pool thread's start step.  A cancel that completes the task
    # (abandon_on_cancel, or still queued) delivers it on the context thread
    # before it returns, and nothing may move the task back afterwards (the
    # old code's pool thread could store RUNNING over FINISHED).
    seed = SEED + 4
    rng, problems, tally, pending_before = begin_race(seed)
    pool = make_pool(1)
    loop_thread = threading.get_ident()
    spins = [rng.randrange(SPIN) for _ in range(N_STARTS)]
    abandons = [rng.random() < 0.75 for _ in range(N_STARTS)]
    started = [False] * N_STARTS
    tasks: list[Task[Any]] = []
    all_started = threading.Event()
    deadline = time.monotonic() + RACE_SECONDS

    def worker(task: Task[Any], i: int) -> Any:
        started[i] = True
        return ("worker", i)

    def batch() -> bool:
        try:
            for _ in range(BATCH):
                i = len(tasks)
                if i == N_STARTS or time.monotonic() > deadline:
                    all_started.set()
                    return False
                task: Task[Any] = Task(Source(i), tally.func, i, tally.destroy, context=ctx, name=f"started-{i}")
                tasks.append(task)
                task.run_in_thread(worker, i, tally.worker_destroy, pool=pool, abandon_on_cancel=abandons[i])
                for _ in range(spins[i]):
                    pass
                if task.cancel() and abandons[i] and task.state is not TaskState.FINISHED:
                    problems.add(f"task {i}: {task.state} right after the cancel that completed it")
        except BaseException:
            problems.add(f"the context thread raised:\n{traceback.format_exc()}")
            all_started.set()
            return False
        return True

    ctx.timeout_add(0, batch)

    def settled() -> bool:
        return all_started.is_set() and tally.total("wdestroy") >= len(tasks) and tally.total("destroy") >= len(tasks)

    def missing() -> str:
        lost = [i for i in range(len(tasks)) if not tally.hits("wdestroy", i) or not tally.hits("destroy", i)]
        return f"tasks whose destroy or worker destroy never ran: {lost[:10]}"

    run_loop_until(runner, settled, all_started.is_set, missing, problems)

    for i, task in enumerate(tasks):
        f = exactly_once(tally, "func", i, problems, loop_thread)
        exactly_once(tally, "destroy", i, problems, loop_thread)
        exactly_once(tally, "wdestroy", i, problems, loop_thread)
        assert_finished(task, i, problems)
        if f is None:
            continue
        err = f[2]
        if task.cancelled() != isinstance(err, TaskCancelled):
            problems.add(f"task {i}: cancelled() is {task.cancelled()} but func got {err!r}")
        abandoned = abandons[i] and task.cancelled() and started[i]
        if abandoned and task.get_result() == ("worker", i):
            problems.add(f"task {i}: the abandoned worker's late result was kept")
        if started[i] and not abandoned and task.get_result() != ("worker", i):
            problems.add(f"task {i}: the worker returned ('worker', {i}) but the result is {task.get_result()!r}")
    problems.check_pending(pending_before)
    problems.check()
