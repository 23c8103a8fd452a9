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
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from ..argv import KEY_VALUE_HEADER_RE, PARAM_PREFIX, is_key_value_header, param_name
from ..gang import shown_host
from ..gpu_memory import size_mib
from ..model import STATUS_COLOURS, Action, Experiment, Run, Status
from ..remote.protocol import is_run_id
from .sweeps import SWEEP_ID_PREFIX, SweepError, combinations, is_sweep, shorten
from .table import RowUpdate, SheetWrite, Sparkline, Table, UnsavedFormula

METRICS_TAB = "_metrics"  # hidden tab of curve histories ([sheet] curve)
CURVE_COLUMN = "curve"  # the column holding a run's curve ([sheet] curve)
USER_COLUMNS = (
    "job",
    "gpus",
    "where",
    "priority",
    "retries",
    "action",
    "time_limit",
    "gpu_memory",
    "nodes",
    "pin",
)
CODE_COLUMN = "code"  # the code a run's attempt runs (with `[jobs.NAME] sync`): a1b2c3d+dirty
OWNED_COLUMNS = (
    "id",
    "status",
    "host",
    "attempt",
    "started",
    "elapsed",
    "metrics",
    "message",
    "log",
)
PARAM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# -- limits on what a cell may hold ----------------------------------------------------------
# A user cell sheetrunner reads (job, gpus, where, priority, retries, action, every `--NAME`)
# longer than this makes its row invalid: no argv item, host name or number needs more.
MAX_CELL_CHARS = 4096
# `gpus` and `retries` above this are typos (or hostile), not requests.
MAX_WHOLE_NUMBER = 10_000
# Characters no argv item can carry (NUL) or that no person means to type: the C0 controls
# except tab, line feed and carriage return (a cell may hold several lines), DEL, and lone
# surrogates (not valid text: they cannot be encoded for the host).
BAD_CHAR_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# Every text cell sheetrunner writes is cut to this many characters (a visible "…" at the
# end), far under Google's 50,000 per cell: `message` and `metrics` may be long, the others
# are short by nature, so a longer value there is garbage worth cutting hard.
WRITTEN_LIMITS = {"message": 2000, "metrics": 2000}
WRITTEN_LIMIT = 300
ELLIPSIS = "…"


def param_columns(header: list[str]) -> list[str]:
    """Header cells that declare a parameter (`--lr`, `lr=`), in column order; a name that appears
    twice is left out (its cells are ambiguous: `header_problems` reports it)."""
    return [header[i] for i, _ in _param_layout(header)[0]]


def _param_layout(header: list[Any]) -> tuple[list[tuple[int, str]], dict[int, str]]:
    """([(column index, parameter name)] of the usable parameter columns, in column order;
    {column index: what is wrong} for the columns that look like parameters but are not
    usable: a malformed name (`--a b`, `-- lr`, `--`) or a name that appears twice."""
    seen: dict[str, list[int]] = {}
    bad: dict[int, str] = {}
    for i, h in enumerate(header):
        if isinstance(h, str) and is_key_value_header(h):
            if not KEY_VALUE_HEADER_RE.match(h):
                bad[i] = (
                    f"column {_letter(i)} header {shorten(h)!r} is not a key=value parameter; "
                    "write a name of letters, digits, _ . / @ or - and then =, e.g. 'model.lr='"
                )
                continue
            seen.setdefault(h, []).append(i)
            continue
        if not isinstance(h, str) or not h.startswith(PARAM_PREFIX):
            continue
        name = h[len(PARAM_PREFIX) :]
        if not PARAM_NAME_RE.match(name):
            bad[i] = (
                f"column {_letter(i)} header {shorten(h)!r} is not a parameter name; write "
                f"-- and a name of letters, digits, _ . or -, e.g. {_suggest(name)!r}"
            )
            continue
        seen.setdefault(h, []).append(i)
    good = []
    for h, where in seen.items():
        if len(where) == 1:
            good.append((where[0], h))
            continue
        letters = " and ".join(_letter(i) for i in where)
        times = "twice" if len(where) == 2 else f"{len(where)} times"
        for i in where:
            bad[i] = f"column {h} appears {times} (columns {letters}); rename or delete one"
    return sorted(good), bad


