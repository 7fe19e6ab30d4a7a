"""SocketChannel: one socket, opened off the loop thread, used on it.

The seed's ``QMyObject``: ``listen_async``/``connect_async``/``dgram_async``
resolve the name and open the socket in a worker thread, then call
``func(channel, err, opaque)`` on the context thread.  Once open, the socket
is non-blocking: ``read``/``write`` never wait, and ``add_watch`` says when
to call them.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import stat
import threading
from collections.abc import Callable
from typing import Any

from .._checks import check_callable, check_duration
from .._context import IOCondition, MainContext, Source, attach, get_context
from .._errors import ContextClosedError, TaskCancelled
from .._task import DestroyNotify, Task, TaskFunc
from ._address import FdSocketAddress, InetSocketAddress, SocketAddress, UnixSocketAddress, VsockSocketAddress
from ._resolver import DNSResolver, as_address

__all__ = [
    "OpenRace",
    "SocketChannel",
    "address_of",
    "as_context",
    "inet_sockaddr",
    "listen_socket",
    "unix_file_of",
]

_default_resolver = DNSResolver()
#: What a non-blocking recv/send raises for "nothing now"; the TLS ones when
#: a TLSChannel carries the socket (OpenSSL wants to read or write first).
_NOT_NOW = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
#: How much ``read()`` asks for when not told: one loopback segment's worth.
READ_SIZE = 65536


def address_of(family: int, sockaddr: Any) -> SocketAddress | None:
    """The SocketAddress of a ``getsockname``/``getpeername`` result; None
    for an unnamed Unix socket."""
    if family in (socket.AF_INET, socket.AF_INET6):
        return InetSocketAddress(str(sockaddr[0]), int(sockaddr[1]))
    if family == getattr(socket, "AF_UNIX", None):
        name = os.fsdecode(sockaddr) if isinstance(sockaddr, bytes) else sockaddr
        if not name:
            return None
        if name.startswith("\0"):
            return UnixSocketAddress(name[1:], abstract=True)
        return UnixSocketAddress(name)
    if family == getattr(socket, "AF_VSOCK", None):
        return VsockSocketAddress(int(sockaddr[0]), int(sockaddr[1]))
    return None


def as_context(context: Any) -> MainContext | None:
    """``context`` as a MainContext (a loop object is attached); None stays None."""
    return None if context is None else attach(context)  # attach() returns a context as is


def _unix_name(addr: UnixSocketAddress) -> str:
    return "\0" + addr.path if addr.abstract else addr.path


def _inet_family(addr: InetSocketAddress) -> int:
    # Only called on the numeric addresses the resolver returns.
    return socket.AF_INET6 if ":" in addr.host else socket.AF_INET


def _vsock_family() -> int:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise OSError(errno.EAFNOSUPPORT, "vsock sockets are not supported on this system")
    return int(family)


def _socket_of_fd(addr: FdSocketAddress, where: str) -> socket.socket:
    # The fd stays the caller's: the channel owns a duplicate.
    try:
        fd = os.dup(addr.fd)
    except OSError as exc:
        raise _failed(exc, f"{where}: fd {addr.fd} is not open") from None
    try:
        return socket.socket(fileno=fd)
    except OSError as exc:
        os.close(fd)
        raise _failed(exc, f"{where}: fd {addr.fd} is not a socket") from None


def check_listening(sock: socket.socket, message: str) -> None:
    """Raise ``ValueError(message)`` if the stream socket ``sock`` is not
    listening, where the system can tell (``SO_ACCEPTCONN``; vsock cannot)."""
    accepting = getattr(socket, "SO_ACCEPTCONN", None)
    if accepting is None or sock.type != socket.SOCK_STREAM:
        return
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, accepting)
    except OSError:
        return  # cannot tell: trust the caller
    if not listening:
        raise ValueError(message)


def _remove_stale_unix_socket(path: str) -> None:
    # As QEMU does before binding: a socket file left by an earlier run would
    # make bind() fail with EADDRINUSE.  Anything else at the path is kept.
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def unix_file_of(target: SocketAddress) -> tuple[str, int] | None:
    """(path, inode) of the socket file a listen on ``target`` just made."""
    if not isinstance(target, UnixSocketAddress) or target.abstract:
        return None
    try:
        return (target.path, os.stat(target.path).st_ino)
    except OSError:
        return None


def _remove_own_unix_socket(path: str, inode: int) -> None:
    # Only the file this channel made: a later server may have replaced it.
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


def _failed(exc: OSError, what: str) -> OSError:
    """``exc``'s kind again, with a message saying what was being done."""
    reason = exc.strerror or str(exc)
    args: tuple[Any, ...] = (f"{what}: {reason}",) if exc.errno is None else (exc.errno, f"{what}: {reason}")
    try:
        made = type(exc)(*args)
    except TypeError:  # an OSError subclass with another signature
        made = OSError(*args)
    made.__cause__ = exc
    return made


