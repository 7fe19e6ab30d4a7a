"""A standalone trio context (see qiotask.testing._trio)."""

from qiotask.testing._trio import TrioLoop as TrioBackend
from qiotask.testing._trio import open_trio as open

__all__ = ["TrioBackend", "open"]