def _suggest(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip()).strip("_.-")
    return PARAM_PREFIX + (cleaned or "name")


def _letter(index: int) -> str:
    """0 -> A, 26 -> AA: a column as a person sees it."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


# -- the header ------------------------------------------------------------------------------


def header_problem(table: Table) -> str | None:
    """What makes the header unusable, or None. An unusable header is a sheet error, not an
    empty sheet: a cleared, deleted or sorted-away header row would otherwise read as no
    rows, and every live run would be stopped as "row deleted". The caller treats the cycle
    as "sheet unreadable": nothing claimed or stopped, nothing written to the tab."""
    header = [cell_text(h).strip() for h in table.header]
    fix = (
        "put the header back in row 1 (job, --NAME parameters, gpus, ..., id, status, ...; "
        "undo the edit or see `sheetrunner init`)"
    )
    for i, h in enumerate(header):
        if is_run_id(h) or (h.startswith(SWEEP_ID_PREFIX) and len(h) > len(SWEEP_ID_PREFIX)):
            return (
                f"row 1 should be the header but column {_letter(i)} holds the run id "
                f"{shorten(h)!r}: it looks like a data row (was the sheet sorted with the "
                f"header in it?); {fix}"
            )
    if not any(header):
        return f"row 1, the header, is empty{_rows_below(table)}; {fix}"
    if "job" not in header:
        known = [
            h
            for h in header
            if h in USER_COLUMNS or h in OWNED_COLUMNS or h.startswith(PARAM_PREFIX)
        ]
        what = "none of the known column names" if not known else "no `job` column"
        shown = ", ".join(repr(shorten(h, 20)) for h in header[:6] if h)
        return f"row 1, the header, has {what} (it holds {shown}{', …' if len(header) > 6 else ''}){_rows_below(table)}; {fix}"
    if "id" not in header:
        for cells in table.rows:
            for i, value in enumerate(cells):
                if isinstance(value, str) and is_run_id(value.strip()):
                    return (
                        f"the header has no `id` column but column {_letter(i)} holds run ids "
                        f"(e.g. {value.strip()!r}): its header was cleared or renamed; type "
                        "`id` back into row 1 of that column"
                    )
    return None


def _rows_below(table: Table) -> str:
    """How many rows an unusable header leaves without their columns (counted only when
    there is a problem to say: a whole-table scan every cycle otherwise)."""
    count = sum(1 for r in table.rows if any(cell_text(v).strip() for v in r))
    return f" and {count} non-empty row{'s' if count != 1 else ''} below it" if count else ""


def header_problems(table: Table) -> list[str]:
    """Header cells sheetrunner cannot use, one line each (to log once and show in doctor):
    malformed parameter names and parameters or known columns that appear twice. Rows with a
    value under such a parameter column are invalid; blank header cells are ignored."""
    lines = [reason for _, reason in sorted(_param_layout(table.header)[1].items())]
    lines = list(dict.fromkeys(lines))  # a duplicate's line names both columns: say it once
    header = [cell_text(h).strip() for h in table.header]
    for name in (*USER_COLUMNS, *OWNED_COLUMNS):
        where = [i for i, h in enumerate(header) if h == name]
        if len(where) > 1:
            lines.append(
                f"column {name} appears {len(where)} times (columns "
                f"{' and '.join(_letter(i) for i in where)}); only the first is used: "
                "delete the others"
            )
    return lines


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
    try:
        return str(value)
    except ValueError:  # an integer of more than 4,300 digits: no argument, and no count
        return f"<a number of {value.bit_length() if isinstance(value, int) else '?'} bits>"


def parse_table(table: Table, job_names: Iterable[str]) -> list[Experiment]:
    """Every non-empty row of the table as an Experiment; a bad row carries its `error`.

    Check `header_problem(table)` first: with an unusable header this finds no rows."""
    jobs = set(job_names)
    params, bad_columns = _param_layout(table.header)
    experiments = []
    for row in range(2, len(table.rows) + 2):
        exp = _parse_row(table, row, params, bad_columns, jobs)
        if exp is not None:
            experiments.append(exp)
    return experiments


class ParseCache:
    """`parse_table`, remembered for one table: a table whose header and rows, and a config
    whose jobs, are what they were last cycle gives the same experiments. Most cycles find
    the sheet as they left it, and at 10,000 rows a parse is half a second of CPU."""

    def __init__(self) -> None:
        self._key: tuple[tuple[str, ...], frozenset[str]] | None = None
        self._rows: list[list[Any]] = []
        self._experiments: list[Experiment] = []

    def parse(self, table: Table, job_names: Iterable[str]) -> list[Experiment]:
        key = (tuple(table.header), frozenset(job_names))
        if key != self._key or table.rows != self._rows:
            self._experiments = parse_table(table, key[1])
            self._key, self._rows = key, [list(cells) for cells in table.rows]
        return list(self._experiments)  # Experiments are frozen: sharing them is safe


def _cell(cells: list[Any], index: int) -> Any:
    return cells[index] if index < len(cells) else None


def _parse_row(
    table: Table,
    row: int,
    params: list[tuple[int, str]],
    bad_columns: dict[int, str],
    jobs: set[str],
) -> Experiment | None:
    cells = table.rows[row - 2]
    text = {name: cell_text(table.value(row, name)).strip() for name in (*USER_COLUMNS, "id")}
    raw = [(h, cell_text(_cell(cells, i))) for i, h in params]
    values = tuple((param_name(h), v) for h, v in raw if v.strip() != "")
    unusable = [
        reason
        for i, reason in sorted(bad_columns.items())
        if cell_text(_cell(cells, i)).strip() != ""
    ]
    if not text["job"] and not values and not text["id"] and not unusable:
        return None  # an empty row, or a note a person left: not an experiment
    errors: list[str] = _unsaved_formulas(table, row)
    errors += [f"{reason} (this row has a value under it)" for reason in dict.fromkeys(unusable)]
    checked = [(name, text[name]) for name in USER_COLUMNS] + raw
    bad_cells = [e for e in (_cell_problem(name, value) for name, value in checked) if e]
    errors += bad_cells
    run_id, foreign_id = _id_cell(text["id"], values)
    job = text["job"]
    if not job:
        errors.append("the job cell is empty; name one of the configured jobs")
    elif job not in jobs and _cell_problem("job", job) is None:
        errors.append(
            f"unknown job {shorten(job)!r}; the config declares: {', '.join(sorted(jobs))}"
        )
    expanded = run_id is not None and run_id.startswith(SWEEP_ID_PREFIX)
    children = _sweep(values, run_id, errors) if expanded or not bad_cells else ()
    gpus = _int_cell(text["gpus"], 1, "gpus", errors)
    nodes = _nodes_cell(text["nodes"], errors)
    retries = _int_cell(text["retries"], None, "retries", errors)
    time_limit = _duration_cell(text["time_limit"], errors)
    gpu_memory = _gpu_memory_cell(text["gpu_memory"], errors)
    priority = _number_cell(text["priority"], errors)
    action = _action_cell(text["action"], errors)
    if errors and not expanded:
        children = ()  # a bad row is never expanded: it shows why, and no child copies a bad cell
    if expanded and not children:
        # No longer a sweep (its cell was edited into a bad one): a sweep id is honoured only
        # on a sweep row, so it never reaches the core or a host as if it were a run's id.
        run_id, foreign_id = None, text["id"]
    return Experiment(
        row=row,
        run_id=run_id,
        job=job,
        params=values,
        key=experiment_key(job, values),
        gpus=gpus if gpus is not None else 1,
        where=text["where"] or None,
        pin=text["pin"] or None,
        priority=priority,
        retries=retries,
        time_limit_s=time_limit,
        gpu_memory_mib=gpu_memory,
        action=action,
        error="; ".join(errors) or None,
        shown_status=cell_text(table.value(row, "status")).strip(),
        shown=tuple((name, cell_text(table.value(row, name)).strip()) for name in OWNED_COLUMNS),
        foreign_id=foreign_id,
        sweep_id=cell_text(table.value(row, "sweep")).strip(),
        children=children,
        nodes=nodes,
    )


def _id_cell(text: str, values: tuple[tuple[str, str], ...]) -> tuple[str | None, str]:
    """(run id, foreign text) of the `id` cell. Only ids in sheetrunner's format are
    honoured: an id cell is data, never a path. A row copied with its id shows the same
    id twice; which row keeps it is the core's rule (the one whose cells match the run)."""
    if not text:
        return None, ""
    if is_run_id(text) or (
        text.startswith(SWEEP_ID_PREFIX) and any(is_sweep(v) for _, v in values)
    ):
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


