"""The Qt adapter (PySide6): tasks whose completion runs on a Qt application's thread.

Quickstart::

    import qiotask
    from PySide6.QtWidgets import QApplication, QLabel

    app = QApplication([])
    label = QLabel("looking up...")
    ctx = qiotask.attach(app)            # the same context every time

    def done(source, err, opaque):       # on the GUI thread: touch widgets freely
        source.setText(str(err) if err else task.get_result())

    task = qiotask.Task(label, done, context=ctx)
    task.run_in_thread(lambda task, opaque: slow_lookup())   # on a pool thread
    label.show()
    app.exec()                           # or: qiotask.MainLoop(ctx).run()

``pip install 'qiotask[qt]'`` installs PySide6-Essentials, capped below 6.12:
on Python 3.11, 6.12.0 miscounts references to None and True (in
``Signal.emit()`` and elsewhere) until the interpreter aborts; importing this
module with PySide6 >= 6.12 on Python < 3.12 warns.  A ``QCoreApplication``
needs no display; a ``QGuiApplication`` or ``QApplication`` without one needs
``QT_QPA_PLATFORM=offscreen``.

Which thread runs what:

- The context's thread is the application's thread (``app.thread()``), in
  practice the main thread.  ``func``, done-callbacks, destroy notifiers and
  the functions of ``timeout_add``/``idle_add``/``io_add_watch`` run there,
  from inside ``app.exec()`` (or a nested Qt event loop: a modal dialog's
  ``exec()`` delivers them too).
- Workers run on qiotask's pool threads, never on Qt's ``QThreadPool``.
- Any thread may complete a task, add or remove a source.  Other threads
  reach the loop through one queued slot call per batch of completions.
- While ``app.exec()`` runs, ``Task(...)`` made on the application's thread
  without ``context=`` belongs to ``attach(app)`` (unless a thread-default
  context was pushed or an asyncio loop runs there); ``get_context()`` loads
  this module by itself once ``PySide6.QtCore`` is imported.

Sources: ``timeout_add`` uses a single-shot precise ``QTimer`` (never early),
``io_add_watch`` a ``QSocketNotifier`` per fd and direction.  Remove an fd's
watches before closing the fd, as with GLib.

Running the loop: ``qiotask.MainLoop(ctx).run()`` is ``app.exec()`` (a
``QEventLoop`` when a Qt loop already runs on the thread, so that it nests)
and must be called on the application's thread; ``MainLoop.quit()`` ends it
with ``app.exit(0)``, not ``app.quit()``, which on a ``QGuiApplication`` would
also try to close every window.  As with any ``app.exec()``, the application
emits ``aboutToQuit`` each time it returns, and closing the last window of a
``QApplication`` ends it.

Errors: an exception from a callback goes to the context's exception handler
(logged) and the loop goes on.  A ``KeyboardInterrupt`` or ``SystemExit``
ends the innermost ``MainLoop.run()``, which raises it; under a bare
``app.exec()`` PySide6 prints it, as it does for any slot.

Contexts of their own: ``qiotask.attach(app)`` returns the application's
shared context.  ``QtContext(app)`` makes another one on the same thread, with
a receiver ``QObject`` of its own (a child of ``app``); ``close()`` deletes
that receiver and closes only this context, not the application -- useful
for a component, or a test, that must be able to go away while the
application stays.

Clean shutdown: a context is closed when its application is destroyed
(``app.shutdown()``, or at interpreter exit) or when ``close()`` is called.
From then on nothing runs on it: completions queued or arriving later finish
with ``ContextClosedError`` -- ``func`` is not called, destroy notifiers still
run (in the thread that closed the context, or that completed the task) and
a warning names each task.  What such a task held (its source, callbacks,
opaque) is freed on the application's thread while the application lives,
so that a widget is never deleted in a worker.  Before destroying the
application, let running workers finish (``qiotask.shutdown(timeout)``) and
run the loop once more so that their completions are delivered rather than
failed.
"""

