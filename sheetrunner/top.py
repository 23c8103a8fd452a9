"""`sheetrunner top`: the pool and the runs in one live, full-screen view.

What `nvitop` and `watch sky queue` give, for a sheetrunner pool: each host and
accelerator (use, memory, the run holding it, down or draining) above the runs
(status coloured like the sheet, elapsed, latest metrics, a sparkline of the
curve). It only reads the daemon's state directory: the runs and each host's
last probe, as the daemon saw them. No host is contacted, so top costs the
pool nothing, and it works while hosts are unreachable.

`render()` is pure (runs and observations in, a rich renderable out) and fits
any width by dropping the least useful columns; `run_top()` is the loop.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import select
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .config import Config
from .gang import shown_host
from .model import STATUS_COLOURS, Accelerator, HostObservation, Run, Status
from .sheet.schema import format_metrics
from .sheet.table import Sparkline
from .views import pool_json

STATUS_ORDER = (
    Status.RUNNING,
    Status.LAUNCHING,
    Status.STALLED,
    Status.LOST,
    Status.RETRYING,
    Status.QUEUED,
    Status.HELD,
    Status.SUCCEEDED,
    Status.DUPLICATE,
    Status.FAILED,
    Status.INVALID,
    Status.STOPPED,
)
STALE_PROBE_S = 60.0  # a last probe older than this (and 3 poll intervals): is the daemon running?


# -- the view, pure ---------------------------------------------------------------------------


def render(
    runs: Iterable[Run] | Mapping[str, Run],
    hosts_seen: Mapping[str, Any],
    config: Config,
    width: int,
    *,
    height: int | None = None,
    now: datetime | None = None,
    note: str = "",
) -> RenderableType:
    """The whole screen: a header, the pool (one line per accelerator), the runs.

    `runs`: the store's runs; `hosts_seen`: each host's last probe as `Store.hosts()`
    gives it (JSON) or as HostObservations. Columns are dropped, least useful first,
    until the tables fit `width`; with `height`, finished runs (oldest first) and then
    per-accelerator lines give way so the screen is never overrun."""
    now = now or datetime.now(UTC)
    width = max(20, width)
    all_runs = list(runs.values()) if isinstance(runs, Mapping) else list(runs)
    shown = sorted(
        (r for r in all_runs if r.link.replaced_by is None),
        key=lambda r: (r.link.row, _ts(r.created_at)),
    )
    seen = {name: _observation(name, data) for name, data in hosts_seen.items()}
    down_since = {name: obs.down_since for name, obs in seen.items() if obs.down_since}
    entries = pool_json(list(config.hosts), seen, all_runs, down_since)
    by_id = {r.run_id: r for r in all_runs}

    header = _header(config, shown, entries, seen, now, width, note)
    pool_lines = _pool_lines(entries, seen, by_id, now, collapse=False)
    budget = None if height is None else max(3, height - len(header) - 3)  # 2 table heads, a gap
    if budget is not None and len(pool_lines) + 1 + min(len(shown), 3) > budget:
        pool_lines = _pool_lines(entries, seen, by_id, now, collapse=True)
    hidden_hosts = 0
    if budget is not None and len(pool_lines) > max(1, budget // 2):
        keep = max(1, budget // 2) - 1
        hidden_hosts = len({line["host_name"] for line in pool_lines[keep:]})
        pool_lines = pool_lines[:keep]
    run_budget = (
        None if budget is None else max(1, budget - len(pool_lines) - (1 if hidden_hosts else 0))
    )
    visible, hidden_runs = _fit_runs(shown, run_budget)

    parts: list[RenderableType] = [*header]
    parts.append(_table(POOL_COLUMNS, pool_lines, width, bars=width >= 110))
    if hidden_hosts:
        parts.append(Text(f"… {hidden_hosts} more hosts (sheetrunner pool)", style="dim"))
    parts.append(Text(""))
    metric_width = 24 if width >= 140 else 16 if width >= 100 else 10
    run_lines = [_run_line(r, config, now, metric_width) for r in visible]
    if run_lines:
        parts.append(_table(RUN_COLUMNS, run_lines, width, bars=False))
    else:
        parts.append(Text("no runs yet: add a row to the sheet", style="dim"))
    if hidden_runs:
        parts.append(
            Text(f"… {hidden_runs} older finished runs not shown (sheetrunner ps)", style="dim")
        )
    return Group(*parts)


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    keep: int  # columns are dropped highest `keep` first when the width is short
    cap: int = 40  # widest the column gets (flexible columns: narrowest)
    flexible: bool = False  # takes what width is left (metrics, message)
    ratio: int = 1  # a flexible column's share of what is left
    justify: JustifyMethod = "left"


POOL_COLUMNS = (
    Column("host", "host", 0, cap=18),
    Column("state", "state", 0, cap=14),
    Column("gpu", "acc", 1, cap=6),
    Column("name", "model", 6, cap=16),
    Column("util", "util", 2, cap=17, justify="right"),
    Column("mem", "memory", 3, cap=25, justify="right"),
    Column("run", "run", 0, cap=32),
    Column("load", "load", 5, cap=5, justify="right"),
    Column("disk", "disk free", 7, cap=9, justify="right"),
    Column("probed", "probed", 4, cap=8, justify="right"),
)

RUN_COLUMNS = (
    Column("id", "id", 0, cap=16),
    Column("row", "row", 6, cap=4, justify="right"),
    Column("job", "job", 4, cap=12),
    Column("status", "status", 0, cap=11),
    Column("host", "host", 3, cap=14),
    Column("attempt", "att", 7, cap=3, justify="right"),
    Column("elapsed", "elapsed", 1, cap=7, justify="right"),
    Column("curve", "curve", 2, cap=25),
    Column("metrics", "metrics", 2, cap=14, flexible=True, ratio=3),
    Column("message", "message", 5, cap=14, flexible=True, ratio=2),
)


def _table(
    columns: tuple[Column, ...], lines: list[dict[str, Any]], width: int, bars: bool
) -> Table:
    """A borderless table of the columns that fit `width`, one line per row, never wrapped."""
    if not bars:  # the meters' figures without the meters
        lines = [
            {**line, **{k: line[k + "_short"] for k in ("util", "mem") if k + "_short" in line}}
            for line in lines
        ]
    widths = {
        c.key: c.cap
        if c.flexible
        else max(
            len(c.header), min(c.cap, max((_len(line.get(c.key)) for line in lines), default=0))
        )
        for c in columns
    }
    kept: list[Column] = []
    for column in sorted(columns, key=lambda c: c.keep):
        trial = [*kept, column]
        if sum(widths[c.key] for c in trial) + 2 * (len(trial) - 1) <= width:
            kept = trial
    kept.sort(key=columns.index)
    flexible = any(c.flexible for c in kept)  # else the columns keep their widths, left
    table = Table(
        box=None,
        padding=(0, 1),
        pad_edge=False,
        show_edge=False,
        expand=flexible,
        width=width if flexible else None,
        header_style="bold reverse",
    )
    for column in kept:
        if column.flexible:
            table.add_column(
                column.header,
                min_width=widths[column.key],
                ratio=column.ratio,
                no_wrap=True,
                overflow="ellipsis",
                justify=column.justify,
            )
        else:
            table.add_column(
                column.header,
                width=widths[column.key],
                no_wrap=True,
                overflow="ellipsis",
                justify=column.justify,
            )
    for line in lines:
        cells = [
            value if isinstance(value := line.get(column.key, ""), Text) else Text(str(value))
            for column in kept
        ]
        table.add_row(*cells, style=line.get("style"))
    return table


def _len(value: Any) -> int:
    return value.cell_len if isinstance(value, Text) else len(str(value or ""))


# -- the header ---------------------------------------------------------------------------------


def _header(
    config: Config,
    runs: list[Run],
    entries: list[dict[str, Any]],
    seen: Mapping[str, HostObservation],
    now: datetime,
    width: int,
    note: str,
) -> list[Text]:
    source = config.sheet.url or (config.sheet.path.name if config.sheet.path else "")
    title = Text.assemble(("sheetrunner top", "bold"), "  ", (source, "cyan"))
    clock = now.astimezone().strftime("%H:%M:%S")
    title.append(" " * max(1, width - title.cell_len - len(clock)))
    title.append(clock, style="bold")
    title.truncate(width)

    down = sum(1 for e in entries if e["host"] in seen and not e["reachable"])
    draining = sum(1 for e in entries if e["draining"])
    accs = [a for e in entries for a in e["accelerators"]]
    busy = sum(1 for a in accs if a["run"] or a["foreign"])
    pool = Text.assemble((f"{len(entries)} hosts", "bold"))
    if down:
        pool.append(f" ({down} down)", style="bold red")
    if draining:
        pool.append(f" ({draining} draining)", style="yellow")
    if accs:
        pool.append(f"   {busy}/{len(accs)} accelerators busy")
    slots = sum(e["slots"]["total"] for e in entries)
    used = sum(len(e["slots"]["used_by"]) for e in entries)
    pool.append(f"   {used}/{slots} cpu slots")
    counts: dict[Status, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    summary = Text.assemble((f"{len(runs)} runs", "bold"))
    for status in STATUS_ORDER:
        if counts.get(status):
            summary.append("  ")
            summary.append(f" {counts[status]} {status.value} ", style=_status_style(status))

    probed = [o.observed_at for o in seen.values() if o.observed_at]
    stale_after = max(STALE_PROBE_S, 3 * config.daemon.poll_interval_s)
    if not probed:
        age = Text(
            "no probe recorded yet: is `sheetrunner daemon` running on this state?", style="yellow"
        )
    else:
        last = (now - max(probed)).total_seconds()
        age = Text(
            f"as the daemon last saw it, {_ago(last, coarse=True)} ago; no host is contacted",
            style="yellow" if last > stale_after else "dim",
        )
        if last > stale_after:
            age.append(" (is the daemon running?)", style="bold yellow")
    if note:
        age = Text(note, style="bold red")
    lines = [title, pool, summary, age]
    for line in lines:
        line.no_wrap = True
        line.overflow = "ellipsis"
        line.truncate(width, overflow="ellipsis")
    return lines


# -- the pool -----------------------------------------------------------------------------------


def _pool_lines(
    entries: list[dict[str, Any]],
    seen: Mapping[str, HostObservation],
    runs: Mapping[str, Run],
    now: datetime,
    collapse: bool,
) -> list[dict[str, Any]]:
    """One line per accelerator (or per host, `collapse`), and one for a host's CPU slots
    when it has no accelerators or runs use them."""
    lines: list[dict[str, Any]] = []
    for entry in entries:
        obs = seen.get(entry["host"])
        down = obs is not None and not entry["reachable"]
        host = {
            "host_name": entry["host"],
            "host": Text(entry["host"], style="bold"),
            "state": _host_state(entry, obs, now),
            "load": "" if entry["load"] is None else f"{entry['load']:.1f}",
            "disk": "" if entry["disk_free_gib"] is None else f"{entry['disk_free_gib']:g}G",
            "probed": _ago((now - obs.observed_at).total_seconds(), coarse=True)
            if obs
            else "never",
            "style": "red" if down else None,
        }
        accs = entry["accelerators"]
        rows: list[dict[str, Any]] = []
        if collapse and accs:
            rows.append(_collapsed(accs, entry, runs))
        else:
            rows.extend(_accelerator_cells(acc, runs) for acc in accs)
            used = entry["slots"]["used_by"]
            if used or not accs:
                slots = f"{len(used)}/{entry['slots']['total']}"
                rows.append(
                    {
                        "gpu": "cpu",
                        "util": Text(f"{slots} slots"),
                        "util_short": Text(slots),
                        "run": _holders(used, runs) if used else Text("free", style="dim"),
                    }
                )
        for i, row in enumerate(rows):
            if (down or obs is None) and row["run"].plain == "free":  # not known: say nothing
                row["run"] = Text("?", style="dim")
            first = host if i == 0 else {"host_name": entry["host"], "style": host["style"]}
            lines.append({**first, **row})
    return lines


def _host_state(entry: dict[str, Any], obs: HostObservation | None, now: datetime) -> Text:
    if obs is None:
        state = Text("not probed", style="dim")
    elif not entry["reachable"]:
        since = obs.down_since or obs.observed_at
        state = Text(f"down {_ago((now - since).total_seconds(), coarse=True)}", style="bold red")
    else:
        state = Text("up", style="green")
    if entry["draining"]:
        state.append(" drain", style="bold yellow")
    return state


def _accelerator_cells(acc: dict[str, Any], runs: Mapping[str, Run]) -> dict[str, Any]:
    util, total, used = acc["utilization_pct"], acc["memory_total_mib"], acc["memory_used_mib"]
    cells: dict[str, Any] = {"gpu": acc["index"], "name": acc["name"] or ""}
    if util is None:
        cells["util"] = cells["util_short"] = Text("")
    else:
        cells["util"] = _bar(util / 100, 10).append(f"{util:>4}%")
        cells["util_short"] = Text(f"{util}%", style=_load_style(util / 100))
    if total:
        fraction = (used or 0) / total
        figures = f"{(used or 0) / 1024:.1f}/{total / 1024:.0f}G"
        cells["mem"] = _bar(fraction, 10).append(f"{figures:>12}")
        cells["mem_short"] = Text(figures, style=_load_style(fraction))
    else:
        cells["mem"] = cells["mem_short"] = Text("")
    if acc["run"]:
        cells["run"] = _holders([acc["run"]], runs)
    elif acc["foreign"]:
        cells["run"] = Text("another user's process", style="yellow")
    else:
        cells["run"] = Text("free", style="dim")
    return cells


def _collapsed(
    accs: list[dict[str, Any]], entry: dict[str, Any], runs: Mapping[str, Run]
) -> dict[str, Any]:
    """One host's accelerators on one line: how many, mean use, memory summed, its runs."""
    names = {a["name"] for a in accs if a["name"]}
    utils = [a["utilization_pct"] for a in accs if a["utilization_pct"] is not None]
    totals = [a["memory_total_mib"] for a in accs if a["memory_total_mib"]]
    holders = sorted({a["run"] for a in accs if a["run"]} | set(entry["slots"]["used_by"]))
    cells: dict[str, Any] = {"gpu": f"{len(accs)}×", "name": names.pop() if len(names) == 1 else ""}
    if utils:
        mean = sum(utils) / len(utils)
        cells["util"] = _bar(mean / 100, 10).append(f"{mean:>4.0f}%")
        cells["util_short"] = Text(f"{mean:.0f}%", style=_load_style(mean / 100))
    if totals:
        used = sum(a["memory_used_mib"] or 0 for a in accs)
        figures = f"{used / 1024:.0f}/{sum(totals) / 1024:.0f}G"
        cells["mem"] = _bar(used / sum(totals), 10).append(f"{figures:>12}")
        cells["mem_short"] = Text(figures)
    cells["run"] = _holders(holders, runs) if holders else Text("free", style="dim")
    return cells


