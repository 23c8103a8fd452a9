"""The commands. Thin: parse arguments, call the package, print with rich.

This is the only module that sets up logging and knows exit codes:
0 success, 1 an operation failed, 2 a usage or config error, 141 output closed early
(`sheetrunner ps --json | head -1`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.highlighter import NullHighlighter
from rich.logging import RichHandler
from rich.text import Text

from . import __version__, disk_gc, host_prep, repair, views
from . import config as config_module
from .daemon import Daemon, DaemonLock, build, finish_on_signals, open_pool, open_store
from .errors import ConfigError, SheetrunnerError, TransportError
from .gang import node_hosts
from .log_archive import LogArchive
from .model import Run
from .pool.slurm import cluster_entries

DEFAULT_CONFIG = "sheetrunner.toml"
CONFIG_VARIABLE = "SHEETRUNNER_CONFIG"
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE
EXIT_INTERRUPTED = 128 + signal.SIGINT

DESCRIPTION = """\
Type a row into a spreadsheet (which job, its parameters, how many GPUs) and it runs on
your machines. sheetrunner starts each row on a free host, restarts what crashed or hung,
and writes status, metrics and a colour back into the row."""

EPILOG = f"""\
config: -c PATH, else ${CONFIG_VARIABLE}, else ./{DEFAULT_CONFIG}, else the nearest
{DEFAULT_CONFIG} in a parent directory. Start with `sheetrunner init`, then
`sheetrunner daemon`. Run `sheetrunner COMMAND --help` for a command's options."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose, getattr(args, "log_format", "auto"))
    console = Console()
    try:
        code = args.func(args, console)
        sys.stdout.flush()  # a closed pipe shows here, not in the flush at exit
        return code
    except ConfigError as exc:
        _print_error(console, "config error", exc)
        return 2
    except SheetrunnerError as exc:
        _print_error(console, "error", exc)
        return 1
    except BrokenPipeError:
        return _pipe_closed()
    except KeyboardInterrupt:  # Ctrl-C in a command that has nothing to finish
        return EXIT_INTERRUPTED


def run() -> None:
    """The program (console script, `python -m sheetrunner`): main, then exit with its code."""
    code = main()
    _ignore_late_signals()
    sys.exit(code)


def _ignore_late_signals() -> None:
    """The command is over: a Ctrl-C arriving while the interpreter exits must not turn a
    clean exit into an interrupted one."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _pipe_closed() -> int:
    """The reader went away (`| head`): not an error worth a traceback. Whatever is still
    buffered for stdout goes nowhere, so the flush at exit cannot complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE_CLOSED


