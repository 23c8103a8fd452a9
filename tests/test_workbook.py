"""The .xlsx backend on real files: typed reads, surgical writes, edits between read and write."""

from __future__ import annotations

import os
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from helpers import fill_of, read_workbook, write_workbook

from sheetrunner.errors import SheetError, SheetUnavailable
from sheetrunner.sheet.lease import META_TAB
from sheetrunner.sheet.table import RowInsert, RowUpdate, SheetWrite, Table
from sheetrunner.sheets import workbook as workbook_module
from sheetrunner.sheets.workbook import Workbook

HEADER = ["job", "--lr", "gpus", "notes", "id", "status", "message"]
BLUE, GREEN = "C9DAF8", "D9EAD3"


def book(tmp_path: Path, rows: list[list[Any]] | None = None,
         header: list[str] | None = None) -> Path:
    rows = rows if rows is not None else [
        ["fake", 0.1, 1, "=1+1", "r1", "running", ""],
        ["fake", 0.2, 0, "second", None, None, None],
        ["other", 0.3, 2, None, "r3", "queued", None],
    ]
    return write_workbook(tmp_path / "book.xlsx", header or HEADER, rows)


def cells(path: Path, data_only: bool = False, tab: int = 0) -> dict[tuple[int, int], Any]:
    """Every non-empty cell of a tab: (row, column) -> value."""
    sheet = openpyxl.load_workbook(path, data_only=data_only).worksheets[tab]
    return {(c.row, c.column): c.value for r in sheet.iter_rows() for c in r if c.value is not None}


def cell(path: Path, ref: str, tab: int = 0) -> openpyxl.cell.cell.Cell:
    return openpyxl.load_workbook(path).worksheets[tab][ref]


def user_edit(path: Path, edit) -> None:
    """What a person does: open the file in their program, change it, save it."""
    wb = openpyxl.load_workbook(path)
    edit(wb.worksheets[0])
    wb.save(path)


def with_cached_value(path: Path, formula: str, value: str) -> None:
    """Store a formula's computed value, as Excel or LibreOffice do when they save."""
    with zipfile.ZipFile(path) as z:
        parts = {name: z.read(name) for name in z.namelist()}
    xml = parts["xl/worksheets/sheet1.xml"].decode()
    xml, n = re.subn(rf"<f>{re.escape(formula)}</f><v\s*/>", f"<f>{formula}</f><v>{value}</v>", xml)
    assert n == 1
    parts["xl/worksheets/sheet1.xml"] = xml.encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)


def status_update(row: int, run_id: str | None, status: str, job: str = "fake",
                  fill: str | None = None, **more: Any) -> RowUpdate:
    return RowUpdate(row=row, run_id=run_id, cells={"status": status, **more}, fill=fill, job=job)


# -- read ---------------------------------------------------------------------------------------


def test_read_returns_header_and_typed_rows(tmp_path: Path) -> None:
    path = write_workbook(tmp_path / "b.xlsx", [" job ", "--lr", "gpus", None, "id"], [
        ["fake", 0.1, 2, "x", "r1"],
        [None, None, None, None, None],  # an empty row in the middle keeps its place
        ["fake", 1e-3, 0, None],  # shorter row
    ])
    user_edit(path, lambda s: setattr(s.cell(row=9, column=2), "number_format", "0.00"))
    table = Workbook(path).read()
    assert table.header == ["job", "--lr", "gpus", "", "id"]  # stripped; no header -> ""
    assert len(table.rows) == 3  # trailing empty (formatted) rows are trimmed
    assert table.rows[0] == ["fake", 0.1, 2, "x", "r1"]
    assert type(table.rows[0][1]) is float and type(table.rows[0][2]) is int
    assert all(v is None for v in table.rows[1])
    assert table.rows[2][:3] == ["fake", 0.001, 0]
    assert table.value(4, "gpus") == 0 and table.value(4, "id") == ""
    assert table.value(3, "job") == "" and table.value(2, "id") == "r1"


def test_read_of_an_empty_tab(tmp_path: Path) -> None:
    path = tmp_path / "empty.xlsx"
    openpyxl.Workbook().save(path)
    assert Workbook(path).read() == Table(header=[], rows=[], meta=None,
                                          source=str(path.resolve()))


