"""The sheet's table <-> experiments, and the owned cells to write back.

Columns are found by header name, in any order; unknown columns are left
alone. User-owned cells are only read; sheetrunner-owned cells are only
written, and only where the value differs from what this cycle read, so a
cycle where the sheet already shows the truth writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from ..model import STATUS_COLOURS, Action, Experiment, Run, Status
from ..remote.protocol import is_run_id
from .sweeps import SWEEP_ID_PREFIX, SweepError, combinations, is_sweep
from .table import RowUpdate, SheetWrite, Sparkline, Table, UnsavedFormula

USER_COLUMNS = ("job", "gpus", "where", "priority", "retries", "action")
OWNED_COLUMNS = ("id", "status", "host", "attempt", "started", "elapsed", "metrics", "message", "log")
PARAM_PREFIX = "--"
PARAM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def param_columns(header: list[str]) -> list[str]:
    """Header cells that declare a parameter (`--lr`), in column order."""
    return [h for h in header if isinstance(h, str) and h.startswith(PARAM_PREFIX)
            and PARAM_NAME_RE.match(h[len(PARAM_PREFIX):])]


def experiment_key(job: str, params: Iterable[tuple[str, str]]) -> str:
    """The experiment's identity: a hash of its job and parameters in canonical form.

    Parameters are sorted by name, so column order does not matter; values are
    the canonical text of `cell_text`, so 0.1 typed as a number or as text is
    the same experiment.
    """
    canonical = json.dumps({"job": job, "params": sorted(params)}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def cell_text(value: Any) -> str:
    """A cell's value as the text a job receives: numbers without float noise."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def parse_table(table: Table, job_names: Iterable[str]) -> list[Experiment]:
    """Every non-empty row of the table as an Experiment; a bad row carries its `error`."""
    jobs = set(job_names)
    params = param_columns(table.header)
    experiments = []
    for row in range(2, len(table.rows) + 2):
        exp = _parse_row(table, row, params, jobs)
        if exp is not None:
            experiments.append(exp)
    return experiments


def _parse_row(
    table: Table, row: int, params: list[str], jobs: set[str]
) -> Experiment | None:
    text = {name: cell_text(table.value(row, name)).strip() for name in (*USER_COLUMNS, "id")}
    values = tuple(
        (name[len(PARAM_PREFIX):], cell_text(table.value(row, name)))
        for name in params
        if cell_text(table.value(row, name)).strip() != ""
    )
    if not text["job"] and not values and not text["id"]:
        return None  # an empty row, or a note a person left: not an experiment
    run_id, foreign_id = _id_cell(text["id"], values)
    errors: list[str] = _unsaved_formulas(table, row)
    job = text["job"]
    if not job:
        errors.append("the job cell is empty; name one of the configured jobs")
    elif job not in jobs:
        errors.append(f"unknown job {job!r}; the config declares: {', '.join(sorted(jobs))}")
    children = _sweep(values, run_id, errors)
    gpus = _int_cell(text["gpus"], 1, "gpus", errors)
    retries = _int_cell(text["retries"], None, "retries", errors)
    priority = _number_cell(text["priority"], errors)
    action = _action_cell(text["action"], errors)
    return Experiment(
        row=row,
        run_id=run_id,
        job=job,
        params=values,
        key=experiment_key(job, values),
        gpus=gpus if gpus is not None else 1,
        where=text["where"] or None,
        priority=priority,
        retries=retries,
        action=action,
        error="; ".join(errors) or None,
        shown_status=cell_text(table.value(row, "status")).strip(),
        shown=tuple((name, cell_text(table.value(row, name)).strip()) for name in OWNED_COLUMNS),
        foreign_id=foreign_id,
        sweep_id=cell_text(table.value(row, "sweep")).strip(),
        children=children,
    )


def _id_cell(text: str, values: tuple[tuple[str, str], ...]) -> tuple[str | None, str]:
    """(run id, foreign text) of the `id` cell. Only ids in sheetrunner's format are
    honoured: an id cell is data, never a path. A row copied with its id shows the same
    id twice; which row keeps it is the core's rule (the one whose cells match the run)."""
    if not text:
        return None, ""
    if is_run_id(text) or (text.startswith(SWEEP_ID_PREFIX) and any(is_sweep(v) for _, v in values)):
        return text, ""
    return None, text


