"""The spreadsheets.values endpoints: get, batchGet, update, batchUpdate, append, clear.

Each function takes the spreadsheet (a working copy for writes), the query
parameters as parse_qs gives them and the JSON body, and returns the answer's
JSON. Echoed ranges and the ragged `values` follow the recorded API answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .a1 import Box, col_letters
from .cells import Cell, from_raw, from_user_entered, render
from .model import ApiError, Sheet, Spreadsheet, bad_request, check_inside

Params = Mapping[str, list[str]]
Converter = Callable[[Any], Cell]
_RENDER_OPTIONS = ("FORMATTED_VALUE", "UNFORMATTED_VALUE", "FORMULA")
_DATETIME_OPTIONS = ("SERIAL_NUMBER", "FORMATTED_STRING")
_DIMENSIONS = ("ROWS", "COLUMNS")


def param(params: Params, name: str, default: str | None = None) -> str | None:
    values = params.get(name)
    return values[-1] if values else default


def flag(params: Params, name: str) -> bool:
    """Query booleans arrive as true/false/True/False."""
    return (param(params, name) or "").lower() == "true"


# ---------------------------------------------------------------- reads


def get(ss: Spreadsheet, text: str, params: Params) -> dict[str, Any]:
    sheet, box = ss.resolve(text)
    return value_range(sheet, box, text, params)


def batch_get(ss: Spreadsheet, params: Params) -> dict[str, Any]:
    ranges = []
    for text in params.get("ranges", []):
        sheet, box = ss.resolve(text)
        ranges.append(value_range(sheet, box, text, params))
    return {"spreadsheetId": ss.id, "valueRanges": ranges}


def value_range(
    sheet: Sheet, box: Box | None, text: str, params: Params, prefix: str = ""
) -> dict[str, Any]:
    """A ValueRange: the range echoed against the grid, values trimmed like the API's."""
    render_key = f"{prefix}valueRenderOption" if prefix else "valueRenderOption"
    how = _choice(params, render_key, _RENDER_OPTIONS, "FORMATTED_VALUE")
    dates = _choice(
        params,
        f"{prefix}dateTimeRenderOption" if prefix else "dateTimeRenderOption",
        _DATETIME_OPTIONS,
        "SERIAL_NUMBER",
    )
    major = _choice(params, "majorDimension", _DIMENSIONS, "ROWS")
    if box is not None and (box.row0 >= sheet.row_count or box.col0 >= sheet.col_count):
        check_inside(text, sheet, box)
    clipped = sheet.clip(box)
    values = read_grid(sheet, clipped, how, dates, major)
    out: dict[str, Any] = {"range": sheet.range_name(clipped), "majorDimension": major}
    if values:
        out["values"] = values
    return out


def read_grid(sheet: Sheet, box: Box, how: str, dates: str, major: str) -> list[list[Any]]:
    """Rendered cells of `box`: trailing blanks of each row and trailing empty rows dropped."""
    rows = []
    for r in range(box.row0, box.row1):
        end = sheet.last_value_col(r, box)
        rows.append(
            [render(sheet.cell(r, c), sheet.lookup, how, dates) for c in range(box.col0, end)]
        )
    if major == "COLUMNS":
        rows = _transpose(rows, "")
    return _trim(rows)


def _trim(rows: list[list[Any]]) -> list[list[Any]]:
    trimmed = []
    for row in rows:
        while row and row[-1] == "":
            row.pop()
        trimmed.append(row)
    while trimmed and not trimmed[-1]:
        trimmed.pop()
    return trimmed


def _transpose(rows: list[list[Any]], pad: Any) -> list[list[Any]]:
    width = max((len(r) for r in rows), default=0)
    return [[r[c] if c < len(r) else pad for r in rows] for c in range(width)]


