"""WorkerPool: persistent threads that run ``fn()`` and hand the outcome on.

The pool knows nothing of tasks or event loops.  Its whole job is::

    pool.submit(fn, deliver)   # later, on a pool thread: deliver(fn(), None)
                               # or, if fn raised:        deliver(None, exc)

Guarantees:

- ``deliver`` is called exactly once per accepted job, on the thread that ran
  ``fn``, even when ``fn`` raises.  An exception escaping ``deliver`` itself is
  logged and the thread carries on.
- Jobs start in submission order.
- An idle thread is reused before a new one is started; the most recently idle
  thread is picked first, so that surplus threads stay idle and expire after
  ``idle_timeout`` seconds.
- While jobs wait and the pool has threads to spare, a waiting job is taken
  by a spare thread within about :data:`STANDBY_TICK` seconds, so blocking
  jobs (DNS, disk) run side by side.
- After ``os.fork()`` the child starts with an empty pool: the parent's threads
  do not exist there, so their bookkeeping is dropped rather than waited on.

How work is spread, and why: every hand-over of a job to a sleeping thread
costs a futex wake-up and a fight for the GIL, which for short jobs costs more
than the job.  So a job is handed to a sleeping thread only when no thread of
the pool is running; otherwise it is queued for the running threads, and one
spare thread stands by, waking every STANDBY_TICK to take the oldest queued
job if it has waited that long (the running threads are then blocked, or too
few).  Short jobs thus run back to back on one thread, and blocking jobs fan
out across the pool a tick apart.
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
from typing import Any

__all__ = ["DEFAULT_MAX_WORKERS", "STANDBY_TICK", "WorkerPool", "default_pool"]

logger = logging.getLogger("qiotask")

#: Default pool size, the same rule as ``concurrent.futures.ThreadPoolExecutor``:
#: blocking work is mostly I/O (DNS, disk, sockets), so a few more threads than
#: cores, capped so that a burst of jobs cannot start hundreds of threads.
DEFAULT_MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)

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

_monotonic = time.monotonic


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


class WorkerPool:
    """A pool of reusable worker threads.

    Args:
        max_workers: how many threads may run jobs at once; by default
            :data:`DEFAULT_MAX_WORKERS` (``min(32, cpu_count + 4)``).
        idle_timeout: seconds an idle thread waits for work before it exits.
        name: prefix of the thread names (``"<name>-worker-<n>"``).

    Raises:
        ValueError: ``max_workers`` below 1 or a negative ``idle_timeout``.
        TypeError: arguments of the wrong type.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        idle_timeout: float = 10.0,
        name: str = "qiotask",
    ) -> None:
        if max_workers is None:
            max_workers = DEFAULT_MAX_WORKERS
        if not isinstance(max_workers, int) or isinstance(max_workers, bool):
            raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        if not isinstance(idle_timeout, (int, float)) or isinstance(idle_timeout, bool):
            raise TypeError(f"idle_timeout must be a number, not {type(idle_timeout).__name__}")
        if idle_timeout < 0:
            raise ValueError(f"idle_timeout must not be negative, got {idle_timeout}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        self.max_workers = max_workers
        self.idle_timeout = float(idle_timeout)
        self.name = name
        self._reset()
        _all_pools.add(self)

    def _reset(self) -> None:
        # _lock guards every field below it, and each worker's job/signalled.
        self._lock = threading.Lock()
        self._exited = threading.Condition(self._lock)  # a thread left _threads
        self._pending: deque[_Job] = deque()
        self._idle: list[_Worker] = []  # a stack: the warmest thread on top
        self._standby: _Worker | None = None  # the spare thread that ticks
        self._threads: set[threading.Thread] = set()  # to join at shutdown
        self._alive = 0  # threads not yet decided to exit (<= max_workers)
        self._busy = 0  # threads running a job
        self._shutdown = False
        self._counter = itertools.count(1)
        self._submitted = 0
        self._completed = itertools.count()  # next() is atomic: no lock

    # -- submitting ---------------------------------------------------------

    def submit(self, fn: Callable[[], Any], deliver: Deliver) -> None:
        """Run ``fn()`` on a pool thread, then ``deliver(result, exc)`` there.

        Raises:
            RuntimeError: the pool was shut down.
        """
        start = None
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"worker pool {self.name!r} is shut down")
            self._submitted += 1
            if self._busy == 0:
                # Nobody is running: hand the job over directly.
                worker = self._take_sleeper()
                if worker is not None:
                    self._busy += 1
                    self._signal(worker, (fn, deliver, 0.0))
                    return
                if self._alive < self.max_workers:
                    self._busy += 1
                    start = self._new_thread_locked((fn, deliver, 0.0))
            if start is None:
                self._pending.append((fn, deliver, _monotonic()))
                if self._standby is None:
                    start = self._arm_standby_locked()
        if start is not None:
            if start.job is None:
                self._start_standby(start)  # the job is queued either way
            else:
                self._start(start)

    # Everything named *_locked, and _take_sleeper/_signal, runs under _lock.

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

    # -- the thread ---------------------------------------------------------

    def _work(self, worker: _Worker) -> None:
        lock = self._lock
        pending = self._pending
        count_done = self._completed.__next__
        with lock:
            job = worker.job
            worker.job = None
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
                # Lock-free while work is queued: popleft is atomic, and only
                # the decision to go idle needs the lock (submit() reads _busy
                # under it to choose between queueing and waking).
                try:
                    job = pending.popleft()
                    continue
                except IndexError:
                    pass
                with lock:
                    if pending:
                        job = pending.popleft()
                        continue
                    self._busy -= 1
                    if self._shutdown:
                        self._alive -= 1
                        break
                    self._idle.append(worker)
            job = self._sleep(worker)
            if job is None:
                break
        with lock:
            self._threads.discard(threading.current_thread())
            self._exited.notify_all()

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
                    pending = self._pending
                    try:
                        waited = now - pending[0][2]
                    except IndexError:  # running threads pop without the lock
                        waited = -1.0
                    if waited >= STANDBY_TICK:
                        # The running threads are not keeping up: help.
                        try:
                            job = pending.popleft()
                        except IndexError:
                            continue
                        self._standby = None
                        self._busy += 1
                        start = self._arm_standby_locked() if pending else None
                        break
                    if pending or self._busy:
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

    def statistics(self) -> dict[str, int]:
        """A snapshot: ``threads``, ``busy``, ``idle`` (standby included),
        ``queued``, ``max_workers``, ``submitted`` and ``completed`` jobs."""
        with self._lock:
            return {
                "threads": len(self._threads),
                "busy": self._busy,
                "idle": len(self._idle) + (self._standby is not None),
                "queued": len(self._pending),
                "max_workers": self.max_workers,
                "submitted": self._submitted,
                "completed": int(repr(self._completed)[6:-1]),
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
                pool = _default_pool = WorkerPool()
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
