"""The interface every sheet backend implements, and the data it moves.

A backend does IO and decides nothing: once a cycle the daemon calls `read()`
for the whole table, and at most once `write()` with only the owned cells whose
value differs from what that read returned. Which cells those are is decided
in `rows.py`; a backend never compares values itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Table:
    """The whole experiments tab as read this cycle.

    `rows[i]` is sheet row `i + 2` (row 1 is the header). Rows may be ragged:
    trailing empty cells can be missing. Values are the typed values the
    sheet holds (numbers stay numbers; a formula's computed value, not its text).
    """

    header: list[str]
    rows: list[list[Any]]
    # The hidden `_sheetrunner` tab as key -> value text (None: the tab does not exist).
    # It holds the sheet's namespace and its owner's lease (sheet/lease.py).
    meta: dict[str, str] | None = None
    # What this sheet is (a spreadsheet's key, a workbook's absolute path): a copied sheet
    # shows the original's `_sheetrunner` tab, and this tells the copy apart.
    source: str = ""

    def column(self, name: str) -> int | None:
        """0-based index of the column with this header, or None."""
        try:
            return self.header.index(name)
        except ValueError:
            return None

    def value(self, row: int, name: str) -> Any:
        """The value at sheet row `row` under header `name` ('' when absent)."""
        col = self.column(name)
        cells = self.rows[row - 2] if 0 <= row - 2 < len(self.rows) else []
        if col is None or col >= len(cells) or cells[col] is None:
            return ""
        return cells[col]


@dataclass(frozen=True)
class UnsavedFormula:
    """A formula cell whose computed value the file does not hold (the workbook was last
    saved by a program that does not compute formulas). Rows holding one are invalid
    until a spreadsheet program saves the file again."""

    cell: str
    formula: str


SPARK_BLOCKS = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class Sparkline:
    """A metric's curve for a row's `curve` cell. Each backend draws it as it can: Google
    Sheets as a =SPARKLINE formula over the run's row in a hidden tab, a workbook as text."""

    values: tuple[float, ...]
    source_tab: str  # the hidden tab holding the values, from column B on
    source_row: int

    def formula(self) -> str:
        last = _column_letter(1 + max(1, len(self.values)))
        return f"=SPARKLINE('{self.source_tab}'!B{self.source_row}:{last}{self.source_row})"

    def text(self) -> str:
        if not self.values:
            return ""
        low, high = min(self.values), max(self.values)
        span = (high - low) or 1.0
        top = len(SPARK_BLOCKS) - 1
        return "".join(SPARK_BLOCKS[round((v - low) / span * top)] for v in self.values)


def _column_letter(index: int) -> str:
    """1 -> A, 27 -> AA."""
    letters = ""
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


@dataclass
class RowUpdate:
    """Owned cells to write in one row.

    `row` is the row number in this cycle's read; `run_id` is the id that row
    showed when read (None when the row is being claimed this cycle). A backend
    that re-reads before writing uses `run_id` to find the row again if rows
    moved, and skips an update whose row can no longer be found.
    """

    row: int
    run_id: str | None
    cells: dict[str, Any]  # owned header -> value (str, int or float; never parsed as a formula)
    fill: str | None = None  # RGB hex for the whole row; None leaves the colour alone
    job: str = ""  # the row's `job` cell as read, to recognise an unclaimed row
    expect: dict[str, str] = field(default_factory=dict)  # user cells as read (text), for claims


@dataclass
class RowInsert:
    """New rows to put directly under `after_row` (a sweep's children under their parent).

    `expect` holds the parent row's user cells as read; a backend that re-reads
    before writing inserts only if that row still shows them."""

    after_row: int
    rows: list[dict[str, Any]]  # header -> value, one dict per new row
    expect: dict[str, str] = field(default_factory=dict)


@dataclass
class SheetWrite:
    """Everything one cycle writes, sent as one batch."""

    new_columns: list[str] = field(default_factory=list)  # owned headers to add at the right
    rows: list[RowUpdate] = field(default_factory=list)
    tabs: dict[str, list[list[Any]]] = field(default_factory=dict)  # side tabs, replaced whole
    inserts: list[RowInsert] = field(default_factory=list)  # applied after `rows`, bottom first
    # The hidden `_sheetrunner` tab (sheet/lease.py), replaced whole, compare-and-set: a
    # backend writes it only if the tab, read again just before writing, still shows
    # `meta_expect` (None: the tab did not exist). Its namespace and lease depend on it.
    meta: list[list[str]] | None = None
    meta_expect: dict[str, str] | None = None

    def is_empty(self) -> bool:
        return not (
            self.new_columns or self.rows or self.tabs or self.inserts or self.meta is not None
        )


class SheetBackend(Protocol):
    """One read of the whole table per cycle, one batched write per cycle."""

    def read(self) -> Table:
        """The whole experiments tab. Raises SheetUnavailable (transient) or SheetError."""
        ...

    def write(self, change: SheetWrite) -> None:
        """Apply one cycle's change as one batch. Raises SheetUnavailable or SheetError."""
        ...

    def initialize(self, header: list[str], job_names: list[str]) -> None:
        """`sheetrunner init`: write the header into an empty tab, or add missing columns."""
        ...
