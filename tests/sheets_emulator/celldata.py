"""CellData JSON <-> Cell: what updateCells/repeatCell write and grid-data reads return.

Formats are stored the way the API keeps them (colours quantised, one
spelling per colour) and printed the way it prints them (CellFormat key
order, the *Style mirror of each colour added).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from . import masks
from .cells import (
    FORMULA_ERRORS,
    Cell,
    NumberFormat,
    Value,
    formatted,
    from_extended,
    json_number,
    quantise_colour,
)

# (plain colour key, its Style twin) inside userEnteredFormat and inside its textFormat
_COLOUR_PAIRS = (((), "backgroundColor"), (("textFormat",), "foregroundColor"))
_FORMAT_ORDER = (
    "numberFormat",
    "backgroundColor",
    "borders",
    "padding",
    "horizontalAlignment",
    "verticalAlignment",
    "wrapStrategy",
    "textDirection",
    "textFormat",
    "hyperlinkDisplayType",
    "textRotation",
    "backgroundColorStyle",
)
_TEXT_ORDER = (
    "foregroundColor",
    "fontFamily",
    "fontSize",
    "bold",
    "italic",
    "strikethrough",
    "underline",
    "foregroundColorStyle",
    "link",
)


def apply(cell: Cell, data: Mapping[str, Any], paths: list[masks.Path]) -> Cell:
    """`cell` with the masked fields of CellData `data` written (absent ones cleared)."""
    for path in paths:
        head = path[0]
        if head == "*":
            cell = _apply_all(cell, data)
        elif head == "userEnteredValue":
            cell = cell.with_input(from_extended(data.get("userEnteredValue")))
        elif head == "userEnteredFormat":
            cell = _apply_format(cell, data.get("userEnteredFormat") or {}, path[1:])
        elif head == "note":
            cell = replace(cell, note=data.get("note") or None)
        elif head == "dataValidation":
            cell = replace(cell, validation=copy.deepcopy(data.get("dataValidation")))
    return cell


def _apply_all(cell: Cell, data: Mapping[str, Any]) -> Cell:
    cell = cell.with_input(from_extended(data.get("userEnteredValue")))
    cell = replace(cell, fmt={}, number_format=None)
    cell = _apply_format(cell, data.get("userEnteredFormat") or {}, ())
    return replace(cell, note=data.get("note") or None, validation=data.get("dataValidation"))


def _apply_format(cell: Cell, source: Mapping[str, Any], sub: masks.Path) -> Cell:
    fmt = format_json(cell, mirrors=False)
    masks.apply(fmt, source, [sub] if sub else [("*",)])
    for where, key in _COLOUR_PAIRS:
        _settle_colour(fmt, where, key, sub)
    number = fmt.pop("numberFormat", None)
    number_format = (
        NumberFormat(number.get("type", "NUMBER"), number.get("pattern", "")) if number else None
    )
    return replace(cell, fmt=fmt, number_format=number_format)


def _settle_colour(fmt: dict[str, Any], where: masks.Path, key: str, sub: masks.Path) -> None:
    """Keep one spelling of a colour, the plain one, quantised (the API treats both as one)."""
    node = fmt
    for step in where:
        node = node.get(step) if isinstance(node.get(step), dict) else {}
    style_path = where + (key + "Style",)
    style = node.pop(key + "Style", None)
    if style is not None and "rgbColor" in style:
        node[key] = style["rgbColor"]
    elif sub[: len(style_path)] == style_path:
        node.pop(key, None)
    if key in node:
        node[key] = quantise_colour(node[key] or {})


def format_json(cell: Cell, mirrors: bool = True) -> dict[str, Any]:
    """The cell's userEnteredFormat as the API prints it."""
    fmt = copy.deepcopy(dict(cell.fmt))
    if cell.number_format:
        fmt["numberFormat"] = {
            "type": cell.number_format.type,
            "pattern": cell.number_format.pattern,
        }
    if not mirrors:
        return fmt
    if "backgroundColor" in fmt:
        fmt["backgroundColorStyle"] = {"rgbColor": dict(fmt["backgroundColor"])}
    text = fmt.get("textFormat")
    if isinstance(text, dict) and "foregroundColor" in text:
        text["foregroundColorStyle"] = {"rgbColor": dict(text["foregroundColor"])}
        fmt["textFormat"] = _ordered(text, _TEXT_ORDER)
    return _ordered(fmt, _FORMAT_ORDER)


def _ordered(d: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    return {k: d[k] for k in order if k in d} | d


def cell_json(cell: Cell, value: Value) -> dict[str, Any]:
    """The full CellData of a cell whose computed value is `value`."""
    out: dict[str, Any] = {}
    if cell.has_value:
        entered = (
            {"formulaValue": cell.formula} if cell.formula is not None else extended(cell.value)
        )
        out["userEnteredValue"] = entered
        if value not in (None, ""):
            out["effectiveValue"] = extended(value)
            out["formattedValue"] = formatted(value, cell.number_format)
    fmt = format_json(cell)
    if fmt:
        out["userEnteredFormat"] = fmt
    if cell.note:
        out["note"] = cell.note
    if cell.validation:
        out["dataValidation"] = copy.deepcopy(dict(cell.validation))
    return out


def extended(value: Value) -> dict[str, Any]:
    """A value as an ExtendedValue."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int | float):
        return {"numberValue": json_number(value)}
    if value in FORMULA_ERRORS:
        return {"errorValue": {"type": "ERROR", "message": value}}
    return {"stringValue": "" if value is None else value}
