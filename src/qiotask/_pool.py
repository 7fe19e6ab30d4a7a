"""WorkerPool: persistent threads that run ``fn()`` and hand the outcome on.

The pool knows nothing of tasks or event loops.  Its whole job is::

    pool.submit(fn, deliver)   # later, on a pool thread: deliver(fn(), None)
                               # or, if fn raised:        deliver(None, exc)

Guarantees:

- ``deliver`` is called exactly once per accepted job, on the thread that ran
  ``fn``, even when ``fn`` raises.  An exception escaping ``deliver`` itself is
  logged and the thread carries on.
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
- After ``os.fork()`` the child starts with an empty pool: the parent's threads
  do not exist there, so their bookkeeping is dropped rather than waited on.

How work is spread, and why: every hand-over of a job to a sleeping thread
costs a futex wake-up and a fight for the GIL, which for short jobs costs more
than the job.  So a job is handed to a sleeping thread only when no thread of
the pool is running; otherwise it is queued for the running threads, and one
spare thread stands by, waking every STANDBY_TICK to take the next queued job
if the oldest queued job has waited that long (the running threads are then
blocked, or too few).  Short jobs thus run back to back on one thread, and
blocking jobs fan out across the pool a tick apart.

Priority lanes: priority 0 has its own deque, ``_pending``, which running
threads pop without the lock while no other lane holds jobs: the hot path is
the same as with one queue.  Other priorities get a deque each in ``_lanes``,
created when a job of that priority is queued and dropped when it empties,
with ``_order`` listing them highest first; those are popped under the lock.
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
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, TypedDict

from . import _deadline
from ._checks import check_duration

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

#: The longest the growth timer sleeps before it checks again (a huge or
#: infinite ``grow_after`` must not overflow the timer thread's wait).
_GROW_CHECK_MAX = 3600.0

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

    __slots__ = ("job", "signalled", "thread", "wake")

    def __init__(self) -> None:
        # Both guarded by the pool's lock.
        self.job: _Job | None = None
        self.signalled = False
        # A lock used as a binary semaphore: the sleeping thread blocks
        # acquiring it; _signal() releases it once.  One futex per hand-over,
        # cheaper than a Condition shared by all sleeping threads.
        self.wake = threading.Lock()
        self.wake.acquire()
        self.thread: threading.Thread | None = None


_all_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


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
        idle_timeout: seconds an idle thread waits for work before it exits.
        name: prefix of the thread names (``"<name>-worker-<n>"``).
        grow_after: seconds after which a pool whose every thread is busy,
            with no job finishing, starts one more thread beyond
            ``max_workers`` for its queued jobs; each further extra thread
            waits ``grow_after * (1 + extra)``.  None turns growth off.

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
        self._reset()
        _all_pools.add(self)

    def _reset(self) -> None:
        # _lock guards every field below it, and each worker's job/signalled.
        self._lock = threading.Lock()
        self._exited = threading.Condition(self._lock)  # a thread left _threads
        # Queued jobs: priority 0 in _pending (popped without the lock while
        # _lanes is empty), every other priority in a lane of its own.
        self._pending: deque[_Job] = deque()
        self._lanes: dict[int, deque[_Job]] = {}  # only lanes that hold jobs
        self._order: list[int] = []  # the keys of _lanes, highest first
        self._idle: list[_Worker] = []  # a stack: the warmest thread on top
        self._standby: _Worker | None = None  # the spare thread that ticks
        self._threads: set[threading.Thread] = set()  # to join at shutdown
        self._alive = 0  # threads not yet decided to exit (> max_workers: grown)
        self._busy = 0  # threads running a job
        self._shutdown = False
        self._counter = itertools.count(1)
        self._submitted = 0
        self._completed = itertools.count()  # next() is atomic: no lock
        self._grow_timer: _deadline.Deadline | None = None  # armed while it may be needed
        self._grow_mark = 0  # the completed count when the timer last looked

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
        start = None
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"worker pool {self.name!r} is shut down")
            self._submitted += 1
            if self._busy == 0:
                # Nobody is running (so nothing is queued): hand the job over.
                worker = self._take_sleeper()
                if worker is not None:
                    self._busy += 1
                    self._signal(worker, (fn, deliver, 0.0))
                    return
                if self._alive < self.max_workers:
                    self._busy += 1
                    start = self._new_thread_locked((fn, deliver, 0.0))
            if start is None:
                if priority:
                    self._enqueue_locked((fn, deliver, _monotonic()), priority)
                else:
                    self._pending.append((fn, deliver, _monotonic()))
                if self._standby is None:
                    if self._idle or self._alive < self.max_workers:
                        start = self._arm_standby_locked()
                    elif self._grow_timer is None and self.grow_after is not None and self._busy >= self._alive:
                        # No spare thread: watch for a stall (see Growth).
                        self._watch_locked()
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
        if lanes:
            order = self._order
            top = order[0]
            if top < 0:
                try:
                    return self._pending.popleft()
                except IndexError:
                    pass
            lane = lanes[top]
            job = lane.popleft()
            if not lane:
                del lanes[top]
                del order[0]
            return job
        try:
            return self._pending.popleft()
        except IndexError:  # running threads pop priority 0 without the lock
            return None

    def _oldest_locked(self) -> float | None:
        """When the oldest queued job was queued, whatever its priority."""
        try:
            oldest = self._pending[0][2]
        except IndexError:
            oldest = None
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
        worker = _Worker()
        worker.job = job
        thread = threading.Thread(
            target=self._work,
            args=(worker,),
            name=f"{self.name}-worker-{next(self._counter)}",
            daemon=True,
        )
        worker.thread = thread
        self._threads.add(thread)
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

    def _start(self, worker: _Worker) -> None:
        assert worker.thread is not None
        try:
            worker.thread.start()
        except BaseException:
            with self._lock:
                self._threads.discard(worker.thread)
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

    def _completed_count(self) -> int:
        return int(repr(self._completed)[6:-1])  # "count(n)"

    def _grow_wait_locked(self) -> float:
        """How long the queue must stall before the next thread starts."""
        assert self.grow_after is not None
        return self.grow_after * (1 + max(0, self._alive - self.max_workers))

    def _arm_grow_locked(self, when: float) -> None:
        when = min(when, _monotonic() + _GROW_CHECK_MAX)
        self._grow_timer = _deadline.call_at(when, self._grow_check)

    def _watch_locked(self) -> None:
        """Jobs are queued and every thread may be busy: check for a stall
        in one growth period (no-op if already armed or growth is off)."""
        if self.grow_after is None or self._grow_timer is not None:
            return
        self._grow_mark = self._completed_count()
        self._arm_grow_locked(_monotonic() + self._grow_wait_locked())

    def _grow_check(self) -> None:
        """On the timer thread: start one more thread if the queue stalls."""
        worker = None
        with self._lock:
            self._grow_timer = None
            oldest = self._oldest_locked()
            if oldest is None or self.grow_after is None:
                return  # nothing queued: the next queued job arms it again
            now = _monotonic()
            wait = self._grow_wait_locked()
            done = self._completed_count()
            if self._busy < self._alive or done != self._grow_mark:
                # A spare thread (the standby) takes the job, or jobs still
                # finish: no stall.  Count a whole period again.
                self._grow_mark = done
                self._arm_grow_locked(now + wait)
                return
            if now - oldest < wait:
                # Stalled, but the oldest job came later than the count.
                self._arm_grow_locked(oldest + wait)
                return
            # One more thread, counted busy like a thread handed a job; it
            # takes the next queued job itself once it runs.
            self._busy += 1
            worker = self._new_thread_locked(_TAKE_NEXT)
            self._arm_grow_locked(now + self._grow_wait_locked())
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
        with self._lock:
            job = worker.job
            worker.job = None
            retire = False
            if job is _TAKE_NEXT:  # started by growth: take the next queued job
                job = self._pop_locked()
                if job is None:  # the running threads took it meanwhile
                    self._busy -= 1
                    retire = self._shutdown or self._alive > self.max_workers
                    if retire:
                        self._alive -= 1
                    else:
                        self._idle.append(worker)
        if not retire:
            self._run(worker, job)
        with self._lock:
            self._threads.discard(threading.current_thread())
            self._exited.notify_all()

    def _run(self, worker: _Worker, job: _Job | None) -> None:
        """Run jobs, sleep between them; return once the thread is to exit."""
        lock = self._lock
        pending = self._pending
        lanes = self._lanes
        count_done = self._completed.__next__
        while True:
            if job is not None:
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
                count_done()
                # Lock-free while only priority 0 is queued: popleft is
                # atomic, and only the decision to go idle needs the lock
                # (submit() reads _busy under it to choose between queueing
                # and waking).  Other lanes are popped under the lock.
                if not lanes:
                    try:
                        job = pending.popleft()
                        continue
                    except IndexError:
                        pass
                with lock:
                    job = self._pop_locked()
                    if job is not None:
                        continue
                    self._busy -= 1
                    if self._shutdown or self._alive > self.max_workers:
                        self._alive -= 1  # shut down, or a grown thread: retire
                        return
                    self._idle.append(worker)
            job = self._sleep(worker)
            if job is None:
                return

    def _sleep(self, worker: _Worker) -> _Job | None:
        """Wait, idle or on standby, for a job; None means exit."""
        lock = self._lock
        linger_until = _monotonic() + STANDBY_LINGER
        start: _Worker | None = None
        while True:
            standby = self._standby is worker
            got = worker.wake.acquire(timeout=STANDBY_TICK if standby else self.idle_timeout)
            with lock:
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
                                self._watch_locked()  # the last spare thread went
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
        if start is not None:
            self._start_standby(start)
        return job

    # -- control ------------------------------------------------------------

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Stop accepting jobs; sleeping threads exit, queued jobs still run.

        Args:
            wait: block until every thread has exited.
            timeout: the most seconds to wait in all, or None for no limit.

        Returns:
            True when no thread of the pool is left running.
        """
        with self._lock:
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
                self._watch_locked()
            threads = list(self._threads)
            me = threading.current_thread()
            if wait:
                # Wait on the bookkeeping, not on join(): a thread may be
                # registered but not started yet (submit starts it after
                # releasing the lock), and join() refuses those.
                self._exited.wait_for(lambda: not (self._threads - {me}), timeout)
            left = self._threads - {me}
        if wait:
            for thread in threads:
                if thread is not me and thread not in left and thread.ident is not None:
                    thread.join()  # it has left the pool: only its return is left
        return not left

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
                "completed": self._completed_count(),
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
_default_lock = threading.Lock()


def default_pool() -> WorkerPool:
    """The process-wide pool used when ``run_in_thread`` is given no ``pool``."""
    global _default_pool
    pool = _default_pool
    if pool is None or pool._shutdown:
        with _default_lock:
            pool = _default_pool
            if pool is None or pool._shutdown:
                pool = _default_pool = WorkerPool(grow_after=DEFAULT_GROW_AFTER)
    return pool


def _after_fork_in_child() -> None:
    # The parent's threads do not exist in the child; their locks may be held
    # by threads that will never run again.  Start every pool afresh.
    global _default_lock
    _default_lock = threading.Lock()
    for pool in list(_all_pools):
        shut = pool._shutdown
        pool._reset()
        pool._shutdown = shut


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
