"""A progress bar and a Cancel button for a blocking job, in a Tk window.

Start runs the job in a qiotask worker thread.  The worker reports how far it
is with ``task.report_progress``, as often as it likes; ``task.connect_progress``
moves the ``ttk.Progressbar`` on the Tk thread, at most 25 times a second.
Cancel calls ``task.cancel()``: the worker stops at its next step
(``task.raise_if_cancelled()``) and the task ends with ``TaskCancelled``.  The
worker never touches tkinter.

Run it with ``python examples/tk_progress.py [--steps N]``.
"""

from __future__ import annotations

import argparse
import time
import tkinter
from tkinter import ttk

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


class ProgressWindow:
    """A bar, a line of text, Start and Cancel; one job at a time."""

    def __init__(self, root: tkinter.Tk, steps: int = 100) -> None:
        self.root = root
        self.steps = steps
        self.context = qiotask.attach(root)  # Tk has no "running loop" to find: pass context=
        self.task: qiotask.Task[int] | None = None
        root.title("qiotask: progress")
        self.bar = ttk.Progressbar(root, length=320, maximum=steps)
        self.label = ttk.Label(root, text="ready", width=40)
        self.start_button = ttk.Button(root, text="Start", command=self.start)
        self.cancel_button = ttk.Button(root, text="Cancel", command=self.cancel, state="disabled")
        self.bar.grid(row=0, column=0, columnspan=2, padx=12, pady=(12, 4), sticky="ew")
        self.label.grid(row=1, column=0, columnspan=2, padx=12, sticky="w")
        self.start_button.grid(row=2, column=0, padx=12, pady=12, sticky="w")
        self.cancel_button.grid(row=2, column=1, padx=12, pady=12, sticky="e")

    def start(self) -> None:
        self.bar["value"] = 0
        self.label["text"] = "starting..."
        self.start_button["state"] = "disabled"
        self.cancel_button["state"] = "normal"
        self.task = qiotask.Task(None, self.finished, context=self.context, name="progress example")
        self.task.connect_progress(self.show_progress)
        self.task.run_in_thread(work, self.steps)

    def show_progress(self, task: qiotask.Task[int], done: float, total: float | None, message: str | None) -> None:
        """connect_progress's callback, on the Tk thread."""
        self.bar["value"] = done
        if not task.cancelled():  # keep "cancelling..." up until the worker stops
            self.label["text"] = message

    def cancel(self) -> None:
        if self.task is not None and self.task.cancel():
            self.label["text"] = "cancelling..."
            self.cancel_button["state"] = "disabled"

    def finished(self, source: None, err: BaseException | None, opaque: None) -> None:
        """The task's func, on the Tk thread."""
        if isinstance(err, qiotask.ContextClosedError):
            return  # the window went first; this may run on a worker thread: no tkinter
        self.task = None
        self.start_button["state"] = "normal"
        self.cancel_button["state"] = "disabled"
        if err is None:
            self.label["text"] = f"done: {self.steps} steps"
        elif isinstance(err, qiotask.TaskCancelled):
            self.label["text"] = f"cancelled after {self.bar['value']:g} of {self.steps} steps"
        else:
            self.label["text"] = f"failed: {err}"
        print(self.label["text"], flush=True)

    def close(self) -> None:
        """The window's close button: stop the job first, so that no task outlives the window."""
        if self.task is not None:
            self.task.cancel()
            self.task.wait_thread()  # the worker stops within a step; finished() runs here, now
        self.root.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A progress bar and a Cancel button for a job in a worker thread.")
    parser.add_argument("--steps", type=int, default=100, help="steps of the job (default 100)")
    args = parser.parse_args(argv)

    root = tkinter.Tk()
    window = ProgressWindow(root, args.steps)
    root.protocol("WM_DELETE_WINDOW", window.close)
    root.mainloop()  # returns once close() destroyed the window
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
