"""DNSResolver: what it asks ``getaddrinfo`` (family, flags, kind), what it
makes of the answer (filtered, deduplicated, flags kept), its errors and
timeout, and ``lookup_async`` delivering on the loop thread.

``getaddrinfo`` is a fake wherever the answer matters; the real one is only
asked about loopback names and literals (no outside network exists here).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest

import qiotask
from qiotask._pool import DEFAULT_MAX_WORKERS, WorkerPool
from qiotask.net import (
    DNSResolver,
    FdSocketAddress,
    InetSocketAddress,
    SocketAddress,
    UnixSocketAddress,
    VsockSocketAddress,
)

from ..conftest import LoopRunner, join, start_thread
from .conftest import Blocker, Completion, run_task

#: Worker threads of the default pool are named ``qiotask-worker-<n>``.
WORKER = "qiotask-worker"
#: The most any single wait of these tests may take; a passing one waits far less.
BOUND = 2.0

TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP


def v4(port: int, proto: int = TCP, host: str = "192.0.2.1") -> tuple[Any, ...]:
    return (socket.AF_INET, socket.SOCK_STREAM, proto, "", (host, port))


def v6(port: int, proto: int = TCP, host: str = "2001:db8::1") -> tuple[Any, ...]:
    return (socket.AF_INET6, socket.SOCK_STREAM, proto, "", (host, port, 0, 0))


class Call(NamedTuple):
    host: str
    port: int
    family: int
    type: int
    proto: int
    flags: int
    thread: str


class FakeGetaddrinfo:
    """A ``getaddrinfo`` that records its calls and answers ``answer(port)``
    (or raises what ``answer`` raises)."""

    def __init__(self, answer: Callable[[int], list[tuple[Any, ...]]]) -> None:
        self.answer = answer
        self.calls: list[Call] = []

    def __call__(
        self, host: str, port: int, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[tuple[Any, ...]]:
        self.calls.append(Call(host, port, family, type, proto, flags, threading.current_thread().name))
        return self.answer(port)


def both_families(port: int) -> list[tuple[Any, ...]]:
    # IPv6 first: the resolver must keep getaddrinfo's order.
    return [v6(port), v4(port)]


@pytest.fixture
def own_pool() -> Iterator[WorkerPool]:
    """A private pool (``test-pool`` threads are not leaks), not waited for
    at teardown: the system resolver may keep one of its threads a while."""
    pool = WorkerPool(2, name="test-pool-dns")
    yield pool
    pool.shutdown(wait=False)


# -- what getaddrinfo is asked, what comes back -----------------------------------


@pytest.mark.parametrize(
    ("options", "family", "hosts"),
    [
        ("", socket.AF_UNSPEC, ["2001:db8::1", "192.0.2.1"]),
        (",ipv4=on", socket.AF_INET, ["192.0.2.1"]),
        (",ipv6=on", socket.AF_INET6, ["2001:db8::1"]),
        (",ipv4=off", socket.AF_INET6, ["2001:db8::1"]),
        (",ipv6=off", socket.AF_INET, ["192.0.2.1"]),
        (",ipv4=on,ipv6=on", socket.AF_UNSPEC, ["2001:db8::1", "192.0.2.1"]),
        (",ipv4=on,ipv6=off", socket.AF_INET, ["192.0.2.1"]),
        (",ipv4=off,ipv6=on", socket.AF_INET6, ["2001:db8::1"]),
    ],
)
def test_family_flags(options: str, family: int, hosts: list[str]) -> None:
    # The fake answers both families whatever it is asked: the resolver
    # itself must drop the family the flags rule out.
    fake = FakeGetaddrinfo(both_families)
    addr = InetSocketAddress.parse(f"example.test:443{options}")
    found = DNSResolver(getaddrinfo=fake).lookup_sync(addr)
    assert [call.family for call in fake.calls] == [family]
    assert found == [dataclasses.replace(addr, host=host) for host in hosts]
    assert all(a.ipv4 == addr.ipv4 and a.ipv6 == addr.ipv6 for a in found)  # type: ignore[attr-defined]


@pytest.mark.parametrize("numeric", [False, True])
@pytest.mark.parametrize("passive", [False, True])
def test_numeric_and_passive_flags(numeric: bool, passive: bool) -> None:
    fake = FakeGetaddrinfo(lambda port: [v4(port)])
    addr = InetSocketAddress("192.0.2.1", 80, numeric=numeric)
    assert DNSResolver(getaddrinfo=fake).lookup_sync(addr, passive=passive) == [addr]
    (call,) = fake.calls
    assert (call.host, call.port, call.type, call.proto) == ("192.0.2.1", 80, socket.SOCK_STREAM, 0)
    assert call.flags == (socket.AI_NUMERICHOST if numeric else 0) | (socket.AI_PASSIVE if passive else 0)
    assert call.thread == threading.current_thread().name  # untimed: in the calling thread


def test_kind_is_passed_as_the_socket_type() -> None:
    fake = FakeGetaddrinfo(lambda port: [v4(port, UDP)])
    DNSResolver(getaddrinfo=fake).lookup_sync("example.test:53", kind=socket.SOCK_DGRAM)
    assert fake.calls[0].type == socket.SOCK_DGRAM


def test_duplicates_removed_in_order() -> None:
    fake = FakeGetaddrinfo(lambda port: [v4(port), v4(port, UDP), v6(port), v4(port, 0), v6(port, UDP), v4(port)])
    found = DNSResolver(getaddrinfo=fake).lookup_sync("example.test:80")
    assert found == [InetSocketAddress("192.0.2.1", 80), InetSocketAddress("2001:db8::1", 80)]


@pytest.mark.parametrize(
    "addr",
    [
        UnixSocketAddress("/run/x.sock"),
        UnixSocketAddress("name", abstract=True),
        VsockSocketAddress(2, 1024),
        FdSocketAddress(3),
    ],
    ids=str,
)
@pytest.mark.parametrize("as_text", [False, True])
def test_other_kinds_come_back_unchanged(addr: SocketAddress, as_text: bool) -> None:
    fake = FakeGetaddrinfo(both_families)
    resolver = DNSResolver(getaddrinfo=fake)
    found = resolver.lookup_sync(str(addr) if as_text else addr, passive=True)
    assert found == [addr]
    if not as_text:
        assert found[0] is addr
    assert fake.calls == []


def test_no_address_of_the_wanted_family() -> None:
    fake = FakeGetaddrinfo(lambda port: [v6(port)])
    with pytest.raises(socket.gaierror) as info:
        DNSResolver(getaddrinfo=fake).lookup_sync("example.test:80,ipv4=on")
    assert info.value.errno == socket.EAI_NONAME
    assert str(info.value) == (
        f"[Errno {socket.EAI_NONAME}] address resolution failed for example.test:80,ipv4=on: no address of that family"
    )


def test_gaierror_names_the_address() -> None:
    original = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    def fail(_port: int) -> list[tuple[Any, ...]]:
        raise original

    with pytest.raises(socket.gaierror) as info:
        DNSResolver(getaddrinfo=FakeGetaddrinfo(fail)).lookup_sync("example.test:80")
    assert info.value.errno == socket.EAI_AGAIN
    assert "address resolution failed for example.test:80: Temporary failure in name resolution" in str(info.value)
    assert info.value.__cause__ is original


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".test"])
def test_name_that_cannot_be_encoded_is_a_gaierror(host: str) -> None:
    # socket.getaddrinfo raises UnicodeError for these, before any lookup.
    with pytest.raises(socket.gaierror) as info:
        DNSResolver().lookup_sync(f"{host}:80")
    assert info.value.errno == socket.EAI_NONAME
    assert f"address resolution failed for {host}:80" in str(info.value)


def test_real_lookups_on_loopback() -> None:
    resolver = DNSResolver()
    assert resolver.lookup_sync("127.0.0.1:80") == [InetSocketAddress("127.0.0.1", 80)]
    assert resolver.lookup_sync("[::1]:80,numeric=on") == [InetSocketAddress("::1", 80, numeric=True)]
    assert InetSocketAddress("127.0.0.1", 22, ipv4=True) in resolver.lookup_sync("localhost:22,ipv4=on")
    with pytest.raises(socket.gaierror):
        resolver.lookup_sync("localhost:22,numeric=on")  # a name is no numeric host


def test_nonexistent_invalid_fails_in_bounded_time(own_pool: WorkerPool) -> None:
    resolver = DNSResolver(timeout=0.5, pool=own_pool)
    start = time.monotonic()
    with pytest.raises((socket.gaierror, qiotask.TaskTimeout)) as info:
        resolver.lookup_sync("nonexistent.invalid:80")
    assert time.monotonic() - start < 1.5
    assert "nonexistent.invalid:80" in str(info.value)


# -- the timeout, and where lookups run --------------------------------------------


def test_timeout_of_a_sync_lookup(blocker: Blocker) -> None:
    resolver = DNSResolver(getaddrinfo=blocker, timeout=0.2)
    start = time.monotonic()
    with pytest.raises(qiotask.TaskTimeout, match=r"^lookup of example\.test:80 took longer than 0\.2 s$"):
        resolver.lookup_sync("example.test:80")
    assert 0.15 <= time.monotonic() - start < 1.5
    # On the timed lookups' own pool, not the shared one (see _lookup_pool).
    assert blocker.entered.is_set() and blocker.threads[0].startswith("qiotask-dns-worker")


def test_timed_lookup_answers_and_fails_through_the_pool(own_pool: WorkerPool) -> None:
    fake = FakeGetaddrinfo(lambda port: [v4(port)])
    resolver = DNSResolver(getaddrinfo=fake, timeout=5, pool=own_pool)
    assert resolver.lookup_sync("example.test:80") == [InetSocketAddress("192.0.2.1", 80)]
    assert fake.calls[0].thread.startswith("test-pool-dns-worker")

    def fail(_port: int) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    fake.answer = fail
    with pytest.raises(socket.gaierror, match=r"address resolution failed for example\.test:80"):
        resolver.lookup_sync("example.test:80")


def test_timed_lookups_from_a_burst_of_workers(runner: LoopRunner) -> None:
    """Four times as many workers of the default pool as it has threads,
    each making a timed sync lookup (as a burst of async opens through a
    DNSResolver(timeout=...) does): all answer, none times out, because
    timed lookups do not queue behind the workers that wait for them."""

    def answer(port: int) -> list[tuple[Any, ...]]:
        time.sleep(0.02)  # a 20 ms DNS answer
        return [v4(port)]

    fake = FakeGetaddrinfo(answer)
    resolver = DNSResolver(getaddrinfo=fake, timeout=1.0)
    tasks: list[qiotask.Task[list[SocketAddress]]] = []
    for i in range(4 * DEFAULT_MAX_WORKERS):
        task: qiotask.Task[list[SocketAddress]] = qiotask.Task(resolver, name=f"open {i}")
        task.run_in_thread(lambda _task, _opaque: resolver.lookup_sync("example.test:80"))
        tasks.append(task)
    runner.run_until(lambda: all(task.done() for task in tasks), 5.0)
    assert [task.exception() for task in tasks if task.had_error()] == []
    assert all(task.get_result() == [InetSocketAddress("192.0.2.1", 80)] for task in tasks)
    assert len(fake.calls) == len(tasks)
    assert not any(call.thread.startswith(WORKER) for call in fake.calls)


def test_timed_lookups_are_not_held_up_by_hung_ones() -> None:
    """Lookups that hang keep their threads after they time out; a lookup
    of a name that answers at once must not wait behind them (the timed
    lookups' pool adds a thread whenever all are busy)."""
    hung = threading.Event()

    def answer(host: str, port: int, *_rest: int) -> list[tuple[Any, ...]]:
        if host == "hangs.test":
            hung.wait(10)
        return [v4(port)]

    resolver = DNSResolver(getaddrinfo=answer, timeout=0.5)
    outcomes: list[str] = []

    def hanging_lookup() -> None:
        try:
            resolver.lookup_sync("hangs.test:80")
        except qiotask.TaskTimeout:
            outcomes.append("timeout")

    waiters = [start_thread(hanging_lookup, f"hanging-{i}") for i in range(2 * DEFAULT_MAX_WORKERS + 2)]
    try:
        for waiter in waiters:
            join(waiter)
        assert outcomes == ["timeout"] * len(waiters)
        for _ in range(3):
            assert resolver.lookup_sync("quick.test:80") == [InetSocketAddress("192.0.2.1", 80)]
    finally:
        hung.set()


# -- arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"getaddrinfo": 1}, TypeError, "getaddrinfo must be callable or None, not int"),
        ({"timeout": "1"}, TypeError, "timeout must be a number of seconds or None, not str"),
        ({"timeout": True}, TypeError, "timeout must be a number of seconds or None, not bool"),
        ({"timeout": 0}, ValueError, "timeout must be positive, got 0"),
        ({"timeout": -1.5}, ValueError, "timeout must be positive, got -1.5"),
        ({"timeout": float("nan")}, ValueError, "timeout must be a number of seconds, not NaN"),
        ({"pool": "pool"}, TypeError, "pool must be a WorkerPool, not str"),
    ],
)
def test_constructor_checks_its_arguments(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=f"^DNSResolver: {re.escape(message)}$"):
        DNSResolver(**kwargs)