def _cell_problem(name: str, text: str) -> str | None:
    """Why a user cell cannot be used as it is (too long, a character no argv item can
    carry), with the fix; None when it is fine. Bounded: the length is checked first."""
    if len(text) > MAX_CELL_CHARS:
        return (
            f"the {name} cell holds {len(text):,} characters; at most {MAX_CELL_CHARS:,} "
            "are allowed: shorten it"
        )
    bad = BAD_CHAR_RE.search(text)
    if bad is None:
        return None
    char = bad.group()
    if char == "\x00":
        return (
            f"the {name} cell holds a NUL character (U+0000), which no argument can carry; "
            "retype the cell without it"
        )
    if "\ud800" <= char <= "\udfff":
        return f"the {name} cell holds U+{ord(char):04X}, which is not valid text; retype the cell"
    return (
        f"the {name} cell holds the control character U+{ord(char):04X}; retype the cell "
        "without it (tabs and line breaks are fine)"
    )


def _unsaved_formulas(table: Table, row: int) -> list[str]:
    return [
        f"cell {v.cell} holds the formula {v.formula} but the file has no computed value for "
        "it; open the workbook in your spreadsheet program and save it"
        for v in (table.rows[row - 2] if row - 2 < len(table.rows) else [])
        if isinstance(v, UnsavedFormula)
    ]


