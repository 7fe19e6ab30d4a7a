"""Naming the calling thread for a while, as ``ps`` and ``top`` show it.

``run_sync(..., thread_name=...)`` names the pool thread while its call
runs: the Python thread's ``name`` (logging, tracebacks) and the OS
thread's name.  On Linux the OS name is the thread's ``comm`` file under
``/proc/self/task/<native id>/`` -- 15 bytes at most, what the kernel
keeps -- which the thread may rewrite for itself, no library needed.
Elsewhere only the Python name changes.  The old names come back after.

Only the calling thread is renamed, so nothing here is shared between
threads.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

__all__ = ["os_thread_name", "thread_named"]

#: The bytes of a name Linux keeps (TASK_COMM_LEN - 1).
COMM_BYTES = 15


def _comm_path() -> str:
    return f"/proc/self/task/{threading.get_native_id()}/comm"


def os_thread_name() -> str | None:
    """The calling thread's OS name, or None where it cannot be read."""
    try:
        with open(_comm_path(), encoding="utf-8", errors="replace") as comm:
            return comm.read().rstrip("\n")
    except OSError:
        return None


def _set_os_thread_name(name: str) -> None:
    # Cut to what the kernel keeps, at a character's boundary: a character
    # cut in half would show as a stray byte in ps and top.
    data = name.encode("utf-8", "replace")[:COMM_BYTES].decode("utf-8", "ignore").encode("utf-8")
    try:
        fd = os.open(_comm_path(), os.O_WRONLY)
    except OSError:
        return  # not Linux (or no /proc): the Python name only
    try:
        os.write(fd, data)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def thread_named(name: str) -> Iterator[None]:
    """Name the calling thread ``name`` inside the block."""
    thread = threading.current_thread()
    old_name, old_os_name = thread.name, os_thread_name()
    thread.name = name
    _set_os_thread_name(name)
    try:
        yield
    finally:
        thread.name = old_name
        if old_os_name is not None:
            _set_os_thread_name(old_os_name)
