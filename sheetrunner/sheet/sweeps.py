"""Sweeps from one row: a parameter cell holding a list or a range.

    0.1, 0.01, 0.001      a list (comma separated)
    1..5                  whole numbers, both ends included
    {1e-4..1e-1 log 4}    4 values spaced evenly on a log scale, ends included
    {0..1 lin 5}          5 values spaced evenly, ends included
    "30,60,90"            not a sweep: in double quotes, a value is passed as it is

A row with at least one such cell is a sweep: it expands into one child row
per combination (cartesian product across its sweep cells, in column order),
written under it, each its own experiment with its own id. Pure functions:
the daemon decides when to expand, the backends write the rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from ..argv import is_quoted

# At most this many child rows from one sweep row (the product over all its sweep cells).
MAX_CHILDREN = 1000
# A sweep cell longer than this is refused before it is parsed (schema.MAX_CELL_CHARS
# refuses any parameter cell over 4,096 characters first; this keeps the module safe alone).
MAX_SWEEP_CHARS = 4096
# The ends of a `1..5` range: more digits than this cannot be a sweep anyone means.
MAX_RANGE_DIGITS = 15
SWEEP_ID_PREFIX = "sweep-"


class SweepError(ValueError):
    """The cell looks like a sweep but is not a valid one; the message says how to fix it."""


def shorten(text: str, limit: int = 40) -> str:
    """At most `limit` characters of `text`, with a visible "…" when cut: for quoting a
    cell in a message without copying all of it."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_sweep(text: str) -> bool:
    """A list, a range or a spaced range; a value in double quotes never is (it is passed
    as it is: `"30,60,90"`, a JSON object)."""
    if is_quoted(text):
        return False
    return "," in text or _range(text) is not None or text.strip().startswith("{")


def _range(text: str) -> tuple[str, str] | None:
    """The two ends of `LOW..HIGH` (whole numbers, spaces allowed around them), or None.
    Split, not matched with a regex: one pass over the cell, whatever it holds."""
    low, dots, high = text.partition("..")
    low, high = low.strip(), high.strip()
    return (low, high) if dots and _whole(low) and _whole(high) else None


def _whole(text: str) -> bool:
    digits = text[1:] if text.startswith("-") else text
    return digits.isdecimal()  # what int() reads: decimal digits of any script


def values(text: str) -> list[str]:
    """The values a sweep cell stands for, as the text each child row holds.

    Linear in the cell's length and bounded: a cell over MAX_SWEEP_CHARS, or one standing
    for more than MAX_CHILDREN values, is refused before any value is made."""
    if len(text) > MAX_SWEEP_CHARS:
        raise SweepError(
            f"{shorten(text)!r}: a sweep cell holds at most {MAX_SWEEP_CHARS:,} "
            f"characters, this one {len(text):,}; split the sweep over several rows"
        )
    if text.strip().startswith("{"):
        return _spaced(text)
    if (ends := _range(text)) is not None:
        if any(len(end.lstrip("-")) > MAX_RANGE_DIGITS for end in ends):
            raise SweepError(
                f"{shorten(text)!r}: the ends of a range have at most "
                f"{MAX_RANGE_DIGITS} digits; write e.g. 1..5"
            )
        low, high = int(ends[0]), int(ends[1])
        if high < low:
            raise SweepError(f"{shorten(text)!r}: the range runs backwards; write {high}..{low}")
        if high - low + 1 > MAX_CHILDREN:
            raise SweepError(
                f"{shorten(text)!r}: the range has {high - low + 1:,} values; "
                f"at most {MAX_CHILDREN:,} are allowed"
            )
        return [str(v) for v in range(low, high + 1)]
    count = text.count(",") + 1
    if count > MAX_CHILDREN:
        raise SweepError(
            f"{shorten(text)!r}: the list has {count:,} items; at most {MAX_CHILDREN:,} are allowed"
        )
    items = [item.strip() for item in text.split(",")]
    if any(item == "" for item in items):
        raise SweepError(
            f"{shorten(text)!r}: an empty item in the list; write e.g. 0.1, 0.01, 0.001"
        )
    return items


def _spaced(text: str) -> list[str]:
    """`{LOW..HIGH log|lin COUNT}`, parsed by splitting (no backtracking regex)."""
    example = "write e.g. {1e-4..1e-1 log 4}"
    body = text.strip()
    parts = body[1:-1].rsplit(None, 2) if body.endswith("}") else []
    low_text, dots, high_text = parts[0].partition("..") if len(parts) == 3 else ("", "", "")
    low_text, high_text = low_text.strip(), high_text.strip()
    if not (
        dots
        and low_text
        and high_text
        and parts[1] in ("log", "lin")
        and parts[2].isascii()
        and parts[2].isdigit()
        and low_text.split() == [low_text]
        and high_text.split() == [high_text]
    ):
        raise SweepError(f"{shorten(text)!r} is not a spaced range; {example}")
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        raise SweepError(f"{shorten(text)!r}: the ends must be numbers, {example}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SweepError(f"{shorten(text)!r}: the ends must be finite numbers, {example}")
    scale = parts[1]
    count = int(parts[2]) if len(parts[2]) <= 6 else MAX_CHILDREN + 1
    if count < 2:
        raise SweepError(f"{shorten(text)!r}: ask for at least 2 values")
    if count > MAX_CHILDREN:
        raise SweepError(f"{shorten(text)!r}: ask for at most {MAX_CHILDREN:,} values")
    if scale == "log" and (low <= 0 or high <= 0):
        raise SweepError(f"{shorten(text)!r}: a log range needs ends above 0")
    if scale == "log":
        a, b = math.log10(low), math.log10(high)
        found = [_number(10 ** (a + (b - a) * i / (count - 1))) for i in range(count)]
    else:
        found = [_number(low + (high - low) * i / (count - 1)) for i in range(count)]
    if any(v in ("inf", "-inf", "nan") for v in found):
        raise SweepError(f"{shorten(text)!r}: the values do not fit in a number; narrow the range")
    return found


def _number(value: float) -> str:
    """Short text for a computed value: 0.001 rather than 0.0010000000000000002, 1 not 1.0."""
    short = float(f"{value:.6g}")
    return str(int(short)) if short.is_integer() else repr(short)


def combinations(cells: Sequence[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Every combination of the sweep cells; plain cells keep their one value.

    `cells` is [(column, text)] in column order; raises SweepError on bad syntax
    or more than MAX_CHILDREN combinations (counted before any is made)."""
    choices = [
        [(name, v) for v in values(text)] if is_sweep(text) else [(name, text)]
        for name, text in cells
    ]
    total = math.prod(len(c) for c in choices)
    if total > MAX_CHILDREN:
        raise SweepError(
            f"the sweep has {total:,} combinations; at most {MAX_CHILDREN:,} are "
            "allowed: split it over several rows"
        )
    return [list(combo) for combo in itertools.product(*choices)]