def _nodes_cell(text: str, errors: list[str]) -> int:
    """How many hosts the run spans (sheetrunner/gang.py): a whole number ≥ 1, default 1."""
    nodes = _int_cell(text, 1, "nodes", errors)
    if nodes == 0:
        errors.append("nodes must be at least 1 (the hosts the run spans); type e.g. 2")
    return nodes or 1


def _int_cell(text: str, default: int | None, name: str, errors: list[str]) -> int | None:
    if text == "":
        return default
    try:
        number = float(text) if len(text) <= MAX_CELL_CHARS else math.nan
    except ValueError:
        number = math.nan
    if not number.is_integer() or number < 0:  # nan and ±inf are not whole numbers either
        errors.append(
            f"{name} must be a whole number ≥ 0, not {shorten(text)!r}; type e.g. "
            f"{'1' if name == 'gpus' else '2'}, or clear the cell for the default"
        )
        return default
    if number > MAX_WHOLE_NUMBER:
        errors.append(
            f"{name} must be at most {MAX_WHOLE_NUMBER:,}, not {shorten(text)!r}; "
            "type a smaller whole number"
        )
        return default
    return int(number)


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> float | None:
    """`7200`, `90m`, `2h`, `1.5d` as seconds; None when it is none of these."""
    unit = text[-1:].lower()
    number = text[:-1] if unit in DURATION_UNITS else text
    try:
        value = float(number) * DURATION_UNITS.get(unit, 1)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _duration_cell(text: str, errors: list[str]) -> float | None:
    if text == "":
        return None
    seconds = duration_seconds(text)
    if seconds is None:
        errors.append(
            f"time_limit must be a duration such as 2h, 90m or 3600 (seconds), not {shorten(text)!r}"
        )
    return seconds


def _gpu_memory_cell(text: str, errors: list[str]) -> int | None:
    if text == "":
        return None
    mib = size_mib(text)
    if mib is None:
        errors.append(
            f"gpu_memory must be a size with its unit such as 20GiB or 512MiB, not "
            f"{shorten(text)!r}; or clear the cell"
        )
    return mib


def _number_cell(text: str, errors: list[str]) -> float:
    if text == "":
        return 0.0
    try:
        number = float(text) if len(text) <= MAX_CELL_CHARS else math.nan
    except ValueError:
        errors.append(f"priority must be a number, not {shorten(text)!r}; type e.g. 0 or 10")
        return 0.0
    if not math.isfinite(number):
        errors.append(
            f"priority must be a finite number, not {shorten(text)!r}; type e.g. 0 "
            "or 10 (higher runs first)"
        )
        return 0.0
    return number


def _action_cell(text: str, errors: list[str]) -> Action:
    if text == "":
        return Action.RUN
    try:
        return Action(text.lower())
    except ValueError:
        errors.append(f"action must be empty, run, hold, stop or rerun, not {shorten(text)!r}")
        return Action.HOLD  # never start a row whose intent is unclear