from __future__ import annotations

import math
import sys
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import PySide6
import shiboken6
from PySide6.QtCore import (
    QCoreApplication,
    QEventLoop,
    QMetaObject,
    QObject,
    QSocketNotifier,
    Qt,
    QThread,
    QTimer,
    Slot,
)

from .._adapters import Adapter, attach_once, register
from .._context import MainContext
from .._dispatch import Dispatchable
from .._driver import NO_TIMER, ContextPort, Graves, LoopDriver, TimerHandle
from .._errors import ContextClosedError, TaskStateError

__all__ = ["QtContext", "QtDriver"]

if tuple(PySide6.__version_info__[:2]) >= (6, 12) and sys.version_info < (3, 12):
    # Measured with 6.12.0 on Python 3.11: Signal.emit(), postEvent(),
    # QTimer.singleShot() and several void methods each drop a reference to
    # True or None that they did not take; once the count reaches zero the
    # interpreter aborts (bool_dealloc / none_dealloc).  Python 3.12's
    # immortal objects hide it.
    warnings.warn(
        f"PySide6 {PySide6.__version__} on Python {sys.version_info[0]}.{sys.version_info[1]} corrupts the "
        "reference counts of None and True and aborts long-running programs; qiotask[qt] needs "
        "PySide6-Essentials<6.12 on this Python",
        RuntimeWarning,
        stacklevel=2,
    )

_READ = QSocketNotifier.Type.Read
_WRITE = QSocketNotifier.Type.Write
_QUEUED = Qt.ConnectionType.QueuedConnection
_invoke = QMetaObject.invokeMethod


class _Receiver(QObject):
    """The driver's foothold in the application's thread.

    Other threads wake the loop by invoking the slot ``_on_wake`` by name
    with a queued connection: Qt turns each call into an event for the
    receiver's thread.  The context does so once per batch of completions,
    never once per completion.

    Why not a signal: on PySide6 6.12.0, every ``Signal.emit()`` drops a
    reference to ``True`` (and ``postEvent``/``QTimer.singleShot`` one to
    ``None``) that it never took, so a long-running program aborts in
    ``bool_dealloc`` sooner or later, batched or not.  ``invokeMethod`` by
    name is balanced on 6.11 and 6.12; it costs about 2 us a call against
    1 us for an emit (measured here), once per batch.

    It holds its driver weakly (and the driver its context weakly, through
    the port): the application owns the receiver, and must not keep alive a
    context that nobody uses.
    """

    def __init__(self, driver: QtDriver) -> None:
        super().__init__()
        self.setObjectName(f"qiotask receiver of {driver.port.name}")
        self._driver = weakref.ref(driver)

    @Slot()
    def _on_wake(self) -> None:
        driver = self._driver()
        if driver is not None:
            driver._on_wake()

    @Slot()
    def _adopt(self) -> None:
        # Made in another thread: become the application's child here, in
        # its thread (a QObject's list of children is not thread-safe).
        driver = self._driver()
        if driver is not None and not driver.port.closed:
            self.setParent(driver.app)


