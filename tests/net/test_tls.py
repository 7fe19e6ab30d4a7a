"""TLSChannel on real loops with real sockets on loopback: a handshake on
both sides (a NetListener's client function as the server), data both ways
(1 MiB, so that writes wait and reads are split), a wrong host name, peers
that speak plain TCP or nothing at all, timeout, cancel and close during the
handshake, no worker thread used, and argument checks.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import select
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import qiotask
from qiotask._pool import default_pool
from qiotask.net import InetSocketAddress, NetListener, SocketAddress, SocketChannel, TLSChannel

from ..conftest import LoopRunner
from .conftest import Certs, run_task

#: Upper bound for every wait; a passing test waits far less.
TIMEOUT = 5.0
HandshakeResult = tuple[TLSChannel, "BaseException | None", int]


# -- helpers ----------------------------------------------------------------------


class Closer:
    """Things with close() that the test made, closed after it."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def __call__(self, item: Any) -> Any:
        self.items.append(item)
        return item


@pytest.fixture
def closer() -> Iterator[Closer]:
    made = Closer()
    yield made
    for item in reversed(made.items):
        item.close()


class TLSServer:
    """A NetListener on 127.0.0.1 whose client function starts a server
    handshake for each client, recording ``(tls, err, thread)`` per end."""

    def __init__(self, runner: LoopRunner, ssl_context: ssl.SSLContext, timeout: float | None = None) -> None:
        self.runner = runner
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.sessions: list[TLSChannel] = []
        self.tasks: list[qiotask.Task[TLSChannel]] = []
        self.results: list[HandshakeResult] = []
        self.listener = NetListener(context=runner.context, name="tls-server")
        self.listener.open_sync("127.0.0.1:0", 8)
        self.address: SocketAddress = self.listener.addresses[0]
        self.listener.set_client_func(self._on_client)

    def _on_client(self, _listener: NetListener, channel: SocketChannel, _opaque: Any) -> None:
        tls = TLSChannel.new_server(channel, self.ssl_context)
        self.sessions.append(tls)
        self.tasks.append(tls.handshake(self._done, timeout=self.timeout))

    def _done(self, tls: TLSChannel, err: BaseException | None, _opaque: Any) -> None:
        self.results.append((tls, err, threading.get_ident()))

    def wait_result(self) -> HandshakeResult:
        """Run the loop until the first server handshake ended; its result."""
        self.runner.run_until(lambda: bool(self.results), TIMEOUT)
        return self.results[0]

    def close(self) -> None:
        running = [task for task in self.tasks if not task.done()]
        for task in running:
            task.cancel()
        if running:
            self.runner.run_until(lambda: all(task.done() for task in running), TIMEOUT)
        for tls in self.sessions:
            tls.close()
        self.listener.close()


@pytest.fixture
def make_server(runner: LoopRunner, closer: Closer) -> Callable[..., TLSServer]:
    def make(ssl_context: ssl.SSLContext, timeout: float | None = None) -> TLSServer:
        return closer(TLSServer(runner, ssl_context, timeout))  # type: ignore[no-any-return]

    return make


def tls_client(
    runner: LoopRunner, closer: Closer, address: SocketAddress, ssl_context: ssl.SSLContext, hostname: str | None
) -> TLSChannel:
    """The client side of a TLS session to ``address``, connected, before its handshake."""
    channel = closer(SocketChannel())
    assert run_task(runner, channel.connect_async(address)) is channel
    return TLSChannel.new_client(channel, ssl_context, hostname)


class Recorder:
    """A handshake func recording ``(tls, err, thread)``."""

    def __init__(self) -> None:
        self.calls: list[HandshakeResult] = []

    def __call__(self, tls: TLSChannel, err: BaseException | None, _opaque: Any) -> None:
        self.calls.append((tls, err, threading.get_ident()))


def recording_context(make: Callable[[], ssl.SSLContext], steps: list[int]) -> ssl.SSLContext:
    """``make()``, whose TLS sockets record the thread of each do_handshake() step."""

    class RecordingSSLSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            steps.append(threading.get_ident())
            super().do_handshake(block)

    made = make()
    made.sslsocket_class = RecordingSSLSocket
    return made


