"""The deadline thread: cancel and fire decided under one lock, never-due and
far deadlines, nothing kept after a call, survival of any BaseException, an
empty context, the heap sweep.

A test that needs deadlines to be due together first parks the timer thread
in a deadline of its own (:class:`TimerHold`), so that nothing it sets can
fire before the test is ready; :func:`drain` waits until everything due so
far has been handled.  Checks that need a fresh interpreter (no timer thread
yet) or could kill the timer thread of the test process run in a child
interpreter.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

import qiotask
from qiotask import _deadline

from .conftest import TIMEOUT, wait_for
from .interleave import interleaving

#: The source tree of the qiotask under test, for child interpreters.
SRC = Path(qiotask.__file__).resolve().parents[1]


class TimerHold:
    """Parks the timer thread in a deadline of its own until ``release()``,
    so that deadlines set meanwhile wait, due, until the test lets it go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        _deadline.call_at(time.monotonic(), self._hold)
        assert self.entered.wait(TIMEOUT), "the timer thread did not run the hold"

    def _hold(self) -> None:
        self.entered.set()
        assert self.released.wait(TIMEOUT), "the test never released the timer thread"

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def hold() -> Iterator[TimerHold]:
    held = TimerHold()
    try:
        yield held
    finally:
        held.release()


def drain() -> None:
    """Wait until the timer thread has handled every deadline due so far (a
    marker due now runs after them: equal times go first come, first served)."""
    done = threading.Event()
    _deadline.call_at(time.monotonic(), done.set)
    assert done.wait(TIMEOUT), "the timer thread did not reach the marker"


