"""Resolve host names and hash files in worker threads under a GLib main loop.

No GTK: a plain ``GLib.MainLoop`` on GLib's global default context, as a
daemon would run.  Every name of /etc/hosts (plus "localhost") is looked up
with ``socket.getaddrinfo`` and every file of a directory (by default the
qiotask package's) is hashed, each in a qiotask worker thread.  The tasks'
done-callbacks print the progress on the loop's thread, and a ``timeout_add``
ticker reports every 100 ms what is still running; it also gives up on
lookups that take too long (``getaddrinfo`` has no timeout).

Run it with ``python examples/glib_hosts.py [directory]``.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gi.repository import GLib  # type: ignore[import-untyped]

import qiotask

#: When the ticker gives up on what is still running, in seconds.  Names from
#: /etc/hosts resolve locally in a few milliseconds.
DEADLINE = 10.0

#: A worker: ``worker(task, arg)`` on a pool thread; its return value is the result.
Worker = Callable[[qiotask.Task[str], Any], str]


def host_names(path: str = "/etc/hosts") -> list[str]:
    """ "localhost" and the names (canonical names and aliases) of a hosts file."""
    names = ["localhost"]
    try:
        with open(path, encoding="utf-8", errors="replace") as hosts:
            for line in hosts:
                names += line.split("#", 1)[0].split()[1:]  # the first field is the address
    except OSError:
        pass
    return list(dict.fromkeys(names))


def resolve(task: qiotask.Task[str], name: str) -> str:
    """A worker, on a pool thread: the addresses of ``name``."""
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return ", ".join(dict.fromkeys(str(info[4][0]) for info in infos))


def sha256(task: qiotask.Task[str], path: Path) -> str:
    """A worker, on a pool thread: the hex sha256 of the file."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description="Resolve names and hash files in worker threads, under GLib.")
    parser.add_argument("directory", nargs="?", type=Path, default=Path(qiotask.__file__).parent)
    args = parser.parse_args()

    names = host_names()
    files = sorted(path for path in args.directory.iterdir() if path.is_file())
    jobs: list[tuple[str, Worker, Any]] = [(f"resolve {name}", resolve, name) for name in names]
    jobs += [(f"sha256 {path.name}", sha256, path) for path in files]

    loop = GLib.MainLoop()
    ctx = qiotask.attach(GLib.MainContext.default())
    running: set[qiotask.Task[str]] = set()
    failed: list[str] = []
    callback_threads: set[str] = set()
    started = time.monotonic()

    def finished(task: qiotask.Task[str]) -> None:
        """Every task's done-callback, on the loop's thread."""
        running.discard(task)
        callback_threads.add(threading.current_thread().name)
        err = task.propagate_error()
        if err is not None:
            failed.append(task.name)
        print(f"[{len(jobs) - len(running)}/{len(jobs)}] {task.name}: {err or task.get_result()}", flush=True)
        if not running:
            loop.quit()

    def tick() -> bool:
        """The ticker, on the loop's thread: repeats while it returns True."""
        elapsed = time.monotonic() - started
        print(f"tick {elapsed:.1f} s: {len(running)} running", flush=True)
        if elapsed > DEADLINE:
            print(f"giving up on {sorted(task.name for task in running)}", flush=True)
            failed.extend(task.name for task in running)
            loop.quit()
        return True

    for name, worker, arg in jobs:
        task: qiotask.Task[str] = qiotask.Task(arg, context=ctx, name=name)
        task.add_done_callback(finished)
        running.add(task)
        task.run_in_thread(worker, arg)

    ticker = ctx.timeout_add(100, tick)
    loop.run()
    ticker.remove()

    print(
        f"{len(jobs) - len(failed)} of {len(jobs)} tasks done ({len(names)} names, {len(files)} files), "
        f"{len(failed)} failed, in {time.monotonic() - started:.2f} s; "
        f"callbacks ran on {', '.join(sorted(callback_threads))}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
