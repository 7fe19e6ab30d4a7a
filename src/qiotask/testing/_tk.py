"""Tk: a fresh withdrawn Tk root per test, on an X display.

The display is the one in ``DISPLAY`` if a Tk root can open it, else an
Xvfb server started once per process (``-displayfd`` picks a free display
number), stopped and reaped at exit, or as soon as this process dies.  No
display and no Xvfb: the loop is unavailable.
"""

from __future__ import annotations

import atexit
import gc
import os
import select
import shutil
import signal
import subprocess
import threading
import time
import tkinter  # an ImportError here: Tk is missing

from .._context import MainContext, attach
from ._loops import settle

# How long Xvfb may take to say it is ready (measured: about 0.25 s).
XVFB_START_TIMEOUT = 10.0

# Xvfb runs under a small shell that kills and reaps it when its stdin, a
# pipe from this process, closes: at exit, and also when this process is
# killed without running its atexit handlers (pytest-timeout's os._exit, a
# SIGKILL), so that no X server outlives the tests.  The shell's stdout is
# the pipe Xvfb writes its display number to (as fd 3); the shell lets go of
# it, so that EOF there means "Xvfb died", and reports Xvfb's pid on stderr.
_WATCHDOG = """
"$0" -displayfd 3 -screen 0 800x600x24 -nolisten tcp 3>&1 </dev/null >/dev/null 2>&1 &
pid=$!
exec >/dev/null
echo "$pid" >&2
trap 'kill "$pid" 2>/dev/null; wait "$pid"; exit 0' HUP INT TERM
read _ignored
kill "$pid" 2>/dev/null
wait "$pid"
"""

_display_lock = threading.Lock()  # one Xvfb, however many threads open backends
_display_ready = False
_watchdog: subprocess.Popen[bytes] | None = None
_xvfb_pid = 0


def _display_works() -> bool:
    try:
        probe = tkinter.Tk()
    except tkinter.TclError:
        return False
    probe.update_idletasks()  # see new_root()
    probe.destroy()
    return True


def _read_line(fd: int, deadline: float) -> bytes:
    """One line from ``fd``, or what came before EOF or the deadline."""
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 64) if ready else b""
        if not chunk:
            break
        line += chunk
    return line


def _start_xvfb() -> None:
    global _watchdog, _xvfb_pid
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise RuntimeError("no X display: DISPLAY is unset or unusable and Xvfb is not installed")
    read_end, write_end = os.pipe()
    try:
        watchdog = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG, xvfb],
            stdin=subprocess.PIPE,
            stdout=write_end,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _watchdog = watchdog
    atexit.register(_stop_xvfb)
    try:
        # Xvfb writes the display number and a newline once it accepts
        # clients; EOF if it dies first.  Read the whole line: closing the
        # pipe before Xvfb's last write leaves it unresponsive.
        line = _read_line(read_end, time.monotonic() + XVFB_START_TIMEOUT)
    finally:
        os.close(read_end)
    if not line.endswith(b"\n"):
        _stop_xvfb()
        raise RuntimeError("Xvfb did not start")
    assert watchdog.stderr is not None
    _xvfb_pid = int(watchdog.stderr.readline())  # printed before Xvfb was ready
    os.environ["DISPLAY"] = f":{line.decode().strip()}"


def _stop_xvfb() -> None:
    global _watchdog
    watchdog, _watchdog = _watchdog, None
    if watchdog is None:
        return
    assert watchdog.stdin is not None and watchdog.stderr is not None
    watchdog.stdin.close()  # the shell kills Xvfb, waits for it, and exits
    try:
        watchdog.wait(10)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()
        if _xvfb_pid:
            try:
                os.kill(_xvfb_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    watchdog.stderr.close()


def ensure_display() -> None:
    """Make ``DISPLAY`` name a display Tk can open, starting Xvfb if needed."""
    global _display_ready
    with _display_lock:
        if _display_ready:
            return
        if not (os.environ.get("DISPLAY") and _display_works()):
            _start_xvfb()
        _display_ready = True


#: How many roots new_root() made.  A leak check that sees it grow collects
#: garbage then, on the Tk thread: widgets form reference cycles, and a Tk
#: interpreter freed on another thread aborts the process.
roots_made = 0


def new_root() -> tkinter.Tk:
    """A withdrawn Tk root on the test display."""
    global roots_made
    roots_made += 1
    ensure_display()
    try:
        root = tkinter.Tk()
    except tkinter.TclError as exc:  # open_loop() reports it as LoopUnavailable
        raise RuntimeError(f"tkinter.Tk() failed: {exc}") from exc
    root.withdraw()
    # Run Tk's start-up idle work now: left pending, it would run in the next
    # mainloop() on this thread, even after this root is destroyed, and fail
    # there noisily.
    root.update_idletasks()
    return root


def root_alive(root: tkinter.Tk) -> bool:
    try:
        return bool(root.winfo_exists())
    except tkinter.TclError:
        return False


class TkLoop:
    def __init__(self) -> None:
        self.name = "tk"
        self.root = new_root()
        self.context: MainContext = attach(self.root)

    def close_loop(self) -> None:
        self.root.destroy()

    def cleanup(self) -> None:
        settle(self.context)
        if root_alive(self.root):
            self.root.destroy()
        # Widgets form reference cycles (parent <-> children): collect them
        # here, on the Tk thread.  Left to the cyclic GC, they could be freed
        # in whatever thread it next runs in, and Tcl aborts the process
        # when an interpreter is deleted off its thread.
        del self.root
        gc.collect()


def open_tk() -> TkLoop:
    return TkLoop()
