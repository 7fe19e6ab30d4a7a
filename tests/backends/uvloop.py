"""The embedded context on a uvloop event loop."""

from __future__ import annotations

import uvloop  # noqa: F401  (ImportError here: the backend is skipped or, in CI, fails)

from .asyncio import AsyncioBackend


def open() -> AsyncioBackend:
    return AsyncioBackend(uvloop=True)
