"""The local .xlsx workbook backend: the embedded default, no cloud account needed.

A person may have the workbook open in LibreOffice or Excel while the daemon
runs. So every write loads the file again first (keeping what they saved since
our read), finds each row with the shared identity rule (`sheet.relocate`),
changes only owned cells and row fills, and replaces the file atomically
(temp file, fsync, rename). If their program later saves a stale copy over
ours, the next cycle sees owned cells that differ from the truth and writes
them again.

A save of theirs that lands while we write must not be lost either: our
rename would put back the file as it was when we loaded it. So a write
remembers which file it loaded (device, inode, size, mtime, ctime: a program
that saves by renaming a temp file changes the inode, one that saves in place
changes size or mtime and always ctime) and, once its temp file is written and
synced, looks again just before the rename. If the file changed, it throws its
copy away, loads the new file and applies the same change to it, up to
`WRITE_ATTEMPTS` times; then it gives up with SheetUnavailable and the next
cycle tries again.

What is left is the window between that last look (one stat call) and the
rename taking effect: a save landing exactly there is still overwritten.
Measured (Linux, 100-row workbook, 200 writes): from the stat's return to the
rename call, median 3-4 us; to the rename's return, median 0.03 ms on tmpfs
and 0.2-0.3 ms on ext4 (the rename also frees the replaced file). A whole
write takes 45-60 ms (280 ms at 1,000 rows), so the window is under 1% of
the write and usually near 1/10,000; before the check the whole write was
exposed. A rename cannot be made conditional on what it replaces, so this
window can be made small but not closed. A filesystem with coarse timestamps
(FAT: 2 s) can also hide an in-place save of the same size within one tick;
programs that save by renaming are caught on any filesystem.

The hidden `_sheetrunner` tab (sheet/lease.py) is written compare-and-set:
only if the file, as loaded for this write, still shows the tab the cycle
read (`SheetWrite.meta_expect`); the stat check above makes that load the
file that the rename replaces.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import zipfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import PatternFill
from openpyxl.worksheet.datavalidation import DataValidation
from openpyxl.worksheet.worksheet import Worksheet

from ..errors import SheetError, SheetUnavailable
from ..sheet.lease import META_TAB, meta_from_rows
from ..sheet.relocate import locate, rows_showing, shown
from ..sheet.table import RowInsert, RowUpdate, SheetWrite, Sparkline, Table, UnsavedFormula

log = logging.getLogger(__name__)

# Loads of a file that keeps changing under us before a write gives up for this cycle.
WRITE_ATTEMPTS = 5

# A workbook `sheetrunner init` creates: readable by others, like any document (mkstemp: 0600).
NEW_FILE_MODE = 0o644

# What to do about a [sheet] path that holds no workbook.
FIX_PATH = (
    "point [sheet] path at an .xlsx workbook, or move this file away and run "
    "`sheetrunner init -c CONFIG` to create one"
)

# Which file a path holds: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns); None: no file.
FileStamp = tuple[int, int, int, int, int] | None

# A read is kept for the next cycle only once the file it came from is this old: two saves
# within one timestamp tick (FAT: 2 s) can leave the same stamp, and the later must be seen.
SETTLED_S = 2.0
# A formula cell in a worksheet's XML (<f>, with or without a namespace prefix).
FORMULA_TAG = re.compile(rb"<(?:\w+:)?f[ >/]")


@dataclass(frozen=True)
class LastRead:
    """The table a read or our own write last saw, and the stamp of the file it came from."""

    stamp: FileStamp
    table: Table
    settled: bool


@dataclass(frozen=True)
class Snapshot:
    """The file's bytes as loaded, and the stamp that tells whether the path still holds them.

    Both openpyxl loads of one read or write parse these same bytes, so formulas and
    their values always come from one save."""

    data: bytes
    stamp: FileStamp


class Workbook:
    """One tab of a local .xlsx file."""

    def __init__(self, path: Path, worksheet: str | None = None):
        self.path = Path(path)
        self.worksheet = worksheet
        # openpyxl cannot compute formulas and drops the values a spreadsheet program saved
        # with them; remember those values across our own saves: (cell, formula) -> value.
        self._formula_values: dict[tuple[str, str], Any] = {}
        self._last: LastRead | None = None
        self.parses = 0  # openpyxl loads so far (the bench counts them)

    # -- reading ------------------------------------------------------------------------------

    def read(self) -> Table:
        """The tab as the file holds it now. A file unchanged since the last read or our own
        write (same inode, size, mtime, ctime) is not read again: at 10,000 rows a parse is
        seconds of CPU, and most cycles find the file as they left it."""
        last = self._last
        if last is not None and last.settled and last.stamp == _stamp_at(self.path):
            return _copy(last.table)
        snapshot = self._snapshot()
        table = self._table(*self._books(snapshot))
        self._remember(snapshot.stamp, table)
        return _copy(table)

    def _books(self, snapshot: Snapshot) -> tuple[openpyxl.Workbook, openpyxl.Workbook]:
        """(formulas, values): two loads only when a worksheet holds a formula; without
        one, both views of the file are the same book."""
        formulas = self._parse(snapshot, data_only=False)
        if not _has_formulas(snapshot.data):
            return formulas, formulas
        return formulas, self._parse(snapshot, data_only=True)

    def _remember(self, stamp: FileStamp, table: Table) -> None:
        settled = stamp is not None and time.time() - stamp[3] / 1e9 >= SETTLED_S
        self._last = LastRead(stamp, table, settled) if stamp is not None else None

    def _table(self, formulas_book: openpyxl.Workbook, values_book: openpyxl.Workbook) -> Table:
        """The tab as `read()` returns it; a write builds the same from its own load, so that
        relocation compares what this cycle read with values of the same kind. One book for
        both: the file holds no formula, and no cell needs looking at twice."""
        formulas, values = self._tab(formulas_book), self._tab(values_book)
        rows = _values(values)
        if formulas_book is not values_book:
            self._remember_formulas(formulas, values)
            for cell, formula in _formula_cells(formulas):
                if values[cell].value is None:
                    known = self._formula_values.get((cell, formula))
                    value = known if known is not None else UnsavedFormula(cell, formula)
                    rows[values[cell].row - 1][values[cell].column - 1] = value
        header = [str(h).strip() if h is not None else "" for h in rows[0]] if rows else []
        return Table(
            header=header,
            rows=_trim(rows[1:]),
            meta=_meta_of(values_book),
            source=str(self.path.resolve()),
        )

    def _remember_formulas(self, formulas: Worksheet, values: Worksheet) -> None:
        for cell, formula in _formula_cells(formulas):
            if values[cell].value is not None:
                self._formula_values[(cell, formula)] = values[cell].value

    def _snapshot(self) -> Snapshot:
        """The file's bytes and stamp, read through one descriptor; read again if it was
        saved in place while we read it."""
        for _ in range(WRITE_ATTEMPTS):
            try:
                with open(self.path, "rb") as f:
                    before = _stamp_of(os.fstat(f.fileno()))
                    data = f.read()
                    if _stamp_of(os.fstat(f.fileno())) == before:
                        return Snapshot(data, before)
            except FileNotFoundError:
                raise self._missing() from None
            except (IsADirectoryError, NotADirectoryError):
                raise SheetError(f"{self.path} is not a file; {FIX_PATH}") from None
            except OSError as exc:
                raise SheetUnavailable(f"could not read {self.path}: {exc}") from None
        raise SheetUnavailable(f"{self.path} kept changing while we read it; reading next cycle")

    def _missing(self) -> SheetError:
        return SheetError(
            f"workbook {self.path} does not exist; create it with `sheetrunner init -c CONFIG` "
            "or fix [sheet] path in the config"
        )

    def _parse(self, snapshot: Snapshot, data_only: bool) -> openpyxl.Workbook:
        """The bytes as a workbook; anything openpyxl or zipfile raises on them is
        SheetUnavailable naming the path and the fix (a file caught mid-save by the person's
        editor reads fine next cycle; one that is no workbook says so every cycle)."""
        self.parses += 1
        try:
            book = openpyxl.load_workbook(BytesIO(snapshot.data), data_only=data_only)
        except MemoryError:
            raise
        except Exception as exc:  # openpyxl raises almost any type on bad input
            raise SheetUnavailable(self._unreadable(exc)) from None
        if not book.worksheets:
            raise SheetUnavailable(self._unreadable("it holds no worksheet"))
        return book

    def _unreadable(self, why: object) -> str:
        if isinstance(why, BaseException):
            why = f"{type(why).__name__}: {why}" if str(why) else type(why).__name__
        return (
            f"could not read {self.path} as an .xlsx workbook ({why}); if a program was "
            f"saving it, this clears next cycle, else {FIX_PATH}"
        )

    def _tab(self, book: openpyxl.Workbook) -> Worksheet:
        if self.worksheet is None:
            own = [s for s in book.worksheets if s.title != META_TAB]
            return (own or book.worksheets)[0]
        if self.worksheet not in book.sheetnames:
            raise SheetError(
                f"workbook {self.path} has no tab {self.worksheet!r} (tabs: "
                f"{', '.join(book.sheetnames)}); fix [sheet] worksheet in the config"
            )
        return book[self.worksheet]

    # -- writing ------------------------------------------------------------------------------

    def write(self, change: SheetWrite) -> None:
        """Apply `change` to the file as it is now, and replace it only if nobody saved it
        meanwhile; otherwise start over on their save (see the module docstring)."""
        if change.is_empty():
            return
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            snapshot = self._snapshot()
            book = self._apply(snapshot, change)
            if self._replace_if_unchanged(book, snapshot.stamp):
                return
            log.info(
                "%s was saved by someone else while we wrote it (try %d of %d); "
                "applying our change to their save",
                self.path,
                attempt,
                WRITE_ATTEMPTS,
            )
        raise SheetUnavailable(
            f"{self.path} kept changing while we wrote it ({WRITE_ATTEMPTS} tries); "
            "writing next cycle"
        )

    def _apply(self, snapshot: Snapshot, change: SheetWrite) -> openpyxl.Workbook:
        """The loaded workbook with `change` applied: the book to save (formulas kept)."""
        book, values = self._books(snapshot)  # the book keeps formulas as formulas when saved
        fresh = self._table(book, values)
        sheet = self._tab(book)
        columns = _header_columns(sheet, change.new_columns)
        width = max(sheet.max_column, len(columns))
        dropped_claims = _write_updates(sheet, fresh, change.rows, columns, width)
        for insert in sorted(change.inserts, key=lambda i: -i.after_row):
            _insert_rows(sheet, fresh, insert, columns, dropped_claims)
        for name, values in change.tabs.items():
            if name == META_TAB:
                log.warning("tab %s is written only through SheetWrite.meta; ignored", name)
                continue
            _replace_tab(book, name, values)
        _write_meta(book, fresh.meta, change)
        return book

    def _replace_if_unchanged(self, book: openpyxl.Workbook, loaded: FileStamp) -> bool:
        """Save `book` over the file if the path still holds the file we loaded (False if not).

        Everything slow (saving, fsync) happens before the last look at the path, so
        only a stat and a rename stand between that look and the replace."""
        tmp = self._save_temp(book)
        try:
            if _stamp_at(self.path) != loaded:
                return False
            os.replace(tmp, self.path)
            # The next read parses what we saved: a table built from the book in memory would
            # differ from the file (openpyxl writes floats with 16 digits, XML turns \r\n
            # into \n), and a cycle must see what the file holds.
            self._last = None
            return True
        except OSError as exc:
            raise SheetUnavailable(f"could not write {self.path}: {exc}") from None
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _save_temp(self, book: openpyxl.Workbook) -> str:
        """`book` saved and synced to a temp file next to the workbook, with its mode."""
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".sheetrunner-", suffix=".xlsx")
        os.close(fd)
        try:
            book.save(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            mode = self.path.stat().st_mode & 0o777 if self.path.exists() else NEW_FILE_MODE
            os.chmod(tmp, mode)
            return tmp
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise SheetUnavailable(f"could not write {self.path}: {exc}") from None
            raise

    # -- sheetrunner init ---------------------------------------------------------------------

    def initialize(self, header: list[str], job_names: list[str]) -> None:
        """Create the workbook with its header, or add missing columns to an existing one."""
        for _ in range(WRITE_ATTEMPTS):
            snapshot = self._snapshot() if self.path.exists() else None
            book = self._initialized(snapshot, header, job_names)
            if self._replace_if_unchanged(book, snapshot.stamp if snapshot else None):
                return
        raise SheetUnavailable(f"{self.path} kept changing while we wrote it; try again")

    def _initialized(
        self, snapshot: Snapshot | None, header: list[str], job_names: list[str]
    ) -> openpyxl.Workbook:
        if snapshot is not None:
            book = self._parse(snapshot, data_only=False)
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
        return book


def _has_formulas(data: bytes) -> bool:
    """Whether any worksheet of the .xlsx holds a formula (True when that cannot be told:
    the caller then loads the file twice, as it always did)."""
    try:
        with zipfile.ZipFile(BytesIO(data)) as archive:
            for name in archive.namelist():
                if name.startswith("xl/worksheets/") and name.endswith(".xml"):
                    if FORMULA_TAG.search(archive.read(name)):
                        return True
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return True
    return False


def _values(sheet: Worksheet) -> list[list[Any]]:
    """Every row's values from row 1 to the last, as iter_rows(values_only=True) gives them,
    from the cells that exist (a third of the time at 10,000 rows: iter_rows looks up every
    row and column, empty or not)."""
    cells = getattr(sheet, "_cells", None)
    if not isinstance(cells, dict):
        return [list(r) for r in sheet.iter_rows(values_only=True)]
    if not cells:
        return []  # as iter_rows gives for a tab nothing was ever written to
    width, height = sheet.max_column, sheet.max_row  # each a scan of every cell: once
    rows: list[list[Any]] = [[None] * width for _ in range(height)]
    for (row, column), cell in cells.items():
        rows[row - 1][column - 1] = cell.value
    return rows


def _copy(table: Table) -> Table:
    """A table the caller may change without changing the one kept for the next cycle."""
    return Table(
        header=list(table.header),
        rows=[list(r) for r in table.rows],
        meta=dict(table.meta) if table.meta is not None else None,
        source=table.source,
    )


def _stamp_of(st: os.stat_result) -> FileStamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _stamp_at(path: Path) -> FileStamp:
    """The stamp of the file at `path` now (None when there is none)."""
    try:
        return _stamp_of(os.stat(path))
    except FileNotFoundError:
        return None


def _meta_of(book: openpyxl.Workbook) -> dict[str, str] | None:
    """The `_sheetrunner` tab as key -> value text; None when the workbook has no such tab."""
    if META_TAB not in book.sheetnames:
        return None
    return meta_from_rows([list(r) for r in book[META_TAB].iter_rows(values_only=True)])


def _write_meta(
    book: openpyxl.Workbook, loaded_meta: dict[str, str] | None, change: SheetWrite
) -> None:
    """Replace the `_sheetrunner` tab only if it still shows what the cycle read: two
    daemons taking the lease at once must not both see their own write win."""
    if change.meta is None:
        return
    if loaded_meta != change.meta_expect:
        log.info("the %s tab changed since it was read; not writing it this cycle", META_TAB)
        return
    _replace_tab(book, META_TAB, change.meta)


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


def _write_updates(
    sheet: Worksheet, fresh: Table, updates: list[RowUpdate], columns: dict[str, int], width: int
) -> set[int]:
    """Write each update where `relocate.locate` puts it in the loaded file; an update it
    cannot place is left for the next cycle. Returns the read rows whose claim was dropped."""
    by_id = rows_showing(fresh)
    dropped_claims: set[int] = set()
    for update in updates:
        row = locate(update, fresh, by_id)
        if row is None:
            log.info("row %s moved or changed since it was read; writing it next cycle", update.row)
            if not update.run_id:
                dropped_claims.add(update.row)
            continue
        _write_row(sheet, row, update, columns, width)
    return dropped_claims


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


def _write_row(
    sheet: Worksheet, row: int, update: RowUpdate, columns: dict[str, int], width: int
) -> None:
    for name, value in update.cells.items():
        cell = sheet.cell(row=row, column=columns[name])
        cell.value = _clean(value)
        if isinstance(cell.value, str):
            cell.data_type = "s"  # our text is never a formula, even if it starts with '='
    if update.fill:
        fill = PatternFill(start_color=update.fill, end_color=update.fill, fill_type="solid")
        for col in range(1, width + 1):
            sheet.cell(row=row, column=col).fill = fill


def _insert_rows(
    sheet: Worksheet,
    fresh: Table,
    insert: RowInsert,
    columns: dict[str, int],
    dropped_claims: set[int],
) -> None:
    """Put new rows under `after_row`, if that row still shows what was read and its claim
    (a sweep row's id, written in the same batch) landed: a sweep expands once or not at all.

    Inserts go bottom first, so the rows above `after_row` are still where `fresh` has them."""
    if insert.after_row in dropped_claims or any(
        shown(fresh, insert.after_row, k) != v for k, v in insert.expect.items()
    ):
        log.info(
            "row %s changed since it was read; inserting its rows next cycle", insert.after_row
        )
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
