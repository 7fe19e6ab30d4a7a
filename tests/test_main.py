"""The ``qiotask`` command line (``python -m qiotask``): info, bench, help,
version, program name.  The demo's own tests are in test_demo.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import qiotask.__main__ as cli

from .conftest import STRICT_WARNINGS

#: The console script pip installed beside this interpreter (Makefile's
#: editable install); a missing one is a broken entry point, so no skip.
SCRIPT = Path(sys.executable).with_name("qiotask")

#: The two ways to run the command, and the program name each should show.
WAYS = {
    "console script": ([str(SCRIPT)], "qiotask"),
    "python -m": ([sys.executable, "-X", "dev", *STRICT_WARNINGS, "-m", "qiotask"], "python -m qiotask"),
}


def run(*args: str, way: str = "python -m") -> subprocess.CompletedProcess[str]:
    command, _prog = WAYS[way]
    # The console script takes no interpreter options: the same via the environment.
    env = {**os.environ, "PYTHONDEVMODE": "1", "PYTHONWARNINGS": ",".join(STRICT_WARNINGS[1::2])}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("way", WAYS)
def test_usage_names_the_program_as_it_was_run(way: str) -> None:
    assert SCRIPT.exists(), f"no console script at {SCRIPT}: install qiotask into this venv (make test does)"
    result = run("--help", way=way)
    assert result.returncode == 0, result.stderr
    prog = WAYS[way][1]
    assert result.stdout.startswith(f"usage: {prog} [-h] [--version] COMMAND ...\n")
    assert f"Run '{prog} COMMAND --help'" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("way", WAYS)
def test_version(way: str) -> None:
    result = run("--version", way=way)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"qiotask {cli.__version__}\n", "")


def test_help_is_plain_text_and_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert "`" not in out and ":mod:" not in out  # no reStructuredText from a docstring
    assert "worker threads" in out
    for command in ("demo", "info", "bench", "ps"):
        assert f"\n    {command}  " in out


def test_no_arguments_prints_the_help_and_exits_2() -> None:
    # 2, argparse's status for a missing argument: a script that forgot the
    # command fails; --help is the way to ask for help (stdout, status 0).
    result = run()
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: python -m qiotask [-h] [--version] COMMAND ...\n")
    for command in ("demo", "info", "bench", "ps"):
        assert f"\n    {command}  " in result.stderr
    assert "rest" not in result.stderr


@pytest.mark.parametrize(
    ("command", "says"),
    [("demo", "heartbeat"), ("info", "event loop"), ("bench", "benchmarks/throughput.py"), ("ps", "enable_dump")],
)
def test_each_command_prints_its_own_help(command: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main([command, "--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: qiotask {command} [-h]")
    assert says in out
    assert "loops:" not in out and "Step 1/" not in out  # printed the help, ran nothing


def test_main_takes_a_program_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["info", "--help"], prog="tool")
    assert capsys.readouterr().out.startswith("usage: tool info [-h]")


def test_bad_command_is_refused() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_unknown_option_of_a_command_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["info", "--verbose"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: qiotask info [-h]\n")
    assert "qiotask info: error: unrecognized arguments: --verbose" in err


def test_bench_outside_a_checkout_says_where_the_benchmark_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As in an installed wheel: no benchmarks/ beside the package.
    monkeypatch.setattr(cli, "_BENCHMARK", tmp_path / "benchmarks" / "throughput.py")
    assert cli.main(["bench", "--jobs", "10"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    for where in ("benchmarks/throughput.py", "source repository", "make bench"):
        assert where in captured.err


def test_bench_passes_its_arguments_to_the_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "throughput.py"
    script.write_text("import json, sys\nprint(json.dumps(sys.argv))\n")
    monkeypatch.setattr(cli, "_BENCHMARK", script)
    argv = sys.argv
    for args, passed in [
        (["--jobs", "200", "--rounds", "1", "extra"], ["--jobs", "200", "--rounds", "1", "extra"]),
        (["--", "--help"], ["--help"]),  # the benchmark's help, not bench's
        ([], []),
    ]:
        assert cli.main(["bench", *args]) == 0
        assert json.loads(capsys.readouterr().out) == [str(script), *passed]
        assert sys.argv is argv  # given back


def test_info_lists_versions_and_loops() -> None:
    result = run("info")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"qiotask {cli.__version__}")
    for loop in ("asyncio", "uvloop", "glib", "qt", "tk", "trio"):
        assert f"  {loop} " in result.stdout
    assert "asyncio  usable" in result.stdout


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
