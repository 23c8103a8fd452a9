"""The cycle: read the sheet, probe the pool, plan, journal, act, write back.

Everything here is IO and ordering; every decision is `reconcile.plan`'s.
One cycle runs at a time, in the main thread, every poll_interval (a cycle
that takes longer is followed by the next at once, never overlapped).
SIGTERM/SIGINT at any point let the current cycle finish (its launches are
journalled, its write made), then the store closes and the daemon exits 0.
A sheet or host that cannot be reached is logged and retried next cycle; it
never stops the daemon, and the Sheets API gets at most `[sheet]
retry_budget` seconds a cycle. Hosts with `[[hosts]] repair` are repaired in
the background (repair.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerThreads
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler

from . import config as config_module
from . import disk_gc, gang, reconcile, views
from .code_sync import CodeVersion
from .code_versions import PinError, code_for_launch, resolve_pins
from .config import Config, HostConfig, job_workdir
from .errors import SheetError, SheetOwned, SheetrunnerError, SheetUnavailable, TransportError
from .host_prep import HostPrep, wanted_hosts
from .log_archive import ARCHIVED_BYTES, LogArchive
from .model import ENDED_STATUSES, UNFINISHED_STATUSES, Action, Experiment, Run, Status
from .notify import Notifier, sheet_label
from .ownership import Ownership, lease_seconds, this_daemon
from .placement import HostCapacity
from .pool import nodes
from .pool.hosts import HostAgent, LaunchResult, Pool, describe_argv, launch_spec
from .pool.local import LocalTransport
from .pool.slurm import SlurmAgent, cluster_entries, cluster_host
from .pool.transport import Transport
from .reconcile import Kill, Launch, Plan
from .repair import Repairs
from .sheet import expansion, guard
from .sheet import schema as rows
from .sheet.render import SheetView
from .sheet.table import SheetBackend, SheetWrite, Table
from .store import Store

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class CycleReport:
    """What one cycle did; the CLI and tests read it."""

    sheet_ok: bool = True
    launched: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    cells_written: int = 0
    acting: bool = False  # this daemon owned the sheet this cycle
    unfinished: int = 0  # runs or rows still to finish (queued, running, retrying, ...)


PROBLEMS = ("failed", "invalid", "unplaceable")
EXIT_ROWS_FAILED = 3


@dataclass
class Outcome:
    """The end of `daemon --exit-when-done`: counts by status, and the rows that did not make it.
    Its exit code is 0 when no row failed, is invalid or unplaceable, else 3."""

    rows: list[tuple[int, str, str]]  # (row, status, message)

    @property
    def exit_code(self) -> int:
        return EXIT_ROWS_FAILED if any(s in PROBLEMS for _, s, _ in self.rows) else 0

    def lines(self) -> list[str]:
        counts: dict[str, int] = {}
        for _, status, _ in self.rows:
            counts[status] = counts.get(status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda i: -i[1]))
        lines = [f"done: {summary or 'no rows'}"]
        lines += [
            f"row {row} {status}: {_clip(message, 300)}"
            for row, status, message in sorted(self.rows)
            if status in PROBLEMS
        ]
        return lines


class Daemon:
    """One sheet, one pool, one store; `cycle()` is the whole job."""

    def __init__(
        self,
        config: Config,
        sheet: SheetBackend,
        pool: Pool,
        store: Store,
        clock: Callable[[], datetime] = utc_now,
        take_over: bool = False,
    ):
        self.config = config
        self.sheet = sheet
        self.pool = pool
        self.store = store
        self.clock = clock
        self.policy = policy_from(config)
        self.view = SheetView(config.sheet, code=_synced(config))
        self.prep = HostPrep(config)  # code on the hosts, setups (host_prep.py)
        self.versions: dict[str, CodeVersion] = {}  # each synced job's code this cycle
        self.parsed = rows.ParseCache()  # the rows of a sheet unchanged since the last cycle
        self.noted: list[dict] | None = None  # the rows with no run, as last saved for `ps`
        self.pinned: dict[str, CodeVersion | str] = {}  # run id -> its row's pin (or why bad)
        self.tidied_at: dict[str, datetime] = {}  # host -> its last automatic gc
        self.archive = LogArchive(config.daemon.state_dir)
        self._cycle_lock = threading.Lock()
        self.ownership = Ownership(
            this_daemon(Path(config.daemon.state_dir)),
            lease_seconds(config.daemon.poll_interval_s),
            take_over,
            store.namespace,
        )
        self.fatal: SheetOwned | None = None  # why the daemon stopped on its own
        self._said: set[str] = set()  # sheet problems already logged
        self._shown: dict[int, str] = {}  # row -> run id, as the last cycle matched them
        self.exit_code = 0  # what `daemon --exit-when-done` exits with (see Outcome)
        self._reload_requested = threading.Event()  # SIGHUP: reload the config between cycles
        self.notifier = Notifier(config.notify, label=sheet_label(config.sheet))
        self.repairs = Repairs(Path(config.daemon.state_dir), config.base_dir, clock=clock)
        self.stopping = threading.Event()  # SIGTERM/SIGINT: no cycle starts after this one

    # -- one cycle ----------------------------------------------------------------------------

    def cycle(self) -> CycleReport:
        with self._cycle_lock, self._sheet_budget():
            return self._cycle()

    def _sheet_budget(self) -> contextlib.AbstractContextManager:
        """The Sheets API's share of one cycle: reads, writes, retries and pauses together
        get `[sheet] retry_budget` seconds, then the cycle goes on without the sheet."""
        if self.config.sheet.url is None:
            return contextlib.nullcontext()
        from .sheets.google_http import cycle_budget

        return cycle_budget(self.config.sheet.retry_budget_s)

    def _cycle(self) -> CycleReport:
        now = self.clock()
        report = CycleReport()
        table, experiments = self._read_sheet()
        report.sheet_ok = experiments is not None
        turn = self.ownership.turn(table, now)
        if not turn.acting:
            report.unfinished = 1  # not started yet: nothing can be done
            if table is not None and turn.tab is not None:
                self._write_meta(table, turn.tab)
            return report
        report.acting = True
        self._use_namespace(table)
        known = self.store.runs()
        plain = (
            [e for e in expansion.with_sweep_actions(experiments) if not e.is_sweep]
            if experiments is not None
            else None
        )
        observed = self.pool.probe_all(
            _attempts_to_probe(known), now, runs=_runs_to_ask(known, plain or [])
        )
        self.store.save_hosts(observed.values())
        self._repair(now)
        pins: dict[int, CodeVersion | str] = {}
        if plain is not None:
            synced = {n: str(j.sync) for n, j in self.config.jobs.items() if j.sync is not None}
            plain, pins = resolve_pins(plain, synced, self.prep.kept)
        capacities = self._prepare_hosts(plain, known, now, pins)
        plan = reconcile.plan(plain, known, observed, capacities, self.policy, now)
        self.pinned = {plan.rows[row]: v for row, v in pins.items() if row in plan.rows}
        self.store.save_runs(
            plan.runs.values(), [(e.run_id, e.kind, e.detail) for e in plan.events], now
        )
        if plain is not None:
            noted = _noted_rows(plain, plan)
            if noted != self.noted:  # most cycles: the same invalid rows as the last one
                self.store.save_noted_rows(noted)
                self.noted = noted
        _log_status_changes(known, plan)
        runs = {**known, **plan.runs}
        if plain is not None:
            self._shown = dict(plan.rows)
        report.killed, report.launched = self._act(plan, runs, now)
        self.notifier.cycle(self.notifier.notices(known, runs, experiments))
        self._archive_logs(known, plan)
        self._tidy_disks(now)
        if table is not None and experiments is not None:
            report.cells_written = self._write_sheet(table, experiments, plan, runs, now, turn.tab)
        elif table is not None and turn.tab is not None:  # a damaged header: keep the lease
            self._write_meta(table, turn.tab)
        report.unfinished = _unfinished(runs.values(), plan) + _unexpanded(experiments or [])
        return report

    def _prepare_hosts(
        self,
        plain: list[Experiment] | None,
        known: dict[str, Run],
        now: datetime,
        pins: dict[int, CodeVersion | str] | None = None,
    ) -> list[HostCapacity]:
        """The hosts' capacities, less the jobs each cannot start yet: the code of synced jobs
        is uploaded and setups started (detached) on the hosts that may take waiting rows
        (host_prep.py); a host with too little free disk is closed (its capacity says so)."""
        capacities = self.pool.capacities()
        needy = {n for n, j in self.config.jobs.items() if j.sync or j.setup} | (
            set(self.config.jobs) if any(h.setup for h in self.config.hosts) else set()
        )
        waiting = {p for p in _waiting_jobs(plain or [], known) if p[0] in needy}
        if not waiting:
            return capacities  # nothing to launch: the trees are not even looked at
        try:
            self.versions = self.prep.versions()
        except OSError as exc:
            log.error("synced code cannot be read, nothing launched from it: %s", exc)
            self.versions = {}
        open_hosts = {c.name for c in capacities if c.reachable and not c.closed}
        wanted = wanted_hosts(self.config.hosts, waiting, open_hosts)
        pinned = _waiting_pins(plain or [], known, pins or {})
        blocked = self.prep.prepare(self.pool, wanted, self.versions, now, pinned)
        unreadable = {n for n, j in self.config.jobs.items() if j.sync and n not in self.versions}
        for c in capacities:
            blocked.setdefault(c.name, {}).update(dict.fromkeys(unreadable, "code not readable"))
        return [replace(c, blocked=tuple(sorted(blocked[c.name].items()))) for c in capacities]

    def _tidy_disks(self, now: datetime) -> None:
        """Once an hour per host: remove attempt directories of runs final for longer than
        the host's keep_finished_days (their logs archived here first) and unused code."""
        due = [
            h.name
            for h in self.config.hosts
            if h.name in self.pool.agents
            and self.pool.last.get(h.name) is not None
            and self.pool.last[h.name].reachable
            and (now - self.tidied_at.get(h.name, now - disk_gc.INTERVAL)) >= disk_gc.INTERVAL
        ]
        if not due or not self.pool.namespace:
            return
        for name in due:
            self.tidied_at[name] = now
        try:
            self.versions = self.prep.versions()  # the current code is never collected
        except OSError as exc:
            log.warning("synced code cannot be read, hosts not tidied: %s", exc)
            return
        disk_gc.collect(
            self.config,
            self.pool,
            self.store,
            self.archive,
            now,
            current_code=[v.hash for v in self.versions.values()],
            hosts=due,
        )

    def _repair(self, now: datetime) -> None:
        """Start the repairs due (in the background); a host whose repair try just ended is
        reconnected at once next cycle, not after its SSH reconnect backoff."""
        for host in self.repairs.tick(self.config.hosts, self.pool.down_since, now):
            agent = self.pool.agents.get(host)
            if agent is not None:
                agent.transport.close()

    def _use_namespace(self, table: Table | None) -> None:
        namespace = self.ownership.namespace
        if namespace and self.pool.namespace != namespace:
            self.pool.set_namespace(namespace)
            if table is not None:
                self.store.remember_namespace(table.source, namespace)

    def _write_meta(self, table: Table, tab: list[list[str]]) -> None:
        try:
            self.sheet.write(SheetWrite(meta=tab, meta_expect=table.meta))
        except SheetError as exc:
            log.warning("could not write the sheet's lease, retried next cycle: %s", exc)
            return
        self.ownership.written(tab)

    def _read_sheet(self) -> tuple[Table | None, list[Experiment] | None]:
        """The table, and its rows unless the sheet cannot be used this cycle (unreachable,
        or its header damaged: then runs go on and nothing is claimed, stopped or written)."""
        try:
            table = self.sheet.read()
        except SheetUnavailable as exc:
            log.warning("sheet unreachable, runs go on and it is retried next cycle: %s", exc)
            return None, None
        except SheetError as exc:
            log.error("sheet cannot be used: %s", exc)
            return None, None
        problem = rows.header_problem(table)
        if problem is not None:
            self._say_once(
                "sheet header",
                problem,
                logging.ERROR,
                "runs go on; nothing is claimed, stopped or written until it is fixed",
            )
            return table, None
        for line in rows.header_problems(table):
            self._say_once("sheet header", line, logging.WARNING)
        return table, self.parsed.parse(table, self.config.jobs)

    def _say_once(self, topic: str, text: str, level: int, tail: str = "") -> None:
        """A problem of the sheet, logged once rather than every cycle."""
        if text in self._said:
            return
        self._said.add(text)
        log.log(level, "%s: %s%s", topic, text, f" ({tail})" if tail else "")

    def _archive_logs(self, known: dict[str, Run], plan: Plan) -> None:
        """Copy the log of every attempt that ended this cycle into the state directory."""
        for run in plan.runs.values():
            before = known.get(run.run_id)
            if before is None or not before.status.is_live or run.status not in ENDED_STATUSES:
                continue
            agent = self.pool.agents.get(before.host or "")
            if agent is None:
                continue
            try:
                data = agent.tail(run.run_id, before.attempt, ARCHIVED_BYTES)
            except TransportError as exc:
                log.info(
                    "log of run=%s attempt=%s not archived: %s", run.run_id, before.attempt, exc
                )
                continue
            self.archive.save(run.run_id, before.attempt, data)

    def _act(self, plan: Plan, runs: dict[str, Run], now: datetime) -> tuple[list[str], list[str]]:
        """Kills, then launches, on every host at once: a slow host delays only itself."""
        hosts = sorted(
            {k.host for k in plan.kills}
            | {launch.host for launch in plan.launches}
            | {h.host for h in plan.holds}
        )
        if not hosts:
            return [], []
        with ThreadPoolExecutor(max_workers=min(self.pool.max_parallel, len(hosts))) as ex:
            done = list(ex.map(lambda host: self._act_on_host(host, plan, runs, now), hosts))
        return [r for killed, _ in done for r in killed], [
            r for _, launched in done for r in launched
        ]

    def _act_on_host(
        self, host: str, plan: Plan, runs: dict[str, Run], now: datetime
    ) -> tuple[list[str], list[str]]:
        killed = self._kill([k for k in plan.kills if k.host == host])
        self._hold([h for h in plan.holds if h.host == host])
        return killed, self._launch([x for x in plan.launches if x.host == host], runs, now)

    def _hold(self, holds: list[reconcile.Hold]) -> None:
        """Hold or release attempts waiting in a cluster's queue (the row's action)."""
        for hold in holds:
            agent = self.pool.agents.get(hold.host)
            if not isinstance(agent, SlurmAgent):
                continue
            try:
                agent.hold(hold.job_id, release=hold.release)
            except TransportError as exc:
                log.warning("hold failed run=%s host=%s: %s", hold.run_id, hold.host, exc)
                continue
            what = "released" if hold.release else "held"
            log.info("%s run=%s attempt=%s host=%s", what, hold.run_id, hold.attempt, hold.host)

    def _kill(self, kills: list[Kill]) -> list[str]:
        done = []
        for kill in kills:
            agent = self.pool.agents.get(kill.host)
            if agent is None:
                continue
            try:
                state = agent.kill(kill.run_id, kill.attempt, grace_s=self.policy.stop_grace_s)
            except TransportError as exc:
                log.warning(
                    "kill failed run=%s attempt=%s host=%s: %s (retried next cycle)",
                    kill.run_id,
                    kill.attempt,
                    kill.host,
                    exc,
                )
                continue
            log.info(
                "killed run=%s attempt=%s host=%s reason=%s state=%s",
                kill.run_id,
                kill.attempt,
                kill.host,
                kill.reason,
                state,
            )
            self.store.log_event(
                kill.run_id, "killed", f"attempt={kill.attempt} {kill.reason}", self.clock()
            )
            done.append(kill.run_id)
        return done

    def _launch(self, launches: list[Launch], runs: dict[str, Run], now: datetime) -> list[str]:
        if not launches:
            return []
        agent = self.pool.agents[launches[0].host]
        specs = []
        for launch in launches:
            run = runs[launch.run_id]
            job = self.config.jobs[run.spec.job]
            workdir = job_workdir(self.config, run.spec.job, agent.config)
            try:  # a launched run whose row got a bad pin: never from the wrong code
                version = code_for_launch(
                    self.versions.get(run.spec.job), self.pinned.get(run.run_id)
                )
            except PinError as exc:
                self.store.record_intent(run, now)
                self._launch_failed(run, str(exc), now)
                continue
            if version is not None:
                try:  # the host has it (host_prep, this cycle): no call, unless it did not
                    source = self.prep.source(job, version)
                    workdir = self.prep.uploader.ensure(agent, version, source)
                except (TransportError, ValueError, OSError) as exc:
                    self.store.record_intent(run, now)
                    self._launch_failed(run, f"code upload: {exc}", now)
                    continue
                run.code, run.code_hash = version.label, version.hash
            node = dataclasses.replace(run, host=launch.host, accelerators=launch.accelerators)
            spec = launch_spec(
                node, job, agent.config, workdir, version.spec() if version else None
            )
            rank0 = self.pool.agents[launch.nodes[0]] if launch.nodes else agent
            spec = nodes.for_node(spec, launch, rank0.config)
            self.store.record_intent(run, now)  # journal before acting
            specs.append((launch, run, spec))
        if isinstance(agent, SlurmAgent):  # one agent call submits them all
            return self._submit(agent, specs, now)
        launched = []
        for launch, run, spec in specs:
            try:
                result = agent.launch(spec)
            except TransportError as exc:
                self._launch_failed(run, str(exc), now)
                continue
            if result.refused:
                self._launch_refused(run, result.detail, now)
                continue
            self._launched(launch, run, spec, result)
            launched.append(run.run_id)
        return launched

    def _submit(
        self, agent: SlurmAgent, specs: list[tuple[Launch, Run, dict]], now: datetime
    ) -> list[str]:
        """A cycle's submissions to a cluster, batched; each journalled before (above)."""
        try:
            results = agent.launch_many([(spec, self._time_limit(run)) for _, run, spec in specs])
        except TransportError as exc:
            for _, run, _ in specs:
                self._launch_failed(run, str(exc), now)
            return []
        launched = []
        for (launch, run, spec), result in zip(specs, results, strict=False):
            if not result.launched and "sbatch failed" in result.detail:
                self._launch_failed(run, result.detail, now)
                continue
            self._launched(launch, run, spec, result)
            launched.append(run.run_id)
        return launched

    def _time_limit(self, run: Run) -> float | None:
        """The row's time_limit, else the job's, else the config's (Slurm's --time)."""
        if run.link.time_limit_s is not None:
            return run.link.time_limit_s
        return self.policy.job_time_limit_s.get(run.spec.job, self.policy.time_limit_s)

    def _launched(self, launch: Launch, run: Run, spec: dict, result: LaunchResult) -> None:
        outcome = "sent" if result.launched else "already-claimed"
        self.store.record_outcome(run.run_id, run.attempt, outcome, result.detail, self.clock())
        log.info(
            "launched run=%s attempt=%s host=%s accelerators=%s argv=%s",
            run.run_id,
            run.attempt,
            launch.host,
            ",".join(launch.accelerators) or "-",
            _clip(describe_argv(spec)),
        )

    def _launch_refused(self, run: Run, reason: str, now: datetime) -> None:
        """The host started nothing (a GPU claimed by another sheet's run): the core places
        the run again next cycle, with no crash counted."""
        log.info(
            "launch refused run=%s attempt=%s host=%s: %s",
            run.run_id,
            run.attempt,
            run.host,
            reason,
        )
        self.store.record_outcome(run.run_id, run.attempt, "refused", reason, now)
        run.launch_refused = reason[:500] or "refused"
        self.store.save_runs([run], now=now)

    def _launch_failed(self, run: Run, error: str, now: datetime) -> None:
        """The launch may not have reached the host: the core counts it next cycle (a crash,
        with backoff, another host first); fencing handles a straggler that did start."""
        log.warning(
            "launch failed run=%s attempt=%s host=%s: %s", run.run_id, run.attempt, run.host, error
        )
        self.store.record_outcome(run.run_id, run.attempt, "failed", error, now)
        run.launch_error = error[:500] or "unknown error"
        self.store.save_runs([run], now=now)

    def _write_sheet(
        self,
        table: Table,
        experiments: list[Experiment],
        plan: Plan,
        runs: dict[str, Run],
        now: datetime,
        lease_tab: list[list[str]] | None,
    ) -> int:
        change = self.view.change(table, experiments, plan, runs, now, self.side_tabs())
        change = guard.only_owned(
            change,
            table,
            self.config.sheet.metric_columns,
            guard.own_tabs(self.config.sheet),
            curve=bool(self.config.sheet.curve),
        )
        change.meta, change.meta_expect = lease_tab, table.meta
        if change.is_empty():
            return 0
        try:
            self.sheet.write(change)
        except SheetError as exc:
            log.warning("sheet write failed, retried next cycle: %s", exc)
            return 0
        self.view.written(change)
        self.ownership.written(lease_tab)
        return sum(len(u.cells) for u in change.rows)

    def side_tabs(self) -> dict[str, list[list]]:
        """The pool tab (`[sheet] pool_tab`), for the people who never open a terminal."""
        name = self.config.sheet.pool_tab
        if not name:
            return {}
        runs = list(self.store.runs().values())
        entries = views.pool_json(
            list(self.config.hosts),
            self.pool.last,
            runs,
            self.pool.down_since,
            repairs=self.repairs.snapshot(),
            namespace=self.pool.namespace,
            setups=self.prep.snapshot(),
        )
        clusters = cluster_entries(self.pool.agents.values(), runs)
        rows = views.pool_rows(entries)
        return {name: rows + [[], *views.cluster_rows(clusters)] if clusters else rows}

    # -- running for a long time ----------------------------------------------------------------

    def run_forever(self, exit_when_done: bool = False) -> int:
        """Cycle every poll_interval (an APScheduler interval job, one at a time, coalesced)
        until a signal (or, with exit_when_done, until done). A signal at any moment lets the
        cycle in progress finish and starts none after it: `stopping` is set, and a watcher
        thread shuts the scheduler down *waiting* for the running cycle, so the store is
        closed only after the cycle's last write."""
        scheduler = BlockingScheduler(executors={"default": SchedulerThreads(1)}, timezone=UTC)

        def one_cycle() -> None:
            if self.stopping.is_set():
                return
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
            report = self._guarded_cycle()
            if self.fatal is not None or (exit_when_done and self._done(report)):
                self.stopping.set()

        over = threading.Event()

        def shut_down_when_stopping() -> None:
            self.stopping.wait()
            while not scheduler.running and not over.is_set():  # a signal before start()
                over.wait(0.05)
            with contextlib.suppress(SchedulerNotRunningError):
                scheduler.shutdown(wait=True)

        poll_s = self.config.daemon.poll_interval_s
        scheduler.add_job(
            one_cycle,
            "interval",
            seconds=poll_s,
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(poll_s)),
        )
        with self.signals_finish_the_cycle():
            watcher = threading.Thread(target=shut_down_when_stopping, daemon=True)
            watcher.start()
            if not self.stopping.is_set():
                scheduler.start()
            over.set()
            self.stopping.set()
            watcher.join()  # the cycle in progress has ended: its writes are in the store
        if self.fatal is not None:
            raise self.fatal
        return self.exit_code

    def _done(self, report: CycleReport | None) -> bool:
        """`--exit-when-done`: nothing left to run; say how the rows ended."""
        if report is None or not report.sheet_ok or report.unfinished:
            return False
        outcome = self.outcome()
        for line in outcome.lines():
            log.info("%s", line)
        self.exit_code = outcome.exit_code
        return True

    def _guarded_cycle(self) -> CycleReport | None:
        """One cycle; its failure is logged and the next cycle tries again (SheetOwned, a
        second daemon's lease, stops the daemon)."""
        try:
            return self.cycle()
        except SheetOwned as exc:
            log.error("%s", exc)
            self.fatal = exc
        except SheetrunnerError as exc:
            log.error("cycle failed, retried next cycle: %s", exc)
        except Exception:
            log.exception("cycle crashed, retried next cycle")
        return None

    def signals_finish_the_cycle(self) -> contextlib.AbstractContextManager[threading.Event]:
        """SIGTERM and SIGINT (Ctrl-C) set `stopping` instead of interrupting: the cycle in
        progress runs to its end (every launch journalled, the sheet written), and the caller
        stops before the next. SIGHUP asks for a config reload between cycles."""
        return finish_on_signals(self.stopping, self._reload_requested)

    def reload(self) -> bool:
        """Read the config file again (SIGHUP), between cycles. A config that fails to load
        is refused with its error and the old one kept; hosts and jobs added, removed or
        changed take effect from the next cycle. The sheet and the state directory are the
        daemon's identity: changing them needs a restart."""
        try:
            new = config_module.load(self.config.path)
        except SheetrunnerError as exc:
            log.error("config not reloaded, the running one stays: %s", exc)
            return False
        if new.sheet != self.config.sheet or new.daemon.state_dir != self.config.daemon.state_dir:
            log.error(
                "config not reloaded: [sheet] and [daemon] state_dir change only with a "
                "restart of the daemon"
            )
            return False
        with self._cycle_lock:
            self.pool.replace_agents(
                [
                    self.pool.agents[h.name]
                    if h.name in self.pool.agents
                    and self.pool.agents[h.name].config == h
                    and new.ssh == self.config.ssh
                    else HostAgent(h, transport_for(new, h), new.daemon.probe_timeout_s)
                    for h in new.hosts
                ]
                + cluster_agents(new)
            )
            self.config, self.policy = new, policy_from(new)
            self.view = SheetView(new.sheet, code=_synced(new))
            self.prep.use(new)
            if new.notify != self.notifier.config:
                self.notifier.close()
                self.notifier = Notifier(new.notify, label=sheet_label(new.sheet))
        log.info(
            "config reloaded from %s: %d hosts, %d jobs", new.path, len(new.hosts), len(new.jobs)
        )
        return True

    def outcome(self) -> Outcome:
        """How the sheet's rows ended, as the last cycle saw them."""
        runs = self.store.runs()
        shown = [runs[run_id] for _, run_id in sorted(self._shown.items()) if run_id in runs]
        return Outcome(
            [(r.link.row, r.shown_status.value, r.message) for r in shown]
            + [(n["row"], n["status"], n["message"]) for n in self.store.noted_rows()]
        )

    def close(self) -> None:
        """Hand the sheet back (a daemon started next need not wait for the lease to end),
        then close the connections."""
        with self._cycle_lock:
            tab = self.ownership.release(self.clock())
            if tab is not None:
                try:
                    self.sheet.write(SheetWrite(meta=tab, meta_expect=self.ownership.last_meta))
                except SheetError as exc:
                    log.info("lease not handed back (it ends by itself): %s", exc)
        self.repairs.close()
        self.notifier.close()
        self.pool.close()
        self.store.close()


