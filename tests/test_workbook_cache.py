"""The workbook is parsed only when its file changed, and once per change."""

from __future__ import annotations

import os
import time
from pathlib import Path

import openpyxl
from helpers import write_workbook

from sheetrunner.sheet.table import RowInsert, RowUpdate, SheetWrite
from sheetrunner.sheets.workbook import Workbook

HEADER = ["job", "--lr", "gpus", "id", "status", "message", "metrics"]


def settled(path: Path) -> Path:
    """The file as a save from a while ago: its stamp alone says whether it changed."""
    then = time.time() - 60
    os.utime(path, (then, then))
    return path


def book(tmp_path: Path) -> Path:
    rows = [["digits", 0.1 * i, 1, f"r-{i}", None, None, None] for i in range(5)]
    return settled(write_workbook(tmp_path / "w.xlsx", HEADER, rows))


def test_an_unchanged_file_is_not_parsed_again_and_a_save_of_theirs_is(tmp_path):
    path = book(tmp_path)
    workbook = Workbook(path)
    first = workbook.read()
    assert workbook.parses == 1  # no formula in it: one load gives formulas and values
    again = workbook.read()
    again.rows[0][0] = "changed by the caller"
    assert workbook.parses == 1 and workbook.read() == first  # the kept table is a copy
    theirs = openpyxl.load_workbook(path)
    theirs.worksheets[0]["A2"] = "resnet"
    theirs.save(path)  # a save in place: new size, mtime and ctime
    assert workbook.read().rows[0][0] == "resnet" and workbook.parses == 2


def test_a_file_saved_just_now_is_parsed_again_next_time(tmp_path):
    path = write_workbook(tmp_path / "w.xlsx", HEADER, [["digits", 0.1, 1, "r-0"]])
    workbook = Workbook(path)
    workbook.read()
    workbook.read()  # a second save within the same timestamp tick could hide: no trust yet
    assert workbook.parses == 2
    settled(path)
    workbook.read()
    workbook.read()
    assert workbook.parses == 3


def test_after_our_own_write_the_next_read_parses_once_what_the_file_holds(tmp_path):
    path = book(tmp_path)
    workbook = Workbook(path)
    workbook.read()
    change = SheetWrite(
        rows=[RowUpdate(2, "r-0", {"status": "running", "message": "café ✓ \x1b[31mred",
                                   "metrics": 0.1 + 0.2}, fill="C9DAF8"),
              RowUpdate(4, "r-2", {"status": "failed", "metrics": 3})],
        inserts=[RowInsert(after_row=6, rows=[{"job": "digits", "--lr": "=1+1", "gpus": 2}])],
        meta=[["namespace", "abcdefgh1234"]],
    )
    workbook.write(change)
    assert workbook.parses == 2  # the write's own load: one, no formula in the file
    ours = workbook.read()
    assert workbook.parses == 3
    assert ours == Workbook(path).read()
    assert ours.rows[0][4:7] == ["running", "café ✓ [31mred", 0.3]  # 16 digits in the file
    assert ours.meta == {"namespace": "abcdefgh1234"}


def test_a_workbook_with_formulas_is_still_loaded_for_their_values(tmp_path):
    path = tmp_path / "f.xlsx"
    source = openpyxl.Workbook()
    sheet = source.active
    sheet.append(HEADER)
    sheet.append(["digits", "=0.1*2", 1, "r-0"])
    source.save(path)
    workbook = Workbook(settled(path))
    table = workbook.read()
    assert workbook.parses == 2  # formulas and their saved values are two loads
    assert table.rows[0][1].formula == "=0.1*2"  # never computed by a spreadsheet program
    workbook.write(SheetWrite(rows=[RowUpdate(2, "r-0", {"status": "queued"})]))
    parses = workbook.parses
    workbook.read()
    assert workbook.parses == parses + 2  # not kept: the file as saved has lost no value
