"""The commands. Thin: parse arguments, call the package, print with rich.

This is the only module that sets up logging and knows exit codes:
0 success, 1 an operation failed, 2 a usage or config error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.highlighter import NullHighlighter
from rich.logging import RichHandler
from rich.markup import escape
from rich.text import Text

from . import config as config_module
from . import views
from .daemon import DaemonLock, build, open_pool, open_store
from .errors import ConfigError, SheetrunnerError, TransportError

DEFAULT_CONFIG = "sheetrunner.toml"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    console = Console()
    try:
        return args.func(args, console)
    except ConfigError as exc:
        _print_error(console, "config error", exc)
        return 2
    except SheetrunnerError as exc:
        _print_error(console, "error", exc)
        return 1


def _print_error(console: Console, label: str, exc: BaseException) -> None:
    """The message as plain text: `[jobs.x]` or a cell's text is shown, never read as markup,
    and never broken across lines, so a path in it can be copied."""
    console.print(Text.assemble((f"{label}:", "red"), " ", str(exc)), highlight=False,
                  soft_wrap=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sheetrunner", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (TOML)")
        p.set_defaults(func=func)
        return p

    p = command("daemon", cmd_daemon, "poll the sheet and run its rows until stopped")
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit 0 once no row is queued, running or retrying")
    p.add_argument("--take-over", action="store_true",
                   help="take the sheet from the daemon holding its lease (make sure it is gone)")
    p = command("once", cmd_once, "run one cycle and exit")
    p.add_argument("--take-over", action="store_true",
                   help="take the sheet from the daemon holding its lease (make sure it is gone)")
    p = command("ps", cmd_ps, "list runs from the state store")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="also runs no row shows any more")
    p = command("logs", cmd_logs, "print a run's log")
    p.add_argument("run_id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as it grows")
    p.add_argument("--attempt", type=int, help="attempt number (default: the newest)")
    p = command("pool", cmd_pool, "the hosts, their accelerators and which run holds each")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    command("doctor", cmd_doctor, "check the config, the sheet and every host; say what to fix")
    p = command("plot", cmd_plot, "a metric's curve for runs, as a PNG or in the terminal")
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    p.add_argument("--metric", help="metric to draw (default: the first reported besides step)")
    p.add_argument("-o", "--output", help="write a PNG here instead of drawing in the terminal")
    p = command("init", cmd_init, "write a starter config and workbook, or prepare a sheet")
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        handlers=[_log_handler(sys.stderr)])
    for noisy in ("apscheduler", "paramiko", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# One line per event for a log that is not a terminal (systemd's journal, a file): greppable.
PLAIN_LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class OneLineFormatter(logging.Formatter):
    """Log lines carry sheet data (argv built from cells): a newline or a terminal escape in
    a cell must not start a forged line or drive the terminal, so control characters are
    written escaped (a traceback's newlines too: one event, one line)."""

    _ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F) if c != 0x09}
    _ESCAPES.update({0x0A: "\\n", 0x0D: "\\r"})

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).translate(self._ESCAPES)


def _log_handler(stream) -> logging.Handler:
    """Rich colours on a terminal, one plain line per record elsewhere. Neither highlights:
    rich's highlighter takes time quadratic in a line's length, and lines carry row data."""
    if stream.isatty():
        handler: logging.Handler = RichHandler(
            console=Console(file=stream), show_path=False, markup=False,
            highlighter=NullHighlighter(), keywords=[])
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter(PLAIN_LOG_FORMAT))
    return handler


def cmd_daemon(args: argparse.Namespace, console: Console) -> int:
    config = config_module.load(args.config)
    lock = DaemonLock(config.daemon.state_dir).acquire()
    daemon = build(config, take_over=args.take_over)
    try:
        return daemon.run_forever(exit_when_done=args.exit_when_done)
    finally:
        daemon.close()
        lock.release()


def cmd_once(args: argparse.Namespace, console: Console) -> int:
    config = config_module.load(args.config)
    lock = DaemonLock(config.daemon.state_dir).acquire()
    daemon = build(config, take_over=args.take_over)
    try:
        report = daemon.cycle()
        if not report.acting and report.sheet_ok:  # the first cycle only claimed the sheet
            report = daemon.cycle()
    finally:
        daemon.close()
        lock.release()
    console.print(
        f"launched {len(report.launched)}, killed {len(report.killed)}, "
        f"cells written {report.cells_written}, unfinished {report.unfinished}"
        + ("" if report.sheet_ok else " (sheet unreachable)")
    )
    return 0


def cmd_ps(args: argparse.Namespace, console: Console) -> int:
    config = config_module.load(args.config)
    store = open_store(config)
    try:
        runs = sorted(store.runs().values(), key=lambda r: (r.row, r.created_at))
    finally:
        store.close()
    if not args.all:
        runs = [r for r in runs if r.replaced_by is None]
    if args.json:
        print(json.dumps([views.run_json(r) for r in runs], indent=2))
    else:
        console.print(views.runs_table(runs))
    return 0


