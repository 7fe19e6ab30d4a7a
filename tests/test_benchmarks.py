"""The benchmarks run end to end (smoke tests: their figures are a report,
never asserted here -- speed is judged by running them, see
docs/performance.md)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .conftest import STRICT_WARNINGS
from .test_examples import require

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def load(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module, registered in sys.modules while it is loaded (its dataclasses look
    their module up there); the caller removes it."""
    spec = importlib.util.spec_from_file_location(f"qiotask_benchmarks_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def throughput() -> Iterator[ModuleType]:
    before = set(sys.modules)
    yield load("throughput")
    for name in set(sys.modules) - before:  # this module and the chart module it loaded
        if name.startswith("qiotask_benchmarks_"):
            del sys.modules[name]


def assert_png(path: Path) -> None:
    """``path`` is a whole PNG image of a plausible chart's size."""
    from PIL import Image  # matplotlib requires Pillow

    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82"), path
    with Image.open(path) as image:
        image.verify()  # every chunk's checksum
    with Image.open(path) as image:
        assert image.width >= 600 and image.height >= 200, image.size


def assert_chart(path: Path, stdout: str) -> None:
    """The run wrote its chart to ``path`` or, without matplotlib, said how to install it."""
    if HAVE_MATPLOTLIB:
        assert f"chart: {path}" in stdout
        assert_png(path)
    else:
        assert "no chart: matplotlib is not installed (pip install 'qiotask[bench]')" in stdout
        assert not path.exists()


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


def run_json(tmp_path: Path, *command: str) -> tuple[dict[str, Any], str]:
    """The JSON report and the stdout of a benchmark run."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, *STRICT_WARNINGS, *command, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(report.read_text()), done.stdout


@pytest.mark.timeout(120)
def test_bench_command_runs_the_throughput_benchmark(tmp_path: Path) -> None:
    """`python -m qiotask bench` (runpy of benchmarks/throughput.py) works,
    every contender completed every job in every round, and the chart was
    drawn (runpy leaves benchmarks/ off sys.path: chart.py is found anyway)."""
    chart = tmp_path / "charts" / "throughput.png"
    result, stdout = run_json(
        tmp_path, "-m", "qiotask", "bench", "--jobs", "200", "--rounds", "1", "--chart", str(chart)
    )
    samples = result["samples"]
    assert {s["contender"] for s in samples} >= {"qiotask", "asyncio.to_thread"}
    assert all(s["jobs"] == 200 and s["seconds"] > 0 for s in samples)
    assert 100 < result["queued_task_bytes"] < 5000  # measured, and of a plausible size
    assert_chart(chart, stdout)


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed (the 'bench' extra)")
def test_chart_draws_a_png_from_results(tmp_path: Path, throughput: ModuleType) -> None:
    """chart.write_chart on a small made-up result set: two groups, a missing
    ratio, one round only, and a target line beyond every bar."""
    chart = throughput.load_chart()
    rows = [
        chart.Row("qiotask", [50_000.0, 61_000.0, 58_000.0], [90.0, 120.0, 100.0], 5.2, True),
        chart.Row("qiotask.to_thread", [30_000.0, 33_000.0, 31_000.0], [400.0, 380.0, 500.0], 3.1, True),
        chart.Row("asyncio.to_thread", [10_000.0, 11_000.0, 12_000.0], [900.0, 1100.0, 950.0], 1.0, False),
    ]
    other = [
        chart.Row("qiotask", [9_000.0], [2_000.0], None, True),
        chart.Row("TPE + after(1 ms) poll", [4_000.0], [3_000.0], 1.0, False),
    ]
    groups = [
        chart.Group("asyncio", "asyncio.to_thread", rows, {5.0: "qiotask", 3.0: "qiotask.to_thread"}),
        chart.Group("tk", "TPE + after(1 ms) poll", other, {3.0: "qiotask"}),
    ]
    path = tmp_path / "new directory" / "chart.png"
    assert chart.write_chart(str(path), "a made-up run", groups) is True
    assert_png(path)


def test_chart_without_matplotlib_says_how_to_install_it(
    tmp_path: Path, throughput: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib... raises ImportError
    chart = throughput.load_chart()
    group = chart.Group("asyncio", "asyncio.to_thread", [chart.Row("qiotask", [1.0], [1.0], 1.0, True)], {})
    path = tmp_path / "chart.png"
    assert chart.write_chart(str(path), "title", [group]) is False
    assert capsys.readouterr().out == "no chart: matplotlib is not installed (pip install 'qiotask[bench]')\n"
    assert not path.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("other_cpus", [1.5, 0.0])
def test_throughput_warns_when_other_processes_were_busy(
    other_cpus: float,
    throughput: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """main() measures the other processes' CPU use around its rounds, shows it
    in the heading and the JSON, and warns before its verdicts when it is over
    BUSY_WARNING (issue 12: a loaded machine printed FAIL with no warning).
    /proc/stat is replaced by a clock that other processes use ``other_cpus``
    CPUs of, on top of this process's own CPU time."""
    monkeypatch.setattr(
        throughput, "machine_busy_seconds", lambda: time.perf_counter() * other_cpus + time.process_time()
    )
    report = tmp_path / "report.json"
    argv = ["--jobs", "50", "--inflight", "4", "--rounds", "1", "--no-chart", "--json", str(report)]
    assert throughput.main(argv) == 0
    out = capsys.readouterr().out
    assert json.loads(report.read_text())["config"]["other_cpus"] == pytest.approx(other_cpus, abs=0.2)
    assert f"; other processes used {other_cpus:.2f} CPUs)" in out.splitlines()[1]
    warned = [line for line in out.splitlines() if line.startswith("warning: other processes used")]
    if other_cpus > throughput.BUSY_WARNING:
        assert len(warned) == 1 and "the figures are unreliable" in warned[0], out
        assert out.index(warned[0]) < out.index("qiotask / asyncio.to_thread = ")  # before the verdicts
    else:
        assert warned == [], out
    assert "chart:" not in out and "no chart" not in out


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
    chart = tmp_path / "loops.png"
    result, stdout = run_json(
        tmp_path, str(BENCHMARKS / "loops.py"), "--jobs", "400", "--rounds", "1", "--chart", str(chart)
    )
    loops = {entry["loop"]: entry for entry in result["loops"]}
    assert set(loops) == {"glib", "qt", "tk", "trio", "uvloop"}
    for name, entry in loops.items():
        contenders = {s["contender"] for s in entry["summary"]}
        assert entry["failures"] == {} and "qiotask" in contenders and entry["best_peer"] in contenders, name
    assert_chart(chart, stdout)
