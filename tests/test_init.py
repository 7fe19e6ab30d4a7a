"""The package's ``__init__``: ``qiotask.net`` is there after a plain
``import qiotask``, imported on first use, and never pulls in a toolkit."""

from __future__ import annotations

import subprocess
import sys

import pytest

import qiotask

from .conftest import STRICT_WARNINGS

TOOLKITS = ("gi", "PySide6", "tkinter", "trio", "uvloop")

PROBE = f"""
import sys
import qiotask
assert "qiotask.net" not in sys.modules, "import qiotask imported qiotask.net"
assert "net" in dir(qiotask)
listener = qiotask.net.NetListener()
listener.close()
from qiotask import net
assert net is qiotask.net is sys.modules["qiotask.net"]
print(sorted(name for name in {TOOLKITS!r} if name in sys.modules))
"""


def test_net_is_reachable_lazily_without_any_toolkit() -> None:
    # A fresh interpreter: this one has imported qiotask.net and the toolkits.
    done = subprocess.run([sys.executable, *STRICT_WARNINGS, "-c", PROBE], capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"toolkits imported: {done.stdout.strip()}"


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        qiotask.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_public_names_are_listed() -> None:
    assert "net" in qiotask.__all__
    assert "PoolStatistics" in qiotask.__all__
    assert set(qiotask.__all__) <= set(dir(qiotask))
