"""Connections accepted and echoed per second on loopback: a qiotask NetListener echo server against asyncio's.

What is measured
----------------
Two echo servers listen on ``127.0.0.1`` (an ephemeral port each, the same backlog of 128), each in a child
process of its own:

``qiotask``
    What a qiotask user writes: ``NetListener().open_sync("127.0.0.1:0", 128)``,
    ``listener.set_client_func(on_client)`` and ``qiotask.MainLoop().run()`` -- the default context, an
    asyncio loop that qiotask embeds and runs itself.  ``on_client`` adds ``channel.add_watch(IO_IN,
    on_readable)``; ``on_readable`` reads, writes back what it read (a partial write parks the rest and
    switches to an ``IO_OUT`` watch until it is sent) and closes the channel at end of stream.
``asyncio``
    The idiomatic peer on the same (default, selector) event loop: ``asyncio.start_server(handle, "127.0.0.1",
    0, backlog=128)``, where ``handle`` loops on ``await reader.read(65536)``, ``writer.write(data)`` and
    ``await writer.drain()`` until end of stream, then ``writer.close()``.  (It does not ``await
    writer.wait_closed()``, which the asyncio docs' example adds and which would only make it slower.)

The load generator is the parent process -- the same code for both servers, and a process of its own, so it
does not share a GIL with the server it measures.  It is lean on purpose (plain non-blocking sockets on one
``select.epoll``, no asyncio) so that the server is the bottleneck: it keeps ``--inflight`` (64) connections
in flight, and each *connection* is: ``connect``, send 64 bytes, read until all 64 came back (checking them),
``close``; then the next one starts.  A measurement is ``--conns`` (15,000) connections.

For each server it reports, as ``throughput.py`` does:

- conn/s: connections divided by the wall time from the first ``connect`` to the last ``close``;
- p50/p99 latency of a connection, ``connect`` to echo received, as the client sees it;
- server CPU µs/conn: the server process's CPU time (user + system, from ``/proc/PID/stat``) per connection;
- server and client CPU use: CPU seconds per wall second of each process while measuring.  A server near
  1.0 with the client below it means the server is the bottleneck, as it should be.  The report warns when a
  server used less than 0.9 CPUs or less than the client: its rate is then capped by the client or by the
  machine (on 2 cores, a server needing under ~65 µs/conn leaves the client and the kernel's TCP work too
  little room, around 14,000 conn/s here), and server CPU µs/conn is the fairer comparison;
- the ratio of qiotask's conn/s to asyncio's, the median of the per-round ratios.

The verdict: PASS if the NetListener server reaches at least 80% of asyncio's rate.

Why interleaved rounds
----------------------
The machines this runs on are small (2 cores) and noisy: single-thread speed swings about 2x from second to
second.  So the run is made of ``--rounds`` (7) rounds; each round measures both servers once (each after a
warm-up of 500 connections to the same server), with the order alternating from round to round.  Both
servers live for the whole run, and only the one being measured gets connections.  Every figure is the
median over the rounds; the ratio is the median of the per-round ratios, each between two measurements
made a second or two apart.  Only ratios mean anything across runs or machines.  The header says how many
CPUs other processes used meanwhile (from ``/proc/stat``); above 0.25 the figures are suspect.

The client closes first, so its side keeps the TIME_WAIT sockets; Linux reuses them for new loopback
connections (``net.ipv4.tcp_tw_reuse`` = 2, the default), so ports do not run out.

A full run takes about 20 s here (~12,000 conn/s each); ``--quick`` (3 rounds of 2,000 connections, a few
seconds) is a smoke test.  ``--profile DIR`` runs both servers under cProfile and writes
``DIR/net-qiotask.prof`` and ``DIR/net-asyncio.prof`` (the ratio then measures the profiler as much as the
servers).

Linux only (``select.epoll``, ``/proc``).  This is a report, not a test: the exit status is 0 whatever the
figures are (1 if a server or the load generator fails).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import os
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

# Shared with throughput.py (benchmarks/ is sys.path[0] when this script runs).
from throughput import (
    describe_environment,
    environment,
    machine_busy_seconds,
    percentile,
    warn_if_busy,
    write_json,
)

import qiotask
from qiotask.net import NetListener, SocketChannel

CONTENDERS = ("qiotask", "asyncio")
REFERENCE = "asyncio"
TARGET_RATIO = 0.8
HOST = "127.0.0.1"
BACKLOG = 128
MESSAGE = bytes(range(64))
WARMUP_CONNS = 500
IDLE_TIMEOUT = 10.0  # seconds without any progress after which a measurement fails
START_TIMEOUT = 30.0  # seconds for a server process to say which port it listens on
PORT_MARK = "@@net-port "
SATURATED = 0.9  # server CPU use below which the server was not the (only) bottleneck

perf_counter = time.perf_counter


@dataclass
class Sample:
    """One measurement of one server in one round."""

    contender: str
    round: int
    conns: int
    seconds: float
    server_cpu_seconds: float
    client_cpu_seconds: float
    p50_us: float
    p99_us: float

    @property
    def conns_per_s(self) -> float:
        return self.conns / self.seconds

    @property
    def server_cpu_us_per_conn(self) -> float:
        return self.server_cpu_seconds / self.conns * 1e6


@dataclass
class Summary:
    """The medians over the rounds of one server."""

    contender: str
    conns_per_s: float
    p50_us: float
    p99_us: float
    server_cpu_us_per_conn: float
    server_cpu_use: float  # server CPU seconds per wall second
    client_cpu_use: float
    ratio: float  # median of the per-round ratios of conn/s to the reference's
    ratios: list[float]


# -- the servers (each in a child process) --------------------------------------------------------------


def serve_qiotask(ready: Any, stop_when_stdin_closes: Any) -> None:
    """The NetListener echo server, as a qiotask user writes it."""

    def on_client(_listener: NetListener, channel: SocketChannel, _opaque: Any) -> None:
        channel.add_watch(qiotask.IO_IN, on_readable)

    def on_readable(channel: SocketChannel, _condition: qiotask.IOCondition) -> bool:
        try:
            data = channel.read()
            if data is None:
                return True  # nothing after all
            if not data:
                channel.close()  # end of stream: the client is done
                return False
            sent = channel.write(data) or 0
        except OSError:  # reset by the client
            channel.close()
            return False
        if sent == len(data):
            return True
        # The client is not reading: send the rest when it can take it, reading nothing more until then.
        rest = [memoryview(data)[sent:]]

        def on_writable(channel: SocketChannel, _condition: qiotask.IOCondition) -> bool:
            try:
                rest[0] = rest[0][channel.write(rest[0]) or 0 :]
            except OSError:
                channel.close()
                return False
            if rest[0]:
                return True
            channel.add_watch(qiotask.IO_IN, on_readable)
            return False

        channel.add_watch(qiotask.IO_OUT, on_writable)
        return False

    loop = qiotask.MainLoop()
    listener = NetListener(name="echo")
    listener.open_sync(f"{HOST}:0", BACKLOG)
    listener.set_client_func(on_client)
    ready(listener.addresses[0].port)  # type: ignore[attr-defined]
    stop_when_stdin_closes(loop.quit)
    loop.run()
    listener.close()


def serve_asyncio(ready: Any, stop_when_stdin_closes: Any) -> None:
    """The asyncio streams echo server."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:  # reset by the client
            pass
        writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        server = await asyncio.start_server(handle, HOST, 0, backlog=BACKLOG)
        ready(server.sockets[0].getsockname()[1])
        stop_when_stdin_closes(lambda: loop.call_soon_threadsafe(stop.set))
        async with server:
            await stop.wait()

    asyncio.run(main())


