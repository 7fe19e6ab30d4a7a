"""The embedded asyncio context (qiotask's default kind)."""

from __future__ import annotations

import qiotask

from . import ContextBackend


class AsyncioBackend(ContextBackend):
    def __init__(self, uvloop: bool = False) -> None:
        self.context = qiotask.MainContext(name="test-uvloop" if uvloop else "test-asyncio", uvloop=uvloop)


def open() -> AsyncioBackend:
    return AsyncioBackend()
