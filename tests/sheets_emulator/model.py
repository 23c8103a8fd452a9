"""Spreadsheets, sheets and their grids, held in memory.

A sheet keeps one dict of cells per grid row, so inserting, deleting and
sorting rows are list operations and a snapshot (every write works on one and
commits only if all of it succeeds, like the API's atomic batches) costs one
shallow copy per row.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

from .a1 import Box, format_range, parse_box, split_title
from .cells import BLANK, Cell, Value, effective

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}

# Sheet property keys in the order the API prints them.
_PROPERTY_ORDER = ("sheetId", "title", "index", "sheetType", "gridProperties", "hidden")
_GRID_ORDER = ("rowCount", "columnCount", "frozenRowCount", "frozenColumnCount", "hideGridlines")


class ApiError(Exception):
    """An error answer, in the API's JSON shape."""

    def __init__(self, code: int, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "status": STATUS_NAMES.get(self.code, "UNKNOWN"),
        }
        if self.details:
            error["details"] = self.details
        return {"error": error}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def ordered_properties(props: dict[str, Any]) -> dict[str, Any]:
    """Sheet properties in the API's key order (unknown keys keep theirs, at the end)."""
    out = {k: props[k] for k in _PROPERTY_ORDER if k in props}
    grid = props.get("gridProperties", {})
    out["gridProperties"] = {k: grid[k] for k in _GRID_ORDER if k in grid} | grid
    out.update((k, v) for k, v in props.items() if k not in out)
    return out


@dataclass
class Sheet:
    """One tab: its `properties` JSON and a grid of cells (one dict per row)."""

    props: dict[str, Any]
    rows: list[dict[int, Cell]]

    @classmethod
    def new(cls, sheet_id: int, title: str, index: int, rows: int, cols: int) -> Sheet:
        props = {
            "sheetId": sheet_id,
            "title": title,
            "index": index,
            "sheetType": "GRID",
            "gridProperties": {"rowCount": rows, "columnCount": cols},
        }
        return cls(props, [{} for _ in range(rows)])

    @property
    def sheet_id(self) -> int:
        return self.props["sheetId"]

    @property
    def title(self) -> str:
        return self.props["title"]

    @property
    def row_count(self) -> int:
        return self.props["gridProperties"]["rowCount"]

    @property
    def col_count(self) -> int:
        return self.props["gridProperties"]["columnCount"]

    def copy(self) -> Sheet:
        return Sheet(copy.deepcopy(self.props), [dict(row) for row in self.rows])

    # ------------------------------------------------------------ cells

    def cell(self, row: int, col: int) -> Cell:
        if 0 <= row < len(self.rows):
            return self.rows[row].get(col, BLANK)
        return BLANK

    def put(self, row: int, col: int, cell: Cell) -> None:
        if cell.is_empty:
            self.rows[row].pop(col, None)
        else:
            self.rows[row][col] = cell

    def value(self, row: int, col: int, _seen: frozenset[tuple[int, int]] = frozenset()) -> Value:
        """The computed value of a cell; a formula that refers to itself gives #REF!."""
        if (row, col) in _seen:
            return "#REF!"
        seen = _seen | {(row, col)}
        return effective(self.cell(row, col), lambda r, c: self.value(r, c, seen))

    def lookup(self, row: int, col: int) -> Value:
        return self.value(row, col)

    def clip(self, box: Box | None) -> Box:
        return (box or Box()).clip(self.row_count, self.col_count)

    def range_name(self, box: Box) -> str:
        return format_range(self.title, box)

    def last_value_col(self, row: int, box: Box) -> int:
        """1 + the last column of `box` holding a value in this row (box.col0 when none)."""
        cols = [
            c for c, cell in self.rows[row].items() if box.col0 <= c < box.col1 and cell.has_value
        ]
        return max(cols, default=box.col0 - 1) + 1

    # ------------------------------------------------------------ grid shape

    def resize(self, rows: int | None = None, cols: int | None = None) -> None:
        grid = self.props["gridProperties"]
        if rows is not None:
            del self.rows[rows:]
            self.rows.extend({} for _ in range(rows - len(self.rows)))
            grid["rowCount"] = rows
        if cols is not None:
            for i, row in enumerate(self.rows):
                self.rows[i] = {c: cell for c, cell in row.items() if c < cols}
            grid["columnCount"] = cols

    def insert(self, dimension: str, start: int, end: int) -> None:
        count = end - start
        if dimension == "ROWS":
            self.rows[start:start] = [{} for _ in range(count)]
            self.props["gridProperties"]["rowCount"] += count
            return
        self.rows = [{(c + count if c >= start else c): v for c, v in r.items()} for r in self.rows]
        self.props["gridProperties"]["columnCount"] += count

    def delete(self, dimension: str, start: int, end: int) -> None:
        count = end - start
        if dimension == "ROWS":
            del self.rows[start:end]
            self.props["gridProperties"]["rowCount"] -= count
            return
        self.rows = [
            {(c - count if c >= end else c): v for c, v in r.items() if not start <= c < end}
            for r in self.rows
        ]
        self.props["gridProperties"]["columnCount"] -= count

    def sort(self, box: Box, specs: list[tuple[int, bool]]) -> None:
        """Sort the rows of `box` (only its columns move) by (column, descending) specs.

        Like Sheets: numbers before text before booleans, text case-insensitive,
        blank cells last whatever the order, ties keep their order.
        """
        keyed = []
        for r in range(box.row0, box.row1):
            keys = [self.value(r, col) for col, _ in specs]
            cells = {c: self.rows[r][c] for c in range(box.col0, box.col1) if c in self.rows[r]}
            keyed.append((keys, cells))
        keyed.sort(key=functools.cmp_to_key(lambda a, b: _compare(a[0], b[0], specs)))
        for offset, (_, cells) in enumerate(keyed):
            row = self.rows[box.row0 + offset]
            for c in range(box.col0, box.col1):
                row.pop(c, None)
            row.update(cells)


