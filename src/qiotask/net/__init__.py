"""The seed's own use: sockets, DNS, listeners and TLS on tasks.

- :class:`SocketAddress` and its kinds name an endpoint (text in, text out);
- :class:`DNSResolver` turns names into numeric addresses off the loop;
- :class:`SocketChannel` listens, connects or opens a datagram socket in a
  worker (``*_async``) and is then driven by fd watches on the loop;
- :class:`NetListener` listens on every address of a name and hands each
  client to a callback on the loop thread;
- :class:`TLSChannel` runs a TLS handshake on the loop, through fd watches.

See ``docs/net.md`` for a tour.
"""

from __future__ import annotations

from ._address import FdSocketAddress as FdSocketAddress
from ._address import InetSocketAddress as InetSocketAddress
from ._address import SocketAddress as SocketAddress
from ._address import UnixSocketAddress as UnixSocketAddress
from ._address import VsockSocketAddress as VsockSocketAddress
from ._channel import SocketChannel as SocketChannel
from ._listener import NetListener as NetListener
from ._resolver import DNSResolver as DNSResolver
from ._tls import TLSChannel as TLSChannel

__all__ = [
    "SocketAddress",
    "InetSocketAddress",
    "UnixSocketAddress",
    "VsockSocketAddress",
    "FdSocketAddress",
    "DNSResolver",
    "SocketChannel",
    "NetListener",
    "TLSChannel",
]