def _holders(run_ids: list[str], runs: Mapping[str, Run]) -> Text:
    text = Text()
    for i, run_id in enumerate(run_ids):
        if i:
            text.append(" ")
        run = runs.get(run_id)
        text.append(run_id, style="bold" if run and run.status == Status.RUNNING else "")
    return text


BAR_PARTS = " ▏▎▍▌▋▊▉█"


def _bar(fraction: float, width: int) -> Text:
    """A meter like nvitop's: eighth blocks, green below half, yellow, red from 80%."""
    fraction = min(1.0, max(0.0, fraction if math.isfinite(fraction) else 0.0))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + (BAR_PARTS[part] if part else "")
    text = Text(filled, style=_load_style(fraction))
    text.append("·" * (width - len(filled)), style="grey35")
    text.append(" ")
    return text


def _load_style(fraction: float) -> str:
    return "red" if fraction >= 0.8 else "yellow" if fraction >= 0.5 else "green"


# -- the runs -----------------------------------------------------------------------------------


def _fit_runs(runs: list[Run], budget: int | None) -> tuple[list[Run], int]:
    """All runs in row order, or, when they do not fit, without the oldest finished ones
    (and, if the unfinished alone are too many, the first that fit)."""
    if budget is None or len(runs) <= budget:
        return runs, 0
    budget = max(1, budget - 1)  # the "… more" line
    finished = sorted(
        (r for r in runs if r.status.is_final), key=lambda r: _ts(r.finished_at or r.updated_at)
    )
    drop = {r.run_id for r in finished[: len(runs) - budget]}
    kept = [r for r in runs if r.run_id not in drop][:budget]
    return kept, len(runs) - len(kept)


