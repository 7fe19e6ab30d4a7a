"""trio: a standalone trio context, each ``MainLoop.run()`` one ``trio.run``."""

from __future__ import annotations

from ..loops.trio import TrioContext  # an ImportError here: trio is missing
from ._loops import ContextLoop


class TrioLoop(ContextLoop):
    def __init__(self) -> None:
        self.name = "trio"
        self.context = TrioContext(name="test-trio")


def open_trio() -> TrioLoop:
    return TrioLoop()
