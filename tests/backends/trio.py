"""A standalone trio context: each ``MainLoop.run()`` is one ``trio.run``."""

from __future__ import annotations

from qiotask.loops.trio import TrioContext  # ImportError here: trio is missing


class TrioBackend:
    def __init__(self) -> None:
        self.context = TrioContext(name="test-trio")

    def close_loop(self) -> None:
        self.context.close()

    def cleanup(self) -> None:
        if not self.context.closed:
            self.context._dispatch()  # completions handed over at the very end
        self.context.close()


def open() -> TrioBackend:
    return TrioBackend()
