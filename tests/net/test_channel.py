"""SocketChannel on real loopback sockets: opening in a worker (sync, with
``func``/``destroy``, awaited), every address kind, failures and cancel
delivered on the loop thread, and the non-blocking calls of an open channel
(accept, read, write, watches, close).

Tests that run a loop take ``runner``/``ctx`` and so run on asyncio, GLib and
Qt; the others call the channel directly and run once.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import re
import select
import socket
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import qiotask
from qiotask._pool import WorkerPool
from qiotask.net import DNSResolver, InetSocketAddress, SocketAddress, SocketChannel, UnixSocketAddress

from ..conftest import LoopRunner, join, start_thread
from .conftest import Blocker, Completion, needs_ipv6, run_task

#: Worker threads of the default pool are named ``qiotask-worker-<n>``.
WORKER = "qiotask-worker"
#: The most any single wait of these tests may take; a passing one waits far less.
BOUND = 2.0


class RecordingResolver(DNSResolver):
    """A resolver that records the thread of every lookup, and every
    ``getaddrinfo`` call (answered by :func:`socket.getaddrinfo`)."""

    def __init__(self) -> None:
        super().__init__(getaddrinfo=self._recorded_getaddrinfo)
        self.lookups: list[str] = []
        self.queries: list[tuple[str, int, str]] = []  # (host, family, thread name)

    def _recorded_getaddrinfo(self, host: str, port: int, family: int = 0, *rest: int) -> list[tuple[Any, ...]]:
        self.queries.append((host, family, threading.current_thread().name))
        return socket.getaddrinfo(host, port, family, *rest)

    def lookup_sync(
        self, addr: SocketAddress | str, *, passive: bool = False, kind: int = socket.SOCK_STREAM
    ) -> list[SocketAddress]:
        self.lookups.append(threading.current_thread().name)
        return super().lookup_sync(addr, passive=passive, kind=kind)


@pytest.fixture
def sockdir() -> Iterator[str]:
    """A short temporary directory for Unix socket paths (``sun_path`` is
    about 108 bytes, which pytest's ``tmp_path`` may exceed)."""
    with tempfile.TemporaryDirectory(prefix="qio") as path:
        yield path


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback TCP port bound but not listening: connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A plain listening socket on 127.0.0.1 (blocking, with a timeout)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(BOUND)
        yield sock


def abstract_name() -> str:
    return f"qiotask-test-{uuid.uuid4().hex}"


def channel_pair() -> tuple[SocketChannel, SocketChannel]:
    a, b = socket.socketpair()
    pair = SocketChannel.from_socket(a), SocketChannel.from_socket(b)
    if a.getblocking() or b.getblocking():  # a wrong read would hang the test
        a.close()
        b.close()
        raise AssertionError("from_socket left the socket blocking")
    return pair


def nonblocking(channel: SocketChannel) -> bool:
    return channel.sock is not None and not channel.sock.getblocking()


def wait_readable(sock: socket.socket | None) -> None:
    assert sock is not None
    readable, _, _ = select.select([sock], [], [], BOUND)
    assert readable, "the socket did not become readable"


def accept_one(runner: LoopRunner, server: SocketChannel) -> SocketChannel:
    """The next client of ``server``, accepted from an IO_IN watch."""
    accepted: list[SocketChannel] = []

    def on_ready(channel: SocketChannel, _condition: qiotask.IOCondition) -> bool:
        conn = channel.accept()
        if conn is None:
            return True
        accepted.append(conn)
        return False

    watch = server.add_watch(qiotask.IO_IN, on_ready)
    runner.run_until(lambda: bool(accepted), BOUND)
    watch.remove()
    return accepted[0]


def receive(runner: LoopRunner, channel: SocketChannel, size: int) -> bytes:
    """Read through an IO_IN watch until ``size`` bytes or end of stream
    arrived; check each call came with ``channel``, IO_IN, on this thread."""
    got = bytearray()
    eof: list[bool] = []
    calls: list[tuple[SocketChannel, qiotask.IOCondition, threading.Thread]] = []

    def on_ready(ready: SocketChannel, condition: qiotask.IOCondition) -> bool:
        calls.append((ready, condition, threading.current_thread()))
        data = ready.read()
        if data is None:
            return True
        if not data:
            eof.append(True)
            return False
        got.extend(data)
        return len(got) < size

    watch = channel.add_watch(qiotask.IO_IN, on_ready)
    runner.run_until(lambda: len(got) >= size or bool(eof), BOUND)
    watch.remove()
    assert calls
    for ready, condition, thread in calls:
        assert ready is channel
        assert condition & qiotask.IO_IN
        assert thread is threading.current_thread()
    return bytes(got)


# -- opening on a loop, every address kind --------------------------------------

Addresses = Callable[[str], tuple[str, Callable[[SocketAddress], str]]]

# Per case: (listen text, the connect text made from the listener's address).
STREAM_CASES: dict[str, Addresses] = {
    "ipv4": lambda _dir: ("127.0.0.1:0", str),
    "ipv6": lambda _dir: ("[::1]:0", str),
    "localhost": lambda _dir: ("localhost:0", lambda a: f"localhost:{a.port}"),  # type: ignore[attr-defined]
    "unix": lambda dir: (f"unix:{dir}/s", str),
    "abstract": lambda _dir: (f"unix:@{abstract_name()}", str),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=needs_ipv6) if c == "ipv6" else c for c in STREAM_CASES])
