"""The ``qiotask`` command (also ``python -m qiotask``): ``demo``, ``info``, ``bench``, ``ps``.

``main(argv, prog)`` is the console script's entry point; it returns the exit
status.  ``qiotask`` with no command prints the help to stderr and exits 2,
as argparse does for any missing required argument: a script that forgot the
command fails, and ``qiotask --help`` is the way to ask for help (stdout, 0).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__, _adapters
from ._pool import DEFAULT_MAX_WORKERS

#: The exit status of a usage error, as argparse's.
_USAGE_ERROR = 2

#: benchmarks/throughput.py of the source checkout this package was imported
#: from (src/qiotask/__main__.py -> the repository root); an installed wheel
#: has no benchmarks beside it.
_BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"

_DESCRIPTION = (
    "qiotask runs blocking work in worker threads and hands each result back on the "
    "event loop's thread, so the loop never freezes. This command shows it at work "
    "and reports on this installation."
)

# (loop, module to import, qiotask's adapter (see _adapters.ADAPTERS), extra to install)
_LOOPS = (
    ("asyncio", "asyncio", "asyncio", None),
    ("uvloop", "uvloop", "asyncio", "uvloop"),
    ("glib", "gi", "glib", "glib"),
    ("qt", "PySide6.QtCore", "qt", "qt"),
    ("tk", "tkinter", "tk", "tk"),
    ("trio", "trio", "trio", "trio"),
)


_NO_QT_315 = (
    "no PySide6 release for Python 3.15 works with qiotask yet: those below 6.12 "
    "require Python < 3.15, and 6.12 leaves concurrent.futures half-imported"
)


def _version_of(module: object) -> str:
    for attr in ("__version__", "version", "TkVersion"):
        value = getattr(module, attr, None)
        if isinstance(value, (str, float, int)):
            return str(value)
    return "?"


def info() -> int:
    """Print versions and which loops are usable here."""
    print(f"qiotask {__version__}")
    print(f"python {platform.python_version()} ({platform.python_implementation()}) on {platform.platform()}")
    print(f"default worker pool size: {DEFAULT_MAX_WORKERS} (cpu_count={os.cpu_count()})")
    print("loops:")
    for name, module_name, adapter, extra in _LOOPS:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # any import failure means "not usable"
            hint = f"; pip install 'qiotask[{extra}]'" if extra else ""
            if name == "qt" and sys.version_info >= (3, 15):
                hint = f"; {_NO_QT_315}"
            print(f"  {name:<8} not usable: {type(exc).__name__}: {exc}{hint}")
            continue
        _adapters.load(adapter)
        problem = _adapters.problem(adapter)
        if problem is not None:
            # The toolkit is there, but this version of it is not one the
            # adapter supports (an API that moved, a broken build).
            print(f"  {name:<8} not usable: {problem} (in qiotask's adapter {_adapters.spec(adapter).module})")
            continue
        note = ""
        if name == "tk" and not os.environ.get("DISPLAY"):
            note = " (no DISPLAY set: a Tk window needs an X server, e.g. Xvfb)"
        if name == "asyncio":
            print(f"  {name:<8} usable, version {platform.python_version()} (stdlib)")
            continue
        if name == "qt":
            qt = importlib.import_module("PySide6")
            module = qt
        if name == "glib":
            glib = importlib.import_module("gi.repository.GLib")
            note = f" (GLib {glib.MAJOR_VERSION}.{glib.MINOR_VERSION}.{glib.MICRO_VERSION})"
        print(f"  {name:<8} usable, version {_version_of(module)}{note}")
    return 0


def bench(argv: Sequence[str]) -> int:
    """Run benchmarks/throughput.py of a source checkout with ``argv``."""
    if not _BENCHMARK.exists():
        # Exit 1, not argparse's 2: the command line is right, but what it
        # asks for is not in this installation.
        print(
            "qiotask bench runs the throughput benchmark, benchmarks/throughput.py, which lives in "
            "qiotask's source repository and is not installed with the package: in a checkout of the "
            "repository, run 'make bench' (or 'python benchmarks/throughput.py --help' for its options).",
            file=sys.stderr,
        )
        return 1
    saved = sys.argv
    sys.argv = [str(_BENCHMARK), *argv]
    try:
        runpy.run_path(str(_BENCHMARK), run_name="__main__")
    finally:
        sys.argv = saved
    return 0


def ps(pid: int, *, as_json: bool, stacks: bool, timeout: float) -> int:
    """Print the task listing of process ``pid`` (see ``_dump.ps``)."""
    from ._dump import PsError, format_answer
    from ._dump import ps as ask

    try:
        body = ask(pid, stacks=stacks, timeout=timeout)
    except PsError as exc:
        print(f"qiotask ps: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(body, indent=2))
    else:
        sys.stdout.write(format_answer(body))
    return 0


def _pid(text: str) -> int:
    # 0 and negative numbers name process groups to kill(2): never one of those.
    # Beyond 2**31 - 1 no system has one (Linux stops at 2**22).
    if not text.isdigit() or not 0 < int(text) < 2**31:
        raise argparse.ArgumentTypeError(f"not a process ID: {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _parser(prog: str) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line: the parser and, by name, each command's own."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=_DESCRIPTION,
        epilog=f"Run '{prog} COMMAND --help' for what a command does.",
    )
    parser.add_argument(
        "--version", action="version", version=f"qiotask {__version__}", help="print qiotask's version and exit"
    )
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    demo_parser = commands.add_parser(
        "demo",
        help="show what qiotask is for, then the examples of QEMU's QIOTask header, live (about 2 s)",
        description=(
            "Shows a heartbeat ticking on the loop thread while a blocking job runs in a worker, "
            "and stopping while the same job runs on the loop thread; then the examples of "
            "QEMU's include/io/task.h (the header qiotask implements) and a TLS echo over "
            "qiotask.net. Needs only the standard library (and trustme, the 'demo' extra, for TLS)."
        ),
    )
    info_parser = commands.add_parser(
        "info",
        help="print versions and which event loops are usable here",
        description="Prints qiotask's and Python's versions, the default worker pool size and, "
        "for each supported event loop, whether it is usable here or why not.",
    )
    bench_parser = commands.add_parser(
        "bench",
        usage="%(prog)s [-h] [ARGUMENT ...]",
        help="run the throughput benchmark (in a source checkout)",
        description=(
            "Runs benchmarks/throughput.py from qiotask's source repository (as 'make bench' does); "
            "it is not installed with the package. Arguments after 'bench' go to the benchmark: "
            f"'{prog} bench -- --help' lists them."
        ),
    )
    ps_parser = commands.add_parser(
        "ps",
        help="list the tasks in flight in another process, as qiotask.tasks() does",
        description=(
            "Asks process PID for its tasks in flight (name, state, what each waits for, age, "
            "thread, progress, and where each running worker is blocked) and prints them. "
            "The process answers through the handler of qiotask.enable_dump(), or, on Python "
            "3.14+, through sys.remote_exec() with no handler (same Python version needed)."
        ),
    )
    ps_parser.add_argument("pid", metavar="PID", type=_pid, help="the process to ask")
    ps_parser.add_argument("--json", action="store_true", help="print JSON: pid, time, python, qiotask, tasks")
    ps_parser.add_argument("--no-stacks", action="store_true", help="leave out the running workers' stacks")
    ps_parser.add_argument(
        "--timeout", type=_seconds, default=3.0, metavar="S", help="how long to wait for the answer (default 3 s)"
    )
    return parser, {"demo": demo_parser, "info": info_parser, "bench": bench_parser, "ps": ps_parser}


def main(argv: Sequence[str] | None = None, prog: str = "qiotask") -> int:
    """Run the command in ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    ``prog`` is the program name shown in usage and help: the console script
    is ``qiotask``; ``python -m qiotask`` passes its own.  Usage errors, and
    ``--help`` and ``--version``, raise ``SystemExit`` as argparse does.
    """
    parser, commands = _parser(prog)
    # parse_known_args, so that the options meant for the benchmark pass
    # through 'bench' (argparse.REMAINDER would refuse a leading option).
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return _USAGE_ERROR
    if args.command == "bench":
        return bench(rest[1:] if rest[:1] == ["--"] else rest)
    if rest:
        commands[args.command].error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo()
    if args.command == "ps":
        return ps(args.pid, as_json=args.json, stacks=not args.no_stacks, timeout=args.timeout)
    return info()


if __name__ == "__main__":
    sys.exit(main(prog="python -m qiotask"))
