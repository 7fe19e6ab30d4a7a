"""Trace events of qiotask, named as QEMU's trace points.

``qiotask.trace.add_listener(fn)`` calls ``fn(event, task, fields)`` for each
event; :data:`EVENTS` lists them in the order a threaded task emits them.
The same events go to the ``qiotask`` logger at DEBUG level.
"""

from __future__ import annotations

from ._trace import EVENTS as EVENTS
from ._trace import Listener as Listener
from ._trace import add_listener as add_listener
from ._trace import remove_listener as remove_listener
from ._trace import stats as stats

__all__ = ["EVENTS", "Listener", "add_listener", "remove_listener", "stats"]
