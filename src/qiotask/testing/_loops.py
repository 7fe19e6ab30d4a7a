"""The six loops a test can ask for, behind one table.

``open_loop(name)`` returns a :class:`LoopHandle`: a fresh context of that
loop, owned by the calling thread, which ``qiotask.MainLoop(handle.context)``
runs.  Each loop's maker lives in a module of its own (``_asyncio``,
``_glib``, ``_qt``, ``_tk``, ``_trio``), imported the first time that loop
is asked for, so that importing :mod:`qiotask.testing` imports no toolkit.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from .._context import MainContext

__all__ = ["LOOPS", "ContextLoop", "LoopHandle", "LoopUnavailable", "open_loop", "settle"]

#: The loops qiotask has an adapter for, in the order the docs list them.
LOOPS = ("asyncio", "uvloop", "glib", "qt", "tk", "trio")

# name -> (module, maker): each maker takes no argument and returns a handle.
_MAKERS = {
    "asyncio": ("qiotask.testing._asyncio", "open_asyncio"),
    "uvloop": ("qiotask.testing._asyncio", "open_uvloop"),
    "glib": ("qiotask.testing._glib", "open_glib"),
    "qt": ("qiotask.testing._qt", "open_qt"),
    "tk": ("qiotask.testing._tk", "open_tk"),
    "trio": ("qiotask.testing._trio", "open_trio"),
}


class LoopUnavailable(RuntimeError):
    """Raised when a loop cannot run here: its toolkit is not installed, or
    cannot start (no X display for Tk)."""


class LoopHandle(Protocol):
    """A context of one loop, made for one test."""

    #: The loop's name, one of :data:`LOOPS`.
    name: str
    #: The context; tasks made with ``context=`` it deliver on it.
    context: MainContext

    def close_loop(self) -> None:
        """Make the loop go away for good: tasks in flight then finish with
        ``ContextClosedError``."""

    def cleanup(self) -> None:
        """Release what :func:`open_loop` made; called once, on the thread
        that opened it, after the test."""


def settle(context: MainContext) -> None:
    """On the context's thread: run the completions queued now, unless the
    context is closed."""
    if not context.closed:
        context._dispatch()


class ContextLoop:
    """A handle whose loop is its context: closing the context makes the loop
    go away."""

    name: str
    context: MainContext

    def close_loop(self) -> None:
        self.context.close()

    def cleanup(self) -> None:
        settle(self.context)
        self.context.close()


def open_loop(name: str) -> LoopHandle:
    """A fresh context of the loop ``name``, owned by the calling thread.

    Args:
        name: one of :data:`LOOPS`.

    Returns:
        The handle; call its ``cleanup()`` once done with it.

    Raises:
        ValueError: ``name`` is not one of :data:`LOOPS`.
        LoopUnavailable: the loop's toolkit is missing or cannot start here.
    """
    try:
        module_name, maker = _MAKERS[name]
    except KeyError:
        raise ValueError(f"unknown loop {name!r}; the loops are {', '.join(LOOPS)}") from None
    try:
        module = importlib.import_module(module_name)
        handle: LoopHandle = getattr(module, maker)()
    except (ImportError, OSError, RuntimeError) as exc:
        if isinstance(exc, LoopUnavailable):
            raise
        raise LoopUnavailable(f"loop {name!r} cannot be loaded here: {type(exc).__name__}: {exc}") from exc
    return handle
