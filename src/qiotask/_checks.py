"""Argument checks shared by every module, so that one kind of mistake
gets one kind of message: ``"<where>: <what> must be ..., not <type>"``
(without ``"<where>: "`` when ``where`` is empty)."""

from __future__ import annotations

from typing import Any, Literal, overload

__all__ = ["check_callable", "check_duration"]


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
    """``value`` as a float number of ``unit``; None stays None if ``optional``.

    Raises:
        TypeError: not an int or float (bool is refused).
        ValueError: negative or NaN (with ``positive``, zero too).
    """
    if optional and value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        allowed = f"a number of {unit} or None" if optional else f"a number of {unit}"
        raise TypeError(f"{_prefix(where)}{what} must be {allowed}, not {type(value).__name__}")
    if positive:
        if not value > 0:  # NaN too
            raise ValueError(f"{_prefix(where)}{what} must be positive, got {value}")
    elif not value >= 0:  # NaN too
        raise ValueError(f"{_prefix(where)}{what} must not be negative, got {value}")
    return float(value)
