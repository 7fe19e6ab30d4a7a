"""A standalone trio context: each ``MainLoop.run()`` is one ``trio.run``."""

from __future__ import annotations

from qiotask.loops.trio import TrioContext  # ImportError here: trio is missing

from . import ContextBackend


class TrioBackend(ContextBackend):
    def __init__(self) -> None:
        self.context = TrioContext(name="test-trio")


def open() -> TrioBackend:
    return TrioBackend()
