"""examples/tk_progress.py and examples/qt_progress.py, driven as a user would:
press Start, watch the bar move, press Cancel (or let the job finish, or close
the window), and read what the window says.

Tk runs in this process, on the tests' X display (``DISPLAY``, or the Xvfb
tests/backends/tk.py starts).  Qt runs in a child process on the offscreen
platform: a widget needs a ``QApplication``, and the suite's process already
has a ``QCoreApplication`` (tests/backends/qt.py), of which there can be only
one.  The child runs :func:`drive_qt` below and prints what it saw as JSON.

Every wait is the loop running until a condition holds, bounded by
``WAIT_TIMEOUT``; the job (100 steps of 30 ms) outlasts every wait for its
first report many times over, so Cancel always comes while it runs.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import qiotask

from .conftest import STRICT_WARNINGS
from .test_examples import missing, require

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

#: The longest a wait for the window may take, in seconds; each takes a few
#: tens of milliseconds.
WAIT_TIMEOUT = 10.0


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_until(context: qiotask.MainContext, predicate: Callable[[], bool], what: str) -> None:
    """Run the context's loop until ``predicate()`` holds, checked every 5 ms; fail after WAIT_TIMEOUT."""
    loop = qiotask.MainLoop(context)
    deadline = time.monotonic() + WAIT_TIMEOUT

    def check() -> bool:
        if predicate() or time.monotonic() > deadline:
            loop.quit()
            return False
        return True

    context.timeout_add(5, check)
    loop.run()
    assert predicate(), f"waited {WAIT_TIMEOUT} s for {what}"


class Threads:
    """Which threads ran the example's worker and its progress callback."""

    def __init__(self, module: ModuleType, window: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.worker: set[str] = set()
        self.progress: set[str] = set()
        work, show_progress = module.work, window.show_progress

        def recording_work(task: qiotask.Task[int], steps: int) -> int:
            self.worker.add(threading.current_thread().name)
            return work(task, steps)  # type: ignore[no-any-return]

        def recording_show_progress(*args: Any) -> None:
            self.progress.add(threading.current_thread().name)
            show_progress(*args)

        monkeypatch.setattr(module, "work", recording_work)
        window.show_progress = recording_show_progress  # connected by start(), after this

    def check(self) -> None:
        main = threading.main_thread().name
        assert self.progress == {main}, self.progress  # the toolkit's thread, which runs the loop here
        assert len(self.worker) == 1 and main not in self.worker, self.worker


# -- Tk, in this process ----------------------------------------------------------------------------------


@pytest.fixture
def tk_window(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, Any, Threads]]:
    require("tk", "_tkinter")
    from .backends import tk as tk_backend

    try:
        tk_backend.ensure_display()
    except RuntimeError as exc:
        missing("tk", str(exc))
    module = load_example("tk_progress")
    root = tk_backend.new_root()
    window = module.ProgressWindow(root, steps=100)
    threads = Threads(module, window, monkeypatch)
    yield module, window, threads
    if tk_backend.root_alive(root):
        root.destroy()
    # Widgets form reference cycles: collect them here, on the Tk thread (Tcl
    # aborts the process when an interpreter is freed off its thread).
    del root, window, threads
    gc.collect()


def test_tk_progress_cancel(tk_window: tuple[ModuleType, Any, Threads], capsys: pytest.CaptureFixture[str]) -> None:
    _, window, threads = tk_window
    assert str(window.cancel_button["state"]) == "disabled"
    window.start_button.invoke()
    task = window.task
    assert str(window.start_button["state"]) == "disabled" and str(window.cancel_button["state"]) == "normal"
    run_until(window.context, lambda: window.bar["value"] > 0, "the bar to move")
    assert window.label["text"].startswith("step ")

    window.cancel_button.invoke()
    assert window.label["text"] == "cancelling..." and str(window.cancel_button["state"]) == "disabled"
    run_until(window.context, lambda: window.task is None, "the job to stop")
    assert isinstance(task.exception(), qiotask.TaskCancelled)
    done = window.bar["value"]
    assert 0 < done < 100
    assert window.label["text"] == f"cancelled after {done:g} of 100 steps"
    assert str(window.start_button["state"]) == "normal" and str(window.cancel_button["state"]) == "disabled"
    assert capsys.readouterr().out == f"cancelled after {done:g} of 100 steps\n"
    threads.check()


def test_tk_progress_runs_to_the_end(tk_window: tuple[ModuleType, Any, Threads]) -> None:
    _, window, threads = tk_window
    window.steps = 4
    window.bar["maximum"] = 4
    window.start_button.invoke()
    task = window.task
    run_until(window.context, lambda: window.task is None, "the job to finish")
    assert task.get_result() == 4
    assert window.bar["value"] == 4  # the last report arrives before the completion
    assert window.label["text"] == "done: 4 steps"
    threads.check()


