"""The tkinter adapter: tasks whose completions run on a Tk root's thread.

Quickstart::

    import time
    import tkinter

    import qiotask

    root = tkinter.Tk()
    label = tkinter.Label(root, text="working...")
    label.pack()
    ctx = qiotask.attach(root)          # on the thread that created root

    def slow(task, seconds):            # a pool thread: no tkinter here
        time.sleep(seconds)
        return "done"

    def finished(label, err, opaque):   # the Tk thread: tkinter is safe here
        label["text"] = f"failed: {err}" if err else task.get_result()

    task = qiotask.Task(label, finished, context=ctx)
    task.run_in_thread(slow, 1.0)
    root.mainloop()                     # or qiotask.MainLoop(ctx).run()

``qiotask.attach(root)`` returns the same :class:`TkContext` every time (a
widget attaches to the context of its root).  Once a root is attached, a
task made on its thread without ``context=`` belongs to it
(``qiotask.get_context()`` finds the live root attached last on the calling
thread, unless a thread default was pushed or an asyncio loop runs there), so
a task made in a Tk callback reports back to Tk.

Which thread runs what:

- The context's thread is the thread that created the root; the first
  ``attach`` must run there (``TaskStateError`` otherwise) and so does
  ``mainloop()``.  ``func``, done-callbacks, destroy notifiers and the
  ``timeout_add``/``idle_add``/``io_add_watch`` functions run there, from
  inside ``root.mainloop()`` (or ``update()``, a modal dialog's wait...).
- Other threads never call Tcl, not even ``after`` or ``event_generate``:
  with a threaded Tcl such a call waits for the Tk thread to be in its
  mainloop, and fails after a second when it is not.  A thread hands a batch
  over by writing one byte to a pipe whose read end the Tk thread watches with
  ``createfilehandler``; the Tk thread drains the pipe and schedules the
  batch.  Batches run in turn as an ``after idle`` handler and as an
  ``after 0`` timer event.  Tcl runs idle handlers (where Tk redraws) only
  when no event is pending, so batches that were all events would let a
  flood of completions freeze the window; and ``update_idletasks()``, which
  Tk also runs internally, loops until no idle handler is left, so batches
  that were all idle handlers would never let it return while an
  ``idle_add`` source repeats (both measured with Tcl 8.6.13).  Taking
  turns, neither happens.  Since idle may never come while the program's
  own events follow one another (a 0 ms ``timeout_add`` re-armed from its
  callback), a watchdog timer, armed with an idle batch at most once per
  :data:`IDLE_FALLBACK_MS`, runs a batch still waiting for idle then.  Like any idle
  handler, a batch may run inside a callback that calls
  ``update_idletasks()``.
- Where ``createfilehandler`` does not exist (Windows), other threads set a
  flag that the Tk thread looks at every :data:`POLL_INTERVAL_MS`
  milliseconds, and fd watches are polled with ``select()`` at the same pace.
  ``TkContext(root, polling=True)`` chooses this on any platform.
- Timers are ``root.after``; fd watches are one ``createfilehandler`` per fd
  (Tk allows one, so the watches of an fd share it).  File handlers belong to
  the thread, not to the root: two roots on one thread cannot both watch one
  fd.

Clean shutdown: let your tasks finish, quit the mainloop
(``root.quit()``, or ``MainLoop.quit()``), then ``root.destroy()``.  When the
root is destroyed (by ``destroy()``, or by the window manager's close button)
the context closes: its timers and file handlers go away, its pipe is
closed, and tasks whose completion had not run finish with
``ContextClosedError`` (``func`` is not called, destroy notifiers still run
and a warning names the task), as tasks completed later do.  The context
learns of the destruction from a ``<Destroy>`` binding on a bind tag of its
own, which ``root.bind("<Destroy>", ...)`` does not replace; do not drop it
when setting ``root.bindtags()``.

The context lets go of its root when the root is destroyed, so that tasks
still in flight, which hold the context, do not keep the root alive: drop
your own last reference to a root on the Tk thread (Tcl aborts the process
when an interpreter is deleted from another thread).  A task that finishes
in a worker thread after its root was destroyed may hold widgets (its source,
its callbacks' closures): the context keeps those references and drops them
on the Tk thread, the next time a root is attached there or when the
program exits, never in the worker.  ``root.quit()`` ends
the innermost ``mainloop()`` of any root on the thread (tkinter keeps one
flag for all of them).
"""

