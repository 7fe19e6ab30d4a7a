"""asyncio and uvloop: an embedded context (qiotask's own kind) of its own."""

from __future__ import annotations

from .._context import MainContext
from ._loops import ContextLoop


class AsyncioLoop(ContextLoop):
    def __init__(self, name: str, *, uvloop: bool) -> None:
        self.name = name
        self.context = MainContext(name=f"test-{name}", uvloop=uvloop)


def open_asyncio() -> AsyncioLoop:
    return AsyncioLoop("asyncio", uvloop=False)


def open_uvloop() -> AsyncioLoop:
    import uvloop  # noqa: F401  (an ImportError here: the loop is unavailable)

    return AsyncioLoop("uvloop", uvloop=True)
