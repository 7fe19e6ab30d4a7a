"""NetListener: listen on every address a name stands for and hand each
new client to a callback on the loop thread.

Accepting is driven by fd watches on the listener's context: no thread per
client, no thread per listening socket.  Opening (DNS and bind) can run in a
worker with ``open_async``.
"""

from __future__ import annotations

import errno
import itertools
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .._checks import LONGEST_WAIT, check_callable, check_duration, wait_timeout
from .._context import IO_IN, IOCondition, MainContext, Source, get_context
from .._task import DestroyNotify, Task, TaskFunc
from ._address import InetSocketAddress, SocketAddress
from ._channel import (
    OpenRace,
    SocketChannel,
    _check_num,
    _default_resolver,
    _failed,
    as_context,
    check_listening,
    listen_socket,
    unix_file_of,
)
from ._resolver import DNSResolver, as_address

__all__ = ["NetListener"]

ClientFunc = Callable[["NetListener", SocketChannel, Any], Any]

#: Connections accepted per wake-up of one listening socket: a burst of
#: clients is taken in one loop iteration (asyncio takes up to its backlog),
#: yet a flood cannot keep the loop from everything else.
ACCEPT_BATCH = 128
#: After accept() fails for want of resources (EMFILE, ENOBUFS, ...), stop
#: accepting on that socket this long, as asyncio does, instead of spinning.
ACCEPT_RETRY_DELAY = 1.0
#: Tries at finding one free port for every address of a name (port 0).
_PORT_TRIES = 10
_names = itertools.count(1)