def test_stream_round_trip(runner: LoopRunner, case: str, sockdir: str) -> None:
    resolver = RecordingResolver()
    listen_text, connect_text = STREAM_CASES[case](sockdir)
    with SocketChannel(resolver=resolver) as server, SocketChannel(resolver=resolver) as client:
        done = Completion()
        task = server.listen_async(listen_text, 4, done.func, "listen", done.destroy)
        assert not task.done()  # the completion waits for the loop
        assert run_task(runner, task) is server
        assert done.error(server, "listen") is None
        where = server.local_address
        assert where is not None

        done = Completion()
        task = client.connect_async(connect_text(where), done.func, "connect", done.destroy)
        assert run_task(runner, task) is client
        assert done.error(client, "connect") is None

        # Both opened in workers, never on the loop thread.
        assert len(resolver.lookups) == 2
        assert all(name.startswith(WORKER) for name in resolver.lookups)
        if isinstance(where, InetSocketAddress):
            assert resolver.queries and all(name.startswith(WORKER) for _, _, name in resolver.queries)
            if case == "localhost":
                assert {host for host, _, _ in resolver.queries} == {"localhost"}
        else:
            assert resolver.queries == []  # nothing to look up

        with accept_one(runner, server) as conn:
            assert nonblocking(conn) and nonblocking(client)
            assert conn.local_address == where
            assert client.remote_address == where
            if isinstance(where, UnixSocketAddress):
                assert where == (
                    UnixSocketAddress(where.path, abstract=True)
                    if case == "abstract"
                    else UnixSocketAddress(f"{sockdir}/s")
                )
                assert client.local_address is None  # unnamed
                assert conn.remote_address is None
            else:
                assert conn.remote_address == client.local_address
                assert client.sock is not None
                assert client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

            assert conn.read() is None  # nothing sent yet
            assert client.write(b"ping") == 4
            assert receive(runner, conn, 4) == b"ping"
            assert conn.write(b"pong!") == 5
            assert receive(runner, client, 5) == b"pong!"
            client.shutdown()
            assert receive(runner, conn, 1) == b""  # end of stream


# Per case: (a's local address, b's local address or None); b sends to a.
DGRAM_CASES: dict[str, Callable[[str], tuple[str, str | None]]] = {
    # b's "localhost" is matched to a's family (IPv4).
    "udp4": lambda _dir: ("127.0.0.1:0", "localhost:0"),
    "udp6": lambda _dir: ("[::1]:0", None),
    "unix": lambda dir: (f"unix:{dir}/a", f"unix:{dir}/b"),
    "abstract": lambda _dir: (f"unix:@{abstract_name()}", None),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=needs_ipv6) if c == "udp6" else c for c in DGRAM_CASES])
def test_dgram_round_trip(runner: LoopRunner, case: str, sockdir: str) -> None:
    resolver = RecordingResolver()
    a_local, b_local = DGRAM_CASES[case](sockdir)
    with SocketChannel(resolver=resolver) as a, SocketChannel(resolver=resolver) as b:
        done = Completion()
        assert run_task(runner, a.dgram_async(a_local, None, done.func, "a", done.destroy)) is a
        assert done.error(a, "a") is None
        target = a.local_address
        assert target is not None

        done = Completion()
        assert run_task(runner, b.dgram_async(b_local, str(target), done.func, "b", done.destroy)) is b
        assert done.error(b, "b") is None
        assert resolver.lookups and all(name.startswith(WORKER) for name in resolver.lookups)

        assert b.remote_address == target
        if b_local is not None and b_local.startswith("unix:"):
            assert b.local_address == UnixSocketAddress(f"{sockdir}/b")
        elif case.startswith("udp"):
            local = b.local_address
            assert isinstance(local, InetSocketAddress) and local.host == target.host  # type: ignore[attr-defined]
        with pytest.raises(OSError) as info:
            _ = a.remote_address
        assert info.value.errno == errno.ENOTCONN

        assert nonblocking(a) and nonblocking(b)
        assert a.read() is None
        assert b.write(b"datagram") == 8
        assert receive(runner, a, 8) == b"datagram"