class Calls:
    """A deadline callback that records each call and the thread it ran on."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.ran = threading.Event()

    def __call__(self) -> None:
        self.threads.append(threading.current_thread().name)
        self.ran.set()


def run_child(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports this qiotask."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- cancel and fire: one lock decides ----------------------------------------


def test_a_cancel_once_the_timer_decided_returns_false_and_fn_runs_once(hold: TimerHold) -> None:
    calls = Calls()
    deadline = _deadline.call_at(time.monotonic(), calls)
    with interleaving() as il:
        fire = il.pause("deadline.fire", deadline)
        hold.release()
        fire.wait_reached()  # the timer thread decided to call, and has not yet
        assert deadline.cancel() is False  # too late: the call goes ahead
        assert not calls.ran.is_set()
        fire.release()
        assert calls.ran.wait(TIMEOUT)
    drain()
    assert calls.threads == [_deadline.THREAD_NAME]
    assert deadline.cancel() is False


def test_a_cancel_before_the_deadline_fires_returns_true_and_fn_never_runs(hold: TimerHold) -> None:
    calls = Calls()
    due = _deadline.call_at(time.monotonic(), calls)  # due, but the timer thread is parked
    later = _deadline.call_at(time.monotonic() + 3600, calls)
    assert due.cancel() is True
    assert later.cancel() is True
    assert due.cancel() is False  # cancelled before
    assert later.cancel() is False
    hold.release()
    drain()
    assert calls.threads == []


def test_a_cancel_from_fn_itself_returns_false() -> None:
    seen: list[bool] = []
    handle: list[_deadline.Deadline] = []
    gate = threading.Event()
    ran = threading.Event()

    def fn() -> None:
        assert gate.wait(TIMEOUT)
        seen.append(handle[0].cancel())
        ran.set()

    handle.append(_deadline.call_at(time.monotonic(), fn))
    gate.set()
    assert ran.wait(TIMEOUT)
    assert seen == [False]


def test_cancel_racing_fire_agree_on_who_won() -> None:
    # Many deadlines due at once, cancelled by this thread while the timer
    # thread fires them: cancel() says True exactly for those that never ran.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        stop = time.monotonic() + 1.0
        rounds = 0
        while rounds < 3 or (time.monotonic() < stop and rounds < 50):
            rounds += 1
            fns = [Calls() for _ in range(200)]
            now = time.monotonic()
            deadlines = [_deadline.call_at(now, fn) for fn in fns]
            stopped = [deadline.cancel() for deadline in deadlines]
            drain()
            for fn, won in zip(fns, stopped, strict=True):
                assert len(fn.threads) == (0 if won else 1), (won, fn.threads)
    finally:
        sys.setswitchinterval(interval)


# -- never, far, and bad times ------------------------------------------------


def test_a_never_due_deadline_costs_nothing() -> None:
    calls = Calls()
    with _deadline._cond:
        before = len(_deadline._heap)
    never = _deadline.call_at(math.inf, calls)
    with _deadline._cond:
        assert len(_deadline._heap) == before  # no entry to sweep later
    drain()
    assert calls.threads == []
    assert never.cancel() is True  # it was still to come (for ever)
    assert never.cancel() is False


def test_far_deadlines_do_not_overflow_and_a_nearer_one_still_fires() -> None:
    calls = Calls()
    far = [
        _deadline.call_at(time.monotonic() + 10 * threading.TIMEOUT_MAX, calls),
        _deadline.call_at(time.monotonic() + 1e300, calls),
        _deadline.call_at(1.8e308, calls),
    ]
    drain()  # the timer thread waited on the far ones in steps and woke for this
    assert calls.threads == []
    assert [deadline.cancel() for deadline in far] == [True, True, True]


def test_a_nan_time_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^call_at: when must be a time, got nan"):
        _deadline.call_at(math.nan, lambda: None)


# -- what the thread keeps and survives ---------------------------------------


def test_nothing_of_a_called_deadline_stays_referenced() -> None:
    calls = Calls()
    ref = weakref.ref(calls)
    ran = calls.ran
    _deadline.call_at(time.monotonic(), calls)
    del calls
    assert ran.wait(TIMEOUT)
    # The timer thread is back waiting for the next deadline: its last call
    # must not stay alive until that one comes (a task's timeout holds the task).
    wait_for(lambda: ref() is None, TIMEOUT, "the timer thread to drop the called fn")


def test_an_exception_from_fn_is_logged_and_the_thread_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    def failing() -> None:
        raise ValueError("deadline broke")

    with caplog.at_level(logging.ERROR, logger="qiotask"):
        _deadline.call_at(time.monotonic(), failing)
        drain()  # a later deadline still fires
    [record] = [r for r in caplog.records if r.name == "qiotask"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    assert "exception in a deadline callback" in record.getMessage()


def test_the_thread_survives_keyboard_interrupt_system_exit_and_other_base_exceptions() -> None:
    # In a child interpreter: on the old code the first of these ended the
    # timer thread, and with it every later deadline of the process.
    result = run_child(
        """
        import logging, sys, threading, time
        from qiotask import _deadline

        logging.basicConfig(stream=sys.stderr, level=logging.ERROR, format="%(levelname)s:%(name)s:%(message)s")

        class Custom(BaseException):
            pass

        def raising(exc):
            def fn():
                raise exc
            return fn

        for exc in (KeyboardInterrupt("from a deadline"), SystemExit(3), Custom("custom")):
            now = time.monotonic()
            _deadline.call_at(now, raising(exc))
            later = threading.Event()
            _deadline.call_at(now, later.set)  # due with it, queued after it
            if not later.wait(10):
                print("no deadline fired after", type(exc).__name__, flush=True)
                sys.exit(1)
            print("fired after", type(exc).__name__, flush=True)
        """
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split("\n") == [
        "fired after KeyboardInterrupt",
        "fired after SystemExit",
        "fired after Custom",
        "",
    ]
    log = result.stderr
    for name, shown in [
        ("KeyboardInterrupt", "KeyboardInterrupt: from a deadline"),
        ("SystemExit", "SystemExit: 3"),
        ("Custom", "Custom: custom"),
    ]:
        assert f"ERROR:qiotask:{name} raised by the deadline callback" in log, log
        assert shown in log, log
    assert log.count("on qiotask's deadline thread, where it could not be raised to anyone") == 3, log
    assert log.count("Traceback (most recent call last)") == 3, log


def test_in_a_fresh_interpreter_the_thread_starts_late_and_with_an_empty_context() -> None:
    # A never-due deadline starts no thread.  The thread, once started, runs
    # in an empty context even where new threads inherit their creator's (a
    # free-threaded build; simulated here by a Thread that copies it).
    result = run_child(
        """
        import contextvars, math, threading, time
        from qiotask import _deadline

        class InheritingThread(threading.Thread):
            def start(self):
                self.inherited = contextvars.copy_context()
                super().start()

            def run(self):
                self.inherited.run(super().run)

        threading.Thread = InheritingThread
        var = contextvars.ContextVar("var", default="empty")
        var.set("the starter's")

        never = _deadline.call_at(math.inf, lambda: None)
        started = [t.name for t in threading.enumerate() if t.name == _deadline.THREAD_NAME]
        print("thread after inf:", started)
        seen = []
        done = threading.Event()
        _deadline.call_at(time.monotonic(), lambda: (seen.append(var.get()), done.set()))
        assert done.wait(10)
        print("fn saw:", seen[0])
        print("cancel never:", never.cancel())
        """
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split("\n") == [
        "thread after inf: []",
        "fn saw: empty",
        "cancel never: True",
        "",
    ]


# -- the heap sweep -----------------------------------------------------------


def test_cancelled_deadlines_are_swept_and_do_not_pile_up() -> None:
    live = [_deadline.call_at(time.monotonic() + 3600, lambda: None) for _ in range(10)]
    try:
        with _deadline._cond:
            first_sweep_within = _deadline._compact_at  # set by an earlier peak, maybe
        for _ in range(first_sweep_within):
            assert _deadline.call_at(time.monotonic() + 3600, lambda: None).cancel() is True
        # From the first sweep on, the heap never holds more than twice the
        # live entries (or the minimum that triggers a sweep), plus the one
        # whose push triggers the next sweep.
        most = 0
        for _ in range(20 * _deadline._MIN_COMPACT):
            assert _deadline.call_at(time.monotonic() + 3600, lambda: None).cancel() is True
            with _deadline._cond:
                most = max(most, len(_deadline._heap))
        with _deadline._cond:
            live_now = sum(entry[2].fn is not None for entry in _deadline._heap)
        assert live_now >= len(live)
        assert most <= max(_deadline._MIN_COMPACT, 2 * live_now) + 1, (most, live_now)
    finally:
        assert all(deadline.cancel() for deadline in live)