@contextlib.contextmanager
def finish_on_signals(
    stopping: threading.Event, reload: threading.Event | None = None, keep: bool = False
) -> Iterator[threading.Event]:
    """While inside, SIGTERM and SIGINT set `stopping` (logged once) rather than raise, and
    SIGHUP sets `reload`; the previous handlers come back on the way out, unless `keep`
    (the daemon command: the process ends right after, and a late Ctrl-C must not turn
    its clean exit into an interrupted one). Main thread only."""

    def on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            log.info("%s received again: already finishing the current cycle", name)
            return
        stopping.set()
        log.info("%s received: finishing the current cycle, then exiting", name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    if reload is not None:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: reload.set())
    try:
        yield stopping
    finally:
        for sig, handler in previous.items():
            if not keep:
                signal.signal(sig, handler)


def _attempts_to_probe(runs: dict[str, Run]) -> dict[str, set[tuple[str, int]]]:
    wanted: dict[str, set[tuple[str, int]]] = {}
    for run in runs.values():
        for host in gang.node_hosts(run) if run.status.is_live else ():
            wanted.setdefault(host, set()).add((run.run_id, run.attempt))
    return wanted


LOGGED_ARGV_CHARS = 500


def _clip(text: str, limit: int = LOGGED_ARGV_CHARS) -> str:
    """Row data in a log line, bounded: a 1 MB cell must not make a 1 MB log line."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _runs_to_ask(known: dict[str, Run], experiments: list[Experiment]) -> list[str]:
    """Runs every host is asked about (their newest attempt there): the unfinished ones the
    store knows, and the ids the sheet shows that it does not (state lost or restored)."""
    wanted = {r.run_id for r in known.values() if not r.status.is_final and r.attempt > 0}
    wanted |= {e.run_id for e in experiments if e.run_id and e.run_id not in known}
    return sorted(wanted)


def _unfinished(runs: Iterable[Run], plan: Plan) -> int:
    """Runs the sheet shows that are not finished yet (for --exit-when-done)."""
    shown = set(plan.rows.values())
    return sum(1 for r in runs if r.run_id in shown and r.status in UNFINISHED_STATUSES)


def _log_status_changes(known: dict[str, Run], plan: Plan) -> None:
    """One plain line per run whose status changed: greppable, every final status included."""
    for run in plan.runs.values():
        before = known.get(run.run_id)
        if before is None or before.status != run.status:
            log.info(
                "run=%s row=%s status=%s%s",
                run.run_id,
                run.link.row,
                run.status.value,
                f" message={_clip(run.message, 300)}" if run.message else "",
            )


def _noted_rows(experiments: list[Experiment], plan: Plan) -> list[dict]:
    """Rows that have no run this cycle (invalid ones), for `ps`."""
    by_row = {e.row: e for e in experiments}
    return [
        {
            "row": row,
            "job": by_row[row].job if row in by_row else "",
            "params": [list(p) for p in by_row[row].params] if row in by_row else [],
            "status": status.value,
            "message": message,
        }
        for row, (status, message) in sorted(plan.notes.items())
    ]


def _synced(config: Config) -> bool:
    return any(job.sync is not None for job in config.jobs.values())


WAITING = frozenset({Status.QUEUED, Status.RETRYING, Status.LOST})  # may launch again


def _waiting_pins(
    experiments: list[Experiment], known: dict[str, Run], pins: dict[int, CodeVersion | str]
) -> dict[str, set[CodeVersion]]:
    """The versions pinned by rows that may start soon (as _waiting_jobs), per job: hosts
    get them (and their setups) ready before the launch."""
    found: dict[str, set[CodeVersion]] = {}
    for e in experiments:
        version = pins.get(e.row)
        if not isinstance(version, CodeVersion) or e.action in (Action.HOLD, Action.STOP):
            continue
        run = known.get(e.run_id or "")
        if run is None or run.status in WAITING or e.action == Action.RERUN:
            found.setdefault(e.job, set()).add(version)
    return found


def _waiting_jobs(
    experiments: list[Experiment], known: dict[str, Run]
) -> set[tuple[str, str | None]]:
    """(job, where) of rows and runs that may start soon: rows with no run yet, queued or
    retrying runs, reruns asked for. Hosts get ready for these before their launch."""
    found = {(r.spec.job, r.link.where) for r in known.values() if r.status in WAITING}
    for e in experiments:
        if e.error or e.is_sweep or e.action in (Action.HOLD, Action.STOP):
            continue
        run = known.get(e.run_id or "")
        if run is None or run.status in WAITING or e.action == Action.RERUN:
            found.add((e.job, e.where))
    return found


def _unexpanded(experiments: list[Experiment]) -> int:
    """Sweep rows whose child rows are not in the sheet yet: their work has not begun."""
    return sum(1 for e in experiments if e.is_sweep and not e.run_id)


def policy_from(config: Config) -> reconcile.Policy:
    d = config.defaults
    return reconcile.Policy(
        retries=d.retries,
        hang_timeout_s=d.hang_timeout_s,
        backoff_s=d.backoff_s,
        backoff_max_s=d.backoff_max_s,
        launch_timeout_s=d.launch_timeout_s,
        on_host_lost=config.daemon.on_host_lost,
        host_lost_timeout_s=config.daemon.host_lost_timeout_s,
        no_retry_exit_codes={name: job.no_retry_exit_codes for name, job in config.jobs.items()},
        stop_grace_s=d.stop_grace_s,
        time_limit_s=d.time_limit_s,
        job_time_limit_s={
            name: job.time_limit_s for name, job in config.jobs.items() if job.time_limit_s
        },
        slices=config.slices,
    )


# -- building the parts from the config -------------------------------------------------------


def open_sheet(config: Config) -> SheetBackend:
    if config.sheet.path is not None:
        from .sheets.workbook import Workbook

        return Workbook(config.sheet.path, config.sheet.worksheet)
    from .sheets.google import GoogleSheet

    return GoogleSheet(
        config.sheet.url or "",
        config.sheet.worksheet,
        config.sheet.credentials,
        config.sheet.endpoint,
    )


def transport_for(config: Config, host: HostConfig) -> Transport:
    if host.local:
        return LocalTransport(host.name)
    from .pool.ssh import SshTransport

    ssh = config.ssh
    return SshTransport(
        host.name,
        host.address,
        host.port,
        host.user,
        host.identity,
        known_hosts=ssh.known_hosts,
        host_key_policy=ssh.host_key_policy,
        connect_timeout_s=ssh.connect_timeout_s,
        keepalive_s=ssh.keepalive_s,
        ssh_config=ssh.config_file,
    )


def open_pool(config: Config, namespace: str | None = None) -> Pool:
    """The pool; runs are reachable only once the sheet's namespace is set (the daemon sets
    it when it owns the sheet; the commands take the one the state last used)."""
    agents = [
        HostAgent(h, transport_for(config, h), config.daemon.probe_timeout_s) for h in config.hosts
    ]
    pool = Pool(agents + cluster_agents(config), config.daemon.max_parallel_hosts)
    if namespace:
        pool.set_namespace(namespace)
    return pool


def cluster_agents(config: Config) -> list[HostAgent]:
    """One agent per `[[clusters]]` entry, on its login node."""
    return [
        SlurmAgent(c, transport_for(config, cluster_host(c)), config.daemon.probe_timeout_s)
        for c in config.clusters
    ]


def open_store(config: Config) -> Store:
    return Store(Path(config.daemon.state_dir) / "state.sqlite")


def build(config: Config, take_over: bool = False) -> Daemon:
    store = open_store(config)
    return Daemon(config, open_sheet(config), open_pool(config), store, take_over=take_over)


class DaemonLock:
    """One daemon per state directory: two would both launch the same rows.

    An flock on <state_dir>/daemon.lock, released by the kernel when the
    process dies, so a SIGKILLed daemon never leaves a stale lock behind."""

    def __init__(self, state_dir: Path):
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "daemon.lock"
        self._file = open(self.path, "a+")  # noqa: SIM115 - held for the daemon's lifetime

    def acquire(self) -> DaemonLock:
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            raise SheetrunnerError(
                f"another sheetrunner daemon (pid {holder}) is using {self.path.parent}; stop it "
                "first, or give this one its own [daemon] state_dir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def release(self) -> None:
        self._file.close()