def test_await_forms_under_asyncio(closed_port: int) -> None:
    async def main() -> tuple[SocketAddress | None, SocketAddress | None, BaseException]:
        with SocketChannel() as server, SocketChannel() as client, SocketChannel() as refused:
            assert await server.listen_async("127.0.0.1:0") is server
            assert await client.connect_async(str(server.local_address)) is client
            with pytest.raises(ConnectionRefusedError) as info:
                await refused.connect_async(f"127.0.0.1:{closed_port}")
            return server.local_address, client.remote_address, info.value

    listened, connected, err = asyncio.run(main())
    assert listened is not None and connected == listened
    assert f"127.0.0.1:{closed_port}" in str(err)


def test_sync_open_accept_read_write() -> None:
    with SocketChannel() as server, SocketChannel() as client:
        assert server.listen_sync("127.0.0.1:0", 2) is None
        assert nonblocking(server)
        where = server.local_address
        assert isinstance(where, InetSocketAddress) and where.host == "127.0.0.1" and where.port > 0
        assert server.accept() is None  # nobody waiting
        with pytest.raises(OSError) as info:
            _ = server.remote_address
        assert info.value.errno == errno.ENOTCONN

        client.connect_sync(where)  # a SocketAddress works as well as text
        assert client.remote_address == where
        wait_readable(server.sock)
        conn = server.accept()
        assert conn is not None
        with conn:
            assert nonblocking(conn) and nonblocking(client)
            assert conn.sock is not None
            assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert conn.remote_address == client.local_address
            assert conn.read() is None
            assert client.write(b"hello") == 5
            wait_readable(conn.sock)
            assert conn.read() == b"hello"
            client.shutdown()
            wait_readable(conn.sock)
            assert conn.read() == b""
        assert server.accept() is None


def test_sync_dgram() -> None:
    with SocketChannel() as a, SocketChannel() as b:
        a.dgram_sync("127.0.0.1:0", None)
        target = a.local_address
        b.dgram_sync(None, target)
        assert nonblocking(a) and nonblocking(b)
        assert b.remote_address == target
        assert b.write(b"x") == 1
        wait_readable(a.sock)
        assert a.read() == b"x"
        assert a.read() is None


def test_listen_on_fd_uses_a_duplicate() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        channel = SocketChannel()
        channel.listen_sync(f"fd:{holder.fileno()}")
        assert channel.fileno() != holder.fileno()
        assert channel.local_address == InetSocketAddress("127.0.0.1", holder.getsockname()[1])
        channel.close()
        assert holder.fileno() >= 0  # the caller's fd stays open
        assert holder.getsockname()


def fds_open_on(path: Path) -> list[int]:
    """This process's fds open on ``path`` (other tests' fds, closed by the
    garbage collector meanwhile, do not count)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path.resolve()):
                found.append(int(name))
        except OSError:  # closed since the listing (the listing's own fd)
            pass
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counting open fds needs /proc/self/fd")
def test_fd_naming_a_regular_file_leaks_no_fd(tmp_path: Path) -> None:
    """``fd:N`` naming an open file that is no socket: OSError (ENOTSOCK),
    and the duplicate made of the fd is closed again, every time."""
    with open(tmp_path / "plain.txt", "w") as plain:
        fd = plain.fileno()
        assert fds_open_on(tmp_path / "plain.txt") == [fd]
        for _ in range(50):
            for opener in ("listen_sync", "connect_sync"):
                with SocketChannel() as channel:
                    with pytest.raises(OSError) as info:
                        getattr(channel, opener)(f"fd:{fd}")
                    assert info.value.errno == errno.ENOTSOCK
                    assert f"fd:{fd}" in str(info.value)
                    assert channel.sock is None
        assert fds_open_on(tmp_path / "plain.txt") == [fd], "a failed fd: open left a duplicate open"
        assert os.fstat(fd)  # the caller's fd stays open


def link_local_ipv6() -> str | None:
    """A usable link-local IPv6 address of this machine with its zone
    (``fe80::1%eth0``), from /proc/net/if_inet6; None if there is none."""
    try:
        with open("/proc/net/if_inet6") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) != 6:
            continue
        hexaddr, _index, _prefix, scope, flags, name = fields
        # scope 0x20 is link-local; skip tentative (0x40) and DAD-failed (0x08) ones.
        if int(scope, 16) == 0x20 and not int(flags, 16) & 0x48:
            return f"{ipaddress.IPv6Address(int(hexaddr, 16)).compressed}%{name}"
    return None


LINK_LOCAL = link_local_ipv6()
needs_link_local = pytest.mark.skipif(
    LINK_LOCAL is None, reason="this machine has no link-local IPv6 address (none in /proc/net/if_inet6)"
)


def literal_getaddrinfo(host: str, port: int, *_rest: int) -> list[tuple[Any, ...]]:
    """A getaddrinfo answering the IPv6 literal as written, zone included
    (the system's moves the zone to the scope id of the sockaddr)."""
    return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]