def tls_pair(runner: LoopRunner, closer: Closer, certs: Certs) -> tuple[TLSChannel, TLSChannel]:
    """(server, client): TLS over a socketpair, both handshakes done."""
    a, b = socket.socketpair()
    server = closer(TLSChannel.new_server(closer(SocketChannel(a)), certs.server_context()))
    client = closer(TLSChannel.new_client(closer(SocketChannel(b)), certs.client_context(), "localhost"))
    tasks = [server.handshake(timeout=TIMEOUT), client.handshake(timeout=TIMEOUT)]
    runner.run_until(lambda: all(task.done() for task in tasks), TIMEOUT)
    assert [task.exception() for task in tasks] == [None, None]
    return server, client


def spin(runner: LoopRunner, iterations: int) -> None:
    """Run ``iterations`` iterations of the loop (to show that something
    does not happen)."""
    left = [iterations]

    def tick() -> bool:
        left[0] -= 1
        return left[0] <= 0

    runner.run_until(tick, TIMEOUT)


def silent_peer(closer: Closer) -> socket.socket:
    """A listening socket that nobody serves: its clients wait in the backlog."""
    return closer(socket.create_server(("127.0.0.1", 0)))  # type: ignore[no-any-return]


def address_of(sock: socket.socket) -> SocketAddress:
    host, port = sock.getsockname()[:2]
    return InetSocketAddress(host, port)


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


class Sender:
    """Writes ``data`` through ``tls`` from an IO_OUT watch, retrying with
    the same bytes when a write takes nothing; counts short writes."""

    def __init__(self, tls: TLSChannel, data: bytes) -> None:
        self.view = memoryview(data)
        self.sent = 0
        self.nones = 0
        self.partial = 0
        self.errors: list[BaseException] = []
        tls.add_watch(qiotask.IO_OUT, self._on_out)

    @property
    def done(self) -> bool:
        return self.sent == len(self.view) or bool(self.errors)

    def _on_out(self, tls: TLSChannel, _cond: qiotask.IOCondition) -> bool:
        left = self.view[self.sent :]
        try:
            count = tls.write(left)
        except OSError as exc:
            self.errors.append(exc)
            return False
        if count is None:
            self.nones += 1
            return True
        if count < len(left):
            self.partial += 1
        self.sent += count
        return not self.done


class Receiver:
    """Reads ``expected`` bytes through ``tls``, at most ``chunk`` per call
    of its IO_IN watch; notes the calls made while the kernel had nothing
    to read but TLS held decrypted bytes (the watch's drain)."""

    def __init__(self, tls: TLSChannel, expected: int, chunk: int) -> None:
        self.expected = expected
        self.chunk = chunk
        self.data = bytearray()
        self.reads: list[int] = []
        self.drained = 0
        self.errors: list[BaseException] = []
        tls.add_watch(qiotask.IO_IN, self._on_in)

    @property
    def done(self) -> bool:
        return len(self.data) >= self.expected or bool(self.errors)

    def _on_in(self, tls: TLSChannel, _cond: qiotask.IOCondition) -> bool:
        if tls.sock.pending() and not readable(tls.sock):
            self.drained += 1
        try:
            data = tls.read(self.chunk)
        except OSError as exc:
            self.errors.append(exc)
            return False
        if data is None:
            return True
        if not data:
            self.errors.append(EOFError(f"end of stream after {len(self.data)} bytes"))
            return False
        self.reads.append(len(data))
        self.data.extend(data)
        return not self.done


# -- a handshake that succeeds -----------------------------------------------------


