"""Rows to runs: the one identity rule, and runs rebuilt when the store lost them.

Part of the pure core (called by `reconcile.plan`). A row keeps its run through
any edit a person makes:

- a row showing a run's id is that run's row; if a copied row shows the same
  id twice, the row whose job and parameters match the run keeps it, and the
  copy is a new experiment;
- a row showing no id (or a text sheetrunner never wrote) takes back a run of
  its experiment that no row shows: a claim whose write never reached the
  sheet, or an id erased by a stale copy of the sheet saved over ours, even
  when that run is final; only then is a new run claimed;
- the store is a cache: a row showing an id the store does not know gets that
  run rebuilt from what the hosts report of it (the newest attempt found
  anywhere), else from what the row shows, never blanking it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import datetime

from .model import (
    Action,
    AttemptObservation,
    AttemptState,
    Experiment,
    HostObservation,
    RowLink,
    Run,
    RunSpec,
    Status,
)

FOREIGN_ID_ERROR = (
    "the id cell holds {text!r}, which is not a run id sheetrunner wrote; "
    "clear the id cell to run this row"
)


def newest_attempts(
    observed: Mapping[str, HostObservation],
) -> dict[str, tuple[str, AttemptObservation]]:
    """Run id -> (host, its highest-numbered attempt any reachable host reported)."""
    newest: dict[str, tuple[str, AttemptObservation]] = {}
    for host in observed.values():
        for seen in host.attempts:
            if seen.state == AttemptState.MISSING:
                continue
            if seen.run_id not in newest or seen.attempt > newest[seen.run_id][1].attempt:
                newest[seen.run_id] = (host.host, seen)
    return newest


def keepers(experiments: list[Experiment], runs: Mapping[str, Run]) -> list[Experiment]:
    """The rows as matched: a copied id stays only on the row whose cells match its run."""
    rows_by_id: dict[str, list[Experiment]] = {}
    for exp in experiments:
        if exp.run_id:
            rows_by_id.setdefault(exp.run_id, []).append(exp)
    keep: dict[str, int] = {}
    for run_id, rows in rows_by_id.items():
        run = runs.get(run_id)
        matching = [e for e in rows if run is not None and e.key == run.spec.key]
        keep[run_id] = (matching or rows)[0].row
    return [
        e if not e.run_id or keep[e.run_id] == e.row else dataclasses.replace(e, run_id=None)
        for e in experiments
    ]


def run_from_attempt(
    run_id: str, host: str, seen: AttemptObservation, now: datetime, retries: int
) -> Run:
    """A run the store lost, rebuilt from its newest attempt directory: attempt numbers
    continue from there, and the attempts before it count as spent."""
    run = Run(
        run_id=run_id,
        spec=RunSpec(seen.key, seen.job, seen.params),
        status=Status.LAUNCHING,
        created_at=now,
        updated_at=now,
        link=RowLink(gpus=seen.gpus, retries=retries),
        attempt=seen.attempt,
        host=host,
        accelerators=seen.accelerators,
        crashes=max(0, seen.attempt - 1),
        started_at=seen.started_at,
        attempt_started_at=seen.started_at or now,
    )
    return run


def run_from_row(exp: Experiment, now: datetime, retries: int, hosts: set[str]) -> Run:
    """A run the store lost and no host reports: what the row shows is all there is. A
    final status stands; a live one is looked for on the host the row names."""
    shown = dict(exp.shown)
    status = _status_or_none(shown.get("status", ""))
    attempt = int(shown["attempt"]) if shown.get("attempt", "").isdigit() else 0
    host = shown.get("host") or None
    run = Run(
        run_id=exp.run_id or "",
        spec=RunSpec(exp.key, exp.job, exp.params),
        status=Status.QUEUED,
        created_at=now,
        updated_at=now,
        link=row_link(exp, retries, in_sheet=True),
        attempt=attempt,
        crashes=max(0, attempt - 1),
    )
    run.link.kept_cells = {k: v for k, v in shown.items() if k not in ("id", "status")}
    if status is not None and status.is_final:
        run.status, run.host, run.finished_at = status, host, now
        run.message = shown.get("message", "")
    elif status is not None and status.is_live and host in hosts and attempt:
        run.status, run.host, run.attempt_started_at = Status.LOST, host, now
        run.message = f"rebuilt from the sheet: looking for attempt {attempt} on {host}"
    return run


def row_link(exp: Experiment, retries: int, in_sheet: bool = False) -> RowLink:
    """A new run's link to the row it was claimed or rebuilt from."""
    return RowLink(
        row=exp.row,
        in_sheet=in_sheet,
        gpus=exp.gpus,
        gpu_memory_mib=exp.gpu_memory_mib,
        where=exp.where,
        priority=exp.priority,
        retries=retries,
        time_limit_s=exp.time_limit_s,
        last_action=exp.action,
        sweep_id=exp.sweep_id,
    )