class QtDriver(LoopDriver):
    """The loop side of a Qt context (see ``qiotask._driver``): a receiver
    ``QObject`` on the application's thread, its timers and notifiers."""

    def __init__(self, port: ContextPort, app: QCoreApplication) -> None:
        super().__init__(port)
        #: The application.
        self.app = app
        # _wake_lock orders the wake-up against the receiver's deletion:
        # wake() posts to the receiver only while holding it and seeing the
        # context open, and whatever deletes the receiver (close(), the
        # application's destructor) first closes the context under it.
        # Posting to a QObject that another thread is deleting is undefined
        # behaviour in Qt.
        self._wake_lock = threading.Lock()
        # How many of this driver's Qt callbacks are running on the
        # context thread: while one is, the QObject whose signal or slot it
        # is must not be deleted at once, so deletions are deferred
        # (deleteLater).
        self._busy = 0
        # Context thread only: pending timers, fd -> [read, write] notifiers,
        # and the Qt loops run() is running (None for app.exec()).
        self._timers: set[_QtTimer] = set()
        self._notifiers: dict[int, list[QSocketNotifier | None]] = {}
        self._loops: list[QEventLoop | None] = []

        # A KeyboardInterrupt or SystemExit raised by a callback, on its way
        # out of the innermost run() (Qt would only print it).
        self._interrupt: BaseException | None = None

        # The application's QThread: an application cannot change threads.
        self._qthread = app_thread = app.thread()
        receiver = _Receiver(self)
        self._receiver = receiver
        if QThread.currentThread() is app_thread:
            receiver.setParent(app)  # dies with the application
        else:
            # Made off the application's thread: move the receiver there and
            # let it join the application from there.  The context's thread
            # is taken to be the main thread until the first dispatch tells
            # (port.dispatch() adopts the thread it runs on).
            receiver.moveToThread(app_thread)
            _invoke(receiver, "_adopt", _QUEUED)
            port.runs_on(threading.main_thread())
        # Closed when the application is destroyed (see _AppRecord), or the
        # receiver by anyone else.  Direct: the object is being destroyed in
        # its own thread; a queued call would never arrive.  Never
        # disconnected: the receiver's connections die with it.
        ref = weakref.ref(self)
        receiver.destroyed.connect(lambda *_: _lost_ref(ref), Qt.ConnectionType.DirectConnection)
        _register(self)

    # -- the driver protocol ---------------------------------------------------

    def wake(self) -> None:
        with self._wake_lock:
            if self.port.closed:
                raise ContextClosedError(f"{self.port.name}: the Qt application or this context's receiver is gone")
            _invoke(self._receiver, "_on_wake", _QUEUED)

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        if self.port.closed:
            return NO_TIMER  # like a source of a destroyed GLib context: never runs
        timer = _QtTimer(self, delay, fn)
        self._timers.add(timer)
        return timer

    def set_fd_interest(self, fd: int, read: bool, write: bool, old: tuple[bool, bool] | None) -> None:
        if (not read and not write) or self.port.closed:
            for notifier in self._notifiers.pop(fd, ()):
                if notifier is not None:
                    self._discard(notifier)
            return
        notifiers = self._notifiers.get(fd)
        if notifiers is None:
            notifiers = self._notifiers[fd] = [None, None]
        for index, (wanted, kind) in enumerate(((read, _READ), (write, _WRITE))):
            notifier = notifiers[index]
            if notifier is not None:
                # Kept while the other direction is watched: enabling costs
                # less than a new notifier (hang-up-only watches toggle this).
                if notifier.isEnabled() != wanted:
                    notifier.setEnabled(wanted)
            elif wanted:
                notifier = QSocketNotifier(fd, kind, self._receiver)
                notifier.activated.connect(self._fd_callback(fd))
                notifiers[index] = notifier

    def run(self) -> None:
        if self.port.closed:
            raise ContextClosedError(f"{self.port.name}: the Qt application or this context's receiver is gone")
        app = self.app
        thread = self._qthread
        if QThread.currentThread() is not thread:
            raise TaskStateError(f"{self.port.name}: a Qt application's loop runs on the application's thread only")
        if thread.loopLevel() == 0:
            self._loops.append(None)
            try:
                app.exec()
            finally:
                self._loops.pop()
        else:
            # app.exec() refuses to nest ("the event loop is already running").
            loop = QEventLoop()
            self._loops.append(loop)
            try:
                loop.exec()
            finally:
                self._loops.pop()
                shiboken6.delete(loop)
        interrupt, self._interrupt = self._interrupt, None
        if interrupt is not None:
            raise interrupt

    def stop(self) -> None:
        if not self._loops:
            return
        loop = self._loops[-1]
        if loop is None:
            self.app.exit(0)
        else:
            loop.exit(0)

    # -- closing ------------------------------------------------------------

    def close(self) -> None:
        """``QtContext.close()``: close the context, delete the receiver
        (with its timers and notifiers), fail what was queued here."""
        queued = self._lose_loop()
        if queued is not None:
            self._release_qt_objects()
            self.port.fail(queued)

    def lost(self) -> None:
        """The application or the receiver is being destroyed: close the
        context (the receiver's children go with it)."""
        queued = self._lose_loop()
        if queued is not None:
            self._timers.clear()
            self._notifiers.clear()
            self.port.fail(queued)

    def _lose_loop(self) -> deque[Dispatchable] | None:
        """Close the context (under _wake_lock, see __init__) and forget it;
        what was queued, to fail, for the call that did it, else None."""
        with self._wake_lock:
            queued = self.port.shut()
        if queued is None:
            return None
        _forget(self)
        return queued

    def adopt(self, refs: tuple[Any, ...]) -> None:
        # A task completed in another thread after this context closed: what
        # it held may include QObjects, to be freed on the application's
        # thread.  Once the application is gone, there is no such thread.
        with _registry_lock:
            record = _records.get(id(self.app))
            if record is not None:
                record.bury(refs)

    def _release_qt_objects(self) -> None:
        # Timers and notifiers are the receiver's children: they die with it.
        self._timers.clear()
        self._notifiers.clear()
        if shiboken6.isValid(self._receiver):
            self._discard(self._receiver)

    def release_receiver(self) -> None:
        """The context was collected while open (only the application held
        the receiver, and the receiver holds the driver weakly): let the
        receiver go too.  deleteLater is safe from whatever thread the
        garbage collector runs in."""
        try:
            if shiboken6.isValid(self._receiver):
                self._receiver.deleteLater()
        except Exception:  # interpreter shutdown: Qt may be gone already
            pass

    # -- Qt callbacks, on the context thread ----------------------------------

    def _on_wake(self) -> None:
        if self.port.closed:
            return  # a wake-up queued before close(): the queue was failed then
        self._busy += 1
        try:
            self.port.dispatch()  # reports exceptions; lets KeyboardInterrupt and SystemExit out
        except BaseException as exc:
            self._escape(exc)
        finally:
            self._busy -= 1

    def _fd_callback(self, fd: int) -> Callable[..., None]:
        # The notifier's connection holds this closure, so the driver and
        # the context live as long as the watch (port.keepsake(); the port
        # itself holds the context weakly), as a GLib source keeps its
        # context: the watch keeps firing with nobody else holding either.
        port = self.port

        def activated(*_: Any, _keepsake: object = port.keepsake()) -> None:
            if port.closed:
                return
            self._busy += 1
            try:
                port.fd_ready(fd)
            except Exception as exc:
                port.report_exception(f"exception in an fd watch of {port.name}", exc)
            except BaseException as exc:
                self._escape(exc)
            finally:
                self._busy -= 1

        return activated

    def _escape(self, exc: BaseException) -> None:
        """A callback raised KeyboardInterrupt or SystemExit.

        PySide6 prints an exception that leaves a slot and carries on, so
        such an exception would be lost: instead it ends the innermost
        ``MainLoop.run()``, which raises it, as an asyncio loop's
        ``run_forever()`` would.  Under a bare ``app.exec()`` it is Qt's.
        """
        if not self._loops:
            raise exc
        if self._interrupt is None:
            self._interrupt = exc
        self.stop()

    def _discard(self, obj: QObject) -> None:
        """Stop and delete a timer, notifier or the receiver (context thread,
        or any thread for the receiver)."""
        if isinstance(obj, QTimer):
            obj.stop()
        elif isinstance(obj, QSocketNotifier):
            obj.setEnabled(False)
        if self._busy or not self.port.is_owner():
            # It may be the object whose signal is being delivered now, or
            # live in another thread: the loop deletes it when it can.
            obj.deleteLater()
        else:
            shiboken6.delete(obj)