@pytest.mark.parametrize(
    ("addr", "error", "message"),
    [
        ("nonsense", ValueError, "bad address 'nonsense': missing port"),
        ("h:x", ValueError, "bad address 'h:x': port is not a number"),
        (80, TypeError, "address must be a SocketAddress or address text, not int"),
    ],
)
@pytest.mark.parametrize("form", ["lookup_sync", "lookup_async"])
def test_bad_address_raises_before_any_task(addr: Any, error: type[Exception], message: str, form: str) -> None:
    fake = FakeGetaddrinfo(both_families)
    created = qiotask.stats()["created"]
    with pytest.raises(error, match=f"^{form}: {re.escape(message)}"):
        getattr(DNSResolver(getaddrinfo=fake), form)(addr)
    assert qiotask.stats()["created"] == created
    assert fake.calls == []


# -- lookup_async on a loop --------------------------------------------------------


def test_lookup_async_delivers_the_list(runner: LoopRunner) -> None:
    fake = FakeGetaddrinfo(both_families)
    resolver = DNSResolver(getaddrinfo=fake)
    done = Completion()
    task = resolver.lookup_async(
        "example.test:80", done.func, "opaque", done.destroy, passive=True, kind=socket.SOCK_DGRAM
    )
    assert not task.done()
    expected = [InetSocketAddress("2001:db8::1", 80), InetSocketAddress("192.0.2.1", 80)]
    assert run_task(runner, task) == expected
    assert done.error(resolver, "opaque") is None
    (call,) = fake.calls
    assert call.thread.startswith(WORKER)
    assert (call.flags, call.type) == (socket.AI_PASSIVE, socket.SOCK_DGRAM)


