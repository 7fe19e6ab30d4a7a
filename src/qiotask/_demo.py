"""``python -m qiotask demo``: what qiotask is for, then the seed's examples, live.

The seed is QEMU's ``include/io/task.h``, the C header whose QIOTask qiotask
implements.  Its worked examples act on a ``QMyObject``: a stand-in for one
of the caller's own objects, one that owns a socket, say.

1. A heartbeat timer ticks on the loop thread every 100 ms while a blocking
   job (``time.sleep``, standing in for a slow DNS lookup or a blocking
   library) runs in a worker thread: the ticks go on.
2. The same job run on the loop thread: not one tick until it returns.
3. The seed's first example: a task that a timer completes after three polls.
4. The seed's second example: ``localhost`` resolved and a socket bound in a
   worker, the result delivered on the loop thread.
5. A client connecting to that socket from a worker while the loop accepts
   it through an fd watch; one line exchanged.
6. qiotask.net: an echo server on a NetListener and a client that connects by
   name, TLS on both sides (a certificate made at run time by trustme, the
   ``demo`` extra; plain TCP without it), three messages.

Each line printed says when, what ran and on which thread, and every
callback checks that it runs on the main thread, where the loop runs.  The
demo needs the standard library only (and trustme for TLS): nothing on its
path imports a loop toolkit (uvloop, gi, PySide6, tkinter, trio).
"""

from __future__ import annotations

import itertools
import socket
import ssl
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from ._context import IO_IN, IOCondition, MainLoop, Source, get_context
from ._task import Task
from .net import DNSResolver, NetListener, SocketChannel, TLSChannel

#: The heartbeat's period: often enough to show a pause, seldom enough to read.
TICK_MS = 100
#: The blocking job's length: five heartbeats, so that a frozen loop is plain
#: to see, and short enough for the whole demo to take about two seconds.
JOB_SECONDS = 0.5
#: The demo fails rather than hangs if its steps have not finished by then.
GIVE_UP_MS = 10_000

#: What a step calls when it is over, to start the next one.
Next = Callable[[], None]


class QMyObject:
    """The seed's example object: owns a socket once an operation succeeds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock: socket.socket | None = None

    def __repr__(self) -> str:
        return f"<QMyObject {self.name}>"


class _Demo:
    """What the steps share: the output, the loop, the clock, the failures."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.loop = MainLoop()
        self.start = time.perf_counter()
        self.failures: list[str] = []
        self.heartbeat: _Heartbeat | None = None  # from step 1 to the end of step 2
        self.server = QMyObject("server")  # listens from step 4 to the end

    def write(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """An explanation, indented and wrapped."""
        self.write(textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="  "))

    def say(self, kind: str, text: str, since: float | None = None) -> None:
        """One line: the time since the start, ``kind`` (what ran), the
        current thread and ``text``, and how long since ``since``."""
        now = time.perf_counter()
        took = f" (took {(now - since) * 1000:.1f} ms)" if since is not None else ""
        thread = threading.current_thread().name
        self.write(f"[{(now - self.start) * 1000:7.1f} ms] {kind:<6} {thread:<16} {text}{took}")

    def check_loop_thread(self, what: str) -> None:
        """Record a failure unless called on the main thread, the loop's."""
        if threading.current_thread() is not threading.main_thread():
            self.failures.append(f"{what} ran on {threading.current_thread().name}")

    def fail(self, what: str) -> None:
        """Record a failure and stop the loop: no further step runs."""
        self.failures.append(what)
        self.loop.quit()


