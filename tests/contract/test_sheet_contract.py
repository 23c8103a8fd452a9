"""What every sheet backend promises, whatever it writes to.

The daemon plans one write against one read, and people sort, delete and
copy rows in between. These cases pin the one identity rule
(`sheet.relocate.locate`) and the `_sheetrunner` tab's compare-and-set on
every backend in backends.BACKENDS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from sheetrunner.sheet.lease import META_TAB, meta_from_rows
from sheetrunner.sheet.schema import cell_text
from sheetrunner.sheet.table import RowUpdate, SheetWrite
from sheetrunner.sheets.google import ENDPOINT_ENV

from .backends import BACKENDS

HEADER = ["job", "--lr", "action", "id", "status", "host", "message"]


@pytest.fixture(params=sorted(BACKENDS))
def make_sheet(request, tmp_path, monkeypatch) -> Iterator[Callable[[list[list[Any]]], Any]]:
    """A function making a harness (see backends.py) on a new sheet holding these rows."""
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    factory = BACKENDS[request.param]
    with ExitStack() as stack:
        yield lambda rows: stack.enter_context(factory([HEADER, *rows], tmp_path))


def text(harness: Any, row: int, header: str) -> str:
    return cell_text(harness.cell(row, header)).strip()


def rows_by_id(harness: Any, count: int) -> dict[str, tuple[str, str]]:
    """Run id -> (--lr, status) for rows 2..count+1."""
    found = {}
    for row in range(2, count + 2):
        if run_id := text(harness, row, "id"):
            found[run_id] = (text(harness, row, "--lr"), text(harness, row, "status"))
    return found


def claim(row: int, run_id: str, table: Any) -> RowUpdate:
    expect = {n: cell_text(table.value(row, n)).strip() for n in ("job", "--lr", "action")}
    return RowUpdate(row, None, {"id": run_id, "status": "queued"}, job="mnist", expect=expect)


def lease(namespace: str) -> list[list[str]]:
    return [["sheetrunner", "note"], ["namespace", namespace]]


# ---------------------------------------------------------------- cells


def test_owned_cells_written_are_read_back(make_sheet):
    harness = make_sheet([["mnist", 0.1, "", "r1"]])
    harness.sheet.read()
    cells = {"status": "running", "host": "gpu1", "message": "=1+1"}
    harness.sheet.write(SheetWrite(rows=[RowUpdate(2, "r1", cells)]))
    table = harness.sheet.read()
    assert {name: table.value(2, name) for name in cells} == cells
    assert table.value(2, "--lr") == 0.1 and table.value(2, "job") == "mnist"


def test_a_claim_lands_only_on_an_unchanged_unclaimed_row(make_sheet):
    harness = make_sheet([["mnist", 0.1], ["mnist", 0.2], ["mnist", 0.3]])
    table = harness.sheet.read()
    harness.set_cell(3, "--lr", 0.9)  # a person edits row 3
    harness.set_cell(4, "id", "theirs")  # someone else claims row 4
    claims = [claim(2, "c1", table), claim(3, "c2", table), claim(4, "c3", table)]
    harness.sheet.write(SheetWrite(rows=claims))
    assert [text(harness, r, "id") for r in (2, 3, 4)] == ["c1", "", "theirs"]
    assert [text(harness, r, "status") for r in (2, 3, 4)] == ["queued", "", ""]


# ---------------------------------------------------------------- rows moved between read and write


def test_rows_sorted_between_read_and_write_still_get_their_own_updates(make_sheet):
    lrs = [0.5, 0.1, 0.4, 0.2, 0.3]
    harness = make_sheet([["mnist", lr, "", f"r{i}"] for i, lr in enumerate(lrs)])
    table = harness.sheet.read()
    harness.sort_rows("--lr")
    updates = [RowUpdate(row, table.value(row, "id"), {"status": f"s{row}"})
               for row in range(2, 7)]
    harness.sheet.write(SheetWrite(rows=updates))
    expected = {f"r{i}": (cell_text(lr), f"s{i + 2}") for i, lr in enumerate(lrs)}
    assert rows_by_id(harness, 5) == expected
    assert [text(harness, r, "--lr") for r in range(2, 7)] == ["0.1", "0.2", "0.3", "0.4", "0.5"]


def test_a_row_deleted_between_read_and_write_gets_nothing_and_nothing_else_is_hit(make_sheet):
    harness = make_sheet([["mnist", 0.1, "", "r0"], ["mnist", 0.2, "", "r1"],
                          ["mnist", 0.3, "", "r2"], ["mnist", 0.4]])
    harness.sheet.read()
    harness.delete_row(3)  # r1
    updates = [RowUpdate(2, "r0", {"status": "a"}), RowUpdate(3, "r1", {"status": "b"}),
               RowUpdate(4, "r2", {"status": "c"})]
    harness.sheet.write(SheetWrite(rows=updates))
    assert rows_by_id(harness, 4) == {"r0": ("0.1", "a"), "r2": ("0.3", "c")}
    assert [text(harness, 4, h) for h in ("--lr", "id", "status")] == ["0.4", "", ""]
    assert harness.sheet.read().value(5, "job") == ""


def test_a_copied_row_showing_the_same_id_twice_gets_the_update_at_the_read_row(make_sheet):
    harness = make_sheet([["mnist", 0.1, "", "r0"], ["mnist", 0.2], ["mnist", 0.1, "", "r0"]])
    harness.sheet.read()
    harness.sheet.write(SheetWrite(rows=[RowUpdate(4, "r0", {"status": "running"})]))
    assert [text(harness, r, "status") for r in (2, 3, 4)] == ["", "", "running"]


def test_a_copy_made_between_read_and_write_leaves_the_update_at_the_read_row(make_sheet):
    harness = make_sheet([["mnist", 0.1, "", "r0"], ["mnist", 0.2]])
    harness.sheet.read()
    harness.set_cell(3, "id", "r0")  # a person pastes the row over row 3
    harness.sheet.write(SheetWrite(rows=[RowUpdate(2, "r0", {"status": "running"})]))
    assert [text(harness, r, "status") for r in (2, 3)] == ["running", ""]


def test_two_moved_copies_of_an_id_get_nothing(make_sheet):
    harness = make_sheet([["mnist", 0.2, "", "r0"], ["mnist", 0.3, "", "r0"], ["mnist", 0.1]])
    harness.sheet.read()
    harness.sort_rows("--lr")  # 0.1, 0.2, 0.3: neither copy is on row 2 any more
    harness.sheet.write(SheetWrite(rows=[RowUpdate(2, "r0", {"status": "running"})]))
    assert [text(harness, r, "status") for r in (2, 3, 4)] == ["", "", ""]


# ---------------------------------------------------------------- the _sheetrunner tab


def test_the_meta_tab_round_trips_and_is_hidden(make_sheet):
    harness = make_sheet([["mnist", 0.1]])
    assert harness.sheet.read().meta is None
    harness.sheet.write(SheetWrite(meta=lease("ns1"), meta_expect=None))
    assert harness.sheet.read().meta == meta_from_rows(lease("ns1"))
    assert harness.tab_hidden(META_TAB)
    table = harness.sheet.read()
    harness.sheet.write(SheetWrite(meta=[["namespace", "ns2"]], meta_expect=table.meta))
    assert harness.tab_rows(META_TAB) == [["namespace", "ns2"]]  # replaced whole
    assert harness.sheet.read().meta == {"namespace": "ns2"}


def test_the_meta_tab_is_compare_and_set(make_sheet):
    harness = make_sheet([["mnist", 0.1, "", "r0"]])
    first, second = harness.sheet, harness.open_again()
    assert first.read().meta is None and second.read().meta is None
    first.write(SheetWrite(meta=lease("first"), meta_expect=None))
    second.write(SheetWrite(meta=lease("second"), meta_expect=None,
                            rows=[RowUpdate(2, "r0", {"status": "running"})]))
    assert harness.tab_rows(META_TAB) == lease("first")  # exactly one landed
    assert text(harness, 2, "status") == "running"  # the rest of the losing write did
    stale = second.read().meta
    first.write(SheetWrite(meta=lease("first-renewed"), meta_expect=first.read().meta))
    second.write(SheetWrite(meta=lease("second"), meta_expect=stale))
    assert harness.tab_rows(META_TAB) == lease("first-renewed")
