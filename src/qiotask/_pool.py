"""WorkerPool: persistent threads that run ``fn()`` and hand the outcome on.

The pool knows nothing of tasks or event loops.  Its whole job is::

    pool.submit(fn, deliver)   # later, on a pool thread: deliver(fn(), None)
                               # or, if fn raised:        deliver(None, exc)

Guarantees:

- ``deliver`` is called exactly once per accepted job, on the thread that ran
  ``fn``, even when ``fn`` raises.  An exception escaping ``deliver`` itself is
  logged and the thread carries on.
- Nothing of a job outlives its delivery: once ``deliver`` has returned, the
  pool holds no reference to ``fn``, ``deliver``, the result, the exception
  or its traceback.  A thread does not keep its first job for its whole life,
  nor its last result until the next job: what the job's owner drops is freed.
- After each job, "count it done, take the next queued job (whatever its
  lane) or go idle (or retire)" is one locked step: one acquisition of the
  pool's lock per job.  ``submit()`` decides between handing a job to a
  sleeping thread and queueing it under the same lock, so a queued job always
  has a running thread that will take it, and :meth:`WorkerPool.statistics`
  sees ``submitted == completed + queued + busy`` (but for the moment a
  thread started by growth is on its way to the job it was started for).
- Queued jobs start highest ``priority`` first, and in submission order within
  one priority.
- An idle thread is reused before a new one is started; the most recently idle
  thread is picked first, so that surplus threads stay idle and expire after
  ``idle_timeout`` seconds.
- While jobs wait and the pool has threads to spare, a waiting job is taken
  by a spare thread within about :data:`STANDBY_TICK` seconds, so blocking
  jobs (DNS, disk) run side by side.
- With ``grow_after`` set, a pool whose every thread is busy cannot stall
  for good on its queue (workers that wait for queued jobs): see *Growth*.
- A duration beyond ``threading.TIMEOUT_MAX`` (``math.inf`` included) means
  *never*: with such an ``idle_timeout`` idle threads never expire, with such
  a ``grow_after`` the pool never grows (see :mod:`qiotask._checks`).
- Pool threads run in an empty ``contextvars.Context()``, whatever the thread
  that started them had set: on a free-threaded build a new thread would
  otherwise start with a copy of its creator's context (trio #3472, anyio
  #1224), and a job would see the variables of whichever submit happened to
  start its thread.  A job that wants its submitter's context carries a copy
  (``Task.run_in_thread`` does).
- After ``os.fork()`` the child starts with an empty pool: the parent's threads
  do not exist there, so their bookkeeping is dropped rather than waited on.
  The fork happens while this module holds every lock it has (see *Fork*), so
  the child never copies a half-made move.

Guarantees / assumes -- the steps taken without the pool's lock, and why each
holds on a free-threaded build too:

- :func:`default_pool`'s fast path loads the module global ``_default_pool``
  and the pool's ``_shutdown`` without ``_default_lock``.  A module global is
  a dict item, and dict loads and stores are atomic on every build (the
  free-threaded one gives each dict its own lock); the pool is fully built
  before the store that publishes it.  A stale ``_shutdown`` of False only
  means that ``submit()``, which checks it again under the pool's lock,
  raises ``RuntimeError`` as if the shutdown had come a moment later.
- A sleeping thread's ``wake`` lock is released by the thread that hands it a
  job and acquired by the sleeper: ``threading.Lock`` allows that on every
  build, and the job itself is passed in ``_Worker.job``, under the pool's
  lock, not through the wake-up.
- A sleeping thread reads ``_standby`` without the lock, only to choose how
  long its next wait is (a tick, or ``idle_timeout``), and decides nothing
  on it: every outcome is rechecked under the lock.  An attribute load
  returns one whole value on every build; a stale one costs at most one wait
  of the other length, since a thread made the standby is also woken.
- ``max_workers``, ``idle_timeout``, ``grow_after`` and ``name`` are set in
  ``__init__``, before the pool is shared, and never changed: read freely.
- ``_Worker.running``, the job a thread runs now, is stored by that thread
  alone (before and after each job) and loaded by :meth:`WorkerPool.jobs`
  from any thread, for ``qiotask.tasks()``: one attribute store and one
  load, each atomic on every build.  A stale load shows a job that has just
  returned (or not yet the next one): a listing, nothing decided on it.

Everything else -- the queues, the counters, the idle stack, the standby,
each worker's job -- is read and changed under the pool's lock only; no
"store here, load there" handshake between threads stands in for it.

Protocol point (:mod:`qiotask._points`): ``pool.job-done``, on the pool
thread, after ``deliver`` returned and the job was dropped, before the
next-job step (the pool is passed).

How work is spread, and why: every hand-over of a job to a sleeping thread
costs a futex wake-up and a fight for the GIL, which for short jobs costs more
than the job.  So a job is handed to a sleeping thread only when no thread of
the pool is running; otherwise it is queued for the running threads, and one
spare thread stands by, waking every STANDBY_TICK to take the next queued job
if the oldest queued job has waited that long (the running threads are then
blocked, or too few).  Short jobs thus run back to back on one thread, and
blocking jobs fan out across the pool a tick apart.

Priority lanes: priority 0 has its own deque, ``_pending``; other priorities
get a deque each in ``_lanes``, created when a job of that priority is queued
and dropped when it empties, with ``_order`` listing them highest first.
While no other lane holds jobs, taking the next job is a pop from the front
of ``_pending``, inside the same locked step that counts the finished job.
The standby's clock is the *oldest* queued job, whatever its priority, while
the job it takes is the one that would run next: a low-priority job that has
waited a tick means the running threads are not keeping up.

Growth: when every thread is busy, no thread is spare to notice that the
queue stalls, so a timer of :mod:`qiotask._deadline` watches instead.  It is
armed when a job is queued (or left queued by the standby) while every thread
is busy, and stays armed while jobs are queued.  When it fires, and every
thread is still busy, no job has finished since the last check, and the
oldest queued job has waited ``grow_after * (1 + extra)`` seconds, where
``extra`` counts the threads beyond ``max_workers``, one more thread starts
with the next job; the next check comes that many seconds later again.  A
job that finishes starts the count again, so a pool that is merely slow
(its jobs finish, just not fast enough) does not grow; a pool whose threads
all wait on queued jobs grows one thread at a time, each a little later.
Threads beyond ``max_workers`` retire as soon as they find the queue empty.
Whether the timer is armed (``_grow_armed``) is decided under the pool's
lock; the timer itself is set just after the lock is released, so that the
deadline module's lock is never taken under a pool's.

Performance: the one locked step per job costs one lock acquisition on the
worker's side, which the old design (an unlocked ``popleft`` while only
priority 0 was queued) did not pay.  The acquisition itself is cheap; what is
not is a lock *convoy* on a GIL build: if a thread is switched out while it
holds the pool's lock, the other thread blocks on it, is later woken holding
it but without the GIL, and from then on every acquisition becomes a
hand-over between the two threads (measured on 3.11: a quarter of the
throughput of no-op jobs).  A GIL build switches threads at its eval-breaker
checks -- after a call, at a backward jump, at a function's start -- not in
the straight-line code of a ``with lock:`` block that calls nothing; so the
locked steps on the hot path (``submit()`` queueing for running threads, and
the next-job step while only priority 0 is queued) make no call at all:
``pending += (job,)`` for ``append``, ``pending[0]`` and ``del pending[0]``
for ``popleft``, the queued time taken before the lock, and no helper
method.  Measured so, the pool's lock was never once found held by the
other thread in 400,000 acquisitions, where before it convoyed.  This is
about speed only: a switch inside a locked step (a finalizer run by the
garbage collector, another interpreter) costs time, never a wrong result.
On a free-threaded build the lock is contended for real, and costs what a
futex costs.

Fork: ``os.register_at_fork`` handlers take, in this order, ``_default_lock``,
``_registry_lock`` and the lock of every pool, before the fork; the parent
releases them after it, and the child releases them too and empties every pool
(a pool shut down in the parent stays shut down).  The order is the order in
which the code nests them (:func:`default_pool` registers a new pool while it
holds ``_default_lock``; no code holds two pools' locks at once), and while
it holds one of them the code takes no lock of another module (the growth
timer is set after the pool's lock is released; nothing is logged under
it), so the handlers cannot deadlock with the threads that use these locks.
Across modules the handlers run ``_limiter``'s, then these, then
``_deadline``'s (``before`` handlers run last-registered first, and the
imports fix the registration order ``_deadline``, ``_pool``, ``_limiter``):
a module that takes ``_registry_lock`` under a lock of its own (``net``
makes its DNS pool under ``_dns_lock``) imports this one, so a ``before``
handler of its would run first, in the same order.
A job that forks leaves, in the child, a thread the emptied pool no longer
knows: once its job is delivered it notices (its ``_Worker.epoch`` is not the
pool's) and ends, without touching the child's bookkeeping.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypedDict

from . import _deadline, _fork, _points
from ._checks import check_duration, wait_timeout
from ._hold import hold

__all__ = ["DEFAULT_GROW_AFTER", "DEFAULT_MAX_WORKERS", "STANDBY_TICK", "PoolStatistics", "WorkerPool", "default_pool"]

logger = logging.getLogger("qiotask")

#: Default pool size, the same rule as ``concurrent.futures.ThreadPoolExecutor``:
#: blocking work is mostly I/O (DNS, disk, sockets), so a few more threads than
#: cores, capped so that a burst of jobs cannot start hundreds of threads.
DEFAULT_MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)

#: Default ``grow_after``: how many seconds a pool whose every thread is busy
#: waits, with no job finishing, before it starts a thread beyond
#: ``max_workers`` for its oldest queued job.
DEFAULT_GROW_AFTER = 0.25

#: How long a queued job may wait before the standby thread takes it: short
#: enough that blocking jobs fan out quickly (six threads busy within ~6 ms),
#: long enough that a thread running short jobs back to back drains the queue
#: first.  It is below Python's 5 ms GIL switch interval on purpose.
STANDBY_TICK = 0.001

#: How long the standby thread keeps ticking after the pool last had queued
#: or running work, so that a steady stream of batches does not pay for
#: waking a new standby each time (at most 1 / STANDBY_TICK cheap wake-ups a
#: second, and only while work is around).
STANDBY_LINGER = 0.05

Deliver = Callable[[Any, "BaseException | None"], None]
# (fn, deliver, time queued); the time matters only for queued jobs.
_Job = tuple[Callable[[], Any], Deliver, float]


def _never_called() -> None:
    raise AssertionError("_TAKE_NEXT is a marker, not a job")


#: The job given to a thread started by growth: "take the next queued job".
#: It stays in the queue until that thread runs, so a thread that cannot
#: start loses nothing.
_TAKE_NEXT: _Job = (_never_called, lambda result, exc: None, 0.0)

_monotonic = time.monotonic

#: The default priority.  ``priority is _ZERO`` holds for every int 0 in
#: CPython (small ints are cached), which makes the default cost one
#: identity test; a 0 that is another object is merely checked the long way.
_ZERO = 0


class PoolStatistics(TypedDict):
    """What :meth:`WorkerPool.statistics` returns."""

    threads: int
    busy: int
    idle: int
    queued: int
    max_workers: int
    submitted: int
    completed: int
    extra: int
    queued_by_priority: dict[int, int]


class _Worker:
    """One pool thread and the lock that wakes it."""

    __slots__ = ("epoch", "job", "running", "signalled", "thread", "wake")

    def __init__(self, epoch: object) -> None:
        # The pool's _epoch when the thread was made; a fork makes a new one.
        self.epoch = epoch
        # Both guarded by the pool's lock.
        self.job: _Job | None = None
        self.signalled = False
        # A lock used as a binary semaphore: the sleeping thread blocks
        # acquiring it; _signal() releases it once.  One futex per hand-over,
        # cheaper than a Condition shared by all sleeping threads.
        self.wake = threading.Lock()
        self.wake.acquire()
        self.thread: threading.Thread | None = None
        # The job this thread runs now, else None: written by the thread
        # alone, read by jobs() from any thread (one load of one attribute,
        # atomic with or without the GIL).
        self.running: _Job | None = None


#: Every pool, for the fork handlers, qiotask.shutdown() and stats().  Added
#: to under _registry_lock (a WeakSet is not safe to add to while another
#: thread iterates it); see all_pools().
_all_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()
_registry_lock = threading.Lock()


def all_pools() -> list[WorkerPool]:
    """A snapshot of every pool alive, taken under the registry's lock."""
    with _registry_lock:
        return list(_all_pools)


