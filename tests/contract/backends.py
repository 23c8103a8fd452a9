"""The backends the contract runs against: one factory each, named in BACKENDS.

A factory is a context manager `factory(rows, tmp_path)` yielding a harness
on a new sheet whose experiments tab holds `rows` (header first). The harness
has the backend as `sheet`, and acts on the sheet as a person would, behind
the backend's back: `sort_rows(key_column)`, `delete_row(row)`,
`set_cell(row, header, value)`, `cell(row, header)`, plus `tab_hidden(name)`,
`tab_rows(name)` and `open_again()` (a second backend on the same sheet, as a
second daemon would have). Adding a backend is one factory and one line in
BACKENDS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import openpyxl
from sheets_emulator import SheetsEmulator

from sheetrunner.sheet.schema import cell_text
from sheetrunner.sheets.google import GoogleSheet
from sheetrunner.sheets.workbook import Workbook

from .memory_sheet import MemoryBook, MemorySheet

TAB = "Runs"


# ---------------------------------------------------------------- memory


class MemoryHarness:
    def __init__(self, rows: list[list[Any]]) -> None:
        self.book = MemoryBook([str(h) for h in rows[0]], [list(r) for r in rows[1:]])
        self.sheet = MemorySheet(self.book)

    def open_again(self) -> MemorySheet:
        return MemorySheet(self.book)

    def sort_rows(self, key_column: str) -> None:
        """Numbers first, then text, blanks last, like a spreadsheet's sort."""
        col = self.book.header.index(key_column)

        def key(pair: tuple[list[Any], str | None]) -> tuple[int, Any]:
            value = pair[0][col] if col < len(pair[0]) else ""
            if isinstance(value, int | float) and not isinstance(value, bool):
                return (0, value)
            return (1, str(value).lower()) if value not in ("", None) else (2, "")

        pairs = sorted(zip(self.book.rows, self.book.fills, strict=True), key=key)
        self.book.rows = [r for r, _ in pairs]
        self.book.fills = [f for _, f in pairs]

    def delete_row(self, row: int) -> None:
        del self.book.rows[row - 2]
        del self.book.fills[row - 2]

    def set_cell(self, row: int, header: str, value: Any) -> None:
        self.book.put(row, header, value)

    def cell(self, row: int, header: str) -> Any:
        return self.book.table().value(row, header)

    def tab_hidden(self, name: str) -> bool:
        return name in self.book.hidden

    def tab_rows(self, name: str) -> list[list[str]]:
        return [[cell_text(v) for v in r] for r in self.book.tabs.get(name, [])]


@contextmanager
def memory(rows: list[list[Any]], tmp_path: Path) -> Iterator[MemoryHarness]:
    yield MemoryHarness(rows)


# ---------------------------------------------------------------- Google, on the emulator


class GoogleHarness:
    def __init__(self, emu: SheetsEmulator, rows: list[list[Any]]) -> None:
        self.emu = emu
        self.key = emu.create_spreadsheet({TAB: rows})
        self.sheet = self.open_again()

    def open_again(self) -> GoogleSheet:
        return GoogleSheet(self.key, TAB, credentials="none", endpoint=self.emu.url,
                           timeout_s=5, max_attempts=3, backoff_base_s=0.001)

    def sort_rows(self, key_column: str) -> None:
        self.emu.sort_rows(key_column, tab=TAB, spreadsheet_id=self.key)

    def delete_row(self, row: int) -> None:
        self.emu.delete_row(row, tab=TAB, spreadsheet_id=self.key)

    def set_cell(self, row: int, header: str, value: Any) -> None:
        self.emu.set_cell(self._a1(row, header), value, tab=TAB, spreadsheet_id=self.key)

    def cell(self, row: int, header: str) -> Any:
        return self.emu.cell(self._a1(row, header), tab=TAB, spreadsheet_id=self.key).value

    def tab_hidden(self, name: str) -> bool:
        props = self.emu.sheet_properties(name, spreadsheet_id=self.key)
        return bool(props.get("hidden"))

    def tab_rows(self, name: str) -> list[list[str]]:
        if name not in self.emu.tabs(self.key):
            return []
        values = self.emu.values(tab=name, spreadsheet_id=self.key)
        return [[cell_text(v) for v in r] for r in values]

    def _a1(self, row: int, header: str) -> str:
        col = self.emu.values(tab=TAB, spreadsheet_id=self.key)[0].index(header)
        letters = ""
        col += 1
        while col:
            col, rest = divmod(col - 1, 26)
            letters = chr(65 + rest) + letters
        return f"{letters}{row}"


@contextmanager
def google(rows: list[list[Any]], tmp_path: Path) -> Iterator[GoogleHarness]:
    with SheetsEmulator() as emu:
        yield GoogleHarness(emu, rows)


# ---------------------------------------------------------------- workbook


class WorkbookHarness:
    """The local .xlsx backend; the person's side edits the file with openpyxl, as their
    spreadsheet program would save it."""

    def __init__(self, rows: list[list[Any]], tmp_path: Path):
        self.path = tmp_path / "book.xlsx"
        book = openpyxl.Workbook()
        sheet = book.active
        sheet.title = TAB
        for row in rows:
            sheet.append(list(row))
        book.save(self.path)
        self.sheet = self.open_again()

    def open_again(self) -> Workbook:
        return Workbook(self.path, TAB)

    def _edit(self, change: Callable[[Any], None]) -> None:
        book = openpyxl.load_workbook(self.path)
        change(book[TAB])
        book.save(self.path)

    @staticmethod
    def _column(sheet: Any, header: str) -> int:
        return [c.value for c in sheet[1]].index(header) + 1

    def sort_rows(self, key_column: str) -> None:
        def sort(sheet: Any) -> None:
            col = self._column(sheet, key_column) - 1
            rows = [[c.value for c in r] for r in sheet.iter_rows(min_row=2)]
            rows.sort(key=lambda r: _sort_key(r[col] if col < len(r) else None))
            for i, values in enumerate(rows, start=2):
                for j, value in enumerate(values, start=1):
                    sheet.cell(row=i, column=j).value = value

        self._edit(sort)

    def delete_row(self, row: int) -> None:
        self._edit(lambda sheet: sheet.delete_rows(row))

    def set_cell(self, row: int, header: str, value: Any) -> None:
        def put(sheet: Any) -> None:
            sheet.cell(row=row, column=self._column(sheet, header)).value = value

        self._edit(put)

    def cell(self, row: int, header: str) -> Any:
        sheet = openpyxl.load_workbook(self.path)[TAB]
        value = sheet.cell(row=row, column=self._column(sheet, header)).value
        return "" if value is None else value

    def tab_hidden(self, name: str) -> bool:
        book = openpyxl.load_workbook(self.path)
        return name in book.sheetnames and book[name].sheet_state == "hidden"

    def tab_rows(self, name: str) -> list[list[str]]:
        book = openpyxl.load_workbook(self.path)
        if name not in book.sheetnames:
            return []
        return [[cell_text(v) for v in r] for r in book[name].iter_rows(values_only=True)]


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value).lower()) if value not in ("", None) else (2, "")


@contextmanager
def workbook(rows: list[list[Any]], tmp_path: Path) -> Iterator[WorkbookHarness]:
    yield WorkbookHarness(rows, tmp_path)


Factory = Callable[[list[list[Any]], Path], AbstractContextManager[Any]]

BACKENDS: dict[str, Factory] = {
    "memory": memory,
    "google": google,
    "workbook": workbook,
}