def inet_sockaddr(addr: InetSocketAddress) -> tuple[Any, ...]:
    """The socket address tuple of a numeric inet address; an IPv6 zone
    (``fe80::1%eth0``) becomes the scope id that bind/connect need."""
    if "%" not in addr.host:
        return (addr.host, addr.port)
    infos = socket.getaddrinfo(addr.host, addr.port, socket.AF_INET6, 0, 0, socket.AI_NUMERICHOST)
    return infos[0][4]


def listen_socket(target: SocketAddress, num: int, *, v6only: bool = False) -> socket.socket:
    """A listening socket bound to ``target`` (a numeric inet address, or a
    Unix, vsock or fd address), non-blocking.

    Raises:
        OSError: the socket could not be made, bound or set listening.
        ValueError: an ``fd:`` address whose socket is not listening.
    """
    if isinstance(target, FdSocketAddress):
        sock = _socket_of_fd(target, "listen")
        try:
            check_listening(sock, f"listen: fd {target.fd} is not listening (an fd: address takes a listening socket)")
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock
    sockaddr: Any
    if isinstance(target, InetSocketAddress):
        family, sockaddr = _inet_family(target), inet_sockaddr(target)
    elif isinstance(target, UnixSocketAddress):
        family, sockaddr = socket.AF_UNIX, _unix_name(target)
        if not target.abstract:
            _remove_stale_unix_socket(target.path)
    elif isinstance(target, VsockSocketAddress):
        family, sockaddr = _vsock_family(), (target.cid, target.port)
    else:
        raise TypeError(f"listen: cannot listen on a {type(target).__name__}")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family in (socket.AF_INET, socket.AF_INET6) and os.name != "nt":
            # Restart on a port whose old connections are still in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        sock.bind(sockaddr)
        sock.listen(num)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_nodelay(sock: socket.socket) -> None:
    # As asyncio does for every TCP transport: small writes go out at once.
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - a socket already reset
            pass


def _check_num(num: object, where: str) -> int:
    if not isinstance(num, int) or isinstance(num, bool):
        raise TypeError(f"{where}: num (the listen backlog) must be an int, not {type(num).__name__}")
    if num < 0:
        raise ValueError(f"{where}: num (the listen backlog) must not be negative, got {num}")
    return num


def _dgram_addresses(
    local: SocketAddress | str | None, remote: SocketAddress | str | None, where: str
) -> tuple[SocketAddress | None, SocketAddress | None]:
    if local is None and remote is None:
        raise ValueError(f"{where}: give a local address, a remote address or both")
    local_addr = as_address(local, where) if local is not None else None
    remote_addr = as_address(remote, where) if remote is not None else None
    kinds = {type(a) for a in (local_addr, remote_addr) if a is not None}
    if len(kinds) > 1:
        raise ValueError(f"{where}: local {local_addr} and remote {remote_addr} are of different kinds")
    if not kinds <= {InetSocketAddress, UnixSocketAddress}:
        raise ValueError(f"{where}: datagrams need inet or unix addresses, not {kinds.pop().kind}")
    return local_addr, remote_addr