class RowMatcher:
    """Step 1 of a cycle: every row gets its run (or a note), every run its row."""

    def __init__(
        self,
        runs: dict[str, Run],
        by_key: dict[str, list[Run]],
        now: datetime,
        retries: Callable[[Experiment], int],
        new_id: Callable[[str], str],
    ):
        self.runs = runs
        self.by_key = by_key
        self.now = now
        self.retries = retries
        self.new_id = new_id
        self.rows: dict[int, str] = {}
        self.notes: dict[int, tuple[Status, str]] = {}
        self.events: list[tuple[str, str, str]] = []

    def run_for(
        self,
        exp: Experiment,
        seen: set[str],
        newest: Mapping[str, tuple[str, AttemptObservation]],
        hosts: set[str],
    ) -> Run | None:
        if exp.run_id and exp.run_id in self.runs:
            run = self.runs[exp.run_id]
            while run.link.replaced_by and run.link.replaced_by in self.runs:
                run = self.runs[run.link.replaced_by]  # a rerun whose new id is not shown yet
            return run
        if exp.run_id:
            return self._rebuild(exp, newest, hosts)
        taken_back = self._unattached(exp.key, seen)
        if taken_back is not None:
            return taken_back
        if exp.foreign_id:
            self.notes[exp.row] = (
                Status.INVALID,
                FOREIGN_ID_ERROR.format(text=exp.foreign_id[:40]),
            )
            return None
        if exp.error:
            self.notes[exp.row] = (Status.INVALID, exp.error)
            return None
        done = self._succeeded(exp.key)
        if done is not None and exp.action != Action.RERUN:
            return self.new_run(exp, Status.DUPLICATE, duplicate_of=done)
        return self.new_run(exp, Status.QUEUED)

    def _rebuild(
        self, exp: Experiment, newest: Mapping[str, tuple[str, AttemptObservation]], hosts: set[str]
    ) -> Run:
        run_id = exp.run_id or ""
        if run_id in newest:
            host, seen = newest[run_id]
            run = run_from_attempt(run_id, host, seen, self.now, self.retries(exp))
            run.spec = RunSpec(
                run.spec.key or exp.key,
                run.spec.job or exp.job,
                run.spec.params or exp.params,
            )
            run.link.where, run.link.priority, run.link.row, run.link.in_sheet = (
                exp.where,
                exp.priority,
                exp.row,
                True,
            )
            detail = f"from attempt {seen.attempt} on {host}"
        else:
            run = run_from_row(exp, self.now, self.retries(exp), hosts)
            detail = f"from row {exp.row} showing {exp.shown_status!r}"
        self._add(run)
        self.events.append((run.run_id, "rebuilt", detail))
        return run

    def _unattached(self, key: str, seen: set[str]) -> Run | None:
        """The newest run of this experiment that no row shows. Taking it back (rather than
        starting a new run, or calling the row a duplicate of its own result) is what keeps
        a row from running twice after a claim was lost or an id erased."""
        candidates = [
            r
            for r in self.by_key.get(key, [])
            if r.run_id not in seen
            and not r.link.replaced_by
            and not r.link.released
            and r.spec.key == key
        ]
        return max(candidates, key=lambda r: r.created_at) if candidates else None

    def _succeeded(self, key: str) -> Run | None:
        for run in self.by_key.get(key, []):
            if run.status == Status.SUCCEEDED and run.spec.key == key:
                return run
        return None

    def new_run(self, exp: Experiment, status: Status, duplicate_of: Run | None = None) -> Run:
        run = Run(
            run_id=self._fresh_id(exp.key),
            spec=RunSpec(exp.key, exp.job, exp.params),
            status=status,
            created_at=self.now,
            updated_at=self.now,
            link=row_link(exp, self.retries(exp)),
        )
        if duplicate_of is not None:
            run.link.duplicate_of = duplicate_of.run_id
            run.finished_at = self.now
            run.message = (
                f"same job and parameters as run {duplicate_of.run_id}, which succeeded; "
                "set action to rerun to run it again"
            )
        self._add(run)
        self.events.append((run.run_id, "claimed", f"row {exp.row} status={status}"))
        return run

    def _fresh_id(self, key: str) -> str:
        run_id = self.new_id(key)
        while run_id in self.runs:
            run_id = self.new_id(key)
        return run_id

    def _add(self, run: Run) -> None:
        self.runs[run.run_id] = run
        self.by_key.setdefault(run.spec.key, []).append(run)


def _status_or_none(text: str) -> Status | None:
    try:
        return Status(text)
    except ValueError:
        return None
