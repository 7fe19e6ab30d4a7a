"""qiotask.otel: pool and task metrics through OpenTelemetry, read back with
the SDK's in-memory reader on known workloads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import qiotask
import qiotask.otel
from qiotask import Task, TaskCancelled, TaskTimeout, _trace

from .conftest import STRICT_WARNINGS, TIMEOUT, LoopRunner, MakePool

POOL = "test-pool"  # the name make_pool gives, which the leak check ignores

#: How long the tests hold workers back before they let them go: the lower
#: bound of the durations they then check.
DELAY = 0.05


class Metrics:
    """An SDK MeterProvider with an in-memory reader, and the points of
    qiotask's instruments at one collection."""

    def __init__(self) -> None:
        sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
        export = pytest.importorskip("opentelemetry.sdk.metrics.export")
        self.reader = export.InMemoryMetricReader()
        self.provider = sdk_metrics.MeterProvider(metric_readers=[self.reader])

    def collect(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        points: dict[str, list[Any]] = {}
        if data is None:
            return points
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                if scope.scope.name == qiotask.otel.METER_NAME:
                    for metric in scope.metrics:
                        points[metric.name] = list(metric.data.data_points)
        return points


def point(points: dict[str, list[Any]], name: str, **attributes: str) -> Any:
    """The one point of ``name`` whose attributes include ``attributes``
    (keys with ``_`` for ``.``), or None."""
    wanted = {key.replace("_", "."): value for key, value in attributes.items()}
    found = [p for p in points.get(name, []) if wanted.items() <= dict(p.attributes).items()]
    assert len(found) <= 1, f"{name}: several points match {wanted}: {found}"
    return found[0] if found else None


def outcome(points: dict[str, list[Any]], kind: str) -> int:
    p = point(points, "qiotask.task.completions", qiotask_task_outcome=kind)
    return 0 if p is None else int(p.value)


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    qiotask.otel.enable(m.provider)
    try:
        yield m
    finally:
        qiotask.otel.disable()
        m.provider.shutdown()


class Started:
    """Workers report here that they run; the test waits for ``n`` of them."""

    def __init__(self) -> None:
        self.semaphore = threading.Semaphore(0)

    def wait(self, n: int) -> None:
        for i in range(n):
            assert self.semaphore.acquire(timeout=TIMEOUT), f"only {i} of {n} workers started"


def hold(started: Started, gate: threading.Event) -> Any:
    def worker(task: Any, opaque: Any) -> str:
        started.semaphore.release()
        assert gate.wait(TIMEOUT)
        return "held"

    return worker


def let_time_pass(seconds: float) -> None:
    """Not a synchronisation: the test needs this much time to pass while
    workers are held, as a lower bound for the durations it checks."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        time.sleep(seconds)


def test_pool_instruments_read_busy_idle_and_queued(
    metrics: Metrics, runner: LoopRunner, make_pool: MakePool, gate: threading.Event
) -> None:
    pool = make_pool(2, grow_after=None)  # no growth: two threads, whatever waits
    started = Started()
    tasks = [Task(None) for _ in range(5)]
    for task in tasks:
        task.run_in_thread(hold(started, gate), pool=pool)
    started.wait(2)  # both threads run a job; the three others are queued

    points = metrics.collect()
    assert point(points, "qiotask.pool.queue.length", qiotask_pool_name=POOL).value == 3
    busy = point(points, "qiotask.pool.worker.count", qiotask_pool_name=POOL, qiotask_pool_worker_state="busy")
    idle = point(points, "qiotask.pool.worker.count", qiotask_pool_name=POOL, qiotask_pool_worker_state="idle")
    assert (busy.value, idle.value) == (2, 0)
    assert point(points, "qiotask.pool.worker.max", qiotask_pool_name=POOL).value == 2

    gate.set()
    runner.run_until_done(*tasks)
    assert [task.result() for task in tasks] == ["held"] * 5
    points = metrics.collect()
    assert point(points, "qiotask.pool.queue.length", qiotask_pool_name=POOL).value == 0


def test_pools_that_share_a_name_are_added_up(metrics: Metrics, make_pool: MakePool) -> None:
    make_pool(2, name="twins")
    make_pool(3, name="twins")
    points = metrics.collect()
    assert point(points, "qiotask.pool.worker.max", qiotask_pool_name="twins").value == 5


def test_durations_count_every_worker_with_lower_bounds(
    metrics: Metrics, runner: LoopRunner, make_pool: MakePool, gate: threading.Event
) -> None:
    pool = make_pool(2, grow_after=None)
    started = Started()
    tasks = [Task(None) for _ in range(5)]
    for task in tasks:
        task.run_in_thread(hold(started, gate), pool=pool)
    started.wait(2)
    # The two running workers started before this point and end after the
    # gate opens; the three queued ones were queued before it and start after.
    let_time_pass(DELAY)
    gate.set()
    runner.run_until_done(*tasks)

    points = metrics.collect()
    run = point(points, "qiotask.task.run.duration", qiotask_pool_name=POOL)
    queue = point(points, "qiotask.task.queue.duration", qiotask_pool_name=POOL)
    assert run.count == queue.count == 5
    assert run.max >= DELAY and run.sum >= 2 * DELAY
    assert queue.max >= DELAY and queue.sum >= 3 * DELAY
    assert run.min >= 0 and queue.min >= 0
    assert tuple(run.explicit_bounds) == tuple(queue.explicit_bounds) == qiotask.otel.DURATION_BUCKETS
    assert outcome(points, "ok") == 5
    recorder = qiotask.otel._active
    assert recorder is not None and not recorder.queued and not recorder.running  # nothing kept


def test_completions_by_outcome(
    metrics: Metrics, runner: LoopRunner, make_pool: MakePool, gate: threading.Event
) -> None:
    pool = make_pool(1, grow_after=None)  # one thread: everything after the first waits
    started = Started()

    def boom(task: Any, opaque: Any) -> None:
        raise ValueError("boom")

    ok = Task(None)
    ok.run_in_thread(hold(started, gate), pool=pool)
    started.wait(1)
    error = Task(None)
    error.run_in_thread(boom, pool=pool)
    cancelled = Task(None)
    cancelled.run_in_thread(lambda task, opaque: None, pool=pool)
    timed_out = Task(None)
    timed_out.run_in_thread(lambda task, opaque: None, pool=pool, timeout=0.01)
    assert cancelled.cancel()
    runner.run_until_done(cancelled, timed_out)  # its deadline passes while it is queued
    gate.set()
    runner.run_until_done(ok, error, cancelled, timed_out)
    gone = qiotask.MainContext(name="gone")
    closed = Task(None, context=gone)
    closed.run_in_thread(lambda task, opaque: None, pool=pool)
    gone.close()
    assert closed.wait(TIMEOUT)

    assert isinstance(cancelled.exception(), TaskCancelled)
    assert isinstance(timed_out.exception(), TaskTimeout)
    assert isinstance(closed.exception(), qiotask.ContextClosedError)
    points = metrics.collect()
    counts = {kind: outcome(points, kind) for kind in ("ok", "error", "cancelled", "timeout", "context_closed")}
    assert counts == {"ok": 1, "error": 1, "cancelled": 1, "timeout": 1, "context_closed": 1}
    error_point = point(points, "qiotask.task.completions", qiotask_task_outcome="error")
    assert error_point.attributes["error.type"] == "ValueError"
    cancelled_point = point(points, "qiotask.task.completions", qiotask_task_outcome="cancelled")
    assert cancelled_point.attributes["error.type"] == "qiotask.TaskCancelled"
    assert "error.type" not in point(points, "qiotask.task.completions", qiotask_task_outcome="ok").attributes
    # Only the workers that ran are timed: not the cancelled nor the timed-out one.
    assert point(points, "qiotask.task.run.duration", qiotask_pool_name=POOL).count == 3
    assert point(points, "qiotask.task.queue.duration", qiotask_pool_name=POOL).count == 3
    recorder = qiotask.otel._active
    assert recorder is not None and not recorder.queued and not recorder.running


def test_plain_tasks_count_as_completions(metrics: Metrics) -> None:
    Task(None).complete()
    Task(None, lambda source, err, opaque: None).abort(OSError("refused"))
    points = metrics.collect()
    assert outcome(points, "ok") == 1
    assert point(points, "qiotask.task.completions", qiotask_task_outcome="error").attributes["error.type"] == "OSError"


def our_listeners() -> list[Any]:
    return [fn for fn in _trace._listeners if isinstance(getattr(fn, "__self__", None), qiotask.otel._Recorder)]


def test_disable_stops_recording_and_observing(metrics: Metrics) -> None:
    Task(None).complete()
    traced = Task(None)  # made while enabled: it emits its events whatever comes
    assert qiotask.otel.is_enabled(metrics.provider) and len(our_listeners()) == 1
    qiotask.otel.disable()
    assert not qiotask.otel.is_enabled() and our_listeners() == []
    traced.complete()
    Task(None).complete()
    qiotask.otel.disable()  # twice: nothing happens
    points = metrics.collect()
    assert "qiotask.task.completions" not in points  # nothing is observed any more
    assert "qiotask.pool.worker.max" not in points

    qiotask.otel.enable(metrics.provider)  # again: the same instruments, live again
    Task(None).complete()
    points = metrics.collect()
    assert outcome(points, "ok") == 2  # the count goes on; the completion while disabled is not in it
    assert "qiotask.pool.worker.max" in points


def test_enabling_twice_is_harmless(metrics: Metrics) -> None:
    qiotask.otel.enable(metrics.provider)
    assert len(our_listeners()) == 1
    Task(None).complete()
    assert outcome(metrics.collect(), "ok") == 1


def test_enable_with_another_provider_moves_the_measurements(metrics: Metrics) -> None:
    other = Metrics()
    try:
        qiotask.otel.enable(other.provider)
        assert qiotask.otel.is_enabled(other.provider) and not qiotask.otel.is_enabled(metrics.provider)
        Task(None).complete()
        assert outcome(other.collect(), "ok") == 1
        assert outcome(metrics.collect(), "ok") == 0
        assert "qiotask.pool.worker.max" not in metrics.collect()
    finally:
        qiotask.otel.disable()
        other.provider.shutdown()


def test_enable_without_a_provider_takes_the_global_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import metrics as api

    m = Metrics()
    monkeypatch.setattr(api, "get_meter_provider", lambda: m.provider)
    try:
        qiotask.otel.enable()
        assert qiotask.otel.is_enabled(m.provider)
        Task(None).complete()
        assert outcome(m.collect(), "ok") == 1
    finally:
        qiotask.otel.disable()
        m.provider.shutdown()


def test_enable_refuses_what_is_not_a_meter_provider() -> None:
    pytest.importorskip("opentelemetry.metrics")
    with pytest.raises(TypeError, match="must be an OpenTelemetry MeterProvider, not str"):
        qiotask.otel.enable("provider")  # type: ignore[arg-type]
    assert not qiotask.otel.is_enabled()


def test_enable_and_disable_from_many_threads_leave_one_listener_or_none(metrics: Metrics) -> None:
    barrier = threading.Barrier(4, timeout=TIMEOUT)

    def flip() -> None:
        barrier.wait()
        for _ in range(50):
            qiotask.otel.enable(metrics.provider)
            qiotask.otel.disable()
        qiotask.otel.enable(metrics.provider)

    threads = [threading.Thread(target=flip, name=f"flip-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    assert len(our_listeners()) == 1 and qiotask.otel.is_enabled(metrics.provider)


def run_child(code: str) -> str:
    done = subprocess.run(
        [sys.executable, *STRICT_WARNINGS, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_qiotask_imports_no_opentelemetry() -> None:
    out = run_child(
        """
        import sys
        import qiotask
        qiotask.Task(None).complete()
        import qiotask.otel  # the module itself, not enabled: nothing either
        print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
        """
    )
    assert out == "[]"


def test_without_opentelemetry_enable_says_what_to_install() -> None:
    out = run_child(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the extra were not installed
        import qiotask.otel
        try:
            qiotask.otel.enable()
        except ImportError as exc:
            print(exc)
        print(qiotask.otel.is_enabled())
        """
    )
    assert out.splitlines() == ["qiotask.otel needs the OpenTelemetry API: pip install 'qiotask[otel]'", "False"]
