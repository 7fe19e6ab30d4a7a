"""``python -m qiotask demo``: the seed's worked examples, running live.

1. A task completed by a timer that polls three times.
2. A listen on ``localhost``: the name is resolved and the socket bound in a
   worker thread, the result reported on the main loop's thread.
3. A client connecting to that listener from a worker thread, while the main
   loop accepts it through an fd watch, and one line exchanged.
4. qiotask.net: an echo server on a NetListener and a client that connects
   by name; both run a TLS handshake (certificate made at run time) on the
   main loop, exchange three messages and shut down.

Each step prints the thread it ran on and how long it took.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from ._context import IO_IN, IOCondition, MainLoop, get_context
from ._task import Task
from .net import DNSResolver, NetListener, SocketChannel, TLSChannel


class QMyObject:
    """The seed's example object: owns a socket once an operation succeeds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock: socket.socket | None = None

    def __repr__(self) -> str:
        return f"<QMyObject {self.name}>"


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.start = time.perf_counter()

    def __call__(self, step: str, text: str, since: float | None = None) -> None:
        now = time.perf_counter()
        took = f" (took {(now - since) * 1000:.1f} ms)" if since is not None else ""
        thread = threading.current_thread().name
        self.out.write(f"[{(now - self.start) * 1000:7.1f} ms] {step:<8} {thread:<22} {text}{took}\n")
        self.out.flush()


def myobject_operation(
    obj: QMyObject, func: Callable[[Any, BaseException | None, Any], None], opaque: Any, say: _Printer
) -> Task[Any]:
    """The seed's first example: a timer polls, then completes the task."""
    task: Task[Any] = Task(obj, func, opaque, name="timer-operation")
    polls = [0]
    started = time.perf_counter()

    def timer() -> bool:
        polls[0] += 1
        say("timer", f"poll {polls[0]} of 3 on {obj!r}", started)
        if polls[0] < 3:
            return True  # carry on polling
        task.complete()  # on the loop thread: runs func before returning
        return False

    get_context().timeout_add(100, timer)
    return task


def myobject_listen_worker(task: Task[Any], address: tuple[str, int]) -> tuple[str, int]:
    """The seed's second example: resolve and bind, off the main loop."""
    obj: QMyObject = task.get_source()
    host, port = address
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    errors = []
    for family, kind, proto, _canon, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(1)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        obj.sock = sock
        bound = sock.getsockname()
        return (str(bound[0]), int(bound[1]))
    raise OSError(f"cannot listen on {host}:{port}: {errors}")