def zoned_round_trip(resolver: DNSResolver | None) -> None:
    assert LINK_LOCAL is not None
    with SocketChannel(resolver=resolver) as server, SocketChannel(resolver=resolver) as client:
        server.listen_sync(f"[{LINK_LOCAL}]:0")
        assert server.sock is not None
        _host, port, _flow, scope_id = server.sock.getsockname()
        assert scope_id == socket.if_nametoindex(LINK_LOCAL.split("%")[1])
        client.connect_sync(f"[{LINK_LOCAL}]:{port}")
        wait_readable(server.sock)
        conn = server.accept()
        assert conn is not None
        with conn:
            assert client.write(b"zone") == 4
            wait_readable(conn.sock)
            assert conn.read() == b"zone"


@needs_link_local
def test_ipv6_link_local_with_a_zone() -> None:
    """An address with a zone (``[fe80::1%eth0]:port``) is bound and
    connected with its interface's scope id (a (host, port) pair would be
    EINVAL): listen_sync, then connect_sync to it, round trip."""
    zoned_round_trip(DNSResolver(getaddrinfo=literal_getaddrinfo))


@needs_link_local
def test_ipv6_link_local_with_a_zone_through_the_system_resolver() -> None:
    """The same through socket.getaddrinfo, which moves the zone into the
    scope id: the resolver writes it back into the host."""
    assert DNSResolver().lookup_sync(f"[{LINK_LOCAL}]:7") == [InetSocketAddress(LINK_LOCAL, 7)]
    zoned_round_trip(None)


def test_listening_unix_socket_file_removed_on_close(sockdir: str) -> None:
    """close() of a channel listening on a Unix path removes its socket
    file (as QEMU does); a client's close leaves it."""
    path = f"{sockdir}/s"
    server = SocketChannel()
    server.listen_sync(f"unix:{path}")
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with SocketChannel() as client:
        client.connect_sync(f"unix:{path}")
    assert os.path.exists(path)
    server.close()
    assert not os.path.exists(path)


def test_replaced_unix_socket_file_is_left_alone(sockdir: str) -> None:
    """A socket file someone else made at the path meanwhile is not the
    channel's: its close() leaves it (that server still serves); the newer
    channel removes its own on close."""
    path = f"{sockdir}/s"
    first = SocketChannel()
    first.listen_sync(f"unix:{path}")
    os.unlink(path)
    with SocketChannel() as second:
        second.listen_sync(f"unix:{path}")
        first.close()
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        with SocketChannel() as client:
            client.connect_sync(f"unix:{path}")
            wait_readable(second.sock)
            conn = second.accept()
            assert conn is not None
            conn.close()
    assert not os.path.exists(path)


# -- failures on a loop -----------------------------------------------------------


def test_connect_refused(runner: LoopRunner, closed_port: int) -> None:
    with SocketChannel() as channel:
        done = Completion()
        task = channel.connect_async(f"127.0.0.1:{closed_port}", done.func, "refused", done.destroy)
        with pytest.raises(ConnectionRefusedError) as info:
            run_task(runner, task)
        err = done.error(channel, "refused")
        assert err is info.value
        assert f"cannot connect to 127.0.0.1:{closed_port}" in str(err)
        assert channel.sock is None and not channel.closed


def test_connect_unresolvable_with_a_fake_resolver(runner: LoopRunner) -> None:
    asked: list[str] = []

    def no_such_name(host: str, *_rest: int) -> list[tuple[Any, ...]]:
        asked.append(threading.current_thread().name)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with SocketChannel(resolver=DNSResolver(getaddrinfo=no_such_name)) as channel:
        done = Completion()
        with pytest.raises(socket.gaierror) as info:
            run_task(runner, channel.connect_async("no-such-host.test:80", done.func, None, done.destroy))
        err = done.error(channel, None)
        assert err is info.value
        assert info.value.errno == socket.EAI_NONAME
        assert "no-such-host.test:80" in str(err) and "Name or service not known" in str(err)
        assert len(asked) == 1 and asked[0].startswith(WORKER)
        assert channel.sock is None


@pytest.fixture
def dns_pool() -> Iterator[WorkerPool]:
    """A pool for real lookups: one the system resolver keeps busy past the
    test is left to finish on its own (``test-pool`` threads are not leaks)."""
    pool = WorkerPool(2, name="test-pool-dns")
    yield pool
    pool.shutdown(wait=False)


def test_connect_nonexistent_invalid(runner: LoopRunner, dns_pool: WorkerPool) -> None:
    # No outside network here: the system resolver either fails at once or
    # waits, and then the resolver's timeout ends the lookup.
    with SocketChannel(resolver=DNSResolver(timeout=0.5, pool=dns_pool)) as channel:
        done = Completion()
        start = time.monotonic()
        with pytest.raises((socket.gaierror, qiotask.TaskTimeout)):
            run_task(runner, channel.connect_async("nonexistent.invalid:80", done.func, None, done.destroy), BOUND)
        assert time.monotonic() - start < 1.5
        err = done.error(channel, None)
        assert "nonexistent.invalid" in str(err)
        assert channel.sock is None


