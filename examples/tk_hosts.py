"""Resolve the host names of /etc/hosts in worker threads, shown in a Tk window.

Each name (plus "localhost") is looked up with ``socket.getaddrinfo`` in a
qiotask worker thread.  The task's done-callback fills in the name's row on the
Tk thread, inside ``root.mainloop()``; the workers never touch tkinter.

``getaddrinfo`` has no timeout, so each name also gets a deadline timer on the
Tk thread: a name not answered in time is shown as timed out, and its late
answer is dropped.  (The worker thread cannot be interrupted: at exit the
program waits for it at most that long again.)

Run it with ``python examples/tk_hosts.py [--exit-when-done]``.
"""

from __future__ import annotations

import argparse
import functools
import socket
import tkinter

import qiotask

#: How long one name may take, in milliseconds.  Names from /etc/hosts resolve
#: locally in a few milliseconds; a name that went to a DNS server that does
#: not answer would otherwise stay "resolving..." for half a minute or more.
DEADLINE_MS = 5000


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


def resolve(task: qiotask.Task[list[str]], name: str) -> list[str]:
    """The worker, on a pool thread: the addresses of ``name``."""
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class HostsWindow:
    """A list of names whose rows are filled in as their lookups finish."""

    def __init__(self, root: tkinter.Tk, names: list[str], exit_when_done: bool) -> None:
        self.root = root
        self.names = names
        self.exit_when_done = exit_when_done
        self.outcomes: dict[str, str] = {}  # name -> "resolved", "failed" or "timed out"
        root.title("qiotask: /etc/hosts")
        self.progress = tkinter.Label(root, anchor="w")
        self.progress.pack(fill="x")
        self.rows = tkinter.Listbox(root, width=70, height=min(len(names), 20))
        self.rows.pack(fill="both", expand=True)

        ctx = qiotask.attach(root)  # Tk has no "running loop" to find: pass context=ctx
        for row, name in enumerate(names):
            self.rows.insert("end", f"{name}: resolving...")
            task: qiotask.Task[list[str]] = qiotask.Task(name, context=ctx, name=f"resolve {name}")
            deadline = ctx.timeout_add(DEADLINE_MS, self.give_up, row, name)
            task.add_done_callback(functools.partial(self.resolved, row, deadline))
            task.run_in_thread(resolve, name)
        self.show_progress()

    def resolved(self, row: int, deadline: qiotask.Source, task: qiotask.Task[list[str]]) -> None:
        """The task's done-callback, on the Tk thread."""
        name: str = task.get_source()
        err = task.propagate_error()
        if isinstance(err, qiotask.ContextClosedError):
            # The window was destroyed first.  Then this runs in whichever
            # thread completed the task, maybe a worker: no tkinter here.
            return
        if name in self.outcomes:
            return  # its deadline passed: the late answer is dropped
        deadline.remove()
        if err is None:
            self.settle(row, name, "resolved", ", ".join(task.get_result()))
        else:
            self.settle(row, name, "failed", str(err))

    def give_up(self, row: int, name: str) -> bool:
        """The deadline timer, on the Tk thread."""
        self.settle(row, name, "timed out", f"no answer in {DEADLINE_MS / 1000:g} s")
        return False  # fire once

    def settle(self, row: int, name: str, outcome: str, text: str) -> None:
        self.outcomes[name] = outcome
        self.rows.delete(row)
        self.rows.insert(row, f"{name}: {text}")
        print(f"{name}: {text}", flush=True)
        self.show_progress()
        if len(self.outcomes) == len(self.names):
            counts = list(self.outcomes.values())
            print(
                f"resolved {counts.count('resolved')} of {len(self.names)} names, "
                f"{counts.count('failed')} failed, {counts.count('timed out')} timed out",
                flush=True,
            )
            if self.exit_when_done:
                self.root.quit()

    def show_progress(self) -> None:
        self.progress["text"] = f"{len(self.outcomes)} of {len(self.names)} names looked up"


def main() -> int:
    parser = argparse.ArgumentParser(description="Resolve the names of /etc/hosts in worker threads, in a Tk window.")
    parser.add_argument("--exit-when-done", action="store_true", help="quit once every name is looked up")
    args = parser.parse_args()

    root = tkinter.Tk()
    root.protocol("WM_DELETE_WINDOW", root.quit)  # the close button ends mainloop(); destroy() follows
    HostsWindow(root, host_names(), args.exit_when_done)
    root.mainloop()
    root.destroy()  # closes the context: lookups still running end with ContextClosedError
    # Such a lookup finishes on its pool thread and drops its references there, the window's among them.  The
    # last reference to a Tk root must go on the Tk thread (Tcl aborts the process otherwise): wait for them.
    qiotask.shutdown(timeout=DEADLINE_MS / 1000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
