"""The table <-> experiments mapping, the experiment hash, and which owned cells to write."""

from __future__ import annotations

from datetime import UTC, datetime

import openpyxl
import pytest
from helpers import make_run, write_workbook

from sheetrunner.model import Action, Status, param_argv
from sheetrunner.sheet.schema import (
    cell_text,
    experiment_key,
    format_metrics,
    owned_values,
    parse_table,
    plan_write,
)
from sheetrunner.sheet.table import Table
from sheetrunner.sheets.workbook import Workbook

HEADER = ["job", "--lr", "--seed", "gpus", "where", "priority", "retries", "action", "notes", "id",
          "status"]


def table(*rows: list) -> Table:
    return Table(header=HEADER, rows=[list(r) for r in rows])


def test_experiment_hashes_are_pinned():
    """Changing the hash would re-run every finished experiment: pin known values."""
    assert experiment_key("digits", [("lr", "0.1"), ("seed", "0")]) == "c05eb9db1ac9132d"
    assert experiment_key("digits", [("seed", "0"), ("lr", "0.1")]) == "c05eb9db1ac9132d"
    assert experiment_key("digits", []) == "82de12a455245bef"


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.1, "0.1"), (5.0, "5"), (5, "5"), (1.2345e-4, "0.00012345"), (True, "true"), ("0.1", "0.1"),
     (None, ""), ("; rm -rf ~", "; rm -rf ~"), ("=1+1", "=1+1")],
)
def test_cell_text_is_the_value_without_float_noise(value, text):
    assert cell_text(value) == text


def test_a_row_becomes_an_experiment_with_params_in_column_order():
    (e,) = parse_table(table(["digits", 0.1, 3, 2, "gpu-a", 5, 1, "hold", "note", "abcdef01-x1",
                              "running"]), ["digits"])
    assert e.params == (("lr", "0.1"), ("seed", "3"))
    assert param_argv(e.params) == ["--lr", "0.1", "--seed", "3"]
    assert (e.gpus, e.where, e.priority, e.retries, e.action) == (2, "gpu-a", 5.0, 1, Action.HOLD)
    assert e.run_id == "abcdef01-x1" and e.shown_status == "running" and e.error is None


def test_number_typed_as_text_is_the_same_experiment():
    a, b = parse_table(table(["digits", 0.1], ["digits", "0.1"]), ["digits"])
    assert a.key == b.key


def test_empty_rows_are_skipped_and_defaults_apply():
    exps = parse_table(table([], [None, None], ["digits"]), ["digits"])
    assert [(e.row, e.gpus, e.retries, e.action) for e in exps] == [(4, 1, None, Action.RUN)]


@pytest.mark.parametrize(
    ("cells", "reason"),
    [
        (["nope"], "unknown job 'nope'; the config declares: digits"),
        ([None, 0.1], "the job cell is empty"),
        (["digits", None, None, 1.5], "gpus must be a whole number ≥ 0, not '1.5'"),
        (["digits", None, None, -1], "gpus must be a whole number"),
        (["digits", None, None, None, None, "high"], "priority must be a number"),
        (["digits", None, None, None, None, None, "x"], "retries must be a whole number"),
        (["digits", None, None, None, None, None, None, "go"], "action must be empty, run, hold"),
    ],
)
def test_a_bad_row_carries_the_reason(cells, reason):
    (e,) = parse_table(table(cells), ["digits"])
    assert e.error is not None and reason in e.error


def test_an_id_cell_is_data_never_a_path():
    rows = [["digits", *[None] * 8, text] for text in ("../../escaped", "typed-over", "x-1",
                                                        "ABCDEF01-x1", "abcdef01-x1/..")]
    for e in parse_table(table(*rows), ["digits"]):
        assert e.run_id is None and e.foreign_id


def test_a_copied_id_is_shown_on_both_rows_and_the_core_decides_which_keeps_it():
    a, b = parse_table(table(["digits", *[None] * 8, "abcdef01-x1"],
                             ["digits", *[None] * 8, "abcdef01-x1"]), ["digits"])
    assert a.run_id == b.run_id == "abcdef01-x1"


def test_only_cells_that_differ_are_written_and_the_fill_follows_the_status():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    run = make_run("x-1", "k", "digits", (), 1, None, Status.RUNNING, now, now, attempt=1, host="a",
              attempt_started_at=now, started_at=now, metrics={"loss": 0.5, "step": 2})
    values = owned_values(run, now)
    shown = table(["digits", *[None] * 8, "x-1", "queued"])
    change = plan_write(shown, {2: values})
    (update,) = change.rows
    assert update.cells["status"] == "running" and "id" not in update.cells
    assert update.fill == "C9DAF8"
    assert change.new_columns == ["host", "attempt", "started", "elapsed", "metrics", "message", "log"]
    same = Table(header=[*HEADER, *change.new_columns],
                 rows=[["digits", *[None] * 8, *[values[k] for k in ["id", "status", "host", "attempt",
                                                                       "started", "elapsed", "metrics",
                                                                       "message", "log"]]]])
    assert plan_write(same, {2: values}).is_empty()


def test_metrics_are_compact_with_step_first():
    assert format_metrics({"loss": 0.123456, "step": 3, "time": 1.0, "acc": 1}) == \
        "step=3 loss=0.1235 acc=1"


def test_a_formula_the_file_holds_no_value_for_makes_the_row_invalid(tmp_path):
    path = write_workbook(tmp_path / "w.xlsx", ["job", "--lr"], [["digits", "=0.1*2"]])
    (e,) = parse_table(Workbook(path).read(), ["digits"])
    assert e.error is not None and "cell B2 holds the formula =0.1*2" in e.error


def test_a_claim_lands_only_on_a_row_that_still_shows_the_same_cells(tmp_path):
    """The claim follows its row (relocate.py): the inserted row with other cells is not
    claimed, the claimed row is found again one row down."""
    path = write_workbook(tmp_path / "w.xlsx", ["job", "--lr", "id"], [["digits", 0.1]])
    backend = Workbook(path)
    read = backend.read()
    change = plan_write(read, {2: {"id": "x-1"}})
    book = openpyxl.load_workbook(path)
    book.worksheets[0].insert_rows(2)  # a person inserts a row above, same job, other lr
    book.worksheets[0].cell(row=2, column=1, value="digits")
    book.worksheets[0].cell(row=2, column=2, value=0.5)
    book.save(path)
    backend.write(change)
    rows = [[c.value for c in r] for r in openpyxl.load_workbook(path).worksheets[0].iter_rows()]
    assert rows[1][:3] == ["digits", 0.5, None]  # the inserted row: other cells, not claimed
    assert rows[2][:3] == ["digits", 0.1, "x-1"]  # the row the claim was planned on