def test_handshake_and_exchange(
    ctx: qiotask.MainContext, runner: LoopRunner, certs: Certs, make_server: Callable[..., TLSServer], closer: Closer
) -> None:
    """Both handshakes succeed, their funcs on the loop thread; TLS 1.2 or
    1.3 with the server's certificate; a message each way."""
    server = make_server(certs.server_context())
    client = tls_client(runner, closer, server.address, certs.client_context(), "localhost")
    assert client.version() is None
    assert "before handshake" in repr(client)
    func = Recorder()
    task = client.handshake(func, timeout=TIMEOUT)
    assert run_task(runner, task) is client
    assert func.calls == [(client, None, threading.get_ident())]
    _tls, err, thread = server.wait_result()
    assert err is None and thread == threading.get_ident()
    peer = server.sessions[0]
    assert peer.server_side and not client.server_side

    assert client.version() in ("TLSv1.2", "TLSv1.3")
    assert peer.version() == client.version()
    assert client.cipher() is not None
    assert ("DNS", "localhost") in client.getpeercert()["subjectAltName"]
    assert f"client {client.version()}" in repr(client)
    assert client.fileno() == client.channel.fileno()

    to_server = Receiver(peer, 4, 4096)
    to_client = Receiver(client, 4, 4096)
    Sender(client, b"ping")
    Sender(peer, b"pong")
    runner.run_until(lambda: to_server.done and to_client.done, TIMEOUT)
    assert (bytes(to_server.data), bytes(to_client.data)) == (b"ping", b"pong")
    assert to_server.errors == to_client.errors == []

    client.close()
    client.close()
    assert client.version() is None
    with pytest.raises(ValueError):
        client.read()
    with pytest.raises(ValueError):
        client.write(b"x")


def read_to_the_end(peer: TLSChannel) -> list[bytes]:
    """Watch ``peer`` and read until its end of stream; returns the list the
    reads are appended to (``[b""]`` once the stream ended)."""
    got: list[bytes] = []

    def on_in(tls: TLSChannel, _cond: qiotask.IOCondition) -> bool:
        data = tls.read()
        if data is None:
            return True
        got.append(data)
        return bool(data)

    peer.add_watch(qiotask.IO_IN, on_in)
    return got


@pytest.mark.parametrize("how", ["close_notify", "plain close"])
def test_end_of_stream_reads_empty(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    certs: Certs,
    make_server: Callable[..., TLSServer],
    closer: Closer,
    how: str,
) -> None:
    """The peer's close reads as b"", whether it sent TLS's close_notify
    (TLSChannel.close() on the loop thread does) or just closed the socket
    with nothing it was sent left unread.  The server sends no TLS 1.3
    session tickets here: a client that closes before it has read them
    resets the connection instead, which the next test covers."""
    server_context = certs.server_context()
    server_context.num_tickets = 0
    server = make_server(server_context)
    client = tls_client(runner, closer, server.address, certs.client_context(), "localhost")
    run_task(runner, client.handshake(timeout=TIMEOUT))
    assert server.wait_result()[1] is None
    peer = server.sessions[0]
    got = read_to_the_end(peer)
    if how == "close_notify":
        client.close()
    else:
        client.channel.close()
    runner.run_until(lambda: bool(got), TIMEOUT)
    assert got == [b""]


def test_a_reset_reads_as_end_of_stream_too(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    certs: Certs,
    make_server: Callable[..., TLSServer],
    closer: Closer,
) -> None:
    """A TLS 1.3 server sends session tickets after the handshake; a client
    that closes its socket while they sit unread makes its kernel reset the
    connection.  Python's ssl module reports that reset as a ragged end of
    stream before 3.13 and as ConnectionResetError from 3.13 on; a
    TLSChannel reads it as b"" on every version (docs/net.md).  (Whether
    the tickets have arrived when a client closes is a race; here the
    client waits until they have.)"""
    server = make_server(certs.server_context())
    client = tls_client(runner, closer, server.address, certs.client_context(), "localhost")
    run_task(runner, client.handshake(timeout=TIMEOUT))
    assert server.wait_result()[1] is None
    assert client.version() == "TLSv1.3"
    peer = server.sessions[0]
    readable, _, _ = select.select([client.fileno()], [], [], TIMEOUT)
    assert readable, "the server's session tickets never reached the client"
    got = read_to_the_end(peer)
    client.channel.close()
    runner.run_until(lambda: bool(got), TIMEOUT)
    assert got == [b""]