def test_lookup_async_on_a_given_pool(runner: LoopRunner, own_pool: WorkerPool) -> None:
    fake = FakeGetaddrinfo(lambda port: [v4(port)])
    task = DNSResolver(getaddrinfo=fake, pool=own_pool).lookup_async("example.test:80")
    assert run_task(runner, task) == [InetSocketAddress("192.0.2.1", 80)]
    assert fake.calls[0].thread.startswith("test-pool-dns-worker")


def test_lookup_async_error(runner: LoopRunner) -> None:
    def fail(_port: int) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    resolver = DNSResolver(getaddrinfo=FakeGetaddrinfo(fail))
    done = Completion()
    with pytest.raises(socket.gaierror) as info:
        run_task(runner, resolver.lookup_async("no-such-host.test:80", done.func, None, done.destroy))
    assert done.error(resolver, None) is info.value
    assert info.value.errno == socket.EAI_NONAME
    assert "address resolution failed for no-such-host.test:80" in str(info.value)


def test_lookup_async_of_other_kinds(runner: LoopRunner) -> None:
    fake = FakeGetaddrinfo(both_families)
    addr = UnixSocketAddress("name", abstract=True)
    assert run_task(runner, DNSResolver(getaddrinfo=fake).lookup_async(addr)) == [addr]
    assert fake.calls == []


