"""A1 notation: parse the ranges clients send, and echo them the way the API does.

The API is picky about how it echoes a range (a title is quoted only when it
has to be; an open-ended range is expanded to the grid, not to the data), and
gspread and sheetrunner compare or log those echoes, so the rules live here once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENDPOINT = re.compile(r"^([A-Za-z]{0,3})([0-9]*)$")
_PLAIN_TITLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CELL_LIKE = re.compile(r"^[A-Za-z]{1,3}[0-9]+$")
_R1C1_LIKE = re.compile(r"^[Rr][0-9]*[Cc][0-9]*$")


@dataclass(frozen=True)
class Box:
    """A rectangle of 0-based, end-exclusive indexes; None means "to the grid's edge"."""

    row0: int = 0
    row1: int | None = None
    col0: int = 0
    col1: int | None = None

    def clip(self, rows: int, cols: int) -> Box:
        """The same box with open or overlong ends cut to a grid of rows x cols."""
        row1 = rows if self.row1 is None else min(self.row1, rows)
        col1 = cols if self.col1 is None else min(self.col1, cols)
        return Box(min(self.row0, row1), row1, min(self.col0, col1), col1)

    @property
    def is_cell(self) -> bool:
        return self.row1 == self.row0 + 1 and self.col1 == self.col0 + 1


@dataclass(frozen=True)
class A1Range:
    """A parsed range: `title` None when no sheet was named, `box` None for a whole sheet."""

    title: str | None
    box: Box | None


def col_letters(index: int) -> str:
    """0-based column index -> letters (0 -> A, 26 -> AA)."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def col_index(letters: str) -> int:
    """Letters -> 0-based column index (A -> 0)."""
    index = 0
    for ch in letters.upper():
        index = index * 26 + (ord(ch) - ord("A") + 1)
    return index - 1


def cell_name(row: int, col: int) -> str:
    """0-based (row, col) -> "B3"."""
    return f"{col_letters(col)}{row + 1}"


def quote_title(title: str) -> str:
    """A sheet title as the API echoes it: bare when unambiguous, else single-quoted."""
    plain = _PLAIN_TITLE.match(title) and not _CELL_LIKE.match(title)
    if plain and not _R1C1_LIKE.match(title):
        return title
    return "'" + title.replace("'", "''") + "'"


def format_box(box: Box) -> str:
    """A bounded box -> "A1" or "A1:D4"."""
    assert box.row1 is not None and box.col1 is not None
    start = cell_name(box.row0, box.col0)
    if box.is_cell:
        return start
    return f"{start}:{cell_name(box.row1 - 1, box.col1 - 1)}"


def format_range(title: str, box: Box) -> str:
    return f"{quote_title(title)}!{format_box(box)}"


def split_title(text: str) -> tuple[str | None, str]:
    """Split "'My tab'!A1" into ("My tab", "A1"); a bare word gives (None, word).

    Titles may arrive unquoted even with spaces ("🌵 tab 1!A1"), so an unquoted
    title runs up to the last "!". Raises ValueError on a broken quoted title.
    """
    if text.startswith("'"):
        title, rest = _read_quoted(text)
        if rest == "":
            return title, ""
        if not rest.startswith("!"):
            raise ValueError(text)
        return title, rest[1:]
    if "!" in text:
        title, _, ref = text.rpartition("!")
        return title, ref
    return None, text


def _read_quoted(text: str) -> tuple[str, str]:
    out, i = [], 1
    while i < len(text):
        if text[i] == "'":
            if text[i + 1 : i + 2] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), text[i + 1 :]
        out.append(text[i])
        i += 1
    raise ValueError(text)


def parse_box(ref: str) -> Box | None:
    """Parse "A1", "A1:C", "A:A", "2:2", "A2:2"; None when `ref` is not a cell reference."""
    parts = ref.split(":")
    matches = [_ENDPOINT.match(p.strip()) for p in parts]
    if len(parts) > 2 or not all(m and m.group(0) for m in matches):
        return None
    ends = [(m.group(1), m.group(2)) for m in matches]
    if len(ends) == 1:
        if not all(ends[0]):
            return None
        ends.append(ends[0])
    (c0, r0), (c1, r1) = ends
    row0, row1 = _span(int(r0) - 1 if r0 else 0, int(r1) if r1 else None)
    col0, col1 = _span(col_index(c0) if c0 else 0, col_index(c1) + 1 if c1 else None)
    return Box(row0, row1, col0, col1)


def _span(start: int, end: int | None) -> tuple[int, int | None]:
    """Order a reversed span ("B2:A1" means "A1:B2")."""
    if end is not None and end <= start:
        return end - 1, start + 1
    return start, end
