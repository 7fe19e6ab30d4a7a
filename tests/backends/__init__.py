"""The loops of the contract suite: thin names over ``qiotask.testing``,
which ships the per-loop context makers to users and to this suite alike.

``open_backend(name)`` is ``qiotask.testing.open_loop(name)``: a fresh
context of that loop, owned by the calling (test) thread, which
``qiotask.MainLoop(backend.context).run()`` runs.  A loop that cannot be
loaded is skipped with the reason, except under
``QIOTASK_REQUIRE_ALL_LOOPS=1`` (CI), where that is a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from qiotask.testing import LOOPS as BACKENDS
from qiotask.testing import LoopHandle as Backend
from qiotask.testing import LoopUnavailable, open_loop
from qiotask.testing._loops import ContextLoop as ContextBackend
from qiotask.testing._loops import settle
from qiotask.testing.plugin import unavailable

__all__ = ["BACKENDS", "Backend", "ContextBackend", "open_backend", "settle", "thread_default", "unavailable"]

B = TypeVar("B", bound=Backend)


@contextmanager
def thread_default(backend: B) -> Iterator[B]:
    """``backend``'s context as the thread default while in use; the backend cleaned up after."""
    backend.context.push_thread_default()
    try:
        yield backend
    finally:
        backend.context.pop_thread_default()
        backend.cleanup()


def open_backend(name: str) -> Backend:
    try:
        return open_loop(name)
    except LoopUnavailable as exc:
        unavailable(str(exc))