def test_close_on_the_loop_thread_sends_close_notify(
    ctx: qiotask.MainContext, runner: LoopRunner, certs: Certs, make_server: Callable[..., TLSServer], closer: Closer
) -> None:
    """close() on the loop thread after a handshake sends TLS's close_notify
    alert before the end of stream: the peer's raw socket reads one record,
    then EOF (a bare close would read EOF at once)."""
    server = make_server(certs.server_context())
    client = tls_client(runner, closer, server.address, certs.client_context(), "localhost")
    run_task(runner, client.handshake(timeout=TIMEOUT))
    assert server.wait_result()[1] is None
    peer_fd = server.sessions[0].fileno()
    client.close()
    runner.run_until(lambda: readable(server.sessions[0].sock), TIMEOUT)
    record = os.read(peer_fd, 4096)
    assert record[:1] == b"\x17" or record[:1] == b"\x15", record  # an (encrypted) alert record
    runner.run_until(lambda: readable(server.sessions[0].sock), TIMEOUT)
    assert os.read(peer_fd, 4096) == b""


def test_one_mebibyte_each_way(
    ctx: qiotask.MainContext, runner: LoopRunner, certs: Certs, make_server: Callable[..., TLSServer], closer: Closer
) -> None:
    """1 MiB each way at once: writes come back short (None) and are
    retried, reads take a part of a record at a time, and the IO_IN watch
    is called again for decrypted bytes the socket no longer signals."""
    server = make_server(certs.server_context())
    client = tls_client(runner, closer, server.address, certs.client_context(), "localhost")
    run_task(runner, client.handshake(timeout=TIMEOUT))
    assert server.wait_result()[1] is None
    peer = server.sessions[0]

    # A small send buffer (loopback's takes 1 MiB at once): writes wait.  (A
    # small receive buffer would slow some TCP stacks down to a crawl.)
    for tls in (client, peer):
        tls.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    size = 1 << 20
    up, down = os.urandom(size), os.urandom(size)
    # 1000 does not divide a TLS record (16 KiB): every record is split.
    received_up = Receiver(peer, size, 1000)
    received_down = Receiver(client, size, 1000)
    sent_up = Sender(client, up)
    sent_down = Sender(peer, down)
    parts = (received_up, received_down, sent_up, sent_down)
    runner.run_until(lambda: all(part.done for part in parts), 10.0)

    for part in parts:
        assert part.errors == []
    assert hashlib.sha256(received_up.data).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(received_down.data).digest() == hashlib.sha256(down).digest()
    for sender in (sent_up, sent_down):
        assert sender.nones + sender.partial > 0, "1 MiB went out in one write: nothing was exercised"
    for receiver in (received_up, received_down):
        assert max(receiver.reads) <= 1000
        assert len(receiver.reads) >= size // 1000
        assert receiver.drained > 0, "no call came from TLS's buffered bytes alone"


def test_in_watch_removed_when_fn_raises_during_a_drain(
    ctx: qiotask.MainContext, runner: LoopRunner, certs: Certs, closer: Closer, caplog: pytest.LogCaptureFixture
) -> None:
    """An IO_IN watch whose fn raises in a call for TLS's buffered bytes (a
    drain call): the exception is logged and the watch removed, as an fd
    watch whose function raises is; fn is not called again, not for the
    bytes left buffered, nor for more data."""
    server, client = tls_pair(runner, closer, certs)
    boom = RuntimeError("boom in the first drain call")
    calls: list[bool] = []  # per call: whether the socket itself was readable

    def one_byte_at_a_time(tls: TLSChannel, _cond: qiotask.IOCondition) -> bool:
        calls.append(readable(tls.sock))
        if len(calls) == 2:
            raise boom
        tls.read(1)
        return True

    with caplog.at_level(logging.ERROR, logger="qiotask"):
        watch = server.add_watch(qiotask.IO_IN, one_byte_at_a_time)
        assert client.write(b"0123456789") == 10
        runner.run_until(lambda: len(calls) >= 2, TIMEOUT)
        assert calls == [True, False]  # the second call was a drain call
        assert watch.removed
        assert server.sock.pending() == 9

        assert client.write(b"ABCDEFGHIJ") == 10
        assert select.select([server.sock], [], [], TIMEOUT)[0]
        spin(runner, 20)
    assert len(calls) == 2
    reports = [r for r in caplog.records if r.exc_info and r.exc_info[1] is boom]
    assert len(reports) == 1 and reports[0].levelno == logging.ERROR


