"""sheet/guard.py: nothing sheetrunner writes lands on a cell a person owns; and
schema.header_problem: a missing or damaged header is a sheet error, not an empty sheet."""

from __future__ import annotations

import logging
import math
import os
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sheetrunner.config import SheetConfig
from sheetrunner.model import Run, Status
from sheetrunner.reconcile import Plan
from sheetrunner.sheet import guard
from sheetrunner.sheet.render import SheetView
from sheetrunner.sheet.schema import (
    OWNED_COLUMNS,
    USER_COLUMNS,
    WRITTEN_LIMITS,
    header_problem,
    header_problems,
    parse_table,
    written_value,
)
from sheetrunner.sheet.table import RowInsert, RowUpdate, SheetWrite, Table
from tests.helpers import make_run

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HEADER = ["job", "--lr", "notes", "id", "status", "message"]
WORKSHEET = "experiments"


def run(run_id: str, **kw) -> Run:
    return make_run(run_id, "k", "fake", (("lr", "0.1"),), 1, None, kw.pop("status", Status.RUNNING),
               NOW, NOW, attempt=1, host="a", attempt_started_at=NOW, started_at=NOW, **kw)


# -- the property: after render + guard, no user cell and no foreign tab is ever written ------

HEADER_NAMES = st.sampled_from([
    *OWNED_COLUMNS, *USER_COLUMNS, "--lr", "--seed", "--dup", "--dup", "--a b", "-- lr", "--",
    "notes", "", "curve", "sweep", "acc", "best acc", "loss", "best loss", "Sheet1", "_metrics",
    "abcdef01-x1b2c3",
]) | st.text(max_size=8)
CELLS = st.one_of(
    st.none(), st.sampled_from(["fake", "digits", "", "1..3", "0.1, 0.2", "abcdef01-x1b2c3",
                                "sweep-1234abcd", "hold", "rerun", "nan", "=1+1", "\x00"]),
    st.integers(-3, 5), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
)
METRIC_NAMES = st.sampled_from(["acc", "loss", "job", "--lr", "id", "status", "notes",
                                "priority", "best acc", "sweep", "curve"])
TAB_NAMES = st.sampled_from(["_metrics", "_sheetrunner", "pool", WORKSHEET, "Sheet1", "x"])
METRIC_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                          st.text(max_size=4), st.just("m" * 60_000))


@st.composite
def cycles(draw):
    header = draw(st.lists(HEADER_NAMES, max_size=12))
    rows = draw(st.lists(st.lists(CELLS, max_size=len(header) + 2), max_size=8))
    table = Table(header=header, rows=rows)
    metric_columns = tuple(draw(st.lists(METRIC_NAMES, max_size=4, unique=True)))
    curve = draw(st.sampled_from([None, *metric_columns])) if metric_columns else None
    config = SheetConfig(path=Path("x.xlsx"), worksheet=WORKSHEET, metric_columns=metric_columns,
                         curve=curve, pool_tab=draw(st.sampled_from([None, "pool", WORKSHEET,
                                                                     "_sheetrunner"])))
    numbers = list(range(2, len(rows) + 2))
    claimed = draw(st.lists(st.sampled_from(numbers), unique=True)) if numbers else []
    plan, runs = Plan(), {}
    for i, row in enumerate(claimed):
        if draw(st.booleans()):
            rid = f"abcdef0{i % 10}-x{i}"
            metrics = draw(st.dictionaries(METRIC_NAMES, METRIC_VALUES, max_size=3))
            history = draw(st.lists(METRIC_VALUES, max_size=5))
            runs[rid] = run(rid, status=draw(st.sampled_from(list(Status))), metrics=metrics,
                            message=draw(st.sampled_from(["", "m" * 50_000, "a\x00b"])),
                            summary={"history": {curve or "acc": history}})
            plan.rows[row] = rid
        else:
            plan.notes[row] = (Status.INVALID, draw(st.sampled_from(["bad", "x" * 48_056])))
    tabs = draw(st.dictionaries(TAB_NAMES, st.just([["a", math.inf], ["b" * 60_000]]),
                                max_size=3))
    return table, config, plan, runs, tabs


def owned_for(config: SheetConfig) -> set[str]:
    """sheetrunner's columns, worked out here independently of the guard."""
    names = {*OWNED_COLUMNS, "sweep"} | ({"curve"} if config.curve else set())
    for m in config.metric_columns:
        names |= {m, f"best {m}"}
    return {n for n in names if n not in USER_COLUMNS and not n.startswith("--")}


# CI runs a fixed set; SHEETRUNNER_FUZZ=N runs N random examples (the longer mode).
FUZZ = int(os.environ.get("SHEETRUNNER_FUZZ", "0") or 0)