class NetListener:
    """A set of listening sockets with one client callback.

    Args:
        context: where clients are accepted and ``fn`` runs (unless
            :meth:`set_client_func` names another); None means the context
            of the thread that first needs one.
        name: a name for logs and ``repr``.
        resolver: the :class:`DNSResolver` used by ``open``.

    Thread rules: ``open_sync`` and ``wait_client`` block (use a worker, or
    ``open_async``); the other methods may be called from any thread.  The
    client callback runs on the context thread.
    """

    def __init__(self, *, context: Any = None, name: str | None = None, resolver: DNSResolver | None = None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"NetListener: name must be a str or None, not {type(name).__name__}")
        if resolver is not None and not isinstance(resolver, DNSResolver):
            raise TypeError(f"NetListener: resolver must be a DNSResolver, not {type(resolver).__name__}")
        self.name = name if name is not None else f"listener-{next(_names)}"
        self._context = as_context(context)
        self._resolver = resolver
        # Guards the fields below: set_client_func, add and disconnect may
        # come from any thread while the context thread accepts.
        self._lock = threading.Lock()
        self._channels: list[SocketChannel] = []
        self._watches: dict[SocketChannel, Source] = {}
        self._func: ClientFunc | None = None
        self._opaque: Any = None
        self._destroy: DestroyNotify | None = None
        self._func_context: MainContext | None = None
        self._waiting = 0  # wait_client() calls in progress: watches paused
        self._wakers: list[socket.socket] = []  # one per wait_client() call
        self._opening: set[Task[NetListener]] = set()  # open_async tasks not done yet

    def __repr__(self) -> str:
        return f"<NetListener {self.name!r} {[str(a) for a in self.addresses]}>"

    @property
    def context(self) -> MainContext:
        """Where clients are accepted by default (fixed when first asked)."""
        context = self._context
        if context is None:
            context = self._context = get_context()
        return context

    # -- opening --------------------------------------------------------------

    def open_sync(self, addr: SocketAddress | str, num: int = 1) -> None:
        """Resolve ``addr`` and listen on every address it stands for, with
        a backlog of ``num`` each.  Blocks: call it from a worker, or use
        :meth:`open_async`.

        With port 0, every address gets the same (free) port, so a client
        that tries the name's addresses in turn reaches this listener on all
        of them.  IPv6 sockets are IPv6-only, so ``::`` and ``0.0.0.0`` can
        both be listened on.  Succeeds if at least one address could be
        listened on, as QEMU's listener does.

        Raises:
            ValueError, TypeError: bad address or ``num``.
            socket.gaierror: the name does not resolve.
            OSError: no address could be listened on (the last error).
        """
        self._open(addr, num, "open_sync", [])

    def _open(self, addr: SocketAddress | str, num: int, where: str, opened: list[SocketChannel]) -> None:
        # open_sync, noting in `opened` the channels it adds as it adds them.
        num = _check_num(num, where)
        address = as_address(addr, where)
        resolver = self._resolver if self._resolver is not None else _default_resolver
        targets = resolver.lookup_sync(address, passive=True)
        fresh_port = isinstance(address, InetSocketAddress) and address.port == 0 and len(targets) > 1
        for _attempt in range(_PORT_TRIES):
            socks, errors = self._listen_all(targets, num, fresh_port)
            if socks or not fresh_port or not any(e.errno == errno.EADDRINUSE for e in errors):
                break
        if not socks:
            raise errors[-1]
        for sock, target in socks:
            channel = SocketChannel(sock, context=self._context, resolver=resolver)
            channel._unix_file = unix_file_of(target)
            opened.append(channel)
            self.add(channel)

    def _listen_all(
        self, targets: list[SocketAddress], num: int, fresh_port: bool
    ) -> tuple[list[tuple[socket.socket, SocketAddress]], list[OSError]]:
        # (An fd: address that is not listening: listen_socket() closes the
        # duplicate it made and raises, and it is the only target.)
        socks: list[tuple[socket.socket, SocketAddress]] = []
        errors: list[OSError] = []
        port = 0
        for target in targets:
            if fresh_port and port and isinstance(target, InetSocketAddress):
                target = InetSocketAddress(target.host, port)
            try:
                sock = listen_socket(target, num, v6only=True)
            except OSError as exc:
                errors.append(_failed(exc, f"cannot listen on {target}"))
                if fresh_port and port and exc.errno == errno.EADDRINUSE:
                    # The port picked for the first address is taken on
                    # this one: start again with another.
                    for made, _target in socks:
                        made.close()
                    return [], errors
                continue
            if fresh_port and not port:
                port = sock.getsockname()[1]
            socks.append((sock, target))
        return socks, errors

    def open_async(
        self,
        addr: SocketAddress | str,
        num: int = 1,
        func: TaskFunc | None = None,
        opaque: Any = None,
        destroy: DestroyNotify | None = None,
        *,
        context: Any = None,
    ) -> Task[NetListener]:
        """:meth:`open_sync` on a pool thread, DNS included.

        Returns the :class:`qiotask.Task` (awaitable); its source and result
        are this listener.  ``func(listener, err, opaque)`` runs on the
        context thread; ``destroy(opaque)`` after it.

        Raises:
            ValueError, TypeError: bad address or ``num`` (before any task).
        """
        num = _check_num(num, "open_async")
        address = as_address(addr, "open_async")
        if context is None:
            context = self.context
        task: Task[NetListener] = Task(self, func, opaque, destroy, context=context, name=f"{self.name} open")
        # A cancel completes the task at once; sockets the worker opens
        # after that, or just before the cancel won, are closed again.
        race = OpenRace()
        opened: list[SocketChannel] = []

        def undo() -> None:
            with self._lock:
                self._channels = [c for c in self._channels if c not in opened]
                for channel in opened:
                    self._watches.pop(channel, None)
            for channel in opened:
                channel.close()

        def worker(_task: Task[NetListener], _opaque: Any) -> NetListener:
            try:
                self._open(address, num, "open_async", opened)
            except BaseException:
                undo()
                raise
            race.opened(undo, f"{self.name} open")
            return self

        task.on_cancel(race.cancelled)
        with self._lock:
            self._opening.add(task)
        task.add_done_callback(race.settled)
        task.add_done_callback(self._opened)
        task.run_in_thread(worker, abandon_on_cancel=True)
        return task

    def _opened(self, task: Task[NetListener]) -> None:
        with self._lock:
            self._opening.discard(task)

    def add(self, channel: SocketChannel) -> None:
        """Listen on ``channel`` too (a listening :class:`SocketChannel`);
        the listener owns it from now on.

        Raises:
            TypeError: ``channel`` is not a SocketChannel.
            ValueError: ``channel`` is not open, or not listening.
        """
        if not isinstance(channel, SocketChannel):
            raise TypeError(f"add: channel must be a SocketChannel, not {type(channel).__name__}")
        sock = channel._open_sock("add")
        check_listening(sock, f"add: {channel!r} is not listening (listen_sync first)")
        with self._lock:
            if channel in self._channels:
                raise ValueError(f"add: {channel!r} is listened on already")
            self._channels.append(channel)
            if self._func is not None and not self._waiting:
                self._watch(channel)

    # -- clients --------------------------------------------------------------

    def set_client_func(
        self,
        fn: ClientFunc | None,
        opaque: Any = None,
        destroy: DestroyNotify | None = None,
        *,
        context: Any = None,
    ) -> None:
        """Call ``fn(listener, channel, opaque)`` on the context thread for
        each new client, until replaced; ``None`` stops accepting (clients
        wait in the backlog).

        The channel is the client's :class:`SocketChannel`, non-blocking,
        with ``context`` as its context; ``fn`` owns it.  If ``fn`` raises,
        the exception is logged and the client's channel closed (as
        asyncio's ``start_server`` does).  The ``destroy(opaque)`` of the
        function replaced runs on its context thread: at once if this is
        that thread, else queued there (so never while that function still
        runs); that of the last one in :meth:`close`, likewise.

        Raises:
            TypeError: ``fn`` or ``destroy`` is not callable.
        """
        check_callable(fn, "set_client_func", "fn", optional=True)
        check_callable(destroy, "set_client_func", "destroy", optional=True)
        made = as_context(context)
        if made is None and fn is not None:
            made = self.context
        with self._lock:
            old = (self._destroy, self._opaque, self._func_context)
            self._func, self._opaque, self._destroy, self._func_context = fn, opaque, destroy, made
            self._unwatch_all()
            if fn is not None and not self._waiting:
                for channel in self._channels:
                    self._watch(channel)
        self._destroy_later(*old)

    @staticmethod
    def _destroy_later(destroy: DestroyNotify | None, opaque: Any, context: MainContext | None) -> None:
        # On the old function's context thread, queued behind a client call
        # that may be running there now: destroy never pulls opaque from
        # under its function.
        if destroy is not None:
            if context is None:
                destroy(opaque)
            else:
                context._call_here_or_soon(destroy, opaque)

    def _watch(self, channel: SocketChannel) -> None:
        # With self._lock held.
        context = self._func_context if self._func_context is not None else self.context
        # Through the channel, so that closing it waits for the watch to go.
        self._watches[channel] = channel.add_watch(IO_IN, self._on_ready, context=context)

    def _unwatch_all(self) -> None:
        # With self._lock held.
        watches, self._watches = self._watches, {}
        for watch in watches.values():
            watch.remove()

    def _on_ready(self, channel: SocketChannel, _condition: IOCondition) -> bool:
        # On the context thread: take every waiting client, up to a batch.
        with self._lock:
            fn, opaque = self._func, self._opaque
            context = self._func_context
            watch = self._watches.get(channel)
        if fn is None or context is None or watch is None:
            return False
        for _ in range(ACCEPT_BATCH):
            if watch.removed:
                # Replaced, stopped or paused meanwhile (maybe by fn itself,
                # whose destroy may have run): leave the rest to the backlog.
                return False
            try:
                client = channel.accept()
            except ValueError:
                return False  # the listening channel was closed
            except OSError as exc:
                context.report_exception(f"{self.name}: accept failed; retrying in {ACCEPT_RETRY_DELAY} s", exc)
                self._pause(channel)
                return False
            if client is None:
                break
            client._context = context
            try:
                fn(self, client, opaque)
            except Exception as exc:
                context.report_exception(f"{self.name}: client function {fn!r} raised; client closed", exc)
                client.close()
        return True

    def _pause(self, channel: SocketChannel) -> None:
        # On the context thread, after accept() failed (EMFILE and the like).
        with self._lock:
            watch = self._watches.pop(channel, None)
        if watch is not None:
            watch.remove()

        def resume() -> bool:
            with self._lock:
                if (
                    self._func is not None
                    and not self._waiting
                    and channel in self._channels
                    and channel not in self._watches
                ):
                    self._watch(channel)
            return False

        if self._func_context is not None:
            self._func_context.timeout_add(ACCEPT_RETRY_DELAY * 1000, resume)

    def wait_client(self, timeout: float | None = None) -> SocketChannel:
        """Block until a client connects, and return its channel; the client
        function (if any) is not called for it.  The listener's watches are
        paused meanwhile, as QEMU's ``qio_net_listener_wait_client`` does.

        Raises:
            ValueError: the listener has no listening socket, or was
                disconnected (from another thread) while waiting.
            TimeoutError: ``timeout`` seconds passed first (None or
                ``math.inf``: wait as long as it takes).
            TypeError: ``timeout`` is not a number of seconds.
        """
        seconds = wait_timeout(check_duration(timeout, "wait_client", optional=True))
        deadline = None if seconds is None else time.monotonic() + seconds
        gone = f"wait_client: {self.name} was disconnected while waiting"
        # disconnect() writes to `wake`: a selector does not notice that a
        # socket it waits on was closed.
        waiting, wake = socket.socketpair()
        with self._lock:
            channels = list(self._channels)
            if not channels:
                waiting.close()
                wake.close()
                raise ValueError(f"wait_client: {self.name} is not listening (open or add first)")
            self._waiting += 1
            self._wakers.append(wake)
            self._unwatch_all()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(waiting, selectors.EVENT_READ, None)
                for channel in channels:
                    selector.register(channel.fileno(), selectors.EVENT_READ, channel)
                while True:
                    # A day at most per wait: select() refuses what its C int
                    # of milliseconds cannot hold; the loop waits again.
                    left = (
                        LONGEST_WAIT if deadline is None else min(LONGEST_WAIT, max(0.0, deadline - time.monotonic()))
                    )
                    ready = selector.select(left)
                    if not ready and deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError(f"wait_client: no client within {timeout} s")
                    for key, _events in ready:
                        if key.data is None:
                            raise ValueError(gone)
                        try:
                            client = key.data.accept()
                        except ValueError:
                            raise ValueError(gone) from None
                        if client is not None:
                            return client  # type: ignore[no-any-return]
        finally:
            with self._lock:
                self._wakers.remove(wake)
                self._waiting -= 1
                if self._func is not None and not self._waiting:
                    for channel in self._channels:
                        if channel not in self._watches:
                            self._watch(channel)
            waiting.close()
            wake.close()

    # -- state and shutdown ---------------------------------------------------

    @property
    def channels(self) -> list[SocketChannel]:
        """The listening channels (a copy)."""
        with self._lock:
            return list(self._channels)

    @property
    def addresses(self) -> list[SocketAddress]:
        """Where the listener listens, one address per listening socket."""
        found = []
        for channel in self.channels:
            try:
                address = channel.local_address
            except (ValueError, OSError):
                continue
            if address is not None:
                found.append(address)
        return found

    @property
    def connected(self) -> bool:
        """Whether the listener has listening sockets (QEMU's name)."""
        with self._lock:
            return bool(self._channels)

    def disconnect(self) -> None:
        """Stop accepting and close every listening socket, cancelling an
        :meth:`open_async` in progress; the client function stays set (for
        sockets added later).  Clients already accepted are not touched.
        From any thread, more than once."""
        with self._lock:
            channels, self._channels = self._channels, []
            # Not removed here: channel.close() removes them, and off the
            # context thread closes the socket only once the loop forgot it.
            self._watches = {}
            wakers = list(self._wakers)
            opening = list(self._opening)
        for task in opening:
            task.cancel()  # its sockets are closed, never listened on
        for channel in channels:
            channel.close()
        for wake in wakers:
            try:
                wake.send(b"!")
            except OSError:
                pass  # that wait_client() is just leaving

    def close(self) -> None:
        """:meth:`disconnect`, then drop the client function, running its
        ``destroy(opaque)`` once, as :meth:`set_client_func` does."""
        self.disconnect()
        with self._lock:
            old = (self._destroy, self._opaque, self._func_context)
            self._func = self._opaque = self._destroy = None
        self._destroy_later(*old)

    def __enter__(self) -> NetListener:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