class _Heartbeat:
    """A timer on the loop thread that prints a tick every ``TICK_MS`` and
    keeps the time of each, so that a step can count the ticks that came
    while a job ran."""

    def __init__(self, demo: _Demo) -> None:
        self.demo = demo
        self.started = time.perf_counter()
        self.times: list[float] = []
        self._then: tuple[float, Next] | None = None
        self._source: Source = get_context().timeout_add(TICK_MS, self._tick)

    def _tick(self) -> bool:
        self.demo.check_loop_thread("heartbeat")
        now = time.perf_counter()
        last = self.times[-1] if self.times else self.started
        self.times.append(now)
        self.demo.say("tick", f"tick {len(self.times)}, {(now - last) * 1000:.0f} ms after the last")
        if self._then is not None and now > self._then[0]:
            then, self._then = self._then[1], None
            then()
        return True  # keep ticking

    def after(self, moment: float, then: Next) -> None:
        """Call ``then()`` at the first tick after ``moment`` (a perf_counter() time)."""
        self._then = (moment, then)

    def count(self, start: float, end: float) -> tuple[int, float]:
        """The ticks from ``start`` to ``end``, and the longest gap between
        ticks from the last one before ``start`` to the first one after ``end``."""
        inside = [t for t in self.times if start <= t <= end]
        before = [t for t in self.times if t < start] or [self.started]
        after = [t for t in self.times if t > end][:1]
        beats = [before[-1], *inside, *after]
        return len(inside), max(b - a for a, b in itertools.pairwise(beats))

    def stop(self) -> None:
        self._source.remove()


# -- step 1 and 2: the point of the library ----------------------------------


def step_job_in_worker(demo: _Demo, next_step: Next) -> None:
    """The job runs in a worker; the heartbeat goes on."""
    heartbeat = demo.heartbeat = _Heartbeat(demo)

    def job(_task: Task[Any], _opaque: Any) -> tuple[float, float]:
        start = time.perf_counter()
        demo.say("job", f"time.sleep({JOB_SECONDS}) in a worker: it blocks this thread, not the loop")
        time.sleep(JOB_SECONDS)
        end = time.perf_counter()
        demo.say("job", "done", start)
        return start, end

    def done(_source: Any, err: BaseException | None, _opaque: Any) -> None:
        demo.check_loop_thread("step 1 func")
        if err is not None:
            demo.fail(f"the worker's job failed: {err!r}")
            return
        start, end = task.result()
        demo.say("func", "the job's result was handed to the loop thread")

        def report() -> None:
            ticks, gap = heartbeat.count(start, end)
            demo.note(
                f"Result: {ticks} ticks during the {JOB_SECONDS:g} s job in a worker; "
                f"the longest gap between ticks was {gap * 1000:.0f} ms."
            )
            next_step()

        heartbeat.after(end, report)

    task: Task[tuple[float, float]] = Task(None, done, name="blocking-job")
    task.run_in_thread(job)


def step_job_on_loop(demo: _Demo, next_step: Next) -> None:
    """The same job in a loop callback; the heartbeat stops until it returns."""
    heartbeat = demo.heartbeat
    assert heartbeat is not None  # made by step 1

    def job() -> None:
        start = time.perf_counter()
        demo.say("job", f"time.sleep({JOB_SECONDS}) on the loop thread: nothing else runs until it returns")
        time.sleep(JOB_SECONDS)
        end = time.perf_counter()
        demo.say("job", "done", start)

        def report() -> None:
            heartbeat.stop()
            ticks, gap = heartbeat.count(start, end)
            demo.note(
                f"Result: {ticks} ticks during the {JOB_SECONDS:g} s job on the loop thread; "
                f"the heartbeat stopped for {gap * 1000:.0f} ms (a GUI would have frozen as long)."
            )
            next_step()

        heartbeat.after(end, report)

    get_context().idle_add(job)  # returns None: runs once


# -- steps 3 to 5: the seed's examples ----------------------------------------


def myobject_operation(
    obj: QMyObject, func: Callable[[Any, BaseException | None, Any], None], opaque: Any, demo: _Demo
) -> Task[Any]:
    """The seed's first example: a timer polls, then completes the task."""
    task: Task[Any] = Task(obj, func, opaque, name="timer-operation")
    polls = [0]
    started = time.perf_counter()

    def timer() -> bool:
        polls[0] += 1
        demo.say("timer", f"poll {polls[0]} of 3 on {obj!r}", started)
        if polls[0] < 3:
            return True  # carry on polling
        task.complete()  # on the loop thread: runs func before returning
        return False

    get_context().timeout_add(100, timer)
    return task


