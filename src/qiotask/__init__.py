"""qiotask: QEMU's QIOTask for Python event loops.

Run work that cannot be made asynchronous (DNS lookups, blocking libraries,
disk and CPU work) without freezing the loop: the result is delivered on the
loop's thread, the object it concerns is kept alive meanwhile, and every
cleanup runs exactly once.  See ``qiotask._task`` for the manual.

``qiotask.net`` (sockets, DNS, listeners, TLS) and ``qiotask.otel``
(OpenTelemetry metrics) are imported on first use, not by ``import
qiotask``: most programs never touch them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import from_thread as from_thread
from . import trace as trace
from ._api import run_sync as run_sync
from ._api import shutdown as shutdown
from ._api import to_thread as to_thread
from ._context import IO_ERR as IO_ERR
from ._context import IO_HUP as IO_HUP
from ._context import IO_IN as IO_IN
from ._context import IO_OUT as IO_OUT
from ._context import IOCondition as IOCondition
from ._context import MainContext as MainContext
from ._context import MainLoop as MainLoop
from ._context import Source as Source
from ._context import attach as attach
from ._context import default_context as default_context
from ._context import get_context as get_context
from ._dump import disable_dump as disable_dump
from ._dump import enable_dump as enable_dump
from ._errors import ContextClosedError as ContextClosedError
from ._errors import TaskCancelled as TaskCancelled
from ._errors import TaskError as TaskError
from ._errors import TaskStateError as TaskStateError
from ._errors import TaskTimeout as TaskTimeout
from ._exit import set_exit_timeout as set_exit_timeout
from ._group import TaskGroup as TaskGroup
from ._group import TaskGroupError as TaskGroupError
from ._inspect import TaskInfo as TaskInfo
from ._inspect import tasks as tasks
from ._limiter import Limiter as Limiter
from ._pool import DEFAULT_MAX_WORKERS as DEFAULT_MAX_WORKERS
from ._pool import PoolStatistics as PoolStatistics
from ._pool import WorkerPool as WorkerPool
from ._stream import iterate_in_thread as iterate_in_thread
from ._task import Task as Task
from ._task import TaskState as TaskState
from ._trace import stats as stats
from .loops import asyncio as _asyncio_adapter  # noqa: F401  (registers the asyncio adapter)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports it
    from . import net as net
    from . import otel as otel

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_WORKERS",
    "IO_ERR",
    "IO_HUP",
    "IO_IN",
    "IO_OUT",
    "ContextClosedError",
    "IOCondition",
    "Limiter",
    "MainContext",
    "MainLoop",
    "PoolStatistics",
    "Source",
    "Task",
    "TaskCancelled",
    "TaskError",
    "TaskGroup",
    "TaskGroupError",
    "TaskInfo",
    "TaskState",
    "TaskStateError",
    "TaskTimeout",
    "WorkerPool",
    "__version__",
    "attach",
    "default_context",
    "disable_dump",
    "enable_dump",
    "from_thread",
    "get_context",
    "iterate_in_thread",
    "net",
    "otel",
    "run_sync",
    "set_exit_timeout",
    "shutdown",
    "stats",
    "tasks",
    "to_thread",
    "trace",
]

# Subpackages imported on first access (PEP 562), so that ``import qiotask``
# stays as cheap as it can be; ``qiotask.net`` imports no toolkit either.
_LAZY_SUBMODULES = frozenset({"net", "otel"})


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        # import_module binds the submodule as an attribute of this package,
        # so this runs once per name.
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES)