from __future__ import annotations

import atexit
import functools
import itertools
import math
import os
import select
import threading
import tkinter
import weakref
from collections.abc import Callable
from typing import Any

from .._adapters import Adapter, attach_once, register
from .._context import MainContext
from .._driver import ContextPort, Graves, LoopDriver, TimerHandle
from .._errors import ContextClosedError, TaskStateError

__all__ = ["POLL_INTERVAL_MS", "TkContext", "TkDriver"]

#: How often, in milliseconds, a polling context (no ``createfilehandler``)
#: looks for work handed over by other threads and for ready fds.  20 ms is
#: what tkinter itself polls at when Tcl has no threads (its busy-wait
#: interval), a delay well under the ~100 ms at which one is noticed, and
#: little more than Windows' default timer tick (15.6 ms), which a shorter
#: interval would round up to anyway.  The cost is the wake-up: measured
#: here, about 1% of one core while the application is idle (2% at 10 ms),
#: most of which a bare Tcl ``after`` loop at the same pace costs too.
POLL_INTERVAL_MS = 20

#: How long, in milliseconds, a batch scheduled for when Tcl is idle waits at
#: most before a timer runs it anyway: idle never comes while events follow
#: one another without end (a 0 ms timer that re-arms itself).  Short enough
#: not to be noticed, long enough that a window that goes idle now and then
#: still redraws before the batch.
IDLE_FALLBACK_MS = 5

# The context of a root lives in the root's __dict__ under this name, so that
# attach() finds it with one lookup (tkinter.Tk.__getattr__ would ask Tcl).
_ATTR = "_qiotask_context"
# The bind tag carrying the <Destroy> binding.  Tags are per interpreter and
# each Tk root has its own interpreter, so one name serves every root.
_BIND_TAG = "qiotask"
_attach_lock = threading.Lock()  # one context per root, when two threads attach at once


