"""A cheaper ``with`` for the locks of the hot path.

``with lock:`` on a ``threading.Lock`` looks ``__enter__`` and ``__exit__``
up on the lock's type and binds each to the lock: two method objects made
and freed on every hold (CPython 3.10 to 3.13; 3.14's ``LOAD_SPECIAL``
avoids them).  A job takes about eight holds, so those allocations were a
tenth of the callback style's CPU time (``docs/performance.md``).

:func:`hold` returns, for one lock, an object of a class made for that lock
alone, whose ``__enter__`` and ``__exit__`` are the lock's own bound
methods.  ``with`` looks them up on that class and, since a bound method is
not a descriptor, calls them as they are: nothing is made per hold.

Guarantees / assumes: ``with hold(lock):`` is the same instruction as
``with lock:`` (``BEFORE_WITH``, ``SETUP_WITH`` on 3.10, ``LOAD_SPECIAL`` on
3.14) and calls the same C functions, so it keeps what ``_state``'s module
head says of ``with``: the lock is taken inside the instruction that sets
up its release, and an interrupt can never leave it held
(``tests/test_signals.py`` checks it).  The object also has the lock's
``acquire``, ``release`` and ``locked``, so it stands in for the lock
wherever one is asked for, except as a ``threading.Condition``'s lock (give
the condition the lock itself).
"""

from __future__ import annotations

import threading
from typing import cast

__all__ = ["hold"]


def hold(lock: threading.Lock) -> threading.Lock:
    """An object that does what ``lock`` does, with a cheaper ``with``."""
    kind = type(
        "Hold",
        (),
        {
            "__slots__": (),
            "__module__": __name__,
            "__enter__": lock.__enter__,
            "__exit__": lock.__exit__,
            "acquire": lock.acquire,
            "release": lock.release,
            "locked": lock.locked,
            "__repr__": lambda self: f"<hold of {lock!r}>",
        },
    )
    return cast("threading.Lock", kind())
