"""A context's queue: enqueue or fail closed, one wake-up per batch, close.

This is the batching dispatcher of DESIGN §5 and the one owner of a
context's "is it closed?" (DESIGN §6).  Any thread posts; the context thread
dispatches; whoever learns that the loop is gone closes.

- ``post(item)``: one hold of the lock decides all of "is the context
  closed?  then the item fails here; else enqueue it; was a dispatch already
  scheduled?".  The post that finds none scheduled sends the one wake-up of
  the batch -- after the lock is released (the wake-up may block on a pipe
  or take a toolkit's lock), as trio's ``_entry_queue.py`` writes its wake-up
  byte after its lock.
- ``dispatch()``: on the context thread; counts the batch under the lock,
  runs the items counted, then, under the lock again, makes sure what came
  meanwhile has a wake-up on its way -- sent from the loop's own thread,
  where it is cheap, for loops that cannot nest (see :meth:`dispatch`).
- ``close()``: marks the context closed and swaps the queue out under the
  same lock, then fails what it held with ``item._context_closed(context)``
  in the calling thread.  From then on every post fails its item at once.
  Adapters report "the loop is gone" through this one call; nothing else
  records it.  A wake-up that raises (other than an interrupt) is the same
  news: the loop cannot be reached, so the post that sent it closes.

An item is run exactly once or failed exactly once: each is taken from the
queue by exactly one ``popleft``.

Guarantees / assumes: the batch is popped outside the lock, one
``deque.popleft`` per item, while posts append and a ``close()`` may take the
rest.  This relies on ``deque.append`` and ``deque.popleft`` being atomic,
which CPython documents ("thread-safe, memory efficient appends and pops
from either side"), with the GIL and on the free-threaded build, where each
deque operation holds the deque's own lock.  So each item goes to exactly one
taker.  Every other field is read and written under ``_lock`` only, except
``closed``, a flag that only ever goes from False to True (a stale False
only sends the reader to the locked step, which sees the truth), and
``len()`` of the queue (Tk's polling tick, a context's ``__del__``): a hint
that a dispatch, or a close, then settles under the lock.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from . import _points
from ._errors import ContextClosedError
from ._hold import hold

if TYPE_CHECKING:
    from ._context import MainContext

__all__ = ["Dispatchable", "Dispatcher"]

logger = logging.getLogger("qiotask")
_get_ident = threading.get_ident


class Dispatchable(Protocol):
    """What the queue holds: a task, or a call."""

    def _dispatch(self) -> None: ...

    def _context_closed(self, context: MainContext) -> None: ...


class Dispatcher:
    """The queue of one context.

    Args:
        context: the context; its ``_wakeup()`` makes the loop call
            :meth:`dispatch` soon (raising ``ContextClosedError`` if the loop
            is gone).
    """

    __slots__ = ("_context", "_lock", "_queue", "_scheduled", "closed", "probe")

    def __init__(self, context: MainContext) -> None:
        # Weak: the context holds its dispatcher (and its bound post()), so a
        # strong reference back would make every context a reference cycle,
        # freed (with its loop's fds) only by the cyclic GC.
        self._context = weakref.ref(context)
        # _lock guards closed, _scheduled and which deque _queue is.
        self._lock = hold(threading.Lock())
        self._queue: deque[Dispatchable] = deque()
        self._scheduled = False  # a wake-up was sent and its dispatch has not begun
        #: Whether :meth:`close` was called (once True, always True).
        self.closed = False
        #: For a loop that can go away without a word (asyncio drops a closed
        #: loop's callbacks): a cheap function saying whether it did, asked
        #: by a post that finds a wake-up already on its way.  None for loops
        #: whose driver reports the loss (``ContextPort.loop_gone``).
        self.probe: Callable[[], bool] | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def post(self, item: Dispatchable) -> None:
        """From any thread: run ``item._dispatch()`` on the context thread,
        or, if the context is closed, ``item._context_closed(context)`` here."""
        if _points.hook is not None:
            _points.hook("context.post", self._context())
        # "with", not acquire(), and "+=", not append(): a call returning
        # inside the lock may hand the GIL over there, and this lock is
        # wanted by every poster and the loop (a convoy); neither is a call.
        with self._lock:
            if self.closed:
                wake = None
            else:
                self._queue += (item,)
                wake = not self._scheduled
                self._scheduled = True
        if wake:
            self._wake()
        elif wake is None:
            item._context_closed(self._context())  # type: ignore[arg-type]
        elif self.probe is not None and self.probe():
            # A wake-up is on its way, unless the loop closed after it was
            # sent without running it (asyncio drops pending callbacks).
            self.close()

    def _wake(self) -> None:
        context = self._context()
        assert context is not None  # its caller holds it
        if _points.hook is not None:
            _points.hook("context.wakeup", context)
        try:
            context._wakeup()
        except ContextClosedError:
            self.close()
        except Exception as exc:
            # Not sent, and nothing else will send it: what waits in the
            # queue (this item, and those posted since, which count on this
            # wake-up) would wait for ever.  A loop that cannot be woken is
            # gone, as far as they can tell: close, and fail them here.
            context.report_exception(f"the wake-up of {context.name} failed; the context is closed", exc)
            self.close()
        except BaseException:
            # Not sent (an interrupt): let the next post try again.
            with self._lock:
                self._scheduled = False
            raise

    def dispatch(self) -> None:
        """On the context thread: run the batch queued now.

        For a loop that cannot run a nested loop inside a callback (asyncio,
        trio: ``context._loop_nests()`` is False), "scheduled" stays set
        while the batch runs, so items posted meanwhile send no wake-up: the
        batch's end looks at the queue again, under the lock, and if it
        holds more sends the wake-up itself, from the loop's thread, where
        it costs no pipe write.  A loop that can nest (Qt, GLib, Tk: a modal
        dialog inside ``func``) must hear of such items while the batch is
        still running, so there "scheduled" is cleared when the batch
        starts.  Either way the next batch waits for the next loop iteration,
        so a busy producer cannot starve the loop's other sources.

        An Exception from an item goes to the context's exception handler;
        a KeyboardInterrupt or SystemExit goes through, leaving the rest of
        the batch queued and a wake-up on its way.
        """
        context = self._context()
        assert context is not None  # its caller holds it
        if _get_ident() != context._owner[0]:
            context._set_owner(threading.current_thread())  # the loop runs here now
        if _points.hook is not None:
            _points.hook("context.dispatch", context)
        nests = context._loop_nests()
        with self._lock:
            if nests:
                self._scheduled = False
            queue = self._queue
            count = len(queue)
        popleft = queue.popleft
        try:
            for _ in range(count):
                try:
                    item = popleft()
                except IndexError:  # a close() (or a nested dispatch) took the rest
                    break
                try:
                    item._dispatch()
                except Exception as exc:
                    context.report_exception(f"exception in a callback dispatched on {context.name}", exc)
        finally:
            self._batch_done(nests)

    def _batch_done(self, nests: bool) -> None:
        """The end of a batch: make sure what is still queued gets a wake-up."""
        with self._lock:
            if self.closed or not self._queue:
                wake = False
                if not nests:
                    self._scheduled = False
            elif nests:
                wake = not self._scheduled  # a post during the batch woke the loop already
                self._scheduled = True
            else:
                wake = True  # "scheduled" was kept for this
        if wake:
            self._wake()

    def close(self, context: MainContext | None = None) -> bool:
        """Close for good: fail what is queued here, and every later post.

        ``context`` is the context, for a caller whose weak reference to it
        may be cleared already (its ``__del__``, run by the cyclic GC).

        Returns:
            True for the call that closed it; False if it was closed before.
        """
        if _points.hook is not None:
            _points.hook("context.close", context or self._context())
        items = self.shut()
        if items is None:
            return False
        self.fail(items, context)
        return True

    def shut(self) -> deque[Dispatchable] | None:
        """The locked half of :meth:`close`: mark closed and take the queue
        (None if closed before).  For adapters that must mark the loop gone
        under a lock of their own; they then :meth:`fail` what it returned."""
        with self._lock:
            if self.closed:
                return None
            self.closed = True
            items, self._queue = self._queue, deque()
            return items

    def forget(self) -> deque[Dispatchable]:
        """In a forked child, for a context of the parent's: closed; what it
        held is returned, neither run nor failed (it is the parent's to run;
        a destroy notifier run here as well would run twice).  The caller
        must not free it there and then: see ``_context._after_fork_in_child``."""
        with self._lock:
            self.closed = True
            self._scheduled = False
            items, self._queue = self._queue, deque()
        return items

    def fail(self, items: deque[Dispatchable], context: MainContext | None = None) -> None:
        """Fail each item in this thread (items a dispatch already took are
        its own).  A KeyboardInterrupt or SystemExit from one is re-raised
        once the rest have failed."""
        if context is None:
            context = self._context()
            assert context is not None  # its caller holds it
        pending: BaseException | None = None
        while True:
            try:
                item = items.popleft()
            except IndexError:
                break
            try:
                try:
                    item._context_closed(context)
                except Exception as exc:
                    context.report_exception(f"error while failing {item!r} after its context closed", exc)
            except BaseException as exc:
                if pending is None:
                    pending = exc
                else:
                    logger.error("%r raised after %r while failing queued items; the first is raised", exc, pending)
        if pending is not None:
            raise pending
