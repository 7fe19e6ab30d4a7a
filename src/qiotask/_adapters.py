"""The one registry of loop adapters: which loops qiotask knows, which are
loaded, and what each can do.

``ADAPTERS`` is the table: one row per loop kind, known before any toolkit
is imported (anyio's backend table is the model).  A row names the
adapter's module (``qiotask.loops.<name>``), the toolkit module whose
presence means :func:`qiotask.get_context` should load it, and how
:func:`qiotask.attach` recognises one of its loop objects by the module of
the object's classes.  Importing the module registers what it can do, an
:class:`Adapter`, with :func:`register`.  Adding a loop is one module and
one row here.

The order of the table is the order of detection: the loop whose presence
is most specific first (a running asyncio loop, a trio run), GLib last and
as a fallback, because Qt's event dispatcher and PyGObject's asyncio loop
run on top of GLib's default context.

An adapter that fails to load -- any exception from its import, not only
ImportError: a toolkit whose API moved raises AttributeError -- is recorded
with the reason (:func:`problem`, ``qiotask info``), logged once, and treated
as absent, so that one toolkit that cannot load breaks no other loop.

Guarantees / assumes: ``_loaded`` and ``_problems`` are dicts, and
``detectors``, ``fallback_detectors`` and ``_async`` module globals holding
tuples; all are written under ``_lock`` and read without it (get_context()
runs for every task).  A dict load or store is atomic on every build (the
free-threaded one gives each dict, module globals included, its own lock);
an adapter is fully built, and each tuple whole, before the store that
publishes it; nothing is ever removed.  So a reader sees an adapter whole or
not yet, and a tuple of the table before or after a registration.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import threading
import types
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._context import MainContext

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AdapterSpec",
    "async_adapter",
    "attach_once",
    "load",
    "loaded",
    "problem",
    "register",
]

logger = logging.getLogger("qiotask")


@dataclass(frozen=True)
class AdapterSpec:
    """A row of the table: what is known of a loop before its toolkit loads."""

    #: The loop's name: ``qiotask.loops.<name>`` is its adapter.
    name: str
    #: What :func:`qiotask.attach` takes, for messages ("a trio token").
    kind: str
    #: Whether a class's ``__module__`` belongs to the toolkit (attach()
    #: loads the adapter for such an object); None: always loaded.
    matches: Callable[[str], bool] | None
    #: The toolkit module whose presence in ``sys.modules`` makes
    #: get_context() load the adapter (its loop may be running); None: only
    #: attach() loads it.
    trigger: str | None
    #: Detected after every other loop (a loop others run on top of).
    fallback: bool = False

    @property
    def module(self) -> str:
        return f"qiotask.loops.{self.name}"


ADAPTERS: tuple[AdapterSpec, ...] = (
    AdapterSpec("asyncio", "an asyncio event loop", None, None),
    AdapterSpec("trio", "a trio token", lambda module: module.startswith("trio"), "trio"),
    AdapterSpec(
        "qt", "a Qt application (QCoreApplication)", lambda module: module.startswith("PySide6"), "PySide6.QtCore"
    ),
    AdapterSpec("tk", "a tkinter.Tk", lambda module: module == "tkinter", None),
    AdapterSpec(
        "glib", "a GLib.MainContext", lambda module: module.startswith("gi."), "gi.repository.GLib", fallback=True
    ),
)
_SPECS = {spec.name: spec for spec in ADAPTERS}


@dataclass(frozen=True)
class Adapter:
    """What a loaded adapter module can do; every loop provides the first
    three, loops that run coroutines the rest."""

    #: Whether ``obj`` is one of this loop's objects (attach()).
    accepts: Callable[[Any], bool]
    #: The context of such an object, the same one each time.
    attach: Callable[[Any], MainContext]
    #: The context of this loop if it runs (is dispatching) in the calling
    #: thread, else None.
    detect: Callable[[], MainContext | None] | None = None
    #: Whether a run of this async framework is running in the calling
    #: thread: a true value if so (not only True: asyncio's is
    #: ``asyncio._get_running_loop``, a C call, asked on every await).
    running: Callable[[], object] | None = None
    #: ``Task.__await__`` in this framework: ``await_task(task)`` is the
    #: iterator that waits for the completion and ends with ``task._outcome()``.
    await_task: Callable[[Any], Any] | None = None
    #: ``async with TaskGroup``'s wait: ``wait_group(group, shielded)``
    #: returns once the group is done, with the cancellation of the waiting
    #: coroutine if it was cancelled (the tasks are cancelled, and still
    #: waited for), else None.
    wait_group: Callable[[Any, bool], Awaitable[BaseException | None]] | None = None
    #: Whether an exception is this framework's cancellation.
    is_cancellation: Callable[[BaseException], bool] | None = None
    #: ``run_sync``'s first step: an awaitable that delivers the awaiting
    #: coroutine's cancellation if one is pending (the worker then never
    #: starts), or None when there is nothing to await.
    cancel_point: Callable[[], Awaitable[None] | None] | None = None
    #: ``run_sync``'s wait: ``wait_worker(task, abandon)`` waits for the
    #: completion and returns ``task._outcome()``; if the awaiting coroutine
    #: is cancelled meanwhile, it cancels the task and, unless ``abandon``
    #: (or the cancel completed the task), still waits for the worker, then
    #: raises the framework's cancellation.
    wait_worker: Callable[[Any, bool], Awaitable[Any]] | None = None
    #: Whether ``qiotask.to_thread``'s await ends at once when cancelled
    #: (asyncio's ``to_thread`` does), rather than waiting for the worker
    #: (trio's default).
    to_thread_abandons: bool = False


_lock = threading.Lock()
_loaded: dict[str, Adapter] = {}
_problems: dict[str, str] = {}
_errors: dict[str, Exception] = {}  # the exception behind each problem
#: The loaded adapters' detectors in the table's order, the fallback ones
#: apart, for get_context() (every task made without a context asks them):
#: tuples, rebuilt by register(), so that a reader needs no lock and no
#: generator.
detectors: tuple[Callable[[], MainContext | None], ...] = ()
fallback_detectors: tuple[Callable[[], MainContext | None], ...] = ()
#: The loaded async frameworks' adapters, in the table's order (every
#: ``await task`` asks them).
_async: tuple[Adapter, ...] = ()


C = TypeVar("C")


def attach_once(lock: AbstractContextManager[Any], find: Callable[[], C | None], make: Callable[[], C]) -> C:
    """What every adapter's ``attach`` does: the context ``find()`` returns
    (None: there is none, or it is over), else a new one from ``make()``
    -- made once, whichever thread asks first, because the lookup is made
    again under ``lock`` before making one.  ``make`` records what it made
    where ``find`` looks, before the lock is released."""
    found = find()
    if found is None:
        with lock:
            found = find()
            if found is None:
                found = make()
    return found


def register(name: str, adapter: Adapter) -> None:
    """Called once by ``qiotask.loops.<name>`` when it is imported."""
    if name not in _SPECS:
        raise ValueError(f"no adapter named {name!r} in qiotask._adapters.ADAPTERS")
    global detectors, fallback_detectors, _async
    with _lock:
        # The tuples first, the record last: whoever finds the adapter
        # loaded finds its detector in the tuples too.
        every = {**_loaded, name: adapter}
        found = [(spec_, every[spec_.name]) for spec_ in ADAPTERS if spec_.name in every]
        detectors = tuple(a.detect for spec_, a in found if a.detect is not None and not spec_.fallback)
        fallback_detectors = tuple(a.detect for spec_, a in found if a.detect is not None and spec_.fallback)
        _async = tuple(a for _spec, a in found if a.running is not None)
        _loaded[name] = adapter


def loaded() -> Iterator[tuple[AdapterSpec, Adapter]]:
    """The adapters loaded, in the table's order."""
    for spec_ in ADAPTERS:
        adapter = _loaded.get(spec_.name)
        if adapter is not None:
            yield spec_, adapter