def step_timer_task(demo: _Demo, next_step: Next) -> None:
    started = time.perf_counter()

    def done(source: Any, err: BaseException | None, opaque: Any) -> None:
        demo.check_loop_thread("timer task func")
        demo.say("func", f"timer task of {source!r} done: err={err!r} opaque={opaque!r}", started)
        if err is not None:
            demo.fail(f"the timer task failed: {err!r}")
            return
        next_step()

    myobject_operation(QMyObject("timer-object"), done, "timer-opaque", demo)


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


def step_listen_in_worker(demo: _Demo, next_step: Next) -> None:
    started = time.perf_counter()

    def listen_worker(task: Task[Any], address: tuple[str, int]) -> tuple[str, int]:
        w0 = time.perf_counter()
        result = myobject_listen_worker(task, address)
        demo.say("worker", f"resolved 'localhost' and bound {result}", w0)
        return result

    def done(source: QMyObject, err: BaseException | None, _opaque: Any) -> None:
        demo.check_loop_thread("listen func")
        if err is not None:
            demo.fail(f"listen failed: {err!r}")
            return
        host, port = task.result()
        demo.say("func", f"{source!r} listening on {host} port {port}", started)
        next_step()

    task: Task[tuple[str, int]] = Task(demo.server, done, name="listen")
    task.run_in_thread(listen_worker, ("localhost", 0))


def step_connect_and_accept(demo: _Demo, next_step: Next) -> None:
    server = demo.server.sock
    assert server is not None  # bound by step 4
    address = server.getsockname()[:2]
    started = time.perf_counter()
    over = {"accepted": False, "read": False}

    def maybe_next() -> None:
        if over["accepted"] and over["read"]:
            next_step()

    def on_connection(_fd: int, condition: IOCondition) -> bool:
        demo.check_loop_thread("accept watch")
        conn, peer = server.accept()
        with conn:
            conn.sendall(b"hello from the main loop\n")
        demo.say("watch", f"accepted {peer[0]} port {peer[1]} ({condition!r}) and greeted it", started)
        over["accepted"] = True
        maybe_next()
        return False  # one client is enough: remove the watch

    get_context().io_add_watch(server, IO_IN, on_connection)

    def client_worker(_task: Task[Any], addr: tuple[str, int]) -> bytes:
        w0 = time.perf_counter()
        with socket.create_connection(addr, timeout=5) as sock:
            demo.say("worker", f"connected to {addr[0]} port {addr[1]}", w0)
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(100)
                if not chunk:
                    break
                data += chunk
        return data

    def done(_source: Any, err: BaseException | None, _opaque: Any) -> None:
        demo.check_loop_thread("client func")
        if err is not None:
            demo.fail(f"the client failed: {err!r}")
            return
        demo.say("func", f"client read {task.get_result()!r}", started)
        over["read"] = True
        maybe_next()

    task: Task[bytes] = Task(QMyObject("client"), done, name="client")
    task.run_in_thread(client_worker, address)


# -- step 6: qiotask.net ------------------------------------------------------


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


def step_tls_echo(demo: _Demo, next_step: Next) -> None:
    """Step 6: an echo server on a NetListener, a client connecting by name,
    TLS on both sides, three messages; ``next_step()`` once all is closed."""
    t0 = time.perf_counter()

    def make_certificates(_task: Task[Any], _opaque: Any) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
        # Key generation is CPU work: a worker's job, not the loop's.
        made = _tls_contexts()
        if made is not None:
            demo.say("worker", "made a CA and a certificate for localhost", t0)
        return made

    def certificates_made(_source: Any, err: BaseException | None, _opaque: Any) -> None:
        demo.check_loop_thread("certificate func")
        contexts = certificates.get_result() if err is None else None
        if contexts is None:
            why = f"no certificate ({err!r})" if err is not None else "TLS needs trustme (pip install 'qiotask[demo]')"
            demo.say("func", f"{why}; the echo runs in plain TCP")
        _echo(contexts, demo, next_step)

    certificates: Task[tuple[ssl.SSLContext, ssl.SSLContext] | None] = Task(
        "certificates", certificates_made, name="certificates"
    )
    certificates.run_in_thread(make_certificates)


