"""Sweeps from one row: the syntax, and the expansion into child rows on a real workbook."""

from __future__ import annotations

import pytest
from helpers import HEADER, cycle_until, local_config, read_workbook, write_workbook

from sheetrunner.daemon import build
from sheetrunner.model import Status
from sheetrunner.sheet.expansion import summary
from sheetrunner.sheet.sweeps import SweepError, combinations, values


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("0.1, 0.01, 0.001", ["0.1", "0.01", "0.001"]),
        ("1..5", ["1", "2", "3", "4", "5"]),
        ("-1..1", ["-1", "0", "1"]),
        ("{1e-4..1e-1 log 4}", ["0.0001", "0.001", "0.01", "0.1"]),
        ("{0..1 lin 5}", ["0", "0.25", "0.5", "0.75", "1"]),
        ("relu,gelu", ["relu", "gelu"]),
    ],
)
def test_sweep_cells_stand_for_their_values(cell, expected):
    assert values(cell) == expected


@pytest.mark.parametrize(
    ("cell", "hint"),
    [("5..1", "backwards"), ("0.1,,0.2", "empty item"), ("{1..x log 3}", "numbers"),
     ("{0..1 log 3}", "above 0"), ("{1..2 log 1}", "at least 2"), ("{1..2}", "spaced range")],
)
def test_bad_sweep_cells_say_how_to_fix_them(cell, hint):
    with pytest.raises(SweepError, match=hint):
        values(cell)


def test_combinations_are_the_cartesian_product_in_column_order():
    combos = combinations([("lr", "0.1,0.2"), ("seed", "1..3"), ("width", "8")])
    assert len(combos) == 6
    assert combos[0] == [("lr", "0.1"), ("seed", "1"), ("width", "8")]
    assert combos[-1] == [("lr", "0.2"), ("seed", "3"), ("width", "8")]
    with pytest.raises(SweepError, match="at most"):
        combinations([("a", "1..100"), ("b", "1..100")])


def test_the_summary_counts_children_most_pressing_first():
    text, colour = summary([Status.RUNNING] * 3 + [Status.QUEUED] * 9)
    assert text == "3/12 running, 9 queued"
    assert summary([Status.SUCCEEDED, Status.FAILED])[0] == "1/2 failed, 1 succeeded"


def test_a_sweep_row_expands_into_child_rows_that_run(tmp_path):
    write_workbook(tmp_path / "experiments.xlsx", HEADER + ["notes"],
                   [["fake", "1..2", "0.01, 0.02", None, 0, None] + [None] * 9 + ["keep me"],
                    ["fake", 3, 0.01, None, 0]])
    daemon = build(local_config(tmp_path))
    _first_acting_cycle(daemon)
    rows = read_workbook(tmp_path / "experiments.xlsx")
    assert len(rows) == 6
    parent, children, last = rows[0], rows[1:5], rows[5]
    assert parent["id"].startswith("sweep-") and parent["notes"] == "keep me"
    assert [(c["--steps"], c["--sleep"]) for c in children] == [
        ("1", "0.01"), ("1", "0.02"), ("2", "0.01"), ("2", "0.02")]
    assert all(c["sweep"] == parent["id"] and c["job"] == "fake" and c["gpus"] == 0
               for c in children)
    assert last["--steps"] == 3
    rows = cycle_until(daemon, lambda rows: all(r["status"] == "succeeded" for r in rows[1:]))
    assert rows[0]["status"] == "4/4 succeeded"
    assert len({r["id"] for r in rows}) == 6
    daemon.cycle()
    assert len(read_workbook(tmp_path / "experiments.xlsx")) == 6  # expanded once only


def test_a_bad_sweep_row_is_invalid_with_the_reason(tmp_path):
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [["fake", "5..1", 0.01, None, 0]])
    daemon = build(local_config(tmp_path))
    _first_acting_cycle(daemon)
    (row,) = read_workbook(tmp_path / "experiments.xlsx")
    assert row["status"] == "invalid" and "backwards" in row["message"]


def _first_acting_cycle(daemon) -> None:
    """Cycle until the daemon owns the sheet (its first cycle only takes the lease)."""
    for _ in range(3):
        if daemon.cycle().acting:
            return
    raise AssertionError("the daemon never took the sheet's lease")


def test_stop_hold_and_run_on_a_sweep_row_apply_to_its_children(tmp_path):
    path = tmp_path / "experiments.xlsx"
    write_workbook(path, HEADER, [["fake", "1..3", 0.01, None, 0, "hold"]])
    daemon = build(local_config(tmp_path))
    try:
        _first_acting_cycle(daemon)
        rows = cycle_until(daemon, lambda rows: len(rows) == 4 and all(
            r.get("status") == "held" for r in rows[1:]))
        assert rows[0]["status"] == "sweep: 3 rows" or "held" in rows[0]["status"]
        _set_action(path, 2, "run")  # the sweep row: its children start
        cycle_until(daemon, lambda rows: all(r.get("status") == "succeeded" for r in rows[1:]))
        _set_action(path, 2, "stop")  # finished children stay as they are
        daemon.cycle()
        assert [r["status"] for r in read_workbook(path)[1:]] == ["succeeded"] * 3
    finally:
        daemon.close()


def test_stop_on_a_sweep_row_stops_its_running_children(tmp_path):
    path = tmp_path / "experiments.xlsx"
    write_workbook(path, HEADER, [["fake", "200, 201", 0.1, None, 0]])
    daemon = build(local_config(tmp_path))
    try:
        cycle_until(daemon, lambda rows: len(rows) == 3 and all(
            r.get("status") == "running" for r in rows[1:]))
        _set_action(path, 2, "stop")
        rows = cycle_until(daemon, lambda rows: all(r.get("status") == "stopped" for r in rows[1:]))
        assert "stop" in rows[1]["message"]
    finally:
        daemon.close()


def _set_action(path, row: int, action: str) -> None:
    import openpyxl

    book = openpyxl.load_workbook(path)
    sheet = book.worksheets[0]
    col = [c.value for c in sheet[1]].index("action") + 1
    sheet.cell(row=row, column=col).value = action
    book.save(path)
