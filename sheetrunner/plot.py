"""`sheetrunner plot`: a metric's curve for one or more runs, as a PNG or in the terminal."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .sheet.table import Sparkline

Series = list[tuple[float, float]]  # (step, value)


def series(records: list[dict], metric: str) -> Series:
    """(step, value) pairs of one metric; a report without a step counts by position."""
    points = []
    for i, record in enumerate(records):
        value = record.get(metric)
        if isinstance(value, int | float) and not isinstance(value, bool):
            points.append((float(record.get("step", i)), float(value)))
    return points


def metrics_in(records: list[dict]) -> list[str]:
    names = {k for r in records for k, v in r.items()
             if isinstance(v, int | float) and not isinstance(v, bool)}
    return sorted(names - {"step", "time"})


def write_png(curves: Mapping[str, Series], metric: str, path: Path) -> Path:
    """One line per run, overlaid; matplotlib (the `plot` extra) without a display."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, points in curves.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=label, linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def text_lines(curves: Mapping[str, Series], metric: str, width: int = 60) -> list[str]:
    """A sparkline per run with its last, lowest and highest value: for the terminal."""
    lines = []
    for label, points in curves.items():
        if not points:
            lines.append(f"{label}  (no {metric} reported)")
            continue
        ys = [y for _, y in points]
        count = min(width, len(ys))
        thinned = tuple(ys[i * len(ys) // count] for i in range(count))
        drawn = Sparkline(thinned, "", 0).text()
        lines.append(f"{label}  {drawn}  last={ys[-1]:.4g} min={min(ys):.4g} max={max(ys):.4g}")
    return lines
