"""Argument checks shared by every module, so that one kind of mistake
gets one kind of message: ``"<where>: <what> must be ..., not <type>"``
(without ``"<where>: "`` when ``where`` is empty).

Durations: a number of seconds (or milliseconds) that is not negative and
not NaN.  One longer than ``threading.TIMEOUT_MAX`` seconds (about 292 years
on Linux), ``math.inf`` included, means *no limit*: it is accepted and
becomes ``math.inf``, which every consumer treats as "never" (a wait without
a timeout, a timer that never fires), rather than a number that overflows a
lock's wait.

Workers are synchronous: an ``async def`` function (or a
``functools.partial`` of one, or a bound method of one) handed to a thread
would only make a coroutine there, never run it.  :func:`check_sync` refuses
one at the call; :func:`refuse_awaitable` turns an awaitable a worker
returned into an error.  The call's check reads the function's code flags
(an attribute load and a test, cheap enough for every job) rather than
calling ``inspect.iscoroutinefunction``, which costs a tenth of a job.
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
from typing import Any, Literal, overload

__all__ = [
    "ASYNC_FLAGS",
    "LONGEST_WAIT",
    "check_awaitable",
    "check_callable",
    "check_duration",
    "check_fd",
    "awaitable_type",
    "check_sync",
    "refuse_awaitable",
    "wait_timeout",
]

#: The code flags of an ``async def`` function and of an async generator
#: function: what neither a worker nor a call on the loop may be.
ASYNC_FLAGS = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
_partial = functools.partial

_PER_SECOND = {"seconds": 1, "milliseconds": 1000}


def check_callable(value: Any, where: str, what: str = "fn", *, optional: bool = False) -> None:
    """Raise TypeError unless ``value`` is callable (or None, if ``optional``)."""
    if callable(value) or (optional and value is None):
        return
    allowed = "callable or None" if optional else "callable"
    raise TypeError(f"{_prefix(where)}{what} must be {allowed}, not {type(value).__name__}")


def check_sync(fn: Any, where: str, what: str = "fn") -> None:
    """Raise TypeError if ``fn`` is an async function (or a partial or a
    bound method of one): ``where`` runs it in a thread or on the loop as a
    plain call, which would only make a coroutine."""
    code = getattr(fn, "__code__", None)  # a function, or a method (it lends its function's)
    if code is not None:
        if not code.co_flags & ASYNC_FLAGS:
            return
    elif type(fn) is _partial or isinstance(fn, _partial):
        check_sync(fn.func, where, what)
        return
    else:
        return  # a builtin, a class, a callable object: not an async function
    name = getattr(fn, "__qualname__", None) or repr(fn)
    raise TypeError(
        f"{_prefix(where)}{what} {name} is an async function: called as a plain function it would only "
        f"make a coroutine, never run it; pass a synchronous function (or await {name}() on the loop)"
    )


def awaitable_type(kind: type) -> bool:
    """Whether objects of ``kind`` are awaitable (have ``__await__``).
    Remembered per type: ``getattr`` of a missing attribute costs a raised
    and caught AttributeError, a quarter of a microsecond on every result."""
    known = _awaitable_types.get(kind)
    if known is None:
        if len(_awaitable_types) >= _MAX_REMEMBERED:
            _awaitable_types.clear()  # classes made on the fly: start over
        known = _awaitable_types[kind] = getattr(kind, "__await__", None) is not None
    return known


# Type -> is it awaitable; filled by any thread (a dict's get and set are
# each atomic, with the GIL and on the free-threaded build; two threads
# storing the same answer is harmless).
_awaitable_types: dict[type, bool] = {}
_MAX_REMEMBERED = 1024


def check_awaitable(value: Any, fn: Any, where: str) -> None:
    """Raise TypeError if ``fn(...)`` returned ``value``, which cannot be
    awaited: ``where`` was given ``fn`` as an async function."""
    if not awaitable_type(type(value)):
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise TypeError(
            f"{_prefix(where)}async_fn {name} returned {type(value).__name__}, not an awaitable: "
            "pass an async function (or run a plain one with from_thread.run_sync)"
        )


def refuse_awaitable(value: Any, where: str) -> TypeError | None:
    """A TypeError if a worker returned an awaitable (a coroutine, a
    future): nothing will ever await it.  A coroutine is closed here, so
    that it is not kept and never warns that it was not awaited."""
    if not awaitable_type(type(value)):
        return None
    close = getattr(value, "close", None)
    if inspect.iscoroutine(value) and close is not None:
        close()
    return TypeError(
        f"{_prefix(where)}the worker returned an awaitable ({type(value).__name__}) that nothing will "
        "await: a worker runs in a thread and must be a synchronous function"
    )


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


@overload
def check_duration(
    value: Any,
    where: str,
    what: str = ...,
    *,
    optional: Literal[False] = ...,
    positive: bool = ...,
    unit: str = ...,
) -> float: ...
@overload
def check_duration(
    value: Any, where: str, what: str = ..., *, optional: bool, positive: bool = ..., unit: str = ...
) -> float | None: ...
def check_duration(
    value: Any,
    where: str,
    what: str = "timeout",
    *,
    optional: bool = False,
    positive: bool = False,
    unit: str = "seconds",
) -> float | None:
    """``value`` as a float number of ``unit``; None stays None if ``optional``;
    anything beyond ``threading.TIMEOUT_MAX`` seconds becomes ``math.inf``.

    Raises:
        TypeError: not an int or float (bool is refused).
        ValueError: NaN, or negative (with ``positive``, zero too).
    """
    if optional and value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        allowed = f"a number of {unit} or None" if optional else f"a number of {unit}"
        raise TypeError(f"{_prefix(where)}{what} must be {allowed}, not {type(value).__name__}")
    if value != value:  # NaN compares unequal to itself
        raise ValueError(f"{_prefix(where)}{what} must be a number of {unit}, not NaN")
    if positive:
        if not value > 0:
            raise ValueError(f"{_prefix(where)}{what} must be positive, got {value}")
    elif not value >= 0:
        raise ValueError(f"{_prefix(where)}{what} must not be negative, got {value}")
    if value > threading.TIMEOUT_MAX * _PER_SECOND[unit]:  # an int too big for a float included
        return math.inf
    return float(value)


#: The longest single wait qiotask asks of a loop's timer or a selector, in
#: seconds (a day): longer waits are made in steps of this, as a C int of
#: milliseconds (Qt, GLib, Tk, epoll) holds at most about 24 days.
LONGEST_WAIT = 86400.0


def wait_timeout(seconds: float | None) -> float | None:
    """A checked duration as the ``timeout`` of a ``threading`` wait: None
    (wait without limit) for None or infinity."""
    if seconds is None or seconds > threading.TIMEOUT_MAX:
        return None
    return seconds


#: The largest file descriptor number: poll(2) and every loop take a C int.
FD_MAX = 2**31 - 1


def check_fd(value: Any, where: str) -> int:
    """``value`` -- an int, or an object with ``fileno()`` -- as an fd number.

    Raises:
        TypeError: neither an int nor an object with ``fileno()``, or its
            ``fileno()`` did not return an int.
        ValueError: negative (a closed socket's ``fileno()`` is -1) or
            beyond :data:`FD_MAX`.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        fd = value
    else:
        fileno = getattr(value, "fileno", None)
        if fileno is None or not callable(fileno):
            raise TypeError(f"{_prefix(where)}fd must be an int or have fileno(), not {type(value).__name__}")
        fd = fileno()
        if not isinstance(fd, int) or isinstance(fd, bool):
            raise TypeError(
                f"{_prefix(where)}fd's fileno() must return an int, but {type(value).__name__}.fileno() "
                f"returned {type(fd).__name__} {fd!r}"
            )
        if fd < 0:
            raise ValueError(f"{_prefix(where)}fd {type(value).__name__} is closed (its fileno() returned {fd})")
    if fd < 0:
        raise ValueError(f"{_prefix(where)}fd must be a file descriptor (0 or more), got {fd}")
    if fd > FD_MAX:
        raise ValueError(f"{_prefix(where)}fd {fd} is not a file descriptor: they go up to {FD_MAX}")
    return fd
