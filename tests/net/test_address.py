"""qiotask.net addresses: each text form, str() round trips, each error
message, constructor checks, and two fuzz properties (parse never fails with
anything but ValueError; parse(str(a)) == a for every valid address).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qiotask.net import (
    FdSocketAddress,
    InetSocketAddress,
    SocketAddress,
    UnixSocketAddress,
    VsockSocketAddress,
)

FUZZ = settings(max_examples=300, deadline=None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:80", InetSocketAddress("localhost", 80)),
        ("192.0.2.1:0", InetSocketAddress("192.0.2.1", 0)),
        ("example.com:65535", InetSocketAddress("example.com", 65535)),
        ("tcp:example.com:22", InetSocketAddress("example.com", 22)),
        ("[::1]:8080", InetSocketAddress("::1", 8080)),
        ("tcp:[2001:db8::1]:443", InetSocketAddress("2001:db8::1", 443)),
        ("[example.com]:80", InetSocketAddress("example.com", 80)),
        ("tcp:unix:80", InetSocketAddress("unix", 80)),
        ("h:007", InetSocketAddress("h", 7)),
        ("h:1,ipv4=on", InetSocketAddress("h", 1, ipv4=True)),
        ("h:1,numeric=on,ipv6=off", InetSocketAddress("h", 1, ipv6=False, numeric=True)),
        ("h:1,numeric=off", InetSocketAddress("h", 1)),
        ("unix:/run/qemu.sock", UnixSocketAddress("/run/qemu.sock")),
        ("unix:relative,with,commas", UnixSocketAddress("relative,with,commas")),
        ("unix:./@file", UnixSocketAddress("./@file")),
        ("unix:@abstract", UnixSocketAddress("abstract", abstract=True)),
        ("vsock:2:1024", VsockSocketAddress(2, 1024)),
        ("vsock:4294967295:4294967295", VsockSocketAddress(2**32 - 1, 2**32 - 1)),
        ("fd:0", FdSocketAddress(0)),
        ("fd:42", FdSocketAddress(42)),
    ],
)
def test_parse_forms(text: str, expected: SocketAddress) -> None:
    address = SocketAddress.parse(text)
    assert address == expected
    assert type(address) is type(expected)
    assert SocketAddress.parse(str(address)) == address


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (InetSocketAddress("localhost", 80), "localhost:80"),
        (InetSocketAddress("::1", 80), "[::1]:80"),
        (InetSocketAddress("tcp", 80), "tcp:tcp:80"),
        (InetSocketAddress("fd", 1), "tcp:fd:1"),
        (InetSocketAddress("h", 1, ipv4=True, ipv6=False, numeric=True), "h:1,ipv4=on,ipv6=off,numeric=on"),
        (UnixSocketAddress("/tmp/s"), "unix:/tmp/s"),
        (UnixSocketAddress("name", abstract=True), "unix:@name"),
        (VsockSocketAddress(3, 5000), "vsock:3:5000"),
        (FdSocketAddress(7), "fd:7"),
    ],
)
def test_str(address: SocketAddress, text: str) -> None:
    assert str(address) == text
    assert SocketAddress.parse(text) == address


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty address"),
        ("localhost", "missing port"),
        ("localhost:", "missing port"),
        ("tcp:localhost", "missing port"),
        ("[::1]", "missing port"),
        ("[::1],ipv4=on", "missing port"),
        ("[::1]:", "missing port"),
        ("vsock:3", "missing port"),
        ("vsock:3:", "missing port"),
        ("fd:", "missing fd"),
        ("h:65536", "port out of range"),
        ("h:99999999999999999999999999", "port out of range"),
        ("vsock:3:4294967296", "port out of range"),
        ("vsock:4294967296:1", "cid out of range"),
        ("fd:2147483648", "fd out of range"),
        ("h:http", "port is not a number"),
        ("h:-1", "port is not a number"),
        ("h:+1", "port is not a number"),
        ("h: 1", "port is not a number"),
        ("h:\u0661", "port is not a number"),
        ("vsock:x:1", "cid is not a number"),
        ("vsock:1:x", "port is not a number"),
        ("fd:-1", "fd is not a number"),
        ("fd:monitorname", "monitor fd names are not supported"),
        (":80", "empty host"),
        ("tcp::80", "empty host"),
        ("[]:80", "empty host"),
        ("vsock::1", "empty cid"),
        ("unix:", "empty path"),
        ("unix:@", "empty abstract name"),
        ("xyz:a:b", "unknown kind 'xyz'"),
        ("xyz:/path", "unknown kind 'xyz'"),
        ("TCP:h:1", "unknown kind 'TCP'"),
        ("[::1:80", "unbalanced brackets"),
        ("[[::1]]:80", "unbalanced brackets"),
        ("::1]:80", "unbalanced brackets"),
        ("h]:80", "unbalanced brackets"),
        ("[::1]80", "expected ':' after ']'"),
        ("::1:80", "must be in brackets"),
        ("tcp:::1:80", "must be in brackets"),
        ("fe80::1:80", "must be in brackets ([fe80::1]:port)"),
        ("2001:db8:0:0:0:0:0:1:80", "must be in brackets"),
        ("h:1,ipv5=on", "unknown option 'ipv5'"),
        ("h:1,ipv4", "option 'ipv4' must be on or off"),
        ("h:1,ipv4=yes", "option 'ipv4' must be on or off"),
        ("h:1,ipv4=on,ipv4=on", "option 'ipv4' given twice"),
        ("h:1,ipv4=off,ipv6=off", "cannot disable both IPv4 and IPv6"),
        ("h h:1", "host contains"),
        ("unix:/a\0b", "NUL"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SocketAddress.parse(text)


def test_parse_on_subclass_checks_the_kind() -> None:
    assert InetSocketAddress.parse("h:1") == InetSocketAddress("h", 1)
    assert UnixSocketAddress.parse("unix:@x") == UnixSocketAddress("x", abstract=True)
    with pytest.raises(ValueError, match="expected a tcp address, got a unix address"):
        InetSocketAddress.parse("unix:/x")
    with pytest.raises(TypeError, match="must be a str"):
        SocketAddress.parse(b"h:1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: InetSocketAddress("", 1), ValueError, "empty host"),
        (lambda: InetSocketAddress(b"h", 1), TypeError, "host must be a str, not bytes"),
        (lambda: InetSocketAddress("h", -1), ValueError, "port out of range"),
        (lambda: InetSocketAddress("h", 65536), ValueError, "port out of range"),
        (lambda: InetSocketAddress("h", True), TypeError, "port must be an int, not bool"),
        (lambda: InetSocketAddress("h", "80"), TypeError, "port must be an int, not str"),
        (lambda: InetSocketAddress("h", 1.0), TypeError, "port must be an int, not float"),
        (lambda: InetSocketAddress("h,x", 1), ValueError, "host contains"),
        (lambda: InetSocketAddress("[::1]", 1), ValueError, "host contains"),
        (lambda: InetSocketAddress("h\n", 1), ValueError, "host contains"),
        (lambda: InetSocketAddress("h", 1, ipv4=1), TypeError, "ipv4 must be a bool or None, not int"),
        (lambda: InetSocketAddress("h", 1, ipv6="on"), TypeError, "ipv6 must be a bool or None, not str"),
        (lambda: InetSocketAddress("h", 1, numeric=None), TypeError, "numeric must be a bool, not NoneType"),
        (lambda: InetSocketAddress("h", 1, ipv4=False, ipv6=False), ValueError, "cannot disable both"),
        (lambda: InetSocketAddress("h", 1, False), TypeError, "positional"),
        (lambda: UnixSocketAddress(""), ValueError, "empty path"),
        (lambda: UnixSocketAddress("", abstract=True), ValueError, "empty abstract name"),
        (lambda: UnixSocketAddress(None), TypeError, "path must be a str, not NoneType"),
        (lambda: UnixSocketAddress("/a\0"), ValueError, "NUL"),
        (lambda: UnixSocketAddress("@x"), ValueError, "starts with '@'"),
        (lambda: UnixSocketAddress("/x", abstract=1), TypeError, "abstract must be a bool, not int"),
        (lambda: VsockSocketAddress(-1, 1), ValueError, "cid out of range"),
        (lambda: VsockSocketAddress(2**32, 1), ValueError, "cid out of range"),
        (lambda: VsockSocketAddress(1, 2**32), ValueError, "port out of range"),
        (lambda: VsockSocketAddress(False, 1), TypeError, "cid must be an int, not bool"),
        (lambda: FdSocketAddress(-1), ValueError, "fd out of range"),
        (lambda: FdSocketAddress(2**31), ValueError, "fd out of range"),
        (lambda: FdSocketAddress("3"), TypeError, "fd must be an int, not str"),
        (lambda: FdSocketAddress(True), TypeError, "fd must be an int, not bool"),
        (lambda: SocketAddress(), TypeError, "abstract"),
    ],
)
def test_constructor_checks(build: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        build()  # type: ignore[operator]


def test_abstract_name_may_start_with_at() -> None:
    address = UnixSocketAddress("@x", abstract=True)
    assert str(address) == "unix:@@x"
    assert SocketAddress.parse("unix:@@x") == address


def test_immutable_hashable_and_distinct_kinds() -> None:
    address = InetSocketAddress("h", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        address.port = 2  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        address.extra = 1  # type: ignore[attr-defined]
    assert not hasattr(address, "__dict__")
    assert {address, InetSocketAddress("h", 1)} == {address}
    assert InetSocketAddress("h", 1) != InetSocketAddress("h", 1, numeric=True)
    assert UnixSocketAddress("x") != UnixSocketAddress("x", abstract=True)
    assert VsockSocketAddress(1, 2) != InetSocketAddress("1", 2)
    assert all(isinstance(a, SocketAddress) for a in (address, UnixSocketAddress("x"), FdSocketAddress(0)))


def test_import_loads_no_toolkit() -> None:
    code = (
        "import sys, qiotask.net\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'gi', 'PySide6', 'PyQt5', 'PyQt6', 'tkinter', '_tkinter', 'trio', 'uvloop', 'distributed', 'anyio'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# Fuzzing.

_HOST_CHARS = st.characters(
    blacklist_categories=("Cs", "Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cn"), blacklist_characters=",[]"
)


def _valid_host(host: str) -> bool:
    try:
        InetSocketAddress(host, 0)
    except ValueError:
        return False
    return True


def _inet() -> st.SearchStrategy[SocketAddress]:
    hosts = st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
        st.sampled_from(["localhost", "tcp", "unix", "vsock", "fd", "example.com", "a:b", "@x", "/x"]),
        st.text(_HOST_CHARS, min_size=1, max_size=20).filter(_valid_host),
    )
    flags = st.tuples(st.sampled_from([None, True, False]), st.sampled_from([None, True, False]), st.booleans())
    return st.builds(
        lambda host, port, f: InetSocketAddress(host, port, ipv4=f[0], ipv6=f[1], numeric=f[2]),
        hosts,
        st.integers(0, 65535),
        flags.filter(lambda f: not (f[0] is False and f[1] is False)),
    )


def addresses() -> st.SearchStrategy[SocketAddress]:
    """Every kind of valid address, including the awkward hosts and paths."""
    names = st.text(min_size=1).filter(lambda s: "\0" not in s)
    return st.one_of(
        _inet(),
        st.builds(UnixSocketAddress, names.filter(lambda s: not s.startswith("@"))),
        st.builds(lambda name: UnixSocketAddress(name, abstract=True), names),
        st.builds(VsockSocketAddress, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
        st.builds(FdSocketAddress, st.integers(0, 2**31 - 1)),
    )


@FUZZ
@given(st.text())
def test_fuzz_parse_raises_only_value_error(text: str) -> None:
    try:
        address = SocketAddress.parse(text)
    except ValueError:
        return
    assert isinstance(address, SocketAddress)
    assert SocketAddress.parse(str(address)) == address


_ADDRESS_TEXT = st.one_of(
    st.text(),
    st.builds(
        "".join,
        st.lists(
            st.sampled_from(["tcp:", "unix:", "vsock:", "fd:", "[", "]", ":", ",", "@", "1", "h", "ipv4=on", "::1"])
        ),
    ),
)


@FUZZ
@given(_ADDRESS_TEXT)
def test_fuzz_parse_address_like_text(text: str) -> None:
    try:
        SocketAddress.parse(text)
    except ValueError:
        pass


@FUZZ
@given(addresses())
def test_fuzz_round_trip(address: SocketAddress) -> None:
    text = str(address)
    assert SocketAddress.parse(text) == address
    assert type(address).parse(text) == address
