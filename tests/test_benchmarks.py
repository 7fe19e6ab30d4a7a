"""The network benchmark runs end to end (a smoke test: its figures are a
report, never asserted here -- speed is judged by running it, see
docs/performance.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.timeout(120)
def test_net_benchmark_quick_run_serves_every_connection(tmp_path: Path) -> None:
    report = tmp_path / "net.json"
    done = subprocess.run(
        [sys.executable, "-W", "error", str(BENCHMARKS / "net.py"), "--quick", "--json", str(report)],
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
