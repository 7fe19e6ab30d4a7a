"""Argument checks shared by every module, so that one kind of mistake
gets one kind of message: ``"<where>: <what> must be ..., not <type>"``
(without ``"<where>: "`` when ``where`` is empty).

Durations: a number of seconds (or milliseconds) that is not negative and
not NaN.  One longer than ``threading.TIMEOUT_MAX`` seconds (about 292 years
on Linux), ``math.inf`` included, means *no limit*: it is accepted and
becomes ``math.inf``, which every consumer treats as "never" (a wait without
a timeout, a timer that never fires), rather than a number that overflows a
lock's wait.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Literal, overload

__all__ = ["LONGEST_WAIT", "check_callable", "check_duration", "check_fd", "wait_timeout"]

_PER_SECOND = {"seconds": 1, "milliseconds": 1000}


def check_callable(value: Any, where: str, what: str = "fn", *, optional: bool = False) -> None:
    """Raise TypeError unless ``value`` is callable (or None, if ``optional``)."""
    if callable(value) or (optional and value is None):
        return
    allowed = "callable or None" if optional else "callable"
    raise TypeError(f"{_prefix(where)}{what} must be {allowed}, not {type(value).__name__}")


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