def test_open_an_open_channel_fails_in_the_task(runner: LoopRunner, listener: socket.socket) -> None:
    with SocketChannel() as channel:
        run_task(runner, channel.listen_async("127.0.0.1:0"))
        sock = channel.sock
        done = Completion()
        target = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(ValueError, match="already has a socket"):
            run_task(runner, channel.connect_async(target, done.func, None, done.destroy))
        assert isinstance(done.error(channel, None), ValueError)
        assert channel.sock is sock and sock.fileno() >= 0  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancel_while_resolving(runner: LoopRunner, blocker: Blocker, listener: socket.socket, how: str) -> None:
    port = listener.getsockname()[1]
    with SocketChannel(resolver=DNSResolver(getaddrinfo=blocker)) as channel:
        done = Completion()
        timeout = 0.1 if how == "timeout" else None
        task = channel.connect_async(f"blocked.test:{port}", done.func, None, done.destroy, timeout=timeout)
        assert blocker.entered.wait(BOUND)
        assert blocker.threads[0].startswith(WORKER)
        if how == "cancel":
            assert task.cancel()
            assert task.done()  # at once: the blocked worker is abandoned
        else:
            runner.run_until(task.done, BOUND)
        err = done.error(channel, None)
        assert type(err) is (qiotask.TaskCancelled if how == "cancel" else qiotask.TaskTimeout)
        assert channel.sock is None

        # The worker goes on and connects; that late socket is closed, not
        # adopted: the listener sees the client come and go.
        blocker.release.set()
        conn, _peer = listener.accept()
        with conn:
            conn.settimeout(BOUND)
            assert conn.recv(1) == b""
        assert channel.sock is None and not channel.closed


