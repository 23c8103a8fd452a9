"""One cell: what was entered, how it is typed, and how the API renders it.

The point of the emulator is to catch the mistakes a real sheet punishes: a
string that becomes a formula, a number shown rounded, a date turned into a
serial. So input parsing (RAW, USER_ENTERED, typed ExtendedValues) and output
rendering (FORMATTED_VALUE, UNFORMATTED_VALUE, FORMULA) follow the API closely
for the cases sheetrunner meets, and simply for the rest.
"""

from __future__ import annotations

import ast
import datetime as dt
import math
import operator
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from .a1 import col_index

EMPTY: Mapping[str, Any] = MappingProxyType({})
EPOCH = dt.date(1899, 12, 30)  # serial number 0 in Sheets
_NUMBER = re.compile(r"^\s*([+-]?)(\d{1,3}(?:,\d{3})+|\d*)(\.\d*)?([eE][+-]?\d+)?\s*(%?)\s*$")
_ISO_DATE = re.compile(r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})\s*$")
_US_DATE = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{4})\s*$")
_FUNCTION_CALL = re.compile(r"^\s*([A-Za-z][A-Za-z0-9.]*)\s*\(")
_CELL_REF = re.compile(r"^([A-Za-z]{1,3})([0-9]+)$")

Value = str | int | float | bool | None
FORMULA_ERRORS = frozenset({"#DIV/0!", "#NAME?", "#REF!", "#VALUE!", "#ERROR!", "#N/A"})


@dataclass(frozen=True)
class NumberFormat:
    """The part of `userEnteredFormat.numberFormat` the emulator renders."""

    type: str  # NUMBER, SCIENTIFIC, PERCENT, DATE
    pattern: str


@dataclass(frozen=True)
class Cell:
    """An immutable cell; edits build a new one, so snapshots are cheap shallow copies."""

    value: Value = None  # the entered literal; None when blank or a formula
    formula: str | None = None  # entered formula text, starting with "="
    number_format: NumberFormat | None = None
    # userEnteredFormat, without numberFormat (kept apart, above)
    fmt: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    note: str | None = None
    validation: Mapping[str, Any] | None = None

    @property
    def has_value(self) -> bool:
        return self.value is not None or self.formula is not None

    @property
    def is_empty(self) -> bool:
        """Nothing at all is stored: the cell can be dropped from the grid."""
        return not (self.has_value or self.number_format or self.fmt or self.note) and (
            self.validation is None
        )

    def with_input(self, entered: Cell) -> Cell:
        """This cell with the value (and any detected number format) of `entered`."""
        number_format = entered.number_format or self.number_format
        return replace(
            self, value=entered.value, formula=entered.formula, number_format=number_format
        )

    def cleared(self) -> Cell:
        return replace(self, value=None, formula=None)


BLANK = Cell()


# ---------------------------------------------------------------- input


def from_raw(value: Any) -> Cell:
    """valueInputOption=RAW: stored exactly as given; strings stay text."""
    _check_scalar(value)
    if value == "":
        return BLANK
    return Cell(value=value)


def from_user_entered(value: Any) -> Cell:
    """valueInputOption=USER_ENTERED: parsed as if typed into the UI."""
    _check_scalar(value)
    if not isinstance(value, str):
        return Cell(value=value)
    if value == "":
        return BLANK
    if value.startswith("'"):
        return Cell(value=value[1:])
    if value.startswith("=") and len(value) > 1:
        return Cell(formula=value)
    if value.strip().upper() in ("TRUE", "FALSE"):
        return Cell(value=value.strip().upper() == "TRUE")
    return _parse_number(value) or _parse_date(value) or Cell(value=value)


def from_extended(extended: Mapping[str, Any] | None) -> Cell:
    """A typed `ExtendedValue` from updateCells/repeatCell: never parsed."""
    if not extended:
        return BLANK
    if "formulaValue" in extended:
        return Cell(formula=str(extended["formulaValue"]))
    for key in ("numberValue", "stringValue", "boolValue"):
        if key in extended:
            return Cell(value=extended[key])
    if "errorValue" in extended:
        return Cell(value=extended["errorValue"].get("message", "#ERROR!"))
    raise ValueError(f"unsupported ExtendedValue {dict(extended)}")


def _check_scalar(value: Any) -> None:
    if value is not None and not isinstance(value, str | int | float | bool):
        raise ValueError(value)


def _parse_number(text: str) -> Cell | None:
    m = _NUMBER.match(text)
    if not m or not re.search(r"\d", m.group(2) + (m.group(3) or "")):
        return None
    sign, whole, frac, exp, pct = m.groups()
    number = float(sign + whole.replace(",", "") + (frac or "") + (exp or ""))
    if pct:
        number /= 100
    number = int(number) if number.is_integer() and not (frac or exp or pct) else number
    return Cell(value=number, number_format=_detected_format(whole, frac, exp, pct))


def _detected_format(
    whole: str, frac: str | None, exp: str | None, pct: str
) -> NumberFormat | None:
    """The number format the UI applies when a number is typed in this shape."""
    decimals = bool(frac and len(frac) > 1)
    if exp:
        return NumberFormat("SCIENTIFIC", "0.00E+00")
    if pct:
        return NumberFormat("PERCENT", "0.00%" if decimals else "0%")
    if "," in whole:
        return NumberFormat("NUMBER", "#,##0.00" if decimals else "#,##0")
    return None