def test_tk_progress_close_while_running_stops_the_job(tk_window: tuple[ModuleType, Any, Threads]) -> None:
    _, window, _ = tk_window
    window.start_button.invoke()
    task = window.task
    run_until(window.context, lambda: window.bar["value"] > 0, "the bar to move")
    window.close()  # the window manager's close button
    assert task.state is qiotask.TaskState.FINISHED and isinstance(task.exception(), qiotask.TaskCancelled)
    from .backends import tk as tk_backend

    assert not tk_backend.root_alive(window.root)


# -- Qt, in a child process -------------------------------------------------------------------------------


def drive_qt() -> None:
    """Run in the child: the three runs of the Tk tests on one Qt window; prints what it saw as JSON."""
    from PySide6.QtWidgets import QApplication

    module = load_example("qt_progress")
    app = QApplication(["qt_progress test"])
    window = module.ProgressWindow(app, steps=100)
    window.show()
    seen: dict[str, Any] = {"platform": app.platformName(), "progress threads": set(), "worker threads": set()}
    work, show_progress = module.work, window.show_progress

    def recording_work(task: qiotask.Task[int], steps: int) -> int:
        seen["worker threads"].add(threading.current_thread().name)
        return work(task, steps)  # type: ignore[no-any-return]

    def recording_show_progress(*args: Any) -> None:
        seen["progress threads"].add(threading.current_thread().name)
        show_progress(*args)

    module.work = recording_work
    window.show_progress = recording_show_progress

    seen["cancel enabled before"] = window.cancel_button.isEnabled()
    window.start_button.click()
    task = window.task
    seen["buttons while running"] = [window.start_button.isEnabled(), window.cancel_button.isEnabled()]
    run_until(window.context, lambda: window.bar.value() > 0, "the bar to move")
    seen["label while running"] = window.label.text()
    window.cancel_button.click()
    seen["label after cancel"] = window.label.text()
    run_until(window.context, lambda: window.task is None, "the job to stop")
    seen.update(error=type(task.exception()).__name__, value=window.bar.value(), label=window.label.text())
    seen["buttons after"] = [window.start_button.isEnabled(), window.cancel_button.isEnabled()]

    window.steps = 4
    window.bar.setMaximum(4)
    window.start_button.click()
    task = window.task
    run_until(window.context, lambda: window.task is None, "the job to finish")
    seen.update(result=task.get_result(), done_value=window.bar.value(), done_label=window.label.text())

    window.steps = 100
    window.bar.setMaximum(100)
    window.start_button.click()
    task = window.task
    run_until(window.context, lambda: window.bar.value() > 0, "the bar to move")
    window.close()  # the window's close button
    seen.update(closed_state=task.state.name, closed_error=type(task.exception()).__name__)
    seen["progress threads"] = sorted(seen["progress threads"])
    seen["worker threads"] = sorted(seen["worker threads"])
    seen["main thread"] = threading.main_thread().name
    print(json.dumps(seen), flush=True)


@pytest.mark.timeout(60)
def test_qt_progress() -> None:
    require("qt", "PySide6", "PySide6.QtWidgets")
    done = subprocess.run(
        [sys.executable, *STRICT_WARNINGS, "-c", "from tests.test_progress_examples import drive_qt; drive_qt()"],
        cwd=ROOT,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    seen = json.loads(lines[-1])
    value = seen["value"]
    assert len(lines) == 4 and lines[-1].startswith("{"), lines
    assert lines[0] == f"cancelled after {value} of 100 steps" and lines[1] == "done: 4 steps"
    assert lines[2].startswith("cancelled after ")  # closed while running
    assert seen["platform"] == "offscreen"
    assert seen["cancel enabled before"] is False and seen["buttons while running"] == [False, True]
    assert seen["label while running"].startswith("step ") and seen["label after cancel"] == "cancelling..."
    assert seen["error"] == "TaskCancelled" and 0 < value < 100
    assert seen["label"] == f"cancelled after {value} of 100 steps" and seen["buttons after"] == [True, False]
    assert seen["result"] == 4 and seen["done_value"] == 4 and seen["done_label"] == "done: 4 steps"
    assert seen["closed_state"] == "FINISHED" and seen["closed_error"] == "TaskCancelled"
    assert seen["progress threads"] == [seen["main thread"]]
    assert len(seen["worker threads"]) >= 1 and seen["main thread"] not in seen["worker threads"]
