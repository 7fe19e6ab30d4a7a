"""A withdrawn Tk root on an X display, Xvfb if need be (see qiotask.testing._tk)."""

from qiotask.testing._tk import TkLoop as TkBackend
from qiotask.testing._tk import ensure_display, new_root, root_alive
from qiotask.testing._tk import open_tk as open

__all__ = ["TkBackend", "ensure_display", "new_root", "open", "root_alive"]
