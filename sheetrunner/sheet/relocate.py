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


class RowIndex(dict[str, list[int]]):
    """Run id -> the rows showing it now, in sheet order; plus, for claims, the rows no
    claim took yet, indexed by the user cells they show (built once per write, so placing
    thousands of claims stays linear)."""

    def __init__(self, table: Table):
        super().__init__()
        self.table = table
        self.claimed: set[int] = set()
        self._unclaimed: dict[tuple[str, ...], dict[tuple[str, ...], list[int]]] = {}
        for row in range(2, len(table.rows) + 2):
            text = shown(table, row, ID_COLUMN)
            if text:
                self.setdefault(text, []).append(row)

    def claimable(self, names: tuple[str, ...], values: tuple[str, ...]) -> list[int]:
        """Rows showing no id and these user cells, in sheet order."""
        if names not in self._unclaimed:
            index: dict[tuple[str, ...], list[int]] = {}
            for row in range(2, len(self.table.rows) + 2):
                if not shown(self.table, row, ID_COLUMN):
                    cells = tuple(shown(self.table, row, name) for name in names)
                    index.setdefault(cells, []).append(row)
            self._unclaimed[names] = index
        return self._unclaimed[names].get(values, [])


def rows_showing(table: Table) -> RowIndex:
    """Run id -> the rows showing it now, in sheet order (see RowIndex)."""
    return RowIndex(table)


def locate(update: RowUpdate, fresh: Table, by_id: RowIndex | None = None) -> int | None:
    """The row `update` belongs to in `fresh`, or None when it cannot be placed safely.

    Pass the same `by_id` (from `rows_showing(fresh)`) for every update of one write: it
    also remembers which rows claims took, so that no row is claimed twice."""
    index = by_id if by_id is not None else rows_showing(fresh)
    if update.run_id:
        candidates = index.get(update.run_id, [])
        if update.row in candidates:
            return update.row
        return candidates[0] if len(candidates) == 1 else None
    expect = update.expect or {JOB_COLUMN: update.job}
    names = tuple(sorted(expect))
    candidates = [
        r for r in index.claimable(names, tuple(expect[n] for n in names)) if r not in index.claimed
    ]
    if not candidates:
        return None
    row = update.row if update.row in candidates else candidates[0]
    index.claimed.add(row)
    return row
