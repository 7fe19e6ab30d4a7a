"""Shared fixtures: a fresh context per test, a bounded loop runner, a
connected socketpair, and the leak check every test passes (no task left
pending, no thread left behind); and helpers the test modules share.
"""

from __future__ import annotations

import gc
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import qiotask
from qiotask._pool import WorkerPool, default_pool
from qiotask.testing import LoopRunner as LoopRunner  # shipped; the suite's tests import it from here

SocketPair = tuple[socket.socket, socket.socket]


#: The -W options of a child interpreter run by the tests: every warning is
#: an error, but for PyGObject's use of the event loop policy API that
#: Python 3.14 deprecates (as pyproject.toml's filterwarnings).
STRICT_WARNINGS = ["-W", "error", "-W", "ignore:'asyncio.:DeprecationWarning:gi.events"]


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Wait until ``predicate()`` holds, re-checking as threads finish.

    Used only for state that has no event to wait on (a pool thread
    expiring); everything else waits on the thing itself.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.001)


def start_thread(target: Callable[[], Any], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name)
    thread.start()
    return thread


def join(thread: threading.Thread, timeout: float = 10.0) -> None:
    """Join ``thread``; fail the test if it is still running after ``timeout`` s."""
    thread.join(timeout)
    assert not thread.is_alive(), f"thread {thread.name} did not end"


def count_calls(obj: object, method: str, monkeypatch: pytest.MonkeyPatch, *, with_args: bool = False) -> list[int]:
    """Wrap ``obj.<method>`` (called without arguments, unless ``with_args``);
    the returned one-item list counts the calls."""
    count = [0]
    original = getattr(obj, method)

    def counting(*args: Any) -> Any:
        assert with_args or not args
        count[0] += 1
        return original(*args)

    monkeypatch.setattr(obj, method, counting)
    return count


def count_dispatches(ctx: qiotask.MainContext, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap ctx._dispatch; the returned one-item list counts the dispatches."""
    return count_calls(ctx, "_dispatch", monkeypatch)


def count_wakeups(ctx: qiotask.MainContext, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap ctx._wakeup; the returned one-item list counts the wake-ups."""
    return count_calls(ctx, "_wakeup", monkeypatch)


class Log:
    """What ran, in order, with the thread it ran on (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, Any, str]] = []

    def add(self, what: str, value: Any = None) -> None:
        with self.lock:
            self.events.append((what, value, threading.current_thread().name))

    def names(self) -> list[str]:
        with self.lock:
            return [what for what, _, _ in self.events]

    def value(self, what: str) -> Any:
        with self.lock:
            return next(value for name, value, _ in self.events if name == what)

    def thread(self, what: str) -> str:
        with self.lock:
            return next(thread for name, _, thread in self.events if name == what)

    def func(self, source: Any, err: BaseException | None, opaque: Any) -> None:
        """A task's func that records ``("func", err)``."""
        self.add("func", err)

    def destroyer(self, what: str) -> Callable[[Any], None]:
        """A destroy notifier that records ``(what, opaque)``."""
        return lambda value: self.add(what, value)


@pytest.fixture
def ctx() -> Iterator[qiotask.MainContext]:
    """A new embedded context, the thread default for the test's duration."""
    context = qiotask.MainContext(name="test")
    context.push_thread_default()
    try:
        yield context
    finally:
        context.pop_thread_default()
        # Run what is still queued (completions handed over at the very end)
        # so that the leak check sees settled tasks, then close.
        context._dispatch()
        context.close()  # type: ignore[attr-defined]


@pytest.fixture
def runner(ctx: qiotask.MainContext) -> LoopRunner:
    return LoopRunner(ctx)


@pytest.fixture
def pair() -> Iterator[SocketPair]:
    """A connected non-blocking socketpair (a wrong callback cannot hang the
    loop in recv), closed after the test."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _foreign_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t not in before
        and t.is_alive()
        and not t.name.startswith(("qiotask-worker", "qiotask-dns-worker", "qiotask-deadlines", "test-pool"))
    ]


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test leaves no task pending and no thread of its own running."""
    before_threads = set(threading.enumerate())
    before = qiotask.stats()["pending"]
    tk_backend = sys.modules.get("qiotask.testing._tk")
    roots_before = getattr(tk_backend, "roots_made", 0)
    yield
    tk_backend = sys.modules.get("qiotask.testing._tk")
    if getattr(tk_backend, "roots_made", 0) != roots_before:
        # Tk widgets form reference cycles, and a Tk interpreter freed off
        # its thread aborts the process: collect what the test (and fixtures
        # torn down before this one, such as caplog's records) left, here on
        # the main thread, before the cyclic GC runs in some worker thread.
        gc.collect()
    pool = default_pool()
    wait_for(lambda: pool.statistics()["busy"] == 0, what="the default pool's workers to finish")
    wait_for(lambda: not _foreign_threads(before_threads), what="threads started by the test to end")
    pending = qiotask.stats()["pending"]
    assert pending == before, f"{pending - before} task(s) left pending by the test"


# -- pools made by a test -------------------------------------------------------

#: Upper bound for every wait of the pool tests; a passing test waits far less.
TIMEOUT = 5.0

MakePool = Callable[..., WorkerPool]


@pytest.fixture
def make_pool() -> Iterator[MakePool]:
    """Creates pools named ``test-pool`` (ignored by the leak check) and shuts
    them all down at the end of the test."""
    pools: list[WorkerPool] = []

    def make(max_workers: int | None = None, **kwargs: Any) -> WorkerPool:
        kwargs.setdefault("name", "test-pool")
        pool = WorkerPool(max_workers, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.shutdown(wait=True, timeout=TIMEOUT)


@pytest.fixture
def gate(make_pool: MakePool) -> Iterator[threading.Event]:
    """An event that jobs block on; set at teardown, before the pools shut down
    (this fixture depends on ``make_pool``, so it is torn down first)."""
    event = threading.Event()
    yield event
    event.set()


class Deliveries:
    """Records every ``deliver(result, exc)`` call with the thread it ran on."""

    def __init__(self, expected: int = 1) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[Any, BaseException | None, threading.Thread]] = []
        self.expected = expected
        self.all_done = threading.Event()

    def __call__(self, result: Any, exc: BaseException | None) -> None:
        with self.lock:
            self.calls.append((result, exc, threading.current_thread()))
            if len(self.calls) >= self.expected:
                self.all_done.set()

    def wait(self) -> None:
        assert self.all_done.wait(TIMEOUT), f"only {len(self.calls)} of {self.expected} jobs delivered"

    @property
    def results(self) -> list[Any]:
        with self.lock:
            return [result for result, _, _ in self.calls]

    @property
    def errors(self) -> list[BaseException]:
        with self.lock:
            return [exc for _, exc, _ in self.calls if exc is not None]