def spec(name: str) -> AdapterSpec:
    return _SPECS[name]


def load(name: str) -> bool:
    """Import the adapter ``name`` once; True if this call loaded it.

    Any exception from the import is recorded as its problem and logged
    once (an ImportError -- the toolkit is not installed -- is only
    recorded); the adapter then counts as absent.  KeyboardInterrupt and
    SystemExit go through.
    """
    if name in _loaded or name in _problems:
        return False
    module = _SPECS[name].module
    try:
        importlib.import_module(module)
    except Exception as exc:
        with _lock:
            first = name not in _problems
            _problems[name] = f"{type(exc).__name__}: {exc}"
            _errors[name] = exc
        trigger = _SPECS[name].trigger
        if first and (not isinstance(exc, ImportError) or (trigger is not None and trigger in sys.modules)):
            # Not "not installed": the toolkit is there (in use, even), and
            # this adapter cannot work with it.
            logger.warning("qiotask: the %s adapter cannot load here: %r", module, exc, exc_info=exc)
        return False
    return name in _loaded


def problem(name: str) -> str | None:
    """Why the adapter ``name`` could not load in this process, or None if
    it loaded or was never tried."""
    return _problems.get(name)


def error(name: str) -> Exception | None:
    """The exception behind :func:`problem`, to chain to."""
    return _errors.get(name)


