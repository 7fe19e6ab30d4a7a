"""The task state machine: every move of a task's state in one locked step.

A task's state only moves forward::

    PENDING ──submit──▶ QUEUED ──start──▶ RUNNING ──worker_returned──▶ COMPLETING
       │                  │                  │                             │
       └──claim──────────┐└──cancel─────────┐└──cancel (abandon)──────────┐│
                         ▼                  ▼                             ▼▼
                    COMPLETING ──begin_delivery──▶ DELIVERING ──finish──▶ FINISHED

=================  ==============================  ===================================
move               from -> to                      made by
=================  ==============================  ===================================
claim              PENDING -> COMPLETING           ``complete()``/``abort()``, any thread
submit             PENDING -> QUEUED (RUNNING for  ``run_in_thread``/``run_in_executor``
                   an executor); COMPLETING if
                   a cancel was asked before
unsubmit           QUEUED/RUNNING -> PENDING       the submitter, when the pool refused
start              QUEUED -> RUNNING, or refused   the pool thread, before the worker
cancel             PENDING: flag only              any thread (``cancel()``, a timeout)
                   QUEUED -> COMPLETING
                   RUNNING -> COMPLETING with
                   abandon_on_cancel, else flag
worker_returned    RUNNING -> COMPLETING, or       the thread the worker ran on
                   "late" if a cancel abandoned it,
                   dropped if it completed the
                   task while the job still waited
begin_delivery     COMPLETING -> DELIVERING        the context thread (or, the loop
                                                   gone, the thread that finds it gone)
finish             DELIVERING -> FINISHED          the same thread
=================  ==============================  ===================================

Who decides: each move is one hold of the task's lock, in which it reads the
state, decides, moves, and wakes whoever waits for that move (``wait()``'s
event at finish; ``wait_thread()``'s queue when the outcome is fixed).  So
exactly one of start and cancel takes a task out of QUEUED, exactly one of
worker_returned and an abandoning cancel takes it out of RUNNING, and the
loser of each race learns it from the move's return value, never from a
field it reads later.  An abandon is decided once, by the cancel, and marked
on the thread job; the worker's late report finds the mark under the same
lock and only runs the job's destroy notifier (trio's ``_threads.py`` empties
its register for the same reason).

The lock: one of ``STRIPES`` locks, picked by the task's number when it is
made.  A lock per task would cost an allocation per task; one lock for all
would make every task in the process wait for every other.  Each hold is a
few field stores; no user code and no other lock but the waiters' own (an
``Event.set``, a ``SimpleQueue.put``) runs under it, and what is allocated
there is small and ours (a cancel's exception, a waiter's event, a list).
A thread never holds two task locks.

Every move takes the lock with ``with`` (through ``_hold``, which makes
``with`` cost no allocation), never ``lock.acquire()`` followed by
``try:``.  The second is cheaper still, but unsafe: a GIL build runs signal
handlers -- Ctrl-C's ``KeyboardInterrupt`` -- in the main thread right
after a call returns, so an interrupt landing between ``acquire()`` and
``try:`` would leave the lock held for good, and every later task on it
would hang.  ``with`` takes the lock inside the instruction that sets up the
release (``tests/test_signals.py`` interrupts every move after each of its
calls).  An interrupt can still leave the one task it hit unfinished, as it
can an asyncio future; it never leaves a lock held.

Guarantees / assumes (lock-free reads): ``done()``, ``state``,
``cancelled()``, ``raise_if_cancelled()``, ``get_result()`` and
``exception()`` read one field without the lock.  They rely on a load of one
attribute returning a value some store wrote -- true under the GIL and on
the free-threaded build, where attribute loads and stores are atomic per
object -- and on the state only moving forward, so a stale answer is an
earlier true one.  Nothing is decided from such a read, except what a final
value settles (``wait()`` returns at once when it reads FINISHED): every
other decision is a move.  Between begin_delivery and finish, the fields the
delivery reads (``_source``, ``_func``, ``_opaque``, ``_destroy``, ``_job``,
``_result``, ``_result_destroy``) are the delivering thread's alone: every
move that could change them refuses once the outcome is fixed.
"""

from __future__ import annotations

import enum
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _fork
from ._errors import TaskStateError
from ._hold import hold
from ._outcome import Held, delivered_error, first_error, replace_result

