"""The embedded asyncio context (qiotask's default kind)."""

from __future__ import annotations

import qiotask


class AsyncioBackend:
    def __init__(self, uvloop: bool = False) -> None:
        self.context = qiotask.MainContext(name="test-uvloop" if uvloop else "test-asyncio", uvloop=uvloop)

    def close_loop(self) -> None:
        self.context.close()  # type: ignore[attr-defined]

    def cleanup(self) -> None:
        if not self.context.closed:
            self.context._dispatch()  # completions handed over at the very end
        self.context.close()  # type: ignore[attr-defined]


def open() -> AsyncioBackend:
    return AsyncioBackend()