def load_triggered() -> bool:
    """Load every adapter whose toolkit is in use (imported) but whose
    adapter is not loaded yet; True if one was loaded now."""
    loaded_now = False
    for spec_ in ADAPTERS:
        if spec_.trigger is not None and spec_.name not in _loaded and spec_.trigger in sys.modules:
            loaded_now = load(spec_.name) or loaded_now
    return loaded_now


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the cancellation of any async framework loaded --
    or an exception group of nothing else: a trio nursery cancelled with
    its children raises a group of their ``Cancelled`` (``strict_exception_
    groups``).  A group is known by its ``exceptions`` (the built-in one,
    or the ``exceptiongroup`` backport's on Python 3.10)."""
    if any(adapter.is_cancellation is not None and adapter.is_cancellation(exc) for adapter in _async):
        return True
    leaves = getattr(exc, "exceptions", None)
    return (
        isinstance(leaves, tuple)
        and bool(leaves)
        and all(isinstance(leaf, BaseException) and is_cancellation(leaf) for leaf in leaves)
    )


def no_framework(where: str, instead: str) -> RuntimeError:
    """The error of an await made where no async framework qiotask knows
    runs (``async_adapter()`` is None): it names what runs the awaiting
    coroutine, if that can be seen, the frameworks that can await, why one
    of them could not load, and ``instead``, what to do.  Asked on the
    error path only; called by the function that raises it."""
    seen = ""
    for detect in (*detectors, *fallback_detectors):
        context = detect()
        if context is not None:  # a loop that runs no coroutines (Qt, GLib, Tk) dispatches here
            seen = f" (this thread runs {context.name}, whose loop does not run coroutines)"
            break
    else:
        driver = _coroutine_driver(sys._getframe(2))
        if driver is not None:
            seen = f" (the awaiting coroutine is run by {driver})"
    problems = "".join(
        f"; the {name} adapter could not load: {reason}"
        for name in ("asyncio", "trio")
        if (reason := problem(name)) is not None
    )
    return RuntimeError(
        f"{where}: no asyncio event loop or trio run is running in this thread{seen}; qiotask can await "
        f"under asyncio (uvloop included) and trio{problems}.  {instead}"
    )


_COROUTINE_FLAGS = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _coroutine_driver(frame: types.FrameType | None) -> str | None:
    """The function that runs the coroutine ``frame`` belongs to: the first
    frame up the calling thread's own stack that is neither a coroutine's
    nor qiotask's, as ``module.function``."""
    while frame is not None:
        code = frame.f_code
        module = frame.f_globals.get("__name__") or "?"
        if not code.co_flags & _COROUTINE_FLAGS and module != "qiotask" and not module.startswith("qiotask."):
            return f"{module}.{getattr(code, 'co_qualname', code.co_name)}"
        frame = frame.f_back
    return None


def async_adapter() -> Adapter | None:
    """The adapter of the async framework running in this thread (an
    asyncio loop, a trio run), or None."""
    for adapter in _async:
        if adapter.running():  # type: ignore[misc]  # (a callable field, not a method)
            return adapter
    if load_triggered():
        return async_adapter()
    return None
