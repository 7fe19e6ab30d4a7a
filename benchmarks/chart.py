"""The benchmarks' results as a PNG chart, beside the table they print.

Each group of contenders (throughput.py has one; loops.py one per loop) gets a row of two panels:

- jobs/s per contender: a bar at the median over the rounds, an error bar from the slowest to the fastest
  round, the contender's ratio against the group's reference written on its bar, and a dashed line for each
  target ratio (at the reference's median jobs/s times the target);
- p99 latency per contender, the same way, with a dashed line at the reference's p99.

matplotlib is optional (the ``bench`` extra) and imported only when a chart is written; without it,
:func:`write_chart` says how to install it and writes nothing, and the benchmark's table is printed as ever.
It draws with the Agg backend on a bare ``Figure``: no display is needed and pyplot's global state is not
touched.

The scripts load this module by its path (throughput.py's ``load_chart``): ``python -m qiotask bench`` runs
throughput.py with runpy, which does not put benchmarks/ on ``sys.path``.
"""

from __future__ import annotations

import os
import statistics
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: What the line says when matplotlib is missing.
INSTALL_HINT = "pip install 'qiotask[bench]'"

OURS = "#1f6fb4"  # qiotask's contenders
REFERENCE = "#555555"
PEER = "#b8b8b8"
TARGET = "#c0392b"


class Row(NamedTuple):
    """One contender: its figures per round, and its ratio against the group's reference."""

    contender: str
    jobs_per_s: list[float]
    p99_us: list[float]
    ratio: float | None
    ours: bool


class Group(NamedTuple):
    """A row of the chart: contenders measured against one reference."""

    title: str
    reference: str
    rows: list[Row]
    #: target ratio -> whose target it is, e.g. {5.0: "qiotask"}
    targets: dict[float, str]


def write_chart(path: str, title: str, groups: list[Group], warning: str | None = None) -> bool:
    """Draw ``groups`` into a PNG at ``path`` (its directory made if needed), ``warning`` (if any) in red
    under the title.

    Returns:
        True if it was written; False, after printing one line that says how to install matplotlib, if
        matplotlib is missing.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print(f"no chart: matplotlib is not installed ({INSTALL_HINT})")
        return False

    groups = [g for g in groups if g.rows]
    if not groups:
        print("no chart: nothing was measured")
        return False
    tallest = max(len(g.rows) for g in groups)
    figure = Figure(figsize=(12, 0.6 + len(groups) * (1.3 + 0.45 * tallest)), layout="constrained")
    FigureCanvasAgg(figure)
    heading = f"{title}\nbars: median of the rounds; whiskers: slowest to fastest round"
    figure.suptitle(heading + (f"\n{warning}" if warning else ""), fontsize=10, color=TARGET if warning else None)
    for axes_row, group in zip(figure.subplots(len(groups), 2, squeeze=False), groups, strict=True):
        _draw_group(axes_row[0], axes_row[1], group)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path, dpi=100)
    return True


def _spread(values: list[float]) -> tuple[float, float, float]:
    """The median, and how far below and above it the extremes lie."""
    middle = statistics.median(values)
    return middle, middle - min(values), max(values) - middle


def _draw_group(rate_axes: Axes, p99_axes: Axes, group: Group) -> None:
    rows = list(reversed(group.rows))  # barh draws bottom-up: keep the table's order top-down
    names = [r.contender for r in rows]
    colors = [OURS if r.ours else REFERENCE if r.contender == group.reference else PEER for r in rows]
    reference = next((r for r in rows if r.contender == group.reference), None)

    rates = _bars(rate_axes, names, [_spread(r.jobs_per_s) for r in rows], colors)
    rate_axes.set_title(
        f"{group.title}: jobs/s, and the ratio to {group.reference}",
        fontsize=9,
        loc="left",
    )
    rate_axes.set_xlabel("jobs/s")
    rate_axes.xaxis.set_major_formatter("{x:,.0f}")
    widest = max(m + hi for m, _, hi in rates)
    for y, (row, (middle, _, hi)) in enumerate(zip(rows, rates, strict=True)):
        label = "reference" if row.contender == group.reference else f"{row.ratio:.2f}x" if row.ratio else ""
        rate_axes.annotate(
            label,
            (middle + hi, y),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            fontweight="bold" if row.ours else "normal",
            zorder=4,  # over the target lines' labels
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )
    if reference is not None:
        base = statistics.median(reference.jobs_per_s)
        for target, whose in sorted(group.targets.items()):
            _mark(rate_axes, base * target, f"target {target:g}x: {whose}")
            widest = max(widest, base * target)
    rate_axes.set_xlim(0, widest * 1.25)
    rate_axes.set_ylim(-0.6, len(rows) - 0.1)

    p99s = _bars(p99_axes, names, [_spread(r.p99_us) for r in rows], colors)
    p99_axes.set_title("p99 latency from worker return to callback, µs", fontsize=9, loc="left")
    p99_axes.set_xlabel("µs")
    p99_axes.xaxis.set_major_formatter("{x:,.0f}")
    p99_axes.tick_params(labelleft=False)
    if reference is not None:
        _mark(p99_axes, statistics.median(reference.p99_us), f"{group.reference}'s p99")
    p99_axes.set_xlim(0, max(m + hi for m, _, hi in p99s) * 1.15)
    p99_axes.set_ylim(-0.6, len(rows) - 0.1)


def _bars(
    axes: Axes, names: list[str], spreads: list[tuple[float, float, float]], colors: list[str]
) -> list[tuple[float, float, float]]:
    """One horizontal bar per name: the median, whiskers to the slowest and
    fastest round (``_spread``'s minus and plus); returns ``spreads``."""
    axes.barh(
        names,
        [median for median, _, _ in spreads],
        xerr=[[lo for _, lo, _ in spreads], [hi for _, _, hi in spreads]],
        color=colors,
        capsize=3,
        error_kw={"elinewidth": 1},
    )
    return spreads


def _mark(axes: Axes, x: float, label: str) -> None:
    """A dashed vertical line at ``x``, its label written up along it."""
    axes.axvline(x, color=TARGET, linestyle="--", linewidth=1)
    axes.text(
        x,
        0.98,
        label + " ",
        transform=axes.get_xaxis_transform(),
        rotation=90,
        ha="right",
        va="top",
        color=TARGET,
        fontsize=7,
        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
    )
