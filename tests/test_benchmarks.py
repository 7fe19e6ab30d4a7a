"""The benchmarks run end to end (smoke tests: their figures are a report,
never asserted here -- speed is judged by running them, see
docs/performance.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import STRICT_WARNINGS
from .test_examples import require

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.timeout(120)
def test_net_benchmark_quick_run_serves_every_connection(tmp_path: Path) -> None:
    report = tmp_path / "net.json"
    done = subprocess.run(
        [sys.executable, *STRICT_WARNINGS, str(BENCHMARKS / "net.py"), "--quick", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(report.read_text())
    rounds = result["config"]["rounds"]
    samples = result["samples"]
    # Every round measured both servers, each echoing every connection.
    assert sorted(s["contender"] for s in samples) == sorted(["qiotask", "asyncio"] * rounds)
    assert all(s["conns"] == result["config"]["conns"] and s["seconds"] > 0 for s in samples)
    assert "qiotask / asyncio = " in done.stdout and "(target >= 0.8x)" in done.stdout


def run_json(tmp_path: Path, *command: str) -> dict[str, Any]:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, *STRICT_WARNINGS, *command, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(report.read_text())  # type: ignore[no-any-return]


@pytest.mark.timeout(120)
def test_bench_command_runs_the_throughput_benchmark(tmp_path: Path) -> None:
    """`python -m qiotask bench` (runpy of benchmarks/throughput.py) works,
    and every contender completed every job in every round."""
    result = run_json(tmp_path, "-m", "qiotask", "bench", "--jobs", "200", "--rounds", "1")
    samples = result["samples"]
    assert {s["contender"] for s in samples} >= {"qiotask", "asyncio.to_thread"}
    assert all(s["jobs"] == 200 and s["seconds"] > 0 for s in samples)
    assert 100 < result["queued_task_bytes"] < 5000  # measured, and of a plausible size


@pytest.mark.timeout(180)
def test_compare_runs_this_tree_against_a_git_ref() -> None:
    """benchmarks/compare.py checks the ref out beside the tree, runs the
    throughput benchmark on both and removes the worktree again."""
    root = BENCHMARKS.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    before = subprocess.run(["git", "-C", str(root), "worktree", "list"], capture_output=True, text=True).stdout
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "compare.py"),
            *("--against", "HEAD", "--runs", "1", "--rounds", "1", "--jobs", "200"),
        ],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "this tree" in done.stdout and "HEAD" in done.stdout
    assert "memory per queued task, HEAD:" in done.stdout
    after = subprocess.run(["git", "-C", str(root), "worktree", "list"], capture_output=True, text=True).stdout
    assert after == before  # the temporary worktree is gone


@pytest.mark.timeout(120)
def test_loops_benchmark_runs_every_loop(tmp_path: Path) -> None:
    """benchmarks/loops.py measures qiotask and a peer on each loop."""
    for loop, module in (("glib", "gi"), ("qt", "PySide6"), ("tk", "tkinter"), ("trio", "trio"), ("uvloop", "uvloop")):
        require(loop, module)  # skipped without the toolkit; a failure in CI
    result = run_json(tmp_path, str(BENCHMARKS / "loops.py"), "--jobs", "400", "--rounds", "1")
    loops = {entry["loop"]: entry for entry in result["loops"]}
    assert set(loops) == {"glib", "qt", "tk", "trio", "uvloop"}
    for name, entry in loops.items():
        contenders = {s["contender"] for s in entry["summary"]}
        assert entry["failures"] == {} and "qiotask" in contenders and entry["best_peer"] in contenders, name
