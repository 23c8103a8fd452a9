"""The one place that keeps sheetrunner's writes off the cells people own.

Whatever a cycle computed, `only_owned` lets through to the backend only:

- row cells under sheetrunner's own columns: `OWNED_COLUMNS`, the configured metric
  columns and their `best NAME`, `curve` (when configured) and `sweep` — never a user
  column (`job`, `gpus`, ..., any `--NAME`), even if a metric were named like one;
- new columns among those;
- side tabs among the names the caller owns (`own_tabs`: `_metrics`, the pool tab),
  never the lease tab `_sheetrunner` (written only through `SheetWrite.meta`,
  compare-and-set) and never the experiments tab itself;
- inserted rows (a sweep's children): they are new rows, nobody's cells.

When the header itself is unusable (`schema.header_problem`), no row cell, new column or
insert is let through at all: writing then would put headers over column A or statuses
over data. Every value let through is bounded by `schema.written_value` (applying it
again changes nothing). What is dropped is logged once per distinct reason, not every
cycle. Pure apart from that log line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..argv import is_key_value_header
from .expansion import SWEEP_COLUMN
from .lease import META_TAB
from .schema import (
    CODE_COLUMN,
    CURVE_COLUMN,
    METRICS_TAB,
    OWNED_COLUMNS,
    PARAM_PREFIX,
    USER_COLUMNS,
    cell_text,
    header_problem,
    metric_column_names,
    written_value,
)
from .table import RowUpdate, SheetWrite, Table

if TYPE_CHECKING:
    from ..config import SheetConfig

log = logging.getLogger(__name__)

_SAID_AT_MOST = 1000  # distinct drop reasons remembered (so each is logged once)
_said: set[str] = set()


def own_tabs(config: SheetConfig) -> tuple[str, ...]:
    """The side tabs sheetrunner writes for this config: `_metrics` (with `[sheet] curve`)
    and the pool tab (with `[sheet] pool_tab`). The experiments tab is never one of them."""
    tabs = []
    if config.curve:
        tabs.append(METRICS_TAB)
    if config.pool_tab:
        tabs.append(config.pool_tab)
    return tuple(t for t in tabs if t != META_TAB and t != config.worksheet)


def owned_columns(metric_columns: Iterable[str] = (), curve: bool = True) -> frozenset[str]:
    """The headers whose cells sheetrunner may write. A metric named like a user column or a
    parameter is not one of them (the config refuses such names; this does not rely on it)."""
    names = {*OWNED_COLUMNS, SWEEP_COLUMN, CODE_COLUMN, *metric_column_names(metric_columns)}
    if curve:
        names.add(CURVE_COLUMN)
    return frozenset(
        n
        for n in names
        if n not in USER_COLUMNS and not n.startswith(PARAM_PREFIX) and not is_key_value_header(n)
    )


def only_owned(
    change: SheetWrite,
    table: Table,
    metric_columns: Iterable[str] = (),
    tabs: Iterable[str] = (),
    *,
    curve: bool = True,
) -> SheetWrite:
    """`change` with everything that is not sheetrunner's own taken out (see the module
    docstring); the lease (`meta`, `meta_expect`) passes untouched. `tabs` are the side tabs
    the caller owns (`own_tabs(config)`). Returns a new SheetWrite; `change` is not altered."""
    owned = owned_columns(metric_columns, curve)
    allowed_tabs = {t for t in tabs if t != META_TAB}
    dropped: list[str] = []
    problem = header_problem(table)
    if problem is not None and (change.rows or change.new_columns or change.inserts):
        dropped.append(
            f"every row cell, new column and insert, as the header is unusable: {problem}"
        )
        rows: list[RowUpdate] = []
        new_columns: list[str] = []
        inserts = []
    else:
        rows = [
            kept
            for update in change.rows
            if (kept := _owned_cells(update, table, owned, dropped)) is not None
        ]
        new_columns = [c for c in change.new_columns if c in owned]
        dropped += [f"new column {_name(c)}" for c in change.new_columns if c not in owned]
        inserts = change.inserts
    side = {}
    for name, rows_of_tab in change.tabs.items():
        if name in allowed_tabs:
            side[name] = [[written_value(v) for v in r] for r in rows_of_tab]
        else:
            dropped.append(f"tab {_name(name)}")
    _say(dropped)
    return replace(change, rows=rows, new_columns=new_columns, inserts=inserts, tabs=side)


def _owned_cells(
    update: RowUpdate, table: Table, owned: frozenset[str], dropped: list[str]
) -> RowUpdate | None:
    cells: dict[str, Any] = {}
    for header, value in update.cells.items():
        if header in owned:
            cells[header] = written_value(value, header)
        else:
            dropped.append(f"column {_name(header)}")
    if not cells:
        return None
    return replace(update, cells=cells)


def _name(text: Any) -> str:
    text = cell_text(text)
    return repr(text if len(text) <= 40 else text[:39] + "…")


def _say(dropped: list[str]) -> None:
    """Log what was dropped, each distinct line once per process (not every cycle)."""
    new = [d for d in dict.fromkeys(dropped) if d not in _said]
    if not new:
        return
    if len(_said) < _SAID_AT_MOST:
        _said.update(new)
    log.warning(
        "not written, not sheetrunner's to write: %s",
        "; ".join(new[:20]) + (f"; and {len(new) - 20} more" if len(new) > 20 else ""),
    )
