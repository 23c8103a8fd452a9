"""spreadsheets.get: the spreadsheet's metadata, optionally with grid data and a `fields` mask."""

from __future__ import annotations

from typing import Any

from . import celldata, masks
from .a1 import Box
from .model import Sheet, Spreadsheet, ordered_properties
from .values_api import Params, flag, param


def _rgb(red: float = 0, green: float = 0, blue: float = 0) -> dict[str, float]:
    return {k: v for k, v in (("red", red), ("green", green), ("blue", blue)) if v}


_THEME = (
    ("TEXT", _rgb()),
    ("BACKGROUND", _rgb(1, 1, 1)),
    ("ACCENT1", _rgb(0.25882354, 0.52156866, 0.95686275)),
    ("ACCENT2", _rgb(0.91764706, 0.2627451, 0.20784314)),
    ("ACCENT3", _rgb(0.9843137, 0.7372549, 0.015686275)),
    ("ACCENT4", _rgb(0.20392157, 0.65882355, 0.3254902)),
    ("ACCENT5", _rgb(1, 0.42745098, 0.003921569)),
    ("ACCENT6", _rgb(0.27450982, 0.7411765, 0.7764706)),
    ("LINK", _rgb(0.06666667, 0.33333334, 0.8)),
)


def default_properties(title: str) -> dict[str, Any]:
    """A new spreadsheet's `properties`, exactly as the API reports them (en_US, GMT)."""
    text_format = {
        "foregroundColor": {},
        "fontFamily": "arial,sans,sans-serif",
        "fontSize": 10,
        "bold": False,
        "italic": False,
        "strikethrough": False,
        "underline": False,
        "foregroundColorStyle": {"rgbColor": {}},
    }
    default_format = {
        "backgroundColor": _rgb(1, 1, 1),
        "padding": {"top": 2, "right": 3, "bottom": 2, "left": 3},
        "verticalAlignment": "BOTTOM",
        "wrapStrategy": "OVERFLOW_CELL",
        "textFormat": text_format,
        "backgroundColorStyle": {"rgbColor": _rgb(1, 1, 1)},
    }
    theme = [{"colorType": kind, "color": {"rgbColor": rgb}} for kind, rgb in _THEME]
    return {
        "title": title,
        "locale": "en_US",
        "autoRecalc": "ON_CHANGE",
        "timeZone": "Etc/GMT",
        "defaultFormat": default_format,
        "spreadsheetTheme": {"primaryFontFamily": "Arial", "themeColors": theme},
    }


def get_spreadsheet(ss: Spreadsheet, params: Params) -> dict[str, Any]:
    """The metadata answer; grid data when asked for by includeGridData or by `fields`."""
    fields = param(params, "fields")
    paths = masks.parse(fields) if fields else [()]
    want_grid = flag(params, "includeGridData") or any(p[:2] == ("sheets", "data") for p in paths)
    cell_paths = masks.touches(paths, ("sheets", "data", "rowData", "values"))
    sheets = []
    for sheet, boxes in _sheets_for(ss, params.get("ranges", [])):
        entry: dict[str, Any] = {"properties": ordered_properties(sheet.props)}
        if want_grid:
            entry["data"] = [grid_data(sheet, box, cell_paths) for box in boxes]
        sheets.append(entry)
    full = {
        "spreadsheetId": ss.id,
        "properties": ss.properties,
        "sheets": sheets,
        "spreadsheetUrl": f"https://docs.google.com/spreadsheets/d/{ss.id}/edit",
    }
    return masks.project(full, paths)


def _sheets_for(ss: Spreadsheet, ranges: list[str]) -> list[tuple[Sheet, list[Box | None]]]:
    """Every sheet when no ranges are given, else only the ranged sheets, in tab order."""
    if not ranges:
        return [(sheet, [None]) for sheet in ss.sheets]
    wanted: dict[int, list[Box | None]] = {}
    for text in ranges:
        sheet, box = ss.resolve(text)
        wanted.setdefault(sheet.sheet_id, []).append(box)
    return [(s, wanted[s.sheet_id]) for s in ss.sheets if s.sheet_id in wanted]


def grid_data(sheet: Sheet, box: Box | None, cell_paths: list[masks.Path]) -> dict[str, Any]:
    """One GridData: rows of CellData, masked, then trimmed like values (empty -> {})."""
    clipped = sheet.clip(box)
    rows = []
    for r in range(clipped.row0, clipped.row1):
        stored = [c for c in sheet.rows[r] if clipped.col0 <= c < clipped.col1]
        cells = [
            masks.project(celldata.cell_json(sheet.cell(r, c), sheet.value(r, c)), cell_paths)
            for c in range(clipped.col0, max(stored, default=clipped.col0 - 1) + 1)
        ]
        while cells and not cells[-1]:
            cells.pop()
        rows.append({"values": cells} if cells else {})
    while rows and not rows[-1]:
        rows.pop()
    out: dict[str, Any] = {}
    if clipped.row0:
        out["startRow"] = clipped.row0
    if clipped.col0:
        out["startColumn"] = clipped.col0
    if rows:
        out["rowData"] = rows
    return out