def _check_priority(priority: object) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an int, not {type(priority).__name__}")
    return int(priority)  # an IntEnum member becomes a plain int


class WorkerPool:
    """A pool of reusable worker threads.

    Args:
        max_workers: how many threads may run jobs at once before the pool
            grows; by default :data:`DEFAULT_MAX_WORKERS`
            (``min(32, cpu_count + 4)``).
        idle_timeout: seconds an idle thread waits for work before it exits;
            ``math.inf`` (or anything above ``threading.TIMEOUT_MAX``): never.
        name: prefix of the thread names (``"<name>-worker-<n>"``).
        grow_after: seconds after which a pool whose every thread is busy,
            with no job finishing, starts one more thread beyond
            ``max_workers`` for its queued jobs; each further extra thread
            waits ``grow_after * (1 + extra)``.  None, or ``math.inf`` (or
            anything above ``threading.TIMEOUT_MAX``), turns growth off.

    Raises:
        ValueError: ``max_workers`` below 1, a negative ``idle_timeout`` or
            a negative (or NaN) ``grow_after``.
        TypeError: arguments of the wrong type.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        idle_timeout: float = 10.0,
        name: str = "qiotask",
        grow_after: float | None = DEFAULT_GROW_AFTER,
    ) -> None:
        if max_workers is None:
            max_workers = DEFAULT_MAX_WORKERS
        if not isinstance(max_workers, int) or isinstance(max_workers, bool):
            raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        idle = check_duration(idle_timeout, "", "idle_timeout")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        grow = check_duration(grow_after, "", "grow_after", optional=True)
        self.max_workers = max_workers
        self.idle_timeout = idle
        self.name = name
        self.grow_after = grow
        # What an idle thread's wake.acquire() is given: -1 waits for ever.
        idle_wait = wait_timeout(idle)
        self._idle_wait = -1.0 if idle_wait is None else idle_wait
        # Growth is on for a finite grow_after (inf means never: no timer).
        self._grow_period = None if grow is None or grow == math.inf else grow
        self._reset()
        with _registry_lock:
            _all_pools.add(self)

    def _reset(self) -> None:
        # _lock guards every field below it, and each worker's job/signalled.
        mutex = threading.Lock()
        self._lock = hold(mutex)  # a cheaper ``with`` (see _hold)
        self._exited = threading.Condition(mutex)  # a thread left _threads
        # A new identity per reset (a fork): threads made before it are not
        # of this pool any more.
        self._epoch = object()
        # Queued jobs: priority 0 in _pending, every other priority in a lane
        # of its own.
        self._pending: deque[_Job] = deque()
        self._lanes: dict[int, deque[_Job]] = {}  # only lanes that hold jobs
        self._order: list[int] = []  # the keys of _lanes, highest first
        self._idle: list[_Worker] = []  # a stack: the warmest thread on top
        self._standby: _Worker | None = None  # the spare thread that ticks
        self._threads: set[threading.Thread] = set()  # to join at shutdown
        self._workers: set[_Worker] = set()  # the same threads' workers, for jobs()
        self._alive = 0  # threads not yet decided to exit (> max_workers: grown)
        self._busy = 0  # threads running (or handed) a job
        self._shutdown = False
        self._thread_seq = 0  # the number in the last thread's name
        self._submitted = 0  # jobs accepted
        self._completed = 0  # jobs delivered
        self._grow_armed = False  # the growth timer is set (or being set)
        self._grow_mark = 0  # _completed when the growth timer last looked

    # -- submitting ---------------------------------------------------------

    def submit(self, fn: Callable[[], Any], deliver: Deliver, priority: int = 0) -> None:
        """Run ``fn()`` on a pool thread, then ``deliver(result, exc)`` there.

        Queued jobs start highest ``priority`` first, first come first served
        within one priority.

        Raises:
            TypeError: ``priority`` is not an int.
            RuntimeError: the pool was shut down.
        """
        if priority is not _ZERO:  # the usual 0 in one test; anything else is checked
            priority = _check_priority(priority)
        # Made before the lock, so that no call is made under it when the
        # job is queued for running threads (see Performance).
        job = (fn, deliver, _monotonic())
        one = (job,)
        start = None
        arm = None
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"worker pool {self.name!r} is shut down")
            self._submitted += 1
            if self._busy == 0:
                # Nobody is running (so nothing is queued): hand the job over.
                worker = self._take_sleeper()
                if worker is not None:
                    self._busy += 1
                    self._signal(worker, job)
                    return
                if self._alive < self.max_workers:
                    self._busy += 1
                    start = self._new_thread_locked(job)
            if start is None:
                if priority:
                    self._enqueue_locked(job, priority)
                else:
                    self._pending += one  # append(), without a call (see Performance)
                if self._standby is None:
                    if self._idle or self._alive < self.max_workers:
                        start = self._arm_standby_locked()
                    elif not self._grow_armed and self._busy >= self._alive:
                        arm = self._watch_locked()  # no spare thread: watch for a stall
        if arm is not None:
            self._arm_grow(arm)
        if start is not None:
            if start.job is None:
                self._start_standby(start)  # the job is queued either way
            else:
                self._start(start)

    # Everything named *_locked, and _take_sleeper/_signal, runs under _lock.

    def _enqueue_locked(self, job: _Job, priority: int) -> None:
        """Queue a job of a priority other than 0 at the back of its lane."""
        lane = self._lanes.get(priority)
        if lane is None:
            lane = self._lanes[priority] = deque()
            self._order.append(priority)
            self._order.sort(reverse=True)
        lane.append(job)

    def _pop_locked(self) -> _Job | None:
        """Take the job that runs next: the oldest of the highest priority."""
        lanes = self._lanes
        if not lanes:  # the usual case: priority 0 only
            pending = self._pending
            return pending.popleft() if pending else None
        order = self._order
        top = order[0]
        if top < 0 and self._pending:
            return self._pending.popleft()
        lane = lanes[top]
        job = lane.popleft()
        if not lane:
            del lanes[top]
            del order[0]
        return job

    def _oldest_locked(self) -> float | None:
        """When the oldest queued job was queued, whatever its priority."""
        oldest = self._pending[0][2] if self._pending else None
        for lane in self._lanes.values():
            queued_at = lane[0][2]
            if oldest is None or queued_at < oldest:
                oldest = queued_at
        return oldest

    def _take_sleeper(self) -> _Worker | None:
        if self._idle:
            return self._idle.pop()
        worker = self._standby
        if worker is not None:
            self._standby = None
        return worker

    def _signal(self, worker: _Worker, job: _Job | None) -> None:
        worker.job = job
        if not worker.signalled:
            worker.signalled = True
            worker.wake.release()

    def _new_thread_locked(self, job: _Job | None) -> _Worker:
        worker = _Worker(self._epoch)
        worker.job = job
        self._thread_seq += 1
        thread = threading.Thread(
            # An empty context, not the starter's (see Guarantees).
            target=contextvars.Context().run,
            args=(self._work, worker),
            name=f"{self.name}-worker-{self._thread_seq}",
            daemon=True,
        )
        worker.thread = thread
        self._threads.add(thread)
        self._workers.add(worker)
        self._alive += 1
        return worker

    def _arm_standby_locked(self) -> _Worker | None:
        """Make a spare thread the standby; returns a new one to start."""
        if self._idle:
            worker = self._idle.pop()
            self._standby = worker
            self._signal(worker, None)
            return None
        if self._alive < self.max_workers:
            worker = self._new_thread_locked(None)
            self._standby = worker
            return worker
        return None

    def _idle_or_retire_locked(self, worker: _Worker) -> bool:
        """A thread found no job: it goes idle, or (returns True) retires."""
        self._busy -= 1
        if self._shutdown or self._alive > self.max_workers:
            self._alive -= 1  # shut down, or a grown thread: retire
            return True
        self._idle.append(worker)
        return False

    def _start(self, worker: _Worker) -> None:
        assert worker.thread is not None
        try:
            worker.thread.start()
        except BaseException:
            with self._lock:
                self._threads.discard(worker.thread)
                self._workers.discard(worker)
                self._exited.notify_all()
                self._alive -= 1
                if worker.job is not None:
                    self._busy -= 1
                    self._submitted -= 1
                if self._standby is worker:
                    self._standby = None
            raise

    def _start_standby(self, worker: _Worker) -> None:
        # A standby that cannot start (no more threads) costs parallelism,
        # not work: queued jobs still run on the threads already running.
        try:
            self._start(worker)
        except Exception:
            logger.exception("pool %r could not start a standby thread", self.name)

    # -- growth -------------------------------------------------------------

    def _grow_wait_locked(self) -> float:
        """How long the queue must stall before the next thread starts."""
        assert self._grow_period is not None
        return self._grow_period * (1 + max(0, self._alive - self.max_workers))

    def _watch_locked(self) -> float | None:
        """Jobs are queued and every thread may be busy: decide to check for
        a stall in one growth period.  Returns when, for :meth:`_arm_grow`
        once the lock is released; None if already armed or growth is off."""
        if self._grow_period is None or self._grow_armed:
            return None
        self._grow_armed = True
        self._grow_mark = self._completed
        return _monotonic() + self._grow_wait_locked()

    def _arm_grow(self, when: float) -> None:
        """Set the growth timer that ``_grow_armed`` says is set.

        Called without the pool's lock: the deadline module's lock is never
        taken under a pool's (see Fork).  Until the timer exists nothing can
        clear ``_grow_armed``, so no second timer is set meanwhile."""
        try:
            _deadline.call_at(when, self._grow_check)
        except BaseException as exc:
            with self._lock:
                self._grow_armed = False
            if not isinstance(exc, Exception):
                raise
            # Queued jobs still run on the threads there are; the next job
            # queued while every thread is busy tries again.
            logger.exception("pool %r could not set its growth timer", self.name)

    def _grow_check(self) -> None:
        """On the timer thread: start one more thread if the queue stalls."""
        worker = None
        with self._lock:
            oldest = self._oldest_locked()
            if oldest is None:
                self._grow_armed = False
                return  # nothing queued: the next queued job arms it again
            # Still armed: whatever happens below, the timer is set again.
            now = _monotonic()
            wait = self._grow_wait_locked()
            done = self._completed
            if self._busy < self._alive or done != self._grow_mark:
                # A spare thread (the standby) takes the job, or jobs still
                # finish: no stall.  Count a whole period again.
                self._grow_mark = done
                when = now + wait
            elif now - oldest < wait:
                # Stalled, but the oldest job came later than the count.
                when = oldest + wait
            else:
                # One more thread, counted busy like a thread handed a job; it
                # takes the next queued job itself once it runs.
                self._busy += 1
                worker = self._new_thread_locked(_TAKE_NEXT)
                when = now + self._grow_wait_locked()
        self._arm_grow(when)
        if worker is None:
            return
        try:
            self._start(worker)
        except Exception:
            # _start() undid the thread's bookkeeping, and uncounted a job it
            # thought it carried; the job is still queued: count it again.
            with self._lock:
                self._submitted += 1
            logger.exception("pool %r could not start a thread beyond max_workers", self.name)

    # -- the thread ---------------------------------------------------------

    def _work(self, worker: _Worker) -> None:
        """The thread's target, run inside an empty ``contextvars.Context``."""
        try:
            self._run(worker)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
                self._workers.discard(worker)
                self._exited.notify_all()

    def _run(self, worker: _Worker) -> None:
        """Run jobs, sleep between them; return once the thread is to exit.

        Nothing of a job is kept past its delivery: the job tuple, ``fn``,
        ``deliver`` and the result are dropped before the next-job step, and
        an ``except ... as`` name is unbound when its block ends.  Locals are
        read from ``self`` afresh after every job rather than cached, so that
        a thread that forked finds the child's lock (see Fork).
        """
        with self._lock:
            job = worker.job
            worker.job = None
            if job is _TAKE_NEXT:  # started by growth: take the next queued job
                job = self._pop_locked()
                if job is None and self._idle_or_retire_locked(worker):
                    return  # the running threads took it meanwhile
        result: Any = None
        while True:
            if job is None:
                job = self._sleep(worker)
                if job is None:
                    return
            worker.running = job  # for jobs(): one store, on this thread only
            fn, deliver, _ = job
            job = None
            try:
                try:
                    result = fn()
                except BaseException as exc:
                    deliver(None, exc)
                else:
                    deliver(result, None)
            except BaseException:
                logger.exception("exception in a worker pool's deliver callback")
            del fn, deliver
            result = None
            worker.running = None
            if _points.hook is not None:
                _points.hook("pool.job-done", self)
            # The one locked step per job: count it done, then take the next
            # job or go idle.  Doing both under the lock is what lets submit()
            # trust _busy (nobody running means nobody will pop the queue) and
            # lets the lane check and the pop see the same queues.
            # Inline and without a call on the hot path: see Performance.
            with self._lock:
                if worker.epoch is not self._epoch:
                    return  # a job forked and this is the child: not ours any more
                self._completed += 1
                if self._lanes:
                    job = self._pop_locked()
                elif self._pending:
                    pending = self._pending
                    job = pending[0]  # popleft(), without a call (see Performance)
                    del pending[0]
                elif self._idle_or_retire_locked(worker):
                    return

    def _sleep(self, worker: _Worker) -> _Job | None:
        """Wait, idle or on standby, for a job; None means exit."""
        linger_until = _monotonic() + STANDBY_LINGER
        start: _Worker | None = None
        arm: float | None = None
        while True:
            standby = self._standby is worker  # a hint; rechecked under the lock
            got = worker.wake.acquire(timeout=STANDBY_TICK if standby else self._idle_wait)
            with self._lock:
                if got:
                    worker.signalled = False
                    job = worker.job
                    if job is not None:
                        worker.job = None
                        return job  # the giver counted us busy
                    if self._shutdown:
                        self._alive -= 1
                        return None
                    linger_until = _monotonic() + STANDBY_LINGER
                    continue  # made the standby
                if self._standby is worker:
                    now = _monotonic()
                    oldest = self._oldest_locked()
                    if oldest is not None and now - oldest >= STANDBY_TICK:
                        # The running threads are not keeping up: help.
                        job = self._pop_locked()
                        if job is None:
                            continue
                        self._standby = None
                        self._busy += 1
                        if self._pending or self._lanes:
                            start = self._arm_standby_locked()
                            if start is None and self._standby is None and self._busy >= self._alive:
                                arm = self._watch_locked()  # the last spare thread went
                        break
                    if oldest is not None or self._busy:
                        linger_until = now + STANDBY_LINGER
                    elif now >= linger_until:
                        self._standby = None
                        self._idle.append(worker)
                    continue
                if worker in self._idle:
                    self._idle.remove(worker)
                    self._alive -= 1
                    return None
                # Taken off the idle stack while our wait timed out: the
                # signal is on its way (it was sent under this lock).
        if arm is not None:
            self._arm_grow(arm)
        if start is not None:
            self._start_standby(start)
        return job

    # -- control ------------------------------------------------------------

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Stop accepting jobs; sleeping threads exit, queued jobs still run.

        Args:
            wait: block until every thread has exited.
            timeout: the most seconds to wait in all, or None (or
                ``math.inf``) for no limit.

        Returns:
            True when no thread of the pool is left running.

        Raises:
            TypeError: ``timeout`` is not a number or None.
            ValueError: ``timeout`` is negative or NaN.
            RuntimeError: ``wait`` is true and this is one of the pool's
                own threads, which cannot exit while it waits (as
                ``ThreadPoolExecutor.shutdown()`` cannot join its own
                thread; two such calls would wait for each other for ever):
                call ``shutdown(wait=False)`` there.  The pool is left as
                it was.
        """
        limit = wait_timeout(check_duration(timeout, "shutdown", optional=True))
        me = threading.current_thread()
        arm = None
        with self._lock:
            if wait and me in self._threads:
                raise RuntimeError(
                    f"WorkerPool.shutdown(wait=True) called on {me.name!r}, a thread of pool {self.name!r}: "
                    "it would wait for its own thread; call shutdown(wait=False) there, or wait from a thread "
                    "outside the pool"
                )
            self._shutdown = True
            sleepers, self._idle = self._idle, []
            if self._standby is not None:
                sleepers.append(self._standby)
                self._standby = None
            for worker in sleepers:
                self._signal(worker, None)
            if self._pending or self._lanes:
                # Queued jobs run on the threads left; if those all wait on
                # the queue, growth is what lets them finish.
                arm = self._watch_locked()
        if arm is not None:
            self._arm_grow(arm)
        with self._lock:
            threads = list(self._threads)
            if wait:
                # Wait on the bookkeeping, not on join(): a thread may be
                # registered but not started yet (submit starts it after
                # releasing the lock), and join() refuses those.
                self._exited.wait_for(lambda: not self._threads, limit)
            left = set(self._threads)
        if wait:
            for thread in threads:
                if thread not in left and thread.ident is not None:
                    thread.join()  # it has left the pool: only its return is left
        return not left

    def _owns(self, thread: threading.Thread) -> bool:
        """Whether ``thread`` is one of this pool's threads now."""
        with self._lock:
            return thread in self._threads

    def jobs(
        self,
    ) -> tuple[list[tuple[Callable[[], Any], float]], list[tuple[threading.Thread, Callable[[], Any], float]]]:
        """What the pool holds now, for ``qiotask.tasks()``: the queued jobs
        as ``(fn, queued_at)``, in the order they would start, and the
        running ones as ``(thread, fn, queued_at)`` (``queued_at`` is the
        ``time.monotonic()`` of their ``submit``).  A snapshot: a running
        job may have returned by the time it is read."""
        with self._lock:
            queued = [(job[0], job[2]) for priority in self._order if priority >= 0 for job in self._lanes[priority]]
            queued += [(job[0], job[2]) for job in self._pending]
            queued += [(job[0], job[2]) for priority in self._order if priority < 0 for job in self._lanes[priority]]
            workers = list(self._workers)
        running = []
        for worker in workers:
            job = worker.running  # one load: the job, or None between jobs
            if job is not None and worker.thread is not None:
                running.append((worker.thread, job[0], job[2]))
        return queued, running

    def statistics(self) -> PoolStatistics:
        """A snapshot: ``threads``, ``busy``, ``idle`` (standby included),
        ``queued``, ``max_workers``, ``submitted`` and ``completed`` jobs,
        ``extra`` (threads beyond ``max_workers``) and ``queued_by_priority``
        (``{priority: queued jobs}``, only priorities that have some)."""
        with self._lock:
            by_priority = {priority: len(self._lanes[priority]) for priority in self._order}
            pending = len(self._pending)
            if pending:
                by_priority[0] = pending
            return {
                "threads": len(self._threads),
                "busy": self._busy,
                "idle": len(self._idle) + (self._standby is not None),
                "queued": sum(by_priority.values()),
                "max_workers": self.max_workers,
                "submitted": self._submitted,
                "completed": self._completed,
                "extra": max(0, self._alive - self.max_workers),
                "queued_by_priority": dict(sorted(by_priority.items(), reverse=True)),
            }

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<WorkerPool {self.name!r} threads={s['threads']} busy={s['busy']}"
            f" queued={s['queued']} max_workers={s['max_workers']}>"
        )