# -- handshakes that fail -------------------------------------------------------------


def test_wrong_hostname(
    ctx: qiotask.MainContext, runner: LoopRunner, certs: Certs, make_server: Callable[..., TLSServer], closer: Closer
) -> None:
    """A certificate not valid for the host name asked: the client handshake
    ends with SSLCertVerificationError on the loop thread; the channel stays
    open; the server's handshake fails too."""
    server = make_server(certs.server_context())
    client = tls_client(runner, closer, server.address, certs.client_context(), "wrong.example")
    func = Recorder()
    task = client.handshake(func, timeout=TIMEOUT)
    with pytest.raises(ssl.SSLCertVerificationError):
        run_task(runner, task)
    assert len(func.calls) == 1
    _tls, err, thread = func.calls[0]
    assert isinstance(err, ssl.SSLCertVerificationError)
    assert "wrong.example" in str(err)
    assert thread == threading.get_ident()
    assert not client.channel.closed
    assert server.wait_result()[1] is not None


def test_server_with_a_plain_client(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    certs: Certs,
    make_server: Callable[..., TLSServer],
    closer: Closer,
) -> None:
    """A client that sends plain HTTP and waits: the server handshake ends
    with ssl.SSLError on the loop thread."""
    server = make_server(certs.server_context())
    assert isinstance(server.address, InetSocketAddress)
    plain = closer(socket.create_connection((server.address.host, server.address.port), timeout=TIMEOUT))
    plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
    _tls, err, thread = server.wait_result()
    assert isinstance(err, ssl.SSLError), repr(err)
    assert thread == threading.get_ident()


def test_client_with_a_plain_server(ctx: qiotask.MainContext, runner: LoopRunner, certs: Certs, closer: Closer) -> None:
    """A server that writes plain text and closes: the client handshake
    ends with ssl.SSLError or OSError (whichever the peer's close gives)."""
    text = b"HTTP/1.0 400 Bad Request\r\n\r\nnot TLS\r\n"

    def plain_server(_listener: NetListener, channel: SocketChannel, _opaque: Any) -> None:
        assert channel.write(text) == len(text)
        channel.close()

    listener = closer(NetListener(context=ctx))
    listener.open_sync("127.0.0.1:0", 8)
    listener.set_client_func(plain_server)
    client = tls_client(runner, closer, listener.addresses[0], certs.client_context(), "localhost")
    func = Recorder()
    task = client.handshake(func, timeout=TIMEOUT)
    with pytest.raises(OSError) as info:
        run_task(runner, task)
    assert not isinstance(info.value, qiotask.TaskError), "the handshake should fail, not time out"
    assert func.calls == [(client, info.value, threading.get_ident())]


def test_silent_server_times_out(ctx: qiotask.MainContext, runner: LoopRunner, certs: Certs, closer: Closer) -> None:
    """A server that never answers: handshake(timeout=0.2) ends with
    TaskTimeout after about that long."""
    peer = silent_peer(closer)
    client = tls_client(runner, closer, address_of(peer), certs.client_context(), "localhost")
    func = Recorder()
    start = time.monotonic()
    task = client.handshake(func, timeout=0.2)
    with pytest.raises(qiotask.TaskTimeout):
        run_task(runner, task)
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 3.0
    assert len(func.calls) == 1 and isinstance(func.calls[0][1], qiotask.TaskTimeout)
    assert func.calls[0][2] == threading.get_ident()


def test_silent_client_times_out(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    certs: Certs,
    make_server: Callable[..., TLSServer],
    closer: Closer,
) -> None:
    """A client that connects and says nothing: the server handshake with
    a timeout ends with TaskTimeout."""
    server = make_server(certs.server_context(), timeout=0.2)
    assert isinstance(server.address, InetSocketAddress)
    closer(socket.create_connection((server.address.host, server.address.port), timeout=TIMEOUT))
    _tls, err, thread = server.wait_result()
    assert isinstance(err, qiotask.TaskTimeout)
    assert thread == threading.get_ident()


