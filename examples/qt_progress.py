"""A progress bar and a Cancel button for a blocking job, in a Qt window.

Start runs the job in a qiotask worker thread.  The worker reports how far it
is with ``task.report_progress``, as often as it likes; ``task.connect_progress``
moves the ``QProgressBar`` on the Qt thread, inside ``app.exec()``, at most 25
times a second.  Cancel calls ``task.cancel()``: the worker stops at its next
step (``task.raise_if_cancelled()``) and the task ends with ``TaskCancelled``.
The worker never touches a widget.

Run it with ``python examples/qt_progress.py [--steps N]``; without a display,
set ``QT_QPA_PLATFORM=offscreen`` (then there is nothing to see or click).
"""

from __future__ import annotations

import argparse
import sys
import time

from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QApplication, QGridLayout, QLabel, QProgressBar, QPushButton, QWidget

import qiotask

#: How long one step of the job takes: the job stands for blocking work
#: (reading, hashing, uploading) done a chunk at a time.
STEP_SECONDS = 0.03


def work(task: qiotask.Task[int], steps: int) -> int:
    """The worker, on a pool thread: ``steps`` steps, each reported."""
    for step in range(1, steps + 1):
        task.raise_if_cancelled()  # Cancel was pressed: stop here
        time.sleep(STEP_SECONDS)  # one chunk of the blocking work
        task.report_progress(step, steps, f"step {step} of {steps}")
    return steps


class ProgressWindow(QWidget):
    """A bar, a line of text, Start and Cancel; one job at a time."""

    def __init__(self, app: QApplication, steps: int = 100) -> None:
        super().__init__()
        self.steps = steps
        self.context = qiotask.attach(app)  # the application's context: callbacks run in app.exec()
        self.task: qiotask.Task[int] | None = None
        self.setWindowTitle("qiotask: progress")
        self.bar = QProgressBar(maximum=steps)
        self.label = QLabel("ready")
        self.start_button = QPushButton("Start")
        self.cancel_button = QPushButton("Cancel", enabled=False)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        layout = QGridLayout(self)
        layout.addWidget(self.bar, 0, 0, 1, 2)
        layout.addWidget(self.label, 1, 0, 1, 2)
        layout.addWidget(self.start_button, 2, 0)
        layout.addWidget(self.cancel_button, 2, 1)

    def start(self) -> None:
        self.bar.setValue(0)
        self.label.setText("starting...")
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.task = qiotask.Task(None, self.finished, context=self.context, name="progress example")
        self.task.connect_progress(self.show_progress)
        self.task.run_in_thread(work, self.steps)

    def show_progress(self, task: qiotask.Task[int], done: float, total: float | None, message: str | None) -> None:
        """connect_progress's callback, on the Qt thread."""
        self.bar.setValue(int(done))
        if not task.cancelled():  # keep "cancelling..." up until the worker stops
            self.label.setText(message or "")

    def cancel(self) -> None:
        if self.task is not None and self.task.cancel():
            self.label.setText("cancelling...")
            self.cancel_button.setEnabled(False)

    def finished(self, source: None, err: BaseException | None, opaque: None) -> None:
        """The task's func, on the Qt thread."""
        if isinstance(err, qiotask.ContextClosedError):
            return  # the application went first; this may run on a worker thread: no Qt
        self.task = None
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if err is None:
            self.label.setText(f"done: {self.steps} steps")
        elif isinstance(err, qiotask.TaskCancelled):
            self.label.setText(f"cancelled after {self.bar.value()} of {self.steps} steps")
        else:
            self.label.setText(f"failed: {err}")
        print(self.label.text(), flush=True)

    def closeEvent(self, event: QCloseEvent) -> None:
        """Closing the window stops the job first, so that no task outlives the window."""
        if self.task is not None:
            self.task.cancel()
            self.task.wait_thread()  # the worker stops within a step; finished() runs here, now
        event.accept()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A progress bar and a Cancel button for a job in a worker thread.")
    parser.add_argument("--steps", type=int, default=100, help="steps of the job (default 100)")
    args = parser.parse_args(argv)

    app = QApplication(sys.argv[:1])  # one per process, made before anything attaches it
    window = ProgressWindow(app, args.steps)
    window.resize(360, 120)
    window.show()
    return app.exec()  # returns once the last window is closed


if __name__ == "__main__":
    raise SystemExit(main())
