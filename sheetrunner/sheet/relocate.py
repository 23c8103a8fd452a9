"""Finding a row again after the sheet moved under us: the one identity rule for writes.

A write is planned against one read, and people sort, insert, delete and
copy rows at any moment. Before cells land, a backend reads again and asks
`locate` where each update belongs now:

- an update for a row that showed a run id goes to the row showing that id
  now; if a copied row shows the same id twice, to the one still at the read
  row number, else nowhere (the next cycle sorts it out);
- a claim (the row showed no id) lands on a row that still shows no id and
  the same user cells as when it was read: the same row number if it still
  does, else another such row (the rows were sorted), each row claimed once
  per write. Two such rows are the same experiment, so either may take it.

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


CLAIMED = ""  # the key of `by_id` under which locate() notes the rows claims took


def locate(update: RowUpdate, fresh: Table, by_id: dict[str, list[int]] | None = None) -> int | None:
    """The row `update` belongs to in `fresh`, or None when it cannot be placed safely.

    Pass the same `by_id` (from `rows_showing(fresh)`) for every update of one write: it
    also remembers which rows claims took, so that no row is claimed twice."""
    by_id = by_id if by_id is not None else rows_showing(fresh)
    if update.run_id:
        candidates = by_id.get(update.run_id, [])
        if update.row in candidates:
            return update.row
        return candidates[0] if len(candidates) == 1 else None
    taken = by_id.setdefault(CLAIMED, [])
    candidates = [r for r in _claimable(update, fresh) if r not in taken]
    if not candidates:
        return None
    row = update.row if update.row in candidates else candidates[0]
    taken.append(row)
    return row


def _claimable(update: RowUpdate, fresh: Table) -> list[int]:
    """Rows showing no id and the user cells the claim was planned on, the read row first."""
    expect = update.expect or {JOB_COLUMN: update.job}
    rows = [update.row, *(r for r in range(2, len(fresh.rows) + 2) if r != update.row)]
    return [r for r in rows if 2 <= r < len(fresh.rows) + 2 and not shown(fresh, r, ID_COLUMN)
            and all(shown(fresh, r, name) == value for name, value in expect.items())]