def test_cancel_during_the_handshake(
    ctx: qiotask.MainContext, runner: LoopRunner, certs: Certs, closer: Closer
) -> None:
    """task.cancel() while the client waits for the server's answer ends
    the handshake with TaskCancelled, on the loop thread."""
    listening = silent_peer(closer)
    client = tls_client(runner, closer, address_of(listening), certs.client_context(), "localhost")
    peer = closer(listening.accept()[0])
    func = Recorder()
    task = client.handshake(func)
    runner.run_until(lambda: readable(peer), TIMEOUT)  # the ClientHello was sent
    assert not task.done()
    assert task.cancel()
    with pytest.raises(qiotask.TaskCancelled):
        run_task(runner, task)
    assert len(func.calls) == 1 and isinstance(func.calls[0][1], qiotask.TaskCancelled)
    assert func.calls[0][2] == threading.get_ident()
    with pytest.raises(qiotask.TaskStateError):
        client.handshake()


@pytest.mark.parametrize("which", ["tls", "socket channel"])
def test_close_during_the_handshake(
    ctx: qiotask.MainContext, runner: LoopRunner, certs: Certs, closer: Closer, which: str
) -> None:
    """Closing the TLS channel, or the socket channel under it (here from
    another thread), while its handshake waits ends the handshake
    (TaskCancelled), not leaves it pending."""
    listening = silent_peer(closer)
    client = tls_client(runner, closer, address_of(listening), certs.client_context(), "localhost")
    peer = closer(listening.accept()[0])
    func = Recorder()
    task = client.handshake(func)
    runner.run_until(lambda: readable(peer), TIMEOUT)
    close = client.close if which == "tls" else client.channel.close
    closing = threading.Thread(target=close, name="tls-closer")
    closing.start()
    closing.join(TIMEOUT)
    assert not closing.is_alive()
    with pytest.raises(qiotask.TaskCancelled):
        run_task(runner, task)
    assert len(func.calls) == 1 and func.calls[0][2] == threading.get_ident()
    assert client.channel.closed


@pytest.mark.parametrize("step", [1, 2])
def test_close_from_another_thread_during_a_handshake_step(
    ctx: qiotask.MainContext, runner: LoopRunner, certs: Certs, caplog: pytest.LogCaptureFixture, step: int
) -> None:
    """close() from another thread while a handshake step runs on the loop
    (forced: do_handshake closes the channel from another thread, and joins
    it, before it goes on): the socket is not closed under the step (no EBADF)
    and the step does not fail on the closed channel (nothing logged); the
    handshake ends with TaskCancelled, on the loop thread."""
    steps: list[int] = []
    failures: list[BaseException] = []
    closing: list[TLSChannel] = []

    class ClosingSSLSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            steps.append(threading.get_ident())
            if len(steps) == step:
                closing_thread = threading.Thread(target=closing[0].close, name="tls-closer")
                closing_thread.start()
                closing_thread.join(TIMEOUT)
                assert not closing_thread.is_alive()
            try:
                super().do_handshake(block)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except BaseException as exc:
                failures.append(exc)
                raise

    ssl_context = certs.client_context()
    ssl_context.sslsocket_class = ClosingSSLSocket
    a, peer = socket.socketpair()
    with peer:
        tls = TLSChannel.new_client(SocketChannel(a), ssl_context, "localhost")
        closing.append(tls)
        sock = tls.sock
        func = Recorder()
        destroyed: list[Any] = []
        with caplog.at_level(logging.WARNING, logger="qiotask"):
            task = tls.handshake(func, "opaque", destroyed.append)
            if step == 2:
                runner.run_until(lambda: readable(peer), TIMEOUT)  # step 1 sent the ClientHello
                assert not task.done()
                peer.sendall(b"\x16")  # a record's first byte: step 2 runs, and wants more
            with pytest.raises(qiotask.TaskCancelled):
                run_task(runner, task, TIMEOUT)
            # The socket is closed on the loop thread, after the step.
            runner.run_until(lambda: sock.fileno() == -1, TIMEOUT)
        assert len(steps) == step and set(steps) == {threading.get_ident()}
        assert failures == []
        assert len(func.calls) == 1
        _tls, err, thread = func.calls[0]
        assert isinstance(err, qiotask.TaskCancelled) and thread == threading.get_ident()
        assert destroyed == ["opaque"]
        assert tls.channel.closed
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not any("Bad file descriptor" in r.getMessage() or r.exc_info for r in caplog.records)


