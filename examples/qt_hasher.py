"""Hash the files of a directory in worker threads, listed in a Qt window.

The sha256 of each file is computed in a qiotask worker thread.  The task's
source is the file's row in the list; the done-callback writes the digest into
it on the Qt thread, inside ``app.exec()``.  The workers never touch a widget.

Run it with ``python examples/qt_hasher.py [directory] [--exit-when-done]``
(the default directory is the qiotask package's); without a display, set
``QT_QPA_PLATFORM=offscreen``.  Each digest is also printed, as sha256sum does.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import sys
from pathlib import Path

from PySide6.QtWidgets import QApplication, QLabel, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

import qiotask


def sha256(task: qiotask.Task[str], path: Path) -> str:
    """The worker, on a pool thread: the hex sha256 of the file."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()


class HasherWindow(QWidget):
    """A progress line and one row per file, filled in as the hashes come."""

    def __init__(self, app: QApplication, files: list[Path], exit_when_done: bool) -> None:
        super().__init__()
        self.app = app
        self.exit_when_done = exit_when_done
        self.total = len(files)
        self.hashed = self.failed = 0
        self.setWindowTitle("qiotask: sha256")
        self.progress = QLabel()
        self.rows = QListWidget()
        layout = QVBoxLayout(self)
        layout.addWidget(self.progress)
        layout.addWidget(self.rows)

        ctx = qiotask.attach(app)  # the application's context: callbacks run in app.exec()
        for path in files:
            row = QListWidgetItem(f"{path.name}: hashing...", self.rows)
            task: qiotask.Task[str] = qiotask.Task(row, context=ctx, name=f"sha256 {path.name}")
            task.add_done_callback(functools.partial(self.show_digest, path))
            task.run_in_thread(sha256, path)
        self.show_progress()
        if not files:
            ctx.idle_add(self.finish)  # quit() before app.exec() would be forgotten

    def show_digest(self, path: Path, task: qiotask.Task[str]) -> None:
        """The task's done-callback, on the Qt thread."""
        err = task.propagate_error()
        if isinstance(err, qiotask.ContextClosedError):
            # The application went first.  Then this runs in whichever thread
            # completed the task, maybe a worker: no Qt here.
            return
        row: QListWidgetItem = task.get_source()
        if err is None:
            self.hashed += 1
            row.setText(f"{path.name}: {task.get_result()}")
            print(f"{task.get_result()}  {path}", flush=True)
        else:
            self.failed += 1
            row.setText(f"{path.name}: {err}")
            print(f"{path}: {err}", flush=True)
        self.show_progress()
        if self.hashed + self.failed == self.total:
            self.finish()

    def show_progress(self) -> None:
        self.progress.setText(f"{self.hashed + self.failed} of {self.total} files hashed")

    def finish(self) -> None:
        print(f"hashed {self.hashed} of {self.total} files, {self.failed} failed", flush=True)
        if self.exit_when_done:
            self.app.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description="Hash the files of a directory in worker threads, in a Qt window.")
    parser.add_argument("directory", nargs="?", type=Path, default=Path(qiotask.__file__).parent)
    parser.add_argument("--exit-when-done", action="store_true", help="quit once every file is hashed")
    args = parser.parse_args()

    app = QApplication(sys.argv[:1])  # one per process, made before anything attaches it
    files = sorted(path for path in args.directory.iterdir() if path.is_file())
    window = HasherWindow(app, files, args.exit_when_done)
    window.resize(720, 400)
    window.show()
    return app.exec()


if __name__ == "__main__":
    raise SystemExit(main())