# -- writing back ----------------------------------------------------------------------------


def owned_values(run: Run, now: datetime) -> dict[str, Any]:
    """The owned cells a row shows for its run; for a run rebuilt from the sheet, what
    the sheet showed stands wherever the run has no value of its own."""
    values = _own_values(run, now)
    for name, shown in run.link.kept_cells.items():
        if values.get(name) in ("", None):
            values[name] = shown
    return values


def _own_values(run: Run, now: datetime) -> dict[str, Any]:
    return {
        "id": run.run_id,
        "status": run.shown_status.value,
        "host": shown_host(run),
        "attempt": run.attempt or "",
        "started": format_time(run.started_at),
        "elapsed": format_elapsed(run, now),
        "metrics": format_metrics(run.seen.metrics),
        "message": run.message,
        "log": run.seen.log_path,
    }


LOWER_IS_BETTER = ("loss", "err", "perplexity", "ppl", "time")


def best_is_lowest(metric: str) -> bool:
    """Which end of a metric is its best: lowest for losses and errors, else highest."""
    return any(word in metric.lower() for word in LOWER_IS_BETTER)


def metric_values(run: Run, metric_columns: Iterable[str]) -> dict[str, Any]:
    """`acc` (latest) and `best acc` (over the current attempt) for each configured metric."""
    values: dict[str, Any] = {}
    for name in metric_columns:
        values[name] = run.seen.metrics.get(name, "")
        side = "min" if best_is_lowest(name) else "max"
        values[f"best {name}"] = run.seen.summary.get(side, {}).get(name, "")
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
    shown = _shown_cells(table)
    updates = []
    for row, wanted in sorted(rows.items()):
        values = {k: written_value(v, k) for k, v in wanted.items()}  # cut before comparing
        changed = {k: v for k, v in values.items() if not _same(shown(row, k), v)}
        if not changed:
            continue
        fill = (fills or {}).get(row) or _status_fill(changed.get("status"))
        shown_id = cell_text(table.value(row, "id")).strip() or None
        job = cell_text(table.value(row, "job")).strip()
        expect = {} if shown_id else user_cells(table, row)
        updates.append(
            RowUpdate(row=row, run_id=shown_id, cells=changed, fill=fill, job=job, expect=expect)
        )
    return SheetWrite(new_columns=new_columns, rows=updates)


def _shown_cells(table: Table) -> Callable[[int, str], Any]:
    """`table.value`, with the header's columns looked up once (plan_write asks for every
    owned cell of every shown row, each cycle)."""
    index: dict[str, int] = {}
    for i, name in enumerate(table.header):
        index.setdefault(name, i)  # the first column of a name, as Table.column finds it

    def shown(row: int, name: str) -> Any:
        col = index.get(name)
        cells = table.rows[row - 2] if 0 <= row - 2 < len(table.rows) else []
        if col is None or col >= len(cells) or cells[col] is None:
            return ""
        return cells[col]

    return shown


def written_value(value: Any, column: str = "") -> Any:
    """A value as sheetrunner may write it into a cell: text cut to WRITTEN_LIMITS (else
    WRITTEN_LIMIT) characters with a visible "…", characters no sheet can hold (NUL and the
    other C0 controls but tab and line breaks, lone surrogates) replaced by U+FFFD, and a
    number no spreadsheet or JSON can hold (nan, ±inf, an integer beyond 15 digits) as text.
    The one place that bounds what is written (plan_write, the side tabs, the guard);
    applying it twice changes nothing."""
    if isinstance(value, bool) or value is None or isinstance(value, Sparkline | datetime):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else written_value(cell_text(value), column)
    if isinstance(value, int):
        return value if abs(value) < 10**15 else written_value(cell_text(value), column)
    if not isinstance(value, str):
        return written_value(cell_text(value), column)
    limit = WRITTEN_LIMITS.get(column, WRITTEN_LIMIT)
    if len(value) > limit:
        value = value[: limit - len(ELLIPSIS)] + ELLIPSIS
    return BAD_CHAR_RE.sub("\ufffd", value)


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
    if type(shown) is type(wanted) and shown == wanted:
        return True  # the common case, without the conversions below
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
