"""``python -m qiotask demo``, run as a user would: the heartbeat that shows
the point of the library, the seed's examples, and nothing imported beyond
the standard library and the ``demo`` extra."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

from qiotask._demo import JOB_SECONDS, STEPS

from .conftest import STRICT_WARNINGS

#: Loop toolkits (and their helpers) that the demo must not import.
TOOLKITS = {"uvloop", "gi", "PySide6", "shiboken6", "PyQt5", "PyQt6", "tkinter", "_tkinter", "trio", "anyio"}
TOOLKITS |= {"dask", "distributed"}

#: "[  123.4 ms] kind   thread           text"
LINE = re.compile(r"^\[ *[\d.]+ ms\] (\S+) +(\S+) +(.*)$")


def run_demo() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", *STRICT_WARNINGS, "-m", "qiotask", "demo"],
        capture_output=True,
        text=True,
        timeout=45,
    )


def test_demo_shows_the_point_then_runs_the_seed_examples() -> None:
    result = run_demo()
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout

    # Every step is labelled, in order, with a line that says what it shows.
    lines = out.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("Step ")]
    assert [lines[i] for i in headers] == [
        f"Step {n}/{len(STEPS)}: {title}" for n, (title, _, _) in enumerate(STEPS, 1)
    ]
    for i in headers:
        assert lines[i + 1].startswith("  ") and len(lines[i + 1]) > 20, lines[i + 1]

    # The point: the heartbeat ticks while the worker blocks, not while the loop does.
    in_worker = re.search(r"Result: (\d+) ticks during the [\d.]+ s job in a worker", out)
    on_loop = re.search(r"Result: (\d+) ticks during the [\d.]+ s job on the loop thread; .* stopped for (\d+) ms", out)
    assert in_worker is not None and on_loop is not None, out
    assert int(in_worker.group(1)) >= 2  # about 5: one each 100 ms of the 500 ms job
    assert int(on_loop.group(1)) == 0
    assert int(on_loop.group(2)) >= JOB_SECONDS * 1000 * 0.95

    # The seed and QMyObject are explained before they are used.
    seed = out.index("The seed is QEMU's include/io/task.h")
    assert seed < out.index("<QMyObject")
    assert "QMyObject, which stands for" in out[seed : out.index("<QMyObject")]

    # The seed's examples, and qiotask.net's TLS echo.
    assert out.count("poll ") == 3
    assert "resolved 'localhost' and bound" in out
    assert "client read b'hello from the main loop\\n'" in out
    assert "made a CA and a certificate for localhost" in out
    assert "client TLS handshake done: TLSv1." in out
    assert "server TLS handshake done: TLSv1." in out
    for message in ("ping 1", "ping 2", "ping 3"):
        assert f"echo server echoed b'{message}'" in out
        assert f"client got b'{message}' back" in out
    assert "echo server and client closed; 3 messages echoed" in out
    assert out.rstrip().endswith(
        f"demo finished: all {len(STEPS)} steps ran, every callback on the main thread (MainThread)."
    )

    # Which thread ran what: callbacks on the loop thread, workers on the pool.
    kinds: dict[str, set[str]] = {}
    for line in lines:
        match = LINE.match(line)
        if match:
            kinds.setdefault(match.group(1), set()).add(match.group(2))
    for kind in ("tick", "func", "timer", "watch", "accept"):
        assert kinds[kind] == {"MainThread"}, (kind, kinds[kind])
    assert all(thread.startswith("qiotask-worker") for thread in kinds["worker"])
    (worker,) = kinds["job"] - {"MainThread"}  # step 1's job; step 2's ran on the loop thread
    assert "MainThread" in kinds["job"] and worker.startswith("qiotask-worker")

    # -X dev turns on asyncio's debug mode, which logs the callback that
    # blocked the loop in step 2; nothing else may reach stderr.
    for line in result.stderr.splitlines():
        assert line.startswith("Executing <") and " took " in line, result.stderr


def test_demo_imports_the_standard_library_and_the_demo_extra_only() -> None:
    probe = textwrap.dedent(
        """
        import contextlib, io, json, sys
        before = set(sys.modules)
        import qiotask._demo
        imported = set(sys.modules) - before
        from qiotask.__main__ import main
        with contextlib.redirect_stdout(io.StringIO()):
            status = main(["demo"])
        ran = set(sys.modules) - before
        third_party = {m.split(".")[0] for m in ran} - set(sys.stdlib_module_names)
        files = {name: getattr(sys.modules[name], "__file__", None) for name in third_party}
        print(json.dumps({"status": status, "imported": sorted(imported), "ran": sorted(ran), "files": files}))
        """
    )
    result = subprocess.run([sys.executable, *STRICT_WARNINGS, "-c", probe], capture_output=True, text=True, timeout=45)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == 0
    for when in ("imported", "ran"):
        toolkits = {name for name in report[when] if name.split(".")[0] in TOOLKITS}
        assert not toolkits, f"the demo {when} {sorted(toolkits)}"

    # Every other third-party module is a file that trustme or what it needs
    # ships (by file, not by top-level name: a one-module distribution such
    # as typing_extensions has no top_level.txt for packages_distributions()).
    shipped = set()
    for dist_name in _requirements("trustme"):
        dist = metadata.distribution(dist_name)
        shipped.update(str(Path(str(dist.locate_file(f))).resolve()) for f in dist.files or [])
    for name, file in report["files"].items():
        if name == "qiotask" or file is None:  # None: a name an extension module registers
            continue
        assert str(Path(file).resolve()) in shipped, f"the demo imported {name} ({file}), not from trustme's needs"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: str) -> set[str]:
    """``dist`` and what it needs, transitively, as installed here (extras left out)."""
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python
        seen.add(name)
        for requirement in requires:
            if "extra ==" not in requirement:
                todo.append(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0])
    return seen
