"""Forced interleavings: stop a thread at a named protocol point.

The library marks the moments where another thread's move could change an
outcome (``qiotask._points`` lists them).  A test installs a hook with
:func:`interleaving` and asks for the first thread that reaches a point to
pause there (or to run a function there), makes its own move on another
thread, then lets the paused thread go::

    with interleaving() as il:
        started = il.pause("task.started", task)
        task.run_in_thread(worker)
        started.wait_reached()       # the pool thread now waits at the point
        task.cancel()                # the move that races it
        started.release()

A pause that is never released ends after ``PAUSE_LIMIT`` seconds and the
test fails on leaving the ``with`` block, so a mistake cannot hang the run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from qiotask import _points

#: The longest a thread stays paused at a point if the test never releases it.
PAUSE_LIMIT = 10.0


class Point:
    """One expected arrival at a named point."""

    def __init__(self, name: str, obj: object | None, action: Callable[[], Any] | None, pause: bool) -> None:
        self.name = name
        self.obj = obj
        self.action = action
        self.pause = pause
        self.reached = threading.Event()
        self.released = threading.Event()
        self.thread: threading.Thread | None = None
        self.timed_out = False
        self.error: BaseException | None = None

    def matches(self, name: str, obj: object) -> bool:
        return name == self.name and (self.obj is None or obj is self.obj)

    def wait_reached(self, timeout: float = 5.0) -> None:
        """Wait until a thread has arrived at the point (and, for a call, run it)."""
        assert self.reached.wait(timeout), f"no thread reached {self.name!r} within {timeout} s"

    def release(self) -> None:
        """Let the paused thread go on."""
        self.released.set()

    def arrive(self) -> None:
        self.thread = threading.current_thread()
        if self.action is not None:
            try:
                self.action()
            except BaseException as exc:  # recorded for the test, not raised into the library
                self.error = exc
        self.reached.set()
        if self.pause and not self.released.wait(PAUSE_LIMIT):
            self.timed_out = True


class Interleaving:
    """The points a test waits for; the hook finds the first one that matches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._points: list[Point] = []  # not reached yet
        self.made: list[Point] = []
        self.seen: list[tuple[str, str]] = []  # (point, thread name), for failure messages

    def pause(self, name: str, obj: object | None = None) -> Point:
        """Pause the first thread that reaches ``name`` (for ``obj``, if given)."""
        return self._add(Point(name, obj, None, pause=True))

    def call(self, name: str, fn: Callable[[], Any], obj: object | None = None) -> Point:
        """Run ``fn()`` in the first thread that reaches ``name``, there."""
        return self._add(Point(name, obj, fn, pause=False))

    def _add(self, point: Point) -> Point:
        with self._lock:
            self._points.append(point)
            self.made.append(point)
        return point

    def hook(self, name: str, obj: object) -> None:
        with self._lock:
            self.seen.append((name, threading.current_thread().name))
            for point in self._points:
                if point.matches(name, obj):
                    self._points.remove(point)
                    break
            else:
                return
        point.arrive()


@contextmanager
def interleaving() -> Iterator[Interleaving]:
    """Install the point hook for the block; fail if a pause timed out."""
    assert _points.hook is None, "interleaving() does not nest"
    il = Interleaving()
    _points.hook = il.hook
    try:
        yield il
    finally:
        _points.hook = None
        for point in il.made:
            point.release()
    for point in il.made:
        assert not point.timed_out, f"a thread stayed paused at {point.name!r} for {PAUSE_LIMIT} s"
        if point.error is not None:
            raise AssertionError(f"the call at {point.name!r} raised") from point.error
