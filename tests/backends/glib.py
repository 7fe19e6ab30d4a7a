"""A fresh GLib.MainContext, attached (see qiotask.testing._glib)."""

from qiotask.testing._glib import GLibLoop as GLibBackend
from qiotask.testing._glib import open_glib as open

__all__ = ["GLibBackend", "open"]