def _run_line(run: Run, config: Config, now: datetime, curve_width: int) -> dict[str, Any]:
    message = (run.message or "").strip().splitlines()
    return {
        "id": Text(run.run_id, style="bold" if run.status.is_live else ""),
        "row": str(run.link.row or ""),
        "job": run.spec.job,
        "status": Text(f" {run.shown_status.value} ", style=_status_style(run.shown_status)),
        "host": shown_host(run),
        "attempt": str(run.attempt or ""),
        "elapsed": _elapsed(run, now),
        "curve": Text(curve_text(run, config, curve_width), style="cyan"),
        "metrics": format_metrics(run.seen.metrics),
        "message": Text(message[-1] if message else "", style="dim"),
    }


def _status_style(status: Status) -> str:
    """The sheet's row fill for this status, as the cell's background."""
    return f"black on #{STATUS_COLOURS[status]}"


def curve_metric(run: Run, config: Config) -> str | None:
    """The metric drawn: the sheet's `curve`, else its first metric column, else the first
    metric the run reports (besides step and time) that has a history."""
    history = run.seen.summary.get("history") if isinstance(run.seen.summary, dict) else None
    if not isinstance(history, dict) or not history:
        return None
    for name in (
        config.sheet.curve,
        *config.sheet.metric_columns,
        *run.seen.metrics,
        *sorted(history),
    ):
        if name and name not in ("step", "time") and name in history:
            return name
    return None


