"""spreadsheets:batchUpdate: the structural and formatting requests, applied in order.

The caller hands in a working copy of the spreadsheet and commits it only if
every request succeeded, which is the API's all-or-nothing batch. A failing
request raises RequestError; the batch turns it into the API's 400 message
("Invalid requests[2].addSheet: ...").
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from . import celldata, masks
from .a1 import Box
from .cells import quantise_colour
from .model import Sheet, Spreadsheet, bad_request, ordered_properties

Handler = Callable[[Spreadsheet, Mapping[str, Any], random.Random], dict[str, Any]]


class RequestError(Exception):
    """One sub-request is invalid; the message is the part after "Invalid requests[i].kind: "."""


def batch_update(ss: Spreadsheet, body: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
    replies = []
    for i, request in enumerate(body.get("requests") or []):
        if len(request) != 1:
            raise bad_request(f"Invalid requests[{i}]: exactly one kind of request must be set.")
        kind, args = next(iter(request.items()))
        handler = HANDLERS.get(kind)
        if handler is None:
            raise bad_request(
                f"Invalid JSON payload received. Unknown name \"{kind}\" at 'requests[{i}]': "
                "Cannot find field."
            )
        try:
            replies.append(handler(ss, args or {}, rng))
        except (RequestError, ValueError) as exc:
            raise bad_request(f"Invalid requests[{i}].{kind}: {exc}") from None
    return {"spreadsheetId": ss.id, "replies": replies}


# ---------------------------------------------------------------- helpers


def _sheet(ss: Spreadsheet, sheet_id: Any) -> Sheet:
    sheet = ss.by_id(int(sheet_id or 0))
    if sheet is None:
        raise RequestError(f"No grid with id: {sheet_id or 0}")
    return sheet


def _grid_range(ss: Spreadsheet, grid: Mapping[str, Any]) -> tuple[Sheet, Box]:
    """A GridRange -> (sheet, box clipped to the grid); missing bounds mean the grid's edges."""
    sheet = _sheet(ss, grid.get("sheetId"))
    box = Box(
        grid.get("startRowIndex", 0),
        grid.get("endRowIndex"),
        grid.get("startColumnIndex", 0),
        grid.get("endColumnIndex"),
    )
    if (box.row1 or 0) > sheet.row_count or box.row0 >= sheet.row_count:
        raise RequestError(
            f"Range ({sheet.title}) exceeds grid limits. Max rows: {sheet.row_count}"
        )
    if (box.col1 or 0) > sheet.col_count or box.col0 >= sheet.col_count:
        raise RequestError(
            f"Range ({sheet.title}) exceeds grid limits. Max columns: {sheet.col_count}"
        )
    return sheet, sheet.clip(box)


def _fields(args: Mapping[str, Any]) -> list[masks.Path]:
    if not args.get("fields"):
        raise RequestError("At least one field must be specified.")
    return masks.parse(args["fields"])


def _each(sheet: Sheet, box: Box):
    for r in range(box.row0, box.row1):
        for c in range(box.col0, box.col1):
            yield r, c


# ---------------------------------------------------------------- cells


def update_cells(ss: Spreadsheet, args: Mapping[str, Any], _rng: random.Random) -> dict[str, Any]:
    """Write `rows` of CellData; with a `range`, cells it covers but `rows` does not are cleared."""
    paths, rows = _fields(args), args.get("rows") or []
    if "range" in args:
        sheet, box = _grid_range(ss, args["range"])
    else:
        start = args.get("start") or {}
        sheet = _sheet(ss, start.get("sheetId"))
        row0, col0 = start.get("rowIndex", 0), start.get("columnIndex", 0)
        width = max((len(r.get("values") or []) for r in rows), default=0)
        box = Box(row0, row0 + len(rows), col0, col0 + width)
        if box.row1 > sheet.row_count or box.col1 > sheet.col_count:
            raise RequestError("GridCoordinate is outside the grid.")
    for r, c in _each(sheet, box):
        i, j = r - box.row0, c - box.col0
        values = (rows[i].get("values") or []) if i < len(rows) else []
        data = values[j] if j < len(values) else {}
        current = sheet.cell(r, c)
        if data or not current.is_empty:
            sheet.put(r, c, celldata.apply(current, data or {}, paths))
    return {}