def test_read_gives_a_formulas_computed_value(tmp_path: Path) -> None:
    path = book(tmp_path)
    with_cached_value(path, "1+1", "2")
    table = Workbook(path).read()
    assert table.value(2, "notes") == 2


def test_read_named_worksheet(tmp_path: Path) -> None:
    path = book(tmp_path)
    user_edit(path, lambda s: s.parent.create_sheet("runs").append(["job", "id"]))
    assert Workbook(path, "runs").read().header == ["job", "id"]
    assert Workbook(path).read().header == HEADER  # default: the first tab


# -- errors -------------------------------------------------------------------------------------


def test_missing_file_names_the_path_and_init(tmp_path: Path) -> None:
    path = tmp_path / "nope.xlsx"
    for call in (lambda wb: wb.read(), lambda wb: wb.write(SheetWrite(new_columns=["id"]))):
        with pytest.raises(SheetError) as info:
            call(Workbook(path))
        assert not isinstance(info.value, SheetUnavailable)  # not transient: the user must act
        assert str(path) in str(info.value) and "sheetrunner init" in str(info.value)
    assert not path.exists()


@pytest.mark.parametrize("kind", ["empty", "garbage", "half", "no-workbook-part"])
def test_corrupt_or_partial_file_is_unavailable(tmp_path: Path, kind: str) -> None:
    good = book(tmp_path).read_bytes()
    path = tmp_path / "book.xlsx"
    if kind == "empty":
        path.write_bytes(b"")  # caught the instant an editor truncated it
    elif kind == "garbage":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    elif kind == "half":
        path.write_bytes(good[: len(good) // 2])
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("[Content_Types].xml", "<Types/>")
    with pytest.raises(SheetUnavailable) as info:
        Workbook(path).read()
    assert str(path) in str(info.value)
    with pytest.raises(SheetUnavailable):
        Workbook(path).write(SheetWrite(rows=[status_update(2, "r1", "x")]))


def test_damaged_xml_inside_the_zip_is_unavailable(tmp_path: Path) -> None:
    path = book(tmp_path)
    with zipfile.ZipFile(path) as z:
        parts = {name: z.read(name) for name in z.namelist()}
    sheet_xml = parts["xl/worksheets/sheet1.xml"]
    parts["xl/worksheets/sheet1.xml"] = sheet_xml[: len(sheet_xml) // 2]
    with zipfile.ZipFile(path, "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)
    with pytest.raises(SheetUnavailable):
        Workbook(path).read()


def test_missing_worksheet_lists_the_tabs(tmp_path: Path) -> None:
    path = book(tmp_path)
    user_edit(path, lambda s: s.parent.create_sheet("pool"))
    before = path.read_bytes()
    for call in (lambda wb: wb.read(), lambda wb: wb.write(SheetWrite(new_columns=["x"]))):
        with pytest.raises(SheetError) as info:
            call(Workbook(path, "runs"))
        message = str(info.value)
        assert "'runs'" in message and "experiments, pool" in message and "worksheet" in message
    assert path.read_bytes() == before


# -- write: only the owned cells it is given ----------------------------------------------------


def test_write_changes_only_the_given_cells(tmp_path: Path) -> None:
    path = book(tmp_path, header=[*HEADER, "comment"])
    user_edit(path, lambda s: s.cell(row=3, column=8, value="keep me"))
    before = cells(path)
    Workbook(path).write(SheetWrite(rows=[
        status_update(2, "r1", "succeeded", message="done", fill=GREEN),
        RowUpdate(row=4, run_id="r3", cells={"status": "running", "id": "r3"}, job="other"),
    ]))
    after = cells(path)
    expected = dict(before)
    expected[(2, 6)], expected[(2, 7)] = "succeeded", "done"
    expected[(4, 6)] = "running"
    assert after == expected
    # the user's formula is still a formula, not its value and not text
    notes = cell(path, "D2")
    assert notes.value == "=1+1" and notes.data_type == "f"
    assert read_workbook(path)[1]["comment"] == "keep me"


def test_written_types_and_text_that_looks_like_a_formula(tmp_path: Path) -> None:
    path = book(tmp_path)
    Workbook(path).write(SheetWrite(new_columns=["attempt", "elapsed"], rows=[
        RowUpdate(row=2, run_id="r1", cells={"message": "=HYPERLINK(\"http://x\")",
                                             "attempt": 3, "elapsed": 1.5}),
    ]))
    message = cell(path, "G2")
    assert message.value == '=HYPERLINK("http://x")' and message.data_type == "s"
    assert cell(path, "H2").value == 3 and cell(path, "I2").value == 1.5
    assert Workbook(path).read().value(2, "message") == '=HYPERLINK("http://x")'


def test_new_columns_are_appended_to_the_header(tmp_path: Path) -> None:
    path = book(tmp_path, header=["job", "--lr", "gpus", "notes"],
                rows=[["fake", 0.1, 1, "n"], ["fake", 0.2, 1, None]])
    Workbook(path).write(SheetWrite(
        new_columns=["id", "status", "job"],  # "job" is already there: not added twice
        rows=[RowUpdate(row=3, run_id=None, cells={"id": "r9", "status": "queued"}, job="fake")],
    ))
    assert Workbook(path).read().header == ["job", "--lr", "gpus", "notes", "id", "status"]
    assert read_workbook(path)[1] == {"job": "fake", "--lr": 0.2, "gpus": 1, "notes": None,
                                      "id": "r9", "status": "queued"}
    assert read_workbook(path)[0]["id"] is None


def test_fill_colours_the_whole_row_only(tmp_path: Path) -> None:
    path = book(tmp_path)
    Workbook(path).write(SheetWrite(new_columns=["host"], rows=[
        status_update(3, None, "running", fill=BLUE, id="r2"),
        status_update(4, "r3", "queued"),  # no fill: colour left alone
    ]))
    sheet = openpyxl.load_workbook(path).worksheets[0]
    width = len(HEADER) + 1
    assert sheet.max_column == width
    colours = {col: str(sheet.cell(row=3, column=col).fill.start_color.rgb)[-6:]
               for col in range(1, width + 1)}
    assert colours == dict.fromkeys(range(1, width + 1), BLUE)
    assert sheet.cell(row=3, column=1).fill.fill_type == "solid"
    assert fill_of(path, 3) == BLUE
    assert fill_of(path, 2) != BLUE and fill_of(path, 4) != BLUE
    assert sheet.cell(row=1, column=1).fill.fill_type is None


def test_empty_write_does_not_touch_the_file(tmp_path: Path) -> None:
    path = book(tmp_path)
    before = os.stat(path)
    Workbook(path).write(SheetWrite())
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


# -- write: the file changed since our read -----------------------------------------------------


def test_a_user_edit_between_read_and_write_is_kept(tmp_path: Path) -> None:
    path = book(tmp_path)
    backend = Workbook(path)
    assert backend.read().value(2, "--lr") == 0.1
    user_edit(path, lambda s: (s.cell(row=2, column=2, value=0.5),
                               s.cell(row=4, column=4, value="typed while running")))
    backend.write(SheetWrite(rows=[status_update(2, "r1", "failed", message="boom")]))
    rows = read_workbook(path)
    assert rows[0]["--lr"] == 0.5 and rows[0]["status"] == "failed"
    assert rows[2]["notes"] == "typed while running"


def test_update_by_id_follows_an_inserted_row(tmp_path: Path) -> None:
    path = book(tmp_path)
    backend = Workbook(path)
    table = backend.read()
    assert table.value(4, "id") == "r3"

    def insert(sheet) -> None:
        sheet.insert_rows(2)
        for col, value in enumerate(["fake", 0.9, 1], start=1):
            sheet.cell(row=2, column=col, value=value)

    user_edit(path, insert)
    backend.write(SheetWrite(rows=[
        status_update(2, "r1", "succeeded", fill=GREEN),
        status_update(4, "r3", "running", job="other"),
    ]))
    rows = read_workbook(path)
    assert [r["id"] for r in rows] == [None, "r1", None, "r3"]
    assert [r["status"] for r in rows] == [None, "succeeded", None, "running"]
    assert rows[0]["--lr"] == 0.9  # the new row is untouched
    assert fill_of(path, 3) == GREEN and fill_of(path, 2) != GREEN


def test_update_by_id_follows_a_sort(tmp_path: Path) -> None:
    path = book(tmp_path)
    backend = Workbook(path)
    backend.read()

    def sort_descending_by_lr(sheet) -> None:
        rows = [[c.value for c in r] for r in sheet.iter_rows(min_row=2)]
        rows.sort(key=lambda r: r[1], reverse=True)
        for i, values in enumerate(rows, start=2):
            for col, value in enumerate(values, start=1):
                sheet.cell(row=i, column=col, value=value)

    user_edit(path, sort_descending_by_lr)
    backend.write(SheetWrite(rows=[status_update(2, "r1", "stopped", message="by user")]))
    rows = read_workbook(path)
    assert [r["--lr"] for r in rows] == [0.3, 0.2, 0.1]
    assert rows[2]["id"] == "r1" and rows[2]["status"] == "stopped"
    assert rows[2]["message"] == "by user"
    assert rows[0]["status"] == "queued" and rows[0]["message"] is None  # old row 2: untouched


def test_update_whose_id_is_gone_is_skipped(tmp_path: Path) -> None:
    path = book(tmp_path)
    backend = Workbook(path)
    backend.read()
    user_edit(path, lambda s: s.delete_rows(2))
    before = cells(path)
    backend.write(SheetWrite(rows=[status_update(2, "r1", "succeeded", fill=GREEN),
                                   status_update(3, "r3", "running", job="other")]))
    rows = read_workbook(path)
    assert [r["id"] for r in rows] == [None, "r3"]
    assert rows[1]["status"] == "running"
    after = cells(path)
    assert {k: v for k, v in after.items() if k != (3, 6)} == \
        {k: v for k, v in before.items() if k != (3, 6)}
    assert fill_of(path, 2) != GREEN


def test_claim_lands_on_an_unclaimed_row_with_the_same_job(tmp_path: Path) -> None:
    path = book(tmp_path)
    Workbook(path).write(SheetWrite(rows=[status_update(3, None, "queued", id="r2")]))
    rows = read_workbook(path)
    assert rows[1]["id"] == "r2" and rows[1]["status"] == "queued"


def test_a_claim_follows_its_row_when_a_row_was_inserted_above(tmp_path: Path) -> None:
    path = book(tmp_path)
    backend = Workbook(path)
    backend.read()
    user_edit(path, lambda s: (s.insert_rows(3), s.cell(row=3, column=1, value="other")))
    backend.write(SheetWrite(rows=[status_update(3, None, "queued", id="r2")]))
    rows = read_workbook(path)
    assert rows[1]["job"] == "other" and rows[1].get("id") in (None, "")
    assert rows[2]["id"] == "r2" and rows[2]["status"] == "queued"


@pytest.mark.parametrize("change", ["claimed meanwhile", "job changed", "row deleted"])
def test_claim_is_skipped_when_the_row_changed(tmp_path: Path, change: str) -> None:
    path = book(tmp_path)
    backend = Workbook(path)
    assert backend.read().value(3, "id") == ""
    edits = {
        "claimed meanwhile": lambda s: s.cell(row=3, column=5, value="typed-id"),
        "row inserted above": lambda s: (s.insert_rows(3), s.cell(row=3, column=1, value="other")),
        "job changed": lambda s: s.cell(row=3, column=1, value="other"),
        "row deleted": lambda s: s.delete_rows(3),
    }
    user_edit(path, edits[change])
    before = cells(path)
    backend.write(SheetWrite(rows=[
        status_update(3, None, "queued", fill=BLUE, id="r2"),
        status_update(2, "r1", "succeeded"),  # the rest of the batch still lands
    ]))
    after = cells(path)
    assert "r2" not in after.values()
    assert {k: v for k, v in after.items() if k != (2, 6)} == \
        {k: v for k, v in before.items() if k != (2, 6)}
    assert after[(2, 6)] == "succeeded"
    assert fill_of(path, 3) != BLUE


# -- write: atomic replace ----------------------------------------------------------------------


def test_write_replaces_the_file_atomically_and_keeps_its_mode(tmp_path: Path) -> None:
    path = book(tmp_path)
    os.chmod(path, 0o640)
    inode = os.stat(path).st_ino
    Workbook(path).write(SheetWrite(rows=[status_update(2, "r1", "succeeded")]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book.xlsx"]  # no temp file left
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert os.stat(path).st_ino != inode  # a new file renamed into place, not rewritten
    assert read_workbook(path)[0]["status"] == "succeeded"


def test_a_failed_save_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    path = book(tmp_path)
    before = path.read_bytes()

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(workbook_module.os, "replace", refuse)
    with pytest.raises(SheetUnavailable) as info:
        Workbook(path).write(SheetWrite(rows=[status_update(2, "r1", "succeeded")]))
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book.xlsx"]


def test_control_characters_in_a_message_do_not_break_the_write(tmp_path: Path) -> None:
    path = book(tmp_path)
    try:
        Workbook(path).write(SheetWrite(rows=[
            status_update(2, "r1", "failed", message="\x1b[31mRuntimeError\x1b[0m: CUDA"),
        ]))
    except SheetError:
        return  # refusing cleanly is acceptable too
    assert "RuntimeError" in read_workbook(path)[0]["message"]


def test_a_formulas_value_survives_our_write(tmp_path: Path) -> None:
    path = book(tmp_path)
    with_cached_value(path, "1+1", "2")
    backend = Workbook(path)
    assert backend.read().value(2, "notes") == 2
    backend.write(SheetWrite(rows=[status_update(3, "r3", "running", job="other")]))
    assert backend.read().value(2, "notes") == 2


# -- side tabs ----------------------------------------------------------------------------------


def test_tabs_are_created_then_replaced_whole(tmp_path: Path) -> None:
    path = book(tmp_path)
    before = cells(path)
    backend = Workbook(path)
    backend.write(SheetWrite(tabs={"pool": [["host", "state", "note"],
                                            ["gpu-a", "up", "=cmd|' /C calc'!A0"],
                                            ["gpu-b", "down", 3]]}))
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["experiments", "pool"]
    pool = wb["pool"]
    assert [[c.value for c in r] for r in pool.iter_rows()] == [
        ["host", "state", "note"], ["gpu-a", "up", "=cmd|' /C calc'!A0"], ["gpu-b", "down", 3]]
    assert pool["C2"].data_type == "s"  # text from a host never becomes a formula
    assert cells(path) == before  # the experiments tab is untouched
    assert backend.read().header == HEADER  # and still the one read

    backend.write(SheetWrite(tabs={"pool": [["host", "state"], ["gpu-c", "up"]]}))
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["experiments", "pool"]
    assert [[c.value for c in r] for r in wb["pool"].iter_rows()] == [
        ["host", "state"], ["gpu-c", "up"]]


# -- write: rows found with the shared identity rule (sheet.relocate) --------------------------


def test_a_copied_row_showing_the_same_id_twice(tmp_path: Path) -> None:
    """The row still at the read row number gets the update; a copy elsewhere does not."""
    path = book(tmp_path)
    backend = Workbook(path)
    backend.read()
    user_edit(path, lambda s: s.append(["fake", 0.7, 1, "copy", "r1", "running", None]))
    backend.write(SheetWrite(rows=[status_update(2, "r1", "succeeded")]))
    rows = read_workbook(path)
    assert [(r["id"], r["status"]) for r in rows] == [
        ("r1", "succeeded"), (None, None), ("r3", "queued"), ("r1", "running")]


def test_a_copied_row_after_a_move_gets_nothing(tmp_path: Path) -> None:
    """Neither copy is at the read row number: no safe place, written next cycle."""
    path = book(tmp_path)
    backend = Workbook(path)
    backend.read()

    def move_and_copy(sheet) -> None:
        sheet.insert_rows(2)
        sheet.append(["fake", 0.7, 1, "copy", "r1", "running", None])

    user_edit(path, move_and_copy)
    before = cells(path)
    backend.write(SheetWrite(rows=[status_update(2, "r1", "succeeded")]))
    assert cells(path) == before


def test_claim_compares_a_formulas_value_not_its_text(tmp_path: Path) -> None:
    """A claim lands on a row whose parameter is a formula: the write compares the value the
    read returned, as the read returned it."""
    path = book(tmp_path, rows=[["fake", "=0.1*2", 1, None, None, None, None]])
    with_cached_value(path, "0.1*2", "0.2")
    backend = Workbook(path)
    table = backend.read()
    assert table.value(2, "--lr") == 0.2
    backend.write(SheetWrite(rows=[RowUpdate(row=2, run_id=None, cells={"id": "r9"}, job="fake",
                                             expect={"job": "fake", "--lr": "0.2", "gpus": "1"})]))
    assert read_workbook(path)[0]["id"] == "r9"
    assert cell(path, "B2").data_type == "f"  # still the user's formula


def sweep_write(claim_row: int = 3) -> SheetWrite:
    """A sweep row's claim and its children, in one batch, as `sheet.expansion` plans them."""
    expect = {"job": "fake", "--lr": "0.2", "gpus": "0"}
    return SheetWrite(
        new_columns=["sweep"],
        rows=[RowUpdate(row=claim_row, run_id=None, cells={"id": "sweep-1"}, job="fake",
                        expect=expect)],
        inserts=[RowInsert(3, [{"job": "fake", "--lr": 0.2, "sweep": "sweep-1"},
                               {"job": "fake", "--lr": 0.3, "sweep": "sweep-1"}], expect=expect)],
    )


def test_a_sweep_expands_under_its_claimed_row(tmp_path: Path) -> None:
    path = book(tmp_path)
    Workbook(path).write(sweep_write())
    rows = read_workbook(path)
    assert [(r["id"], r["sweep"]) for r in rows] == [
        ("r1", None), ("sweep-1", None), (None, "sweep-1"), (None, "sweep-1"), ("r3", None)]


def test_a_sweep_whose_claim_is_dropped_does_not_expand(tmp_path: Path) -> None:
    """Claim and children land together or not at all, or the sweep would expand twice."""
    path = book(tmp_path)
    backend = Workbook(path)
    backend.read()
    user_edit(path, lambda s: s.cell(row=3, column=5, value="typed-id"))  # same user cells
    before = cells(path)
    backend.write(sweep_write())
    after = cells(path)
    assert {k: v for k, v in after.items() if k[0] > 1} == {k: v for k, v in before.items()
                                                           if k[0] > 1}


# -- write: someone saves the file while we write it -------------------------------------------


def save_by_rename(path: Path, edit) -> None:
    """How LibreOffice and Excel save: a temp file renamed over the workbook (a new inode)."""
    wb = openpyxl.load_workbook(path)
    edit(wb.worksheets[0])
    tmp = path.with_name(".~saving.xlsx")
    wb.save(tmp)
    os.replace(tmp, path)


SAVES = {"by rename": save_by_rename, "in place": user_edit}


def save_during_our_write(monkeypatch, saves: int, how: str = "by rename") -> list[str]:
    """Make a person save (a row typed each time) after our write loaded the file and before
    it replaces it, on the first `saves` writes of the temp file. Returns what they typed."""
    typed: list[str] = []
    original = workbook_module.Workbook._save_temp

    def save_temp_then_person_saves(self, book):
        tmp = original(self, book)
        if len(typed) < saves:
            typed.append(f"typed-{len(typed)}")
            SAVES[how](self.path, lambda s: s.append(["fake", typed[-1], 1]))
        return tmp

    monkeypatch.setattr(workbook_module.Workbook, "_save_temp", save_temp_then_person_saves)
    return typed


@pytest.mark.parametrize("how", sorted(SAVES))
def test_a_save_during_our_write_is_kept(tmp_path: Path, monkeypatch, caplog, how: str) -> None:
    path = book(tmp_path)
    backend = Workbook(path)
    backend.read()
    typed = save_during_our_write(monkeypatch, saves=2, how=how)
    with caplog.at_level("INFO", logger=workbook_module.__name__):
        backend.write(SheetWrite(rows=[status_update(2, "r1", "succeeded", fill=GREEN),
                                       status_update(3, None, "queued", id="r2")]))
    rows = read_workbook(path)
    assert [r["--lr"] for r in rows[3:]] == typed == ["typed-0", "typed-1"]
    assert (rows[0]["status"], rows[1]["id"]) == ("succeeded", "r2")  # applied to their save
    assert fill_of(path, 2) == GREEN
    assert sum("saved by someone else" in r.message for r in caplog.records) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book.xlsx"]


def test_a_file_that_keeps_changing_is_unavailable_this_cycle(tmp_path: Path,
                                                              monkeypatch) -> None:
    path = book(tmp_path)
    backend = Workbook(path)
    backend.read()
    typed = save_during_our_write(monkeypatch, saves=workbook_module.WRITE_ATTEMPTS)
    with pytest.raises(SheetUnavailable) as info:
        backend.write(SheetWrite(rows=[status_update(2, "r1", "succeeded")]))
    assert str(path) in str(info.value) and "next cycle" in str(info.value)
    rows = read_workbook(path)
    assert [r["--lr"] for r in rows[3:]] == typed  # every save of theirs kept
    assert rows[0]["status"] == "running"  # ours not written; the next cycle writes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book.xlsx"]


def test_a_workbook_deleted_during_our_write_is_not_recreated(tmp_path: Path,
                                                             monkeypatch) -> None:
    path = book(tmp_path)
    original = workbook_module.Workbook._save_temp

    def save_temp_then_delete(self, book):
        tmp = original(self, book)
        self.path.unlink()
        return tmp

    monkeypatch.setattr(workbook_module.Workbook, "_save_temp", save_temp_then_delete)
    with pytest.raises(SheetError) as info:
        Workbook(path).write(SheetWrite(rows=[status_update(2, "r1", "succeeded")]))
    assert "does not exist" in str(info.value)
    assert list(tmp_path.iterdir()) == []


# -- the hidden _sheetrunner tab (namespace and lease) ----------------------------------------

META = [["sheetrunner", "own data"], ["namespace", "ns-1"], ["owner_pid", "41"]]


def test_read_without_a_meta_tab(tmp_path: Path) -> None:
    path = book(tmp_path)
    table = Workbook(path).read()
    assert table.meta is None
    assert table.source == str(path.resolve())
    assert Workbook(tmp_path / "." / "book.xlsx").read().source == table.source  # one name


def test_meta_tab_round_trips_hidden_and_is_not_the_experiments_tab(tmp_path: Path) -> None:
    path = book(tmp_path)
    backend = Workbook(path)
    backend.write(SheetWrite(meta=META, meta_expect=None))
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["experiments", META_TAB]
    assert wb[META_TAB].sheet_state == "hidden"
    assert wb[META_TAB]["B3"].data_type == "s"  # "41" stays text
    table = backend.read()
    assert table.meta == {"sheetrunner": "own data", "namespace": "ns-1", "owner_pid": "41"}
    assert table.header == HEADER

    # a person drags the hidden tab first: the default tab is still the experiments tab
    user_edit(path, lambda s: s.parent.move_sheet(META_TAB, offset=-1))
    assert openpyxl.load_workbook(path).sheetnames[0] == META_TAB
    assert backend.read().header == HEADER


def test_meta_write_is_compare_and_set(tmp_path: Path, caplog) -> None:
    path = book(tmp_path)
    backend = Workbook(path)
    backend.write(SheetWrite(meta=META, meta_expect=None))
    mine = backend.read().meta
    renewed = [*META[:2], ["owner_pid", "42"]]
    backend.write(SheetWrite(meta=renewed, meta_expect=mine))
    assert backend.read().meta["owner_pid"] == "42"

    # another daemon took the tab meanwhile: our stale write of it is dropped, the rest lands
    with caplog.at_level("INFO", logger=workbook_module.__name__):
        backend.write(SheetWrite(rows=[status_update(2, "r1", "succeeded")],
                                 meta=[*META[:2], ["owner_pid", "99"]], meta_expect=mine))
    assert backend.read().meta["owner_pid"] == "42"
    assert read_workbook(path)[0]["status"] == "succeeded"
    assert any(META_TAB in r.message and "changed" in r.message for r in caplog.records)

    # expecting no tab while one exists is stale too
    backend.write(SheetWrite(meta=[["namespace", "ns-2"]], meta_expect=None))
    assert backend.read().meta["namespace"] == "ns-1"


def test_meta_is_written_only_through_meta(tmp_path: Path) -> None:
    """A side tab named like the meta tab would bypass compare-and-set: it is ignored."""
    path = book(tmp_path)
    Workbook(path).write(SheetWrite(tabs={META_TAB: [["namespace", "sneaky"]]}))
    assert META_TAB not in openpyxl.load_workbook(path).sheetnames


def test_meta_compare_and_set_sees_a_save_during_our_write(tmp_path: Path, monkeypatch) -> None:
    """Another daemon's lease saved while we write: after the reload our meta is stale."""
    path = book(tmp_path)
    backend = Workbook(path)
    original = workbook_module.Workbook._save_temp
    calls: list[int] = []

    def their_lease_lands(self, book):
        tmp = original(self, book)
        if not calls:
            calls.append(1)
            Workbook(self.path).write(SheetWrite(meta=[["namespace", "theirs"]], meta_expect=None))
        return tmp

    monkeypatch.setattr(workbook_module.Workbook, "_save_temp", their_lease_lands)
    backend.write(SheetWrite(meta=META, meta_expect=None))
    assert backend.read().meta == {"namespace": "theirs"}


# -- initialize ---------------------------------------------------------------------------------

INIT_HEADER = ["job", "--lr", "gpus", "action", "id", "status"]


def validations(path: Path, tab: int = 0) -> dict[str, str]:
    sheet = openpyxl.load_workbook(path).worksheets[tab]
    return {str(dv.sqref): dv.formula1 for dv in sheet.data_validations.dataValidation}


def test_initialize_creates_a_workbook(tmp_path: Path) -> None:
    path = tmp_path / "new.xlsx"
    Workbook(path).initialize(INIT_HEADER, ["fake", "digits"])
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["experiments"]
    sheet = wb.worksheets[0]
    assert [c.value for c in sheet[1]] == INIT_HEADER
    assert sheet.max_row == 1
    assert sheet.freeze_panes == "A2"
    rules = validations(path)
    assert rules == {"D2:D10000": '"run,hold,stop,rerun"', "A2:A10000": '"fake,digits"'}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.xlsx"]
    assert Workbook(path).read() == Table(header=INIT_HEADER, rows=[], meta=None,
                                          source=str(path.resolve()))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # a document, not a private temp file


def test_initialize_names_the_tab_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "new.xlsx"
    Workbook(path, "runs").initialize(["job", "id"], [])
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["runs"]
    assert validations(path) == {}  # no job names: no empty dropdown
    assert Workbook(path, "runs").read().header == ["job", "id"]


def test_initialize_fills_an_empty_existing_tab(tmp_path: Path) -> None:
    path = tmp_path / "blank.xlsx"
    openpyxl.Workbook().save(path)
    Workbook(path).initialize(INIT_HEADER, ["fake"])
    sheet = openpyxl.load_workbook(path).worksheets[0]
    assert [c.value for c in sheet[1]] == INIT_HEADER
    assert sheet.freeze_panes == "A2"
    assert validations(path)["A2:A10000"] == '"fake"'


def test_initialize_on_data_only_adds_missing_columns_at_the_right(tmp_path: Path) -> None:
    path = write_workbook(tmp_path / "book.xlsx", ["notes", "job", "gpus"], [
        ["first", "fake", 1],
        ["=1+1", "fake", 0],
    ])
    before = cells(path)
    Workbook(path).initialize(INIT_HEADER, ["fake"])
    after = cells(path)
    assert Workbook(path).read().header == ["notes", "job", "gpus", "--lr", "action", "id",
                                            "status"]
    assert {k: v for k, v in after.items() if k[0] > 1} == {k: v for k, v in before.items()
                                                           if k[0] > 1}
    assert cell(path, "A3").data_type == "f"
    # idempotent: a second init adds nothing
    Workbook(path).initialize(INIT_HEADER, ["fake"])
    assert cells(path) == after
