"""One echo exchange, with TLS, on every loop qiotask supports (the other
net tests go deep on asyncio, GLib and Qt; this one goes wide: uvloop, Tk
and trio too)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import qiotask
from qiotask.net import NetListener, SocketChannel, TLSChannel

from ..backends import BACKENDS, Backend, open_backend, thread_default
from ..conftest import LoopRunner
from .conftest import Certs, run_task

MESSAGE = b"hello over TLS"


@pytest.fixture(params=BACKENDS)
def every_loop(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with thread_default(open_backend(request.param)) as backend:
        yield backend


def test_tls_echo(every_loop: Backend, certs: Certs) -> None:
    """A NetListener accepts, both sides shake hands and the client gets its
    message back; every callback on the loop thread."""
    runner = LoopRunner(every_loop.context)
    loop_thread = threading.current_thread()
    threads: set[threading.Thread] = set()
    sessions: list[TLSChannel] = []
    echoed = bytearray()

    def on_readable(tls: TLSChannel, _condition: qiotask.IOCondition) -> bool:
        threads.add(threading.current_thread())
        data = tls.read()
        if data:
            tls.write(data)
        return data is None or bool(data)

    def server_ready(tls: TLSChannel, err: BaseException | None, _opaque: Any) -> None:
        threads.add(threading.current_thread())
        assert err is None
        tls.add_watch(qiotask.IO_IN, on_readable)

    def on_client(_listener: NetListener, channel: SocketChannel, _opaque: Any) -> None:
        threads.add(threading.current_thread())
        sessions.append(TLSChannel.new_server(channel, certs.server_context()))
        sessions[-1].handshake(server_ready, timeout=10)

    with NetListener(context=every_loop.context) as listener:
        run_task(runner, listener.open_async("localhost:0", 4))
        listener.set_client_func(on_client)
        channel = SocketChannel(context=every_loop.context)
        run_task(runner, channel.connect_async(f"localhost:{listener.addresses[0].port}"))
        client = TLSChannel.new_client(channel, certs.client_context(), "localhost")
        try:
            run_task(runner, client.handshake(timeout=10))

            def on_echo(tls: TLSChannel, _condition: qiotask.IOCondition) -> bool:
                threads.add(threading.current_thread())
                data = tls.read()
                echoed.extend(data or b"")
                return len(echoed) < len(MESSAGE) and data != b""

            client.add_watch(qiotask.IO_IN, on_echo)
            assert client.write(MESSAGE) == len(MESSAGE)
            runner.run_until(lambda: len(echoed) >= len(MESSAGE))
        finally:
            client.close()
            for session in sessions:
                session.close()
    assert bytes(echoed) == MESSAGE
    assert threads == {loop_thread}
