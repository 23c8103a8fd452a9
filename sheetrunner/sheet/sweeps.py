"""Sweeps from one row: a parameter cell holding a list or a range.

    0.1, 0.01, 0.001      a list (comma separated)
    1..5                  whole numbers, both ends included
    {1e-4..1e-1 log 4}    4 values spaced evenly on a log scale, ends included
    {0..1 lin 5}          5 values spaced evenly, ends included

A row with at least one such cell is a sweep: it expands into one child row
per combination (cartesian product across its sweep cells, in column order),
written under it, each its own experiment with its own id. Pure functions:
the daemon decides when to expand, the backends write the rows.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence

MAX_CHILDREN = 1000
SWEEP_ID_PREFIX = "sweep-"
RANGE_RE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")
SPACED_RE = re.compile(r"^\s*\{\s*(\S+?)\s*\.\.\s*(\S+)\s+(log|lin)\s+(\d+)\s*\}\s*$")


class SweepError(ValueError):
    """The cell looks like a sweep but is not a valid one; the message says how to fix it."""


def is_sweep(text: str) -> bool:
    return "," in text or RANGE_RE.match(text) is not None or text.strip().startswith("{")


def values(text: str) -> list[str]:
    """The values a sweep cell stands for, as the text each child row holds."""
    if text.strip().startswith("{"):
        return _spaced(text)
    if (match := RANGE_RE.match(text)) is not None:
        low, high = int(match.group(1)), int(match.group(2))
        if high < low:
            raise SweepError(f"{text!r}: the range runs backwards; write {high}..{low}")
        return [str(v) for v in range(low, high + 1)]
    items = [item.strip() for item in text.split(",")]
    if any(item == "" for item in items):
        raise SweepError(f"{text!r}: an empty item in the list; write e.g. 0.1, 0.01, 0.001")
    return items


def _spaced(text: str) -> list[str]:
    match = SPACED_RE.match(text)
    if match is None:
        raise SweepError(f"{text!r} is not a spaced range; write e.g. {{1e-4..1e-1 log 4}}")
    try:
        low, high = float(match.group(1)), float(match.group(2))
    except ValueError:
        raise SweepError(f"{text!r}: the ends must be numbers, e.g. {{1e-4..1e-1 log 4}}") from None
    count, scale = int(match.group(4)), match.group(3)
    if count < 2:
        raise SweepError(f"{text!r}: ask for at least 2 values")
    if scale == "log" and (low <= 0 or high <= 0):
        raise SweepError(f"{text!r}: a log range needs ends above 0")
    if scale == "log":
        a, b = math.log10(low), math.log10(high)
        return [_number(10 ** (a + (b - a) * i / (count - 1))) for i in range(count)]
    return [_number(low + (high - low) * i / (count - 1)) for i in range(count)]


def _number(value: float) -> str:
    """Short text for a computed value: 0.001 rather than 0.0010000000000000002, 1 not 1.0."""
    short = float(f"{value:.6g}")
    return str(int(short)) if short.is_integer() else repr(short)


def combinations(cells: Sequence[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Every combination of the sweep cells; plain cells keep their one value.

    `cells` is [(column, text)] in column order; raises SweepError on bad syntax
    or more than MAX_CHILDREN combinations."""
    choices = [[(name, v) for v in values(text)] if is_sweep(text) else [(name, text)]
               for name, text in cells]
    total = math.prod(len(c) for c in choices)
    if total > MAX_CHILDREN:
        raise SweepError(f"the sweep has {total} combinations; at most {MAX_CHILDREN} are allowed")
    return [list(combo) for combo in itertools.product(*choices)]
