"""Limiter: cap how many workers of one kind run at once, across pools.

A pool caps threads; a limiter caps *kinds of work*.  Ten disk-heavy tasks
spread over the default pool and a private one can be held to two at a time
by giving both the same limiter::

    disk = qiotask.Limiter(2)
    task.run_in_thread(copy_file, path, limiter=disk)

Like the pool, the limiter knows nothing of tasks or loops.  What it offers
the task is :meth:`Limiter._submit`, the pool's ``submit(fn, deliver)`` with a
slot in front of it.

Guarantees:

- At most ``limit`` jobs of the limiter have been handed to their pools and
  not yet delivered.  A job counts from its hand-over to the pool until its
  ``deliver`` has returned, so a job that waits in its pool's queue holds its
  slot, and a job whose ``fn`` returns at once (a task cancelled while
  waiting for a slot) gives it back at once.
- Jobs over the limit wait in the limiter, first in first out, whatever
  pool they are meant for; a pool thread never blocks waiting for a slot.
  When a job is delivered, the thread that delivered it hands the oldest
  waiting job to *that job's* pool.
- A waiting job keeps its place until a slot frees, even once its task was
  cancelled (the limiter knows no tasks): its ``fn`` then returns at once
  and gives the slot back.  The cancel has made the job let go of the
  worker and its contextvars already (``JobCore.forget_work``).
- A waiting job whose pool was shut down meanwhile is delivered
  ``deliver(None, RuntimeError)`` by the thread that tried to start it,
  as the pool would have told its owner had it refused the job at once.
- A job that waited keeps the ``time.monotonic()`` of its ``_submit``
  until it is delivered (``_waited``, taken on the waiting path only), so
  that ``qiotask.tasks()`` counts its age from there, through the
  hand-over to its pool.
- After ``os.fork()`` the child starts every limiter empty (the jobs that
  held its slots belong to the parent's threads, which the child does not
  have).  The fork happens while every limiter's lock is held, so the child
  never copies a half-made move (see the fork handlers at the end).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from . import _fork
from ._pool import WorkerPool

__all__ = ["Limiter"]

logger = logging.getLogger("qiotask")

Deliver = Callable[[Any, "BaseException | None"], None]
# (the pool it was meant for, fn, deliver, the pool priority, the
# time.monotonic() of its _submit)
_Waiting = tuple[WorkerPool, Callable[[], Any], Deliver, int, float]

#: Every limiter, for the fork handlers; added to under _registry_lock (a
#: WeakSet is not safe to add to while another thread iterates it).
_all_limiters: weakref.WeakSet[Limiter] = weakref.WeakSet()
_registry_lock = threading.Lock()


class Limiter:
    """Lets at most ``limit`` workers that share it run at once, in any pools.

    Pass it as ``run_in_thread(..., limiter=lim)``; tasks over the limit stay
    ``QUEUED`` (and cancellable, and subject to their ``timeout``) until a
    slot frees.

    Args:
        limit: how many jobs may run at once; an int, at least 1.

    Raises:
        TypeError: ``limit`` is not an int.
        ValueError: ``limit`` is below 1.
    """

    __slots__ = ("__weakref__", "_limit", "_lock", "_running", "_total", "_waited", "_waiting")

    def __init__(self, limit: int) -> None:
        self._limit = _check_limit(limit, "Limiter")
        self._reset()
        with _registry_lock:
            _all_limiters.add(self)

    def _reset(self) -> None:
        # _lock guards _limit (once constructed), _running, _total, _waiting
        # and _waited: the decision "start now or wait" and the hand-over of a
        # freed slot must see the same count.  It is never held while a pool
        # or a deliver callback is called.
        self._lock = threading.Lock()
        self._running = 0  # jobs handed to a pool and not yet delivered
        self._total = 0  # jobs handed to a pool since creation
        self._waiting: deque[_Waiting] = deque()
        # id(fn) -> when it began waiting, for each job that waited and was
        # handed to its pool, until it is delivered (fn is alive until then:
        # its pool holds it, so the id names it): for qiotask.tasks().
        self._waited: dict[int, float] = {}

    # -- the limit ------------------------------------------------------------

    @property
    def limit(self) -> int:
        """How many jobs may run at once.

        Raising it starts waiting jobs at once, from the setting thread.
        Lowering it stops nothing: running jobs finish, and waiting ones start
        once fewer than the new limit run.

        Raises:
            TypeError: the new value is not an int.
            ValueError: the new value is below 1.
        """
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        value = _check_limit(value, "Limiter.limit")
        with self._lock:
            self._limit = value
        self._start_waiting()

    def statistics(self) -> dict[str, int]:
        """A snapshot: ``limit``; ``running``, the jobs holding a slot;
        ``waiting``, the jobs waiting for one; ``total``, the jobs started so
        far."""
        with self._lock:
            return {
                "limit": self._limit,
                "running": self._running,
                "waiting": len(self._waiting),
                "total": self._total,
            }

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<Limiter limit={s['limit']} running={s['running']} waiting={s['waiting']}>"

    # -- the task's side ------------------------------------------------------

    def _submit(self, pool: WorkerPool, fn: Callable[[], Any], deliver: Deliver, priority: int = 0) -> None:
        """``pool.submit(fn, deliver, priority)`` once a slot is free: now if
        one is, else when a running job of this limiter has been delivered.

        ``priority`` orders the job in its pool's queue once handed over;
        jobs waiting here for a slot start first come, first served.

        ``deliver`` is called exactly once, on a thread of ``pool`` -- or, if
        ``pool`` was shut down while the job waited here, with a
        ``RuntimeError`` on the thread that freed the slot.

        Raises:
            RuntimeError: a slot was free but ``pool`` refused the job (it
                was shut down); the job was not accepted.
        """
        with self._lock:
            if self._running >= self._limit:
                # Only jobs over the limit pay for the clock (for tasks()).
                self._waiting.append((pool, fn, deliver, priority, time.monotonic()))
                return
            self._running += 1
            self._total += 1
        try:
            pool.submit(fn, functools.partial(self._delivered, deliver), priority)
        except BaseException:
            with self._lock:
                self._running -= 1
                self._total -= 1
            self._start_waiting()  # the slot is free again
            raise

    def _delivered(self, deliver: Deliver, result: Any, exc: BaseException | None) -> None:
        # On the pool thread that ran the job.  The slot is freed even if
        # deliver raises (the pool logs that).
        try:
            deliver(result, exc)
        finally:
            with self._lock:
                self._running -= 1
            self._start_waiting()

    def _delivered_after_wait(self, key: int, deliver: Deliver, result: Any, exc: BaseException | None) -> None:
        # _delivered, for a job that waited: then it leaves _waited (its
        # pool still holds fn until this returns, so the key is still its).
        try:
            self._delivered(deliver, result, exc)
        finally:
            with self._lock:
                self._waited.pop(key, None)

    def _start_waiting(self) -> None:
        """Hand waiting jobs to their pools while slots are free."""
        while True:
            with self._lock:
                if not self._waiting or self._running >= self._limit:
                    return
                job = self._waiting.popleft()
                self._running += 1
                self._total += 1
                pool, fn, deliver, priority, since = job
                self._waited[id(fn)] = since
            try:
                pool.submit(fn, functools.partial(self._delivered_after_wait, id(fn), deliver), priority)
            except BaseException as exc:
                with self._lock:
                    self._running -= 1
                    self._total -= 1
                    del self._waited[id(fn)]
                    if not isinstance(exc, Exception):
                        # KeyboardInterrupt in the setting thread: the job
                        # keeps its place for the next free slot.
                        self._waiting.appendleft(job)
                        raise
                # Its pool was shut down while it waited: nobody is left to
                # raise to, so its owner hears of it through deliver.
                try:
                    deliver(None, exc)
                except Exception:
                    logger.exception("exception in the deliver callback of a job whose pool refused it")


def _check_limit(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{where}: the limit must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{where}: the limit must be at least 1, got {value}")
    return value


# -- fork -----------------------------------------------------------------------
#
# Before a fork, _registry_lock (so that no limiter is added meanwhile), then
# every limiter's lock; the parent releases them after it, the child starts
# every limiter empty with new locks.  No code holds two limiters' locks at
# once, nor takes another lock while it holds one (pools and deliver
# callbacks are called without it), so the order cannot deadlock with the
# threads that use them.  These handlers run before _pool's and _deadline's
# (os.register_at_fork runs ``before`` handlers last-registered first, and
# this module imports _pool): a thread holding a limiter's lock never waits
# for theirs, so that order is safe too.


def _after_fork_in_child() -> None:
    # The parent's pool threads do not exist in the child, so the jobs that
    # held slots will never be delivered, and the pools dropped their queues
    # (see _pool): start every limiter empty.
    for limiter in list(_all_limiters):
        limiter._reset()


def _fork_locks() -> Iterator[threading.Lock]:
    yield _registry_lock  # taken first: no limiter is added meanwhile
    for limiter in list(_all_limiters):
        yield limiter._lock


_fork.guard(_fork_locks, child=_after_fork_in_child)
