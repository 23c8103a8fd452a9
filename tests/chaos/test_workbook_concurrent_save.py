"""A person's spreadsheet program saving the workbook again and again while the daemon writes.

The saver runs in its own process and does what LibreOffice or Excel do: load
the file, add a typed row, save to a temp file and rename it over the
workbook. Meanwhile the backend writes owned cells of existing rows in a tight
loop. Nothing either side saved may be lost: before the stat check in
`Workbook.write`, one typed row in 40 saves vanished under our rename.

Two savers. A careless one saves its copy whatever happened meanwhile, as
most programs do: a write of ours it overwrites is the documented stale-copy
case that the next cycle puts right, so with it only the typed rows are
checked. A careful one (like LibreOffice's "modified outside" check) starts
its edit again when the file changed under it: then every write of ours that
reported success must still be in the file at the end as well.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from collections import Counter
from pathlib import Path

import openpyxl
import pytest

from sheetrunner.errors import SheetUnavailable
from sheetrunner.sheet.table import RowUpdate, SheetWrite
from sheetrunner.sheets import workbook as workbook_module
from sheetrunner.sheets.workbook import Workbook

HEADER = ["job", "--lr", "id", "status", "message"]
EXISTING_ROWS = 40
SAVES = 40
DEADLINE_S = 120  # far above the few seconds it takes; only a hang reaches it


def make_workbook(path: Path) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "experiments"
    sheet.append(HEADER)
    for n in range(1, EXISTING_ROWS + 1):
        sheet.append(["fake", n / 100, f"r{n}", "queued", ""])
    book.save(path)
    return path


def file_stamp(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def spreadsheet_program(path: str, saves: int, careful: bool) -> None:
    """Type one row per save; a careful program starts the edit again if the file changed."""
    target = Path(path)
    for n in range(saves):
        while True:
            loaded = file_stamp(target)
            book = openpyxl.load_workbook(target)
            book.worksheets[0].append(["fake", f"typed-{n}"])
            tmp = target.with_name(f".~lock-{n}.xlsx")
            book.save(tmp)
            if careful and file_stamp(target) != loaded:
                tmp.unlink()
                continue
            os.replace(tmp, target)
            break
        time.sleep(random.uniform(0, 0.01))  # vary the phase against the daemon's writes


def write_until_done(backend: Workbook, saver: multiprocessing.Process) -> tuple[dict[int, int], int]:
    """Owned-cell writes for existing rows, one after another, until the saver is done.

    Returns row -> the last write that reported success there, and the failed writes."""
    last_success: dict[int, int] = {}
    failed = 0
    write = 0
    deadline = time.monotonic() + DEADLINE_S
    while saver.is_alive() and time.monotonic() < deadline:
        write += 1
        row = 2 + write % EXISTING_ROWS
        update = RowUpdate(row=row, run_id=f"r{row - 1}", cells={"message": f"write-{write}"})
        try:
            backend.write(SheetWrite(rows=[update]))
        except SheetUnavailable:
            failed += 1  # the file kept changing: the next cycle writes it
            continue
        last_success[row] = write
    return last_success, failed


def rows_of(path: Path) -> list[dict[str, object]]:
    sheet = openpyxl.load_workbook(path).worksheets[0]
    values = list(sheet.iter_rows(values_only=True))
    return [dict(zip(HEADER, r, strict=False)) for r in values[1:]]


@pytest.mark.parametrize("careful", [True, False], ids=["careful saver", "careless saver"])
def test_concurrent_saves_and_writes_lose_nothing(tmp_path: Path, caplog, careful: bool) -> None:
    path = make_workbook(tmp_path / "book.xlsx")
    backend = Workbook(path)
    backend.read()
    saver = multiprocessing.get_context("spawn").Process(
        target=spreadsheet_program, args=(str(path), SAVES, careful))
    with caplog.at_level("INFO", logger=workbook_module.__name__):
        saver.start()
        try:
            last_success, failed = write_until_done(backend, saver)
        finally:
            saver.join(timeout=DEADLINE_S)
            if saver.is_alive():
                saver.terminate()
    assert saver.exitcode == 0

    rows = rows_of(path)
    typed = Counter(r["--lr"] for r in rows if str(r["--lr"]).startswith("typed-"))
    assert typed == Counter(f"typed-{n}" for n in range(SAVES))  # each typed row, once
    assert [r["id"] for r in rows[:EXISTING_ROWS]] == [f"r{n}" for n in range(1, EXISTING_ROWS + 1)]
    assert last_success, "no write of ours succeeded"
    if careful:
        for row, write in last_success.items():
            assert rows[row - 2]["message"] == f"write-{write}"
    retried = sum("saved by someone else" in r.message for r in caplog.records)
    print(f"\n{len(last_success)} rows written, {failed} writes gave up, {retried} retried")