def test_lookup_async_timeout(runner: LoopRunner, blocker: Blocker) -> None:
    resolver = DNSResolver(getaddrinfo=blocker, timeout=0.1)
    done = Completion()
    start = time.monotonic()
    with pytest.raises(qiotask.TaskTimeout):
        run_task(runner, resolver.lookup_async("example.test:80", done.func, None, done.destroy), BOUND)
    assert time.monotonic() - start < 1.5
    assert isinstance(done.error(resolver, None), qiotask.TaskTimeout)
    assert blocker.threads[0].startswith(WORKER)


def test_lookup_async_cancel(runner: LoopRunner, blocker: Blocker) -> None:
    resolver = DNSResolver(getaddrinfo=blocker)
    done = Completion()
    task = resolver.lookup_async("example.test:80", done.func, None, done.destroy)
    assert blocker.entered.wait(BOUND)
    assert task.cancel()
    assert task.done()  # at once: the blocked worker is abandoned
    assert type(done.error(resolver, None)) is qiotask.TaskCancelled


def test_lookup_async_awaited() -> None:
    resolver = DNSResolver()

    async def main() -> tuple[list[SocketAddress], BaseException]:
        found = await resolver.lookup_async("127.0.0.1:80")
        with pytest.raises(socket.gaierror) as info:
            await resolver.lookup_async("localhost:80,numeric=on")
        return found, info.value

    found, err = asyncio.run(main())
    assert found == [InetSocketAddress("127.0.0.1", 80)]
    assert "localhost:80,numeric=on" in str(err)
