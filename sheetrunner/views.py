"""How runs (and later the pool) look to a person: rich tables, and the same data as JSON."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from .config import HostConfig
from .model import Accelerator, HostObservation, Run, Status
from .pool.hosts import capacity
from .sheet.schema import format_elapsed, format_metrics

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


# -- the pool ----------------------------------------------------------------------------------


def holders(runs: list[Run]) -> dict[tuple[str, str], str]:
    """(host, accelerator) -> the live run holding it."""
    return {(r.host or "", acc): r.run_id for r in runs if r.status.is_live for acc in r.accelerators}


def pool_json(hosts: list[HostConfig], seen: Mapping[str, HostObservation], runs: list[Run],
              down_since: Mapping[str, datetime]) -> list[dict[str, Any]]:
    """One entry per host: reachability, facts, and each accelerator with who holds it."""
    held = holders(runs)
    out = []
    for host in hosts:
        obs = seen.get(host.name)
        since = down_since.get(host.name)
        cpu_runs = [r.run_id for r in runs if r.host == host.name and r.status.is_live and r.gpus == 0]
        out.append({
            "host": host.name,
            "reachable": bool(obs and obs.reachable),
            "unreachable_since": since.isoformat() if since and not (obs and obs.reachable) else None,
            "error": obs.error if obs else "not probed",
            "labels": list(host.labels),
            "draining": host.drain,
            "load": obs.load if obs else None,
            "disk_free_gib": round(obs.disk_free_bytes / 2**30, 1) if obs and obs.disk_free_bytes else None,
            "accelerators": [_accelerator_json(host, a, held) for a in _accelerators_of(host, obs)],
            "slots": {"total": host.slots, "used_by": cpu_runs},
        })
    return out


def _accelerators_of(host: HostConfig, obs: HostObservation | None) -> list[Accelerator]:
    seen = {a.index: a for a in (obs.accelerators if obs else ())}
    ids = capacity(host, obs).accelerators
    return [seen.get(i, Accelerator(index=i, name=_kind(host))) for i in ids]


def _kind(host: HostConfig) -> str:
    return host.accelerators if isinstance(host.accelerators, str) and host.accelerators != "auto" else ""


def _accelerator_json(host: HostConfig, acc: Accelerator, held: dict[tuple[str, str], str]) -> dict[str, Any]:
    return {
        "index": acc.index, "name": acc.name, "memory_used_mib": acc.memory_used_mib,
        "memory_total_mib": acc.memory_total_mib, "utilization_pct": acc.utilization_pct,
        "run": held.get((host.name, acc.index)), "foreign": acc.foreign,
    }


def pool_rows(entries: list[dict[str, Any]]) -> list[list[Any]]:
    """The same view as plain rows: the `pool` command's table and the sheet's pool tab."""
    rows: list[list[Any]] = [["host", "state", "accelerator", "memory", "util", "run", "load",
                              "disk free"]]
    for e in entries:
        state = "up" if e["reachable"] else f"down since {e['unreachable_since'] or '?'}"
        state += ", draining" if e["draining"] else ""
        host_cells = [e["host"], state]
        tail = ["" if e["load"] is None else f"{e['load']:.1f}",
                "" if e["disk_free_gib"] is None else f"{e['disk_free_gib']} GiB"]
        accs = e["accelerators"] or [None]
        for i, acc in enumerate(accs):
            first = host_cells if i == 0 else ["", ""]
            rows.append([*first, *_acc_cells(acc, e), *(tail if i == 0 else ["", ""])])
    return rows


def _acc_cells(acc: dict[str, Any] | None, entry: dict[str, Any]) -> list[str]:
    if acc is None:
        used = ", ".join(entry["slots"]["used_by"])
        return ["cpu only", "", "", f"{len(entry['slots']['used_by'])}/{entry['slots']['total']} slots"
                + (f": {used}" if used else "")]
    memory = ""
    if acc["memory_total_mib"]:
        memory = f"{(acc['memory_used_mib'] or 0) / 1024:.1f}/{acc['memory_total_mib'] / 1024:.0f} GiB"
    util = "" if acc["utilization_pct"] is None else f"{acc['utilization_pct']}%"
    holder = acc["run"] or ("another user's process" if acc["foreign"] else "free")
    return [f"{acc['index']}: {acc['name']}".rstrip(": "), memory, util, holder]


def pool_table(entries: list[dict[str, Any]]) -> Table:
    header, *rows = pool_rows(entries)
    table = Table(title=f"{len(entries)} hosts", title_justify="left")
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        style = "red" if str(row[1]).startswith("down") else None
        table.add_row(*[str(c) for c in row], style=style)
    return table
