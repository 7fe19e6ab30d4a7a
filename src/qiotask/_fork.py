"""Fork safety, written once: no lock of qiotask is copied into a child
half-way through a change.

Each module names its locks, in the order to take them, with a generator
(so that a registry is listed only once its lock is held)::

    def _fork_locks():
        yield _registry_lock
        for pool in list(_all_pools):
            yield pool._lock

    _fork.guard(_fork_locks, child=reset)

Before ``os.fork()`` the forking thread takes those locks, in that order, so
that no other thread is inside a change they guard; after it, the parent
releases them, and so does the child (the forking thread, which holds them,
is the thread the child runs), which then calls ``child()`` to drop what
belonged to threads it does not have.  CPython's ``concurrent.futures.thread``
does this for its one lock.  The locks a module names are never held while
another module's are taken, so the order of the modules' handlers cannot
deadlock with a running thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Protocol

__all__ = ["guard", "handlers"]


class _Lockable(Protocol):
    def acquire(self) -> bool: ...

    def release(self) -> None: ...


#: Every guard's (before, after_in_parent, after_in_child), in the order
#: registered (os.fork() runs the ``before`` handlers last-registered first);
#: the tests run them by hand.
handlers: list[tuple[Callable[[], None], Callable[[], None], Callable[[], None]]] = []


def guard(locks: Callable[[], Iterable[_Lockable]], child: Callable[[], None] | None = None) -> None:
    """Take ``locks()`` (consumed in order, as each is taken) across every
    ``os.fork()``; then ``child()`` in the child."""
    held: list[_Lockable] = []

    def before() -> None:
        for lock in locks():
            lock.acquire()
            held.append(lock)

    def release() -> None:
        while held:
            held.pop().release()

    def in_child() -> None:
        release()
        if child is not None:
            child()

    handlers.append((before, release, in_child))
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=before, after_in_parent=release, after_in_child=in_child)