@settings(max_examples=FUZZ or 250, derandomize=not FUZZ, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cycles(), st.lists(HEADER_NAMES, max_size=4))
def test_after_render_and_guard_no_user_cell_and_no_foreign_tab_is_written(cycle, junk):
    table, config, plan, runs, tabs = cycle
    experiments = parse_table(table, ["fake"])
    change = SheetView(config).change(table, experiments, plan, runs, NOW, tabs)
    # And a render gone wrong: cells, columns and tabs that are nobody's to write.
    change.rows.append(RowUpdate(row=2, run_id=None, cells=dict.fromkeys(junk, "x")))
    change.new_columns += junk
    change.tabs.update(dict.fromkeys(junk, [["x"]]))
    guarded = guard.only_owned(change, table, config.metric_columns, guard.own_tabs(config),
                               curve=bool(config.curve))
    owned = owned_for(config)
    user = {h for h in table.header if h not in owned}
    own_tabs = {t for t in ("_metrics" if config.curve else None, config.pool_tab) if t}
    own_tabs -= {"_sheetrunner", WORKSHEET}
    for update in guarded.rows:
        assert set(update.cells) <= owned and not set(update.cells) & user
        assert not any(h in USER_COLUMNS or h.startswith("--") for h in update.cells)
        for header, value in update.cells.items():
            assert written_value(value, header) == value  # already bounded
            if isinstance(value, str):
                assert len(value) <= 2000 and "\x00" not in value
            if isinstance(value, float):
                assert math.isfinite(value)
    assert set(guarded.new_columns) <= owned
    assert set(guarded.tabs) <= own_tabs
    for tab in guarded.tabs.values():
        assert all(not isinstance(v, str) or len(v) <= 2000 for r in tab for v in r)
    if header_problem(table) is not None:
        assert not guarded.rows and not guarded.new_columns and not guarded.inserts
    for insert in guarded.inserts:  # new rows: the parent's user cells, its values, `sweep`
        assert all(set(child) <= {*table.header, "sweep"} for child in insert.rows)
    assert guard.only_owned(guarded, table, config.metric_columns, guard.own_tabs(config),
                            curve=bool(config.curve)) == guarded  # idempotent


# -- the guard, case by case --------------------------------------------------------------------


def test_a_cell_under_a_user_column_is_dropped_and_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(guard, "_said", set())  # what earlier tests had logged
    table = Table(header=[*HEADER, "acc"], rows=[["fake", 0.1, "keep", "abcdef01-x1"]])
    change = SheetWrite(
        new_columns=["host", "job", "--new"],
        rows=[RowUpdate(2, "abcdef01-x1", {"status": "running", "notes": "x", "--lr": 9,
                                           "job": "other", "acc": 0.5}),
              RowUpdate(3, None, {"notes": "only a user cell"})],
        tabs={"_metrics": [["run"]], "Sheet1": [["gone"]], "_sheetrunner": [["lease"]],
              WORKSHEET: [["over"]]},
        inserts=[RowInsert(2, [{"job": "fake", "--lr": "1", "sweep": "sweep-1"}])],
        meta=[["namespace", "n"]],
    )
    with caplog.at_level(logging.WARNING, logger="sheetrunner.sheet.guard"):
        kept = guard.only_owned(change, table, ["acc"], ["_metrics", "_sheetrunner"])
        again = guard.only_owned(change, table, ["acc"], ["_metrics", "_sheetrunner"])
    assert kept == again
    (update,) = kept.rows
    assert update.cells == {"status": "running", "acc": 0.5}
    assert kept.new_columns == ["host"]
    assert set(kept.tabs) == {"_metrics"}
    assert kept.inserts == change.inserts and kept.meta == change.meta
    assert change.rows[0].cells["job"] == "other"  # the input is not altered
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert all(word in lines[0] for word in ("'notes'", "'--lr'", "'job'", "'Sheet1'",
                                             "'_sheetrunner'", "new column '--new'"))


def test_own_tabs_never_include_the_lease_tab_or_the_experiments_tab():
    config = SheetConfig(path=Path("x.xlsx"), worksheet="runs", pool_tab="runs", curve="acc",
                         metric_columns=("acc",))
    assert guard.own_tabs(config) == ("_metrics",)
    assert guard.own_tabs(SheetConfig(path=Path("x"), pool_tab="pool")) == ("pool",)


def test_with_an_unusable_header_nothing_lands_in_the_tab():
    table = Table(header=["", "", ""], rows=[["fake", 0.1, "abcdef01-x1"]])
    change = SheetWrite(new_columns=list(OWNED_COLUMNS),
                        rows=[RowUpdate(2, "abcdef01-x1", {"status": "stopped"})],
                        tabs={"_metrics": [["run"]]}, meta=[["k", "v"]])
    kept = guard.only_owned(change, table, (), ["_metrics"])
    assert kept.rows == [] and kept.new_columns == [] and kept.tabs == change.tabs
    assert kept.meta == change.meta


