"""The sheet texts people filter and format on stay what the README lists."""

from __future__ import annotations

import re
from pathlib import Path

from sheetrunner.model import STATUS_COLOURS, Status
from sheetrunner.sheet.schema import OWNED_COLUMNS

README = (Path(__file__).parents[1] / "README.md").read_text()


def _status_table() -> dict[str, str]:
    """status text -> colour word, from the README's table of statuses."""
    found = {}
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[1] in (
                "grey", "blue", "green", "orange", "yellow", "red", "dark grey"):
            for name in re.findall(r"`([a-z]+)`", cells[0]):
                found[name] = cells[1]
    return found


def test_every_status_is_in_the_readme_and_nothing_else():
    assert set(_status_table()) == {s.value for s in Status}


def test_statuses_sharing_a_colour_in_the_readme_share_it_in_the_sheet():
    table = _status_table()
    for a in Status:
        for b in Status:
            if table[a.value] == table[b.value]:
                assert STATUS_COLOURS[a] == STATUS_COLOURS[b], (a, b)


def test_the_owned_columns_are_the_readmes():
    listed = README.split("sheetrunner's columns", 1)[1].split("; with", 1)[0]
    assert re.findall(r"`([a-z]+)`", listed) == list(OWNED_COLUMNS)
