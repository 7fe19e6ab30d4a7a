"""Run one Python block of the docs as a script, then check it left nothing behind.

Usage: ``python tests/run_snippet.py SCRIPT``, where SCRIPT holds the block
(the root ``conftest.py`` writes it, padded so that its line numbers are
those of the Markdown file).  The block runs as ``__main__`` from its own
file, as ``python SCRIPT`` would run it, so that process pools re-importing
the main module find it.  Afterwards the same checks as the test suite's
``no_leaks`` fixture: no task left pending, and no thread of the block's
still running once qiotask's own threads are left aside.  Exit status 0
means the block ran and passed them.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time

import qiotask

# How long the block's own threads may take to end after it returned: they
# are already on their way out (a watcher that just printed, say).
THREAD_END_TIMEOUT = 5.0

# Threads that outlive a block by design, serving the whole process:
# qiotask's own (pooled, or serving every deadline), as in tests/conftest.py,
# and the offload thread that Dask's distributed keeps for its lifetime
# (docs/scaling.md's cluster block).
PROCESS_THREADS = ("qiotask-worker", "qiotask-dns-worker", "qiotask-deadlines", "Dask-Offload")


def stray_threads() -> list[threading.Thread]:
    return [
        thread
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and thread.is_alive() and not thread.name.startswith(PROCESS_THREADS)
    ]


def main() -> int:
    script = sys.argv[1]
    sys.argv = [script]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python SCRIPT` has it
    runpy.run_path(script, run_name="__main__")
    deadline = time.monotonic() + THREAD_END_TIMEOUT
    while stray_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    problems = []
    if stray_threads():
        problems.append(f"threads still running: {[thread.name for thread in stray_threads()]}")
    pending = qiotask.stats()["pending"]
    if pending:
        problems.append(f"{pending} task(s) left pending")
    for problem in problems:
        print(f"run_snippet: the block left {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
