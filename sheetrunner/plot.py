"""`sheetrunner plot`: a metric's curve for one or more runs, as a PNG or in the terminal.

Runs are named by their parameters (`lr=0.1 seed=0`): that is what a person compares, and
what they typed into the sheet; the run id is only the fallback."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from .argv import param_text
from .errors import SheetrunnerError
from .sheet.table import SPARK_BLOCKS

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
    names = {
        k
        for r in records
        for k, v in r.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return sorted(names - {"step", "time"})


def labels(runs: Mapping[str, Iterable[tuple[str, str]] | None]) -> dict[str, str]:
    """run id -> its legend label: its parameters, or its id when it has none (or the store
    does not know it). Two runs with the same parameters (a rerun) get their id added."""
    named = {
        run_id: " ".join(param_text(n, v) for n, v in params or ()) or run_id
        for run_id, params in runs.items()
    }
    counts: dict[str, int] = {}
    for label in named.values():
        counts[label] = counts.get(label, 0) + 1
    return {
        run_id: label if counts[label] == 1 or label == run_id else f"{label} ({run_id})"
        for run_id, label in named.items()
    }


def write_png(curves: Mapping[str, Series], metric: str, path: Path) -> Path:
    """One line per run, overlaid; matplotlib (the `plot` extra) without a display."""
    try:
        import matplotlib
    except ImportError:
        raise SheetrunnerError(
            "a PNG needs matplotlib: pip install 'sheetrunner[plot]' (or drop -o to draw "
            "the curve in the terminal)"
        ) from None

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


def scale(curves: Mapping[str, Series]) -> tuple[float, float] | None:
    """The lowest and highest value over every run: the one scale all lines are drawn on,
    so a higher line means a higher value whichever run it belongs to."""
    values = [y for points in curves.values() for _, y in points]
    return (min(values), max(values)) if values else None


def text_lines(curves: Mapping[str, Series], metric: str, width: int = 60) -> list[str]:
    """A sparkline per run, all on one scale, with its last, lowest and highest value."""
    bounds = scale(curves)
    pad = max((len(label) for label in curves), default=0)
    lines = []
    for label, points in curves.items():
        if not points or bounds is None:
            lines.append(f"{label.ljust(pad)}  (no {metric} reported)")
            continue
        ys = [y for _, y in points]
        count = min(width, len(ys))
        thinned = [ys[i * len(ys) // count] for i in range(count)]
        drawn = sparkline(thinned, *bounds)
        lines.append(
            f"{label.ljust(pad)}  {drawn}  last={ys[-1]:.4g} min={min(ys):.4g} max={max(ys):.4g}"
        )
    return lines


def sparkline(values: Iterable[float], low: float, high: float) -> str:
    """Blocks from ▁ (`low`) to █ (`high`)."""
    span = (high - low) or 1.0
    top = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[round((v - low) / span * top)] for v in values)