class QtContext(MainContext):
    """The context of a PySide6 ``QCoreApplication`` (or ``QGuiApplication``,
    ``QApplication``): completions run on the application's thread.

    ``qiotask.attach(app)`` returns the application's shared context;
    calling ``QtContext(app)`` makes a separate one, with its own receiver
    object, that :meth:`close` can close while the application lives on.
    Any thread may create it.

    Args:
        app: the application; its thread becomes the context's thread.
        name: a name for logs and errors.

    Raises:
        TypeError: ``app`` is not a ``QCoreApplication``.
        ContextClosedError: the application was already destroyed.
    """

    _driver: QtDriver

    def __init__(self, app: QCoreApplication, *, name: str | None = None) -> None:
        if not isinstance(app, QCoreApplication):
            raise TypeError(f"QtContext: app must be a QCoreApplication, not {type(app).__name__}")
        if not shiboken6.isValid(app):
            raise ContextClosedError("QtContext: the Qt application was already destroyed")
        super().__init__(name=name or f"Qt {type(app).__name__} {id(app):#x}", driver=lambda port: QtDriver(port, app))
        #: The application.
        self.app = app

    def close(self) -> None:
        """Close this context: delete its receiver, stop its timers and fd
        watches; the application lives on.  Any thread may call it, more
        than once.

        Completions queued now or arriving later finish with
        ``ContextClosedError`` (``func`` is not called; destroy notifiers
        run in the calling thread, or in the completing thread).
        ``attach(app)`` afterwards returns a new context.
        """
        super().close()

    def __del__(self) -> None:
        super().__del__()
        # Collected while open: the driver lets its receiver go.
        dispatcher = getattr(self, "_dispatcher", None)
        driver = getattr(self, "_driver", None)
        if dispatcher is None or dispatcher.closed or driver is None:
            return
        driver.release_receiver()