class OpenRace:
    """A cancel against a worker that opens something (a socket, listening
    sockets): whichever comes second undoes the opening, so that a cancelled
    open never leaves anything open.  The cancel hook may run in any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the two fields below
        self._cancelled = False
        self._undo: Callable[[], None] | None = None

    def cancelled(self, _task: Any) -> None:
        """The task's cancel hook."""
        with self._lock:
            self._cancelled = True
            undo, self._undo = self._undo, None
        if undo is not None:
            undo()

    def settled(self, task: Any) -> None:
        """The task's done-callback: a completion that could not be
        delivered (its loop is gone) leaves nothing open either, as a
        cancel does -- ``func`` never learnt of what was opened."""
        if isinstance(task.exception(), ContextClosedError):
            self.cancelled(task)

    def opened(self, undo: Callable[[], None], what: str) -> None:
        """In the worker, once opened: raise TaskCancelled (after ``undo()``)
        if the cancel came first; else keep ``undo`` for a cancel to come."""
        with self._lock:
            if not self._cancelled:
                self._undo = undo
                return
        undo()
        raise TaskCancelled(f"{what} was cancelled")


class SocketChannel:
    """A socket that a loop program opens through tasks and then drives with
    fd watches -- the seed's ``QMyObject``.

    Args:
        sock: an open socket to wrap (made non-blocking), or None for a
            channel that ``listen``/``connect``/``dgram`` will open.
        context: where watches and async completions run; None means the
            context of the thread that first needs one
            (:func:`qiotask.get_context`), or the context of the first
            async operation.
        resolver: the :class:`DNSResolver` that looks names up; by default
            one shared resolver using ``socket.getaddrinfo``.

    Thread rules: the ``*_sync`` calls block, so make them in a worker (the
    ``*_async`` forms do exactly that); ``read``, ``write``, ``accept`` and
    watch callbacks belong on the context thread.  ``close()`` is safe from
    any thread and more than once.

    Raises:
        TypeError: ``sock`` is not a socket, ``resolver`` not a DNSResolver.
    """

    def __init__(
        self, sock: socket.socket | None = None, *, context: Any = None, resolver: DNSResolver | None = None
    ) -> None:
        if sock is not None and not isinstance(sock, socket.socket):
            raise TypeError(f"SocketChannel: sock must be a socket.socket or None, not {type(sock).__name__}")
        if resolver is not None and not isinstance(resolver, DNSResolver):
            raise TypeError(f"SocketChannel: resolver must be a DNSResolver, not {type(resolver).__name__}")
        self._context = as_context(context)
        self.resolver = resolver if resolver is not None else _default_resolver
        # Guards _sock against a worker opening it while a cancel or close()
        # in another thread looks at it.
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._closed = False
        self._watches: list[Source] = []
        # Every context that ever watched the socket: a watch removed from
        # another thread is only forgotten by its loop later, so close()
        # defers the close to such a context's thread.
        self._watched: set[MainContext] = set()
        # Called (in the closing thread) by close(): an open or a TLS
        # handshake in progress ends when its channel is closed under it.
        self._close_hooks: list[Callable[[], Any]] = []
        # (path, inode) of the Unix socket file this channel listens on,
        # removed by close() as QEMU does.
        self._unix_file: tuple[str, int] | None = None
        if sock is not None:
            self._adopt(sock)

    @classmethod
    def from_socket(cls, sock: socket.socket, *, context: Any = None) -> SocketChannel:
        """A channel around the open socket ``sock``, which it now owns.

        Raises:
            TypeError: ``sock`` is not a socket.
            ValueError: ``sock`` is closed.
        """
        if not isinstance(sock, socket.socket):
            raise TypeError(f"from_socket: sock must be a socket.socket, not {type(sock).__name__}")
        if sock.fileno() < 0:
            raise ValueError("from_socket: the socket is closed")
        return cls(sock, context=context)

    def _adopt(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    def __repr__(self) -> str:
        sock = self._sock
        if sock is None:
            return f"<SocketChannel {'closed' if self._closed else 'unopened'}>"
        try:
            where = f" local={self.local_address} remote={self.remote_address}"
        except OSError:
            where = ""
        return f"<SocketChannel fd={sock.fileno()}{where}>"

    # -- context --------------------------------------------------------------

    @property
    def context(self) -> MainContext:
        """Where the channel's watches run (fixed the first time it is asked)."""
        context = self._context
        if context is None:
            context = self._context = get_context()
        return context

    def _task_context(self, context: Any) -> MainContext:
        if context is None:
            return self.context
        made = as_context(context)
        assert made is not None
        if self._context is None:
            self._context = made
        return made

    # -- opening (blocking: in a worker) --------------------------------------

    def listen_sync(self, addr: SocketAddress | str, num: int = 1) -> None:
        """Resolve ``addr`` and listen on the first address that binds, with
        a backlog of ``num``.  Blocks: call it from a worker.

        An inet name is looked up with ``AI_PASSIVE``; a Unix path has a
        stale socket file removed first (as QEMU does); an ``fd:`` address
        listens on a duplicate of that (already listening) socket.

        Raises:
            ValueError, TypeError: bad address or ``num``; the channel is
                already open or closed.
            socket.gaierror: the name does not resolve.
            OSError: no address could be bound (the last error, saying
                which address).
        """
        num = _check_num(num, "listen_sync")
        address = as_address(addr, "listen_sync")
        self._check_unopened("listen_sync")
        errors: list[OSError] = []
        for target in self.resolver.lookup_sync(address, passive=True):
            try:
                sock = listen_socket(target, num)
            except OSError as exc:
                errors.append(_failed(exc, f"cannot listen on {target}"))
                continue
            self._opened(sock, "listen_sync", unix_file_of(target))
            return
        raise errors[-1]

    def connect_sync(self, addr: SocketAddress | str) -> None:
        """Resolve ``addr`` and connect to its addresses in turn until one
        accepts.  Blocks: call it from a worker.

        Raises:
            ValueError, TypeError: bad address; the channel is already open
                or closed.
            socket.gaierror: the name does not resolve.
            ConnectionRefusedError, OSError: no address accepted (the last
                error, saying which address).
        """
        address = as_address(addr, "connect_sync")
        self._check_unopened("connect_sync")
        errors: list[OSError] = []
        for target in self.resolver.lookup_sync(address):
            try:
                sock = self._connect_one(target)
            except OSError as exc:
                errors.append(_failed(exc, f"cannot connect to {target}"))
                continue
            self._opened(sock, "connect_sync")
            return
        raise errors[-1]

    @staticmethod
    def _connect_one(target: SocketAddress) -> socket.socket:
        if isinstance(target, FdSocketAddress):
            return _socket_of_fd(target, "connect")
        if isinstance(target, InetSocketAddress):
            sock = socket.socket(_inet_family(target), socket.SOCK_STREAM)
            sockaddr: Any = inet_sockaddr(target)
        elif isinstance(target, UnixSocketAddress):
            sock, sockaddr = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), _unix_name(target)
        elif isinstance(target, VsockSocketAddress):
            sock, sockaddr = socket.socket(_vsock_family(), socket.SOCK_STREAM), (target.cid, target.port)
        else:
            raise TypeError(f"connect: cannot connect to a {type(target).__name__}")
        try:
            sock.connect(sockaddr)
        except BaseException:
            sock.close()
            raise
        _set_nodelay(sock)
        return sock

    def dgram_sync(self, local: SocketAddress | str | None, remote: SocketAddress | str | None) -> None:
        """Open a datagram socket bound to ``local`` and connected to
        ``remote`` (either may be None, not both).  Blocks: call it from a
        worker.  Inet and Unix addresses only; with both given they must be
        of one kind.  A remote name is resolved and its first address used
        (a datagram "connect" only sets the default destination, so there
        is no refusal to fall back from); an inet ``local`` is matched to
        that address's family.

        Raises:
            ValueError, TypeError: bad or mismatched addresses; the channel
                is already open or closed.
            socket.gaierror: a name does not resolve.
            OSError: the socket could not be bound or connected.
        """
        local_addr, remote_addr = _dgram_addresses(local, remote, "dgram_sync")
        self._check_unopened("dgram_sync")
        sock, bound = self._dgram_socket(local_addr, remote_addr)
        self._opened(sock, "dgram_sync", unix_file_of(bound) if bound is not None else None)

    def _dgram_socket(
        self, local: SocketAddress | None, remote: SocketAddress | None
    ) -> tuple[socket.socket, SocketAddress | None]:
        """The socket, and the address it was bound to (None if unbound)."""
        lookup = self.resolver.lookup_sync
        remote_target = lookup(remote, kind=socket.SOCK_DGRAM)[0] if remote is not None else None
        local_target: SocketAddress | None = None
        if local is not None:
            candidates = lookup(local, passive=True, kind=socket.SOCK_DGRAM)
            if isinstance(remote_target, InetSocketAddress):
                family = _inet_family(remote_target)
                candidates = [c for c in candidates if _inet_family(c) == family]  # type: ignore[arg-type]
                if not candidates:
                    raise OSError(errno.EAFNOSUPPORT, f"dgram: {local} has no address of {remote_target}'s family")
            local_target = candidates[0]
        target = remote_target if remote_target is not None else local_target
        if isinstance(target, InetSocketAddress):
            sock = socket.socket(_inet_family(target), socket.SOCK_DGRAM)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            for addr, act in ((local_target, "bind"), (remote_target, "connect")):
                if addr is None:
                    continue
                if isinstance(addr, UnixSocketAddress):
                    if act == "bind" and not addr.abstract:
                        _remove_stale_unix_socket(addr.path)
                    sockaddr: Any = _unix_name(addr)
                else:
                    assert isinstance(addr, InetSocketAddress)
                    sockaddr = inet_sockaddr(addr)
                try:
                    getattr(sock, act)(sockaddr)
                except OSError as exc:
                    raise _failed(exc, f"dgram: cannot {act} {addr}") from None
        except BaseException:
            sock.close()
            raise
        return sock, local_target

    def _check_unopened(self, where: str) -> None:
        if self._closed:
            raise ValueError(f"{where}: the channel is closed")
        if self._sock is not None:
            raise ValueError(f"{where}: the channel already has a socket; make a new SocketChannel")

    def _opened(self, sock: socket.socket, where: str, unix_file: tuple[str, int] | None = None) -> None:
        with self._lock:
            if self._closed or self._sock is not None:
                sock.close()
                if unix_file is not None:
                    _remove_own_unix_socket(*unix_file)
                # Closed (or opened by a racing call) while this one ran.
                self._check_unopened(where)
            self._adopt(sock)
            self._unix_file = unix_file

    # -- opening (tasks) ------------------------------------------------------

    def listen_async(
        self,
        addr: SocketAddress | str,
        num: int = 1,
        func: TaskFunc | None = None,
        opaque: Any = None,
        destroy: DestroyNotify | None = None,
        *,
        context: Any = None,
        timeout: float | None = None,
    ) -> Task[SocketChannel]:
        """:meth:`listen_sync` on a pool thread, DNS included; see
        :meth:`connect_async` for the callbacks, cancel and ``timeout``."""
        num = _check_num(num, "listen_async")
        address = as_address(addr, "listen_async")
        return self._start("listen", lambda: self.listen_sync(address, num), func, opaque, destroy, context, timeout)

    def connect_async(
        self,
        addr: SocketAddress | str,
        func: TaskFunc | None = None,
        opaque: Any = None,
        destroy: DestroyNotify | None = None,
        *,
        context: Any = None,
        timeout: float | None = None,
    ) -> Task[SocketChannel]:
        """:meth:`connect_sync` on a pool thread, DNS included.

        Returns the :class:`qiotask.Task` (awaitable); its source and result
        are this channel.  ``func(channel, err, opaque)`` runs on the context
        thread (``context``, else the channel's); ``err`` is the exception
        ``connect_sync`` raised, else None.  ``destroy(opaque)`` runs after.

        ``task.cancel()`` (or ``timeout`` seconds passing) completes the task
        at once with :class:`qiotask.TaskCancelled` (:class:`qiotask.TaskTimeout`);
        a connection the worker still makes is then closed, never adopted.

        Raises:
            ValueError, TypeError: bad address (before any task exists).
        """
        address = as_address(addr, "connect_async")
        return self._start("connect", lambda: self.connect_sync(address), func, opaque, destroy, context, timeout)

    def dgram_async(
        self,
        local: SocketAddress | str | None,
        remote: SocketAddress | str | None,
        func: TaskFunc | None = None,
        opaque: Any = None,
        destroy: DestroyNotify | None = None,
        *,
        context: Any = None,
        timeout: float | None = None,
    ) -> Task[SocketChannel]:
        """:meth:`dgram_sync` on a pool thread; see :meth:`connect_async`.

        Raises:
            ValueError, TypeError: bad or mismatched addresses (before any
                task exists).
        """
        local_addr, remote_addr = _dgram_addresses(local, remote, "dgram_async")
        return self._start(
            "dgram", lambda: self.dgram_sync(local_addr, remote_addr), func, opaque, destroy, context, timeout
        )

    def _start(
        self,
        what: str,
        open_sync: Callable[[], None],
        func: TaskFunc | None,
        opaque: Any,
        destroy: DestroyNotify | None,
        context: Any,
        timeout: float | None,
    ) -> Task[SocketChannel]:
        check_duration(timeout, f"{what}_async", optional=True)
        task: Task[SocketChannel] = Task(self, func, opaque, destroy, context=self._task_context(context), name=what)
        # A cancel (or a close() of the channel) completes the task at once:
        # the worker may sit in getaddrinfo or connect, which nothing
        # interrupts.  A socket it opens after that is closed, not adopted,
        # and one adopted just before the cancel won is closed by the cancel.
        race = OpenRace()

        def undo() -> None:
            with self._lock:
                sock, self._sock = self._sock, None
                self._unix_file = None
            if sock is not None:
                sock.close()

        def worker(_task: Task[SocketChannel], _opaque: Any) -> SocketChannel:
            open_sync()
            race.opened(undo, what)
            return self

        def finished(_task: Task[SocketChannel]) -> None:
            with self._lock:
                if task.cancel in self._close_hooks:
                    self._close_hooks.remove(task.cancel)

        task.on_cancel(race.cancelled)
        with self._lock:
            self._close_hooks.append(task.cancel)
        task.add_done_callback(race.settled)
        task.add_done_callback(finished)
        task.run_in_thread(worker, timeout=timeout, abandon_on_cancel=True)
        return task

    # -- the open socket ------------------------------------------------------

    @property
    def sock(self) -> socket.socket | None:
        """The socket (non-blocking), or None before opening and after close."""
        return self._sock

    def _open_sock(self, where: str) -> socket.socket:
        sock = self._sock
        if sock is None:
            state = "closed" if self._closed else "not open yet (listen, connect or dgram first)"
            raise ValueError(f"{where}: the channel is {state}")
        return sock

    def fileno(self) -> int:
        """The socket's file descriptor.

        Raises:
            ValueError: the channel is not open, or closed.
        """
        return self._open_sock("fileno").fileno()

    @property
    def local_address(self) -> SocketAddress | None:
        """Where the socket is bound (None for an unnamed Unix socket).

        Raises:
            ValueError: the channel is not open, or closed.
        """
        sock = self._open_sock("local_address")
        return address_of(sock.family, sock.getsockname())

    @property
    def remote_address(self) -> SocketAddress | None:
        """The peer (None for an unnamed Unix peer).

        Raises:
            ValueError: the channel is not open, or closed.
            OSError: the socket is not connected (``ENOTCONN``).
        """
        sock = self._open_sock("remote_address")
        return address_of(sock.family, sock.getpeername())

    def accept(self) -> SocketChannel | None:
        """The next pending connection as a new channel (non-blocking, with
        this channel's context and resolver), or None if none is waiting.

        Raises:
            ValueError: the channel is not open, or closed.
            OSError: accept() failed for another reason (e.g. ``EMFILE``).
        """
        sock = self._open_sock("accept")
        try:
            conn, _peer = sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except ConnectionAbortedError:
            return None  # the client gave up while queued: nothing to serve
        _set_nodelay(conn)
        channel = SocketChannel(conn, resolver=self.resolver)
        channel._context = self._context
        return channel

    def read(self, n: int = READ_SIZE) -> bytes | None:
        """Up to ``n`` bytes; ``b""`` at end of stream; None if nothing can be
        read now (wait with ``add_watch(IO_IN, ...)``).

        Raises:
            ValueError: the channel is not open, or closed; ``n`` below 1.
            OSError: the connection failed (e.g. ``ConnectionResetError``).
        """
        sock = self._open_sock("read")
        if n < 1:
            raise ValueError(f"read: n must be at least 1, got {n}")  # recv(0)'s b"" would read as the end
        try:
            return sock.recv(n)
        except _NOT_NOW:
            return None

    def write(self, data: bytes | bytearray | memoryview) -> int | None:
        """Send what the socket takes now of ``data``: the number of bytes
        sent, or None if it takes nothing now (wait with
        ``add_watch(IO_OUT, ...)``).

        Raises:
            ValueError: the channel is not open, or closed.
            OSError: the connection failed (e.g. ``BrokenPipeError``).
        """
        sock = self._open_sock("write")
        try:
            return sock.send(data)
        except _NOT_NOW:
            return None

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        """Shut down one or both directions (``socket.SHUT_WR`` by default:
        the peer reads end of stream; this side can still read).

        Raises:
            ValueError: the channel is not open, or closed.
            OSError: the socket is not connected.
        """
        self._open_sock("shutdown").shutdown(how)

    def add_watch(
        self, condition: IOCondition | int, fn: Callable[..., Any], *args: Any, context: Any = None
    ) -> Source:
        """Call ``fn(channel, condition, *args)`` on the context thread when
        the socket is ready, for as long as it returns True; see
        :meth:`qiotask.MainContext.io_add_watch`.  ``context``: where the
        watch runs, by default the channel's.  :meth:`close` removes the
        channel's watches.

        Raises:
            ValueError: the channel is not open, or closed; bad ``condition``.
            TypeError: ``fn`` is not callable.
        """
        check_callable(fn, "add_watch")

        def on_ready(_fd: int, ready: IOCondition, *rest: Any) -> Any:
            return fn(self, ready, *rest)

        where = self.context if context is None else self._task_context(context)
        # Under the lock, so that a close() in another thread either comes
        # first (and this raises) or sees the watch (and removes it).
        with self._lock:
            fd = self._open_sock("add_watch").fileno()
            source = where.io_add_watch(fd, condition, on_ready, *args)
            self._watches = [w for w in self._watches if not w.removed]
            self._watches.append(source)
            self._watched.add(where)
        return source

    # -- closing --------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Remove the channel's watches and close the socket; from any
        thread, any number of times.

        Called off the thread of a context that has watched the socket, it
        closes the socket on that context's thread, once the loop has
        forgotten the fd (a loop must forget an fd before it is closed and
        its number reused); if that context is closed, at once.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            hooks, self._close_hooks = self._close_hooks, []
        # First the hooks (an open or a handshake in progress is cancelled),
        # so that whoever finds the socket gone below already sees why.
        for hook in hooks:
            hook()
        with self._lock:
            sock, self._sock = self._sock, None
            watches, self._watches = self._watches, []
            unix_file, self._unix_file = self._unix_file, None
        for watch in watches:
            watch.remove()
        if unix_file is not None:
            _remove_own_unix_socket(*unix_file)
        if sock is None:
            return
        # Off the thread of a context that watched the socket, its removals
        # are queued there: the close waits behind them, on every such
        # context (the last one to get there closes).
        others = [c for c in self._watched if not c.is_owner() and not c.closed]
        if not others:
            sock.close()
            return
        left = [len(others)]
        count_lock = threading.Lock()

        def one_done() -> None:
            with count_lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                sock.close()

        for context in others:
            context._call_soon_once(one_done)

    def __enter__(self) -> SocketChannel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