def run_demo(out: TextIO = sys.stdout) -> int:
    """Run the three examples on the default main loop; 0 on success."""
    say = _Printer(out)
    loop = MainLoop()
    outcome: dict[str, Any] = {}
    say("main", "qiotask demo: every callback below must run on MainThread")

    def check_main_thread(what: str) -> None:
        if threading.current_thread() is not threading.main_thread():
            outcome.setdefault("errors", []).append(f"{what} ran on {threading.current_thread().name}")

    # 1. The timer-driven task.
    t0 = time.perf_counter()

    def timer_done(source: Any, err: BaseException | None, opaque: Any) -> None:
        check_main_thread("timer func")
        say("func", f"timer task of {source!r} done: err={err!r} opaque={opaque!r}", t0)
        outcome["timer"] = err is None
        start_listen()

    myobject_operation(QMyObject("timer-object"), timer_done, "timer-opaque", say)

    # 2. listen on localhost in a worker thread.
    server = QMyObject("server")

    def start_listen() -> None:
        t1 = time.perf_counter()

        def listen_done(source: QMyObject, err: BaseException | None, opaque: Any) -> None:
            check_main_thread("listen func")
            if err is not None:
                say("func", f"listen failed: {err}", t1)
                outcome["listen"] = False
                loop.quit()
                return
            address = listen_task.get_result()
            say("func", f"{source!r} listening on {address[0]} port {address[1]}", t1)
            outcome["listen"] = True
            start_client(address)

        def listen_worker(task: Task[Any], address: tuple[str, int]) -> tuple[str, int]:
            w0 = time.perf_counter()
            result = myobject_listen_worker(task, address)
            say("worker", f"resolved 'localhost' and bound {result}", w0)
            return result

        listen_task: Task[tuple[str, int]] = Task(server, listen_done, name="listen")
        listen_task.run_in_thread(listen_worker, ("localhost", 0))

    # 3. A client connecting from a worker; the loop accepts via an fd watch.
    def start_client(address: tuple[str, int]) -> None:
        assert server.sock is not None
        t2 = time.perf_counter()
        served = {"accepted": False, "client": False}

        def maybe_finish() -> None:
            if served["accepted"] and served["client"]:
                outcome["client"] = True
                run_echo(say, check_main_thread, outcome, loop.quit)

        def on_connection(fd: int, condition: IOCondition) -> bool:
            check_main_thread("accept watch")
            assert server.sock is not None
            conn, peer = server.sock.accept()
            with conn:
                conn.sendall(b"hello from the main loop\n")
            say("watch", f"accepted {peer[0]} port {peer[1]} ({condition!r}) and greeted it", t2)
            served["accepted"] = True
            maybe_finish()
            return False  # one client is enough: remove the watch

        get_context().io_add_watch(server.sock, IO_IN, on_connection)

        def client_worker(task: Task[Any], addr: tuple[str, int]) -> bytes:
            w0 = time.perf_counter()
            with socket.create_connection(addr, timeout=5) as sock:
                say("worker", f"connected to {addr[0]} port {addr[1]}", w0)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(100)
                    if not chunk:
                        break
                    data += chunk
            return data

        def client_done(source: Any, err: BaseException | None, opaque: Any) -> None:
            check_main_thread("client func")
            if err is not None:
                say("func", f"client failed: {err}", t2)
                outcome["client"] = False
                loop.quit()
                return
            say("func", f"client read {client_task.get_result()!r}", t2)
            served["client"] = True
            maybe_finish()

        client_task: Task[bytes] = Task(QMyObject("client"), client_done, name="client")
        client_task.run_in_thread(client_worker, (address[0], address[1]))

    # A safety net so the demo can never hang.
    def give_up() -> bool:
        outcome.setdefault("errors", []).append("timed out after 10 s")
        loop.quit()
        return False

    safety = get_context().timeout_add(10_000, give_up)
    loop.run()
    safety.remove()
    if server.sock is not None:
        server.sock.close()
    errors = outcome.get("errors", [])
    ok = not errors and all(outcome.get(k) for k in ("timer", "listen", "client", "echo"))
    for error in errors:
        say("main", f"ERROR: {error}")
    say("main", "demo finished: " + ("all steps ran, callbacks on the main thread" if ok else "FAILED"))
    return 0 if ok else 1


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """(server, client) TLS contexts with a CA and a localhost certificate
    made now; None without ``trustme`` (the ``demo`` extra)."""
    try:
        import trustme
    except ImportError:
        return None
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


MESSAGES = (b"ping 1", b"ping 2", b"ping 3")


def run_echo(say: _Printer, check: Callable[[str], None], outcome: dict[str, Any], done: Callable[[], None]) -> None:
    """Step 4: an echo server on a NetListener, a client connecting by name,
    TLS on both sides, three messages; calls ``done()`` when all is closed."""
    t0 = time.perf_counter()

    def make_certificates(_task: Task[Any], _opaque: Any) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
        # Key generation is CPU work: a worker's job, not the loop's.
        made = _tls_contexts()
        if made is not None:
            say("worker", "made a CA and a certificate for localhost", t0)
        return made

    def certificates_made(_source: Any, err: BaseException | None, _opaque: Any) -> None:
        check("certificate func")
        contexts = certificates.get_result() if err is None else None
        if contexts is None:
            why = f"no certificate ({err!r})" if err is not None else "TLS needs trustme (pip install 'qiotask[demo]')"
            say("func", f"{why}; the echo runs in plain TCP")
        _echo(contexts, say, check, outcome, done)

    certificates: Task[tuple[ssl.SSLContext, ssl.SSLContext] | None] = Task(
        "certificates", certificates_made, name="certificates"
    )
    certificates.run_in_thread(make_certificates)