def test_close_while_opening(runner: LoopRunner, blocker: Blocker, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    channel = SocketChannel(resolver=DNSResolver(getaddrinfo=blocker))
    done = Completion()
    task = channel.connect_async(f"blocked.test:{port}", done.func, None, done.destroy)
    assert blocker.entered.wait(BOUND)
    channel.close()  # cancels the open: on the loop thread, at once
    assert task.done()
    with pytest.raises(qiotask.TaskCancelled):
        run_task(runner, task, BOUND)
    assert isinstance(done.error(channel, None), qiotask.TaskCancelled)
    blocker.release.set()
    conn, _peer = listener.accept()
    with conn:
        conn.settimeout(BOUND)
        assert conn.recv(1) == b""  # the socket made meanwhile was closed
    assert channel.sock is None and channel.closed


def test_close_from_another_thread_while_opening(runner: LoopRunner, blocker: Blocker, listener: socket.socket) -> None:
    """close() from another thread while the worker sits in getaddrinfo:
    the open ends with TaskCancelled, func and destroy on the loop thread,
    without waiting for the worker."""
    port = listener.getsockname()[1]
    channel = SocketChannel(resolver=DNSResolver(getaddrinfo=blocker))
    done = Completion()
    task = channel.connect_async(f"blocked.test:{port}", done.func, None, done.destroy)
    assert blocker.entered.wait(BOUND)
    join(start_thread(channel.close, "test-closer"))
    with pytest.raises(qiotask.TaskCancelled):
        run_task(runner, task, BOUND)  # the worker is still blocked
    assert not blocker.release.is_set()
    assert isinstance(done.error(channel, None), qiotask.TaskCancelled)
    blocker.release.set()
    conn, _peer = listener.accept()
    with conn:
        conn.settimeout(BOUND)
        assert conn.recv(1) == b""  # the socket made meanwhile was closed
    assert channel.sock is None and channel.closed


# -- watches and close ------------------------------------------------------------


def test_watch_and_close_from_another_thread(runner: LoopRunner) -> None:
    a, b = channel_pair()
    sock = a.sock
    assert sock is not None
    with b:
        calls: list[tuple[SocketChannel, qiotask.IOCondition, str, threading.Thread]] = []

        def on_ready(channel: SocketChannel, condition: qiotask.IOCondition, tag: str) -> bool:
            calls.append((channel, condition, tag, threading.current_thread()))
            return True  # the data stays unread: called again

        watch = a.add_watch(qiotask.IO_IN, on_ready, "tag")
        assert b.write(b"x") == 1
        runner.run_until(lambda: len(calls) >= 2, BOUND)
        for channel, condition, tag, thread in calls:
            assert channel is a and condition & qiotask.IO_IN and tag == "tag"
            assert thread is threading.current_thread()

        join(start_thread(a.close, "test-closer"))
        assert a.closed and a.sock is None and watch.removed
        # A loop may still poll the fd: the socket is closed on its thread.
        runner.run_until(lambda: sock.fileno() == -1, BOUND)
        a.close()  # again: nothing happens
        with pytest.raises(ValueError, match="read: the channel is closed"):
            a.read()


def test_close_on_the_loop_thread_removes_watches(runner: LoopRunner) -> None:
    a, b = channel_pair()
    sock = a.sock
    assert sock is not None
    with b:
        watches = [a.add_watch(qiotask.IO_IN, lambda *_: True), a.add_watch(qiotask.IO_OUT, lambda *_: True)]
        a.close()
        assert all(watch.removed for watch in watches)
        assert sock.fileno() == -1  # at once: this is the context thread
        a.close()


def test_out_watch_after_a_full_buffer(runner: LoopRunner) -> None:
    a, b = channel_pair()
    with a, b:
        sent = fill(a)
        ready: list[tuple[qiotask.IOCondition, threading.Thread]] = []

        def on_writable(_channel: SocketChannel, condition: qiotask.IOCondition) -> bool:
            ready.append((condition, threading.current_thread()))
            return False

        received = bytearray()

        def drain(channel: SocketChannel, _condition: qiotask.IOCondition) -> bool:
            while data := channel.read():
                received.extend(data)
            return True

        a.add_watch(qiotask.IO_OUT, on_writable)
        b.add_watch(qiotask.IO_IN, drain)
        runner.run_until(lambda: bool(ready), BOUND)
        condition, thread = ready[0]
        assert condition & qiotask.IO_OUT and thread is threading.current_thread()
        assert a.write(b"tail") == 4
        runner.run_until(lambda: len(received) == sent + 4, BOUND)
        assert received.endswith(b"tail")


def fill(channel: SocketChannel) -> int:
    """Write to ``channel`` until its send buffer is full; the bytes sent."""
    assert channel.sock is not None
    channel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    chunk, sent = b"z" * 4096, 0
    for _ in range(10_000):
        count = channel.write(chunk)
        if count is None:
            return sent
        assert 0 < count <= len(chunk)
        sent += count
    raise AssertionError(f"the send buffer took {sent} bytes and still was not full")


def test_write_returns_none_when_full() -> None:
    a, b = channel_pair()
    with a, b:
        sent = fill(a)
        assert sent > 0
        assert a.write(b"more") is None
        received = 0
        while received < sent:
            wait_readable(b.sock)
            data = b.read()
            assert data
            received += len(data)
        assert received == sent
        assert b.read() is None
        assert a.write(b"more") == 4


# -- from_socket, state and argument errors (no loop) -----------------------------


def test_from_socket_owns_the_socket() -> None:
    sock, peer = socket.socketpair()
    with peer:
        channel = SocketChannel.from_socket(sock)
        assert channel.sock is sock and not sock.getblocking()
        assert channel.fileno() == sock.fileno()
        assert channel.local_address is None and channel.remote_address is None  # unnamed Unix sockets
        assert "fd=" in repr(channel)
        channel.close()
        assert sock.fileno() == -1 and channel.closed and channel.sock is None
        assert repr(channel) == "<SocketChannel closed>"


def test_from_socket_refuses_non_sockets_and_closed_sockets() -> None:
    with pytest.raises(TypeError, match=r"from_socket: sock must be a socket\.socket, not int"):
        SocketChannel.from_socket(3)  # type: ignore[arg-type]
    sock = socket.socket()
    sock.close()
    with pytest.raises(ValueError, match="from_socket: the socket is closed"):
        SocketChannel.from_socket(sock)


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match=r"sock must be a socket\.socket or None, not str"):
        SocketChannel("sock")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="resolver must be a DNSResolver, not str"):
        SocketChannel(resolver="resolver")  # type: ignore[arg-type]


