"""Before and after: benchmarks/throughput.py against this tree and a git ref, alternately.

A change to the hot path must be measured against the code before it in one sitting: these machines
swing about 2x from second to second, so figures taken minutes apart compare different machines.  This
script checks the ref out into a temporary git worktree, then runs ``throughput.py`` (this tree's copy,
so both trees are measured by the same benchmark) ``--runs`` times for each tree, alternating which goes
first, and prints for each contender the median over the runs of the run's median figures -- jobs/s,
p99, CPU µs per job and the ratio to ``asyncio.to_thread`` -- for both trees side by side, with the
memory per queued task.

    .venv/bin/python benchmarks/compare.py --against HEAD~1 --runs 4

This is a report, not a test: the exit status is 0 whatever the figures are.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIGURES = ("jobs_per_s", "p99_us", "cpu_us_per_job", "ratio")


def run_once(src: Path, extra: list[str]) -> dict[str, Any]:
    """One run of throughput.py with ``src`` first on the import path."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run(
            [sys.executable, str(HERE / "throughput.py"), "--json", str(out), "--no-chart", *extra],
            env=dict(os.environ, PYTHONPATH=str(src)),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def medians(results: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], float]:
    by_contender: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        for summary in result["summary"]:
            by_contender.setdefault(summary["contender"], []).append(summary)
    table = {
        name: {figure: statistics.median(row[figure] for row in rows) for figure in FIGURES}
        for name, rows in by_contender.items()
    }
    memory = statistics.median(result["queued_task_bytes"] for result in results if "queued_task_bytes" in result)
    return table, memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--against", default="HEAD", help="the git ref to compare with (default HEAD)")
    parser.add_argument("--runs", type=int, default=4, help="runs of throughput.py per tree (default 4)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds within each run (default 5)")
    parser.add_argument("--jobs", type=int, default=20000, help="jobs per measurement (default 20000)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rounds < 1 or args.jobs < 1:
        parser.error("--runs, --rounds and --jobs must be at least 1")
    worktree = Path(tempfile.mkdtemp(prefix="qiotask-compare-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.against], check=True)
    trees = {"this tree": ROOT / "src", args.against: worktree / "src"}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    try:
        for run in range(args.runs):
            order = list(trees) if run % 2 == 0 else list(reversed(trees))
            for name in order:
                print(f"run {run + 1}/{args.runs}: {name}", file=sys.stderr, flush=True)
                results[name].append(run_once(trees[name], ["--rounds", str(args.rounds), "--jobs", str(args.jobs)]))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
        shutil.rmtree(worktree, ignore_errors=True)
    print(f"\nmedian of {args.runs} alternating runs of throughput.py ({args.rounds} rounds each)")
    header = (
        f"{'tree':<14} {'contender':<22} {'jobs/s':>10} {'p99 µs':>9} {'CPU µs/job':>11} {'vs asyncio.to_thread':>21}"
    )
    print(header)
    print("-" * len(header))
    memory: dict[str, float] = {}
    for name in trees:
        table, memory[name] = medians(results[name])
        for contender, row in table.items():
            print(
                f"{name:<14} {contender:<22} {row['jobs_per_s']:>10,.0f} {row['p99_us']:>9.1f} "
                f"{row['cpu_us_per_job']:>11.1f} {row['ratio']:>20.2f}x"
            )
    for name, value in memory.items():
        print(f"memory per queued task, {name}: {value:,.0f} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
