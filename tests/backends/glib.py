"""A fresh ``GLib.MainContext`` attached with ``qiotask.attach``."""

from __future__ import annotations

import qiotask


class GLibBackend:
    def __init__(self) -> None:
        # Imported here: an ImportError means the toolkit is missing.
        from gi.repository import GLib  # type: ignore[import-untyped]

        from qiotask.loops.glib import GLibContext

        self.glib_context = GLib.MainContext()
        context = qiotask.attach(self.glib_context)  # owned by the test thread, which attaches
        assert isinstance(context, GLibContext)
        self.context: GLibContext = context

    def close_loop(self) -> None:
        self.context.close()

    def cleanup(self) -> None:
        if not self.context.closed:
            self.context._dispatch()  # completions handed over at the very end
        self.context.close()


def open() -> GLibBackend:
    return GLibBackend()