def _parse_date(text: str) -> Cell | None:
    for regex, pattern, order in (
        (_ISO_DATE, "yyyy-mm-dd", (0, 1, 2)),
        (_US_DATE, "M/d/yyyy", (2, 0, 1)),
    ):
        m = regex.match(text)
        if m:
            year, month, day = (int(m.group(i + 1)) for i in order)
            try:
                serial = (dt.date(year, month, day) - EPOCH).days
            except ValueError:
                return None
            return Cell(value=serial, number_format=NumberFormat("DATE", pattern))
    return None


# ---------------------------------------------------------------- rendering

Lookup = Callable[[int, int], Value]


def effective(cell: Cell, lookup: Lookup) -> Value:
    """The cell's value as the sheet computes it (a formula's result, not its text)."""
    if cell.formula is not None:
        return evaluate(cell.formula, lookup)
    return cell.value


def render(cell: Cell, lookup: Lookup, how: str, datetimes: str = "SERIAL_NUMBER") -> Any:
    """The JSON value values.get returns for this cell ("" for a blank one)."""
    if how == "FORMULA" and cell.formula is not None:
        return cell.formula
    value = effective(cell, lookup)
    if value is None:
        return ""
    if how == "FORMATTED_VALUE":
        return formatted(value, cell.number_format)
    if cell.number_format and cell.number_format.type == "DATE" and datetimes == "FORMATTED_STRING":
        return formatted(value, cell.number_format)
    return json_number(value)


def json_number(value: Value) -> Value:
    """Integral floats come back as JSON integers (the API prints 2, not 2.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def formatted(value: Value, number_format: NumberFormat | None) -> str:
    """The displayed text of a value, as FORMATTED_VALUE returns it."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if number_format is not None:
        return _apply_pattern(float(value), number_format)
    return general(float(value))


def general(x: float) -> str:
    """Sheets' automatic format: plain digits, up to 10 decimals, E notation at the extremes."""
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    if abs(x) >= 1e15 or abs(x) < 1e-10:
        return f"{x:.2E}"
    return f"{x:.10f}".rstrip("0").rstrip(".")


def _apply_pattern(x: float, nf: NumberFormat) -> str:
    if nf.type == "DATE":
        day = EPOCH + dt.timedelta(days=int(x))
        if nf.pattern == "M/d/yyyy":
            return f"{day.month}/{day.day}/{day.year}"
        return day.isoformat()
    patterns = {
        "0.00E+00": lambda: f"{x:.2E}",
        "#,##0.00": lambda: f"{x:,.2f}",
        "#,##0": lambda: f"{x:,.0f}",
        "0.00%": lambda: f"{x * 100:.2f}%",
        "0%": lambda: f"{x * 100:.0f}%",
    }
    return patterns.get(nf.pattern, lambda: general(x))()


# ---------------------------------------------------------------- formulas

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class _FormulaError(Exception):
    """Carries the error value ("#DIV/0!") a cell shows."""


def evaluate(formula: str, lookup: Lookup) -> Value:
    """A tiny evaluator: numbers, + - * / ^, parentheses and plain cell references.

    Functions are not evaluated: SPARKLINE (a chart drawn in the cell) has no
    value, anything else shows #NAME?. Enough to tell a formula from text.
    """
    body = formula[1:]
    call = _FUNCTION_CALL.match(body)
    if call:
        return "" if call.group(1).upper() == "SPARKLINE" else "#NAME?"
    try:
        tree = ast.parse(body.strip().replace("^", "**"), mode="eval")
        return json_number(_eval_node(tree.body, lookup))
    except _FormulaError as exc:
        return str(exc)
    except ZeroDivisionError:
        return "#DIV/0!"
    except (SyntaxError, ValueError, TypeError, OverflowError):
        return "#ERROR!"


def _eval_node(node: ast.AST, lookup: Lookup) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval_node(node.left, lookup), _eval_node(node.right, lookup)
        return _BINARY[type(node.op)](_as_number(left), _as_number(right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_as_number(_eval_node(node.operand, lookup)))
    if isinstance(node, ast.Name) and _CELL_REF.match(node.id):
        return _reference(node.id, lookup)
    raise _FormulaError("#ERROR!")


def _reference(name: str, lookup: Lookup) -> Value:
    m = _CELL_REF.match(name)
    assert m
    value = lookup(int(m.group(2)) - 1, col_index(m.group(1)))
    return 0 if value is None or value == "" else value


def _as_number(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and value.startswith("#"):
        raise _FormulaError(value)
    raise _FormulaError("#VALUE!")


# ---------------------------------------------------------------- colours

CHANNELS = ("red", "green", "blue", "alpha")


def quantise_colour(colour: Mapping[str, Any]) -> dict[str, Any]:
    """A colour as the API stores it: 1/255 steps, float32 digits, zero channels left out.

    A 0.5 sent comes back as 0.49803922 (127/255): halves round down.
    """
    out = {}
    for channel in CHANNELS:
        level = colour.get(channel)
        if not level:
            continue
        step = math.ceil(float(level) * 255 - 0.5) if channel != "alpha" else None
        number = step / 255 if step is not None else float(level)
        if number:
            out[channel] = json_number(_float32_shortest(number))
    return out


def colour_hex(colour: Mapping[str, Any] | None) -> str | None:
    """RRGGBB of a stored colour (black when all channels are zero), None when unset."""
    if colour is None:
        return None
    levels = (round(float(colour.get(c, 0)) * 255) for c in CHANNELS[:3])
    return "".join(f"{level:02X}" for level in levels)


def _float32_shortest(x: float) -> float:
    """The shortest decimal that reads back as the same float32 (how the API prints it)."""
    target = struct.pack("<f", x)
    for digits in range(1, 10):
        candidate = float(f"{x:.{digits}g}")
        if struct.pack("<f", candidate) == target:
            return candidate
    return x