def curve_text(run: Run, config: Config, width: int) -> str:
    """The run's curve as block characters, at most `width` of them (evenly thinned)."""
    metric = curve_metric(run, config)
    if metric is None:
        return ""
    points = [v for v in run.seen.summary["history"][metric] if _finite(v)]
    if len(points) > width:
        step = (len(points) - 1) / (width - 1)
        points = [points[round(i * step)] for i in range(width)]
    return Sparkline(tuple(float(v) for v in points), "", 0).text()


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _elapsed(run: Run, now: datetime) -> str:
    if run.attempt_started_at is None:
        return ""
    end = run.finished_at or now
    return _ago((_ts(end) - _ts(run.attempt_started_at)).total_seconds())


def _ago(seconds: float, coarse: bool = False) -> str:
    """`42s`, `3m07s`, `2h05m`, `1d04h`; coarse: only the largest unit (`3m`, `2h`)."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m" if coarse else f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h" if coarse else f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d" if coarse else f"{days}d{hours:02d}h"


def _ts(value: datetime | None) -> datetime:
    if value is None:
        return datetime.min.replace(tzinfo=UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- the store's JSON back into observations ------------------------------------------------------

_ACCELERATOR_FIELDS = {f.name for f in fields(Accelerator)}


def _observation(name: str, data: Any) -> HostObservation:
    if isinstance(data, HostObservation):
        return data
    accs = tuple(
        Accelerator(**{k: v for k, v in a.items() if k in _ACCELERATOR_FIELDS})
        for a in data.get("accelerators") or ()
        if isinstance(a, dict)
    )
    return HostObservation(
        host=name,
        reachable=bool(data.get("reachable")),
        observed_at=_when(data.get("observed_at")),
        error=data.get("error") or "",
        boot_id=data.get("boot_id") or "",
        accelerators=accs,
        load=data.get("load"),
        disk_free_bytes=data.get("disk_free_bytes"),
        down_since=_when(data.get("down_since")) if data.get("down_since") else None,
    )


def _when(text: Any) -> datetime:
    try:
        return _ts(datetime.fromisoformat(str(text)))
    except ValueError:
        return _ts(None)


# -- the loop ------------------------------------------------------------------------------------


def run_top(config: Config, console: Console, refresh_s: float = 2.0) -> int:
    """Redraw the view every `refresh_s` seconds until q or Ctrl-C. Reads the state only."""
    from .store import Store

    refresh_s = max(0.2, float(refresh_s))
    path = Path(config.daemon.state_dir) / "state.sqlite"
    store: Store | None = None
    last: tuple[list[Run], dict[str, Any]] = ([], {})

    def frame() -> RenderableType:
        nonlocal store, last
        note = ""
        try:
            if store is None and path.exists():  # never create a state for a daemon not yet run
                store = Store(path)
            if store is not None:
                last = (list(store.runs().values()), store.hosts())
            else:
                note = f"no state at {path} yet: start `sheetrunner daemon -c {config.path.name}`"
        except sqlite3.Error as exc:  # the daemon holds a write lock too long: keep the last view
            note = f"cannot read {path}: {exc} (showing the last view)"
        size = console.size
        return render(*last, config, size.width, height=size.height, note=note)

    try:
        with (
            Live(
                frame(),
                console=console,
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live,
            _keys() as pressed,
        ):
            while not pressed(refresh_s):
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        if store is not None:
            store.close()
    return 0


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], bool]]:
    """wait(seconds) -> True once q was pressed. Reads the keyboard unbuffered when there is
    one; otherwise it only sleeps (Ctrl-C still quits)."""
    try:
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    except (ImportError, OSError, ValueError):
        saved = None
    if saved is None:

        def sleep(seconds: float) -> bool:
            time.sleep(seconds)
            return False

        yield sleep
        return

    def wait(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], left)
            if ready and os.read(fd, 32).lower().startswith(b"q"):
                return True
        return False

    tty.setcbreak(fd)
    try:
        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def main(argv: list[str] | None = None) -> int:
    """`python -m sheetrunner.top -c CONFIG`: the same as `sheetrunner top`."""
    from . import config as config_module
    from .errors import ConfigError, SheetrunnerError

    parser = argparse.ArgumentParser(prog="sheetrunner top", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="sheetrunner.toml", help="config file (TOML)")
    parser.add_argument(
        "-n", "--interval", type=float, default=2.0, help="seconds between refreshes (default 2)"
    )
    args = parser.parse_args(argv)
    console = Console()
    try:
        return run_top(config_module.load(args.config), console, args.interval)
    except ConfigError as exc:
        console.print(Text.assemble(("config error:", "red"), " ", str(exc)), soft_wrap=True)
        return 2
    except SheetrunnerError as exc:
        console.print(Text.assemble(("error:", "red"), " ", str(exc)), soft_wrap=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
