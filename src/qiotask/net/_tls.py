"""TLSChannel: TLS over a connected SocketChannel, the handshake driven by
fd watches on the loop thread -- no worker thread, as QEMU's TLS channel.

The handshake is a task: each step runs ``do_handshake()`` on the context
thread; when OpenSSL wants to read (or write) the step ends and a watch for
``IO_IN`` (``IO_OUT``) runs the next one.  The task completes with the
channel, or with the ``ssl.SSLError``/``OSError`` that ended the handshake.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any

from .. import _deadline
from .._checks import check_callable, check_duration
from .._context import IO_IN, IO_OUT, IOCondition, MainContext, Source, _CallOnce
from .._errors import TaskStateError
from .._task import DestroyNotify, Task, TaskFunc
from ._channel import READ_SIZE, SocketChannel

__all__ = ["TLSChannel"]


class TLSChannel:
    """A TLS session on a connected :class:`SocketChannel`.

    Make one with :meth:`new_client` or :meth:`new_server`, run
    :meth:`handshake`, then :meth:`read`/:meth:`write` (non-blocking) with
    :meth:`add_watch`.  The TLS channel takes the socket channel over: from
    then on, read and write through the TLS channel only.
    """

    def __init__(self, channel: SocketChannel, sock: ssl.SSLSocket, server_side: bool) -> None:
        self.channel = channel
        self._sock = sock
        self.server_side = server_side
        self._handshake: Task[TLSChannel] | None = None

    @classmethod
    def new_client(cls, channel: SocketChannel, ssl_context: ssl.SSLContext, hostname: str | None) -> TLSChannel:
        """The client side of a TLS session over ``channel``.

        ``hostname`` is sent as SNI and, when ``ssl_context.check_hostname``
        is on (the default of ``ssl.create_default_context()``), the
        server's certificate must be valid for it.

        Raises:
            TypeError: ``channel``, ``ssl_context`` or ``hostname`` of the
                wrong type.
            ValueError: ``channel`` is not open or already carries TLS;
                ``hostname`` is not a valid host name, or is None while the
                context checks host names.
        """
        return cls._wrap(channel, ssl_context, server_side=False, hostname=hostname)

    @classmethod
    def new_server(cls, channel: SocketChannel, ssl_context: ssl.SSLContext) -> TLSChannel:
        """The server side of a TLS session over ``channel`` (``ssl_context``
        holds the certificate chain and key).

        Raises:
            TypeError: ``channel`` or ``ssl_context`` of the wrong type.
            ValueError: ``channel`` is not open.
        """
        return cls._wrap(channel, ssl_context, server_side=True, hostname=None)

    @classmethod
    def _wrap(
        cls, channel: SocketChannel, ssl_context: ssl.SSLContext, *, server_side: bool, hostname: str | None
    ) -> TLSChannel:
        side = "new_server" if server_side else "new_client"
        if not isinstance(channel, SocketChannel):
            raise TypeError(f"{side}: channel must be a SocketChannel, not {type(channel).__name__}")
        if not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"{side}: ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}")
        if hostname is not None and not isinstance(hostname, str):
            raise TypeError(f"{side}: hostname must be a str or None, not {type(hostname).__name__}")
        if not server_side and hostname is None and ssl_context.check_hostname:
            raise ValueError(f"{side}: the ssl context checks host names, so give the hostname to check")
        if hostname is not None:
            # Checked before wrap_socket, which takes the fd over first and
            # fails on a bad name after.
            try:
                if "\0" in hostname:
                    raise UnicodeError("NUL character")
                hostname.encode("idna")
            except UnicodeError as exc:
                raise ValueError(f"{side}: not a valid host name: {hostname!r} ({exc})") from None
        with channel._lock:  # against a close() in another thread
            plain = channel._open_sock(side)
            if isinstance(plain, ssl.SSLSocket):
                raise ValueError(f"{side}: the channel already carries TLS")
            # wrap_socket takes the file descriptor over; the channel keeps
            # working on it (fileno, addresses, watches, close) through the
            # TLS socket, which is a socket too.
            sock = ssl_context.wrap_socket(
                plain, server_side=server_side, server_hostname=hostname, do_handshake_on_connect=False
            )
            sock.setblocking(False)
            channel._sock = sock
            made = cls(channel, sock, server_side)
            channel._close_hooks.append(made._channel_closed)
        return made

    def __repr__(self) -> str:
        side = "server" if self.server_side else "client"
        return f"<TLSChannel {side} {self.version() or 'before handshake'} over {self.channel!r}>"

    # -- the handshake ----------------------------------------------------------

    def handshake(
        self,
        func: TaskFunc | None = None,
        opaque: Any = None,
        destroy: DestroyNotify | None = None,
        *,
        context: Any = None,
        timeout: float | None = None,
    ) -> Task[TLSChannel]:
        """Run the TLS handshake on the context thread, driven by fd watches.

        Returns the :class:`qiotask.Task` (awaitable); its source and result
        are this TLS channel.  ``func(tls, err, opaque)`` runs on the context
        thread (``context``, else the socket channel's) once the handshake
        ended: ``err`` is None, or the ``ssl.SSLError`` (e.g.
        ``ssl.SSLCertVerificationError`` for a wrong host name) or
        ``OSError`` (the peer went away) that ended it.  ``destroy(opaque)``
        runs after it.  The first step runs on the context's next iteration,
        never inside this call.

        ``task.cancel()`` (or :meth:`close`) or ``timeout`` seconds passing
        (say, a peer that never answers) ends the handshake with
        :class:`qiotask.TaskCancelled` or :class:`qiotask.TaskTimeout`.  A
        failed handshake leaves the channel open: close it.

        Raises:
            TypeError, ValueError: bad ``timeout``.
            qiotask.TaskStateError: a handshake was already started.
        """
        check_duration(timeout, "handshake", optional=True)
        if self._handshake is not None:
            raise TaskStateError("handshake: a TLS channel has one handshake; it was already started")
        where: MainContext = self.channel._task_context(context)
        channel = self.channel
        with channel._lock:
            # The steps use the socket on that context's thread from now on:
            # a close() from another thread must leave the closing to it.
            channel._watched.add(where)
        task: Task[TLSChannel] = Task(self, func, opaque, destroy, context=where, name="tls handshake")
        self._handshake = task
        _Handshake(self, task, where, timeout).start()
        return task

    # -- after the handshake ----------------------------------------------------

    @property
    def sock(self) -> ssl.SSLSocket:
        """The TLS socket (non-blocking)."""
        return self._sock

    def fileno(self) -> int:
        """The socket's file descriptor.

        Raises:
            ValueError: the channel was closed.
        """
        return self.channel.fileno()

    def version(self) -> str | None:
        """The protocol agreed (``"TLSv1.3"``...), None before the handshake."""
        return self._sock.version() if self.channel.sock is not None else None

    def cipher(self) -> tuple[str, str, int] | None:
        """``(name, protocol, secret bits)`` of the cipher agreed, or None."""
        return self._sock.cipher() if self.channel.sock is not None else None

    def getpeercert(self) -> Any:
        """The peer's certificate as ``ssl.SSLSocket.getpeercert()`` gives it.

        Raises:
            ValueError: the channel was closed.
        """
        self.channel._open_sock("getpeercert")  # (its socket is this TLS socket)
        return self._sock.getpeercert()

    def read(self, n: int = READ_SIZE) -> bytes | None:
        """Up to ``n`` bytes of plaintext; ``b""`` at end of stream (the
        peer's close_notify, a close without one, or a reset); None if none
        can be read now.  A watch made with :meth:`add_watch` is called
        again while decrypted data is still buffered, so read what it gives.

        Raises:
            ValueError: the channel was closed.
            ssl.SSLError, OSError: the session or connection failed.
        """
        try:
            return self.channel.read(n)  # the channel's socket is this TLS socket
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError):
            # close_notify, or a peer that closed without one (as most do):
            # either way the stream ended.  A reset too: Python's ssl module
            # reports one as a ragged EOF before 3.13 (the errno is lost), so
            # code written for any Python sees b"" for it (docs/net.md).
            return b""

    def write(self, data: bytes | bytearray | memoryview) -> int | None:
        """Encrypt and send ``data``: ``len(data)``, or None if the socket
        takes nothing now.  After None, write the same bytes again when
        ``IO_OUT`` says so (OpenSSL's rule: it may have sent a part).

        Raises:
            ValueError: the channel was closed.
            ssl.SSLError, OSError: the session or connection failed.
        """
        return self.channel.write(data)  # the channel's socket is this TLS socket

    def add_watch(
        self, condition: IOCondition | int, fn: Callable[..., Any], *args: Any, context: Any = None
    ) -> Source:
        """As :meth:`SocketChannel.add_watch`, calling ``fn(tls, condition,
        *args)``; a watch for ``IO_IN`` is also called (on the next
        iterations) while TLS holds decrypted bytes the socket no longer
        signals.

        Raises:
            ValueError: the channel was closed.
            TypeError: ``fn`` is not callable.
        """
        check_callable(fn, "add_watch")
        if not isinstance(condition, int) or isinstance(condition, bool):
            raise TypeError(f"add_watch: condition must be an IOCondition, not {type(condition).__name__}")
        source: Source | None = None
        wants_in = bool(condition & IO_IN)
        draining = [False]  # an idle drain is queued or running

        def call(ready: IOCondition) -> bool:
            try:
                keep = bool(fn(self, ready, *args))
            except BaseException:
                keep = False  # as an io watch whose function raises: removed
                raise
            finally:
                if not keep:
                    draining[0] = False
                    if source is not None:
                        source.remove()
            return keep

        def drain() -> bool:
            # Idle source: while fn keeps reading, and TLS has more buffered.
            if source is None or source.removed or self.channel.sock is None:
                draining[0] = False
                return False
            draining[0] = call(IO_IN) and self._buffered()
            return draining[0]

        def on_ready(_channel: SocketChannel, ready: IOCondition) -> bool:
            keep = call(ready)
            if keep and wants_in and not draining[0] and self._buffered():
                assert source is not None
                draining[0] = True
                source._context.idle_add(drain)
            return keep

        source = self.channel.add_watch(condition, on_ready, context=context)
        return source

    def _buffered(self) -> bool:
        try:
            return self._sock.pending() > 0
        except (ValueError, OSError):
            return False

    def close(self) -> None:
        """Close the connection; from any thread, more than once.

        On the context thread, after a handshake that succeeded, TLS's
        close_notify is sent first (as far as the socket takes it now), so
        the peer reads a clean end of stream; from another thread it is not
        (an SSL session must not be used by two threads at once).  A
        handshake still running ends with :class:`qiotask.TaskCancelled`.
        """
        handshake = self._handshake
        sock = self.channel.sock
        if (
            sock is self._sock
            and handshake is not None
            and handshake.done()
            and not handshake.had_error()
            and self.channel.context.is_owner()
        ):
            try:
                self._sock.unwrap()  # sends close_notify
            except (OSError, ValueError):
                pass  # the peer's close_notify is not awaited; a dead socket
        self.channel.close()

    def _channel_closed(self) -> None:
        # The socket channel's close hook, in the closing thread.
        handshake = self._handshake
        if handshake is not None:
            handshake.cancel()  # nothing once it completed

    def __enter__(self) -> TLSChannel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class _Handshake:
    """One handshake in progress; every method but ``_cancelled`` runs on
    the context thread."""

    def __init__(self, tls: TLSChannel, task: Task[TLSChannel], context: MainContext, timeout: float | None) -> None:
        self.tls = tls
        self.task = task
        self.context = context
        self.watch: Source | None = None
        self.deadline: _deadline.Deadline | None = None
        self.done = False
        if timeout is not None:
            self.deadline = _deadline.call_at(time.monotonic() + timeout, task._time_out)

    def start(self) -> None:
        self.task.on_cancel(self._cancelled)
        # The first step on the context's next iteration; if the context is
        # (or gets) closed first, complete instead (the task reports the
        # closed context), so that func and destroy are not lost.
        self.context.post(_CallOnce(self.step, (), self.finish, (None,)))

    def _cancelled(self, _task: Task[TLSChannel]) -> None:
        # In the cancelling thread (the deadline's for a timeout): finish on
        # the context thread, where the steps run -- or, if that loop is
        # gone or goes before, in the thread that finds it gone.
        self.context._call_here_or_soon(self.finish, None)

    def step(self, *_ignored: Any) -> bool:
        self.watch = None
        if self.done:
            return False
        if self.task.cancelled():
            self.finish(None)
            return False
        try:
            self.tls._sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
            wait_for = IO_IN if isinstance(want, ssl.SSLWantReadError) else IO_OUT
            try:
                self.watch = self.tls.channel.add_watch(wait_for, self.step, context=self.context)
            except ValueError as exc:
                # Closed from another thread during the step: its close hook
                # cancelled the task already, and that is what func hears.
                self.finish(exc)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.finish(exc)
        else:
            self.finish(None)
        return False  # each watch serves one step

    def finish(self, err: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        watch, self.watch = self.watch, None
        if watch is not None:
            watch.remove()
        if self.deadline is not None:
            self.deadline.cancel()
        if err is not None:
            self.task.abort(err)
        else:
            self.task.complete(self.tls)  # a cancel that won is delivered instead
