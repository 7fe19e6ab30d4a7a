"""GLib: a fresh ``GLib.MainContext`` attached with ``qiotask.attach``."""

from __future__ import annotations

from typing import Any

from .._context import MainContext, attach
from ._loops import ContextLoop


class GLibLoop(ContextLoop):
    def __init__(self) -> None:
        # Imported here: an ImportError means the toolkit is missing.
        from gi.repository import GLib  # type: ignore[import-untyped]

        self.name = "glib"
        self.glib_context: Any = GLib.MainContext()
        # Owned by the thread that attaches it: the test's.
        self.context: MainContext = attach(self.glib_context)


def open_glib() -> GLibLoop:
    return GLibLoop()
