"""The outcome rules: which result and which error a task ends with.

Functions over values, no locks and no task (``delivered_error`` sets the
``__cause__`` of the ContextClosedError it returns, and the ``__context__``
of a cancel that wins over an error): the state machine
(``_state``) applies them inside its locked steps, so that a rule and the
state move it belongs to are one decision.

- The first error wins: ``set_error(e1)`` then ``abort(e2)`` delivers
  ``e1``, and so does a worker that raises after ``set_error``.
- None never replaces a result: ``complete()`` or a worker returning None
  keeps a result set before (``set_result(None)`` does replace it).  A new
  result replaces the old one, whose destroy notifier then runs at once, in
  the replacing thread.
- What ``func`` gets: a cancel's exception if a cancel was asked before the
  outcome was fixed ("cancel wins": an error the worker raised after it,
  such as the ``OSError`` of a socket an ``on_cancel`` hook closed, is not
  lost but becomes the cancel's ``__context__``, as Python chains an error
  raised while another is handled); else, when the loop went away first,
  ``ContextClosedError`` (caused by the error it hides, if any); else the
  first error; else None.
- The result stays readable after the task finished, like a Future's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["delivered_error", "first_error", "replace_result"]

DestroyNotify = Callable[[Any], Any]
#: A result together with its destroy notifier.
Held = tuple[Any, "DestroyNotify | None"]


def first_error(current: BaseException | None, new: BaseException | None) -> BaseException | None:
    """The error to keep when ``new`` arrives and ``current`` was set before."""
    return new if current is None else current


def replace_result(current: Held, value: Any, destroy: DestroyNotify | None, *, none_keeps: bool) -> Held | None:
    """The result a task holds once ``value`` arrives, or None to keep
    ``current``: a None ``value`` keeps it when ``none_keeps`` (a worker's
    return value, ``complete()``'s argument), not from ``set_result``."""
    if value is None and none_keeps:
        return None
    return value, destroy


def delivered_error(
    error: BaseException | None, cancel: BaseException | None, closed: BaseException | None
) -> BaseException | None:
    """The ``err`` that ``func`` and the awaiters get."""
    if cancel is not None:
        if error is not None and error is not cancel and cancel.__context__ is None:
            cancel.__context__ = error
        return cancel
    if closed is not None:
        closed.__cause__ = error
        return closed
    return error
