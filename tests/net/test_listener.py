"""NetListener on real loops with real sockets on loopback: opening on every
kind of address (sync and async), one port for every address of a name,
200 clients served on the loop thread without a thread each, client function
replacement and its destroy notifiers, a client function that raises,
wait_client, disconnect, and argument checks.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import logging
import math
import os
import select
import selectors
import socket
import stat
import sys
import threading
import time
import types
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import qiotask
from qiotask._pool import default_pool
from qiotask.net import DNSResolver, InetSocketAddress, NetListener, SocketAddress, SocketChannel, UnixSocketAddress
from qiotask.net._channel import listen_socket

from ..conftest import LoopRunner, join, start_thread, wait_for
from .conftest import Blocker, Completion, needs_ipv6, run_task

#: Upper bound for every blocking client call; a passing test waits far less.
TIMEOUT = 5.0
GREETING = b"hello from the listener\n"

needs_abstract = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract Unix sockets are Linux's")

ADDRESS_KINDS = [
    pytest.param("ipv4", id="ipv4"),
    pytest.param("localhost", id="localhost"),
    pytest.param("ipv6", id="ipv6", marks=needs_ipv6),
    pytest.param("unix", id="unix"),
    pytest.param("abstract", id="abstract", marks=needs_abstract),
]


# -- helpers ----------------------------------------------------------------------


@pytest.fixture
def listeners() -> Iterator[Callable[..., NetListener]]:
    """Makes NetListeners, all closed after the test (request it after
    ``ctx``/``runner``, so that they close while the loop still exists)."""
    made: list[NetListener] = []

    def make(**kwargs: Any) -> NetListener:
        listener = NetListener(**kwargs)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    """Plain client sockets of the test, closed after it."""
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def connect(address: SocketAddress, clients: list[socket.socket] | None = None) -> socket.socket:
    """A blocking client socket connected to ``address`` (it returns once the
    kernel queued the connection, before anyone accepts it)."""
    sockaddr: Any
    if isinstance(address, InetSocketAddress):
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sockaddr = (address.host, address.port)
    else:
        assert isinstance(address, UnixSocketAddress)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sockaddr = "\0" + address.path if address.abstract else address.path
    if clients is not None:
        clients.append(sock)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until its peer closes (bounded by its timeout)."""
    chunks: list[bytes] = []
    while True:
        data = sock.recv(4096)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


class Greeter:
    """A client function that writes a greeting and closes the client,
    recording the channel's peer and the thread it ran on."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.opaques: list[Any] = []

    def __call__(self, listener: NetListener, channel: SocketChannel, opaque: Any) -> None:
        self.threads.append(threading.get_ident())
        self.opaques.append(opaque)
        assert isinstance(listener, NetListener)
        assert channel.write(GREETING) == len(GREETING)
        channel.close()

    @property
    def calls(self) -> int:
        return len(self.threads)


def address_text(kind: str, tmp_path: Path) -> str:
    if kind == "ipv4":
        return "127.0.0.1:0"
    if kind == "localhost":
        return "localhost:0"
    if kind == "ipv6":
        return "[::1]:0"
    if kind == "unix":
        return f"unix:{tmp_path / 'l.sock'}"
    return f"unix:@qiotask-test-{os.getpid()}-{uuid.uuid4().hex}"


def check_addresses(kind: str, text: str, addresses: list[SocketAddress]) -> None:
    assert addresses, "the listener listens nowhere"
    if kind in ("unix", "abstract"):
        assert addresses == [SocketAddress.parse(text)]
        return
    assert all(isinstance(a, InetSocketAddress) for a in addresses)
    hosts = {a.host for a in addresses if isinstance(a, InetSocketAddress)}
    ports = {a.port for a in addresses if isinstance(a, InetSocketAddress)}
    expected = {"ipv4": {"127.0.0.1"}, "ipv6": {"::1"}, "localhost": {"127.0.0.1", "::1"}}[kind]
    assert hosts <= expected
    assert len(ports) == 1 and ports != {0}, f"one fresh port for every address, got {addresses}"


def is_pending(listener: NetListener) -> bool:
    """Whether a connection waits in the backlog of one of the listener's sockets."""
    readable, _, _ = select.select(listener.channels, [], [], 0)
    return bool(readable)


