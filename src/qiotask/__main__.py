"""``python -m qiotask demo|bench|info``."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import runpy
import sys
from pathlib import Path

from . import __version__, _adapters
from ._pool import DEFAULT_MAX_WORKERS

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


def bench(argv: list[str]) -> int:
    """Run benchmarks/throughput.py from a source checkout."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"
    if not script.exists():
        print("the benchmarks live in the source repository: run 'make bench' there", file=sys.stderr)
        return 2
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qiotask", description=__doc__)
    parser.add_argument("command", choices=["demo", "bench", "info"], help="what to run")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for bench")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo()
    if args.command == "bench":
        return bench(args.rest)
    return info()


if __name__ == "__main__":
    sys.exit(main())