def version() -> str:
    """The installed distribution's version; the package's own constant when running from a
    source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("sheetrunner")
    except PackageNotFoundError:
        return __version__


def _print_error(console: Console, label: str, exc: BaseException) -> None:
    """The message as plain text: `[jobs.x]` or a cell's text is shown, never read as markup,
    and never broken across lines, so a path in it can be copied."""
    console.print(
        Text.assemble((f"{label}:", "red"), " ", str(exc)), highlight=False, soft_wrap=True
    )


def _say(console: Console, text: str) -> None:
    """Print text as it is: paths and cells may hold `[...]`, which is not markup here."""
    console.print(Text(text), highlight=False, soft_wrap=True)


# -- where the config is -------------------------------------------------------------------------


def find_config(
    given: str | None, environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Path:
    """The config a command uses: `-c`, else $SHEETRUNNER_CONFIG, else ./sheetrunner.toml,
    else the nearest sheetrunner.toml above (like git finds its repository), so commands
    work from any directory of a project. None found: a ConfigError saying where it looked."""
    environ = os.environ if environ is None else environ
    if given:
        return Path(given)
    if environ.get(CONFIG_VARIABLE):
        return Path(environ[CONFIG_VARIABLE])
    cwd = (cwd or Path.cwd()).resolve()
    candidates = [folder / DEFAULT_CONFIG for folder in (cwd, *cwd.parents)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no config found; looked at: -c (not given), ${CONFIG_VARIABLE} (not set), "
        + ", ".join(str(c) for c in candidates)
        + "; pass -c PATH, or create one here with `sheetrunner init`"
    )


def _load(args: argparse.Namespace) -> config_module.Config:
    return config_module.load(find_config(args.config))


# -- arguments -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sheetrunner",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sheetrunner {version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        name: str,
        func,
        help: str,
        config_help: str = "config file (TOML); default: "
        f"${CONFIG_VARIABLE}, ./{DEFAULT_CONFIG} or the nearest one above",
    ):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("-c", "--config", help=config_help)
        p.set_defaults(func=func)
        return p

    p = command(
        "daemon",
        cmd_daemon,
        "run the sheet: start its rows, watch them, write back "
        "their status, until stopped (Ctrl-C)",
    )
    p.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit 0 once no row is queued, running or retrying",
    )
    p.add_argument(
        "--take-over",
        action="store_true",
        help="take the sheet from the daemon holding its lease (make sure it is gone)",
    )
    _log_format_argument(p)
    p = command(
        "once", cmd_once, "do what the daemon does once (start, check, write back), then exit"
    )
    p.add_argument(
        "--take-over",
        action="store_true",
        help="take the sheet from the daemon holding its lease (make sure it is gone)",
    )
    _log_format_argument(p)
    _ps_arguments(
        command(
            "ps",
            cmd_ps,
            "list the runs and the rows that cannot run: status, parameters, host, metrics, why",
        )
    )
    p = command(
        "events",
        cmd_events,
        "the journal of what happened to the runs: claimed, "
        "launched, crashed, killed, stopped, rebuilt, ... (oldest first)",
    )
    p.add_argument("run_id", metavar="RUN_ID", nargs="?", help="only this run's events")
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="only events since then: an ISO time (2026-11-29T14:00) or an age (30m, 2h, 1d)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("logs", cmd_logs, "print a run's output (what its job printed)")
    p.add_argument("run_id", metavar="RUN_ID", help="the id from the sheet's id column or `ps`")
    p.add_argument(
        "--node",
        type=int,
        metavar="N",
        help="a run across hosts: the output of node N (default: rank 0)",
    )
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing as it grows, until the attempt ends",
    )
    p.add_argument(
        "-n", "--lines", type=_positive, metavar="LINES", help="only the last LINES lines"
    )
    p.add_argument("--attempt", type=int, help="attempt number (default: the newest)")
    p = command(
        "pool",
        cmd_pool,
        "show the hosts: reachable or not, each GPU's memory and use, which run holds it",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command(
        "gc",
        cmd_gc,
        "remove finished runs' directories (logs archived first) and unused code from the "
        "hosts now, and say how much each freed",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command(
        "setup",
        cmd_setup,
        "start failed setups ([[hosts]] setup, [jobs.NAME] setup) again, next cycle of the daemon",
    )
    p.add_argument("--retry", action="store_true", required=True, help="retry failed setups")
    p.add_argument("hosts", nargs="*", metavar="HOST", help="only on these hosts (default: all)")
    p = command(
        "top", cmd_top, "the pool and the runs, live, full screen (reads the state only; q quits)"
    )
    p.add_argument("-n", "--interval", type=float, default=2.0, help="seconds between refreshes")
    command("doctor", cmd_doctor, "check the config, the sheet and every host, and say what to fix")
    p = command(
        "plot", cmd_plot, "draw a metric's curve for one or more runs, as a PNG or in the terminal"
    )
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    p.add_argument("--metric", help="metric to draw (default: the first reported besides step)")
    p.add_argument("-o", "--output", help="write a PNG here instead of drawing in the terminal")
    command(
        "init",
        cmd_init,
        "create a starter config, job and workbook, or prepare a sheet (header row, dropdowns)",
        config_help=f"config file to write or use (default: ./{DEFAULT_CONFIG})",
    )
    return parser


def _ps_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="also runs no row shows any more")
    for flag, what in (
        ("status", "status (queued, running, failed, invalid, ...)"),
        ("job", "job"),
        ("sweep", "sweep id (the sweep column)"),
        ("host", "host"),
    ):
        p.add_argument(
            f"--{flag}",
            action="append",
            default=[],
            metavar=flag.upper(),
            help=f"only these: a {what}; repeat it or separate values by commas",
        )
    p.add_argument(
        "--watch", type=_positive_float, metavar="SECONDS", help="redraw every SECONDS until Ctrl-C"
    )


LOG_FORMATS = ("auto", "plain", "rich", "json")


def _log_format_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="auto",
        help="how log lines look on stderr: rich (colours), plain (one line per event), json "
        "(one object per line: time, level, logger, message, run and host when named); "
        "default auto: rich on a terminal, else plain",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _setup_logging(verbose: bool, log_format: str = "auto") -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        handlers=[_log_handler(sys.stderr, log_format)],
    )
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


# What a message names, in the `key=value` form the daemon's log lines use.
NAMED_IN_MESSAGE = {
    "run": re.compile(r"\brun=([0-9a-f]{8}-[0-9a-z]{6})\b"),
    "host": re.compile(r"\bhost=([A-Za-z0-9][A-Za-z0-9_.-]*)"),
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line (`--log-format json`), for a log collector: time (ISO 8601,
    UTC), level, logger, message, and `run` / `host` when the message names them
    (`run=ID`, `host=NAME`) or the record carries them; a traceback under `exception`. JSON
    escapes every control character, so a cell's newline never starts a forged line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, pattern in NAMED_IN_MESSAGE.items():
            given = getattr(record, key, None)
            found = pattern.search(message)
            if isinstance(given, str) and given:
                entry[key] = given
            elif found:
                entry[key] = found.group(1)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


def _log_handler(stream, log_format: str = "auto") -> logging.Handler:
    """Rich colours on a terminal, one plain line per record elsewhere, or JSON lines. None
    highlights: rich's highlighter takes time quadratic in a line's length, and lines carry
    row data."""
    if log_format == "json":
        as_json = logging.StreamHandler(stream)
        as_json.setFormatter(JsonFormatter())
        return as_json
    if log_format == "rich" or (log_format == "auto" and stream.isatty()):
        handler: logging.Handler = RichHandler(
            console=Console(file=stream),
            show_path=False,
            markup=False,
            highlighter=NullHighlighter(),
            keywords=[],
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter(PLAIN_LOG_FORMAT))
    return handler


@contextlib.contextmanager
def _owned_daemon(args: argparse.Namespace) -> Iterator[Daemon]:
    """The daemon of the config, holding its state directory's lock; closed (its lease
    handed back, its store closed) and the lock released on the way out."""
    config = _load(args)
    lock = DaemonLock(config.daemon.state_dir).acquire()
    try:
        daemon = build(config, take_over=args.take_over)
        try:
            yield daemon
        finally:
            daemon.close()
    finally:
        lock.release()


def cmd_daemon(args: argparse.Namespace, console: Console) -> int:
    """SIGTERM or Ctrl-C from the first moment on: the daemon starts no cycle after it,
    finishes the one in progress, closes the store and exits 0."""
    stopping = threading.Event()
    with finish_on_signals(stopping, keep=True), _owned_daemon(args) as daemon:
        daemon.stopping = stopping
        return daemon.run_forever(exit_when_done=args.exit_when_done)


def cmd_once(args: argparse.Namespace, console: Console) -> int:
    stopping = threading.Event()
    with finish_on_signals(stopping), _owned_daemon(args) as daemon:  # Ctrl-C: it finishes
        report = daemon.cycle()
        if not report.acting and report.sheet_ok and not stopping.is_set():
            report = daemon.cycle()  # the first cycle only claimed the sheet
    _say(
        console,
        f"launched {len(report.launched)}, killed {len(report.killed)}, "
        f"cells written {report.cells_written}, unfinished {report.unfinished}"
        + ("" if report.sheet_ok else " (sheet unreachable)"),
    )
    return 0


# -- ps ------------------------------------------------------------------------------------------


def cmd_events(args: argparse.Namespace, console: Console) -> int:
    config = _load(args)
    store = open_store(config)
    try:
        found = store.events(args.run_id)
    finally:
        store.close()
    since = _since(args.since) if args.since else None
    rows = [
        {"at": at, "run_id": run_id, "kind": kind, "detail": detail}
        for at, run_id, kind, detail in found
        if since is None or datetime.fromisoformat(at) >= since
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        console.print(views.events_table(rows))
    return 0


def _since(text: str) -> datetime:
    """An ISO time (local time when it names no zone) or an age such as 30m, 2h, 1d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(UTC) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise SheetrunnerError(
            f"--since {text!r}: give an ISO time (2026-11-29T14:00) or an age (30m, 2h, 1d)"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


def cmd_ps(args: argparse.Namespace, console: Console) -> int:
    config = _load(args)
    if args.watch:
        return _watch(lambda: ps_view(config, args, console), args.watch, console)
    if args.json:
        print(json.dumps(ps_entries(config, args), indent=2))
    else:
        console.print(ps_view(config, args, console))
    return 0


def ps_entries(config, args: argparse.Namespace) -> list[dict[str, Any]]:
    """What `ps` lists, read fresh from the store: runs and the rows without one, filtered."""
    store = open_store(config)
    try:
        runs = list(store.runs().values())
        noted: list[dict] = store.noted_rows()  # rows with no run (invalid ones)
    finally:
        store.close()
    if not args.all:
        runs = [r for r in runs if r.link.replaced_by is None]
    keep = views.ps_filter(args.status, args.job, args.sweep, args.host)
    return [e for e in views.ps_entries(runs, noted) if keep(e)]


def ps_view(config, args: argparse.Namespace, console: Console):
    """The table `ps` prints, and `ps --watch` redraws."""
    return views.ps_table(ps_entries(config, args), console)


def _watch(render: Callable[[], Any], every_s: float, console: Console) -> int:
    """Redraw `render()` in place every `every_s` seconds until Ctrl-C."""
    from rich.live import Live

    try:
        with Live(render(), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(every_s)
                live.update(render(), refresh=True)
    except KeyboardInterrupt:
        return 0


# -- logs ------------------------------------------------------------------------------------------

# An attempt in one of these states writes no more output.
ENDED_STATES = frozenset({"exited", "lost", "missing"})
FOLLOW_INTERVAL_S = 1.0


def node_host(run: Run, attempt: int, node: int) -> str:
    """The host of node `node` of the run's current attempt (the only one whose nodes the
    store knows)."""
    spread = node_hosts(run)
    if attempt != run.attempt or not 0 <= node < len(spread):
        raise SheetrunnerError(
            f"run {run.run_id} attempt {attempt} has no node {node}; its attempt {run.attempt} "
            f"ran on {len(spread)} host(s): use --node 0 to {len(spread) - 1} with no --attempt"
        )
    return spread[node]


def cmd_logs(args: argparse.Namespace, console: Console) -> int:
    config = _load(args)
    store = open_store(config)
    run = store.run(args.run_id)
    hosts = {a["attempt"]: a["host"] for a in store.attempts(args.run_id)}
    namespace = store.last_namespace()
    store.close()
    if run is None or not run.attempt:
        raise SheetrunnerError(f"no launched run {args.run_id!r}; `sheetrunner ps` lists the runs")
    attempt = chosen_attempt(run.run_id, args.attempt, run.attempt, hosts)
    host = hosts.get(attempt, run.host or "")
    if args.node is not None:
        host = node_host(run, attempt, args.node)
    out = sys.stdout.buffer
    pool = open_pool(config, namespace)
    try:
        agent = pool.agents.get(host)
        if agent is not None and args.follow:
            return follow(agent, run.run_id, attempt, out, args.lines)
        if agent is not None:
            out.write(last_lines(_tail(agent, run.run_id, attempt, args.lines), args.lines))
            return 0
        reason = f"{host} is not in the config any more"
    except TransportError as exc:
        reason = f"{host} cannot be reached: {exc}"
    finally:
        pool.close()
    return _archived_log(config, run.run_id, attempt, reason, args.lines)


def chosen_attempt(run_id: str, asked: int | None, newest: int, hosts: Mapping[int, str]) -> int:
    """The attempt `logs` shows: the newest, or the one asked for if the run has it."""
    if asked is None:
        return newest
    known = sorted(set(hosts) | {newest})
    if asked not in known:
        raise SheetrunnerError(
            f"run {run_id} has no attempt {asked}; its attempts: "
            + ", ".join(str(a) for a in known)
        )
    return asked


def _tail(agent, run_id: str, attempt: int, lines: int | None) -> bytes:
    """The log's end: the last 64 KiB, more when many lines are asked for."""
    return agent.tail(run_id, attempt, size=max(65536, (lines or 0) * 1024))


def last_lines(data: bytes, lines: int | None) -> bytes:
    """The last `lines` lines of `data` (all of it when None); a final line without its
    newline counts as a line."""
    if lines is None:
        return data
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def _archived_log(config, run_id: str, attempt: int, reason: str, lines: int | None) -> int:
    from .log_archive import LogArchive

    data = LogArchive(config.daemon.state_dir).read(run_id, attempt)
    if data is None:
        raise SheetrunnerError(
            f"the log of run {run_id} attempt {attempt} is on {reason}, "
            "and no copy was kept (only ended attempts are archived)"
        )
    Console(stderr=True, soft_wrap=True).print(
        Text(f"{reason}; showing the copy kept when the attempt ended", style="yellow"),
        highlight=False,
    )
    sys.stdout.buffer.write(last_lines(data, lines))
    return 0


def follow(
    agent,
    run_id: str,
    attempt: int,
    out,
    lines: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print the log as it grows, and return once the attempt has ended and everything it
    wrote is printed (or on Ctrl-C). With `lines`, start from the last `lines` lines."""
    try:
        offset = _skip_to_last_lines(agent, run_id, attempt, out, lines) if lines else 0
        while True:
            ended = attempt_state(agent, run_id, attempt) in ENDED_STATES
            offset = _drain(agent, run_id, attempt, out, offset)
            if ended:  # looked at before draining: nothing can follow what was drained
                return 0
            sleep(FOLLOW_INTERVAL_S)
    except KeyboardInterrupt:
        return 0


def _drain(agent, run_id: str, attempt: int, out, offset: int) -> int:
    """Print what the log holds from `offset` on; the offset after it."""
    while data := agent.tail(run_id, attempt, offset=offset):
        out.write(data)
        out.flush()
        offset += len(data)
    return offset


def _skip_to_last_lines(agent, run_id: str, attempt: int, out, lines: int) -> int:
    """Read the log to its current end, print its last `lines` lines; the end's offset."""
    offset, kept = 0, deque[bytes](maxlen=lines + 1)
    pending = b""
    while data := agent.tail(run_id, attempt, offset=offset):
        offset += len(data)
        parts = (pending + data).split(b"\n")
        pending = parts.pop()
        kept.extend(p + b"\n" for p in parts)
    if pending:
        kept.append(pending)
    out.write(b"".join(list(kept)[-lines:]))
    out.flush()
    return offset


def attempt_state(agent, run_id: str, attempt: int) -> str | None:
    """What the attempt's host says of it (running, exited, lost, missing, ...); None when
    the host cannot say right now (keep following: it may answer next time)."""
    try:
        facts = agent.probe({(run_id, attempt)})
    except (TransportError, ValueError):
        return None
    for seen in facts.get("attempts", []):
        if seen.get("run_id") == run_id and seen.get("attempt") == attempt:
            return str(seen.get("state"))
    return "missing"


# -- pool, doctor --------------------------------------------------------------------------------


def cmd_pool(args: argparse.Namespace, console: Console) -> int:
    config = _load(args)
    store = open_store(config)
    runs = list(store.runs().values())
    namespace = store.last_namespace()
    store.close()
    pool = open_pool(config, namespace)
    try:
        seen = _probe_for_view(pool, runs)
        entries = views.pool_json(
            list(config.hosts),
            seen,
            runs,
            pool.down_since,
            repairs=repair.load(config.daemon.state_dir),
            namespace=namespace,
            setups=host_prep.load(config.daemon.state_dir),
        )
        clusters = cluster_entries(pool.agents.values(), runs)
    finally:
        pool.close()
    if args.json:
        print(json.dumps(entries + clusters, indent=2))  # a cluster's entry has "cluster"
    else:
        console.print(views.pool_table(entries))
        if clusters:
            console.print(views.cluster_table(clusters))
    return 0


def cmd_gc(args: argparse.Namespace, console: Console) -> int:
    """`sheetrunner gc [--dry-run]`: what the daemon does hourly, now, with the bytes freed."""
    config = _load(args)
    store = open_store(config)
    namespace = store.last_namespace()
    if not namespace:
        store.close()
        raise SheetrunnerError("no run yet in this state directory: nothing to collect")
    pool = open_pool(config, namespace)
    try:
        versions = host_prep.HostPrep(config).versions()
        results = disk_gc.collect(
            config,
            pool,
            store,
            LogArchive(config.daemon.state_dir),
            datetime.now(UTC),
            current_code=[v.hash for v in versions.values()],
            dry_run=args.dry_run,
        )
    finally:
        pool.close()
        store.close()
    if args.json:
        print(json.dumps([vars(r) for r in results], indent=2))
        return 1 if any(r.error for r in results) else 0
    verb = "would free" if args.dry_run else "freed"
    for r in results:
        text = (
            f"{r.host}: {r.error}"
            if r.error
            else (
                f"{r.host}: {verb} {r.freed_bytes} bytes ({r.freed_bytes / 2**20:.1f} MiB), "
                f"{len(r.removed)} paths"
            )
        )
        _say(console, text)
    return 1 if any(r.error for r in results) else 0


def cmd_setup(args: argparse.Namespace, console: Console) -> int:
    config = _load(args)
    unknown = sorted(set(args.hosts) - {h.name for h in config.hosts})
    if unknown:
        raise ConfigError(
            f"no such host: {', '.join(unknown)}; the config declares "
            + ", ".join(h.name for h in config.hosts)
        )
    host_prep.ask_retry(config.daemon.state_dir, args.hosts)
    _say(
        console,
        "failed setups start again at the daemon's next cycle on "
        + (", ".join(args.hosts) or "every host"),
    )
    return 0


def _probe_for_view(pool, runs):
    wanted: dict[str, set[tuple[str, int]]] = {}
    for run in runs:
        for host in node_hosts(run) if run.status.is_live else ():
            wanted.setdefault(host, set()).add((run.run_id, run.attempt))
    return pool.probe_all(wanted, datetime.now(UTC))


def cmd_top(args: argparse.Namespace, console: Console) -> int:
    from .top import run_top

    return run_top(_load(args), console, args.interval)


def cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    from .doctor import run_checks

    failed = 0
    for check in run_checks(_load(args)):
        mark = (
            "[green]ok[/]  " if check.ok else "[yellow]warn[/]" if check.warning else "[red]FAIL[/]"
        )
        console.print(
            Text.from_markup(mark).append(f" {check.subject}: {check.what} — {check.detail}"),
            highlight=False,
        )
        if not check.ok:
            failed += 0 if check.warning else 1
            if check.fix:
                console.print(Text(f"      fix: {check.fix}"), highlight=False)
    return 1 if failed else 0


# -- plot ------------------------------------------------------------------------------------------


def cmd_plot(args: argparse.Namespace, console: Console) -> int:
    from . import plot

    config = _load(args)
    histories, params = _histories(config, args.run_ids)
    metric = args.metric or next(
        iter(plot.metrics_in([r for records in histories.values() for r in records])), None
    )
    if metric is None:
        raise SheetrunnerError("these runs reported no metrics yet")
    names = plot.labels(params)
    curves = {names[run_id]: plot.series(records, metric) for run_id, records in histories.items()}
    if args.output:
        _say(console, f"wrote {plot.write_png(curves, metric, Path(args.output))}")
        return 0
    bounds = plot.scale(curves)
    scale = f" (one scale for all runs: {bounds[0]:.4g} to {bounds[1]:.4g})" if bounds else ""
    console.print(Text(metric, style="bold").append(scale, style=""), highlight=False)
    for line in plot.text_lines(curves, metric):
        _say(console, line)
    return 0


def _histories(config, run_ids: list[str]) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """Each run's reports, fetched from its host (the newest attempt), and its parameters."""
    store = open_store(config)
    runs = {run_id: store.run(run_id) for run_id in run_ids}
    namespace = store.last_namespace()
    store.close()
    params = {run_id: run.spec.params if run else None for run_id, run in runs.items()}
    pool = open_pool(config, namespace)
    try:
        found = {}
        for run_id, run in runs.items():
            if run is None or not run.host or run.host not in pool.agents:
                raise SheetrunnerError(
                    f"no launched run {run_id!r}; `sheetrunner ps` lists the runs"
                )
            found[run_id] = pool.agents[run.host].history(run_id, run.attempt)
        return found, params
    except TransportError as exc:
        raise SheetrunnerError(f"could not fetch metrics: {exc}") from None
    finally:
        pool.close()


# -- init ------------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, console: Console) -> int:
    from .starter import initialize

    for line in initialize(Path(args.config or DEFAULT_CONFIG)):
        _say(console, line)
    return 0


if __name__ == "__main__":
    run()
