"""The embedded context on uvloop (see qiotask.testing._asyncio)."""

from qiotask.testing._asyncio import open_uvloop as open

__all__ = ["open"]
