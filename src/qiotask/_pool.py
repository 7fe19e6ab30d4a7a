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
- After ``os.fork()`` the child starts with an empty pool: the parent's threads
  do not exist there, so their bookkeeping is dropped rather than waited on.
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

__all__ = ["DEFAULT_MAX_WORKERS", "WorkerPool", "default_pool"]

logger = logging.getLogger("qiotask")

#: Default pool size, the same rule as ``concurrent.futures.ThreadPoolExecutor``:
#: blocking work is mostly I/O (DNS, disk, sockets), so a few more threads than
#: cores, capped so that a burst of jobs cannot start hundreds of threads.
DEFAULT_MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)

Deliver = Callable[[Any, "BaseException | None"], None]
_Job = tuple[Callable[[], Any], Deliver]


class _Worker:
    """One pool thread; ``wake`` is released to hand it ``job`` while idle."""

    __slots__ = ("job", "thread", "wake")

    def __init__(self) -> None:
        self.job: _Job | None = None
        # A lock used as a binary semaphore: the idle thread blocks acquiring
        # it, the submitter releases it after storing the job.  One futex per
        # hand-over, cheaper than a Condition shared by all idle threads.
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
        # _lock guards every field below it.
        self._lock = threading.Lock()
        self._pending: deque[_Job] = deque()
        self._idle: list[_Worker] = []  # a stack: the warmest thread on top
        self._threads: set[threading.Thread] = set()
        self._busy = 0
        self._shutdown = False
        self._counter = itertools.count(1)
        self._submitted = 0
        self._completed = 0

    # -- submitting ---------------------------------------------------------

    def submit(self, fn: Callable[[], Any], deliver: Deliver) -> None:
        """Run ``fn()`` on a pool thread, then ``deliver(result, exc)`` there.

        Raises:
            RuntimeError: the pool was shut down.
        """
        job = (fn, deliver)
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"worker pool {self.name!r} is shut down")
            self._submitted += 1
            if self._idle:
                worker = self._idle.pop()
                worker.job = job
                self._busy += 1
                worker.wake.release()
                return
            if len(self._threads) >= self.max_workers:
                self._pending.append(job)
                return
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
            self._busy += 1
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._threads.discard(thread)
                self._busy -= 1
                self._submitted -= 1
            raise

    # -- the thread ---------------------------------------------------------

    def _work(self, worker: _Worker) -> None:
        lock = self._lock
        job = worker.job
        while job is not None:
            fn, deliver = job
            job = worker.job = None
            try:
                result = fn()
            except BaseException as exc:
                _safe_deliver(deliver, None, exc)
            else:
                _safe_deliver(deliver, result, None)
            del fn, deliver
            with lock:
                self._completed += 1
                if self._pending:
                    job = self._pending.popleft()
                    continue
                self._busy -= 1
                if self._shutdown:
                    break
                self._idle.append(worker)
            if not worker.wake.acquire(timeout=self.idle_timeout):
                with lock:
                    if worker in self._idle:
                        self._idle.remove(worker)
                        break
                # A submitter took us off the idle stack while our wait timed
                # out: it has stored a job and released (or will release) wake.
                worker.wake.acquire()
            job = worker.job
        with lock:
            self._threads.discard(threading.current_thread())

    # -- control ------------------------------------------------------------

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Stop accepting jobs; idle threads exit, queued jobs still run.

        Args:
            wait: block until every thread has exited.
            timeout: the most seconds to wait in all, or None for no limit.

        Returns:
            True when no thread of the pool is left running.
        """
        with self._lock:
            self._shutdown = True
            idle, self._idle = self._idle, []
            for worker in idle:
                worker.job = None
                worker.wake.release()
            threads = list(self._threads)
        if wait:
            deadline = None if timeout is None else time.monotonic() + timeout
            for thread in threads:
                if thread is threading.current_thread():
                    continue
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(remaining)
        with self._lock:
            return not self._threads

    def statistics(self) -> dict[str, int]:
        """A snapshot: ``threads``, ``busy``, ``idle``, ``queued``,
        ``max_workers``, ``submitted`` and ``completed`` jobs."""
        with self._lock:
            return {
                "threads": len(self._threads),
                "busy": self._busy,
                "idle": len(self._idle),
                "queued": len(self._pending),
                "max_workers": self.max_workers,
                "submitted": self._submitted,
                "completed": self._completed,
            }

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<WorkerPool {self.name!r} threads={s['threads']} busy={s['busy']}"
            f" queued={s['queued']} max_workers={s['max_workers']}>"
        )


def _safe_deliver(deliver: Deliver, result: Any, exc: BaseException | None) -> None:
    try:
        deliver(result, exc)
    except BaseException:
        logger.exception("qiotask: exception in a worker pool's deliver callback")


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
