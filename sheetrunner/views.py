"""How runs (and later the pool) look to a person: rich tables, and the same data as JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from .model import Run, Status
from .rows import format_elapsed, format_metrics

STATUS_STYLES = {
    Status.QUEUED: "dim", Status.LAUNCHING: "blue", Status.RUNNING: "blue",
    Status.SUCCEEDED: "green", Status.RETRYING: "dark_orange", Status.STALLED: "yellow",
    Status.LOST: "yellow", Status.FAILED: "red", Status.STOPPED: "grey50",
    Status.HELD: "grey50", Status.INVALID: "red", Status.DUPLICATE: "green",
}


def run_json(run: Run, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    return {
        "id": run.run_id, "row": run.row, "job": run.job, "params": dict(run.params),
        "status": run.status.value, "host": run.host, "attempt": run.attempt,
        "accelerators": list(run.accelerators), "elapsed": format_elapsed(run, now),
        "metrics": run.metrics, "message": run.message, "log": run.log_path,
    }


def runs_table(runs: list[Run], now: datetime | None = None) -> Table:
    now = now or datetime.now(UTC)
    table = Table(title=f"{len(runs)} runs", title_justify="left")
    for column in ("id", "row", "job", "status", "host", "attempt", "elapsed", "metrics", "message"):
        table.add_column(column, overflow="fold")
    for run in runs:
        table.add_row(
            run.run_id, str(run.row or ""), run.job,
            f"[{STATUS_STYLES[run.status]}]{run.status.value}[/]",
            run.host or "", str(run.attempt or ""), format_elapsed(run, now),
            format_metrics(run.metrics), run.message,
        )
    return table