def test_handshake_on_a_closed_context(certs: Certs) -> None:
    """A handshake whose context is already closed cannot run a step: the
    task completes at once with ContextClosedError, func is not called
    (its loop is gone) and destroy runs once -- no task left pending, no
    ResourceWarning."""
    closed = qiotask.MainContext(name="closed")
    closed.close()
    a, peer = socket.socketpair()
    with peer:
        tls = TLSChannel.new_client(SocketChannel(a, context=closed), certs.client_context(), "localhost")
        try:
            func = Recorder()
            destroyed: list[Any] = []
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                task = tls.handshake(func, "opaque", destroyed.append)
                assert task.done()
                assert isinstance(task.exception(), qiotask.ContextClosedError)
                assert func.calls == []
                assert destroyed == ["opaque"]
                del task
                gc.collect()
            assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
            assert destroyed == ["opaque"]
            assert not readable(peer)  # no step ran: no ClientHello
        finally:
            tls.close()


@pytest.mark.parametrize("ending", ["channel closed", "cancelled off the loop"])
def test_handshake_whose_context_closes_while_it_waits(certs: Certs, ending: str) -> None:
    """A handshake waiting for its peer when its loop goes away cannot
    notice (loops give no word when they close); it completes -- destroy
    once, no func -- when the channel is closed, as docs/net.md says.  A
    cancel from another thread hands the end to the loop; if its context
    closes before the loop runs it, the end runs then."""
    own = qiotask.MainContext(name="closing")
    runner = LoopRunner(own)
    steps: list[int] = []
    a, peer = socket.socketpair()
    with peer:
        tls = TLSChannel.new_client(
            SocketChannel(a, context=own), recording_context(certs.client_context, steps), "localhost"
        )
        destroyed: list[Any] = []
        called: list[Any] = []
        task = tls.handshake(lambda *args: called.append(args), "opaque", destroyed.append)
        try:
            runner.run_until(lambda: bool(steps), TIMEOUT)  # step 1 ran: waits for the peer
            if ending == "channel closed":
                own.close()
                assert not task.done()
                tls.close()
            else:
                canceller = threading.Thread(target=task.cancel, name="canceller")
                canceller.start()
                canceller.join(TIMEOUT)
                assert not task.done()  # the end is queued to the loop, which does not run again
                own.close()
            assert task.done()
            assert isinstance(task.exception(), qiotask.TaskCancelled)  # a cancel wins, as close() is one
            assert destroyed == ["opaque"] and called == []
        finally:
            tls.close()
            own.close()
            task.exception()


def test_handshake_twice(ctx: qiotask.MainContext, runner: LoopRunner, certs: Certs, closer: Closer) -> None:
    """A second handshake() raises TaskStateError, while the first runs."""
    client = tls_client(runner, closer, address_of(silent_peer(closer)), certs.client_context(), "localhost")
    first = client.handshake()
    with pytest.raises(qiotask.TaskStateError):
        client.handshake()
    first.cancel()
    with pytest.raises(qiotask.TaskCancelled):
        run_task(runner, first)


# -- no worker thread ----------------------------------------------------------------


def test_handshake_runs_on_the_loop_thread_only(
    ctx: qiotask.MainContext, runner: LoopRunner, certs: Certs, make_server: Callable[..., TLSServer], closer: Closer
) -> None:
    """Every do_handshake() step of both sides runs on the loop thread, in
    more than one step (driven by fd watches), none inside handshake()
    itself; no pool job is submitted."""
    client_steps: list[int] = []
    server_steps: list[int] = []
    server = make_server(recording_context(certs.server_context, server_steps))
    client = tls_client(
        runner, closer, server.address, recording_context(certs.client_context, client_steps), "localhost"
    )
    pool = default_pool()
    submitted = pool.statistics()["submitted"]
    task = client.handshake()
    assert client_steps == []
    run_task(runner, task)
    assert server.wait_result()[1] is None
    assert pool.statistics()["submitted"] == submitted
    me = threading.get_ident()
    assert len(client_steps) >= 2 and set(client_steps) == {me}
    assert len(server_steps) >= 2 and set(server_steps) == {me}


