"""The qiotask pytest plugin: a context per loop, a loop runner, a leak check.

Registered as the ``pytest11`` entry point ``qiotask``, so pytest loads it
wherever qiotask is installed (``-p no:qiotask`` turns it off).  Loading it
imports no toolkit and changes no test: only a test that asks for one of
its fixtures, or carries its marker, gets anything from it.

Fixtures:

- ``qiotask_loop``: the name of the loop to test on, ``"asyncio"``.
  Override it (a fixture of that name in a conftest.py, with ``params=`` to
  run each test on several loops), parametrize it
  (``@pytest.mark.parametrize("qiotask_loop", ["glib", "trio"])``), or mark
  the test ``@pytest.mark.qiotask_loops("glib", "trio")`` (no names: all
  six, ``qiotask.testing.LOOPS``).  A test marked so must use one of the
  fixtures; a mark on a module or class applies to those of its tests that
  do.
- ``qiotask_context``: a fresh context of that loop, owned by the test's
  thread and pushed as its thread default, so that a task made without
  ``context=`` belongs to it.  A loop whose toolkit is missing here skips
  the test with the reason -- or fails it when the environment variable
  ``QIOTASK_REQUIRE_ALL_LOOPS`` is ``1`` (for CI, where a skip would hide a
  loop that was meant to be tested).
- ``qiotask_runner``: a :class:`qiotask.testing.LoopRunner` for that
  context: ``run_until_done(*tasks, timeout=10.0)``, ``run_until(predicate,
  timeout=10.0)``, ``run(timeout=10.0)`` and ``quit()``.

The leak check: once the test and the fixtures built on these have ended,
a task made on the context that has not finished (its ``func`` and
notifiers have not run), or a completion handed to the loop that the loop
never ran, fails the test with a message naming each task and its state.
What was left is then settled (cancelled, aborted, run) so that it does not
spill into the next test.  A test that failed already is not reported
twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from .._context import MainContext
from ._leaks import TaskWatch
from ._loops import LOOPS, LoopHandle, LoopUnavailable, open_loop
from ._runner import LoopRunner

__all__ = ["qiotask_context", "qiotask_loop", "qiotask_runner"]

#: When this environment variable is "1", a loop that cannot run here fails
#: the test instead of skipping it.
REQUIRE_ALL_LOOPS = "QIOTASK_REQUIRE_ALL_LOOPS"

MARKER = "qiotask_loops"

# Whether the test's own call failed: its leak report would only repeat it.
_call_failed = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*names): run the test once on each named loop (all of {', '.join(LOOPS)} when none "
        "is named), through the qiotask_loop fixture",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Turned into a parametrize marker before pytest reads those: a direct
    # parametrization, which overrides a qiotask_loop fixture with params.
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None:
        return
    names = marker.args or LOOPS
    unknown = [name for name in names if name not in LOOPS]
    if unknown:
        raise ValueError(f"@pytest.mark.{MARKER}: unknown loop(s) {unknown}; the loops are {', '.join(LOOPS)}")
    if "qiotask_loop" not in metafunc.fixturenames:
        if not any(mark.name == MARKER for mark in metafunc.definition.own_markers):
            return  # marked with its module or class: the mark is for its neighbours
        raise ValueError(
            f"@pytest.mark.{MARKER} on {metafunc.function.__name__}: the test uses neither qiotask_context, "
            "qiotask_runner nor qiotask_loop, so it would run the same on every loop"
        )
    metafunc.definition.add_marker(pytest.mark.parametrize("qiotask_loop", names, ids=names))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    except BaseException:
        item.stash[_call_failed] = True
        raise


def unavailable(reason: str) -> NoReturn:
    """Skip the test for a loop that cannot run here, or fail it under
    ``QIOTASK_REQUIRE_ALL_LOOPS=1``."""
    if os.environ.get(REQUIRE_ALL_LOOPS) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ALL_LOOPS}=1)", pytrace=False)
    pytest.skip(reason)


class _Harness:
    """What the fixtures of one test share."""

    def __init__(self, handle: LoopHandle) -> None:
        self.handle = handle
        self.runner = LoopRunner(handle.context)
        self.watch = TaskWatch(handle.context)


@pytest.fixture
def qiotask_loop() -> str:
    """The loop ``qiotask_context`` makes a context of: ``"asyncio"``, unless
    overridden or parametrized (one of ``qiotask.testing.LOOPS``)."""
    return "asyncio"


@pytest.fixture
def _qiotask_harness(qiotask_loop: str, request: pytest.FixtureRequest) -> Iterator[_Harness]:
    try:
        handle = open_loop(qiotask_loop)
    except LoopUnavailable as exc:
        unavailable(str(exc))
    harness = _Harness(handle)
    context = handle.context
    harness.watch.start()
    context.push_thread_default()
    try:
        yield harness
    finally:
        # The order matters: what is left is judged before anything runs
        # the loop again, then settled while the context still works.
        context.pop_thread_default()
        try:
            problems = harness.watch.problems(harness.runner.runs)
            if problems is not None:
                harness.watch.settle()
        finally:
            harness.watch.stop()
            handle.cleanup()
    if problems is not None and not request.node.stash.get(_call_failed, False):
        pytest.fail(f"qiotask leak check ({qiotask_loop}): {problems}", pytrace=False)


@pytest.fixture
def qiotask_context(_qiotask_harness: _Harness) -> MainContext:
    """A fresh context of the ``qiotask_loop`` loop, the test thread's
    default while the test runs; leak-checked when the test ends."""
    return _qiotask_harness.handle.context


@pytest.fixture
def qiotask_runner(_qiotask_harness: _Harness) -> LoopRunner:
    """A :class:`~qiotask.testing.LoopRunner` for ``qiotask_context``."""
    return _qiotask_harness.runner