def _sweep(
    values: tuple[tuple[str, str], ...], run_id: str | None, errors: list[str]
) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The combinations of a sweep row, or () for a plain row."""
    if not any(is_sweep(v) for _, v in values):
        return ()
    if run_id and not run_id.startswith(SWEEP_ID_PREFIX):
        errors.append("this row already ran; to sweep, add a new row with the list or range")
        return ()
    try:
        return tuple(tuple(combo) for combo in combinations(values))
    except SweepError as exc:
        errors.append(str(exc))
        return ()


def _unsaved_formulas(table: Table, row: int) -> list[str]:
    return [
        f"cell {v.cell} holds the formula {v.formula} but the file has no computed value for "
        "it; open the workbook in your spreadsheet program and save it"
        for v in (table.rows[row - 2] if row - 2 < len(table.rows) else [])
        if isinstance(v, UnsavedFormula)
    ]


def _int_cell(text: str, default: int | None, name: str, errors: list[str]) -> int | None:
    if text == "":
        return default
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not number.is_integer() or number < 0:
        errors.append(f"{name} must be a whole number ≥ 0, not {text!r}")
        return default
    return int(number)


def _number_cell(text: str, errors: list[str]) -> float:
    if text == "":
        return 0.0
    try:
        return float(text)
    except ValueError:
        errors.append(f"priority must be a number, not {text!r}")
        return 0.0


def _action_cell(text: str, errors: list[str]) -> Action:
    if text == "":
        return Action.RUN
    try:
        return Action(text.lower())
    except ValueError:
        errors.append(f"action must be empty, run, hold, stop or rerun, not {text!r}")
        return Action.HOLD  # never start a row whose intent is unclear


# -- writing back ----------------------------------------------------------------------------


def owned_values(run: Run, now: datetime) -> dict[str, Any]:
    """The owned cells a row shows for its run; for a run rebuilt from the sheet, what
    the sheet showed stands wherever the run has no value of its own."""
    values = _own_values(run, now)
    for name, shown in run.kept_cells.items():
        if values.get(name) in ("", None):
            values[name] = shown
    return values


def _own_values(run: Run, now: datetime) -> dict[str, Any]:
    return {
        "id": run.run_id,
        "status": run.status.value,
        "host": run.host or "",
        "attempt": run.attempt or "",
        "started": format_time(run.started_at),
        "elapsed": format_elapsed(run, now),
        "metrics": format_metrics(run.metrics),
        "message": run.message,
        "log": run.log_path,
    }


LOWER_IS_BETTER = ("loss", "err", "perplexity", "ppl", "time")


def best_is_lowest(metric: str) -> bool:
    """Which end of a metric is its best: lowest for losses and errors, else highest."""
    return any(word in metric.lower() for word in LOWER_IS_BETTER)


def metric_values(run: Run, metric_columns: Iterable[str]) -> dict[str, Any]:
    """`acc` (latest) and `best acc` (over the current attempt) for each configured metric."""
    values: dict[str, Any] = {}
    for name in metric_columns:
        values[name] = run.metrics.get(name, "")
        side = "min" if best_is_lowest(name) else "max"
        values[f"best {name}"] = run.summary.get(side, {}).get(name, "")
    return values


def metric_column_names(metric_columns: Iterable[str]) -> list[str]:
    return [c for name in metric_columns for c in (name, f"best {name}")]


def note_values(status: Status, message: str) -> dict[str, Any]:
    """The owned cells of a row that has no run (an invalid row never claimed). Its `id`
    cell is left as it is: a text typed there is the person's to clear."""
    blank = dict.fromkeys((c for c in OWNED_COLUMNS if c != "id"), "")
    return {**blank, "status": status.value, "message": message}


def plan_write(
    table: Table,
    rows: Mapping[int, dict[str, Any]],
    extra_columns: Iterable[str] = (),
    fills: Mapping[int, str] | None = None,
) -> SheetWrite:
    """The cells of `rows` (row -> owned values) that differ from what `table` shows.

    The row's fill is written when its status cell changes. Owned columns
    missing from the header are added at the right.
    """
    wanted_columns = [*OWNED_COLUMNS, *extra_columns]
    new_columns = [c for c in wanted_columns if c not in table.header]
    updates = []
    for row, values in sorted(rows.items()):
        changed = {k: v for k, v in values.items() if not _same(table.value(row, k), v)}
        if not changed:
            continue
        fill = (fills or {}).get(row) or _status_fill(changed.get("status"))
        shown_id = cell_text(table.value(row, "id")).strip() or None
        job = cell_text(table.value(row, "job")).strip()
        expect = {} if shown_id else user_cells(table, row)
        updates.append(RowUpdate(row=row, run_id=shown_id, cells=changed, fill=fill, job=job,
                                 expect=expect))
    return SheetWrite(new_columns=new_columns, rows=updates)


def _status_fill(status: Any) -> str | None:
    try:
        return STATUS_COLOURS[Status(status)] if status else None
    except ValueError:
        return None


def user_cells(table: Table, row: int) -> dict[str, str]:
    """The row's user-owned cells as text: a claim lands only on a row that still shows them."""
    names = [h for h in table.header if h in USER_COLUMNS or h in param_columns(table.header)]
    return {name: cell_text(table.value(row, name)).strip() for name in names}


def _same(shown: Any, wanted: Any) -> bool:
    if isinstance(wanted, Sparkline):
        return False  # the daemon only hands over curves that changed
    if _is_number(shown) and _is_number(wanted):
        # Spreadsheets keep 15-17 significant digits: 1/6 may come back as 0.1666666666666667.
        return math.isclose(float(shown), float(wanted), rel_tol=1e-12, abs_tol=0.0)
    return cell_text(shown).strip() == cell_text(wanted).strip()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_time(moment: datetime | None) -> str:
    """Local wall-clock time, to the second: what a person expects in a cell."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def format_elapsed(run: Run, now: datetime) -> str:
    """Time since the current attempt started, to the minute (fewer sheet writes)."""
    if run.attempt_started_at is None:
        return ""
    end = run.finished_at or now
    return format_duration(end - run.attempt_started_at)


def format_duration(span: timedelta) -> str:
    minutes = max(0, int(span.total_seconds() // 60))
    if minutes < 1:
        return "<1m"
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """Latest metrics, compact: `step=40 acc=0.9312 loss=0.1204`."""
    parts = []
    ordered = sorted(metrics.items(), key=lambda item: item[0] != "step")  # step first, stable
    for name, value in ordered:
        if name == "time":
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{name}={value}")
    return " ".join(parts)
