"""A toolkit whose adapter cannot load breaks no other loop.

GLib 2.90 dropped ``GLib.unix_fd_source_new``, which qiotask's GLib adapter
used: once any code had imported ``gi.repository.GLib``, the adapter's
import raised AttributeError inside ``get_context()``, and every task on
every loop failed with it.  Each test runs in a fresh interpreter whose
``gi.repository.GLib`` is an empty module -- a GLib without anything the
adapter needs -- so the adapter fails to load the way it did there.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from .backends import unavailable

pytestmark = pytest.mark.timeout(60)

BROKEN_GLIB = textwrap.dedent(
    """
    import sys, types
    import gi.repository
    sys.modules["gi.repository.GLib"] = types.ModuleType("gi.repository.GLib")
    import qiotask
    """
)


def run_child(body: str) -> subprocess.CompletedProcess[str]:
    try:
        import gi  # noqa: F401
    except ImportError as exc:
        unavailable(f"PyGObject is not installed: {exc}")
    return subprocess.run(
        [sys.executable, "-X", "dev", "-c", BROKEN_GLIB + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=50,
    )


def test_tasks_still_run_and_the_problem_is_recorded() -> None:
    result = run_child(
        """
        import asyncio
        from qiotask import _adapters

        # Outside any loop, get_context() tries the GLib adapter (GLib is
        # "in use": imported) before it settles on the default context.
        task = qiotask.Task(None)
        assert task.context is qiotask.default_context(), task.context
        task.complete()
        qiotask.Task(None).complete()  # the adapter is not tried again

        async def main():
            return await qiotask.to_thread(lambda: 42)

        print("result:", asyncio.run(main()))
        print("problem:", _adapters.problem("glib"))
        """
    )
    assert result.returncode == 0, result.stderr
    assert "result: 42" in result.stdout
    assert "problem: AttributeError: " in result.stdout
    # Said once, as a warning naming the adapter, not per task.
    assert result.stderr.count("the qiotask.loops.glib adapter cannot load here") == 1, result.stderr


def test_attach_to_the_broken_toolkit_says_why() -> None:
    result = run_child(
        """
        class MainContext:  # what attach() takes for a GLib.MainContext
            pass
        MainContext.__module__ = "gi.repository.GLib"
        try:
            qiotask.attach(MainContext())
        except ImportError as exc:
            print("ImportError:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "ImportError: qiotask.attach(): cannot attach to a GLib.MainContext" in result.stdout
    assert "qiotask.loops.glib cannot load here: AttributeError" in result.stdout


def test_info_reports_the_toolkit_unusable_with_the_reason() -> None:
    result = run_child(
        """
        from qiotask.__main__ import info
        info()
        """
    )
    assert result.returncode == 0, result.stderr
    glib = next(line for line in result.stdout.splitlines() if line.startswith("  glib "))
    assert "not usable: AttributeError: " in glib
    assert "qiotask.loops.glib" in glib
    assert "  asyncio  usable" in result.stdout