def test_every_written_text_is_cut_with_a_visible_ellipsis():
    message = written_value("x" * 48_056, "message")
    assert len(message) == WRITTEN_LIMITS["message"] == 2000 and message.endswith("…")
    assert len(written_value("h" * 5000, "host")) == 300
    assert written_value(message, "message") == message
    assert written_value("a\x00b\x07c\td\ne", "message") == "a\ufffdb\ufffdc\td\ne"
    assert written_value(math.nan) == "nan" and written_value(-math.inf) == "-inf"
    assert len(written_value(10**400)) == 300 and written_value(10**400).endswith("…")
    assert written_value(10**5000).startswith("<a number")  # too long even to print
    assert written_value(0.5) == 0.5 and written_value(3) == 3 and written_value("ok") == "ok"


def test_a_huge_message_reaches_the_sheet_cut_and_is_not_rewritten_next_cycle():
    view = SheetView(SheetConfig(path=Path("x.xlsx")))
    table = Table(header=HEADER, rows=[["fake", 0.1, None, "abcdef01-x1"]])
    r = run("abcdef01-x1", message="m" * 48_056)
    change = view.change(table, parse_table(table, ["fake"]), Plan(rows={2: r.run_id}),
                         {r.run_id: r}, NOW, {})
    message = change.rows[0].cells["message"]
    assert len(message) == 2000 and message.endswith("…")
    shown = Table(header=[*HEADER, *change.new_columns], rows=[["fake", 0.1, None, "abcdef01-x1"]])
    for name, value in change.rows[0].cells.items():
        col = shown.column(name)
        shown.rows[0] += [None] * (col + 1 - len(shown.rows[0]))
        shown.rows[0][col] = value
    again = view.change(shown, parse_table(shown, ["fake"]), Plan(rows={2: r.run_id}),
                        {r.run_id: r}, NOW, {})
    assert again.rows == []


def test_a_nan_metric_and_a_nan_history_never_reach_the_sheet_as_numbers():
    config = SheetConfig(path=Path("x.xlsx"), metric_columns=("loss",), curve="loss")
    table = Table(header=HEADER, rows=[["fake", 0.1, None, "abcdef01-x1"]])
    r = run("abcdef01-x1", metrics={"loss": math.nan},
            summary={"history": {"loss": [1.0, math.nan, 0.5, math.inf, 10**400, "x", 0.25]}})
    change = SheetView(config).change(table, parse_table(table, ["fake"]),
                                      Plan(rows={2: r.run_id}), {r.run_id: r}, NOW, {})
    cells = change.rows[0].cells
    assert cells["loss"] == "nan"
    assert cells["curve"].values == (1.0, 0.5, 0.25)
    assert change.tabs["_metrics"][1] == ["abcdef01-x1", 1.0, 0.5, 0.25]


# -- the header ---------------------------------------------------------------------------------


def test_a_good_header_has_no_problem():
    assert header_problem(Table(header=HEADER, rows=[])) is None
    assert header_problem(Table(header=HEADER, rows=[["fake", 0.1]])) is None


def test_a_cleared_header_is_a_sheet_error_not_an_empty_sheet():
    table = Table(header=["", "", "", ""], rows=[["fake", 0.1, None, "abcdef01-x1"]])
    assert parse_table(table, ["fake"]) == []  # what the core must never see as "no rows"
    problem = header_problem(table)
    assert problem is not None and "empty" in problem and "1 non-empty row" in problem
    assert "put the header back" in problem
    assert header_problem(Table(header=[], rows=[])) is not None  # a blank tab: not ours to fill


def test_a_header_sorted_into_the_data_is_a_sheet_error():
    table = Table(header=["fake", "0.1", "", "abcdef01-x1b2c3", "running"],
                  rows=[["job", "--lr", "notes", "id", "status"], ["fake", 0.2]])
    problem = header_problem(table)
    assert problem is not None and "run id 'abcdef01-x1b2c3'" in problem and "column D" in problem


def test_a_header_without_a_job_column_is_a_sheet_error():
    problem = header_problem(Table(header=["name", "value"], rows=[["a", 1]]))
    assert problem is not None and "none of the known column names" in problem
    problem = header_problem(Table(header=["--lr", "id", "status"], rows=[["0.1"]]))
    assert problem is not None and "no `job` column" in problem


def test_an_id_column_whose_header_was_cleared_is_a_sheet_error():
    table = Table(header=["job", "--lr", "", "status"], rows=[["fake", 0.1, "abcdef01-x1b2c3"]])
    problem = header_problem(table)
    assert problem is not None and "column C holds run ids" in problem
    assert header_problem(Table(header=["job", "--lr", "", "status"], rows=[["fake", 0.1]])) is None


def test_header_problems_name_each_unusable_column_once():
    table = Table(header=["job", "--dup", "--a b", "-- lr", "--", "   ", "--dup", "id", "id"],
                  rows=[])
    lines = header_problems(table)
    assert lines[0] == "column --dup appears twice (columns B and G); rename or delete one"
    assert any("'--a b' is not a parameter name" in line and "'--a_b'" in line for line in lines)
    assert any("'-- lr'" in line and "'--lr'" in line for line in lines)
    assert any("header '--' is not a parameter name" in line for line in lines)
    assert any(line.startswith("column id appears 2 times") for line in lines)
    assert len(lines) == 5
    assert header_problems(Table(header=HEADER, rows=[])) == []
