"""DNSResolver: turn an address with a host name into numeric addresses,
in the calling thread or in a worker -- never on the loop thread.

``lookup_sync`` blocks in ``getaddrinfo``; ``lookup_async`` runs it on a pool
thread and reports the list on the context thread.  Only inet addresses are
looked up: every other kind comes back as a one-item list, unchanged.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from .._checks import check_callable, check_duration
from .._errors import TaskTimeout
from .._pool import WorkerPool
from .._task import DestroyNotify, Task, TaskFunc
from ._address import InetSocketAddress, SocketAddress

__all__ = ["DNSResolver", "as_address", "inet_families"]

GetAddrInfo = Callable[..., list[tuple[Any, ...]]]


def as_address(addr: SocketAddress | str, where: str) -> SocketAddress:
    """``addr``, parsed when it is text.

    Raises:
        TypeError: ``addr`` is neither a SocketAddress nor a str.
        ValueError: the text does not parse (the message names the part).
    """
    if isinstance(addr, SocketAddress):
        return addr
    if isinstance(addr, str):
        try:
            return SocketAddress.parse(addr)
        except ValueError as exc:
            raise ValueError(f"{where}: bad address {addr!r}: {exc}") from None
    raise TypeError(f"{where}: address must be a SocketAddress or address text, not {type(addr).__name__}")


def inet_families(addr: InetSocketAddress) -> tuple[int, ...]:
    """The address families the ``ipv4``/``ipv6`` flags allow, as QEMU reads
    them: a flag set to True asks for that family only (both True: either);
    a flag set to False rules its family out; None leaves it open."""
    if addr.ipv4 or addr.ipv6:
        wanted = ((socket.AF_INET,) if addr.ipv4 else ()) + ((socket.AF_INET6,) if addr.ipv6 else ())
    else:
        wanted = ((socket.AF_INET,) if addr.ipv4 is not False else ()) + (
            (socket.AF_INET6,) if addr.ipv6 is not False else ()
        )
    return wanted


def _zone_name(scope_id: int) -> str:
    try:
        return socket.if_indextoname(scope_id)
    except (OSError, AttributeError):  # no such interface now, or no API
        return str(scope_id)


_dns_pool: WorkerPool | None = None
_dns_lock = threading.Lock()


def _lookup_pool() -> WorkerPool:
    """The pool of timed sync lookups.

    A timed lookup waits for its getaddrinfo on another thread, and the
    waiting thread is often a pool worker itself (an async open).  Sharing
    the default pool, a burst of opens would fill it with workers waiting
    for lookups queued behind them, and time them all out; so timed lookups
    get threads of their own ("qiotask-dns-worker-N"), a new one whenever
    all are busy (idle ones expire).
    """
    global _dns_pool
    with _dns_lock:
        if _dns_pool is None or _dns_pool._shutdown:
            # grow_after=0: a new thread as soon as all are busy.  Lookups
            # that hang keep their threads after they time out, and the
            # ones behind them must not wait in the queue for those.
            _dns_pool = WorkerPool(name="qiotask-dns", grow_after=0)
        return _dns_pool


class DNSResolver:
    """Looks up the numeric addresses of a name, off the loop thread.

    Args:
        getaddrinfo: the function that does the lookup, with the signature
            of :func:`socket.getaddrinfo` (the default).  Tests and
            programs with their own name service pass another.
        timeout: seconds a lookup may take before it fails with
            :class:`qiotask.TaskTimeout` (``getaddrinfo`` itself cannot be
            interrupted: its thread is left to finish on its own and its late
            answer is dropped).  None (the default) waits as long as the
            system resolver does.
        pool: the :class:`qiotask.WorkerPool` that runs async lookups and
            timed sync ones; by default async lookups run on the
            process-wide pool and timed sync ones on a small pool of their
            own (see ``_lookup_pool``).

    Raises:
        TypeError: ``getaddrinfo`` is not callable, ``pool`` is not a
            WorkerPool, or ``timeout`` is not a number.
        ValueError: ``timeout`` is not positive.
    """

    def __init__(
        self,
        *,
        getaddrinfo: GetAddrInfo | None = None,
        timeout: float | None = None,
        pool: WorkerPool | None = None,
    ) -> None:
        check_callable(getaddrinfo, "DNSResolver", "getaddrinfo", optional=True)
        check_duration(timeout, "DNSResolver", optional=True, positive=True)
        if pool is not None and not isinstance(pool, WorkerPool):
            raise TypeError(f"DNSResolver: pool must be a WorkerPool, not {type(pool).__name__}")
        self._getaddrinfo: GetAddrInfo = getaddrinfo if getaddrinfo is not None else socket.getaddrinfo
        self.timeout = timeout
        self._pool = pool

    def __repr__(self) -> str:
        return f"<DNSResolver timeout={self.timeout}>"

    def lookup_sync(
        self, addr: SocketAddress | str, *, passive: bool = False, kind: int = socket.SOCK_STREAM
    ) -> list[SocketAddress]:
        """The numeric addresses ``addr`` stands for, in ``getaddrinfo``'s
        order; blocks the calling thread (so never call it on a loop thread).

        One :class:`InetSocketAddress` per ``getaddrinfo`` result, with the
        host a numeric literal, the port kept, the ``ipv4``/``ipv6`` flags
        honoured and ``numeric`` kept.  Other kinds come back as ``[addr]``.

        Args:
            addr: the address, or its text.
            passive: look up for a listener (``AI_PASSIVE``), as QEMU does.
            kind: the socket type asked for (``SOCK_STREAM`` or
                ``SOCK_DGRAM``).

        Raises:
            socket.gaierror: the name does not resolve (the message names it).
            TaskTimeout: the resolver's ``timeout`` passed first.
            ValueError, TypeError: ``addr`` is not a valid address.
        """
        address = as_address(addr, "lookup_sync")
        if not isinstance(address, InetSocketAddress):
            return [address]
        if self.timeout is None:
            return self._lookup(address, passive, kind)
        return self._lookup_timed(address, passive, kind, self.timeout)

    def lookup_async(
        self,
        addr: SocketAddress | str,
        func: TaskFunc | None = None,
        opaque: Any = None,
        destroy: DestroyNotify | None = None,
        *,
        context: Any = None,
        passive: bool = False,
        kind: int = socket.SOCK_STREAM,
    ) -> Task[list[SocketAddress]]:
        """Look ``addr`` up on a pool thread; report on the context thread.

        Returns the :class:`qiotask.Task` (awaitable); its source is the
        resolver, its result the list :meth:`lookup_sync` returns.
        ``func(resolver, err, opaque)`` runs on the context thread (the
        ``context`` given, else :func:`qiotask.get_context` of the caller);
        ``err`` is the ``socket.gaierror`` or :class:`TaskTimeout`, else
        None.  ``destroy(opaque)`` runs after it.  Cancelling the task
        completes it at once with :class:`qiotask.TaskCancelled`.

        Raises:
            ValueError, TypeError: ``addr`` is not a valid address (raised
                here, before any task exists).
        """
        address = as_address(addr, "lookup_async")
        task: Task[list[SocketAddress]] = Task(self, func, opaque, destroy, context=context, name=f"lookup {address}")
        task.run_in_thread(
            lambda _task, _opaque: (
                self._lookup(address, passive, kind) if isinstance(address, InetSocketAddress) else [address]
            ),
            pool=self._pool,
            timeout=self.timeout,
            abandon_on_cancel=True,
        )
        return task

    # -- the lookup itself (on the calling or a pool thread) -----------------

    def _lookup(self, addr: InetSocketAddress, passive: bool, kind: int) -> list[SocketAddress]:
        families = inet_families(addr)
        family = families[0] if len(families) == 1 else socket.AF_UNSPEC
        flags = socket.AI_PASSIVE if passive else 0
        if addr.numeric:
            flags |= socket.AI_NUMERICHOST
        try:
            infos = self._getaddrinfo(addr.host, addr.port, family, kind, 0, flags)
        except socket.gaierror as exc:
            raise socket.gaierror(exc.errno, f"address resolution failed for {addr}: {exc.strerror}") from exc
        except UnicodeError as exc:
            # socket.getaddrinfo encodes a name with IDNA before any lookup:
            # an empty or too long label fails there.  It does not resolve.
            raise socket.gaierror(
                socket.EAI_NONAME, f"address resolution failed for {addr}: not a valid host name ({exc})"
            ) from exc
        found: list[SocketAddress] = []
        for info_family, _kind, _proto, _canon, sockaddr in infos:
            if info_family not in families:
                continue
            host = str(sockaddr[0])
            if info_family == socket.AF_INET6 and len(sockaddr) > 3 and sockaddr[3] and "%" not in host:
                host += "%" + _zone_name(int(sockaddr[3]))  # keep the zone of fe80::1%eth0
            found.append(
                InetSocketAddress(
                    host,
                    int(sockaddr[1]),
                    ipv4=addr.ipv4,
                    ipv6=addr.ipv6,
                    numeric=addr.numeric,
                )
            )
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, f"address resolution failed for {addr}: no address of that family")
        return list(dict.fromkeys(found))  # getaddrinfo repeats addresses once per protocol

    def _lookup_timed(self, addr: InetSocketAddress, passive: bool, kind: int, timeout: float) -> list[SocketAddress]:
        # getaddrinfo cannot be interrupted: run it on a pool thread and stop
        # waiting for it after `timeout`.
        done = threading.Event()
        outcome: list[Any] = []

        def deliver(result: Any, exc: BaseException | None) -> None:
            outcome.append((result, exc))
            done.set()

        pool = self._pool if self._pool is not None else _lookup_pool()
        pool.submit(lambda: self._lookup(addr, passive, kind), deliver)
        if not done.wait(timeout):
            raise TaskTimeout(f"lookup of {addr} took longer than {timeout} s")
        result, exc = outcome[0]
        if exc is not None:
            raise exc
        return result  # type: ignore[no-any-return]
