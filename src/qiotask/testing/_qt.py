"""Qt: a ``QtContext`` with a receiver of its own on the process's one application.

A process may hold one ``QCoreApplication``, so every test shares it: the
one that exists already (a ``QApplication`` your own code or fixture made
first), or a ``QCoreApplication`` made here on first use.  Each test gets a
fresh ``QtContext(app)``; closing the loop closes that context -- deletes
its receiver -- not the application.
"""

from __future__ import annotations

import os

# Before Qt is imported: a QGuiApplication made later in the process must
# not look for a display.  Harmless for QCoreApplication; a value already
# set wins.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QCoreApplication  # an ImportError here: Qt is missing

from ..loops.qt import QtContext
from ._loops import ContextLoop


def application() -> QCoreApplication:
    """The process's Qt application, made on first use."""
    app = QCoreApplication.instance()
    if app is None:
        app = QCoreApplication(["qiotask-tests"])
    return app


class QtLoop(ContextLoop):
    def __init__(self) -> None:
        self.name = "qt"
        self.context = QtContext(application(), name="test-qt")


def open_qt() -> QtLoop:
    return QtLoop()
