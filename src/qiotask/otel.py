"""Metrics of qiotask's pools and tasks, through the OpenTelemetry API.

The ``otel`` extra (``pip install 'qiotask[otel]'``) installs
``opentelemetry-api``; an SDK or a distribution of your choice exports the
measurements::

    import qiotask.otel

    qiotask.otel.enable()   # the global MeterProvider (opentelemetry.metrics)
    ...
    qiotask.otel.disable()

Instruments (names in OpenTelemetry's semantic-convention style; the table
with units and attributes is in ``docs/tracing.md``, "Metrics
(OpenTelemetry)"):

- ``qiotask.pool.queue.length``, ``qiotask.pool.worker.count`` (by
  ``qiotask.pool.worker.state``, ``busy`` or ``idle``) and
  ``qiotask.pool.worker.max``: observed when a reader collects, from
  :meth:`qiotask.WorkerPool.statistics` of every pool, by
  ``qiotask.pool.name`` (pools that share a name are added up);
- ``qiotask.task.queue.duration`` (from ``run_in_thread()`` to the worker's
  start) and ``qiotask.task.run.duration`` (from its start to its return),
  histograms in seconds by ``qiotask.pool.name``, and
  ``qiotask.task.completions`` by ``qiotask.task.outcome`` (``ok``,
  ``error``, ``cancelled``, ``timeout``, ``context_closed``) and, for the
  failed ones, ``error.type``: recorded from the trace events
  (:mod:`qiotask.trace`) of the tasks made while enabled.

The cost: ``import qiotask`` imports neither this module nor OpenTelemetry,
and nothing here runs until :func:`enable`.  Enabled, the pool instruments
and the completions cost nothing between collections (the completions are
counted in counts of ours, observed when a reader collects); the durations
come from a trace listener, so every task made while enabled is traced and
pays for its events (see "The cost of tracing" in ``docs/tracing.md``),
and every worker that runs pays for two ``Histogram.record()`` calls,
which with the OpenTelemetry SDK cost most of it.

Threads: :func:`enable` and :func:`disable` may be called from any thread.
The pool instruments are read on the thread that collects (an exporter's
thread, or the caller of ``collect()``); the task instruments are recorded
on the threads where the events happen: the submitting thread, the pool
thread, the context thread.

Guarantees / assumes -- the steps taken without a lock, and why each holds
on a free-threaded build too:

- The times kept between two events of one task are in two plain dicts,
  keyed by the task's number (``Task-<n>``, never reused; the task itself is
  not kept, so that one never completed can still be collected and warn).
  Each access is one ``d[key] = value`` or ``d.pop(key, None)``: a single
  call, atomic on every build (a free-threaded build locks each dict for
  it).  So threads that store and pop different tasks at once need no lock
  of ours, and when two threads pop the same entry at once (a running
  worker's start and an abandoning cancel's completion), one of them gets it.
- The events of one task come one after another, each handed over under a
  lock of qiotask (the pool's, the context's queue), which orders one
  event's store before the next one's pop.
- The completions are counted in ``itertools.count`` objects, as
  ``qiotask.stats()`` counts (see the statistics of ``_trace`` for why
  ``next()`` on one needs no lock), one per exception type, in a dict that
  a new type is added to with ``setdefault()`` (atomic: of two threads
  racing, both count on the one that got in) and that the collecting
  thread copies (``dict.copy()``, one atomic call) before it iterates.
- ``_active`` is read without ``_lock`` by the collecting thread, and a
  recorder's ``closed`` by the listener: a module global is a dict item,
  and an attribute a slot or dict item, each loaded whole.  A stale read
  means at most one collection or one event is counted as if it came a
  moment earlier or later than :func:`disable`.
- ``_recorders`` holds its providers weakly; the entry of a provider that
  dies is dropped by the weak reference's callback, on whichever thread
  drops the provider, without ``_lock``: a dict deletion, atomic as above,
  of a key no enable() can be asking for any more.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import _fork, _trace
from ._errors import ContextClosedError, TaskCancelled, TaskTimeout
from ._pool import all_pools

if TYPE_CHECKING:
    # Only for the annotations: without the extra these are Any, and the
    # module still imports (enable() then says what to install).
    from opentelemetry.metrics import (  # type: ignore[import-not-found, unused-ignore]
        CallbackOptions,
        MeterProvider,
        Observation,
    )

__all__ = ["DURATION_BUCKETS", "METER_NAME", "disable", "enable", "is_enabled"]

#: The instrumentation scope's name: the meter every instrument belongs to.
METER_NAME = "qiotask"

#: Bucket boundaries, in seconds, advised for both duration histograms.
#: OpenTelemetry's HTTP duration buckets start at 5 ms; a pool hands a job
#: over in tens of microseconds, so these start at 100 µs, and go to a
#: minute for the long blocking jobs pools also run.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

_INSTALL_HINT = "qiotask.otel needs the OpenTelemetry API: pip install 'qiotask[otel]'"

_monotonic = time.monotonic

# Guards _active and _recorders: enable() and disable() make, swap, open
# and close recorders in one step each, so that exactly one recorder (or
# none) listens.  Nothing that runs without it (the listener, the
# callbacks of the pool instruments) takes it.  Taken before the trace
# module's listener lock and before the SDK's own locks when a recorder
# makes its instruments, never under them; held across a fork (registered
# after _trace's, so its handler takes this one first: the same order as the
# code nests them).
_lock = threading.Lock()
_active: _Recorder | None = None
# One recorder per provider, made on the provider's first enable() and
# kept while the provider lives: OpenTelemetry cannot remove an instrument,
# and a meter asked again for an instrument returns the first one, with the
# callbacks it was made with.  So a provider's instruments, their callbacks
# and the counts they report are made once, and serve every enable().
_recorders: weakref.WeakKeyDictionary[Any, _Recorder] = weakref.WeakKeyDictionary()


def enable(meter_provider: MeterProvider | None = None) -> None:
    """Export qiotask's metrics through ``meter_provider``.

    Idempotent: enabling again with the same provider does nothing; with
    another one, measurements go to that one from then on (one provider at
    a time).  The task instruments count the tasks made from now on.

    Args:
        meter_provider: an OpenTelemetry ``MeterProvider``; None means the
            global one, ``opentelemetry.metrics.get_meter_provider()``.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (the message
            says ``pip install 'qiotask[otel]'``).
        TypeError: ``meter_provider`` is not a ``MeterProvider`` (it has
            no ``get_meter()``).
    """
    global _active
    try:
        from opentelemetry import metrics  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT, name=exc.name) from exc
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    if not callable(getattr(provider, "get_meter", None)):
        raise TypeError(f"meter_provider must be an OpenTelemetry MeterProvider, not {type(provider).__name__}")
    with _lock:
        recorder = _recorders.get(provider)
        if recorder is None:
            recorder = _recorders[provider] = _Recorder(provider)
        if recorder is _active:
            return
        if _active is not None:
            _active.close()
        recorder.open()
        _active = recorder


def disable() -> None:
    """Stop recording and observing; does nothing when not enabled.

    The instruments stay registered with the provider (OpenTelemetry has no
    way to remove one) and report nothing more until the next
    :func:`enable` with that provider; the counts go on from where they
    were then.  An event already being handled on another thread may still
    record its one measurement.
    """
    global _active
    with _lock:
        recorder, _active = _active, None
        if recorder is not None:
            recorder.close()


def is_enabled(meter_provider: MeterProvider | None = None) -> bool:
    """Whether metrics are enabled (for ``meter_provider``, if given)."""
    recorder = _active
    return recorder is not None and (meter_provider is None or recorder.provider() is meter_provider)


def _pool_totals() -> dict[str, tuple[int, int, int, int]]:
    """``{pool name: (queued, busy, idle, max_workers)}``, adding up pools
    that share a name (two observations with the same attributes would
    otherwise overwrite each other)."""
    totals: dict[str, tuple[int, int, int, int]] = {}
    for pool in all_pools():
        s = pool.statistics()
        q, b, i, m = totals.get(pool.name, (0, 0, 0, 0))
        totals[pool.name] = (q + s["queued"], b + s["busy"], i + s["idle"], m + s["max_workers"])
    return totals


def _outcome(err: BaseException) -> str:
    # TaskTimeout before TaskCancelled: a timeout is a cancel with a
    # reason, and stays "timeout" should it ever become a TaskCancelled.
    if isinstance(err, TaskTimeout):
        return "timeout"
    if isinstance(err, TaskCancelled):
        return "cancelled"
    if isinstance(err, ContextClosedError):
        return "context_closed"
    return "error"


_NO_ATTRIBUTES: dict[str, str] = {}

# The attributes of one kind of completion, and its count (next() adds
# one; _trace._value reads it: both start at 1, as _trace's do).
_Count = tuple[dict[str, str], "itertools.count[int]"]


class _Recorder:
    """The instruments of one provider, their callbacks, and the trace
    listener that records into them while the recorder is the active one."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.metrics import Observation  # type: ignore[import-not-found, unused-ignore]

        from . import __version__

        self.observation: type[Observation] = Observation
        # Weak: the provider holds its instruments, which hold this
        # recorder's callbacks; _recorders is keyed by the provider weakly.
        self.provider = weakref.ref(provider)
        meter = provider.get_meter(METER_NAME, __version__)
        meter.create_observable_up_down_counter(
            "qiotask.pool.queue.length",
            [self._observe_queue_length],
            unit="{job}",
            description="Jobs queued in the pool, waiting for a worker thread.",
        )
        meter.create_observable_up_down_counter(
            "qiotask.pool.worker.count",
            [self._observe_worker_count],
            unit="{thread}",
            description="Worker threads of the pool, by state: busy (running a job) or idle.",
        )
        meter.create_observable_up_down_counter(
            "qiotask.pool.worker.max",
            [self._observe_worker_max],
            unit="{thread}",
            description="How many worker threads the pool runs before it grows (max_workers).",
        )
        # Observed rather than added to one by one: a task pays a next() on
        # a count of ours, not an SDK call (several microseconds).
        meter.create_observable_counter(
            "qiotask.task.completions",
            [self._observe_completions],
            unit="{task}",
            description="Tasks whose completion ran, by outcome.",
        )
        self.queue_duration = meter.create_histogram(
            "qiotask.task.queue.duration",
            unit="s",
            description="Time from run_in_thread() to the start of the worker on a pool thread.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.run_duration = meter.create_histogram(
            "qiotask.task.run.duration",
            unit="s",
            description="Time from the start of a task's worker to its return (or raise).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        # task number -> (when, attributes): written and popped without a
        # lock (see Guarantees / assumes in the module's docstring).
        self.queued: dict[int, tuple[float, dict[str, str]]] = {}
        self.running: dict[int, tuple[float, dict[str, str]]] = {}
        # Attribute dicts made once, so that an event makes none: by pool
        # name, and the completions' counts by exception type (None: ok),
        # as the outcome depends on the type only.  Added to without a
        # lock, with setdefault(): of two threads racing, both use the
        # entry that got in.
        self.pool_attributes: dict[str, dict[str, str]] = {}
        ok: _Count = ({"qiotask.task.outcome": "ok"}, itertools.count(1))
        self.completions: dict[type[BaseException] | None, _Count] = {None: ok}
        self.count_ok = ok[1].__next__
        self.closed = True
        self.handlers: dict[str, Callable[[Any, dict[str, Any]], None]] = {
            "qio_task_thread_start": self._thread_start,
            "qio_task_thread_run": self._thread_run,
            "qio_task_thread_exit": self._thread_exit,
            "qio_task_complete": self._complete,
            "qio_task_abort": self._abort,
        }
        self.listener = self._on_event  # one bound method, to add and remove

    # -- enable() and disable(), under _lock --------------------------------------

    def open(self) -> None:
        self.closed = False
        _trace.add_listener(self.listener)

    def close(self) -> None:
        self.closed = True
        _trace.remove_listener(self.listener)
        # The tasks in flight are not followed any more.
        self.queued.clear()
        self.running.clear()

    # -- the listener, on the thread of each event ---------------------------------

    def _on_event(self, event: str, task: Any, fields: dict[str, Any]) -> None:
        handler = self.handlers.get(event)
        if handler is not None and not self.closed:
            handler(task, fields)

    def _thread_start(self, task: Any, fields: dict[str, Any]) -> None:
        # On the submitting thread, before the job is queued.
        pool = fields.get("pool")
        attributes = _NO_ATTRIBUTES
        if pool is not None:
            name = pool.name
            attributes = self.pool_attributes.get(name) or self.pool_attributes.setdefault(
                name, {"qiotask.pool.name": name}
            )
        self.queued[task._id] = (_monotonic(), attributes)

    def _thread_run(self, task: Any, fields: dict[str, Any]) -> None:
        # On the pool thread, before the worker.
        now = _monotonic()
        entry = self.queued.pop(task._id, None)
        attributes = _NO_ATTRIBUTES
        if entry is not None:
            attributes = entry[1]
            self.queue_duration.record(now - entry[0], attributes)
        self.running[task._id] = (_monotonic(), attributes)  # the record's own time left out

    def _thread_exit(self, task: Any, fields: dict[str, Any]) -> None:
        # On the pool thread, after the worker.
        now = _monotonic()
        entry = self.running.pop(task._id, None)
        if entry is not None:
            self.run_duration.record(now - entry[0], entry[1])

    def _complete(self, task: Any, fields: dict[str, Any]) -> None:
        # On the context thread.
        self.count_ok()

    def _abort(self, task: Any, fields: dict[str, Any]) -> None:
        # On the context thread, or the one that found the context closed.
        # A worker cancelled while queued never starts: drop its start time.
        self.queued.pop(task._id, None)
        err = fields["err"]
        kind = type(err)
        entry = self.completions.get(kind)
        if entry is None:
            attributes = {"qiotask.task.outcome": _outcome(err), "error.type": _type_name(kind)}
            entry = self.completions.setdefault(kind, (attributes, itertools.count(1)))
        next(entry[1])

    # -- the observable instruments, on the collecting thread ----------------------

    def _pools(self) -> dict[str, tuple[int, int, int, int]]:
        return _pool_totals() if self is _active else {}

    def _observe_queue_length(self, options: CallbackOptions) -> Iterable[Observation]:
        observation = self.observation
        return [observation(t[0], {"qiotask.pool.name": name}) for name, t in self._pools().items()]

    def _observe_worker_count(self, options: CallbackOptions) -> Iterable[Observation]:
        observation = self.observation
        out = []
        for name, t in self._pools().items():
            out.append(observation(t[1], {"qiotask.pool.name": name, "qiotask.pool.worker.state": "busy"}))
            out.append(observation(t[2], {"qiotask.pool.name": name, "qiotask.pool.worker.state": "idle"}))
        return out

    def _observe_worker_max(self, options: CallbackOptions) -> Iterable[Observation]:
        observation = self.observation
        return [observation(t[3], {"qiotask.pool.name": name}) for name, t in self._pools().items()]

    def _observe_completions(self, options: CallbackOptions) -> Iterable[Observation]:
        if self is not _active:
            return []
        # copy(): one call, atomic on every build, where iterating the dict
        # while a thread adds an exception type to it would fail.
        counts = self.completions.copy().values()
        return [self.observation(_trace._value(count), attributes) for attributes, count in counts]


def _after_fork_in_child() -> None:
    # The parent's queued jobs never run in the child, and its running ones
    # (but the forking thread's, which loses its one measurement) never end.
    recorder = _active
    if recorder is not None:
        recorder.queued.clear()
        recorder.running.clear()


_fork.guard(lambda: [_lock], child=_after_fork_in_child)


def _type_name(kind: type) -> str:
    """``error.type`` as OpenTelemetry's conventions want it: the fully
    qualified class name (``builtins`` left out, as they do for builtins)."""
    module = kind.__module__
    if module == "builtins":
        return kind.__qualname__
    if module.startswith("qiotask.") and getattr(sys.modules["qiotask"], kind.__name__, None) is kind:
        return f"qiotask.{kind.__name__}"  # its public name, not its private module's
    return f"{module}.{kind.__qualname__}"
