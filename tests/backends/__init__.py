"""One module per event loop, for the contract suite run on every loop.

Each module ``tests/backends/<name>.py`` defines ``open() -> Backend``: a
fresh context of that loop, owned by the calling (test) thread, which
``qiotask.MainLoop(backend.context).run()`` runs.  A backend whose toolkit
cannot be loaded is skipped with the reason, except under
``QIOTASK_REQUIRE_ALL_LOOPS=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn, Protocol, TypeVar

import pytest

import qiotask

BACKENDS = ("asyncio", "uvloop", "glib", "qt", "tk", "trio")


class Backend(Protocol):
    context: qiotask.MainContext

    def close_loop(self) -> None:
        """Make the loop go away for good (tasks in flight then finish with
        ContextClosedError)."""

    def cleanup(self) -> None:
        """Release what open() made; called once, after the test."""


B = TypeVar("B", bound=Backend)


def settle(context: qiotask.MainContext) -> None:
    """Run the completions handed over at the very end (unless the context is closed)."""
    if not context.closed:
        context._dispatch()


class ContextBackend:
    """A backend whose loop is its context: closing the context makes it go away."""

    context: qiotask.MainContext

    def close_loop(self) -> None:
        self.context.close()  # type: ignore[attr-defined]

    def cleanup(self) -> None:
        settle(self.context)
        self.context.close()  # type: ignore[attr-defined]


@contextmanager
def thread_default(backend: B) -> Iterator[B]:
    """``backend``'s context as the thread default while in use; the backend cleaned up after."""
    backend.context.push_thread_default()
    try:
        yield backend
    finally:
        backend.context.pop_thread_default()
        backend.cleanup()


def unavailable(reason: str) -> NoReturn:
    """Skip the test for a loop that cannot run here -- or, in CI
    (``QIOTASK_REQUIRE_ALL_LOOPS=1``), fail it."""
    if os.environ.get("QIOTASK_REQUIRE_ALL_LOOPS") == "1":
        pytest.fail(reason + " (QIOTASK_REQUIRE_ALL_LOOPS=1)")
    pytest.skip(reason)


def open_backend(name: str) -> Backend:
    try:
        module = importlib.import_module(f"tests.backends.{name}")
        return module.open()  # type: ignore[no-any-return]
    except (ImportError, OSError, RuntimeError) as exc:
        unavailable(f"loop {name!r} cannot be loaded here: {type(exc).__name__}: {exc}")