_default_pool: WorkerPool | None = None
#: Held while the default pool is made, so that two threads asking at once
#: get the same one (the fast path reads _default_pool without it: see
#: Guarantees / assumes).
_default_lock = threading.Lock()


def default_pool() -> WorkerPool:
    """The process-wide pool used when ``run_in_thread`` is given no ``pool``;
    made on first use, and anew after it was shut down."""
    global _default_pool
    pool = _default_pool
    if pool is None or pool._shutdown:
        with _default_lock:
            pool = _default_pool
            if pool is None or pool._shutdown:
                pool = _default_pool = WorkerPool(grow_after=DEFAULT_GROW_AFTER)
    return pool


# -- fork -----------------------------------------------------------------------


def _after_fork_in_child() -> None:
    # The parent's threads do not exist in the child: empty pools (a pool
    # shut down stays shut down).
    for pool in list(_all_pools):
        shut = pool._shutdown
        pool._reset()
        pool._shutdown = shut


def _fork_locks() -> Iterator[threading.Lock]:
    # The order of the Fork section: _default_lock, _registry_lock (held, so
    # that no pool is added meanwhile), then each pool's lock.
    yield _default_lock
    yield _registry_lock
    for pool in list(_all_pools):
        yield pool._lock


_fork.guard(_fork_locks, child=_after_fork_in_child)