def repeat_cell(ss: Spreadsheet, args: Mapping[str, Any], _rng: random.Random) -> dict[str, Any]:
    """The same CellData into every cell of `range` (a whole row when it has no columns)."""
    paths = _fields(args)
    sheet, box = _grid_range(ss, args.get("range") or {})
    data = args.get("cell") or {}
    for r, c in _each(sheet, box):
        sheet.put(r, c, celldata.apply(sheet.cell(r, c), data, paths))
    return {}


def set_data_validation(
    ss: Spreadsheet, args: Mapping[str, Any], _rng: random.Random
) -> dict[str, Any]:
    sheet, box = _grid_range(ss, args.get("range") or {})
    rule = args.get("rule")
    for r, c in _each(sheet, box):
        sheet.put(r, c, replace(sheet.cell(r, c), validation=rule))
    return {}


def sort_range(ss: Spreadsheet, args: Mapping[str, Any], _rng: random.Random) -> dict[str, Any]:
    sheet, box = _grid_range(ss, args.get("range") or {})
    specs = [
        (int(s.get("dimensionIndex", 0)), s.get("sortOrder") == "DESCENDING")
        for s in args.get("sortSpecs") or []
    ]
    sheet.sort(box, specs)
    return {}


# ---------------------------------------------------------------- sheets