def _echo(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext] | None,
    say: _Printer,
    check: Callable[[str], None],
    outcome: dict[str, Any],
    done: Callable[[], None],
) -> None:
    t0 = time.perf_counter()

    def resolve(*args: Any) -> Any:
        w0 = time.perf_counter()
        found = socket.getaddrinfo(*args)
        say("worker", f"resolved {args[0]!r}: {sorted({info[4][0] for info in found})}", w0)
        return found

    resolver = DNSResolver(getaddrinfo=resolve)
    listener = NetListener(name="echo", resolver=resolver)
    clock = {"connect": t0}
    state: dict[str, Any] = {"echoed": 0, "server_closed": False, "client_closed": False}

    def fail(what: str, err: BaseException) -> None:
        say("func", f"{what} failed: {err!r}")
        outcome["echo"] = False
        listener.close()
        done()

    def finish_if_closed() -> None:
        if state["server_closed"] and state["client_closed"]:
            listener.close()
            outcome["echo"] = state["echoed"] == len(MESSAGES)
            say("func", f"echo server and client closed; {state['echoed']} messages echoed", t0)
            done()

    # -- the server ----------------------------------------------------------

    def on_client(_listener: NetListener, channel: SocketChannel, _opaque: Any) -> None:
        check("client func")
        say("accept", f"echo server accepted {channel.remote_address}")
        if contexts is None:
            serve(channel)
            return

        def handshake_done(tls: TLSChannel, err: BaseException | None, _opaque: Any) -> None:
            check("server handshake func")
            if err is not None:
                tls.close()
                fail("server TLS handshake", err)
                return
            say("func", f"server TLS handshake done: {tls.version()}")
            serve(tls)

        TLSChannel.new_server(channel, contexts[0]).handshake(handshake_done)

    def serve(conn: SocketChannel | TLSChannel) -> None:
        def on_readable(conn: SocketChannel | TLSChannel, _condition: IOCondition) -> bool:
            check("server watch")
            data = conn.read()
            if data is None:
                return True
            if not data:
                conn.close()
                say("watch", "echo server: client said goodbye; connection closed")
                state["server_closed"] = True
                finish_if_closed()
                return False
            conn.write(data)  # a few bytes: the socket takes them at once
            say("watch", f"echo server echoed {data!r}")
            return True

        conn.add_watch(IO_IN, on_readable)

    # -- the client ----------------------------------------------------------

    def talk(conn: SocketChannel | TLSChannel) -> None:
        def send_next() -> None:
            conn.write(MESSAGES[state["echoed"]])

        def on_readable(conn: SocketChannel | TLSChannel, _condition: IOCondition) -> bool:
            check("client watch")
            data = conn.read()
            if data is None:
                return True
            say("watch", f"client got {data!r} back")
            state["echoed"] += data == MESSAGES[state["echoed"]]
            if state["echoed"] < len(MESSAGES) and data:
                send_next()
                return True
            conn.close()
            state["client_closed"] = True
            finish_if_closed()
            return False

        conn.add_watch(IO_IN, on_readable)
        send_next()

    def connected(channel: SocketChannel, err: BaseException | None, _opaque: Any) -> None:
        check("connect func")
        if err is not None:
            fail("connect", err)
            return
        say("func", f"client connected {channel.local_address} -> {channel.remote_address}", clock["connect"])
        if contexts is None:
            talk(channel)
            return

        def handshake_done(tls: TLSChannel, err: BaseException | None, _opaque: Any) -> None:
            check("client handshake func")
            if err is not None:
                tls.close()
                fail("client TLS handshake", err)
                return
            say("func", f"client TLS handshake done: {tls.version()}, server certificate valid for 'localhost'")
            talk(tls)

        TLSChannel.new_client(channel, contexts[1], "localhost").handshake(handshake_done)

    def opened(_listener: NetListener, err: BaseException | None, _opaque: Any) -> None:
        check("listener func")
        if err is not None:
            fail("listen", err)
            return
        addresses = listener.addresses
        say("func", f"echo server listening on {', '.join(map(str, addresses))}", t0)
        listener.set_client_func(on_client)
        clock["connect"] = time.perf_counter()
        port = addresses[0].port  # type: ignore[attr-defined]
        SocketChannel(resolver=resolver).connect_async(f"localhost:{port}", connected)

    listener.open_async("localhost:0", 16, opened)