def _compare(a: list[Value], b: list[Value], specs: list[tuple[int, bool]]) -> int:
    for x, y, (_, descending) in zip(a, b, specs, strict=True):
        if x in (None, "") or y in (None, ""):
            result = (x in (None, "")) - (y in (None, ""))
            if result:
                return result
            continue
        kx, ky = _rank(x), _rank(y)
        result = (kx > ky) - (kx < ky)
        if result:
            return -result if descending else result
    return 0


def _rank(value: Value) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (2, value)
    if isinstance(value, int | float):
        return (0, value)
    return (1, str(value).lower())


@dataclass
class Spreadsheet:
    """A spreadsheet: its `properties` JSON and its sheets in tab order."""

    id: str
    properties: dict[str, Any]
    sheets: list[Sheet]

    def copy(self) -> Spreadsheet:
        return Spreadsheet(self.id, copy.deepcopy(self.properties), [s.copy() for s in self.sheets])

    def by_id(self, sheet_id: int) -> Sheet | None:
        return next((s for s in self.sheets if s.sheet_id == sheet_id), None)

    def by_title(self, title: str) -> Sheet | None:
        exact = next((s for s in self.sheets if s.title == title), None)
        return exact or next((s for s in self.sheets if s.title.lower() == title.lower()), None)

    def reindex(self) -> None:
        for i, sheet in enumerate(self.sheets):
            sheet.props["index"] = i

    def resolve(self, text: str) -> tuple[Sheet, Box | None]:
        """A1 text -> (sheet, box); box None for a whole sheet. 400 when it cannot be parsed.

        A bare word is a sheet title when such a sheet exists, otherwise a
        reference on the first sheet (the API's own rule).
        """
        try:
            title, ref = split_title(text)
        except ValueError:
            raise bad_request(f"Unable to parse range: {text}") from None
        if title is None and self.by_title(ref):
            return self.by_title(ref), None  # type: ignore[return-value]
        sheet = self.sheets[0] if title is None else self.by_title(title)
        box = parse_box(ref) if ref else None
        if sheet is None or (ref and box is None):
            raise bad_request(f"Unable to parse range: {text}")
        return sheet, box


def grid_limits_error(text: str, sheet: Sheet) -> ApiError:
    return bad_request(
        f"Range ({text}) exceeds grid limits. Max rows: {sheet.row_count}, "
        f"max columns: {sheet.col_count}"
    )


def check_inside(text: str, sheet: Sheet, box: Box) -> None:
    """400 unless every bounded edge of `box` lies inside the grid."""
    too_far = box.row0 >= sheet.row_count or box.col0 >= sheet.col_count
    if too_far or (box.row1 or 0) > sheet.row_count or (box.col1 or 0) > sheet.col_count:
        raise grid_limits_error(text, sheet)
