"""Finding a row again after the sheet moved under us: the one identity rule for writes.

A write is planned against one read, and people sort, insert, delete and
copy rows at any moment. Before cells land, a backend reads again and asks
`locate` where each update belongs now:

- an update for a row that showed a run id goes to the row showing that id
  now; if a copied row shows the same id twice, to the one still at the read
  row number, else nowhere (the next cycle sorts it out);
- a claim (the row showed no id) lands only on the same row number, and only
  if that row still shows no id and the same user cells as when it was read.

An update that cannot be placed is dropped: the next cycle reads again and
writes it then. Writing by a stale position could overwrite another run's row.
"""

from __future__ import annotations

from .schema import cell_text
from .table import RowUpdate, Table

ID_COLUMN = "id"
JOB_COLUMN = "job"


def shown(table: Table, row: int, name: str) -> str:
    """A cell as text, compared the way the schema compares it."""
    return cell_text(table.value(row, name)).strip()


def rows_showing(table: Table) -> dict[str, list[int]]:
    """Run id -> the rows showing it now, in sheet order."""
    found: dict[str, list[int]] = {}
    for row in range(2, len(table.rows) + 2):
        text = shown(table, row, ID_COLUMN)
        if text:
            found.setdefault(text, []).append(row)
    return found


def locate(update: RowUpdate, fresh: Table, by_id: dict[str, list[int]] | None = None) -> int | None:
    """The row `update` belongs to in `fresh`, or None when it cannot be placed safely."""
    if update.run_id:
        candidates = (by_id if by_id is not None else rows_showing(fresh)).get(update.run_id, [])
        if update.row in candidates:
            return update.row
        return candidates[0] if len(candidates) == 1 else None
    expect = update.expect or {JOB_COLUMN: update.job}
    if shown(fresh, update.row, ID_COLUMN):
        return None
    same = all(shown(fresh, update.row, name) == value for name, value in expect.items())
    return update.row if same else None
