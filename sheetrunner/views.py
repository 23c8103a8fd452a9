"""How runs and the pool look to a person: rich tables, and the same data as JSON.

`ps` works from one list of entries (dicts, the JSON form): runs and the rows that have no
run (invalid, unplaceable) alike, so filtering, the table and `--json` never disagree."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from .argv import param_text
from .config import HostConfig
from .gang import node_hosts, shown_host
from .model import Accelerator, HostObservation, Run, Status
from .pool.hosts import capacity
from .prep_policy import low_disk
from .sheet.schema import format_elapsed, format_metrics

STATUS_STYLES = {
    Status.QUEUED: "dim",
    Status.LAUNCHING: "blue",
    Status.RUNNING: "blue",
    Status.SUCCEEDED: "green",
    Status.RETRYING: "dark_orange",
    Status.STALLED: "yellow",
    Status.LOST: "yellow",
    Status.FAILED: "red",
    Status.STOPPED: "grey50",
    Status.HELD: "grey50",
    Status.INVALID: "red",
    Status.DUPLICATE: "green",
    Status.UNPLACEABLE: "red",
}
STYLE_OF_STATUS = {status.value: style for status, style in STATUS_STYLES.items()}


def format_moment(moment: datetime | None, tz: tzinfo | None = None) -> str:
    """A time to the minute with its zone (`2026-11-29 14:05 UTC`, `... 15:05 CET`), so a
    time read on a server in another zone, or pasted into a chat, is not misread.
    `tz`: the zone to show it in (default: this machine's)."""
    if moment is None:
        return ""
    if moment.tzinfo is None:  # the store writes aware times; be safe with naive ones
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone(tz)
    zone = local.tzname() or ""
    if not zone.isalpha():  # a zone without a name ("+01", "UTC+01:00"): its offset
        offset = local.strftime("%z")
        zone = f"{offset[:3]}:{offset[3:5]}"
    return f"{local:%Y-%m-%d %H:%M} {zone}"


def params_text(params: Iterable[Iterable[str]]) -> str:
    """A run's parameters as a person reads them on the command line: `lr=0.1 seed=0` (a
    key=value column's name already ends in `=`: `model.lr=0.1`)."""
    return " ".join(param_text(name, value) for name, value in params)


# -- ps: runs and rows without a run ------------------------------------------------------------


def run_json(run: Run, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    return {
        "id": run.run_id,
        "row": run.link.row,
        "job": run.spec.job,
        "params": dict(run.spec.params),
        "sweep": getattr(run, "sweep_id", "") or "",  # the store keeps it once it is wired
        "status": run.shown_status.value,
        "host": shown_host(run) or None,
        "attempt": run.attempt,
        "accelerators": list(run.accelerators),
        "started": run.attempt_started_at.isoformat() if run.attempt_started_at else None,
        "elapsed": format_elapsed(run, now),
        "metrics": run.seen.metrics,
        "message": run.message,
        "log": run.seen.log_path,
        "code": run.code,
        "code_hash": run.code_hash,
    }


def noted_json(noted: Mapping[str, Any]) -> dict[str, Any]:
    """A row the store noted without a run (`store.noted_rows()`: invalid, unplaceable), in
    the same shape as a run so `ps` lists it in place, with the reason in `message`."""
    return {
        "id": None,
        "row": noted.get("row") or 0,
        "job": noted.get("job") or "",
        "params": {str(n): str(v) for n, v in noted.get("params") or ()},
        "sweep": noted.get("sweep") or "",
        "status": str(noted.get("status") or ""),
        "host": None,
        "attempt": 0,
        "accelerators": [],
        "started": None,
        "elapsed": "",
        "metrics": {},
        "message": noted.get("message") or "",
        "log": "",
        "code": "",
        "code_hash": "",
    }


def ps_entries(
    runs: Iterable[Run], noted: Iterable[Mapping[str, Any]], now: datetime | None = None
) -> list[dict[str, Any]]:
    """Runs and noted rows together, in sheet order."""
    now = now or datetime.now(UTC)
    entries = [run_json(r, now) for r in runs] + [noted_json(n) for n in noted]
    return sorted(entries, key=lambda e: (e["row"] or 0, e["id"] is None, e["id"] or ""))


def ps_filter(
    status: Iterable[str] = (),
    job: Iterable[str] = (),
    sweep: Iterable[str] = (),
    host: Iterable[str] = (),
) -> Callable[[dict[str, Any]], bool]:
    """The entries `ps --status/--job/--sweep/--host` keep: each given filter must match one of
    its values (`--status failed,lost` or the flag twice)."""
    wanted = {
        "status": _values(status),
        "job": _values(job),
        "sweep": _values(sweep),
        "host": _values(host),
    }

    def keep(entry: dict[str, Any]) -> bool:
        return all(not values or _cell(entry, key) & values for key, values in wanted.items())

    return keep


def _cell(entry: dict[str, Any], key: str) -> set[str]:
    """The entry's value as `ps` filters it: a run across hosts (`a+b`) matches each host."""
    text = entry[key] or ""
    return {text, *text.split("+")} if key == "host" else {text}


def _values(given: Iterable[str]) -> set[str]:
    return {v.strip() for item in given for v in item.split(",") if v.strip()}


# The columns of `ps`, most important first: on a narrow console the last ones go first.
PS_COLUMNS = (
    "id",
    "status",
    "row",
    "params",
    "message",
    "metrics",
    "elapsed",
    "host",
    "job",
    "sweep",
    "started",
    "attempt",
)
READABLE_MESSAGE = 24  # characters
NO_WRAP = {"id", "status", "row", "attempt", "host"}  # names: split, they could not be copied


def ps_table(entries: list[dict[str, Any]], console: Console, tz: tzinfo | None = None) -> Table:
    """The entries as a table that fits the console: the least important columns are dropped
    until no word has to be split (ids, host names and statuses are never broken), and the
    room left is shared out so long cells wrap between words."""
    cells = [_ps_cells(e, tz) for e in entries]
    columns = [c for c in PS_COLUMNS if c in ("id", "status") or any(row[c] for row in cells)]
    while True:
        table = _ps_table(entries, cells, columns)
        if _fit(console, table, cells, columns) or len(columns) <= 2:
            return table
        columns.pop()


def _fit(console: Console, table: Table, cells: list[dict[str, str]], columns: list[str]) -> bool:
    """Give each column a fixed width between its longest word and its longest cell so the
    table fits the console; False if even the longest words do not fit. (Left to itself, rich
    narrows a column below its longest word and cuts that word.)"""
    words = {c: _widest(c, cells, whole=c in NO_WRAP) for c in columns}
    most = {c: _widest(c, cells, whole=True) for c in columns}
    # The reason a row waits or failed is worth a readable column, more than the last columns.
    least = {
        c: max(words[c], min(most[c], READABLE_MESSAGE)) if c == "message" else words[c]
        for c in columns
    }
    spare = console.width - _min_width(console, table) - sum(least[c] - words[c] for c in columns)
    if spare < 0:
        return False
    widths = dict(least)
    growing = [c for c in columns if widths[c] < most[c]]
    while spare > 0 and growing:  # one character at a time to each column that wants more
        for name in list(growing):
            if spare == 0:
                break
            widths[name] += 1
            spare -= 1
            if widths[name] >= most[name]:
                growing.remove(name)
    for column, name in zip(table.columns, columns, strict=True):
        column.width = widths[name]
    return True


def _widest(column: str, cells: list[dict[str, str]], whole: bool) -> int:
    """The column's widest cell (`whole`) or widest word, its header included."""
    texts = [column, *(row[column] for row in cells)]
    if whole:
        return max(cell_len(t) for t in texts)
    return max((cell_len(w) for t in texts for w in t.split()), default=1)


def _ps_cells(entry: dict[str, Any], tz: tzinfo | None) -> dict[str, str]:
    started = datetime.fromisoformat(entry["started"]) if entry["started"] else None
    return {
        "id": entry["id"] or "",
        "status": entry["status"],
        "row": str(entry["row"] or ""),
        "params": params_text(entry["params"].items()),
        "message": entry["message"].strip().split("\n", 1)[0],  # the reason; --json has all
        "metrics": format_metrics(entry["metrics"]),
        "elapsed": entry["elapsed"],
        "host": entry["host"] or "",
        "job": entry["job"],
        "sweep": entry["sweep"],
        "started": format_moment(started, tz),
        "attempt": str(entry["attempt"] or ""),
    }


def _ps_table(
    entries: list[dict[str, Any]], cells: list[dict[str, str]], columns: list[str]
) -> Table:
    ran = sum(1 for e in entries if e["id"])
    title = f"{ran} runs" + (
        f", {len(entries) - ran} rows without a run" if ran < len(entries) else ""
    )
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in columns:
        table.add_column(name, no_wrap=name in NO_WRAP, overflow="ellipsis")
    for row in cells:
        table.add_row(*[_ps_cell(name, row[name]) for name in columns])
    return table


def _ps_cell(column: str, value: str) -> Text:
    """Cells are plain text (a cell of the sheet is never markup); the status in its colour."""
    style = STYLE_OF_STATUS.get(value, "") if column == "status" else ""
    return Text(value, style=style)


def _min_width(console: Console, table: Table) -> int:
    """The narrowest the table can be without splitting a word (unbounded by the console,
    which would clamp the answer to its own width)."""
    unbounded = console.options.update(max_width=1 << 16)
    return Measurement.get(console, unbounded, table).minimum


def runs_table(
    runs: list[Run],
    now: datetime | None = None,
    console: Console | None = None,
    tz: tzinfo | None = None,
) -> Table:
    """The runs alone, as `ps` shows them."""
    return ps_table(ps_entries(runs, (), now), console or Console(), tz)


# -- the pool ----------------------------------------------------------------------------------


def holders(runs: list[Run]) -> dict[tuple[str, str], str]:
    """(host, accelerator) -> the live run holding it."""
    return {
        (host, acc): r.run_id
        for r in runs
        if r.status.is_live
        for host, accs in (r.spread or ((r.host or "", r.accelerators),))
        for acc in accs
    }


def pool_json(
    hosts: list[HostConfig],
    seen: Mapping[str, HostObservation],
    runs: list[Run],
    down_since: Mapping[str, datetime],
    repairs: Mapping[str, Mapping[str, Any]] | None = None,
    namespace: str | None = None,
    setups: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One entry per host: reachability, facts, and each accelerator with who holds it.
    `state`: "up", "down" or "repairing" (its `[[hosts]] repair` runs now); `repair`: the
    host's repair as `repair.Repairs` keeps it (tries, last try, result), or None; `closed`: why
    it takes no new runs (free disk under min_free_disk), or ""; `setups`: each job's setup
    there as the daemon last saw it (host_prep.py); `namespace`: this sheet's, to tell its GPU
    claims from other sheets'."""
    held = holders(runs)
    out = []
    for host in hosts:
        obs = seen.get(host.name)
        since = down_since.get(host.name)
        reachable = bool(obs and obs.reachable)
        repair = dict((repairs or {}).get(host.name) or {}) or None
        state = "up" if reachable else "down"
        if repair is not None and repair.get("state") == "repairing":
            state = "repairing"
        cpu_runs = [
            r.run_id
            for r in runs
            if host.name in node_hosts(r) and r.status.is_live and r.link.gpus == 0
        ]
        out.append(
            {
                "host": host.name,
                "state": state,
                "reachable": reachable,
                "unreachable_since": since.isoformat()
                if since and not (obs and obs.reachable)
                else None,
                "error": obs.error if obs else "not probed",
                "labels": list(host.labels),
                "draining": host.drain,
                "load": obs.load if obs else None,
                "disk_free_gib": round(obs.disk_free_bytes / 2**30, 1)
                if obs and obs.disk_free_bytes
                else None,
                "accelerators": [
                    _accelerator_json(host, a, held, namespace) for a in _accelerators_of(host, obs)
                ],
                "slots": {"total": host.slots, "used_by": cpu_runs},
                "repair": repair,
                "closed": low_disk(host.min_free_disk, obs.disk_free_bytes if obs else None),
                "setups": [dict(s) for s in (setups or {}).get(host.name, [])],
            }
        )
    return out


def _accelerators_of(host: HostConfig, obs: HostObservation | None) -> list[Accelerator]:
    seen = {a.index: a for a in (obs.accelerators if obs else ())}
    ids = capacity(host, obs).accelerators
    return [seen.get(i, Accelerator(index=i, name=_kind(host))) for i in ids]


def _kind(host: HostConfig) -> str:
    return (
        host.accelerators
        if isinstance(host.accelerators, str) and host.accelerators != "auto"
        else ""
    )


def _accelerator_json(
    host: HostConfig, acc: Accelerator, held: dict[tuple[str, str], str], namespace: str | None
) -> dict[str, Any]:
    run = held.get((host.name, acc.index))
    return {
        "index": acc.index,
        "name": acc.name,
        "memory_used_mib": acc.memory_used_mib,
        "memory_total_mib": acc.memory_total_mib,
        "utilization_pct": acc.utilization_pct,
        "run": run,
        "foreign": acc.foreign,
        "foreign_users": list(acc.foreign_users),
        "claim": _claim_json(acc, namespace),
        "holder": holder_text(acc, run, namespace),
        "healthy": acc.healthy,
        "health": acc.health,
    }


def _claim_json(acc: Accelerator, namespace: str | None) -> dict[str, Any] | None:
    if not acc.claim_namespace:
        return None
    return {
        "namespace": acc.claim_namespace,
        "run_id": acc.claim_run,
        "user": acc.claim_user,
        "this_sheet": acc.claim_namespace == namespace,
    }


def holder_text(acc: Accelerator, run: str | None, namespace: str | None) -> str:
    """Who holds a GPU, in words: our run, a run of another sheet (its claim on the host),
    another user's process (and its user when the host shows it), or nobody."""
    if run:
        return run
    if acc.claim_namespace and acc.claim_namespace == namespace:
        return f"run {acc.claim_run} of this sheet (claim)"
    if acc.claim_namespace:
        user = f", user {acc.claim_user}" if acc.claim_user else ""
        return f"another sheet: run {acc.claim_run or '?'} ({acc.claim_namespace}{user})"
    if acc.foreign:
        users = f" ({', '.join(acc.foreign_users)})" if acc.foreign_users else ""
        return f"another user's process{users}"
    return "free"


def pool_rows(entries: list[dict[str, Any]], tz: tzinfo | None = None) -> list[list[Any]]:
    """The same view as plain rows: the `pool` command's table and the sheet's pool tab."""
    rows: list[list[Any]] = [
        ["host", "state", "accelerator", "memory", "util", "run", "load", "disk free"]
    ]
    for e in entries:
        state = "up" if e["reachable"] else f"down since {_since(e['unreachable_since'], tz)}"
        state += _repair_text(e.get("repair"), tz)
        state += ", draining" if e["draining"] else ""
        state += f", no new runs: {e['closed']}" if e.get("closed") else ""
        state += "".join(
            f", setup of {s.get('job')} {s.get('state')}"
            + (f": {_last_line(s.get('detail'))}" if s.get("state") == "failed" else "")
            for s in e.get("setups") or ()
            if s.get("state") != "succeeded"
        )
        host_cells = [e["host"], state]
        tail = [
            "" if e["load"] is None else f"{e['load']:.1f}",
            "" if e["disk_free_gib"] is None else f"{e['disk_free_gib']} GiB",
        ]
        accs = e["accelerators"] or [None]
        for i, acc in enumerate(accs):
            first = host_cells if i == 0 else ["", ""]
            rows.append([*first, *_acc_cells(acc, e), *(tail if i == 0 else ["", ""])])
    return rows


def _last_line(text: Any) -> str:
    lines = [ln for ln in str(text or "").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "?"


def _repair_text(repair: Mapping[str, Any] | None, tz: tzinfo | None) -> str:
    """`, repairing (try 2 since ...)` or `, repair try 1 at ...: exit 1: ...; next ...`."""
    if not repair:
        return ""
    tries, last = repair.get("tries") or 0, _since(repair.get("last_try"), tz)
    if repair.get("state") == "repairing":
        return f", repairing (try {tries} since {last})"
    text = f", repair try {tries} at {last}: {repair.get('last_result') or '?'}"
    if repair.get("next_try"):
        text += f"; next try {_since(repair['next_try'], tz)}"
    return text


def _since(iso: str | None, tz: tzinfo | None) -> str:
    return format_moment(datetime.fromisoformat(iso), tz) if iso else "?"


def _acc_cells(acc: dict[str, Any] | None, entry: dict[str, Any]) -> list[str]:
    if acc is None:
        used = ", ".join(entry["slots"]["used_by"])
        return [
            "cpu only",
            "",
            "",
            f"{len(entry['slots']['used_by'])}/{entry['slots']['total']} slots"
            + (f": {used}" if used else ""),
        ]
    memory = ""
    if acc["memory_total_mib"]:
        memory = (
            f"{(acc['memory_used_mib'] or 0) / 1024:.1f}/{acc['memory_total_mib'] / 1024:.0f} GiB"
        )
    util = "" if acc["utilization_pct"] is None else f"{acc['utilization_pct']}%"
    holder = (
        acc.get("holder") or acc["run"] or ("another user's process" if acc["foreign"] else "free")
    )
    if not acc.get("healthy", True):
        holder = f"unhealthy, not used: {acc.get('health') or 'unknown'}"
    return [f"{acc['index']}: {acc['name']}".rstrip(": "), memory, util, holder]


def pool_table(entries: list[dict[str, Any]], tz: tzinfo | None = None) -> Table:
    header, *rows = pool_rows(entries, tz)
    table = Table(title=f"{len(entries)} hosts", title_justify="left")
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        style = "red" if str(row[1]).startswith("down") else None
        if ", repairing" in str(row[1]):
            style = "yellow"
        table.add_row(*[Text(str(c)) for c in row], style=style)  # cells are text, not markup
    return table


def events_table(rows: list[dict[str, Any]]) -> Table:
    """The event journal: when, which run, what happened."""
    table = Table(box=None, header_style="bold")
    for name in ("at", "run", "event", "detail"):
        table.add_column(name, overflow="fold")
    for row in rows:
        at = datetime.fromisoformat(row["at"]).astimezone()
        table.add_row(
            at.strftime("%Y-%m-%d %H:%M:%S %Z"), row["run_id"], row["kind"], Text(row["detail"])
        )
    return table


def cluster_rows(entries: list[dict[str, Any]]) -> list[list[Any]]:
    """Each Slurm cluster's partition as plain rows (the `pool` command and the pool tab):
    nodes by state, GPUs free and total, this sheet's runs there."""
    rows: list[list[Any]] = [["cluster", "state", "partition", "nodes", "GPUs free", "runs"]]
    for e in entries:
        state = "up" if e["reachable"] else f"down: {e['error']}"
        nodes = ", ".join(f"{count} {name}" for name, count in sorted(e["nodes"].items()))
        gpus = "" if e["gpus_total"] is None else f"{e['gpus_free']}/{e['gpus_total']}"
        rows.append([e["cluster"], state, e["partition"], nodes, gpus, len(e["runs"])])
    return rows


def cluster_table(entries: list[dict[str, Any]]) -> Table:
    header, *rows = cluster_rows(entries)
    table = Table(title=f"{len(entries)} clusters", title_justify="left")
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*[Text(str(c)) for c in row], style="red" if row[1] != "up" else None)
    return table