def _choice(params: Params, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = param(params, name, default) or default
    if value not in allowed:
        raise bad_request(f"Invalid value at '{name}', \"{value}\"")
    return value


# ---------------------------------------------------------------- writes


@dataclass
class Written:
    """What one write touched, for the updated* counters."""

    box: Box
    rows: set[int] = field(default_factory=set)
    cols: set[int] = field(default_factory=set)
    cells: int = 0


def update(ss: Spreadsheet, text: str, params: Params, body: Mapping[str, Any]) -> dict[str, Any]:
    sheet, box = ss.resolve(text)
    values = values_of(body, "data.values")
    written = write_grid(sheet, box, values, converter(param(params, "valueInputOption")), text)
    out = {"spreadsheetId": ss.id, **_counters(sheet, written)}
    if flag(params, "includeValuesInResponse"):
        out["updatedData"] = value_range(sheet, written.box, text, params, prefix="response")
    return out


def batch_update(ss: Spreadsheet, body: Mapping[str, Any]) -> dict[str, Any]:
    convert = converter(body.get("valueInputOption"))
    responses, rows, cols, sheets, cells = [], set(), set(), set(), 0
    for i, item in enumerate(body.get("data", [])):
        text = item.get("range", "")
        sheet, box = ss.resolve(text)
        written = write_grid(sheet, box, values_of(item, f"data[{i}].values"), convert, text)
        responses.append({"spreadsheetId": ss.id, **_counters(sheet, written)})
        rows |= {(sheet.sheet_id, r) for r in written.rows}
        cols |= {(sheet.sheet_id, c) for c in written.cols}
        sheets |= {sheet.sheet_id} if written.cells else set()
        cells += written.cells
    totals = {
        "totalUpdatedRows": len(rows),
        "totalUpdatedColumns": len(cols),
        "totalUpdatedCells": cells,
        "totalUpdatedSheets": len(sheets),
    }
    out = {"spreadsheetId": ss.id, **_nonzero(totals)}
    if responses:
        out["responses"] = responses
    return out


def append(ss: Spreadsheet, text: str, params: Params, body: Mapping[str, Any]) -> dict[str, Any]:
    """Find the table in the range (the API's own detection) and write below it."""
    sheet, box = ss.resolve(text)
    convert = converter(param(params, "valueInputOption"))
    values = values_of(body, "data.values")
    search = sheet.clip(box)
    table = find_table(sheet, search)
    row0, col0 = (table.row1, table.col0) if table else (search.row0, search.col0)
    height, width = len(values), max((len(r) for r in values), default=0)
    if param(params, "insertDataOption") == "INSERT_ROWS":
        sheet.insert("ROWS", row0, row0 + height)
    sheet.resize(rows=max(sheet.row_count, row0 + height), cols=max(sheet.col_count, col0 + width))
    written = write_grid(sheet, Box(row0, row0 + 1, col0, col0 + 1), values, convert, text)
    updates = {"spreadsheetId": ss.id, **_counters(sheet, written)}
    if flag(params, "includeValuesInResponse"):
        updates["updatedData"] = value_range(sheet, written.box, text, params, prefix="response")
    out: dict[str, Any] = {"spreadsheetId": ss.id}
    if table:
        out["tableRange"] = sheet.range_name(table)
    out["updates"] = updates
    return out


def clear(ss: Spreadsheet, text: str) -> dict[str, Any]:
    return {"spreadsheetId": ss.id, "clearedRange": _clear(ss, text)}


def batch_clear(ss: Spreadsheet, body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "spreadsheetId": ss.id,
        "clearedRanges": [_clear(ss, t) for t in body.get("ranges", [])],
    }


def _clear(ss: Spreadsheet, text: str) -> str:
    """Clear values (formats stay, as in the API) and return the echoed range."""
    sheet, box = ss.resolve(text)
    clipped = sheet.clip(box)
    for r in range(clipped.row0, clipped.row1):
        for c in [c for c in sheet.rows[r] if clipped.col0 <= c < clipped.col1]:
            sheet.put(r, c, sheet.rows[r][c].cleared())
    return sheet.range_name(clipped)


def converter(option: str | None) -> Converter:
    if option == "RAW":
        return from_raw
    if option == "USER_ENTERED":
        return from_user_entered
    raise bad_request(f"Invalid valueInputOption: {option or 'INPUT_VALUE_OPTION_UNSPECIFIED'}")


def values_of(body: Mapping[str, Any], name: str) -> list[list[Any]]:
    """The body's `values` as rows (COLUMNS transposed); 400 in the API's words if malformed."""
    values = body.get("values", [])
    if not isinstance(values, list):
        raise _invalid_list(name, values)
    for i, row in enumerate(values):
        if not isinstance(row, list):
            raise _invalid_list(f"{name}[{i}]", row)
    if body.get("majorDimension") == "COLUMNS":
        return _transpose(values, None)
    return values


def _invalid_list(name: str, value: Any) -> ApiError:
    message = (
        f"Invalid value at '{name}' (type.googleapis.com/google.protobuf.ListValue), "
        f"{json.dumps(value, ensure_ascii=False)}"
    )
    violation = {"field": name, "description": message}
    details = [
        {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}
    ]
    return ApiError(400, message, details)


def write_grid(
    sheet: Sheet, box: Box | None, values: list[list[Any]], convert: Converter, text: str
) -> Written:
    """Write `values` at a single-cell anchor (growing to fit) or inside a bounded range.

    A JSON null leaves its cell alone; "" clears it and still counts as updated.
    """
    target = _target(sheet, box, values, text)
    written = Written(target)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if value is None:
                continue
            r, c = target.row0 + i, target.col0 + j
            try:
                entered = convert(value)
            except ValueError:
                raise bad_request(f"Invalid values[{i}][{j}]: {json.dumps(value)}") from None
            sheet.put(r, c, sheet.cell(r, c).with_input(entered))
            written.rows.add(r)
            written.cols.add(c)
            written.cells += 1
    return written


def _target(sheet: Sheet, box: Box | None, values: list[list[Any]], text: str) -> Box:
    height, width = len(values), max((len(r) for r in values), default=0)
    if box is None or box.is_cell:
        start = box or Box(0, 1, 0, 1)
        target = Box(
            start.row0, start.row0 + max(height, 1), start.col0, start.col0 + max(width, 1)
        )
        check_inside(text, sheet, target)
        return target
    check_inside(text, sheet, box)
    target = sheet.clip(box)
    if height > target.row1 - target.row0:
        raise bad_request(
            f"Requested writing within range [{text}], but tried writing to row [{target.row0 + height}]"
        )
    if width > target.col1 - target.col0:
        raise bad_request(
            f"Requested writing within range [{text}], but tried writing to column "
            f"[{col_letters(target.col0 + width - 1)}]"
        )
    return target


def _counters(sheet: Sheet, written: Written) -> dict[str, Any]:
    counts = {
        "updatedRows": len(written.rows),
        "updatedColumns": len(written.cols),
        "updatedCells": written.cells,
    }
    return {"updatedRange": sheet.range_name(written.box), **_nonzero(counts)}


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    """proto3 JSON leaves out zero counters."""
    return {k: v for k, v in counts.items() if v}


# ---------------------------------------------------------------- table detection


def find_table(sheet: Sheet, search: Box) -> Box | None:
    """The API's "logical table": grow a box from the last filled cell while neighbours hold data."""
    start = _last_filled(sheet, search)
    if start is None:
        return None
    box = Box(start[0], start[0] + 1, start[1], start[1] + 1)
    while True:
        grown = _grow(sheet, box, search)
        if grown == box:
            return box
        box = grown


def _last_filled(sheet: Sheet, search: Box) -> tuple[int, int] | None:
    for r in range(search.row1 - 1, search.row0 - 1, -1):
        end = sheet.last_value_col(r, search)
        if end > search.col0:
            return r, end - 1
    return None


def _grow(sheet: Sheet, box: Box, search: Box) -> Box:
    row0, row1, col0, col1 = box.row0, box.row1, box.col0, box.col1
    wide = (max(col0 - 1, search.col0), min(col1 + 1, search.col1))
    tall = (max(row0 - 1, search.row0), min(row1 + 1, search.row1))
    if row0 > search.row0 and _filled(sheet, (row0 - 1, row0), wide):
        row0 -= 1
    if row1 < search.row1 and _filled(sheet, (row1, row1 + 1), wide):
        row1 += 1
    if col0 > search.col0 and _filled(sheet, tall, (col0 - 1, col0)):
        col0 -= 1
    if col1 < search.col1 and _filled(sheet, tall, (col1, col1 + 1)):
        col1 += 1
    return Box(row0, row1, col0, col1)


def _filled(sheet: Sheet, rows: tuple[int, int], cols: tuple[int, int]) -> bool:
    return any(
        cell.has_value and cols[0] <= c < cols[1]
        for r in range(*rows)
        for c, cell in sheet.rows[r].items()
    )
