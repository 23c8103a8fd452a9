"""An in-memory sheet backend: the contract in its plainest form.

It exists so the contract tests state what a backend must do without any
IO in the way, and so the daemon's rules can be tried against a sheet that
cannot be slow or fail. Writes are placed with `sheet.relocate.locate`
against the sheet as it is at that moment, exactly as the real backends do
after their re-read, and the `_sheetrunner` tab is compare-and-set (exactly
so here: a write is atomic).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from sheetrunner.sheet.lease import META_TAB, meta_from_rows
from sheetrunner.sheet.relocate import locate, rows_showing, shown
from sheetrunner.sheet.table import RowInsert, SheetWrite, Table


@dataclass
class MemoryBook:
    """The sheet itself, shared by every `MemorySheet` opened on it (two daemons, one sheet)."""

    header: list[str]
    rows: list[list[Any]]
    fills: list[str | None] = field(default_factory=list)  # per row, moving with it
    tabs: dict[str, list[list[Any]]] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)
    source: str = "memory:sheet"

    def __post_init__(self) -> None:
        self.fills = self.fills or [None] * len(self.rows)

    def table(self) -> Table:
        """A copy of the experiments tab as a read returns it."""
        meta = meta_from_rows(self.tabs[META_TAB]) if META_TAB in self.tabs else None
        return Table(list(self.header), copy.deepcopy(self.rows), meta=meta, source=self.source)

    def put(self, row: int, name: str, value: Any) -> None:
        """Set sheet row `row`'s cell under `name` (the row must exist)."""
        cells = self.rows[row - 2]
        col = self.header.index(name)
        cells.extend([""] * (col + 1 - len(cells)))
        cells[col] = value


class MemorySheet:
    """A `SheetBackend` over a `MemoryBook`."""

    def __init__(self, book: MemoryBook) -> None:
        self.book = book

    def read(self) -> Table:
        return self.book.table()

    def write(self, change: SheetWrite) -> None:
        fresh = self.book.table()
        self.book.header += [n for n in dict.fromkeys(change.new_columns)
                             if n not in self.book.header]
        if change.meta is not None and fresh.meta == change.meta_expect:
            self._replace_tab(META_TAB, change.meta)
        for name, rows in change.tabs.items():
            if name != META_TAB:
                self._replace_tab(name, rows)
        by_id = rows_showing(fresh)
        for update in change.rows:
            row = locate(update, fresh, by_id)
            if row is None:
                continue
            for name, value in update.cells.items():
                if name in self.book.header:
                    self.book.put(row, name, value)
            if update.fill is not None:
                self.book.fills[row - 2] = update.fill or None
        for insert in sorted(change.inserts, key=lambda i: -i.after_row):
            self._insert(insert, fresh)

    def initialize(self, header: list[str], job_names: list[str]) -> None:
        self.book.header += [h for h in header if h not in self.book.header]

    def _replace_tab(self, name: str, rows: list[list[Any]]) -> None:
        self.book.tabs[name] = copy.deepcopy(rows)
        if name.startswith("_"):
            self.book.hidden.add(name)

    def _insert(self, insert: RowInsert, fresh: Table) -> None:
        if not all(shown(fresh, insert.after_row, n) == v for n, v in insert.expect.items()):
            return
        at = insert.after_row - 1  # index in `rows` of the first new row
        for offset, values in enumerate(insert.rows):
            cells = [values.get(name, "") for name in self.book.header]
            self.book.rows.insert(at + offset, cells)
            self.book.fills.insert(at + offset, None)
