"""The GLib adapter: tasks that complete on a ``GLib.MainContext``.

Quickstart, with GLib's global default context run by ``GLib.MainLoop``::

    from gi.repository import GLib
    import qiotask

    loop = GLib.MainLoop()
    ctx = qiotask.attach(GLib.MainContext.default())

    def done(source, err, opaque):
        print("result:", task.get_result())   # on the thread running loop.run()
        loop.quit()

    task = qiotask.Task(None, done, context=ctx)
    task.run_in_thread(lambda task, opaque: sum(range(10**6)))
    loop.run()

Inside a GLib callback ``context=`` may be left out (see "Which context a
task belongs to" below).

Any ``GLib.MainContext`` works: the global default or one of your own, such
as a thread-default one in a worker thread.  ``qiotask.attach()`` also takes a
``GLib.MainLoop`` and then uses its context.  It returns the same
:class:`GLibContext` each time for the same underlying context, whichever
Python wrapper of it it is given (``GLib.MainContext.default()`` hands out a
new wrapper on every call), for as long as the attachment is in use: that of
GLib's global default context lives as long as the process, that of any
other context as long as a task, a pending qiotask source or your own
reference holds it (and it holds a reference on the GLib context).  Keep a
reference to an attachment you configure (``exception_handler``): once
unused, a later ``attach()`` makes a new one.

Which thread runs what:

- The context's thread is the thread that runs the GLib context:
  ``GLib.MainLoop(glib_ctx).run()``, ``glib_ctx.iteration()`` or
  ``qiotask.MainLoop(ctx).run()``.  Before a loop runs it, it is the thread
  that attached, except for GLib's global default context, whose thread is
  then the main thread (GLib's convention).  While another thread runs the
  GLib context, that recorded thread does not count as the owner
  (:meth:`GLibContext.is_owner` asks GLib), so a completion made there is
  handed over to the loop rather than run on the wrong thread.
- Completions, ``call_soon`` and qiotask's ``idle_add`` reach the loop through
  one GLib idle source per batch (attaching a source is thread-safe in GLib
  and wakes the context), at ``GLib.PRIORITY_DEFAULT`` as GTask's
  completions do.  Timers are ``GLib.timeout_source_new`` sources and fd
  watches GLib's fd sources (``GLibUnix.fd_source_new``, or
  ``GLib.unix_fd_source_new`` before GLib 2.80), attached to that same context
  at the same priority.  So a qiotask ``idle_add`` source that keeps
  returning True runs at default priority, unlike one of ``GLib.idle_add``
  (``PRIORITY_DEFAULT_IDLE``), and holds off GLib sources of lower priority,
  GTK's redraws among them, while it repeats.
- ``qiotask.MainLoop(ctx).run()`` runs a ``GLib.MainLoop`` on the context and
  pushes it as the thread's GLib thread-default context while it runs (as
  GLib expects of a thread that runs a context); it raises ``TaskStateError``
  if another thread runs the GLib context.

Which context a task belongs to: once this module is imported (attaching any
GLib object imports it), ``qiotask.get_context()`` finds the GLib context
being dispatched on the calling thread.  Inside a GLib callback
(``GLib.main_depth() > 0``) it is the thread-default GLib context (GTask's
rule: the global default unless one was pushed with
``push_thread_default()``), if this thread owns it, and unless another loop
that qiotask knows runs on top of GLib here (Qt's event dispatcher on Linux
iterates GLib's global default context, and so does PyGObject's asyncio
loop): that loop's context is the answer then.  Outside GLib callbacks
(before ``loop.run()``, say) nothing is detected: pass ``context=``, or make
the attachment qiotask's thread default with ``ctx.push_thread_default()``.
The check costs one call into GLib, about 0.2 µs, per ``get_context()`` made
outside GLib callbacks (every ``Task()`` created without ``context=`` outside
asyncio), and nothing in a program that never imports this module.

Shutting down: GLib contexts do not close by themselves, and quitting a
``GLib.MainLoop`` leaves its context usable.  When qiotask is done with a
context, call :meth:`GLibContext.close` (from any thread): it removes the
sources qiotask attached to the GLib context (GLib's own sources stay), makes
a ``qiotask.MainLoop`` running it return, and fails the completions still
queued, and every later one, with ``ContextClosedError``; their destroy
notifiers still run.  A later ``qiotask.attach()`` of the same GLib context
makes a new, open attachment.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import gi  # type: ignore[import-untyped]
from gi.repository import GLib  # type: ignore[import-untyped]

from .._adapters import Adapter, attach_once, register
from .._context import MainContext
from .._driver import NO_TIMER, ContextPort, LoopDriver, TimerHandle
from .._errors import ContextClosedError, TaskStateError

__all__ = ["GLibContext", "GLibDriver"]


def _fd_source_new() -> Callable[[int, Any], Any]:
    """GLib's "watch this fd" source constructor, wherever this GLib has it.

    GLib 2.80 moved the Unix-only API into its own namespace, GLibUnix
    (``GLibUnix.fd_source_new``), and kept ``GLib.unix_fd_source_new`` as a
    deprecated alias, which GLib 2.90 dropped.  Older GLibs (2.74 on Debian
    12) have no GLibUnix typelib at all.
    """
    try:
        gi.require_version("GLibUnix", "2.0")
        from gi.repository import GLibUnix
    except (ImportError, ValueError):  # no such namespace: GLib < 2.80
        return GLib.unix_fd_source_new  # type: ignore[no-any-return]
    return GLibUnix.fd_source_new  # type: ignore[no-any-return]


# Bound once: they run on every wake-up, timer or get_context().
_idle_source_new = GLib.idle_source_new
_timeout_source_new = GLib.timeout_source_new
_unix_fd_source_new = _fd_source_new()
_main_depth = GLib.main_depth
_get_thread_default = GLib.MainContext.get_thread_default
_default_glib_context = GLib.MainContext.default
_PRIORITY = GLib.PRIORITY_DEFAULT

#: timeout_source_new() takes a guint of milliseconds: about 49.7 days.
_MAX_MS = 2**32 - 1

_READ = GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR
_WRITE = GLib.IOCondition.OUT | GLib.IOCondition.ERR
_NO_CONDITION = GLib.IOCondition(0)


def _key(glib_context: Any) -> int:
    # PyGObject hashes a boxed value by its C pointer, so the key is the same
    # for every wrapper of one GMainContext (PyGObject's own asyncio support
    # compares contexts this way).  The pointer cannot be reused while an
    # entry for it is alive: the GLibContext holds a reference on it.
    return hash(glib_context)


# The global default GMainContext is never freed: its attachment is kept
# for the life of the process.  Other attachments are kept by their users.
_DEFAULT_KEY = _key(_default_glib_context())
_attached: weakref.WeakValueDictionary[int, GLibContext] = weakref.WeakValueDictionary()
_default_attachment: GLibContext | None = None
# Guards _attached and _default_attachment, so that two threads attaching
# one GLib context at once get one GLibContext.  Re-entrant: _attach() holds
# it while GLibContext() registers itself.
_attach_lock = threading.RLock()


class _Timer:
    """The handle of a ``call_later`` timer: a one-shot GLib timeout source."""

    __slots__ = ("_driver", "_fn", "_source")

    def __init__(self, driver: GLibDriver, fn: Callable[[], None], source: Any) -> None:
        self._driver = driver
        self._fn = fn
        self._source = source

    def _fire(self, _context: Any = None) -> bool:
        driver = self._driver
        with driver._sources_lock:
            driver._timers.discard(self)
        try:
            self._fn()
        except BaseException as exc:
            driver._escaped(exc)
        return False  # GLib.SOURCE_REMOVE: one shot

    def cancel(self) -> None:
        driver = self._driver
        with driver._sources_lock:
            driver._timers.discard(self)
        self._source.destroy()  # harmless if it fired or was destroyed already


def _confirm_owner_of(glib_context: Any) -> Callable[[], bool]:
    """The driver's ``confirm_owner``: asked by ``MainContext.is_owner()``
    when the calling thread is the recorded one (see ``MainContext.thread``).

    It is still the owner unless another thread runs the GLib context now:
    GLib is asked, so that a loop run by a thread that has not yet
    dispatched a completion is not mistaken.  (A closure over GLib's bound
    methods rather than a method of the driver: kept on the driver, a bound
    method of its own would make every driver a reference cycle.)
    """
    # Bound once: is_owner() asks them on every complete().
    g_is_owner = glib_context.is_owner
    g_acquire = glib_context.acquire
    g_release = glib_context.release

    def confirm_owner() -> bool:
        if g_is_owner():
            return True  # running it here: the common case in callbacks
        if g_acquire():
            # Nobody runs it: the recorded thread is still its thread.
            g_release()
            return True
        return False

    return confirm_owner


class GLibDriver(LoopDriver):
    """The loop side of a GLib context (see ``qiotask._driver``): the GLib
    sources qiotask attaches to ``glib_context``.

    Args:
        port: the context's port.
        glib_context: the ``GLib.MainContext``.

    Each GLib source the driver attaches holds ``port.keepsake()`` as its
    user data for as long as it is pending: an attachment lives while a
    pending qiotask source holds it (see the module docstring), and the port
    holds the context only weakly.
    """

    def __init__(self, port: ContextPort, glib_context: Any) -> None:
        super().__init__(port)
        self.glib_context = glib_context
        # Bound once: _detect() asks it on every get_context() in a callback.
        self._g_is_owner = glib_context.is_owner
        self.confirm_owner = _confirm_owner_of(glib_context)
        if _key(glib_context) == _DEFAULT_KEY and not glib_context.is_owner():
            # GLib's global default context belongs to the main thread until
            # a loop runs it elsewhere.
            port.runs_on(threading.main_thread())
        # _sources_lock guards _wake_source, _timers, _fd_sources and _loops
        # against close() from another thread, and close() marks the context
        # closed while holding it, so a source is never attached after
        # close() collected the sources to destroy; everything else here is
        # touched on the context thread only.
        self._sources_lock = threading.Lock()
        self._wake_source: Any = None
        self._timers: set[_Timer] = set()
        self._fd_sources: dict[int, Any] = {}
        self._loops: list[Any] = []
        # What escaped a callback (KeyboardInterrupt, SystemExit) while run()
        # ran: it quits the loop and is raised by run().
        self._escaped_exc: BaseException | None = None

    def wake(self) -> None:
        source = _idle_source_new()
        source.set_priority(_PRIORITY)
        # The user data keeps the context alive while the source is pending
        # (see __init__).  (PyGObject before 3.51 passes the callback a None
        # for user data it was not given, later releases nothing: hence the
        # callbacks' defaults.)
        source.set_callback(self._on_wakeup, self.port.keepsake())
        with self._sources_lock:
            if self.port.closed:
                raise ContextClosedError(f"{self.port.name} is closed")
            self._wake_source = source
            # Thread-safe in GLib, and wakes the context's poll.
            source.attach(self.glib_context)

    def _on_wakeup(self, _context: Any = None) -> bool:
        # No lock: the next wake-up is sent only once dispatch() began, after
        # this; close() destroying a spent source is harmless.
        self._wake_source = None
        try:
            self.port.dispatch()
        except BaseException as exc:
            self._escaped(exc)
        return False  # GLib.SOURCE_REMOVE: the next batch brings its own

    def _escaped(self, exc: BaseException) -> None:
        # Only KeyboardInterrupt and the like get out of dispatch() and the
        # sources.  PyGObject would print one escaping a callback and go on
        # looping; under qiotask.MainLoop it stops the loop instead, as it
        # stops an asyncio loop.  Under a GLib.MainLoop of the application,
        # it goes to PyGObject.
        with self._sources_lock:
            loop = self._loops[-1] if self._loops else None
        if loop is None:
            raise exc
        if self._escaped_exc is None:
            self._escaped_exc = exc
        loop.quit()

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        # Rounded up: a timer never fires early.
        ms = min(max(0, math.ceil(delay * 1000)), _MAX_MS)
        source = _timeout_source_new(ms)
        timer = _Timer(self, fn, source)
        source.set_callback(timer._fire, self.port.keepsake())
        with self._sources_lock:
            if self.port.closed:
                return NO_TIMER
            self._timers.add(timer)
            source.attach(self.glib_context)
        return timer

    def set_fd_interest(self, fd: int, read: bool, write: bool, old: tuple[bool, bool] | None) -> None:
        # A unix fd source watches a fixed condition: replace it when the
        # interest changes (rare: only when the union of watches changes).
        condition = _NO_CONDITION
        if read:
            condition |= _READ
        if write:
            condition |= _WRITE
        source = _unix_fd_source_new(fd, condition) if condition else None
        if source is not None:
            source.set_callback(self._on_fd, (fd, self.port.keepsake()))
        with self._sources_lock:
            replaced = self._fd_sources.pop(fd, None)
            if source is not None and not self.port.closed:
                self._fd_sources[fd] = source
                source.attach(self.glib_context)
        if replaced is not None:
            replaced.destroy()

    def _on_fd(self, data: tuple[int, object]) -> bool:
        # GLib does not tell this callback what is ready: fd_ready() polls.
        try:
            self.port.fd_ready(data[0])
        except BaseException as exc:
            self._escaped(exc)
        return True  # GLib.SOURCE_CONTINUE; interest changes replace the source

    def run(self) -> None:
        if not self.glib_context.acquire():
            raise TaskStateError(f"{self.port.name}: another thread runs this GLib context")
        try:
            loop = GLib.MainLoop.new(self.glib_context, False)
            # close() quits the loops it finds; one that closes between this
            # check and GLib's run() starting is quit by the guard, which runs
            # first thing in the loop.
            guard = _idle_source_new()
            guard.set_priority(GLib.PRIORITY_HIGH)
            guard.set_callback(self._quit_if_closed, loop)
            with self._sources_lock:
                if self.port.closed:
                    raise ContextClosedError(f"{self.port.name} is closed")
                self._loops.append(loop)
            guard.attach(self.glib_context)
            self.glib_context.push_thread_default()
            try:
                loop.run()
            finally:
                self.glib_context.pop_thread_default()
                guard.destroy()
                with self._sources_lock:
                    self._loops.remove(loop)
                escaped, self._escaped_exc = self._escaped_exc, None
            if escaped is not None:
                raise escaped
        finally:
            self.glib_context.release()

    def _quit_if_closed(self, loop: Any) -> bool:
        if self.port.closed:
            loop.quit()
        return False

    def stop(self) -> None:
        # The innermost run: MainLoop.quit() comes from a callback of it.
        with self._sources_lock:
            loop = self._loops[-1] if self._loops else None
        if loop is not None:
            loop.quit()

    def close(self) -> None:
        # The context is marked closed under _sources_lock (see __init__);
        # what was queued fails after it, in the calling thread.
        with self._sources_lock:
            queued = self.port.shut()  # closed from here on
            sources = [*self._fd_sources.values(), *(timer._source for timer in self._timers)]
            if self._wake_source is not None:
                sources.append(self._wake_source)
            self._wake_source = None
            self._fd_sources.clear()
            self._timers.clear()
            loops = list(self._loops)
        for source in sources:
            source.destroy()
        for loop in loops:
            loop.quit()  # thread-safe in GLib
        if queued is not None:
            self.port.fail(queued)


class GLibContext(MainContext):
    """The qiotask context of a ``GLib.MainContext``.

    Made by ``qiotask.attach(glib_context)``, which returns the same one each
    time for the same GLib context; construct it directly only for a context
    not yet attached.  Its loop side is a :class:`GLibDriver`.

    Args:
        glib_context: the ``GLib.MainContext``, for example
            ``GLib.MainContext.default()`` or one pushed as thread-default.
        name: a name for logs and errors.

    Raises:
        TypeError: ``glib_context`` is not a ``GLib.MainContext``.
        ValueError: the GLib context is attached already (use
            ``qiotask.attach()``).
    """

    _driver: GLibDriver

    def __init__(self, glib_context: Any, *, name: str | None = None) -> None:
        if not isinstance(glib_context, GLib.MainContext):
            raise TypeError(f"GLibContext() needs a GLib.MainContext, not {type(glib_context).__name__}")
        key = _key(glib_context)
        is_default = key == _DEFAULT_KEY
        super().__init__(
            name=name or ("GLib default context" if is_default else f"GLib context {key:#x}"),
            driver=lambda port: GLibDriver(port, glib_context),
        )
        #: The ``GLib.MainContext`` (one wrapper of it; there may be others).
        self.glib_context = glib_context
        self._key = key
        global _default_attachment
        with _attach_lock:
            if _attached_to(key) is not None:
                raise ValueError(f"{glib_context!r} is attached already: use qiotask.attach()")
            if is_default:
                _default_attachment = self
            else:
                _attached[key] = self

    def close(self) -> None:
        """Detach qiotask from the GLib context; safe from any thread, and
        more than once.

        Removes the sources qiotask attached (wake-ups, timers, fd watches;
        GLib's own sources stay), makes a ``qiotask.MainLoop`` running this
        context return, and fails the completions still queued with
        ``ContextClosedError``, in the calling thread; later completions fail
        the same way, in the thread that completes them.  A later
        ``qiotask.attach()`` of the GLib context makes a new context.
        """
        global _default_attachment
        try:
            super().close()  # the driver's: closed from its first step
        finally:
            # Last: _attached_to() passes a closed context over already, and
            # an attachment made meanwhile (by a destroy notifier that close()
            # ran) keeps its own entry.
            with _attach_lock:
                if _default_attachment is self:
                    _default_attachment = None
                elif _attached.get(self._key) is self:
                    del _attached[self._key]


def _attached_to(key: int) -> GLibContext | None:
    ctx = _default_attachment if key == _DEFAULT_KEY else _attached.get(key)
    return None if ctx is None or ctx.closed else ctx


def _attach(obj: Any) -> MainContext:
    glib_context = obj.get_context() if isinstance(obj, GLib.MainLoop) else obj
    key = _key(glib_context)
    # GLibContext(glib_context) records itself where _attached_to looks.
    return attach_once(_attach_lock, lambda: _attached_to(key), lambda: GLibContext(glib_context))


def _after_fork_in_child() -> None:
    # Locks held by threads that do not exist in the child would never be
    # released there (the base class resets its own the same way).
    global _attach_lock
    _attach_lock = threading.RLock()
    for ctx in [*_attached.values(), _default_attachment]:
        if ctx is not None:
            ctx._driver._sources_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _detect() -> MainContext | None:
    # Inside a GLib callback on this thread, the task belongs to the context
    # being dispatched: the thread-default one (GTask's rule), if this thread
    # owns it.
    if not _main_depth():
        return None
    # GLib may be what another loop runs on here (Qt's event dispatcher on
    # Linux, PyGObject's asyncio event loop): this detector is registered as
    # a fallback, asked only after theirs found nothing.
    glib_context = _get_thread_default()
    if glib_context is None:
        # The global default: its attachment answers without a new wrapper.
        ctx = _default_attachment
        if ctx is not None and not ctx.closed:
            return ctx if ctx._driver._g_is_owner() else None
        glib_context = _default_glib_context()
    if not glib_context.is_owner():
        return None
    return _attach(glib_context)


# Detected after the loops that may run on top of GLib (Qt): its row in
# _adapters.ADAPTERS says fallback.
register(
    "glib",
    Adapter(accepts=lambda obj: isinstance(obj, (GLib.MainContext, GLib.MainLoop)), attach=_attach, detect=_detect),
)