if TYPE_CHECKING:
    from ._context import MainContext
    from ._errors import TaskCancelled, TaskTimeout

__all__ = ["STRIPES", "Control", "TaskCore", "TaskState"]


class TaskState(enum.Enum):
    """Where a task is in its life (see DESIGN §4)."""

    #: Created; nothing has completed it and no worker was started.
    PENDING = "pending"
    #: ``run_in_thread`` was called; the worker waits for a pool thread.
    QUEUED = "queued"
    #: The worker is running on a pool thread.
    RUNNING = "running"
    #: The outcome is fixed; the completion is on its way to the context.
    COMPLETING = "completing"
    #: The completion ran (``func``, done-callbacks, destroy notifiers).
    FINISHED = "finished"


# The states as small ints, so that "claimed" and "delivered" are one
# comparison.  DELIVERING: func and the notifiers are running (public:
# FINISHED, as a Future is done inside its callbacks).
PENDING, QUEUED, RUNNING, COMPLETING, DELIVERING, FINISHED = range(6)
PUBLIC_STATE = (
    TaskState.PENDING,
    TaskState.QUEUED,
    TaskState.RUNNING,
    TaskState.COMPLETING,
    TaskState.FINISHED,
    TaskState.FINISHED,
)

#: How many locks the tasks share (a power of two).  Tasks are numbered in
#: order, so the tasks in flight at once fall on different locks up to this
#: many; more only makes unrelated tasks meet on a lock less often.
STRIPES = 64
_locks = tuple(threading.Lock() for _ in range(STRIPES))
#: What the tasks hold them by (see ``_hold``).
_holds = tuple(hold(lock) for lock in _locks)


# No move is half made in a forked child: the fork waits for every hold to end.
_fork.guard(lambda: _locks)

#: What wakes ``wait_thread()``: the outcome is fixed.
WORKER_DONE = object()
#: What a start refused returns instead of a result: the worker never ran.
NEVER_RAN = object()
#: worker_returned's verdicts for a worker whose task was abandoned: its
#: destroy notifier is the caller's to run (the delivery had begun without
#: it), or the delivery's (it has not begun: it runs it in its place, after
#: func).
LATE = object()
LATE_DELIVERY_RUNS_DESTROY = object()
#: worker_returned's verdict for a report that comes after the task was
#: completed without its worker ever running (a cancel while it waited in a
#: Limiter, whose pool then refused it): nothing to store, nothing to post.
DROPPED = object()


class Control:
    """What cancellation, progress and call_in_main need of a task.  A task
    shares ``NO_CONTROL`` (never written) until one of them is first used;
    its fields are guarded by the task's lock."""

    __slots__ = (
        "cancel",
        "cancel_hooks",
        "items",
        "main_calls",
        "progress",
        "progress_fns",
        "progress_pending",
        "progress_seq",
    )

    def __init__(self) -> None:
        # The exception a cancel asked for: once set, it is what the
        # completion delivers ("cancel wins").
        self.cancel: TaskCancelled | TaskTimeout | None = None
        self.cancel_hooks: list[Callable[[Any], Any]] | None = None
        # call_in_main() requests not yet answered (each withdrawn by its
        # call_in_main; wait_thread serves those still unserved).
        self.main_calls: list[Any] | None = None
        # The latest progress report and its number (1 for the first), the
        # listeners (``_progress.Listener``), and whether a delivery is on
        # its way (posted, or waiting for a listener's rate limit).
        self.progress: tuple[float, float | None, str | None] | None = None
        self.progress_seq = 0
        self.progress_fns: list[Any] | None = None
        self.progress_pending = False
        # The connect_items() callback and its stream (``_stream.Items``).
        self.items: Any = None


NO_CONTROL = Control()


class JobCore:
    """What the state machine needs of a task's worker (``_threadjob``)."""

    # Set by the subclass's constructor: the worker's opaque and destroy
    # notifier, and abandon (abandon_on_cancel).  Set under the task's lock:
    # abandoned, by the cancel that completed the task while the worker ran
    # (its outcome is dropped, its destroy waits for its return); returned,
    # when such a worker has returned (worker_returned).
    __slots__ = ("abandon", "abandoned", "destroy", "opaque", "returned")

    opaque: Any
    destroy: Callable[[Any], Any] | None
    abandon: bool
    abandoned: bool
    returned: bool

    def forget_work(self) -> None:
        """Under the task's lock, by the cancel that completed the task while
        the job was queued: the job will be refused its start, so let go of
        what only the worker would have used (the job may wait long in a
        queue or a limiter before it is refused)."""