def run_for(runner: LoopRunner, seconds: float) -> None:
    """Run the loop for ``seconds`` (to show that something does not happen)."""
    runner.context.timeout_add(seconds * 1000, runner.quit)
    runner.run(TIMEOUT)


# -- opening ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ADDRESS_KINDS)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_open_and_serve(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    listeners: Callable[..., NetListener],
    clients: list[socket.socket],
    tmp_path: Path,
    kind: str,
    mode: str,
) -> None:
    """open_sync/open_async listen on the address (a fresh port for port 0);
    a client to each address gets served by the client function on the loop
    thread, with the opaque given."""
    text = address_text(kind, tmp_path)
    listener = listeners(name="under-test")
    if mode == "sync":
        listener.open_sync(text, 8)
    else:
        finished: list[tuple[Any, BaseException | None, int]] = []
        task = listener.open_async(text, 8, lambda src, err, _o: finished.append((src, err, threading.get_ident())))
        assert run_task(runner, task) is listener
        assert finished == [(listener, None, threading.get_ident())]
    assert listener.connected
    addresses = listener.addresses
    check_addresses(kind, text, addresses)
    assert "under-test" in repr(listener)

    greeter = Greeter()
    listener.set_client_func(greeter, "opaque")
    socks = [connect(address, clients) for address in addresses]
    runner.run_until(lambda: greeter.calls == len(socks), TIMEOUT)
    for sock in socks:
        assert read_to_eof(sock) == GREETING
    assert greeter.threads == [threading.get_ident()] * len(socks)
    assert greeter.opaques == ["opaque"] * len(socks)


@needs_ipv6
def test_one_port_for_every_address_of_a_name(
    ctx: qiotask.MainContext, runner: LoopRunner, listeners: Callable[..., NetListener], clients: list[socket.socket]
) -> None:
    """A name standing for 127.0.0.1 and ::1 with port 0: open_sync listens
    on both, on one port, looked up passively; a client reaches each."""
    lookups: list[tuple[Any, ...]] = []

    def fake_getaddrinfo(host: str, port: int, family: int, kind: int, proto: int, flags: int) -> list[Any]:
        lookups.append((host, port, flags))
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("::1", port, 0, 0)),
        ]

    listener = listeners(resolver=DNSResolver(getaddrinfo=fake_getaddrinfo))
    listener.open_sync("dual.test:0", 8)
    assert len(lookups) == 1
    host, port, flags = lookups[0]
    assert (host, port) == ("dual.test", 0)
    assert flags & socket.AI_PASSIVE

    addresses = listener.addresses
    assert sorted(a.host for a in addresses if isinstance(a, InetSocketAddress)) == ["127.0.0.1", "::1"]
    ports = {a.port for a in addresses if isinstance(a, InetSocketAddress)}
    assert len(ports) == 1 and 0 not in ports

    greeter = Greeter()
    listener.set_client_func(greeter)
    socks = [connect(address, clients) for address in addresses]
    runner.run_until(lambda: greeter.calls == 2, TIMEOUT)
    assert [read_to_eof(sock) for sock in socks] == [GREETING, GREETING]


