"""A fresh ``GLib.MainContext`` attached with ``qiotask.attach``."""

from __future__ import annotations

import qiotask

from . import ContextBackend


class GLibBackend(ContextBackend):
    def __init__(self) -> None:
        # Imported here: an ImportError means the toolkit is missing.
        from gi.repository import GLib  # type: ignore[import-untyped]

        from qiotask.loops.glib import GLibContext

        self.glib_context = GLib.MainContext()
        context = qiotask.attach(self.glib_context)  # owned by the test thread, which attaches
        assert isinstance(context, GLibContext)
        self.context: GLibContext = context


def open() -> GLibBackend:
    return GLibBackend()
