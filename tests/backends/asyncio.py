"""The embedded asyncio context (see qiotask.testing._asyncio)."""

from qiotask.testing._asyncio import AsyncioLoop as AsyncioBackend
from qiotask.testing._asyncio import open_asyncio as open

__all__ = ["AsyncioBackend", "open"]
