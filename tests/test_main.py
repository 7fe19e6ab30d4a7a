"""`python -m qiotask demo|info|bench`, run as a user would."""

from __future__ import annotations

import subprocess
import sys

import pytest

import qiotask.__main__ as cli

from .conftest import STRICT_WARNINGS


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", *STRICT_WARNINGS, "-m", "qiotask", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_demo_runs_the_seed_examples_and_exits_0() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("poll ") == 3
    assert "resolved 'localhost' and bound" in out
    assert "client read b'hello from the main loop\\n'" in out
    assert "demo finished: all steps ran" in out
    # Step 4, qiotask.net: a name resolved in a worker, TLS on the loop, echo.
    assert "resolved 'localhost': [" in out
    assert "made a CA and a certificate for localhost" in out  # a worker step: checked below
    assert "echo server listening on " in out
    assert "client TLS handshake done: TLSv1." in out
    assert "server TLS handshake done: TLSv1." in out
    for message in ("ping 1", "ping 2", "ping 3"):
        assert f"echo server echoed b'{message}'" in out
        assert f"client got b'{message}' back" in out
    assert "echo server and client closed; 3 messages echoed" in out
    for line in out.splitlines():
        step = line.split()[3] if len(line.split()) > 3 else ""
        if step in ("func", "timer", "watch", "accept"):
            assert "MainThread" in line, line
        if step == "worker":
            assert "qiotask-worker" in line, line
    assert result.stderr == ""


def test_info_lists_versions_and_loops() -> None:
    result = run("info")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"qiotask {cli.__version__}")
    for loop in ("asyncio", "uvloop", "glib", "qt", "tk", "trio"):
        assert f"  {loop} " in result.stdout
    assert "asyncio  usable" in result.stdout


def test_bad_command_is_refused() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_info_says_why_qt_is_missing_on_python_3_15(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As on Python 3.15, where the qt extra installs no PySide6.
    real_import = cli.importlib.import_module

    def import_module(name: str, package: str | None = None) -> object:
        if name.startswith("PySide6"):
            raise ModuleNotFoundError("No module named 'PySide6'")
        return real_import(name, package)

    monkeypatch.setattr(cli.sys, "version_info", (3, 15, 0, "final", 0))
    monkeypatch.setattr(cli.importlib, "import_module", import_module)
    assert cli.info() == 0
    qt = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  qt "))
    assert "not usable: ModuleNotFoundError" in qt
    assert "no PySide6 release for Python 3.15" in qt