def cmd_logs(args: argparse.Namespace, console: Console) -> int:
    config = config_module.load(args.config)
    store = open_store(config)
    run = store.run(args.run_id)
    hosts = {a["attempt"]: a["host"] for a in store.attempts(args.run_id)}
    namespace = store.last_namespace()
    store.close()
    if run is None or not run.attempt:
        raise SheetrunnerError(f"no launched run {args.run_id!r}; `sheetrunner ps` lists the runs")
    attempt = args.attempt or run.attempt
    host = hosts.get(attempt, run.host or "")
    pool = open_pool(config, namespace)
    try:
        agent = pool.agents.get(host)
        if agent is not None and args.follow:
            return _follow(agent, run.run_id, attempt)
        if agent is not None:
            sys.stdout.buffer.write(agent.tail(run.run_id, attempt))
            return 0
        reason = f"{host} is not in the config any more"
    except TransportError as exc:
        reason = f"{host} cannot be reached: {exc}"
    finally:
        pool.close()
    return _archived_log(config, run.run_id, attempt, reason, console)


def _archived_log(config, run_id: str, attempt: int, reason: str, console: Console) -> int:
    from .log_archive import LogArchive

    data = LogArchive(config.daemon.state_dir).read(run_id, attempt)
    if data is None:
        raise SheetrunnerError(f"the log of run {run_id} attempt {attempt} is on {reason}, "
                               "and no copy was kept (only ended attempts are archived)")
    Console(stderr=True, soft_wrap=True).print(
        f"[yellow]{escape(reason)}; showing the copy kept when the attempt ended[/]",
        highlight=False)
    sys.stdout.buffer.write(data)
    return 0


def _follow(agent, run_id: str, attempt: int) -> int:
    offset = 0
    try:
        while True:
            data = agent.tail(run_id, attempt, offset=offset)
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            offset += len(data)
            if not data:
                time.sleep(1.0)
    except KeyboardInterrupt:
        return 0


def cmd_pool(args: argparse.Namespace, console: Console) -> int:
    config = config_module.load(args.config)
    store = open_store(config)
    runs = list(store.runs().values())
    namespace = store.last_namespace()
    store.close()
    pool = open_pool(config, namespace)
    try:
        seen = _probe_for_view(pool, runs)
        entries = views.pool_json(list(config.hosts), seen, runs, pool.down_since)
    finally:
        pool.close()
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        console.print(views.pool_table(entries))
    return 0


def _probe_for_view(pool, runs):
    from datetime import UTC, datetime

    wanted: dict[str, set[tuple[str, int]]] = {}
    for run in runs:
        if run.status.is_live and run.host:
            wanted.setdefault(run.host, set()).add((run.run_id, run.attempt))
    return pool.probe_all(wanted, datetime.now(UTC))


def cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    from .doctor import run_checks

    failed = 0
    for check in run_checks(config_module.load(args.config)):
        mark = "[green]ok[/]  " if check.ok else "[red]FAIL[/]"
        console.print(Text.from_markup(mark).append(f" {check.subject}: {check.what} — {check.detail}"),
                      highlight=False)
        if not check.ok:
            failed += 1
            console.print(Text(f"      fix: {check.fix}"), highlight=False)
    return 1 if failed else 0


def cmd_plot(args: argparse.Namespace, console: Console) -> int:
    from . import plot

    config = config_module.load(args.config)
    histories = _histories(config, args.run_ids)
    metric = args.metric or next(
        iter(plot.metrics_in([r for records in histories.values() for r in records])), None)
    if metric is None:
        raise SheetrunnerError("these runs reported no metrics yet")
    curves = {run_id: plot.series(records, metric) for run_id, records in histories.items()}
    if args.output:
        console.print(f"wrote {plot.write_png(curves, metric, Path(args.output))}")
    else:
        console.print(Text(metric, style="bold"))
        for line in plot.text_lines(curves, metric):
            console.print(Text(line), highlight=False)
    return 0


def _histories(config, run_ids: list[str]) -> dict[str, list[dict]]:
    """Each run's reports, fetched from its host (the newest attempt)."""
    store = open_store(config)
    runs = {run_id: store.run(run_id) for run_id in run_ids}
    namespace = store.last_namespace()
    store.close()
    pool = open_pool(config, namespace)
    try:
        found = {}
        for run_id, run in runs.items():
            if run is None or not run.host or run.host not in pool.agents:
                raise SheetrunnerError(f"no launched run {run_id!r}; `sheetrunner ps` lists the runs")
            found[run_id] = pool.agents[run.host].history(run_id, run.attempt)
        return found
    except TransportError as exc:
        raise SheetrunnerError(f"could not fetch metrics: {exc}") from None
    finally:
        pool.close()


def cmd_init(args: argparse.Namespace, console: Console) -> int:
    from .starter import initialize

    for line in initialize(Path(args.config)):
        console.print(Text(line), highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
