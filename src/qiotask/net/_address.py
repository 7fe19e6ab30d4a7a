"""Socket addresses, as QEMU's ``SocketAddress``: immutable values, checked
when built, written and read as text.

Four kinds, each a frozen dataclass deriving from :class:`SocketAddress`:

- :class:`InetSocketAddress` -- a TCP host and port;
- :class:`UnixSocketAddress` -- a Unix-domain path, or an abstract name;
- :class:`VsockSocketAddress` -- a vsock context id and port;
- :class:`FdSocketAddress` -- an already open socket's file descriptor.

The text forms that :meth:`SocketAddress.parse` reads::

    host:port                    e.g. example.com:80, 192.0.2.1:80
    [v6addr]:port                e.g. [::1]:80 (IPv6 hosts need the brackets)
    tcp:host:port                the explicit form of the two above
    tcp:[v6addr]:port
    unix:/path                   a path (everything after ``unix:``)
    unix:@name                   an abstract socket named ``name`` (Linux)
    vsock:cid:port
    fd:N                         a non-negative file descriptor number

An inet address may end in QEMU-style options: ``,ipv4=on|off``,
``,ipv6=on|off`` and ``,numeric=on|off``, in any order, each at most once.

The round-trip rule: ``str(address)`` is text that :meth:`SocketAddress.parse`
turns back into an equal address, for every address the constructors accept.
To keep that rule, ``str()`` writes the non-default inet flags as the options
above, writes the ``tcp:`` prefix when the host is itself a kind's name
(``tcp:unix:80``; bare ``unix:80`` would be a Unix path), and brackets every
host that contains a colon.  Kind names and option names are lower case.

What the text cannot hold is refused when the address is built: an inet host
with ``,``, ``[``, ``]``, a space or an unprintable character; a Unix path or
abstract name with a NUL; and a (non-abstract) Unix path that starts with
``@`` -- write ``./@name`` for a file by that name.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import ClassVar

__all__ = [
    "SocketAddress",
    "InetSocketAddress",
    "UnixSocketAddress",
    "VsockSocketAddress",
    "FdSocketAddress",
]

_MAX_PORT = 0xFFFF
_MAX_VSOCK = 0xFFFF_FFFF
_MAX_FD = 0x7FFF_FFFF  # a C int
_KINDS = ("tcp", "unix", "vsock", "fd")
_INET_OPTIONS = ("ipv4", "ipv6", "numeric")


def _check_int(name: str, value: object, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} out of range: {value} (must be 0..{maximum})")
    return value


def _check_flag(name: str, value: object, optional: bool) -> None:
    if isinstance(value, bool) or (optional and value is None):
        return
    allowed = "a bool or None" if optional else "a bool"
    raise TypeError(f"{name} must be {allowed}, not {type(value).__name__}")


def _parse_int(name: str, text: str, maximum: int) -> int:
    """``text`` as a plain decimal number in 0..maximum, else ValueError."""
    if not text:
        raise ValueError(f"missing {name}")
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{name} is not a number: {text!r}")
    # No int() of a huge digit string: past sys.int_info's limit it would
    # raise a ValueError about digits instead of this one.
    digits = text.lstrip("0")
    if len(digits) > len(str(maximum)) or int(digits or "0") > maximum:
        raise ValueError(f"{name} out of range: {text} (must be 0..{maximum})")
    return int(digits or "0")


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """The common base of the address kinds; build one of those, or
    :meth:`parse` text."""

    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        raise TypeError("SocketAddress is abstract: build an InetSocketAddress, UnixSocketAddress, ... or parse text")

    @classmethod
    def parse(cls, text: str) -> SocketAddress:
        """The address ``text`` writes (see the module's docstring for the forms).

        Raises ValueError naming the part that is wrong, TypeError if
        ``text`` is not a str.  Called on a subclass
        (``InetSocketAddress.parse``), it also raises ValueError for text of
        another kind.
        """
        if not isinstance(text, str):
            raise TypeError(f"address text must be a str, not {type(text).__name__}")
        address = _parse(text)
        if not isinstance(address, cls):
            raise ValueError(f"expected a {cls.kind} address, got a {address.kind} address: {text!r}")
        return address


@dataclass(frozen=True, slots=True)
class InetSocketAddress(SocketAddress):
    """A TCP address: ``host`` (a name, or an IPv4 or IPv6 literal, without
    brackets) and ``port`` (0..65535).

    ``ipv4``/``ipv6`` restrict the address families tried (``None``: let the
    host decide; both ``False`` is refused); ``numeric`` says ``host`` is a
    literal, not to be looked up.  The host is not checked further here: a
    name is resolved, and a literal read, only when the address is used.
    """

    kind: ClassVar[str] = "tcp"

    host: str
    port: int
    _: KW_ONLY
    ipv4: bool | None = None
    ipv6: bool | None = None
    numeric: bool = False

    def __post_init__(self) -> None:
        host: object = self.host
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, not {type(host).__name__}")
        if not host:
            raise ValueError("empty host")
        if any(c in ",[] " for c in host) or not host.isprintable():
            raise ValueError(f"host contains a comma, a bracket, a space or an unprintable character: {host!r}")
        _check_int("port", self.port, _MAX_PORT)
        _check_flag("ipv4", self.ipv4, optional=True)
        _check_flag("ipv6", self.ipv6, optional=True)
        _check_flag("numeric", self.numeric, optional=False)
        if self.ipv4 is False and self.ipv6 is False:
            raise ValueError("cannot disable both IPv4 and IPv6")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        prefix = "tcp:" if self.host in _KINDS else ""
        options = ""
        if self.ipv4 is not None:
            options += ",ipv4=" + ("on" if self.ipv4 else "off")
        if self.ipv6 is not None:
            options += ",ipv6=" + ("on" if self.ipv6 else "off")
        if self.numeric:
            options += ",numeric=on"
        return f"{prefix}{host}:{self.port}{options}"


@dataclass(frozen=True, slots=True)
class UnixSocketAddress(SocketAddress):
    """A Unix-domain socket: a filesystem ``path``, or with ``abstract=True``
    a name in Linux's abstract namespace (written ``unix:@name``; ``path``
    holds the name without the ``@``).

    Refused: an empty path, a NUL in it, and a non-abstract path starting
    with ``@`` (its text would read as an abstract name; use ``./@name``).
    The length limit of ``sun_path`` is not checked here.
    """

    kind: ClassVar[str] = "unix"

    path: str
    _: KW_ONLY
    abstract: bool = False

    def __post_init__(self) -> None:
        path: object = self.path
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__}")
        _check_flag("abstract", self.abstract, optional=False)
        if not path:
            raise ValueError("empty abstract name" if self.abstract else "empty path")
        if "\0" in path:
            raise ValueError(f"path contains a NUL character: {path!r}")
        if not self.abstract and path.startswith("@"):
            raise ValueError(f"path starts with '@', which the text form keeps for abstract names: {path!r}")

    def __str__(self) -> str:
        return f"unix:@{self.path}" if self.abstract else f"unix:{self.path}"


@dataclass(frozen=True, slots=True)
class VsockSocketAddress(SocketAddress):
    """A vsock address: context id ``cid`` and ``port``, each 0..2**32-1."""

    kind: ClassVar[str] = "vsock"

    cid: int
    port: int

    def __post_init__(self) -> None:
        _check_int("cid", self.cid, _MAX_VSOCK)
        _check_int("port", self.port, _MAX_VSOCK)

    def __str__(self) -> str:
        return f"vsock:{self.cid}:{self.port}"


@dataclass(frozen=True, slots=True)
class FdSocketAddress(SocketAddress):
    """An already open socket, by file descriptor number ``fd`` (0..2**31-1).

    QEMU also accepts the *name* of a file descriptor passed to its
    monitor; there is no monitor here, so only a non-negative int is
    accepted, and ``fd:name`` text is refused.
    """

    kind: ClassVar[str] = "fd"

    fd: int

    def __post_init__(self) -> None:
        _check_int("fd", self.fd, _MAX_FD)

    def __str__(self) -> str:
        return f"fd:{self.fd}"


def _parse(text: str) -> SocketAddress:
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        return _parse_inet(text)
    kind, colon, rest = text.partition(":")
    if not colon:
        raise ValueError(f"missing port: {text!r}")
    if kind == "tcp":
        return _parse_inet(rest)
    if kind == "unix":
        if rest.startswith("@"):
            if rest == "@":
                raise ValueError("empty abstract name")
            return UnixSocketAddress(rest[1:], abstract=True)
        if not rest:
            raise ValueError("empty path")
        return UnixSocketAddress(rest)
    if kind == "vsock":
        cid, colon, port = rest.partition(":")
        if not cid:
            raise ValueError("empty cid")
        if not colon:
            raise ValueError(f"missing port: {text!r}")
        return VsockSocketAddress(_parse_int("cid", cid, _MAX_VSOCK), _parse_int("port", port, _MAX_VSOCK))
    if kind == "fd":
        if rest and not (rest.isascii() and rest.isdigit()):
            raise ValueError(f"fd is not a number (monitor fd names are not supported): {rest!r}")
        return FdSocketAddress(_parse_int("fd", rest, _MAX_FD))
    # Not a kind: ``host:port``, unless what follows the colon is no port
    # at all but the rest of a ``kind:...`` address.
    if kind and (":" in rest or rest.startswith(("[", "/", "@"))):
        head = text.split(",")[0]
        if "::" in head or (len(kind) <= 4 and all(c in "0123456789abcdefABCDEF" for c in kind) and ":" in rest):
            raise ValueError(f"an IPv6 host must be in brackets ([{head.rpartition(':')[0]}]:port): {text!r}")
        raise ValueError(f"unknown kind {kind!r} (expected one of {', '.join(_KINDS)}, or host:port)")
    return _parse_inet(text)


def _parse_inet(text: str) -> InetSocketAddress:
    """``host:port[,options]`` or ``[host]:port[,options]``."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or "[" in text[1:close]:
            raise ValueError(f"unbalanced brackets: {text!r}")
        host, after = text[1:close], text[close + 1 :]
        if not host:
            raise ValueError("empty host")
        if not after or after.startswith(","):
            raise ValueError(f"missing port: {text!r}")
        if not after.startswith(":"):
            raise ValueError(f"expected ':' after ']': {text!r}")
        rest = after[1:]
    else:
        if "[" in text.split(",")[0] or "]" in text.split(",")[0]:
            raise ValueError(f"unbalanced brackets: {text!r}")
        host, colon, rest = text.partition(":")
        if not host and ":" in rest.split(",")[0]:
            raise ValueError(
                f"an IPv6 host must be in brackets ([{text.split(',')[0].rpartition(':')[0]}]:port): {text!r}"
            )
        if not host:
            raise ValueError("empty host")
        if not colon:
            raise ValueError(f"missing port: {text!r}")
    if "[" in host or "]" in host:
        raise ValueError(f"unbalanced brackets: {text!r}")
    port_text, *options = rest.split(",")
    if ":" in port_text:
        raise ValueError(f"an IPv6 host must be in brackets ([{host}:{port_text.rpartition(':')[0]}]:port): {text!r}")
    port = _parse_int("port", port_text, _MAX_PORT)
    flags: dict[str, bool] = {}
    for option in options:
        name, equals, value = option.partition("=")
        if name not in _INET_OPTIONS:
            raise ValueError(f"unknown option {name!r} (expected one of {', '.join(_INET_OPTIONS)})")
        if name in flags:
            raise ValueError(f"option {name!r} given twice")
        if not equals or value not in ("on", "off"):
            raise ValueError(f"option {name!r} must be on or off, not {value!r}")
        flags[name] = value == "on"
    return InetSocketAddress(
        host,
        port,
        ipv4=flags.get("ipv4"),
        ipv6=flags.get("ipv6"),
        numeric=flags.get("numeric", False),
    )
