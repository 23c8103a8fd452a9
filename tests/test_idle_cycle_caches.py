"""The idle cycle's shortcuts (docs/performance.md): a table unchanged since the last cycle
is not parsed or compared again, and any change to it, or to what the rows should show,
is seen at once."""

from __future__ import annotations

from sheetrunner.config import SheetConfig
from sheetrunner.model import Status
from sheetrunner.sheet import schema
from sheetrunner.sheet.render import SheetView
from sheetrunner.sheet.table import Table

HEADER = ["job", "--lr", "gpus", "id", "status", "message"]


def table(*rows: list) -> Table:
    return Table(list(HEADER), [list(r) for r in rows])


def test_an_unchanged_table_is_parsed_once_and_a_changed_cell_is_seen():
    cache = schema.ParseCache()
    first = cache.parse(table(["train", 0.1, 0], ["train", 0.2, 0]), ["train"])
    again = cache.parse(table(["train", 0.1, 0], ["train", 0.2, 0]), ["train"])
    assert [e.params for e in again] == [e.params for e in first]
    assert all(a is b for a, b in zip(again, first, strict=True))  # not parsed again
    edited = cache.parse(table(["train", 0.1, 0], ["train", 0.3, 0]), ["train"])
    assert edited[1].params == (("lr", "0.3"),)
    assert cache.parse(table(["train", 0.1, 0], ["train", 0.3, 0]), ["other"])[0].error


def test_the_write_of_an_unchanged_table_is_planned_again_only_when_something_changed():
    view = SheetView(SheetConfig(path=None))  # type: ignore[arg-type]
    invalid = {2: schema.note_values(Status.INVALID, "bad row")}
    shown = table(["nosuch", 0.1, 0, None, "", ""])
    first = view._plan_write(shown, invalid, [], {})
    assert [u.cells["status"] for u in first.rows] == ["invalid"]
    first.rows.clear()  # what a caller does with its answer never reaches the next one
    assert [u.cells["status"] for u in view._plan_write(shown, invalid, [], {}).rows] == [
        "invalid"
    ]
    written = table(["nosuch", 0.1, 0, None, "invalid", "bad row"])
    assert view._plan_write(written, invalid, [], {}).rows == []
    other = {2: schema.note_values(Status.INVALID, "another reason")}
    assert [u.cells for u in view._plan_write(written, other, [], {}).rows] == [
        {"message": "another reason"}
    ]