OPERATIONS: dict[str, Callable[[SocketChannel], object]] = {
    "fileno": lambda c: c.fileno(),
    "read": lambda c: c.read(),
    "write": lambda c: c.write(b"x"),
    "accept": lambda c: c.accept(),
    "shutdown": lambda c: c.shutdown(),
    "local_address": lambda c: c.local_address,
    "remote_address": lambda c: c.remote_address,
    "add_watch": lambda c: c.add_watch(qiotask.IO_IN, lambda *_: False),
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("state", ["unopened", "closed"])
def test_unusable_channel_raises_value_error(operation: str, state: str) -> None:
    channel = SocketChannel()
    if state == "closed":
        channel.listen_sync("127.0.0.1:0")
        channel.close()
        message = f"{operation}: the channel is closed"
    else:
        message = f"{operation}: the channel is not open yet (listen, connect or dgram first)"
    with pytest.raises(ValueError) as info:
        OPERATIONS[operation](channel)
    assert str(info.value) == message


def test_opening_twice_raises() -> None:
    with SocketChannel() as channel:
        channel.listen_sync("127.0.0.1:0")
        sock = channel.sock
        for open_again in (
            lambda: channel.listen_sync("127.0.0.1:0"),
            lambda: channel.connect_sync(str(channel.local_address)),
            lambda: channel.dgram_sync("127.0.0.1:0", None),
        ):
            with pytest.raises(ValueError, match="already has a socket; make a new SocketChannel"):
                open_again()
        assert channel.sock is sock
    with pytest.raises(ValueError, match="connect_sync: the channel is closed"):
        channel.connect_sync("127.0.0.1:1")


def test_listen_on_a_busy_port_names_the_address() -> None:
    with socket.create_server(("127.0.0.1", 0), reuse_port=False) as holder:
        port = holder.getsockname()[1]
        with SocketChannel() as channel:
            with pytest.raises(OSError) as info:
                channel.listen_sync(f"127.0.0.1:{port}")
            assert info.value.errno == errno.EADDRINUSE
            assert f"cannot listen on 127.0.0.1:{port}" in str(info.value)
            assert channel.sock is None


@pytest.mark.parametrize("opener", ["listen_sync", "connect_sync"])
def test_error_without_errno_says_no_errno_none(sockdir: str, opener: str) -> None:
    """An OSError with no errno (a Unix path longer than sun_path): the
    message says what failed and why, with no "[Errno None]"."""
    path = f"{sockdir}/{'x' * 200}"
    with SocketChannel() as channel:
        with pytest.raises(OSError) as info:
            getattr(channel, opener)(f"unix:{path}")
        assert info.value.errno is None
        text = str(info.value)
        assert "Errno" not in text
        verb = "listen on" if opener == "listen_sync" else "connect to"
        assert text.startswith(f"cannot {verb} unix:{path}: ") and "too long" in text
        assert channel.sock is None
    assert not os.path.exists(path)


OPENERS: dict[str, Callable[[SocketChannel, Any], object]] = {
    "listen_sync": lambda c, a: c.listen_sync(a),
    "connect_sync": lambda c, a: c.connect_sync(a),
    "listen_async": lambda c, a: c.listen_async(a),
    "connect_async": lambda c, a: c.connect_async(a),
    "dgram_async": lambda c, a: c.dgram_async(a, None),
    "dgram_async(remote)": lambda c, a: c.dgram_async(None, a),
}


@pytest.mark.parametrize("opener", OPENERS)
@pytest.mark.parametrize(
    ("addr", "error", "message"),
    [
        ("nonsense", ValueError, "bad address 'nonsense': missing port"),
        ("127.0.0.1:99999", ValueError, "port out of range"),
        ("unix:", ValueError, "bad address 'unix:': empty path"),
        (80, TypeError, "address must be a SocketAddress or address text, not int"),
    ],
)
def test_bad_address_raises_before_any_task(opener: str, addr: Any, error: type[Exception], message: str) -> None:
    created = qiotask.stats()["created"]
    with SocketChannel() as channel:
        with pytest.raises(error, match=re.escape(message)) as info:
            OPENERS[opener](channel, addr)
        assert str(info.value).startswith(opener.split("(")[0] + ":")
        assert channel.sock is None
    assert qiotask.stats()["created"] == created


@pytest.mark.parametrize(
    ("local", "remote", "message"),
    [
        (None, None, "give a local address, a remote address or both"),
        ("unix:/tmp/x", "127.0.0.1:1", "are of different kinds"),
        (None, "vsock:2:1", "datagrams need inet or unix addresses, not vsock"),
        ("fd:0", None, "datagrams need inet or unix addresses, not fd"),
    ],
)
@pytest.mark.parametrize("form", ["dgram_sync", "dgram_async"])
def test_bad_dgram_addresses_raise_before_any_task(local: Any, remote: Any, message: str, form: str) -> None:
    created = qiotask.stats()["created"]
    with SocketChannel() as channel:
        with pytest.raises(ValueError, match=f"^{form}: .*{re.escape(message)}"):
            getattr(channel, form)(local, remote)
        assert channel.sock is None
    assert qiotask.stats()["created"] == created


@pytest.mark.parametrize(
    ("num", "error"), [(-1, ValueError), ("1", TypeError), (True, TypeError), (1.0, TypeError), (None, TypeError)]
)
@pytest.mark.parametrize("form", ["listen_sync", "listen_async"])
def test_bad_backlog_raises(num: Any, error: type[Exception], form: str) -> None:
    created = qiotask.stats()["created"]
    with SocketChannel() as channel:
        with pytest.raises(error, match=f"^{form}: num \\(the listen backlog\\) must"):
            getattr(channel, form)("127.0.0.1:0", num)
        assert channel.sock is None
    assert qiotask.stats()["created"] == created


@pytest.mark.parametrize(
    ("timeout", "error", "message"),
    [
        (-1, ValueError, "timeout must not be negative, got -1"),
        (float("nan"), ValueError, "timeout must be a number of seconds, not NaN"),
        ("1", TypeError, "timeout must be a number of seconds or None, not str"),
        (True, TypeError, "timeout must be a number of seconds or None, not bool"),
    ],
)
@pytest.mark.parametrize("form", ["connect_async", "listen_async", "dgram_async"])
def test_bad_timeout_raises_before_any_task(timeout: Any, error: type[Exception], message: str, form: str) -> None:
    created = qiotask.stats()["created"]
    with SocketChannel() as channel:
        with pytest.raises(error, match=f"^{form}: {re.escape(message)}$"):
            if form == "dgram_async":
                channel.dgram_async("127.0.0.1:0", None, timeout=timeout)
            else:
                getattr(channel, form)("127.0.0.1:0", timeout=timeout)
        assert channel.sock is None
    assert qiotask.stats()["created"] == created


def test_dgram_unix_socket_file_removed_on_close(sockdir: str) -> None:
    """A datagram channel bound to a Unix path removes its file on close()
    too; its peer's file stays until the peer closes."""
    local, remote = f"{sockdir}/local", f"{sockdir}/remote"
    with SocketChannel() as peer:
        peer.dgram_sync(f"unix:{remote}", None)
        channel = SocketChannel()
        channel.dgram_sync(f"unix:{local}", f"unix:{remote}")
        assert channel.write(b"datagram") == 8
        wait_readable(peer.sock)
        assert peer.read() == b"datagram"
        channel.close()
        assert not os.path.exists(local) and os.path.exists(remote)
    assert not os.path.exists(remote)


def test_close_from_a_third_thread_waits_for_every_watching_context() -> None:
    """A channel watched on two contexts, closed from a third thread: the
    socket is closed only once both loops have dropped their watches."""
    first, second = qiotask.MainContext(name="first"), qiotask.MainContext(name="second")
    a, b = channel_pair()
    try:
        a.add_watch(qiotask.IO_IN, lambda *_: True, context=first)
        a.add_watch(qiotask.IO_IN, lambda *_: True, context=second)
        sock = a.sock
        assert sock is not None
        closer = start_thread(a.close, "closer")
        join(closer)
        first._dispatch()
        assert sock.fileno() != -1, "closed while the second loop still watches the fd"
        second._dispatch()
        assert sock.fileno() == -1
    finally:
        a.close()
        b.close()
        first.close()
        second.close()


def test_num_is_the_listen_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """listen_sync(addr, num) passes num to listen(), as QEMU does."""
    backlogs: list[int] = []

    class Recording(socket.socket):
        def listen(self, *args: Any) -> None:
            backlogs.extend(args)
            super().listen(*args)

    monkeypatch.setattr(socket, "socket", Recording)
    with SocketChannel() as channel:
        channel.listen_sync("127.0.0.1:0", 7)
    assert backlogs == [7]


def test_connect_tries_the_next_address_after_a_refusal() -> None:
    """connect_sync tries a name's addresses in turn: 127.0.0.2 refuses,
    127.0.0.1 accepts."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def two_addresses(host: str, p: int, *_rest: Any) -> list[tuple[Any, ...]]:
            kind = socket.SOCK_STREAM
            return [(socket.AF_INET, kind, 6, "", ("127.0.0.2", p)), (socket.AF_INET, kind, 6, "", ("127.0.0.1", p))]

        with SocketChannel(resolver=DNSResolver(getaddrinfo=two_addresses)) as channel:
            channel.connect_sync(f"somewhere.test:{port}")
            assert channel.remote_address == InetSocketAddress("127.0.0.1", port)


# -- what a review found (each failed before its fix) ---------------------------------------------


def test_a_connect_whose_completion_cannot_be_delivered_leaves_no_socket() -> None:
    # The loop is gone: the task fails with ContextClosedError and func is
    # not called, so nothing may be left open (as after a cancel).
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:

        async def loop_context() -> qiotask.MainContext:
            return qiotask.get_context()

        context = asyncio.run(loop_context())  # its loop is closed now
        channel = SocketChannel(context=context)
        task = channel.connect_async(f"127.0.0.1:{server.getsockname()[1]}")
        assert task.wait(10)
        assert isinstance(task.exception(), qiotask.ContextClosedError)
        assert channel.sock is None
    finally:
        server.close()


def test_read_refuses_a_count_below_one() -> None:
    a, b = socket.socketpair()
    channel = SocketChannel(a)
    try:
        for n in (0, -1):
            with pytest.raises(ValueError, match=rf"^read: n must be at least 1, got {n}$"):
                channel.read(n)  # b"" would read as the end of the stream
    finally:
        channel.close()
        b.close()


def test_listening_on_an_fd_that_is_not_listening_is_refused() -> None:
    a, b = socket.socketpair()
    channel = SocketChannel()
    try:
        with pytest.raises(ValueError, match="is not listening"):
            channel.listen_sync(f"fd:{a.fileno()}")
        assert channel.sock is None
    finally:
        channel.close()
        a.close()
        b.close()
