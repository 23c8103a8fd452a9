"""What the sheet should show after a cycle, as one SheetWrite.

Owned cells are compared with this cycle's read (rows.plan_write), so a cell
a person typed over is put right and a cycle with nothing new writes
nothing. Two things cannot be compared with the read, because the one read
returns values, not formulas: the `curve` cells (Google draws them with a
formula) and the side tabs (`_metrics`, the pool tab), which the read does
not cover. For those, this view remembers what it last wrote successfully and
sends only what changed.
"""

from __future__ import annotations

import copy
import math
from datetime import datetime
from typing import Any

from ..config import SheetConfig
from ..model import Experiment, Run, Status
from ..reconcile import Plan
from . import expansion, guard
from . import schema as rows
from .table import SheetWrite, Sparkline, Table

METRICS_TAB = rows.METRICS_TAB
CURVE_COLUMN = rows.CURVE_COLUMN
MAX_CURVE_POINTS = 500  # a curve's history, thinned evenly (last point kept) beyond this


class SheetView:
    def __init__(self, config: SheetConfig, code: bool = False):
        self.config = config
        self.code = code  # a job is synced: rows show the code their run runs (`code`)
        self._tabs_written: dict[str, list[list[Any]]] = {}
        self._curves_written: dict[str, Sparkline] = {}
        self._last_write: tuple[Any, ...] | None = None  # plan_write's inputs and answer

    def change(
        self,
        table: Table,
        experiments: list[Experiment],
        plan: Plan,
        runs: dict[str, Run],
        now: datetime,
        tabs: dict[str, list[list[Any]]],
    ) -> SheetWrite:
        values = {row: self._run_values(runs[run_id], now) for row, run_id in plan.rows.items()}
        values.update({row: rows.note_values(s, m) for row, (s, m) in plan.notes.items()})
        parents = [e for e in experiments if e.is_sweep]
        sweep_cells, fills, inserts = expansion.sweep_values(
            table, parents, _child_statuses(experiments, plan, runs)
        )
        values.update(sweep_cells)
        all_tabs = dict(tabs)
        if self.config.curve:
            all_tabs[METRICS_TAB] = self._add_curves(values, plan, runs)
        change = self._plan_write(table, values, self._extra_columns(table, parents), fills)
        change.inserts = inserts
        all_tabs = {n: [[rows.written_value(v) for v in r] for r in t] for n, t in all_tabs.items()}
        change.tabs = {n: t for n, t in all_tabs.items() if self._tabs_written.get(n) != t}
        return guard.only_owned(
            change,
            table,
            self.config.metric_columns,
            guard.own_tabs(self.config),
            curve=bool(self.config.curve),
        )

    def _plan_write(
        self,
        table: Table,
        values: dict[int, dict[str, Any]],
        extra: list[str],
        fills: dict[int, str],
    ) -> SheetWrite:
        """`rows.plan_write`, remembered: with the same table, wanted cells, extra columns
        and fills as last cycle the answer is the same (an idle cycle at 10,000 rows would
        otherwise compare every owned cell again). Curves are never remembered."""
        key = (tuple(table.header), tuple(extra))
        last = self._last_write
        if (
            last is not None
            and not self.config.curve
            and last[0] == key
            and last[2] == values
            and last[3] == fills
            and last[1] == table.rows
        ):
            return copy.deepcopy(last[4])
        change = rows.plan_write(table, values, extra, fills)
        if not self.config.curve:
            rows_copy = [list(cells) for cells in table.rows]
            wanted = {row: dict(cells) for row, cells in values.items()}
            self._last_write = (key, rows_copy, wanted, dict(fills), copy.deepcopy(change))
        return change

    def written(self, change: SheetWrite) -> None:
        """The change reached the sheet: remember its tabs and curves."""
        self._tabs_written.update(change.tabs)
        for update in change.rows:
            curve = update.cells.get(CURVE_COLUMN)
            run_id = update.cells.get("id") or update.run_id
            if isinstance(curve, Sparkline) and run_id:
                self._curves_written[str(run_id)] = curve

    def _run_values(self, run: Run, now: datetime) -> dict[str, Any]:
        values = rows.owned_values(run, now)
        values.update(rows.metric_values(run, self.config.metric_columns))
        if self.code:
            values[rows.CODE_COLUMN] = run.code
        return values

    def _extra_columns(self, table: Table, parents: list[Experiment]) -> list[str]:
        extra = rows.metric_column_names(self.config.metric_columns)
        if self.config.curve:
            extra.append(CURVE_COLUMN)
        if self.code:
            extra.append(rows.CODE_COLUMN)
        if parents or expansion.SWEEP_COLUMN in table.header:
            extra.append(expansion.SWEEP_COLUMN)
        return extra

    def _add_curves(
        self, values: dict[int, dict[str, Any]], plan: Plan, runs: dict[str, Run]
    ) -> list[list[Any]]:
        """The hidden tab of histories, one run a row; a curve cell for each changed one."""
        metric = self.config.curve or ""
        tab: list[list[Any]] = [["run", metric]]
        for row, run_id in sorted(plan.rows.items()):
            history = _curve_points(runs[run_id].seen.summary.get("history", {}).get(metric, []))
            tab.append([run_id, *history])
            spark = Sparkline(history, METRICS_TAB, len(tab))
            if self._curves_written.get(run_id) != spark:
                values[row][CURVE_COLUMN] = spark
        return tab


def _curve_points(history: Any) -> tuple[float, ...]:
    """The finite numbers of a metric's history (a job may report nan or text), at most
    MAX_CURVE_POINTS of them, evenly thinned with the first and last kept."""
    if not isinstance(history, list | tuple):
        return ()
    points = [v for v in history if _finite(v)]
    if len(points) <= MAX_CURVE_POINTS:
        return tuple(points)
    step = (len(points) - 1) / (MAX_CURVE_POINTS - 1)
    return tuple(points[round(i * step)] for i in range(MAX_CURVE_POINTS))


def _finite(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _child_statuses(
    experiments: list[Experiment], plan: Plan, runs: dict[str, Run]
) -> dict[str, list[Status]]:
    """Statuses of the rows expanded from each sweep, by sweep id."""
    found: dict[str, list[Status]] = {}
    for e in experiments:
        if not e.sweep_id:
            continue
        if e.row in plan.rows:
            found.setdefault(e.sweep_id, []).append(runs[plan.rows[e.row]].status)
        elif e.row in plan.notes:
            found.setdefault(e.sweep_id, []).append(plan.notes[e.row][0])
    return found
