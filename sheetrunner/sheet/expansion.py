"""Sweep rows on the sheet: expanded once into child rows, then summarised.

A sweep row (see `sweeps.py` for the syntax) is claimed with an id of its
own (`sweep-…`) in the same batch that inserts its children directly under
it; each child carries that id in its `sweep` cell. Both land together or not
at all (one atomic write), so a sweep is never expanded twice. From then on
the sweep row's status summarises its children: `3/12 running, 9 queued`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ..argv import param_header
from ..model import STATUS_COLOURS, Action, Experiment, Status
from .schema import USER_COLUMNS, cell_text, param_columns, user_cells
from .sweeps import SWEEP_ID_PREFIX
from .table import RowInsert, Table

SWEEP_COLUMN = "sweep"
# The summary's colour: the most pressing status among the children.
COLOUR_ORDER = (
    Status.FAILED,
    Status.INVALID,
    Status.UNPLACEABLE,
    Status.RETRYING,
    Status.STALLED,
    Status.LOST,
    Status.RUNNING,
    Status.LAUNCHING,
    Status.QUEUED,
    Status.HELD,
    Status.STOPPED,
    Status.SUCCEEDED,
    Status.DUPLICATE,
)


def sweep_id(parent: Experiment) -> str:
    return f"{SWEEP_ID_PREFIX}{parent.key[:8]}"


def expand(table: Table, parent: Experiment) -> tuple[dict[str, Any], RowInsert]:
    """The sweep row's own cells and the child rows to insert under it."""
    sid = sweep_id(parent)
    users = [h for h in table.header if h in USER_COLUMNS or h in param_columns(table.header)]
    # The sweep row's action is not copied: it applies to the children from the sweep row
    # (with_sweep_actions), so that changing it there reaches all of them.
    base = {name: table.value(parent.row, name) for name in users if name != "action"}
    children = []
    for combo in parent.children:
        child = dict(base)
        child.update({param_header(name): value for name, value in combo})
        child[SWEEP_COLUMN] = sid
        children.append(child)
    own = {"id": sid, "status": f"sweep: {len(children)} rows", "message": ""}
    return own, RowInsert(parent.row, children, expect=user_cells(table, parent.row))


def summary(child_statuses: list[Status]) -> tuple[str, str]:
    """`3/12 running, 9 queued` and the row colour of the most pressing child status."""
    if not child_statuses:
        return "sweep: no rows left", STATUS_COLOURS[Status.STOPPED]
    counts = Counter(child_statuses)
    total = len(child_statuses)
    ordered = sorted(counts.items(), key=lambda item: COLOUR_ORDER.index(item[0]))
    first, *rest = ordered
    text = ", ".join([f"{first[1]}/{total} {first[0].value}", *(f"{n} {s.value}" for s, n in rest)])
    return text, STATUS_COLOURS[first[0]]


def sweep_values(
    table: Table, parents: list[Experiment], child_status: Mapping[str, list[Status]]
) -> tuple[dict[int, dict[str, Any]], dict[int, str], list[RowInsert]]:
    """Owned cells and fills for every sweep row, and the inserts for new ones."""
    values: dict[int, dict[str, Any]] = {}
    fills: dict[int, str] = {}
    inserts: list[RowInsert] = []
    for parent in parents:
        shown = cell_text(table.value(parent.row, "id")).strip()
        if not shown:
            own, insert = expand(table, parent)
            values[parent.row], fills[parent.row] = own, STATUS_COLOURS[Status.QUEUED]
            inserts.append(insert)
            continue
        text, colour = summary(child_status.get(shown, []))
        values[parent.row] = {"id": shown, "status": text, "message": ""}
        if cell_text(table.value(parent.row, "status")).strip() != text:
            fills[parent.row] = colour
    return values, fills, inserts


SWEEP_ACTIONS = (Action.STOP, Action.HOLD, Action.RERUN)


def with_sweep_actions(experiments: list[Experiment]) -> list[Experiment]:
    """A sweep row's `stop`, `hold` or `rerun` applies to every row expanded from it (a
    person acts on the sweep, not on its 48 children). `run` or an empty action on the
    sweep row leaves each child to its own action cell, which expansion leaves empty."""
    acting = {
        e.run_id: e.action
        for e in experiments
        if e.is_sweep and e.run_id and e.action in SWEEP_ACTIONS
    }
    return [
        dataclasses.replace(e, action=acting[e.sweep_id]) if e.sweep_id in acting else e
        for e in experiments
    ]
