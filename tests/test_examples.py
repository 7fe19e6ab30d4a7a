"""The programs in ``examples/``: each runs headless, to the end, as a user would run it.

Each example runs as a child process of ``sys.executable``: Qt on the
offscreen platform, Tk on the tests' X display (``DISPLAY``, or the Xvfb
server qiotask.testing starts once per process).  A toolkit that is
missing here skips its example with the reason, except under
``QIOTASK_REQUIRE_ALL_LOOPS=1`` (CI), where that is a failure, as
``tests.backends.open_backend`` does.

The examples' workers are also run here, in this process, as tasks on each
of the six loops, through the fixtures of qiotask's pytest plugin
(``qiotask_runner``, its leak check): as a user would test code of their own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

import qiotask
from qiotask.testing import LoopRunner

from .conftest import STRICT_WARNINGS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# How long one example may run, in seconds; each finishes in about one.
EXAMPLE_TIMEOUT = 60.0
# How long Xvfb may take to say it is ready (qiotask/testing/_tk.py).
XVFB_START_TIMEOUT = 10.0


def missing(loop: str, reason: str) -> NoReturn:
    """Skip, or under QIOTASK_REQUIRE_ALL_LOOPS=1 fail: ``loop`` cannot run here."""
    message = f"loop {loop!r} cannot be loaded here: {reason}"
    if os.environ.get("QIOTASK_REQUIRE_ALL_LOOPS") == "1":
        pytest.fail(message + " (QIOTASK_REQUIRE_ALL_LOOPS=1)")
    pytest.skip(message)


def require(loop: str, *modules: str) -> None:
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError as exc:  # a parent package that fails to import
            missing(loop, f"{type(exc).__name__}: {exc}")
        if not found:
            missing(loop, f"No module named {module!r}")


def run_example(name: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """Run ``examples/<name>``; assert it exits 0 cleanly; return its stdout lines."""
    command = [sys.executable, *STRICT_WARNINGS, str(EXAMPLES / name), *args]
    try:
        done = subprocess.run(
            command,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:  # run() has killed and reaped the child
        pytest.fail(f"{name} ran over {EXAMPLE_TIMEOUT} s\nstdout:\n{exc.stdout!r}\nstderr:\n{exc.stderr!r}")
    report = f"{name} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    assert "Traceback" not in done.stderr, report
    assert "Exception ignored" not in done.stderr, report
    assert "ContextClosedError" not in done.stderr, report  # every task was delivered
    return done.stdout.splitlines()


#: One or more addresses, as the examples list them: ``localhost`` may be
#: 127.0.0.1 alone or, as Debian's stock /etc/hosts has it, ::1 as well.
ADDRESSES = r"\S+(?:, \S+)*"


def matching(pattern: str, lines: list[str]) -> re.Match[str]:
    """The one line that matches ``pattern`` entirely."""
    found = [m for m in map(re.compile(pattern).fullmatch, lines) if m]
    assert len(found) == 1, f"expected one line matching {pattern!r} in {lines}"
    return found[0]


@pytest.fixture
def files(tmp_path: Path) -> dict[Path, str]:
    """A directory of files to hash, and their sha256; subdirectories are skipped."""
    contents = {"hello.txt": b"hello\n", "empty": b"", "random.bin": os.urandom(300_000)}
    digests = {}
    for file_name, data in contents.items():
        path = tmp_path / file_name
        path.write_bytes(data)
        digests[path] = hashlib.sha256(data).hexdigest()
    (tmp_path / "subdirectory").mkdir()
    return digests


@pytest.fixture
def x_display() -> str:
    """An X display (``":N"``) Tk can open: ``DISPLAY`` if it works, else the
    Xvfb server qiotask.testing starts once per process (and stops at exit);
    the example inherits ``DISPLAY``."""
    require("tk", "_tkinter")
    from .backends import tk as tk_backend

    try:
        tk_backend.ensure_display()
    except RuntimeError as exc:
        missing("tk", str(exc))
    return os.environ["DISPLAY"]


@pytest.mark.timeout(EXAMPLE_TIMEOUT + XVFB_START_TIMEOUT + 20)
def test_tk_hosts(x_display: str) -> None:
    lines = run_example("tk_hosts.py", "--exit-when-done", env={"DISPLAY": x_display})
    summary = matching(r"resolved (\d+) of (\d+) names, (\d+) failed, (\d+) timed out", lines)
    resolved, total, failed, timed_out = map(int, summary.groups())
    assert resolved + failed + timed_out == total >= 1
    assert timed_out == 0, lines  # names of /etc/hosts resolve locally
    assert len(lines) == total + 1  # a line per name, then the summary
    assert "127.0.0.1" in matching(rf"localhost: ({ADDRESSES})", lines)[1].split(", ")


@pytest.mark.timeout(EXAMPLE_TIMEOUT + 20)
def test_qt_hasher(files: dict[Path, str], tmp_path: Path) -> None:
    require("qt", "PySide6", "PySide6.QtWidgets")
    lines = run_example("qt_hasher.py", str(tmp_path), "--exit-when-done", env={"QT_QPA_PLATFORM": "offscreen"})
    assert sorted(lines[:-1]) == sorted(f"{digest}  {path}" for path, digest in files.items())
    assert lines[-1] == f"hashed {len(files)} of {len(files)} files, 0 failed"


@pytest.mark.timeout(EXAMPLE_TIMEOUT + 20)
def test_glib_hosts(files: dict[Path, str], tmp_path: Path) -> None:
    require("glib", "gi")
    lines = run_example("glib_hosts.py", str(tmp_path))
    for path, digest in files.items():
        matching(rf"\[\d+/\d+\] sha256 {re.escape(path.name)}: {digest}", lines)
    assert "127.0.0.1" in matching(rf"\[\d+/\d+\] resolve localhost: ({ADDRESSES})", lines)[1].split(", ")
    summary = matching(
        r"(\d+) of (\d+) tasks done \((\d+) names, (\d+) files\), (\d+) failed, in [\d.]+ s; callbacks ran on (.+)",
        lines,
    )
    done, total, names, n_files, failed, threads = summary.groups()
    assert int(total) == int(names) + int(n_files) and int(n_files) == len(files)
    assert int(done) + int(failed) == int(total) and int(done) >= len(files) + 1
    assert threads == "MainThread"  # the thread running GLib.MainLoop().run()


@pytest.mark.timeout(EXAMPLE_TIMEOUT + 20)
def test_trio_resolve() -> None:
    require("trio", "trio")
    lines = run_example("trio_resolve.py")
    assert any(line in ("localhost: 127.0.0.1", "localhost: ::1") for line in lines), lines
    assert "127.0.0.1: 127.0.0.1" in lines
    assert "canonical name of localhost: localhost" in lines
    assert lines[-1] == "resolved 3 of 3 names"


@pytest.mark.timeout(EXAMPLE_TIMEOUT + 20)
def test_glib_echo() -> None:
    require("glib", "gi")
    lines = run_example("glib_echo.py", "--clients", "6")
    # Every address localhost resolves to, one port: "127.0.0.1:N" or
    # "[::1]:N, 127.0.0.1:N".
    endpoints = matching(rf"echo server on ({ADDRESSES})", lines)[1].split(", ")
    assert "127.0.0.1" in [endpoint.rsplit(":", 1)[0] for endpoint in endpoints], endpoints
    assert len({endpoint.rsplit(":", 1)[1] for endpoint in endpoints}) == 1, endpoints
    replies = sorted(line for line in lines if line.startswith("client "))
    assert replies == sorted(f"client {n} got 'hello from client {n}' on MainThread" for n in range(6)), lines


# -- the examples' workers, on every loop, with qiotask's pytest plugin ---------


def load_example(name: str, loop: str, *modules: str) -> ModuleType:
    """Import ``examples/<name>`` (not as ``__main__``: its program does not
    run), once its toolkit is known to be here."""
    require(loop, *modules)
    path = EXAMPLES / name
    module = sys.modules.get(f"example_{path.stem}")
    if module is None:
        spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[spec.name] = module
    return module


def run_workers(runner: LoopRunner, worker: Any, args: list[Any]) -> list[Any]:
    """``worker(task, arg)`` for each arg, as tasks of the test's context run
    by its loop; returns the results, checking each completion ran on the
    test's thread (the loop's) and each worker on another."""
    completions: list[threading.Thread] = []
    workers: list[threading.Thread] = []

    def record(task: qiotask.Task[Any], arg: Any) -> Any:
        workers.append(threading.current_thread())
        return worker(task, arg)

    def completed(source: Any, err: BaseException | None, opaque: Any) -> None:
        completions.append(threading.current_thread())

    tasks = []
    for arg in args:
        task: qiotask.Task[Any] = qiotask.Task(arg, completed)  # of the test's context, its thread default
        task.run_in_thread(record, arg)
        tasks.append(task)
    runner.run_until_done(*tasks, timeout=EXAMPLE_TIMEOUT)
    assert completions == [threading.current_thread()] * len(args)
    assert threading.current_thread() not in workers
    return [task.get_result() for task in tasks]


@pytest.mark.qiotask_loops
def test_glib_hosts_workers(qiotask_runner: LoopRunner, files: dict[Path, str]) -> None:
    example = load_example("glib_hosts.py", "glib", "gi")
    assert run_workers(qiotask_runner, example.sha256, list(files)) == list(files.values())
    [addresses] = run_workers(qiotask_runner, example.resolve, ["localhost"])
    assert "127.0.0.1" in addresses.split(", ")


@pytest.mark.qiotask_loops
def test_tk_hosts_worker(qiotask_runner: LoopRunner) -> None:
    example = load_example("tk_hosts.py", "tk", "_tkinter")
    [addresses] = run_workers(qiotask_runner, example.resolve, ["localhost"])
    assert "127.0.0.1" in addresses


@pytest.mark.qiotask_loops
def test_qt_hasher_worker(qiotask_runner: LoopRunner, files: dict[Path, str]) -> None:
    example = load_example("qt_hasher.py", "qt", "PySide6", "PySide6.QtWidgets")
    assert run_workers(qiotask_runner, example.sha256, list(files)) == list(files.values())


@pytest.mark.qiotask_loops
def test_trio_resolve_worker(qiotask_runner: LoopRunner) -> None:
    example = load_example("trio_resolve.py", "trio", "trio")
    assert run_workers(qiotask_runner, example.canonical_name, ["localhost"]) == ["localhost"]
