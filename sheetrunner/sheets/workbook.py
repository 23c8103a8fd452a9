"""The local .xlsx workbook backend: the embedded default, no cloud account needed.

A person may have the workbook open in LibreOffice or Excel while the daemon
runs. So every write re-reads the file first (keeping what they saved since
our read), finds each row again by its `id`, changes only owned cells and row
fills, and replaces the file atomically (temp file, fsync, rename). If their
program later saves a stale copy over ours, the next cycle sees owned cells
that differ from the truth and writes them again.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import openpyxl
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import PatternFill
from openpyxl.worksheet.datavalidation import DataValidation
from openpyxl.worksheet.worksheet import Worksheet

from ..errors import SheetError, SheetUnavailable
from ..sheet.schema import cell_text
from ..sheet.table import RowInsert, RowUpdate, SheetWrite, Sparkline, Table, UnsavedFormula

log = logging.getLogger(__name__)


class Workbook:
    """One tab of a local .xlsx file."""

    def __init__(self, path: Path, worksheet: str | None = None):
        self.path = Path(path)
        self.worksheet = worksheet
        # openpyxl cannot compute formulas and drops the values a spreadsheet program saved
        # with them; remember those values across our own saves: (cell, formula) -> value.
        self._formula_values: dict[tuple[str, str], Any] = {}

    # -- reading ------------------------------------------------------------------------------

    def read(self) -> Table:
        values = self._tab(self._load(data_only=True))  # formulas' values, as last saved
        formulas = self._tab(self._load(data_only=False))
        self._remember_formulas(formulas, values)
        rows = [list(r) for r in values.iter_rows(values_only=True)]
        if not rows:
            return Table(header=[], rows=[])
        for cell, formula in _formula_cells(formulas):
            if values[cell].value is None:
                known = self._formula_values.get((cell, formula))
                value = known if known is not None else UnsavedFormula(cell, formula)
                rows[values[cell].row - 1][values[cell].column - 1] = value
        header = [str(h).strip() if h is not None else "" for h in rows[0]]
        return Table(header=header, rows=_trim(rows[1:]))

    def _remember_formulas(self, formulas: Worksheet, values: Worksheet) -> None:
        for cell, formula in _formula_cells(formulas):
            if values[cell].value is not None:
                self._formula_values[(cell, formula)] = values[cell].value

    def _load(self, data_only: bool) -> openpyxl.Workbook:
        if not self.path.exists():
            raise SheetError(
                f"workbook {self.path} does not exist; create it with `sheetrunner init -c CONFIG` "
                "or fix [sheet] path in the config"
            )
        try:
            return openpyxl.load_workbook(self.path, data_only=data_only)
        except (zipfile.BadZipFile, KeyError, OSError, EOFError, ET.ParseError, ValueError) as exc:
            # Usually caught mid-save by the person's editor: try again next cycle.
            raise SheetUnavailable(f"could not read {self.path}: {exc}") from None

    def _tab(self, book: openpyxl.Workbook) -> Worksheet:
        if self.worksheet is None:
            return book.worksheets[0]
        if self.worksheet not in book.sheetnames:
            raise SheetError(
                f"workbook {self.path} has no tab {self.worksheet!r} (tabs: "
                f"{', '.join(book.sheetnames)}); fix [sheet] worksheet in the config"
            )
        return book[self.worksheet]

    # -- writing ------------------------------------------------------------------------------

    def write(self, change: SheetWrite) -> None:
        if change.is_empty():
            return
        book = self._load(data_only=False)  # keep formulas as formulas when saving
        sheet = self._tab(book)
        self._remember_formulas(sheet, self._tab(self._load(data_only=True)))
        columns = _header_columns(sheet, change.new_columns)
        rows_by_id = _rows_by_id(sheet, columns.get("id"))
        width = max(sheet.max_column, len(columns))
        for update in change.rows:
            row = _locate(sheet, update, rows_by_id, columns)
            if row is None:
                log.info("row %s moved or changed since it was read; writing it next cycle", update.row)
                continue
            _write_row(sheet, row, update, columns, width)
        for insert in sorted(change.inserts, key=lambda i: -i.after_row):
            _insert_rows(sheet, insert, columns)
        for name, values in change.tabs.items():
            _replace_tab(book, name, values)
        self._save(book)

    def _save(self, book: openpyxl.Workbook) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".sheetrunner-", suffix=".xlsx")
        os.close(fd)
        try:
            book.save(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            if self.path.exists():
                os.chmod(tmp, self.path.stat().st_mode & 0o777)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise SheetUnavailable(f"could not write {self.path}: {exc}") from None
        finally:
            Path(tmp).unlink(missing_ok=True)

    # -- sheetrunner init ---------------------------------------------------------------------

    def initialize(self, header: list[str], job_names: list[str]) -> None:
        """Create the workbook with its header, or add missing columns to an existing one."""
        if self.path.exists():
            book = self._load(data_only=False)
            sheet = self._tab(book)
        else:
            book = openpyxl.Workbook()
            sheet = book.active
            sheet.title = self.worksheet or "experiments"
        present = [c.value for c in sheet[1]] if sheet.max_row >= 1 else []
        empty = not any(v not in (None, "") for v in present)
        missing = header if empty else [h for h in header if h not in present]
        start = 1 if empty else len(present) + 1
        for offset, name in enumerate(missing):
            sheet.cell(row=1, column=start + offset, value=name)
        if empty:
            sheet.freeze_panes = "A2"
            _dropdowns(sheet, header, job_names)
        self._save(book)


def _trim(rows: list[list[Any]]) -> list[list[Any]]:
    """Drop trailing empty rows (openpyxl reports formatted but empty rows too)."""
    while rows and all(v in (None, "") for v in rows[-1]):
        rows.pop()
    return rows


def _header_columns(sheet: Worksheet, new_columns: list[str]) -> dict[str, int]:
    """Header name -> 1-based column, after adding `new_columns` at the right."""
    columns: dict[str, int] = {}
    last = 0
    for cell in sheet[1]:
        if cell.value not in (None, ""):
            columns.setdefault(str(cell.value).strip(), cell.column)
            last = max(last, cell.column)
    for name in new_columns:
        if name not in columns:
            last += 1
            sheet.cell(row=1, column=last, value=name)
            columns[name] = last
    return columns


def _rows_by_id(sheet: Worksheet, id_column: int | None) -> dict[str, int]:
    if id_column is None:
        return {}
    found: dict[str, int] = {}
    for row in range(2, sheet.max_row + 1):
        value = sheet.cell(row=row, column=id_column).value
        if value not in (None, ""):
            found.setdefault(str(value).strip(), row)
    return found


def _locate(sheet: Worksheet, update: RowUpdate, rows_by_id: dict[str, int],
            columns: dict[str, int]) -> int | None:
    """The row to write now: found by id, or for a claim, the same row if still unclaimed."""
    if update.run_id:
        return rows_by_id.get(update.run_id)
    id_col = columns.get("id")
    shown_id = sheet.cell(row=update.row, column=id_col).value if id_col else None
    expect = update.expect or {"job": update.job}
    same = all(
        _shown(sheet, update.row, columns.get(name)) == value for name, value in expect.items()
    )
    return update.row if shown_id in (None, "") and same else None


def _shown(sheet: Worksheet, row: int, column: int | None) -> str:
    return cell_text(sheet.cell(row=row, column=column).value).strip() if column else ""


def _formula_cells(sheet: Worksheet) -> list[tuple[str, str]]:
    return [
        (cell.coordinate, str(cell.value))
        for row in sheet.iter_rows()
        for cell in row
        if cell.data_type == "f"
    ]


def _clean(value: Any) -> Any:
    """Text without the control characters an .xlsx cannot hold (ANSI colours in a traceback).

    A curve becomes text (▁▃▅▇): openpyxl cannot write spreadsheet sparklines."""
    if isinstance(value, Sparkline):
        return value.text()
    return ILLEGAL_CHARACTERS_RE.sub("", value) if isinstance(value, str) else value


def _write_row(sheet: Worksheet, row: int, update: RowUpdate, columns: dict[str, int],
               width: int) -> None:
    for name, value in update.cells.items():
        cell = sheet.cell(row=row, column=columns[name])
        cell.value = _clean(value)
        if isinstance(cell.value, str):
            cell.data_type = "s"  # our text is never a formula, even if it starts with '='
    if update.fill:
        fill = PatternFill(start_color=update.fill, end_color=update.fill, fill_type="solid")
        for col in range(1, width + 1):
            sheet.cell(row=row, column=col).fill = fill


def _insert_rows(sheet: Worksheet, insert: RowInsert, columns: dict[str, int]) -> None:
    """Put new rows under `after_row`, if that row still shows what was read."""
    if any(_shown(sheet, insert.after_row, columns.get(k)) != v for k, v in insert.expect.items()):
        log.info("row %s changed since it was read; inserting its rows next cycle", insert.after_row)
        return
    sheet.insert_rows(insert.after_row + 1, len(insert.rows))
    for offset, values in enumerate(insert.rows, start=1):
        for name, value in values.items():
            if name in columns:
                cell = sheet.cell(row=insert.after_row + offset, column=columns[name])
                cell.value = _clean(value)
                if isinstance(value, str):
                    cell.data_type = "s"


def _replace_tab(book: openpyxl.Workbook, name: str, values: list[list[Any]]) -> None:
    if name in book.sheetnames:
        del book[name]
    sheet = book.create_sheet(name)
    if name.startswith("_"):
        sheet.sheet_state = "hidden"  # sheetrunner's own data (e.g. _metrics), not for reading
    for row in values:
        sheet.append([_clean(v) for v in row])
    for row in sheet.iter_rows():
        for cell in row:
            if isinstance(cell.value, str):
                cell.data_type = "s"


def _dropdowns(sheet: Worksheet, header: list[str], job_names: list[str]) -> None:
    choices = {"action": ["run", "hold", "stop", "rerun"], "job": job_names}
    for name, options in choices.items():
        if name not in header or not options:
            continue
        letter = openpyxl.utils.get_column_letter(header.index(name) + 1)
        rule = DataValidation(type="list", formula1='"' + ",".join(options) + '"', allow_blank=True)
        sheet.add_data_validation(rule)
        rule.add(f"{letter}2:{letter}10000")
