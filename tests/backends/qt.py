"""A QtContext on the process's one Qt application (see qiotask.testing._qt)."""

from qiotask.testing._qt import QtLoop as QtBackend
from qiotask.testing._qt import application
from qiotask.testing._qt import open_qt as open

__all__ = ["QtBackend", "application", "open"]