def _lost_ref(ref: weakref.ref[QtDriver]) -> None:
    driver = ref()
    if driver is not None:
        driver.lost()


class _QtTimer:
    """A pending ``call_later``: a single-shot QTimer, child of the receiver."""

    __slots__ = ("_driver", "_fn", "_timer")

    def __init__(self, driver: QtDriver, delay: float, fn: Callable[[], None]) -> None:
        self._driver = driver
        self._fn = fn
        timer = QTimer(driver._receiver)
        timer.setSingleShot(True)
        # Precise: a coarse timer may fire up to 5 % early, GLib's never do.
        timer.setTimerType(Qt.TimerType.PreciseTimer)
        timer.timeout.connect(self._fire)
        # Rounded up to whole milliseconds, Qt's unit, so never early either.
        timer.start(max(0, math.ceil(delay * 1000.0)))
        self._timer: QTimer | None = timer

    def _fire(self) -> None:
        timer, self._timer = self._timer, None
        driver = self._driver
        port = driver.port
        if timer is None or port.closed:
            return
        driver._timers.discard(self)
        driver._busy += 1
        try:
            driver._discard(timer)
            self._fn()
        except Exception as exc:
            port.report_exception(f"exception in a timer of {port.name}", exc)
        except BaseException as exc:
            driver._escape(exc)
        finally:
            driver._busy -= 1

    def cancel(self) -> None:
        timer, self._timer = self._timer, None
        driver = self._driver
        if timer is None or driver.port.closed:
            return
        driver._timers.discard(self)
        driver._discard(timer)


# -- attach() and get_context() ----------------------------------------------