def test_open_async_reports_errors_on_the_loop_thread(
    ctx: qiotask.MainContext, runner: LoopRunner, listeners: Callable[..., NetListener]
) -> None:
    """A name that does not resolve fails the open task with gaierror,
    delivered to func on the loop thread; the listener stays unconnected."""

    def no_such_name(*_args: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    listener = listeners(resolver=DNSResolver(getaddrinfo=no_such_name))
    seen: list[tuple[Any, int]] = []
    task = listener.open_async("nowhere.test:0", 1, lambda _src, err, _o: seen.append((err, threading.get_ident())))
    with pytest.raises(socket.gaierror, match=r"nowhere\.test"):
        run_task(runner, task)
    assert len(seen) == 1
    assert isinstance(seen[0][0], socket.gaierror)
    assert seen[0][1] == threading.get_ident()
    assert not listener.connected


def test_open_async_cancelled_while_resolving(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    listeners: Callable[..., NetListener],
    blocker: Blocker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cancel() while the worker sits in getaddrinfo completes the open at
    once with TaskCancelled (func and destroy on the loop thread); the
    socket the worker listens on once released is closed again, never
    added for good: the listener is not connected and serves nobody."""
    made: list[socket.socket] = []
    listening = threading.Event()

    def recording_listen_socket(*args: Any, **kwargs: Any) -> socket.socket:
        sock = listen_socket(*args, **kwargs)
        made.append(sock)
        listening.set()
        return sock

    monkeypatch.setattr("qiotask.net._listener.listen_socket", recording_listen_socket)
    listener = listeners(resolver=DNSResolver(getaddrinfo=blocker))
    greeter = Greeter()
    listener.set_client_func(greeter)
    done = Completion()
    task = listener.open_async("blocked.test:0", 8, done.func, "open", done.destroy)
    assert blocker.entered.wait(TIMEOUT)
    assert task.cancel()
    assert task.done()  # at once: the blocked worker is abandoned
    with pytest.raises(qiotask.TaskCancelled):
        run_task(runner, task, TIMEOUT)
    assert isinstance(done.error(listener, "open"), qiotask.TaskCancelled)
    assert not listener.connected

    blocker.release.set()
    assert listening.wait(TIMEOUT)
    # Closed by the worker (on the loop thread, if the loop watched it).
    runner.run_until(lambda: all(sock.fileno() == -1 for sock in made), TIMEOUT)
    assert len(made) == 1
    assert not listener.connected
    assert listener.channels == [] and listener.addresses == []
    assert greeter.calls == 0


@pytest.mark.parametrize("stop", ["close", "disconnect"])
def test_close_during_open_async(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    listeners: Callable[..., NetListener],
    blocker: Blocker,
    stop: str,
) -> None:
    """close()/disconnect() while open_async's worker sits in getaddrinfo
    cancels the open (TaskCancelled at once); the socket the worker makes
    once released is closed: the listener stays disconnected."""
    listener = listeners(resolver=DNSResolver(getaddrinfo=blocker))
    done = Completion()
    task = listener.open_async("blocked.test:0", 8, done.func, "open", done.destroy)
    assert blocker.entered.wait(TIMEOUT)
    getattr(listener, stop)()
    with pytest.raises(qiotask.TaskCancelled):
        run_task(runner, task, TIMEOUT)
    assert isinstance(done.error(listener, "open"), qiotask.TaskCancelled)
    blocker.release.set()
    wait_for(lambda: default_pool().statistics()["busy"] == 0, what="the open's worker to return")
    assert not listener.connected and listener.addresses == []


def test_open_sync_address_in_use(listeners: Callable[..., NetListener]) -> None:
    """A port some socket already listens on: open_sync raises the OSError,
    saying which address."""
    first = listeners()
    first.open_sync("127.0.0.1:0")
    taken = first.addresses[0]
    with pytest.raises(OSError, match="cannot listen on") as info:
        listeners().open_sync(taken)
    assert info.value.errno == errno.EADDRINUSE


# -- many clients -----------------------------------------------------------------


def test_two_hundred_clients_at_once(
    ctx: qiotask.MainContext, runner: LoopRunner, listeners: Callable[..., NetListener]
) -> None:
    """4 client threads hold 50 connections each open at once; every one of
    the 200 is accepted and echoed on the loop thread, with no server
    thread per client."""
    threads_before = threading.active_count()
    loop_thread = threading.get_ident()
    served_on: list[int] = []
    echoed = [0]
    peak = [threads_before]

    def echo(_listener: NetListener, channel: SocketChannel, _opaque: Any) -> None:
        served_on.append(threading.get_ident())
        peak[0] = max(peak[0], threading.active_count())
        received = bytearray()

        def on_in(ch: SocketChannel, _cond: qiotask.IOCondition) -> bool:
            data = ch.read()
            if data is None:
                return True
            received.extend(data)
            if data and not received.endswith(b"\n"):
                return True
            reply = b"echo " + bytes(received)
            assert ch.write(reply) == len(reply)
            echoed[0] += 1
            ch.close()
            return False

        channel.add_watch(qiotask.IO_IN, on_in)

    listener = listeners(context=ctx)
    listener.open_sync("127.0.0.1:0", 256)
    listener.set_client_func(echo)
    address = listener.addresses[0]

    per_thread = 50
    replies: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def client_batch(batch: int) -> None:
        socks: list[socket.socket] = []
        try:
            for _ in range(per_thread):
                socks.append(connect(address))
            for i, sock in enumerate(socks):
                sock.sendall(f"{batch}-{i}\n".encode())
            for i, sock in enumerate(socks):
                replies[f"{batch}-{i}"] = read_to_eof(sock)
        except BaseException as exc:
            errors.append(exc)
        finally:
            for sock in socks:
                sock.close()

    workers = [start_thread(functools.partial(client_batch, b), f"client-{b}") for b in range(4)]
    try:
        runner.run_until(lambda: not any(w.is_alive() for w in workers), 10.0)
    finally:
        for worker in workers:
            join(worker)
    assert errors == []
    assert len(replies) == 200
    assert all(reply == b"echo " + key.encode() + b"\n" for key, reply in replies.items())
    assert len(served_on) == 200 and echoed[0] == 200
    assert set(served_on) == {loop_thread}
    # The 4 client threads, and a little slack for the pool: nothing like 200.
    assert peak[0] - threads_before <= 4 + 4, f"{peak[0] - threads_before} threads more while serving"


# -- the client function ------------------------------------------------------------


def test_set_client_func_replacement_and_destroy(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    listeners: Callable[..., NetListener],
    clients: list[socket.socket],
) -> None:
    """Replacing the client function runs the old destroy(opaque) once, on
    the loop thread (at once when replaced there); None stops accepting (a client waits in the
    backlog until a new function is set); close() runs the last destroy once."""
    destroyed: list[tuple[str, int]] = []

    def destroy(opaque: str) -> None:
        destroyed.append((opaque, threading.get_ident()))

    listener = listeners()
    listener.open_sync("127.0.0.1:0", 8)
    address = listener.addresses[0]
    first, second, third = Greeter(), Greeter(), Greeter()

    listener.set_client_func(first, "one", destroy)
    assert destroyed == []
    listener.set_client_func(second, "two", destroy)
    assert destroyed == [("one", threading.get_ident())]

    sock = connect(address, clients)
    runner.run_until(lambda: second.calls == 1, TIMEOUT)
    assert read_to_eof(sock) == GREETING
    assert first.calls == 0

    # Replaced from another thread: the destroy is queued to the loop thread
    # (a client call may be running there), and runs there, once.
    helper = start_thread(lambda: listener.set_client_func(None), "replacer")
    join(helper)
    assert destroyed[1:] == []
    runner.run_until(lambda: len(destroyed) == 2, TIMEOUT)
    assert destroyed[1:] == [("two", threading.get_ident())]

    waiting = connect(address, clients)
    run_for(runner, 0.1)
    assert second.calls == 1
    assert is_pending(listener), "with no client function, the client waits in the backlog"

    listener.set_client_func(third, "three", destroy)
    assert len(destroyed) == 2  # None had no destroy to run
    runner.run_until(lambda: third.calls == 1, TIMEOUT)
    assert read_to_eof(waiting) == GREETING
    assert third.opaques == ["three"]

    listener.close()
    assert destroyed[2:] == [("three", threading.get_ident())]
    listener.close()
    listener.set_client_func(None)
    assert len(destroyed) == 3
    assert (first.calls, second.calls, third.calls) == (0, 1, 1)


def test_client_func_replaced_from_within_stops_its_batch(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    listeners: Callable[..., NetListener],
    clients: list[socket.socket],
) -> None:
    """A client function that sets None for itself is not called again, nor
    after its destroy ran, even for clients accepted in the same batch: they
    wait for the next function."""
    listener = listeners()
    listener.open_sync("127.0.0.1:0", 8)
    address = listener.addresses[0]
    events: list[str] = []

    def once(lst: NetListener, channel: SocketChannel, _opaque: Any) -> None:
        events.append("call")
        channel.close()
        lst.set_client_func(None)

    listener.set_client_func(once, None, lambda _o: events.append("destroy"))
    socks = [connect(address, clients) for _ in range(3)]
    runner.run_until(lambda: bool(events), TIMEOUT)
    run_for(runner, 0.05)
    assert events == ["call", "destroy"]

    greeter = Greeter()
    listener.set_client_func(greeter)
    runner.run_until(lambda: greeter.calls == 2, TIMEOUT)
    replies = sorted(read_to_eof(sock) for sock in socks)
    assert replies == [b"", GREETING, GREETING]


@pytest.mark.parametrize("how", ["set_client_func(None)", "close()"])
def test_client_func_dropped_from_another_thread_while_it_runs(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    listeners: Callable[..., NetListener],
    clients: list[socket.socket],
    how: str,
) -> None:
    """set_client_func(None) or close() from another thread while the
    client function runs on the loop: its destroy(opaque) runs after it
    returned, on the loop thread, once -- never under its feet."""
    listener = listeners()
    listener.open_sync("127.0.0.1:0", 8)
    events: list[tuple[str, int]] = []
    opaque = {"alive": True}
    running, dropped = threading.Event(), threading.Event()

    def client_func(_listener: NetListener, channel: SocketChannel, op: dict[str, bool]) -> None:
        running.set()
        assert dropped.wait(TIMEOUT)
        events.append(("returned" if op["alive"] else "returned after destroy", threading.get_ident()))
        channel.close()

    def destroy(op: dict[str, bool]) -> None:
        op["alive"] = False
        events.append(("destroy", threading.get_ident()))

    def drop() -> None:
        try:
            assert running.wait(TIMEOUT)
            if how == "close()":
                listener.close()
            else:
                listener.set_client_func(None)
        finally:
            dropped.set()

    listener.set_client_func(client_func, opaque, destroy)
    dropper = start_thread(drop, "dropper")
    try:
        sock = connect(listener.addresses[0], clients)
        runner.run_until(lambda: any(event == "destroy" for event, _ in events), TIMEOUT)
    finally:
        dropped.set()
        join(dropper)
    me = threading.get_ident()
    assert events == [("returned", me), ("destroy", me)]
    assert read_to_eof(sock) == b""
    listener.close()
    assert events == [("returned", me), ("destroy", me)]


def test_client_func_that_raises(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    listeners: Callable[..., NetListener],
    clients: list[socket.socket],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception from the client function is logged on the qiotask
    logger, the client's channel closed (it reads end of stream), and the
    next client is served."""
    boom = RuntimeError("boom from the client function")
    greeter = Greeter()
    channels: list[SocketChannel] = []

    def flaky(lst: NetListener, channel: SocketChannel, opaque: Any) -> None:
        channels.append(channel)
        if len(channels) == 1:
            raise boom
        greeter(lst, channel, opaque)

    listener = listeners(name="flaky")
    listener.open_sync("127.0.0.1:0", 8)
    listener.set_client_func(flaky)
    address = listener.addresses[0]

    with caplog.at_level(logging.ERROR, logger="qiotask"):
        first = connect(address, clients)
        runner.run_until(lambda: len(channels) == 1, TIMEOUT)
        assert read_to_eof(first) == b""
        assert channels[0].closed

        second = connect(address, clients)
        runner.run_until(lambda: greeter.calls == 1, TIMEOUT)
        assert read_to_eof(second) == GREETING

    reports = [r for r in caplog.records if r.name == "qiotask" and r.exc_info and r.exc_info[1] is boom]
    assert len(reports) == 1
    assert "flaky" in reports[0].getMessage()
    assert reports[0].levelno == logging.ERROR


def test_client_func_error_goes_to_the_exception_handler(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    listeners: Callable[..., NetListener],
    clients: list[socket.socket],
) -> None:
    """With an exception handler on the context, it gets the client
    function's exception (on the loop thread)."""
    handled: list[tuple[str, BaseException, int]] = []
    ctx.exception_handler = lambda message, exc: handled.append((message, exc, threading.get_ident()))
    try:
        listener = listeners()
        listener.open_sync("127.0.0.1:0", 8)
        listener.set_client_func(lambda _l, _c, _o: 1 / 0)
        sock = connect(listener.addresses[0], clients)
        runner.run_until(lambda: bool(handled), TIMEOUT)
        assert read_to_eof(sock) == b""
    finally:
        ctx.exception_handler = None
    assert len(handled) == 1
    message, exc, thread = handled[0]
    assert isinstance(exc, ZeroDivisionError)
    assert "raised; client closed" in message
    assert thread == threading.get_ident()


# -- wait_client ------------------------------------------------------------------


def test_wait_client(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    listeners: Callable[..., NetListener],
    clients: list[socket.socket],
) -> None:
    """wait_client returns the channel of a client a thread connects; the
    client function is not called for it, and serves the next client."""
    listener = listeners()
    listener.open_sync("127.0.0.1:0", 8)
    greeter = Greeter()
    listener.set_client_func(greeter)
    address = listener.addresses[0]
    replies: list[bytes] = []

    def client() -> None:
        with connect(address) as sock:
            sock.sendall(b"ping")
            replies.append(read_to_eof(sock))

    thread = start_thread(client, "wait-client-peer")
    try:
        channel = listener.wait_client(timeout=TIMEOUT)
        try:
            assert isinstance(channel, SocketChannel)
            assert channel.remote_address is not None
            received = bytearray()

            def on_in(ch: SocketChannel, _cond: qiotask.IOCondition) -> bool:
                data = ch.read()
                received.extend(data or b"")
                if received == b"ping":
                    assert ch.write(b"pong") == 4
                    ch.close()
                    return False
                return True

            channel.add_watch(qiotask.IO_IN, on_in)
            runner.run_until(lambda: not thread.is_alive(), TIMEOUT)
        finally:
            channel.close()
    finally:
        join(thread)
    assert replies == [b"pong"]
    assert greeter.calls == 0

    # The watches are back: the next client goes to the client function.
    sock = connect(address, clients)
    runner.run_until(lambda: greeter.calls == 1, TIMEOUT)
    assert read_to_eof(sock) == GREETING


def test_wait_client_times_out(listeners: Callable[..., NetListener]) -> None:
    """With nobody connecting, wait_client(timeout) raises TimeoutError
    after about that long; with no socket at all, ValueError."""
    listener = listeners()
    with pytest.raises(ValueError, match="not listening"):
        listener.wait_client(timeout=0.05)
    listener.open_sync("127.0.0.1:0")
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        listener.wait_client(timeout=0.05)
    elapsed = time.monotonic() - start
    assert 0.04 <= elapsed < 2.0


def test_wait_client_takes_an_unlimited_timeout_and_refuses_bad_ones(
    listeners: Callable[..., NetListener], clients: list[socket.socket]
) -> None:
    """timeout=math.inf waits as long as it takes (it raised OverflowError
    from the selector); NaN and non-numbers are refused by name."""
    listener = listeners()
    listener.open_sync("127.0.0.1:0")
    with pytest.raises(ValueError, match=r"^wait_client: timeout must be a number of seconds, not NaN$"):
        listener.wait_client(timeout=float("nan"))
    with pytest.raises(TypeError, match=r"^wait_client: timeout must be a number of seconds or None, not str$"):
        listener.wait_client(timeout="1")  # type: ignore[arg-type]
    address = listener.addresses[0]
    connector = start_thread(lambda: clients.append(connect(address)), "connector")
    try:
        channel = listener.wait_client(timeout=math.inf)
        channel.close()
    finally:
        join(connector)


@pytest.mark.parametrize("how", ["disconnect", "close"])
def test_wait_client_woken_by_disconnect_from_another_thread(
    listeners: Callable[..., NetListener], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """disconnect() (or close()) from another thread while wait_client()
    waits: wait_client raises ValueError at once, not after its timeout."""
    waiting = threading.Event()

    class SignallingSelector(selectors.DefaultSelector):
        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            waiting.set()
            return super().select(timeout)

    monkeypatch.setattr(
        "qiotask.net._listener.selectors",
        types.SimpleNamespace(DefaultSelector=SignallingSelector, EVENT_READ=selectors.EVENT_READ),
    )
    listener = listeners()
    listener.open_sync("127.0.0.1:0")
    channel = listener.channels[0]

    def stop() -> None:
        if waiting.wait(TIMEOUT):
            getattr(listener, how)()

    stopper = start_thread(stop, "disconnecter")
    start = time.monotonic()
    try:
        with pytest.raises(ValueError, match="disconnected"):
            listener.wait_client(timeout=3.0)
    finally:
        waiting.set()
        join(stopper)
    assert time.monotonic() - start < 1.0
    assert channel.closed and not listener.connected


# -- disconnect and close ---------------------------------------------------------


def test_disconnect(
    ctx: qiotask.MainContext,
    runner: LoopRunner,
    listeners: Callable[..., NetListener],
    clients: list[socket.socket],
) -> None:
    """disconnect() closes the listening sockets (a connect is refused) and
    may be repeated; the client function stays, for sockets added later."""
    listener = listeners()
    listener.open_sync("127.0.0.1:0")
    greeter = Greeter()
    destroyed: list[Any] = []
    listener.set_client_func(greeter, "kept", destroyed.append)
    address = listener.addresses[0]

    listener.disconnect()
    assert not listener.connected
    assert listener.channels == [] and listener.addresses == []
    listener.disconnect()
    with pytest.raises(ConnectionRefusedError):
        connect(address, clients)
    assert destroyed == []

    listener.add(SocketChannel(listen_socket(InetSocketAddress("127.0.0.1", 0), 8)))
    assert listener.connected
    sock = connect(listener.addresses[0], clients)
    runner.run_until(lambda: greeter.calls == 1, TIMEOUT)
    assert read_to_eof(sock) == GREETING
    assert greeter.opaques == ["kept"]

    listener.close()
    listener.close()
    assert destroyed == ["kept"]


def test_disconnect_off_the_loop_thread(
    ctx: qiotask.MainContext, runner: LoopRunner, listeners: Callable[..., NetListener]
) -> None:
    """disconnect() from another thread while the loop watches the listening
    socket: the socket is closed on the loop thread once the loop forgot its
    fd (as SocketChannel.close promises), not under the loop's feet."""
    listener = listeners()
    listener.open_sync("127.0.0.1:0")
    listener.set_client_func(Greeter())
    channel = listener.channels[0]
    sock = channel.sock
    assert sock is not None

    helper = start_thread(listener.disconnect, "disconnecter")
    join(helper)
    assert channel.closed
    assert sock.fileno() >= 0, "closed while the loop may still poll its fd"
    runner.run_until(lambda: sock.fileno() < 0, TIMEOUT)


# -- argument checks --------------------------------------------------------------


def test_add_checks_its_argument(listeners: Callable[..., NetListener]) -> None:
    """add() takes an open SocketChannel only."""
    listener = listeners()
    with socket.socket() as plain, pytest.raises(TypeError, match="SocketChannel"):
        listener.add(plain)  # type: ignore[arg-type]
    closed = SocketChannel()
    closed.close()
    with pytest.raises(ValueError):
        listener.add(closed)
    assert not listener.connected


def test_add_refuses_a_channel_that_is_not_listening(listeners: Callable[..., NetListener]) -> None:
    """A connected (not listening) stream channel: add() raises ValueError
    rather than take it (accept() on it would fail, and be retried, for ever)."""
    listener = listeners()
    a, b = socket.socketpair()
    with SocketChannel(a) as channel, b:
        with pytest.raises(ValueError, match="not listening"):
            listener.add(channel)
        assert not channel.closed
    assert not listener.connected and listener.channels == []


def test_unix_path_too_long_says_no_errno_none(listeners: Callable[..., NetListener], tmp_path: Path) -> None:
    """An OSError with no errno (a Unix path longer than sun_path): the
    message names the address, with no "[Errno None]"."""
    text = f"unix:{tmp_path / ('x' * 200)}"
    with pytest.raises(OSError) as info:
        listeners().open_sync(text)
    assert info.value.errno is None
    assert "Errno" not in str(info.value)
    assert str(info.value).startswith(f"cannot listen on {text}: ")


def test_unix_socket_files_removed_on_close(listeners: Callable[..., NetListener], tmp_path: Path) -> None:
    """close() (and disconnect()) of a listener on a Unix path removes the
    socket file it made -- but not a file someone else put at that path
    meanwhile."""
    path = tmp_path / "l.sock"
    listener = listeners()
    listener.open_sync(f"unix:{path}")
    assert stat.S_ISSOCK(path.stat().st_mode)
    listener.close()
    assert not path.exists()

    first, second = listeners(), listeners()
    first.open_sync(f"unix:{path}")
    path.unlink()
    second.open_sync(f"unix:{path}")  # another server at that path now
    first.close()
    assert stat.S_ISSOCK(path.stat().st_mode)
    with connect(second.addresses[0]):
        assert is_pending(second)
    second.disconnect()
    assert not path.exists()


@pytest.mark.parametrize("text", ["nonsense", "127.0.0.1", "tcp:localhost:99999", "unix:", "fd:x"])
def test_bad_address_text(listeners: Callable[..., NetListener], text: str) -> None:
    """Address text that does not parse: ValueError from open_sync and from
    open_async (before any task exists)."""
    listener = listeners()
    with pytest.raises(ValueError, match="bad address"):
        listener.open_sync(text)
    with pytest.raises(ValueError, match="bad address"):
        listener.open_async(text)
    assert not listener.connected


def test_bad_arguments(listeners: Callable[..., NetListener]) -> None:
    """Wrong types are TypeError, a negative backlog ValueError."""
    with pytest.raises(TypeError):
        NetListener(name=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        NetListener(resolver=object())  # type: ignore[arg-type]
    listener = listeners()
    with pytest.raises(TypeError, match="address must be a SocketAddress or address text, not int"):
        listener.open_sync(80)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"num \(the listen backlog\) must be an int, not str"):
        listener.open_sync("127.0.0.1:0", "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be negative"):
        listener.open_sync("127.0.0.1:0", -1)
    with pytest.raises(TypeError):
        listener.set_client_func(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        listener.set_client_func(None, None, 5)  # type: ignore[arg-type]
    assert not listener.connected


# -- what a review found (each failed before its fix) ---------------------------------------------


def test_open_sync_of_an_fd_that_is_not_listening_leaves_nothing_open() -> None:
    a, b = socket.socketpair()
    listener = NetListener()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            with pytest.raises(ValueError, match="is not listening"):
                listener.open_sync(f"fd:{a.fileno()}")
            gc.collect()  # the duplicate the call made was closed, not left to the collector
        assert listener.channels == []
    finally:
        listener.close()
        a.close()
        b.close()


def test_an_open_whose_completion_cannot_be_delivered_leaves_nothing_open() -> None:
    async def loop_context() -> qiotask.MainContext:
        return qiotask.get_context()

    context = asyncio.run(loop_context())  # its loop is closed now
    listener = NetListener(context=context)
    task = listener.open_async("127.0.0.1:0")
    assert task.wait(10)
    assert isinstance(task.exception(), qiotask.ContextClosedError)
    assert listener.channels == []
    listener.close()


def test_adding_a_channel_twice_is_refused() -> None:
    listener = NetListener()
    listener.open_sync("127.0.0.1:0")
    try:
        (channel,) = listener.channels
        with pytest.raises(ValueError, match="already"):
            listener.add(channel)
        assert listener.channels == [channel]
    finally:
        listener.close()
