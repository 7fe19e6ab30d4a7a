"""A QtContext with a receiver of its own on the process's one Qt application.

Only one ``QCoreApplication`` may exist in a process, so every test shares
it (made here on first use, in the main thread, or reused if something made
one before); each test gets a fresh ``QtContext(app)``, and closing the loop
closes that context -- deletes its receiver -- not the application.
"""

from __future__ import annotations

import os

# Before Qt is imported: a QGuiApplication made later in the process (by a
# test) must not look for a display.  Harmless for QCoreApplication.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# ImportError here: the backend is skipped or, in CI, fails.
from PySide6.QtCore import QCoreApplication

from qiotask.loops.qt import QtContext

from . import ContextBackend


def application() -> QCoreApplication:
    """The process's Qt application, made once."""
    app = QCoreApplication.instance()
    if app is None:
        app = QCoreApplication(["qiotask-tests"])
    return app


class QtBackend(ContextBackend):
    def __init__(self) -> None:
        self.context = QtContext(application(), name="test-qt")


def open() -> QtBackend:
    return QtBackend()