# -- argument checks -----------------------------------------------------------------


@pytest.fixture
def plain_channel() -> Iterator[SocketChannel]:
    """A SocketChannel on one end of a connected socketpair (no loop needed)."""
    a, b = socket.socketpair()
    channel = SocketChannel(a)
    try:
        yield channel
    finally:
        channel.close()
        b.close()


def test_new_client_checks(plain_channel: SocketChannel, certs: Certs) -> None:
    """Host name None with a context that checks host names: ValueError;
    wrong types: TypeError; a closed or already TLS channel: ValueError."""
    checking = certs.client_context()
    with pytest.raises(ValueError, match="hostname"):
        TLSChannel.new_client(plain_channel, checking, None)
    with pytest.raises(TypeError, match="channel"):
        TLSChannel.new_client(plain_channel.sock, checking, "localhost")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ssl_context"):
        TLSChannel.new_client(plain_channel, "context", "localhost")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hostname"):
        TLSChannel.new_client(plain_channel, checking, b"localhost")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="channel"):
        TLSChannel.new_server(None, certs.server_context())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ssl_context"):
        TLSChannel.new_server(plain_channel, None)  # type: ignore[arg-type]

    lenient = certs.client_context()
    lenient.check_hostname = False
    tls = TLSChannel.new_client(plain_channel, lenient, None)
    assert plain_channel.sock is tls.sock
    with pytest.raises(ValueError, match="already"):
        TLSChannel.new_client(plain_channel, lenient, None)

    closed = SocketChannel()
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        TLSChannel.new_server(closed, certs.server_context())


@pytest.mark.parametrize("hostname", ["bad..host", "a\0b", "-" * 64 + ".example"])
def test_bad_hostname_leaves_the_channel_as_it_was(plain_channel: SocketChannel, certs: Certs, hostname: str) -> None:
    """A host name that is no host name is a ValueError raised before the
    socket is wrapped: the channel keeps its socket and fd, and still works."""
    fd = plain_channel.fileno()
    with pytest.raises(ValueError, match="not a valid host name"):
        TLSChannel.new_client(plain_channel, certs.client_context(), hostname)
    assert plain_channel.fileno() == fd and not isinstance(plain_channel.sock, ssl.SSLSocket)
    assert plain_channel.write(b"still usable") == 12


def test_handshake_checks(plain_channel: SocketChannel, certs: Certs) -> None:
    """A bad timeout is refused before any handshake starts."""
    tls = TLSChannel.new_server(plain_channel, certs.server_context())
    with pytest.raises(ValueError):
        tls.handshake(timeout=-1)
    with pytest.raises(TypeError):
        tls.handshake(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tls.handshake(timeout=True)
    with pytest.raises(TypeError):
        tls.add_watch(qiotask.IO_IN, "not callable")  # type: ignore[arg-type]


@pytest.mark.parametrize("condition", ["in", None])
def test_add_watch_checks_the_condition(plain_channel: SocketChannel, certs: Certs, condition: Any) -> None:
    """A condition that is no IOCondition: TypeError (as SocketChannel's
    add_watch gives), and no watch is added."""
    tls = TLSChannel.new_server(plain_channel, certs.server_context())
    with pytest.raises(TypeError, match="condition must be an IOCondition"):
        tls.add_watch(condition, lambda *_: True)


def test_getpeercert_after_close_says_the_channel_is_closed() -> None:
    a, b = socket.socketpair()
    b.close()
    channel = TLSChannel.new_client(SocketChannel(a), ssl.create_default_context(), "localhost")
    channel.close()
    with pytest.raises(ValueError, match=r"^getpeercert: the channel is closed"):
        channel.getpeercert()