class _WakePipe:
    """A non-blocking self-pipe: any thread writes, the Tk thread reads."""

    __slots__ = ("_lock", "closed", "rfd", "wfd")

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)
        # _lock guards closed and the fds: close() must not run between a
        # wake()'s check and its write, or the write could hit an fd number
        # already reused by someone else.
        self._lock = threading.Lock()
        self.closed = False

    def wake(self) -> bool:
        """Write one byte; False if the pipe is closed."""
        with self._lock:
            if self.closed:
                return False
            try:
                os.write(self.wfd, b"\0")
            except BlockingIOError:
                pass  # full: the reader has a wake-up pending anyway
        return True

    def drain(self) -> None:
        try:
            while os.read(self.rfd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            os.close(self.rfd)
            os.close(self.wfd)


class _Timer:
    """A Tcl ``after`` timer; ``cancel()`` is a no-op once it fired or the
    context closed.

    It fires through the driver's one timer command (``createcommand``, as
    the batches do), told its key: not through ``root.after(ms, fn)``,
    whose callback wrapper prints a KeyboardInterrupt and goes on, where it
    must end the loop (and which makes and deletes a Tcl command per timer)."""

    __slots__ = ("_driver", "_fn", "_id", "_key")

    def __init__(self, driver: TkDriver, delay: float, fn: Callable[[], None]) -> None:
        self._driver = driver
        self._fn = fn
        self._id: str | None = None
        self._key = ""
        root = driver.root
        if root is not None and not driver.port.closed:
            # Rounded up: a timer never fires before its delay.
            ms = max(0, math.ceil(round(delay * 1000.0, 6)))
            self._key = key = str(next(driver._timer_keys))
            self._id = root.tk.call("after", ms, driver._fire_cmd, key)
            driver._timers[key] = self

    def _fire(self) -> None:
        self._id = None
        self._driver._timers.pop(self._key, None)
        self._fn()

    def cancel(self) -> None:
        after_id, self._id = self._id, None
        if after_id is None:
            return
        driver = self._driver
        driver._timers.pop(self._key, None)
        root = driver.root
        if root is not None and not driver.port.closed:
            root.tk.call("after", "cancel", after_id)


def _has_filehandler(tk: Any) -> bool:
    """Whether this Tcl interpreter can watch fds (not on Windows)."""
    return hasattr(tk, "createfilehandler")


def _check_tk_thread(root: tkinter.Tk) -> None:
    """Raise unless the calling thread may call this root's Tcl directly.

    A timer handler is created and deleted at once: tkinter checks the
    calling thread for it without waiting for the Tk thread, and nothing
    runs.  (With a Tcl built without threads any thread may call.)
    """
    try:
        root.tk.createtimerhandler(0, _nothing).deletetimerhandler()
    except RuntimeError as exc:
        raise TaskStateError(
            "qiotask.attach(): a tkinter.Tk is attached first on the thread that created it "
            f"(this is {threading.current_thread().name!r})"
        ) from exc


def _nothing() -> None:
    pass


def _tk_alive(root: tkinter.Tk) -> bool:
    """On the Tk thread: whether the root window still exists."""
    try:
        return bool(root.winfo_exists())
    except tkinter.TclError:  # "application has been destroyed"
        return False


class TkDriver(LoopDriver):
    """The loop side of a Tk root's context (see ``qiotask._driver``).

    Made on the Tk thread; :meth:`start` then hooks it into the root.  Tcl
    is called on the Tk thread only: other threads reach it through the wake
    pipe (or, polling, through the context's queue, which the polling tick
    reads).

    Args:
        port: the context's port.
        polling: poll for work from other threads and for ready fds (an
            ``after`` tick) instead of watching the wake pipe and the fds
            with ``createfilehandler``.
    """

    def __init__(self, port: ContextPort, *, polling: bool) -> None:
        super().__init__(port)
        self._tk_ident = threading.get_ident()
        #: Whether this driver polls (see the module docstring).
        self.polling = polling
        # When the root goes, _teardown closes the context (port.shut(),
        # which any thread may read as port.closed).  Everything below is
        # touched on the Tk thread only.
        #
        #: The root while it lives; None before :meth:`start` and once the
        #: root is destroyed.  The root keeps its context (attach() finds it
        #: there) but the driver lets go of the root when it is destroyed:
        #: tasks finishing in worker threads hold the context, and through it
        #: this driver, and the last reference to a Tk root must not go away
        #: outside the Tk thread (Tcl aborts the process when an interpreter
        #: is deleted from another thread).
        self.root: tkinter.Tk | None = None
        self._timers: dict[str, _Timer] = {}  # pending, by key, so that teardown cancels them
        self._timer_keys = itertools.count()
        self._fd_handlers: set[int] = set()  # fds with a createfilehandler
        self._batch_id: str | None = None  # the "after" of the batch scheduled, if any
        self._watchdog_id: str | None = None  # see _on_watchdog
        self._batch_at_idle = True  # how the next batch runs: see _schedule_batch
        self._poll_id: str | None = None  # the pending polling tick
        self._pipe: _WakePipe | None = None
        self._commands: list[str] = []  # Tcl commands to delete at teardown
        self._idle_cmd = self._timer_cmd = self._watchdog_cmd = self._fire_cmd = self._poll_cmd = ""

    def start(self, root: tkinter.Tk) -> bool:
        """On the Tk thread, once: hook into ``root`` (its Tcl commands, the
        wake pipe's file handler or the polling tick, the ``<Destroy>``
        binding).

        Returns:
            False if the root is destroyed already: the context is then
            closed from birth, like its root.
        """
        if not _tk_alive(root):
            # Attached after destroy(): closed from birth, like its root.
            self.port.loop_gone()
            return False
        self.root = root
        tk = root.tk
        # Commands made with createcommand, not root.register: an exception
        # escaping them (KeyboardInterrupt; the dispatcher logs the others)
        # ends mainloop() instead of being printed and swallowed.
        self._idle_cmd = self._command(tk, "idle", self._on_idle_batch)
        self._timer_cmd = self._command(tk, "timer", self._on_timer_batch)
        self._watchdog_cmd = self._command(tk, "watchdog", self._on_watchdog)
        self._fire_cmd = self._command(tk, "fire", self._fire_timer)
        if self.polling:
            self._poll_cmd = self._command(tk, "poll", self._poll_tick)
            self._poll_id = tk.call("after", POLL_INTERVAL_MS, self._poll_cmd)
        else:
            pipe = _WakePipe()
            self._pipe = pipe
            # Closes the fds of a driver that is collected without its root
            # having been destroyed (close() is idempotent).  Tcl holds the
            # driver (its commands and file handler are bound methods of it)
            # until the teardown or the interpreter's end.
            weakref.finalize(self, pipe.close).atexit = False
            tk.createfilehandler(pipe.rfd, tkinter.READABLE, self._on_wake)
        root.bindtags((_BIND_TAG, *root.bindtags()))
        # A plain Tcl command called with the widget's path, not
        # bind_class(..., callback): tkinter wraps such a callback in an
        # object that holds the widget it was bound on -- the root -- and
        # Python 3.10 never frees it, so the root would outlive destroy().
        # The command holds the driver weakly (and the driver holds its
        # context weakly, through the port), so nothing in Tcl keeps the
        # root, the driver or the context alive.  Not among the commands
        # deleted at teardown: it is the one running then.
        destroy_cmd = f"qiotask_destroy_{id(self):x}"
        tk.createcommand(destroy_cmd, functools.partial(_on_destroy, weakref.ref(self)))
        tk.call("bind", _BIND_TAG, "<Destroy>", f"+{destroy_cmd} %W")
        return True

    def _command(self, tk: Any, what: str, fn: Callable[..., None]) -> str:
        name = f"qiotask_{what}_{id(self):x}"
        tk.createcommand(name, fn)
        self._commands.append(name)
        return name

    # -- the driver protocol ------------------------------------------------

    def wake(self) -> None:
        if self.port.closed:
            raise ContextClosedError(f"{self.port.name}: the Tk root is destroyed")
        if threading.get_ident() == self._tk_ident:
            # On the Tk thread Tcl is ours to call: no round trip through
            # the pipe and Tcl's notifier thread.
            self._schedule_batch()
        elif self._pipe is not None:
            if not self._pipe.wake():
                raise ContextClosedError(f"{self.port.name}: the Tk root is destroyed")
        # Polling: nothing to send; the next tick finds the queue non-empty
        # (the context's queue is the one record, read with port.queued()).

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        return _Timer(self, delay, fn)

    def set_fd_interest(self, fd: int, read: bool, write: bool, old: tuple[bool, bool] | None) -> None:
        root = self.root
        if root is None or (self.port.closed and (read or write)):
            # (Closed with the root alive: watches may still go, so that a
            # ready fd nobody watches does not spin the mainloop.)
            return
        if self.polling:
            return  # _poll_fds reads port.fd_interest()
        tk = root.tk
        if old is None or any(old):
            # Replacing a handler in place would leave tkinter's record of the
            # old one behind until the fd is deleted.
            tk.deletefilehandler(fd)
            self._fd_handlers.discard(fd)
        mask = (tkinter.READABLE if read else 0) | (tkinter.WRITABLE if write else 0)
        if mask:
            tk.createfilehandler(fd, mask, self._on_fd)
            self._fd_handlers.add(fd)

    def run(self) -> None:
        if threading.get_ident() != self._tk_ident:
            raise TaskStateError(f"{self.port.name}: a Tk root's mainloop runs on the thread that created it")
        root = self.root
        if root is not None and not self.port.closed and not _tk_alive(root):
            self._teardown()  # destroyed without our binding hearing of it
        if root is None or self.port.closed:
            raise ContextClosedError(f"{self.port.name}: the Tk root is destroyed")
        root.mainloop()

    def stop(self) -> None:
        root = self.root
        if root is not None and not self.port.closed:
            root.quit()

    def adopt(self, refs: tuple[Any, ...]) -> None:
        # A task completed off the Tk thread after the root went: what it
        # held (widgets, closures over them) must not be freed here.
        # Under _graves_lock, so that _bury_the_dead() cannot take the
        # thread's graves between the lookup and the burial.
        with _graves_lock:
            _graves.setdefault(self._tk_ident, Graves()).bury(refs)

    # -- the Tk thread --------------------------------------------------------

    def _schedule_batch(self) -> None:
        # One batch scheduled at a time, alternately at idle and as a timer
        # event: a chain of events keeps Tcl from ever going idle (no
        # redraw), and a chain of idle handlers keeps update_idletasks()
        # from returning (see the module docstring).
        root = self.root
        if self._batch_id is not None or root is None or self.port.closed:
            return
        if self._batch_at_idle:
            self._batch_id = root.tk.call("after", "idle", self._idle_cmd)
            if self._watchdog_id is None:
                self._watchdog_id = root.tk.call("after", IDLE_FALLBACK_MS, self._watchdog_cmd)
        else:
            self._batch_id = root.tk.call("after", 0, self._timer_cmd)

    def _on_idle_batch(self) -> None:
        self._run_batch(next_at_idle=False)

    def _on_timer_batch(self) -> None:
        self._run_batch(next_at_idle=True)

    def _fire_timer(self, key: str) -> None:
        timer = self._timers.get(key)
        if timer is not None:
            timer._fire()

    def _on_watchdog(self) -> None:
        # Idle may never come: a chain of events (a 0 ms timer re-armed from
        # its own handler) keeps Tcl busy.  Armed with an idle batch (unless
        # armed already, so at most once per IDLE_FALLBACK_MS, not per
        # batch), it runs the batch still waiting for idle now, if any.
        self._watchdog_id = None
        root = self.root
        if self._batch_id is not None and self._batch_at_idle and root is not None:
            root.tk.call("after", "cancel", self._batch_id)
            self._run_batch(next_at_idle=True)

    def _run_batch(self, next_at_idle: bool) -> None:
        self._batch_id = None
        self._batch_at_idle = next_at_idle
        if not self.port.closed:
            self.port.dispatch()

    def _on_wake(self, fd: int, mask: int) -> None:
        # Called by tkinter's file handler: an exception here would end
        # mainloop(), and neither step raises one.
        if self._pipe is not None:
            self._pipe.drain()
        self._schedule_batch()

    def _on_fd(self, fd: int, mask: int) -> None:
        try:
            self.port.fd_ready(fd)
        except Exception as exc:  # would end mainloop(): see _on_wake
            self.port.report_exception(f"exception in an fd watch of {self.port.name}", exc)

    def _poll_tick(self) -> None:
        self._poll_id = None
        try:
            polled = self.port.fd_interest()
            if polled:
                self._poll_fds(polled)
            if self.port.queued():
                self._schedule_batch()
        finally:
            root = self.root
            if root is not None and not self.port.closed:
                self._poll_id = root.tk.call("after", POLL_INTERVAL_MS, self._poll_cmd)

    def _poll_fds(self, polled: dict[int, tuple[bool, bool]]) -> None:
        readers = [fd for fd, (read, _) in polled.items() if read]
        writers = [fd for fd, (_, write) in polled.items() if write]
        ready: list[int]
        try:
            readable, writable, _ = select.select(readers, writers, [], 0)
            ready = [*readable, *writable]
        except (OSError, ValueError):
            # A closed fd among them: let every watch look at its own fd
            # (the context polls it and reports IO_ERR for the bad one).
            ready = list(polled)
        for fd in dict.fromkeys(ready):
            # Asked again for each: a watch that ran may have removed another.
            if not self.port.closed and fd in self.port.fd_interest():
                try:
                    self.port.fd_ready(fd)
                except Exception as exc:
                    self.port.report_exception(f"exception in an fd watch of {self.port.name}", exc)

    def _teardown(self) -> None:
        """The root is going: release what is ours in Tcl, let go of the
        root, and fail what is queued."""
        root = self.root
        if root is None:
            return
        # First: from here on posts fail their items at once, and wake()
        # refuses; what was queued before is failed at the end.
        queued = self.port.shut()
        tk = root.tk
        # The interpreter outlives the root, and its timers and the thread's
        # file handlers would fire in the next mainloop() of any root here.
        for after_id in [timer._id for timer in self._timers.values()] + [
            self._batch_id,
            self._watchdog_id,
            self._poll_id,
        ]:
            if after_id is not None:
                try:
                    tk.call("after", "cancel", after_id)
                except tkinter.TclError:
                    pass
        for timer in self._timers.values():
            timer._id = None
        self._timers.clear()
        self._batch_id = self._watchdog_id = self._poll_id = None
        fds = list(self._fd_handlers)
        if self._pipe is not None:
            fds.append(self._pipe.rfd)
        for fd in fds:
            try:
                tk.deletefilehandler(fd)
            except (tkinter.TclError, ValueError):
                pass
        self._fd_handlers.clear()
        if self._pipe is not None:
            self._pipe.close()
        for name in self._commands:
            try:
                tk.deletecommand(name)
            except tkinter.TclError:
                pass
        self._commands.clear()
        # Watches can no longer fire; their functions may hold widgets, and
        # through them the root.
        self.port.drop_fd_watches()
        self.root = None
        if queued is not None:
            self.port.fail(queued)


def _on_destroy(driver_ref: weakref.ref[TkDriver], widget: str) -> None:
    """Tcl's <Destroy> binding of the root's tag: the root is going."""
    driver = driver_ref()
    if driver is not None and driver.root is not None and widget == str(driver.root):
        driver._teardown()


class TkContext(MainContext):
    """The context of a ``tkinter.Tk`` root; see the module docstring.

    Use ``qiotask.attach(root)``; construct one directly only to choose
    ``polling=True`` (the fallback for Tcl without ``createfilehandler``),
    once per root, before anything attaches it.

    Args:
        root: the root, on the thread that created it.
        name: a name for logs and errors.
        polling: poll for work from other threads (and for ready fds)
            even where ``createfilehandler`` exists; without it, a context
            always polls.

    Raises:
        TaskStateError: called off the root's thread, or the root already
            has a context.
    """

    _driver: TkDriver

    def __init__(self, root: tkinter.Tk, *, name: str | None = None, polling: bool = False) -> None:
        if root.__dict__.get(_ATTR) is not None:
            raise TaskStateError(f"{root!r} already has a qiotask context: use qiotask.attach(root)")
        _check_tk_thread(root)
        polling = polling or not _has_filehandler(root.tk)
        super().__init__(name=name or f"tk root {id(root):#x}", driver=lambda port: TkDriver(port, polling=polling))
        #: Whether the context polls (asked for, or no ``createfilehandler``).
        self.polling = polling
        root.__dict__[_ATTR] = self
        if self._driver.start(root):
            attached = _thread_state.attached
            attached[:] = [ctx for ctx in attached if not ctx.closed]
            attached.append(self)
            _bury_the_dead()

    @property
    def root(self) -> tkinter.Tk:
        """The root.

        Raises:
            ContextClosedError: the root is destroyed.
        """
        root = self._driver.root
        if root is None:
            raise ContextClosedError(f"{self.name}: the Tk root is destroyed")
        return root


# References adopted from tasks that finished off their Tk thread, by thread
# ident; dropped on that thread (_bury_the_dead) when a root is attached
# there again, or at exit.  _graves_lock guards the dict.
_graves: dict[int, Graves] = {}
_graves_lock = threading.Lock()


def _bury_the_dead() -> None:
    with _graves_lock:
        graves = _graves.pop(threading.get_ident(), None)
    if graves is not None:
        graves.free()  # the last references go here, on their own Tk thread


atexit.register(_bury_the_dead)


class _ThreadState(threading.local):
    def __init__(self) -> None:
        # The contexts of the roots attached on this thread, the last one
        # last: when it is destroyed, the one before is this thread's again.
        # Closed ones are dropped as they are met (the driver let go of
        # their roots already).
        self.attached: list[TkContext] = []


_thread_state = _ThreadState()


def _detect() -> MainContext | None:
    attached = _thread_state.attached
    while attached:
        ctx = attached[-1]
        if not ctx.closed:
            return ctx
        attached.pop()
    return None


def _attach_root(obj: Any) -> MainContext:
    root: tkinter.Tk = obj if isinstance(obj, tkinter.Tk) else obj._root()
    # TkContext(root) records itself in the root's __dict__.
    ctx = attach_once(_attach_lock, lambda: root.__dict__.get(_ATTR), lambda: TkContext(root))
    assert isinstance(ctx, TkContext)
    return ctx


register("tk", Adapter(accepts=lambda obj: isinstance(obj, tkinter.Misc), attach=_attach_root, detect=_detect))