def add_sheet(ss: Spreadsheet, args: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
    props = dict(args.get("properties") or {})
    title = props.get("title") or _free_title(ss)
    _check_title_free(ss, title)
    sheet_id = props.get("sheetId")
    if sheet_id is None:
        sheet_id = _free_sheet_id(ss, rng)
    elif ss.by_id(sheet_id) is not None:
        raise RequestError(f"Sheet with id {sheet_id} already exists.")
    grid = props.get("gridProperties") or {}
    index = min(int(props.get("index", len(ss.sheets))), len(ss.sheets))
    sheet = Sheet.new(
        sheet_id, title, index, grid.get("rowCount", 1000), grid.get("columnCount", 26)
    )
    extra = {
        k: v for k, v in props.items() if k not in ("sheetId", "title", "index", "gridProperties")
    }
    sheet.props.update(extra)
    sheet.props["gridProperties"].update(
        {k: v for k, v in grid.items() if k not in ("rowCount", "columnCount")}
    )
    ss.sheets.insert(index, sheet)
    ss.reindex()
    return {"addSheet": {"properties": ordered_properties(sheet.props)}}


def delete_sheet(ss: Spreadsheet, args: Mapping[str, Any], _rng: random.Random) -> dict[str, Any]:
    sheet = _sheet(ss, args.get("sheetId"))
    if len(ss.sheets) == 1:
        raise RequestError("You can't remove all the sheets in a document.")
    ss.sheets.remove(sheet)
    ss.reindex()
    return {}


def update_sheet_properties(
    ss: Spreadsheet, args: Mapping[str, Any], _rng: random.Random
) -> dict[str, Any]:
    """Title, index, hidden, grid size, frozen rows/columns, tab colour, by field mask."""
    source = args.get("properties") or {}
    sheet = _sheet(ss, source.get("sheetId"))
    paths = [p for p in _fields(args) if p != ("sheetId",)]
    props = dict(sheet.props)
    props["gridProperties"] = dict(props["gridProperties"])
    masks.apply(props, source, paths)
    props["sheetId"] = sheet.sheet_id
    _settle_sheet_props(ss, sheet, props)
    return {}


def _settle_sheet_props(ss: Spreadsheet, sheet: Sheet, props: dict[str, Any]) -> None:
    """Validate the masked-in properties, then make the grid and the tab order follow them."""
    if props.get("title") != sheet.title:
        if not props.get("title"):
            raise RequestError("The sheet name cannot be empty.")
        _check_title_free(ss, props["title"], sheet)
    grid = props["gridProperties"]
    rows, cols = grid.get("rowCount") or sheet.row_count, grid.get("columnCount") or sheet.col_count
    for key in ("frozenRowCount", "frozenColumnCount", "hideGridlines"):
        if not grid.get(key):
            grid.pop(key, None)  # the API prints no zero/false properties
    if not props.get("hidden"):
        props.pop("hidden", None)
    for key in ("tabColor", "tabColorStyle"):
        _settle_tab_colour(props, key)
    old_index = sheet.props["index"]
    new_index = int(props.get("index", old_index))
    sheet.props = props | {"index": old_index}
    sheet.resize(rows, cols)
    if all(s.props.get("hidden") for s in ss.sheets):
        raise RequestError("You can't hide all the sheets in a document.")
    if new_index != old_index:
        ss.sheets.remove(sheet)
        ss.sheets.insert(min(new_index, len(ss.sheets)), sheet)
        ss.reindex()


def _settle_tab_colour(props: dict[str, Any], key: str) -> None:
    colour = props.get(key)
    rgb = colour.get("rgbColor") if key.endswith("Style") and colour else colour
    if not rgb:
        props.pop(key, None)
        return
    quantised = quantise_colour(rgb)
    props[key] = {"rgbColor": quantised} if key.endswith("Style") else quantised


def update_spreadsheet_properties(
    ss: Spreadsheet, args: Mapping[str, Any], _rng: random.Random
) -> dict[str, Any]:
    masks.apply(ss.properties, args.get("properties") or {}, _fields(args))
    return {}


def _check_title_free(ss: Spreadsheet, title: str, this: Sheet | None = None) -> None:
    other = ss.by_title(title)
    if other is not None and other is not this and other.title.lower() == title.lower():
        raise RequestError(
            f'A sheet with the name "{title}" already exists. Please enter another name.'
        )


def _free_title(ss: Spreadsheet) -> str:
    n = len(ss.sheets) + 1
    while ss.by_title(f"Sheet{n}"):
        n += 1
    return f"Sheet{n}"


def _free_sheet_id(ss: Spreadsheet, rng: random.Random) -> int:
    while True:
        sheet_id = rng.randrange(1, 2**31 - 1)
        if ss.by_id(sheet_id) is None:
            return sheet_id


# ---------------------------------------------------------------- dimensions


def append_dimension(
    ss: Spreadsheet, args: Mapping[str, Any], _rng: random.Random
) -> dict[str, Any]:
    sheet = _sheet(ss, args.get("sheetId"))
    length = int(args.get("length", 0))
    if length <= 0:
        raise RequestError("length must be positive")
    if args.get("dimension") == "COLUMNS":
        sheet.resize(cols=sheet.col_count + length)
    else:
        sheet.resize(rows=sheet.row_count + length)
    return {}


def insert_dimension(
    ss: Spreadsheet, args: Mapping[str, Any], _rng: random.Random
) -> dict[str, Any]:
    sheet, dimension, start, end = _dimension_range(ss, args.get("range") or {}, inserting=True)
    sheet.insert(dimension, start, end)
    return {}


def delete_dimension(
    ss: Spreadsheet, args: Mapping[str, Any], _rng: random.Random
) -> dict[str, Any]:
    sheet, dimension, start, end = _dimension_range(ss, args.get("range") or {}, inserting=False)
    size = sheet.row_count if dimension == "ROWS" else sheet.col_count
    if start == 0 and end >= size:
        raise RequestError(f"You can't delete all the {dimension.lower()} on the sheet.")
    sheet.delete(dimension, start, end)
    return {}


def _dimension_range(
    ss: Spreadsheet, rng: Mapping[str, Any], inserting: bool
) -> tuple[Sheet, str, int, int]:
    sheet = _sheet(ss, rng.get("sheetId"))
    dimension = rng.get("dimension", "ROWS")
    size = sheet.row_count if dimension == "ROWS" else sheet.col_count
    start, end = int(rng.get("startIndex", 0)), rng.get("endIndex")
    end = size if end is None else int(end)
    if start >= end or start > size or (not inserting and end > size):
        raise RequestError(f"Invalid dimension range [{start}, {end}) on a sheet of {size}.")
    return sheet, dimension, start, end


HANDLERS: dict[str, Handler] = {
    "updateCells": update_cells,
    "repeatCell": repeat_cell,
    "setDataValidation": set_data_validation,
    "sortRange": sort_range,
    "addSheet": add_sheet,
    "deleteSheet": delete_sheet,
    "updateSheetProperties": update_sheet_properties,
    "updateSpreadsheetProperties": update_spreadsheet_properties,
    "appendDimension": append_dimension,
    "insertDimension": insert_dimension,
    "deleteDimension": delete_dimension,
}