def _echo(contexts: tuple[ssl.SSLContext, ssl.SSLContext] | None, demo: _Demo, next_step: Next) -> None:
    t0 = time.perf_counter()

    def resolve(*args: Any) -> Any:
        w0 = time.perf_counter()
        found = socket.getaddrinfo(*args)
        demo.say("worker", f"resolved {args[0]!r}: {sorted({info[4][0] for info in found})}", w0)
        return found

    resolver = DNSResolver(getaddrinfo=resolve)
    listener = NetListener(name="echo", resolver=resolver)
    clock = {"connect": t0}
    state: dict[str, Any] = {"echoed": 0, "server_closed": False, "client_closed": False}

    def fail(what: str, err: BaseException) -> None:
        listener.close()
        demo.fail(f"{what} failed: {err!r}")

    def finish_if_closed() -> None:
        if state["server_closed"] and state["client_closed"]:
            listener.close()
            demo.say("func", f"echo server and client closed; {state['echoed']} messages echoed", t0)
            if state["echoed"] != len(MESSAGES):
                demo.fail(f"{state['echoed']} of {len(MESSAGES)} messages came back")
                return
            next_step()

    # -- the server ----------------------------------------------------------

    def on_client(_listener: NetListener, channel: SocketChannel, _opaque: Any) -> None:
        demo.check_loop_thread("client func")
        demo.say("accept", f"echo server accepted {channel.remote_address}")
        if contexts is None:
            serve(channel)
            return

        def handshake_done(tls: TLSChannel, err: BaseException | None, _opaque: Any) -> None:
            demo.check_loop_thread("server handshake func")
            if err is not None:
                tls.close()
                fail("server TLS handshake", err)
                return
            demo.say("func", f"server TLS handshake done: {tls.version()}")
            serve(tls)

        TLSChannel.new_server(channel, contexts[0]).handshake(handshake_done)

    def serve(conn: SocketChannel | TLSChannel) -> None:
        def on_readable(conn: SocketChannel | TLSChannel, _condition: IOCondition) -> bool:
            demo.check_loop_thread("server watch")
            data = conn.read()
            if data is None:
                return True
            if not data:
                conn.close()
                demo.say("watch", "echo server: client said goodbye; connection closed")
                state["server_closed"] = True
                finish_if_closed()
                return False
            conn.write(data)  # a few bytes: the socket takes them at once
            demo.say("watch", f"echo server echoed {data!r}")
            return True

        conn.add_watch(IO_IN, on_readable)

    # -- the client ----------------------------------------------------------

    def talk(conn: SocketChannel | TLSChannel) -> None:
        def send_next() -> None:
            conn.write(MESSAGES[state["echoed"]])

        def on_readable(conn: SocketChannel | TLSChannel, _condition: IOCondition) -> bool:
            demo.check_loop_thread("client watch")
            data = conn.read()
            if data is None:
                return True
            demo.say("watch", f"client got {data!r} back")
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
        demo.check_loop_thread("connect func")
        if err is not None:
            fail("connect", err)
            return
        demo.say("func", f"client connected {channel.local_address} -> {channel.remote_address}", clock["connect"])
        if contexts is None:
            talk(channel)
            return

        def handshake_done(tls: TLSChannel, err: BaseException | None, _opaque: Any) -> None:
            demo.check_loop_thread("client handshake func")
            if err is not None:
                tls.close()
                fail("client TLS handshake", err)
                return
            demo.say("func", f"client TLS handshake done: {tls.version()}, server certificate valid for 'localhost'")
            talk(tls)

        TLSChannel.new_client(channel, contexts[1], "localhost").handshake(handshake_done)

    def opened(_listener: NetListener, err: BaseException | None, _opaque: Any) -> None:
        demo.check_loop_thread("listener func")
        if err is not None:
            fail("listen", err)
            return
        addresses = listener.addresses
        demo.say("func", f"echo server listening on {', '.join(map(str, addresses))}", t0)
        listener.set_client_func(on_client)
        clock["connect"] = time.perf_counter()
        port = addresses[0].port  # type: ignore[attr-defined]
        SocketChannel(resolver=resolver).connect_async(f"localhost:{port}", connected)

    listener.open_async("localhost:0", 16, opened)


