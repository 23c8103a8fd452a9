"""A person sorts the tab between a cycle's read and its write: nothing lands on a wrong row.

End to end at the backend level: the real emulator over HTTP, gspread
unmodified, GoogleSheet as the daemon builds it. The updates are planned
against the first read, as a cycle plans them; the sort happens while the
cycle is busy probing and launching. Every update must land on the row
showing its id, every claim only on a row still showing what was read, and
no other cell, value or colour, may change.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from sheets_emulator import SheetsEmulator

from sheetrunner.sheet.schema import cell_text
from sheetrunner.sheet.table import RowUpdate, SheetWrite, Table
from sheetrunner.sheets.google import ENDPOINT_ENV, GoogleSheet

TAB = "Runs"
HEADER = ["job", "--lr", "--seed", "action", "id", "status", "host", "message"]
USER = ["job", "--lr", "--seed", "action"]
ROWS = 40


@pytest.fixture
def emu(monkeypatch):
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    with SheetsEmulator() as emulator:
        yield emulator


def experiments(seed: int) -> list[list[Any]]:
    """Rows with distinct learning rates, two in three already claimed and running."""
    rng = random.Random(seed)
    lrs = rng.sample(range(1, 1000), ROWS)
    rows = []
    for i, lr in enumerate(lrs):
        claimed = [f"run-{i:02d}", "running", f"gpu{i % 4}"] if i % 3 else []
        rows.append(["mnist", lr / 1000, rng.randrange(5), "", *claimed])
    return rows


def planned(table: Table) -> list[RowUpdate]:
    """What a cycle would write after that read: a status for every claimed row, a claim for
    every unclaimed one (with the user cells it read, as the schema plans claims)."""
    updates = []
    for row in range(2, len(table.rows) + 2):
        run_id = cell_text(table.value(row, "id")).strip()
        if run_id:
            updates.append(RowUpdate(row, run_id, {"status": f"done {run_id}", "message": ""},
                                     fill="D9EAD3"))
        else:
            expect = {n: cell_text(table.value(row, n)).strip() for n in USER}
            updates.append(RowUpdate(row, None, {"id": f"new-{row}", "status": "queued"},
                                     fill="EFEFEF", job="mnist", expect=expect))
    return updates


def grid(emu: SheetsEmulator) -> list[dict[str, Any]]:
    """Every row as header -> (value, background), the way a person sees the tab."""
    header, *rows = emu.values(tab=TAB)
    shown = []
    for r, values in enumerate(rows, start=2):
        cells = {h: (values[c] if c < len(values) else "") for c, h in enumerate(header)}
        cells["background"] = emu.cell(f"A{r}", tab=TAB).background
        shown.append(cells)
    return shown


def user_cells(row: dict[str, Any]) -> dict[str, str]:
    return {n: cell_text(row[n]).strip() for n in USER}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("sort_by, descending", [("--lr", False), ("--lr", True),
                                                 ("--seed", False), ("status", True)])
def test_a_sort_between_read_and_write_sends_every_update_to_its_own_row(
    emu, seed, sort_by, descending
):
    key = emu.create_spreadsheet({TAB: [HEADER, *experiments(seed)]})
    sheet = GoogleSheet(key, TAB, credentials="none", endpoint=emu.url, timeout_s=5)
    table = sheet.read()
    updates = planned(table)
    emu.sort_rows(sort_by, descending=descending, tab=TAB)  # as a person would, mid-cycle
    before = grid(emu)
    sheet.write(SheetWrite(rows=updates))
    after = grid(emu)

    assert [user_cells(r) for r in after] == [user_cells(r) for r in before]  # no row moved
    claims = {f"new-{u.row}": u for u in updates if u.run_id is None}
    for old, new in zip(before, after, strict=True):
        run_id = cell_text(old["id"]).strip()
        if run_id:  # claimed before: its own update, and nothing else
            assert new["id"] == run_id
            assert (new["status"], new["message"]) == (f"done {run_id}", "")
            assert new["host"] == old["host"] and new["background"] == "D9EAD3"
        elif new["id"]:  # a claim landed: only where the row shows what the claim read
            assert user_cells(new) == claims[new["id"]].expect
            assert new["status"] == "queued" and new["background"] == "EFEFEF"
        else:  # a claim dropped because its row moved: untouched
            assert new == old


def test_the_unmoved_sheet_gets_every_update_and_claim(emu):
    """The control case: with no sort, every planned cell lands where it was planned."""
    key = emu.create_spreadsheet({TAB: [HEADER, *experiments(7)]})
    sheet = GoogleSheet(key, TAB, credentials="none", endpoint=emu.url, timeout_s=5)
    updates = planned(sheet.read())
    sheet.write(SheetWrite(rows=updates))
    after = grid(emu)
    for update in updates:
        row = after[update.row - 2]
        assert row["status"] == update.cells["status"]
        assert row["id"] == (update.run_id or update.cells["id"])
    assert emu.counts["spreadsheets.batchUpdate"] == 1
