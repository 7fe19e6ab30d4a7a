"""An echo server and its clients on one GLib main loop, with qiotask.net.

The server is a NetListener on ``localhost``: the name is resolved and the
sockets bound in a worker thread, then every client is accepted and echoed
through fd watches on the GLib thread.  Each client connects by name in a
worker, then talks to the server through watches on the same loop.  Nothing
but the lookups and connects leaves the loop thread.

Run it with ``python examples/glib_echo.py [--clients N]``; it prints one
line per client and exits when all have their echo.
"""

from __future__ import annotations

import argparse
import threading

from gi.repository import GLib  # type: ignore[import-untyped]

import qiotask
from qiotask.net import NetListener, SocketChannel


def echo(channel: SocketChannel, condition: qiotask.IOCondition) -> bool:
    """Server side, on the GLib thread: send back what arrives."""
    data = channel.read()
    if data is None:
        return True  # woken for nothing: keep watching
    if not data:
        channel.close()  # the client is done
        return False
    channel.write(data)  # a few bytes: the socket takes them at once
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5, help="how many clients connect (at least 1)")
    args = parser.parse_args()
    if args.clients < 1:
        parser.error("--clients must be at least 1")

    loop = GLib.MainLoop()
    ctx = qiotask.attach(GLib.MainContext.default())
    listener = NetListener(context=ctx, name="echo")
    answered: list[str] = []
    failures: list[str] = []

    def finish_if_done() -> None:
        if len(answered) + len(failures) == args.clients:
            listener.close()
            loop.quit()

    def start_client(n: int, port: int) -> None:
        message = f"hello from client {n}".encode()

        def on_reply(channel: SocketChannel, condition: qiotask.IOCondition) -> bool:
            data = channel.read()
            if data is None:
                return True
            answered.append(f"client {n} got {data.decode()!r} on {threading.current_thread().name}")
            print(answered[-1], flush=True)
            channel.close()
            finish_if_done()
            return False

        def connected(channel: SocketChannel, err: BaseException | None, opaque: object) -> None:
            if err is not None:
                failures.append(f"client {n}: {err}")
                finish_if_done()
                return
            channel.add_watch(qiotask.IO_IN, on_reply)
            channel.write(message)

        SocketChannel(context=ctx).connect_async(f"localhost:{port}", connected)

    def opened(listener: NetListener, err: BaseException | None, opaque: object) -> None:
        if err is not None:
            failures.append(f"listen: {err}")
            loop.quit()
            return
        print(f"echo server on {', '.join(map(str, listener.addresses))}", flush=True)
        listener.set_client_func(lambda _listener, channel, _opaque: channel.add_watch(qiotask.IO_IN, echo))
        port = listener.addresses[0].port  # type: ignore[attr-defined]
        for n in range(args.clients):
            start_client(n, port)

    listener.open_async("localhost:0", 16, opened)
    loop.run()
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