#: Each step: its title, what it shows, and the function that starts it.
STEPS: tuple[tuple[str, tuple[str, ...], Callable[[_Demo, Next], None]], ...] = (
    (
        "a blocking job in a worker thread; the loop keeps running",
        (
            f"A heartbeat timer ticks on the loop thread every {TICK_MS} ms while Task(...).run_in_thread(job) "
            "runs the job on a pool thread; the result comes back on the loop thread.",
        ),
        step_job_in_worker,
    ),
    (
        "the same job on the loop thread; the loop freezes",
        ("A plain blocking call in a loop callback: no tick (no redraw, no I/O) until it returns.",),
        step_job_on_loop,
    ),
    (
        "the seed's first example, a task completed by a timer",
        (
            "The seed is QEMU's include/io/task.h, the C header whose QIOTask qiotask implements; its "
            "examples act on a QMyObject, which stands for an object of yours (one that owns a socket, say).",
            "A timer polls three times, then completes the task; its callback runs at once, on the loop thread.",
        ),
        step_timer_task,
    ),
    (
        "the seed's second example, listen in a worker",
        (
            "Resolving a name and binding a socket may block, so a worker does both; "
            "the callback gets the address on the loop thread.",
        ),
        step_listen_in_worker,
    ),
    (
        "a client connects from a worker; the loop accepts through an fd watch",
        ("io_add_watch calls back on the loop thread when the listening socket is readable.",),
        step_connect_and_accept,
    ),
    (
        "qiotask.net, a TLS echo server and client on one loop",
        (
            "Names resolved and a certificate made in workers; connect, TLS handshakes and echoes "
            "driven by fd watches on the loop thread.",
        ),
        step_tls_echo,
    ),
)


def run_demo(out: TextIO | None = None) -> int:
    """Run the steps on the default main loop, writing to ``out`` (default:
    ``sys.stdout`` at the time of the call); 0 if all of them succeeded."""
    demo = _Demo(out if out is not None else sys.stdout)
    demo.write("qiotask demo: blocking work runs in worker threads, and each result is handed back")
    demo.write("on the event loop's thread. Each line: [time since start] what ran, its thread, what it did.")

    def run_step(index: int) -> None:
        if index == len(STEPS):
            demo.loop.quit()
            return
        title, notes, start = STEPS[index]
        demo.write()
        demo.write(f"Step {index + 1}/{len(STEPS)}: {title}")
        for note in notes:
            demo.note(note)
        start(demo, lambda: run_step(index + 1))

    def give_up() -> bool:
        demo.fail(f"timed out after {GIVE_UP_MS / 1000:g} s")
        return False

    context = get_context()
    context.idle_add(run_step, 0)  # returns None: runs once
    safety = context.timeout_add(GIVE_UP_MS, give_up)
    demo.loop.run()
    safety.remove()
    if demo.server.sock is not None:
        demo.server.sock.close()
    demo.write()
    for failure in demo.failures:
        demo.write(f"ERROR: {failure}")
    if demo.failures:
        demo.write("demo FAILED")
        return 1
    demo.write(f"demo finished: all {len(STEPS)} steps ran, every callback on the main thread (MainThread).")
    return 0