class _AppRecord(QObject):
    """What qiotask keeps per application, living in the application's thread.

    ``drivers``: the drivers of its open contexts, which the application's
    destroyed() signal closes.  That signal comes before the application
    deletes its children, so they are marked gone while their receivers
    still exist.
    One connection per application, never disconnected:
    ``QObject.disconnect()`` drops a reference to None it does not own, on
    6.11.3 as on 6.12.0.

    ``bury()``: what tasks completed in another thread after their context
    closed still hold (source, callbacks, opaque) is freed here, on the
    application's thread: a QObject made by Python, a widget above all, must
    not be deleted in another thread.
    """

    def __init__(self, app: QCoreApplication) -> None:
        super().__init__()
        self.drivers: weakref.WeakSet[QtDriver] = weakref.WeakSet()
        self._graves = Graves()
        if QThread.currentThread() is not app.thread():
            self.moveToThread(app.thread())

    def bury(self, refs: tuple[Any, ...]) -> None:
        """Any thread, holding _registry_lock (so the application is alive)."""
        if self._graves.bury(refs):
            _invoke(self, "_free", _QUEUED)

    @Slot()
    def _free(self) -> None:
        self._graves.free()  # on the application's thread


# Keyed by id(app): the application's shared context (attach()) and its
# record.  Entries go when the application is destroyed; a context (and its
# driver) holds its application, so an id cannot be reused while it has an
# entry.
# _registry_lock guards both, so that attach() from two threads agrees on
# one context, and so that the application's destruction waits for a
# bury() in progress; reentrant, as attach() makes the context while
# holding it.
_shared: dict[int, QtContext] = {}
_records: dict[int, _AppRecord] = {}
_registry_lock = threading.RLock()


def _register(driver: QtDriver) -> None:
    app = driver.app
    key = id(app)
    with _registry_lock:
        record = _records.get(key)
        if record is None:
            record = _records[key] = _AppRecord(app)
            app.destroyed.connect(lambda *_: _app_destroyed(key), Qt.ConnectionType.DirectConnection)
        record.drivers.add(driver)


def _forget(driver: QtDriver) -> None:
    """A context closed: it is no longer its application's shared context,
    nor one that the application's destruction closes."""
    key = id(driver.app)
    with _registry_lock:
        shared = _shared.get(key)
        if shared is not None and shared._driver is driver:
            del _shared[key]
        record = _records.get(key)
        if record is not None:
            record.drivers.discard(driver)


def _app_destroyed(key: int) -> None:
    with _registry_lock:
        record = _records.pop(key, None)
        _shared.pop(key, None)
    if record is not None:
        for driver in list(record.drivers):
            driver.lost()
        record._free()  # on the application's thread: it is being destroyed here


def _is_qt_object(obj: Any) -> bool:
    return any(cls.__module__.startswith("PySide6.") for cls in type(obj).__mro__)


def _attach_app(obj: Any) -> MainContext:
    if not isinstance(obj, QCoreApplication):
        raise TypeError(
            f"qiotask.attach(): a {type(obj).__name__} is not a Qt application; "
            "attach the QCoreApplication/QApplication (QCoreApplication.instance())"
        )

    def find() -> QtContext | None:
        ctx = _shared.get(id(obj))
        return None if ctx is None or ctx.closed else ctx

    def make() -> QtContext:
        ctx = _shared[id(obj)] = QtContext(obj)
        return ctx

    return attach_once(_registry_lock, find, make)


# Called unbound: looking a method up on a PySide6 QObject is slow (its
# attribute lookup also searches signals and properties), and the detector
# runs whenever a task is made without a context.
_app_instance = QCoreApplication.instance
_app_thread = QCoreApplication.thread
_current_qthread = QThread.currentThread
_loop_level = QThread.loopLevel


def _detect() -> MainContext | None:
    """The application's shared context, when called on its thread while a
    Qt event loop runs there; else None."""
    app = _app_instance()
    if app is None:
        return None
    ctx = _shared.get(id(app))
    if ctx is not None and not ctx.closed:
        if threading.get_ident() != ctx._owner[0] or _loop_level(ctx._driver._qthread) == 0:
            return None
        return ctx
    qthread = _app_thread(app)
    if _loop_level(qthread) == 0 or _current_qthread() is not qthread:
        return None
    return _attach_app(app)


register("qt", Adapter(accepts=_is_qt_object, attach=_attach_app, detect=_detect))
