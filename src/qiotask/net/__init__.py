"""The seed's own use: sockets, DNS, listeners and TLS on tasks. This release has the addresses; the rest is coming."""

from __future__ import annotations

from ._address import FdSocketAddress as FdSocketAddress
from ._address import InetSocketAddress as InetSocketAddress
from ._address import SocketAddress as SocketAddress
from ._address import UnixSocketAddress as UnixSocketAddress
from ._address import VsockSocketAddress as VsockSocketAddress

__all__ = [
    "SocketAddress",
    "InetSocketAddress",
    "UnixSocketAddress",
    "VsockSocketAddress",
    "FdSocketAddress",
]