class TaskCore:
    """A task's fields and the moves between its states.  ``Task`` is the
    public face; every other module changes these fields only through the
    moves below (or, for fields no other thread touches, as noted)."""

    __slots__ = (
        "_callbacks",
        "_context",
        "_ctl",
        "_destroy",
        "_error",
        "_event",
        "_func",
        "_id",
        "_job",
        "_lock",
        "_name",
        "_opaque",
        "_propagated",
        "_result",
        "_result_destroy",
        "_retrieved",
        "_s",
        "_source",
        "_traced",
        "_waiter",
    )

    # Fields by who guards them.  The task's lock: _s, _ctl's fields, _job
    # (set at submit; its abandoned flag), _callbacks, _event, _waiter,
    # _error, _result, _result_destroy, _propagated, and _source, _func,
    # _opaque, _destroy (dropped at finish).  Fixed at creation: _lock,
    # _context, _id, _traced.  _retrieved is only ever set to True.
    _s: int
    _lock: threading.Lock
    _ctl: Control
    _job: JobCore | None
    _callbacks: list[Any] | None
    _event: threading.Event | None
    _waiter: queue.SimpleQueue[object] | None
    _result: Any
    _result_destroy: Callable[[Any], Any] | None
    _error: BaseException | None
    _propagated: bool
    _retrieved: bool
    _source: Any
    _func: Callable[..., Any] | None
    _opaque: Any
    _destroy: Callable[[Any], Any] | None
    _context: MainContext
    _name: str | None
    _id: int
    _traced: bool

    @property
    def name(self) -> str:
        """The task's name (``Task-<n>`` unless one was given)."""
        return self._name if self._name is not None else f"Task-{self._id}"

    @name.setter
    def name(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Task.name must be a str, not {type(value).__name__}")
        self._name = value

    # -- completing by hand -------------------------------------------------

    def _move_claim(self, what: str, err: BaseException | None, result: Any) -> Held | None:
        """PENDING -> COMPLETING for complete()/abort(); returns the result
        it replaced (for its destroy notifier)."""
        with self._lock:
            state = self._s
            if state >= COMPLETING:
                raise TaskStateError(
                    f"task {self.name!r} is already completed; complete() and abort() may be called once"
                )
            if state != PENDING:
                raise TaskStateError(
                    f"task {self.name!r} runs a worker; it completes when the worker returns, not by {what}()"
                )
            self._s = COMPLETING
            if err is not None:
                self._error = first_error(self._error, err)
            if result is None:
                return None  # None keeps (see _outcome): nothing to decide
            return self._store_result(result, None, none_keeps=True)

    def _store_result(self, value: Any, destroy: Callable[[Any], Any] | None, *, none_keeps: bool) -> Held | None:
        # Under the lock.  Returns the result let go, if it has a destroy.
        new = replace_result((self._result, self._result_destroy), value, destroy, none_keeps=none_keeps)
        if new is None:
            return None
        released = (self._result, self._result_destroy)
        self._result, self._result_destroy = new
        return released if released[1] is not None else None

    def _move_set_error(self, err: BaseException) -> None:
        with self._lock:
            if self._s >= COMPLETING:
                raise TaskStateError(f"task {self.name!r} is already completed; set_error() must come before")
            self._error = first_error(self._error, err)

    def _move_set_result(self, value: Any, destroy: Callable[[Any], Any] | None) -> Held | None:
        with self._lock:
            if self._s >= COMPLETING:
                raise TaskStateError(f"task {self.name!r} is already completed; set_result() must come before")
            return self._store_result(value, destroy, none_keeps=False)

    def _move_propagate_error(self) -> BaseException | None:
        with self._lock:
            if self._error is None:
                return None
            self._retrieved = True
            if self._propagated:
                return None
            self._propagated = True
            return self._error

    # -- workers --------------------------------------------------------------

    def _move_submit(self, job: JobCore, what: str, running: bool = False) -> bool:
        """PENDING -> QUEUED (RUNNING: an executor's call, whose start we
        cannot see).  If a cancel was asked before (of the task with no
        worker yet, or by the deadline armed for this job), PENDING ->
        COMPLETING instead and True: the worker must not be started, the
        caller hands the completion over."""
        with self._lock:
            if self._s != PENDING:
                raise TaskStateError(
                    f"task {self.name!r} is {PUBLIC_STATE[self._s].value}; {what}() may be called once, "
                    "before completion"
                )
            self._job = job
            if self._ctl.cancel is not None:
                self._s = COMPLETING
                return True
            self._s = RUNNING if running else QUEUED
            return False

    def _move_unsubmit(self) -> None:
        """The pool refused the job: back to PENDING, unless a cancel
        completed the task meanwhile (it then stays completed)."""
        with self._lock:
            if self._s in (QUEUED, RUNNING):
                self._s = PENDING
                self._job = None

    def _move_start(self) -> bool:
        """QUEUED -> RUNNING; False if a cancel took the task out of QUEUED
        first (the worker must not run)."""
        with self._lock:
            if self._s != QUEUED:
                return False
            self._s = RUNNING
            return True

    def _move_worker_returned(self, job: JobCore, result: Any, exc: BaseException | None) -> object:
        """RUNNING (or QUEUED: a job a Limiter's pool refused) -> COMPLETING
        with the worker's outcome.  Returns LATE or LATE_DELIVERY_RUNS_DESTROY
        if a cancel abandoned the worker, DROPPED if the task completed
        without it (nothing is stored either way), else the result it
        replaced (a ``Held``, for its destroy) or None."""
        with self._lock:
            if job.abandoned:
                # Who runs the worker's destroy, so that it comes after func:
                # the delivery, if it has not begun; else the caller.
                job.returned = True
                return LATE if self._s >= DELIVERING else LATE_DELIVERY_RUNS_DESTROY
            if self._s >= COMPLETING:
                return DROPPED
            released = None
            if exc is not None:
                self._error = first_error(self._error, exc)
            elif result is not None:  # None keeps (see _outcome): nothing to decide
                released = self._store_result(result, None, none_keeps=True)
            self._s = COMPLETING
            waiter = self._waiter
            if waiter is not None:
                waiter.put(WORKER_DONE)
            return released

    # -- cancelling -------------------------------------------------------------

    def _move_cancel(
        self, make_reason: Callable[[int], TaskCancelled | TaskTimeout]
    ) -> tuple[bool, list[Callable[[Any], Any]] | None, JobCore | bool]:
        """Ask for a cancel: ``(asked, hooks to run, completes)``, where
        ``completes`` is the task's job (to stop its deadline) or True if the
        cancel completed the task, False if it only set the flag.

        ``make_reason(state)`` makes the exception, told the state the move
        found.  A queued worker's task completes now (the worker
        will be refused its start); a running one's too if it abandons,
        which marks the job; otherwise only the flag is set.
        """
        with self._lock:
            ctl = self._control_locked()
            state = self._s
            if ctl.cancel is not None or state >= COMPLETING:
                return False, None, False
            ctl.cancel = make_reason(state)
            hooks, ctl.cancel_hooks = ctl.cancel_hooks, None
            job = self._job
            completes = state == QUEUED or (state == RUNNING and job is not None and job.abandon)
            if completes:
                if state == RUNNING:
                    assert job is not None
                    job.abandoned = True
                elif job is not None:
                    job.forget_work()
                self._s = COMPLETING
                waiter = self._waiter
                if waiter is not None:
                    waiter.put(WORKER_DONE)
                return True, hooks, job or True
            return True, hooks, False

    def _move_add_cancel_hook(self, fn: Callable[[Any], Any]) -> bool:
        """Keep ``fn`` for a later cancel; False if the cancel was asked
        already (the caller runs it now).  A task that completed uncancelled
        keeps nothing: no cancel can come any more (True)."""
        with self._lock:
            if self._ctl.cancel is None and self._s >= COMPLETING:
                return True
            ctl = self._control_locked()
            if ctl.cancel is not None:
                return False
            if ctl.cancel_hooks is None:
                ctl.cancel_hooks = [fn]
            else:
                ctl.cancel_hooks.append(fn)
            return True

    def _move_remove_cancel_hook(self, fn: Callable[[Any], Any]) -> None:
        """Forget a hook kept by ``_move_add_cancel_hook`` (if the cancel has
        not taken it already): for hooks that guard one call, not the task."""
        with self._lock:
            hooks = self._ctl.cancel_hooks
            if hooks is not None and fn in hooks:
                hooks.remove(fn)

    def _control_locked(self) -> Control:
        """Under the lock: the task's own Control, made on first use."""
        ctl = self._ctl
        if ctl is NO_CONTROL:
            ctl = self._ctl = Control()
        return ctl

    def _own_ctl(self) -> Control:
        """The task's own Control, made on first use."""
        ctl = self._ctl
        if ctl is NO_CONTROL:
            with self._lock:
                ctl = self._control_locked()
        return ctl

    # -- delivering ---------------------------------------------------------------

    def _move_add_callback(self, entry: Any) -> bool:
        """Keep a done-callback (or an awaiter's wake-up) for the delivery;
        False if the delivery has begun (the caller handles it)."""
        with self._lock:
            if self._s >= DELIVERING:
                return False
            if self._callbacks is None:
                self._callbacks = [entry]
            else:
                self._callbacks.append(entry)
            return True

    def _move_begin_delivery(
        self, closed: BaseException | None
    ) -> tuple[list[Any] | None, BaseException | None, JobCore | None] | None:
        """COMPLETING -> DELIVERING: ``(callbacks, err for func, job whose
        destroy to run)``, or None if the delivery was made already (by
        ``wait_thread()``, or the loop took it before it went away)."""
        with self._lock:
            if self._s >= DELIVERING:
                return None
            self._s = DELIVERING
            # From here on, add_done_callback() schedules instead of adding.
            callbacks, self._callbacks = self._callbacks, None
            cancel = self._ctl.cancel
            if cancel is not None or closed is not None:
                self._error = delivered_error(self._error, cancel, closed)
            err = self._error
            job = self._job
            if job is not None and (job.destroy is None or (job.abandoned and not job.returned)):
                job = None  # an abandoned worker's destroy waits for its return
            return callbacks, err, job

    def _move_finish(self) -> None:
        """DELIVERING -> FINISHED: drop everything but the outcome and wake
        ``wait()``.  What dies with a dropped reference may run any code, so
        nothing dies under the lock: the fields that are the delivering
        thread's alone (see above) are dropped before the step; the source,
        which ``get_source()`` reads under the lock, is taken out in the step
        and dies after it."""
        self._func = self._opaque = self._destroy = self._job = self._result_destroy = None
        dropped: Any = self._source
        with self._lock:
            self._source = self._waiter = None
            ctl = self._ctl
            if ctl is not NO_CONTROL:
                # Hooks, listeners and requests may hold what the task was
                # about (run_in_executor's hook holds the future); the cancel's
                # exception stays, for cancelled().
                dropped = (dropped, ctl.cancel_hooks, ctl.progress_fns, ctl.main_calls, ctl.items)
                ctl.cancel_hooks = ctl.progress_fns = ctl.main_calls = ctl.items = None
            self._s = FINISHED
            if self._event is not None:
                self._event.set()
        del dropped

    # -- waiting ------------------------------------------------------------------

    def _move_register_wait(self) -> threading.Event | None:
        """The event ``wait()`` blocks on, or None if the task finished."""
        with self._lock:
            if self._s == FINISHED:
                return None
            if self._event is None:
                self._event = threading.Event()
            return self._event

    def _move_register_wait_thread(self) -> tuple[queue.SimpleQueue[object] | None, list[Any]] | None:
        """For ``wait_thread()``: None if the completion ran already; else
        ``(queue to block on, call_in_main requests already waiting)``, with
        no queue if the outcome is fixed (deliver now)."""
        with self._lock:
            if self._s >= DELIVERING:
                return None
            if self._job is None:
                raise TaskStateError(f"task {self.name!r} has no worker thread to wait for")
            if self._s >= COMPLETING:
                return None, []
            waiter = self._waiter
            if waiter is None:
                waiter = self._waiter = queue.SimpleQueue()
            return waiter, list(self._ctl.main_calls or ())

    def _move_publish_main_call(self, call: Any) -> None:
        """Make a call_in_main request visible to ``wait_thread()``."""
        with self._lock:
            ctl = self._control_locked()
            ctl.main_calls = [*(ctl.main_calls or ()), call]
            if self._waiter is not None:
                self._waiter.put(call)

    def _move_withdraw_main_call(self, call: Any) -> None:
        with self._lock:
            calls = self._ctl.main_calls
            if calls is not None and call in calls:
                calls.remove(call)