SERVERS = {"qiotask": serve_qiotask, "asyncio": serve_asyncio}


def server_main(kind: str, profile: str | None) -> int:
    """In a child process: run one server until stdin closes."""

    def ready(port: int) -> None:
        print(f"{PORT_MARK}{port}", flush=True)

    def stop_when_stdin_closes(stop: Any) -> None:
        def wait() -> None:
            sys.stdin.buffer.read()
            stop()

        threading.Thread(target=wait, name="stdin-watch", daemon=True).start()

    if profile is None:
        SERVERS[kind](ready, stop_when_stdin_closes)
        return 0
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        SERVERS[kind](ready, stop_when_stdin_closes)
    finally:
        profiler.disable()
        profiler.dump_stats(os.path.join(profile, f"net-{kind}.prof"))
    return 0


class Server:
    """A server's child process, seen from the parent."""

    def __init__(self, kind: str, profile: str | None) -> None:
        self.kind = kind
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", kind]
        if profile is not None:
            cmd += ["--profile", profile]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = self._read_port()

    def _read_port(self) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith(PORT_MARK):
                return int(line[len(PORT_MARK) :])
        self.proc.kill()
        raise RuntimeError(f"the {self.kind} server did not start (exit status {self.proc.poll()})")

    def cpu_seconds(self) -> float | None:
        """The process's CPU time so far (Linux ``/proc``), or None."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


# -- the load generator (the parent process) -----------------------------------------------------------


def drive(port: int, conns: int, inflight: int) -> list[float]:
    """Make ``conns`` echo connections to ``port``, ``inflight`` at a time; return their latencies (s).

    Each: non-blocking ``connect``, send ``MESSAGE`` (at once if the connection is already up, as it
    mostly is on loopback, else when epoll says writable), read until all of it came back, ``close``.
    """
    address = (HOST, port)
    size = len(MESSAGE)
    epoll = select.epoll()
    pending: dict[int, list[Any]] = {}  # fd -> [socket, started at, bytes received, message sent]
    latencies: list[float] = []
    started = 0
    EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
    STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK  # no setblocking() call

    def start() -> None:
        sock = socket.socket(socket.AF_INET, STREAM_NONBLOCK)
        t0 = perf_counter()
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(err, f"connect to {HOST}:{port}: {os.strerror(err)}")
        fd = sock.fileno()
        try:
            sock.send(MESSAGE)  # 64 bytes: all or nothing on a fresh socket
        except BlockingIOError:  # still connecting
            pending[fd] = [sock, t0, b"", False]
            epoll.register(fd, EPOLLOUT)
            return
        pending[fd] = [sock, t0, b"", True]
        epoll.register(fd, EPOLLIN)

    try:
        for _ in range(min(inflight, conns)):
            start()
        started = min(inflight, conns)
        while pending:
            events = epoll.poll(IDLE_TIMEOUT)
            if not events:
                raise TimeoutError(f"no progress for {IDLE_TIMEOUT:g} s with {len(pending)} connections open")
            for fd, _event in events:
                conn = pending[fd]
                sock = conn[0]
                if not conn[3]:
                    sock.send(MESSAGE)  # raises if the connection failed
                    conn[3] = True
                    epoll.modify(fd, EPOLLIN)
                    continue
                data = sock.recv(4096)
                if not data:
                    raise ConnectionError(f"the server closed a connection after echoing {len(conn[2])} bytes")
                got = conn[2] = conn[2] + data
                if len(got) < size:
                    continue
                latencies.append(perf_counter() - conn[1])
                if got != MESSAGE:
                    raise ConnectionError("the echo differs from the message")
                del pending[fd]
                sock.close()  # which also takes it out of the epoll set
                if started < conns:
                    started += 1
                    start()
    finally:
        for conn in pending.values():
            conn[0].close()
        epoll.close()
    return latencies


def measure(server: Server, round_no: int, conns: int, inflight: int, warmup: int) -> Sample:
    drive(server.port, warmup, inflight)
    gc.collect()
    server_cpu0 = server.cpu_seconds()
    client_cpu0 = time.process_time()
    t0 = perf_counter()
    latencies = drive(server.port, conns, inflight)
    seconds = perf_counter() - t0
    client_cpu = time.process_time() - client_cpu0
    server_cpu1 = server.cpu_seconds()
    if len(latencies) != conns:
        raise RuntimeError(f"{server.kind}: {len(latencies)} echoes for {conns} connections")
    latencies.sort()
    return Sample(
        contender=server.kind,
        round=round_no,
        conns=conns,
        seconds=seconds,
        server_cpu_seconds=(server_cpu1 - server_cpu0) if server_cpu0 is not None and server_cpu1 is not None else 0.0,
        client_cpu_seconds=client_cpu,
        p50_us=percentile(latencies, 0.50) * 1e6,
        p99_us=percentile(latencies, 0.99) * 1e6,
    )


def run_rounds(servers: dict[str, Server], conns: int, inflight: int, rounds: int, warmup: int) -> list[Sample]:
    samples: list[Sample] = []
    for r in range(rounds):
        shift = r % len(CONTENDERS)
        order = CONTENDERS[shift:] + CONTENDERS[:shift]
        done = [measure(servers[name], r + 1, conns, inflight, warmup) for name in order]
        samples += done
        print(
            f"  round {r + 1}/{rounds}: " + ", ".join(f"{s.contender} {s.conns_per_s:,.0f}/s" for s in done),
            file=sys.stderr,
            flush=True,
        )
    return samples


# -- the report -----------------------------------------------------------------------------------------


def summarize(samples: list[Sample]) -> list[Summary]:
    reference = {s.round: s.conns_per_s for s in samples if s.contender == REFERENCE}
    summaries = []
    for name in CONTENDERS:
        mine = [s for s in samples if s.contender == name]
        ratios = [s.conns_per_s / reference[s.round] for s in mine]
        summaries.append(
            Summary(
                contender=name,
                conns_per_s=statistics.median(s.conns_per_s for s in mine),
                p50_us=statistics.median(s.p50_us for s in mine),
                p99_us=statistics.median(s.p99_us for s in mine),
                server_cpu_us_per_conn=statistics.median(s.server_cpu_us_per_conn for s in mine),
                server_cpu_use=statistics.median(s.server_cpu_seconds / s.seconds for s in mine),
                client_cpu_use=statistics.median(s.client_cpu_seconds / s.seconds for s in mine),
                ratio=statistics.median(ratios),
                ratios=ratios,
            )
        )
    return summaries


def report(summaries: list[Summary], args: argparse.Namespace, elapsed: float, other_cpus: float | None) -> bool:
    print()
    print(
        f"{args.conns:,} echo connections ({len(MESSAGE)} bytes) on loopback, {args.inflight} in flight, "
        f"median of {args.rounds} interleaved rounds ({describe_environment(elapsed)}"
        + (f"; other processes used {other_cpus:.2f} CPUs)" if other_cpus is not None else ")")
    )
    header = (
        f"{'server':<10} {'conn/s':>9} {'p50 µs':>9} {'p99 µs':>9} {'server CPU µs/conn':>19} "
        f"{'server CPU':>11} {'client CPU':>11} {'vs ' + REFERENCE:>11}"
    )
    print(header)
    print("-" * len(header))
    for s in summaries:
        print(
            f"{s.contender:<10} {s.conns_per_s:>9,.0f} {s.p50_us:>9.0f} {s.p99_us:>9.0f} "
            f"{s.server_cpu_us_per_conn:>19.1f} {s.server_cpu_use:>11.2f} {s.client_cpu_use:>11.2f} "
            f"{s.ratio:>10.2f}x"
        )
    by_name = {s.contender: s for s in summaries}
    ours = by_name["qiotask"]
    print()
    print(f"per-round qiotask / {REFERENCE}: " + ", ".join(f"{r:.2f}x" for r in ours.ratios))
    for s in summaries:
        if s.client_cpu_use > s.server_cpu_use or s.server_cpu_use < SATURATED:
            print(
                f"warning: the {s.contender} server used {s.server_cpu_use:.2f} CPUs and the client "
                f"{s.client_cpu_use:.2f}: the server was not the only bottleneck (the load generator or the "
                f"machine's {os.cpu_count()} CPUs were), so its conn/s understates it; compare server CPU µs/conn"
            )
    warn_if_busy(other_cpus)
    if args.profile:
        print(f"note: the servers ran under cProfile (stats in {args.profile}); the ratio measures the profiler too")
    ok = ours.ratio >= TARGET_RATIO
    print(
        f"qiotask / {REFERENCE} = {ours.ratio:.2f}x (target >= {TARGET_RATIO:g}x): {'PASS' if ok else 'FAIL'}",
        flush=True,
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--conns", type=int, default=15000, help="connections per measurement (default 15000)")
    parser.add_argument("--inflight", type=int, default=64, help="connections in flight at once (default 64)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 3 rounds of 2000 connections")
    parser.add_argument("--profile", metavar="DIR", help="run the servers under cProfile, stats into DIR")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--serve", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return server_main(args.serve, args.profile)
    if not hasattr(select, "epoll"):
        parser.error("the load generator needs select.epoll (Linux)")
    if args.quick:
        args.conns, args.rounds = 2000, 3
    if args.conns < 1 or args.inflight < 1 or args.rounds < 1:
        parser.error("--conns, --inflight and --rounds must be at least 1")
    if args.inflight > BACKLOG:
        parser.error(f"--inflight must be at most the servers' backlog, {BACKLOG}")
    if args.profile:
        args.profile = os.path.abspath(args.profile)
        os.makedirs(args.profile, exist_ok=True)
    warmup = min(WARMUP_CONNS, args.conns)

    print(
        f"running {args.rounds} rounds of {len(CONTENDERS)} servers x {args.conns:,} connections ...",
        file=sys.stderr,
        flush=True,
    )
    t0 = perf_counter()
    busy0, cpu0 = machine_busy_seconds(), time.process_time()
    servers: dict[str, Server] = {}
    try:
        for name in CONTENDERS:
            servers[name] = Server(name, args.profile)
        samples = run_rounds(servers, args.conns, args.inflight, args.rounds, warmup)
        # All of the servers' CPU, start-up included: they started after busy0.
        server_cpu = sum(s.cpu_seconds() or 0.0 for s in servers.values())
    except Exception as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", flush=True)
        return 1
    finally:
        busy1, cpu1 = machine_busy_seconds(), time.process_time()
        for server in servers.values():
            server.stop()
    elapsed = perf_counter() - t0
    other_cpus = None
    if busy0 is not None and busy1 is not None:
        other_cpus = max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - server_cpu) / elapsed
    summaries = summarize(samples)
    ok = report(summaries, args, elapsed, other_cpus)

    if args.json:
        result: dict[str, Any] = {
            "config": {
                "conns": args.conns,
                "inflight": args.inflight,
                "rounds": args.rounds,
                "warmup_conns": warmup,
                "message_bytes": len(MESSAGE),
                "backlog": BACKLOG,
                "profiled": bool(args.profile),
                **environment(),
                "elapsed_s": elapsed,
                "other_cpus": other_cpus,
            },
            "reference": REFERENCE,
            "summary": [asdict(s) for s in summaries],
            "samples": [
                asdict(s) | {"conns_per_s": s.conns_per_s, "server_cpu_us_per_conn": s.server_cpu_us_per_conn}
                for s in samples
            ],
            "target_ratio": TARGET_RATIO,
            "ratio_pass": ok,
        }
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
