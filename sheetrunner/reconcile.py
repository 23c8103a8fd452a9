"""The pure core: from what the sheet wants, the store knows and the probes saw, a plan.

`plan()` does no IO and reads no clock; every policy lives here: matching rows
to runs, hold/stop/rerun, placement on free accelerators, crash and hang
handling with retries and backoff, loss of hosts, and fencing of stale
attempts. The daemon journals the plan, carries it out and writes the sheet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from . import gang, lifecycle
from .match import RowMatcher, keepers, newest_attempts, run_from_attempt
from .model import (
    UNENDED_ATTEMPT_STATES,
    Action,
    AttemptObservation,
    AttemptState,
    Experiment,
    HostObservation,
    Run,
    RunSpec,
    Status,
)
from .placement import HostCapacity, Placement, never_fits
from .remote.protocol import new_run_id


@dataclass(frozen=True)
class Policy:
    """The knobs of the core, from the config's [defaults] and [daemon]."""

    retries: int = 2
    hang_timeout_s: float = 600.0
    backoff_s: float = 30.0
    backoff_max_s: float = 3600.0
    launch_timeout_s: float = 120.0
    on_host_lost: str = "wait"  # or "requeue"
    host_lost_timeout_s: float = 300.0
    stop_grace_s: float = 10.0  # SIGTERM, then SIGKILL after this
    time_limit_s: float | None = None  # [defaults] time_limit: an attempt killed past it, failed
    job_time_limit_s: Mapping[str, float] = field(default_factory=dict)  # [jobs.NAME] time_limit
    # job -> exit codes that fail the run at once (a usage error no retry can fix)
    no_retry_exit_codes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    slices: tuple[gang.Slice, ...] = ()  # [[slices]]: hosts that take only whole-slice runs
    reserve_after_cycles: int = 3  # a run across hosts waiting longer holds hosts (gang.py)


@dataclass(frozen=True)
class Launch:
    run_id: str
    attempt: int
    host: str
    accelerators: tuple[str, ...]
    node_rank: int = 0  # a run across hosts: this node's rank, its hosts and rank 0's port
    nodes: tuple[str, ...] = ()
    coordinator_port: int = 0


@dataclass(frozen=True)
class Kill:
    run_id: str
    attempt: int
    host: str
    reason: str


@dataclass(frozen=True)
class Hold:
    """Hold (or release) an attempt waiting in a cluster's queue: the row's action is hold."""

    run_id: str
    attempt: int
    host: str
    job_id: str
    release: bool = False


@dataclass(frozen=True)
class Event:
    run_id: str
    kind: str
    detail: str = ""


@dataclass
class Plan:
    """What one cycle should do. `runs` holds every run whose state changed."""

    runs: dict[str, Run] = field(default_factory=dict)
    launches: list[Launch] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    rows: dict[int, str] = field(default_factory=dict)  # sheet row -> run id it shows
    notes: dict[int, tuple[Status, str]] = field(default_factory=dict)  # rows with no run
    events: list[Event] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)  # attempts in a cluster's queue


def plan(
    experiments: list[Experiment] | None,
    known: Mapping[str, Run],
    observed: Mapping[str, HostObservation],
    hosts: list[HostCapacity],
    policy: Policy,
    now: datetime,
    new_id: Callable[[str], str] = new_run_id,
) -> Plan:
    """Decide one cycle. `experiments` is None when the sheet could not be read:
    runs then go on (observed, retried, fenced) but no row is claimed or stopped.
    `new_id` makes a fresh run id from an experiment hash (random; tests pin it)."""
    cycle = _Cycle({rid: dataclasses.replace(r) for rid, r in known.items()}, policy, now, new_id)
    newest = newest_attempts(observed)
    cycle.recover(newest)
    if experiments is not None:
        cycle.match_rows(experiments, newest, {h.name for h in hosts})
    cycle.adopt_newer(newest)
    cycle.observe(observed, {h.name for h in hosts})
    cycle.fence(observed)
    cycle.place(hosts, observed)
    return cycle.result(known)


class _Cycle:
    """The working state of one plan() call; each method is one step of the cycle."""

    def __init__(
        self,
        runs: dict[str, Run],
        policy: Policy,
        now: datetime,
        new_id: Callable[[str], str] = new_run_id,
    ):
        self.runs = runs
        self.policy = policy
        self.now = now
        self.out = Plan()
        self.by_key: dict[str, list[Run]] = {}  # experiment hash -> its runs: no O(n²) scans
        for run in runs.values():
            self.by_key.setdefault(run.spec.key, []).append(run)
        self.matcher = RowMatcher(self.runs, self.by_key, now, self._retries, new_id)

    # -- 0. the store is a cache: what the hosts show of runs it lost ----------------------------

    def recover(self, newest: Mapping[str, tuple[str, AttemptObservation]]) -> None:
        """A live attempt in this sheet's namespace that the store does not know (the state
        was lost or restored from an old copy) becomes a run again, so that its row takes it
        back instead of starting it twice; a run no row shows is then stopped like any other."""
        for run_id, (host, seen) in newest.items():
            if run_id in self.runs or seen.state not in UNENDED_ATTEMPT_STATES:
                continue
            run = run_from_attempt(run_id, host, seen, self.now, self.policy.retries)
            self.runs[run_id] = run
            self.by_key.setdefault(run.spec.key, []).append(run)
            self.out.events.append(
                Event(run_id, "rebuilt", f"from attempt {seen.attempt} on {host}")
            )

    def adopt_newer(self, newest: Mapping[str, tuple[str, AttemptObservation]]) -> None:
        """A host reports a newer attempt than the store knows (a store restored from an
        older copy): that attempt is the run's current one. Attempts are fenced only when
        a newer one is known, never the other way round."""
        for run_id, (host, seen) in newest.items():
            run = self.runs.get(run_id)
            if run is None or seen.attempt <= run.attempt or run.link.replaced_by:
                continue
            self.out.events.append(Event(run_id, "adopted", f"attempt {seen.attempt} on {host}"))
            run.attempt, run.host, run.accelerators = (
                seen.attempt,
                host,
                seen.accelerators or run.accelerators,
            )
            run.attempt_started_at = seen.started_at or self.now
            run.spread, run.slice_name = (), ""  # its other nodes, if any, are fenced
            run.crashes = max(run.crashes, seen.attempt - 1)
            lifecycle.found_again(run)
            run.finished_at, run.link.kept_cells = None, {}

    # -- 1. rows -> runs ------------------------------------------------------------------

    def match_rows(
        self,
        experiments: list[Experiment],
        newest: Mapping[str, tuple[str, AttemptObservation]],
        hosts: set[str],
    ) -> None:
        seen: set[str] = set()
        rows = keepers(experiments, self.runs)
        showing_ids = [e for e in rows if e.run_id]  # first, so runs they show are seen
        for exp in showing_ids + [e for e in rows if not e.run_id]:
            run = self.matcher.run_for(exp, seen, newest, hosts)
            if run is None:
                continue
            seen.add(run.run_id)
            self.out.rows[exp.row] = run.run_id
            run.link.in_sheet = run.link.in_sheet or exp.run_id == run.run_id
            run.link.row = exp.row
            self._apply_row(exp, run)
            seen.add(self.out.rows[exp.row])  # a rerun's new run
        self.out.notes.update(self.matcher.notes)
        self.out.events.extend(Event(*e) for e in self.matcher.events)
        self.matcher.notes.clear()
        self.matcher.events.clear()
        for run in self.runs.values():
            if run.run_id not in seen and not run.status.is_final:
                self._stop(run, "its row was deleted from the sheet")
                run.link.released = True

    def _retries(self, exp: Experiment) -> int:
        return self.policy.retries if exp.retries is None else exp.retries

    def _apply_row(self, exp: Experiment, run: Run) -> None:
        """The row's wishes: its action, its edits, its validity."""
        rerun = exp.action == Action.RERUN and run.link.last_action != Action.RERUN
        run.link.last_action = exp.action
        run.link.priority, run.link.where, run.link.retries = (
            exp.priority,
            exp.where,
            self._retries(exp),
        )
        run.link.sweep_id, run.link.time_limit_s = exp.sweep_id, exp.time_limit_s
        if not run.status.is_live:
            run.link.gpus = exp.gpus  # takes effect at the next launch
            run.link.gpu_memory_mib = exp.gpu_memory_mib
            run.link.nodes = exp.nodes
        if exp.error:
            self._invalidate(run, exp.error)
        elif rerun and (run.status.is_final or run.attempt > 0):
            self._rerun(exp, run)
        elif run.attempt == 0 and (run.status == Status.INVALID or run.spec.key != exp.key):
            self._refresh(exp, run)
        elif run.spec.key != exp.key:
            run.message = (
                "the row changed after the run started; set action to rerun to run the new values"
            )
        else:
            self._apply_action(exp.action, run)

    def _invalidate(self, run: Run, reason: str) -> None:
        """A row made invalid by an edit: a typo must not kill a long run or erase a result,
        and a run that launched keeps the values it launched with (fixing the row later must
        not resume its checkpoints under other parameters)."""
        launched = run.attempt > 0 and run.status != Status.INVALID
        if run.status.is_live or launched or run.status.is_final and run.status != Status.INVALID:
            run.message = f"the row is invalid now ({reason}); this run is left as it is"
            return
        lifecycle.invalid(run, reason)

    def _refresh(self, exp: Experiment, run: Run) -> None:
        """A row fixed or edited before its run ever launched: take the new values."""
        if run.spec.key != exp.key:
            self.by_key[run.spec.key].remove(run)
            self.by_key.setdefault(exp.key, []).append(run)
        run.spec = RunSpec(exp.key, exp.job, exp.params)
        run.link.gpus, run.link.where, run.link.retries = exp.gpus, exp.where, self._retries(exp)
        run.link.gpu_memory_mib = exp.gpu_memory_mib
        run.link.nodes = exp.nodes
        lifecycle.queue(run)
        run.link.duplicate_of = None
        self._apply_action(exp.action, run)

    def _rerun(self, exp: Experiment, old: Run) -> None:
        if old.status.is_live or old.status in (
            Status.QUEUED,
            Status.RETRYING,
            Status.HELD,
            Status.UNPLACEABLE,
        ):
            self._stop(old, "replaced by a rerun")
        new = self.matcher.new_run(exp, Status.QUEUED)
        self.out.events.extend(Event(*e) for e in self.matcher.events)
        self.matcher.events.clear()
        new.link.in_sheet = True
        new.link.last_action = Action.RERUN
        old.link.replaced_by = new.run_id
        self.out.rows[exp.row] = new.run_id

    def _apply_action(self, action: Action, run: Run) -> None:
        if action == Action.STOP and run.status not in (
            Status.STOPPED,
            Status.SUCCEEDED,
            Status.FAILED,
            Status.DUPLICATE,
        ):
            self._stop(run, "stopped: the row's action is stop")
        elif action == Action.HOLD and run.status in (
            Status.QUEUED,
            Status.RETRYING,
            Status.UNPLACEABLE,
        ):
            lifecycle.hold(run)
        elif action in (Action.RUN, Action.RERUN) and run.status == Status.HELD:
            lifecycle.queue(run)

    def _stop(self, run: Run, reason: str) -> None:
        if run.status.is_live:
            self._kill(run, reason)
        lifecycle.stop(run, self.now, reason)
        self.out.events.append(Event(run.run_id, "stopped", reason))

    def _kill(self, run: Run, reason: str) -> None:
        for host in gang.node_hosts(run) if run.attempt else ():
            self.out.kills.append(Kill(run.run_id, run.attempt, host, reason))

    # -- 2. what the probes saw ---------------------------------------------------------------

    def observe(self, observed: Mapping[str, HostObservation], configured: set[str]) -> None:
        for run in self.runs.values():
            if not run.status.is_live or run.host is None:
                continue
            if run.launch_refused:
                self._launch_refused(run)
                continue
            if run.launch_error:
                self._launch_failed(run)
                continue
            if run.spread:
                self._observe_nodes(run, observed, configured)
                continue
            host = observed.get(run.host)
            if host is None or not host.reachable:
                self._host_silent(run, host, configured)
                continue
            self._seen(run, host.attempt(run.run_id, run.attempt))
            self._health(run, host)

    def _observe_nodes(
        self, run: Run, observed: Mapping[str, HostObservation], configured: set[str]
    ) -> None:
        """A run across hosts: one attempt, judged from all its nodes (gang.combined); a node
        that failed decides it even while another node's host is silent."""
        failed = gang.failure(run, observed)
        if failed is not None:
            self._seen(run, failed)
            return
        silent = gang.silent_node(run, observed)
        if silent is not None:
            self._node_silent(run, *silent, configured)
            return
        self._seen(run, gang.combined(run, observed))

    def _node_silent(
        self, run: Run, host: str, seen: HostObservation | None, configured: set[str]
    ) -> None:
        """A node's host is silent. The other nodes cannot go on without it, so after
        `host_lost_timeout` the attempt is a crash (retried whole, whatever `on_host_lost`
        says); until then the run is `lost` and the other nodes are left alone."""
        rank = gang.node_hosts(run).index(host)
        if host not in configured:
            self._crash(run, f"lost: host {host} (node {rank}) is no longer in the config")
            return
        down_since = seen.down_since if seen and seen.down_since else self.now
        down_for = (self.now - down_since).total_seconds()
        if down_for >= self.policy.host_lost_timeout_s:
            self._crash(run, f"lost: host {host} (node {rank}) unreachable for {int(down_for)}s")
        elif run.status != Status.LOST:
            why = seen.error if seen else "not probed"
            lifecycle.lose(run, f"host {host} (node {rank}) unreachable: {why}")

    def _health(self, run: Run, host: HostObservation) -> None:
        """A run on a GPU that turned unhealthy says so (its crash, if it comes, is its own)."""
        sick = [a for a in host.accelerators if not a.healthy and a.index in run.accelerators]
        if sick and run.status == Status.RUNNING:
            run.message = "; ".join(f"GPU {a.index} unhealthy: {a.health}" for a in sick)

    def _launch_refused(self, run: Run) -> None:
        """Last cycle's launch was refused by its host before anything started (a GPU claimed
        by another sheet's run): not a crash, no retry spent; placed again this cycle with
        the probe that now shows the claim."""
        reason, run.launch_refused = run.launch_refused, ""
        lifecycle.refused(run, f"on {run.host}: {reason}")

    def _launch_failed(self, run: Run) -> None:
        """Last cycle's launch did not go through: a crash like any other (counted against
        `retries`, with backoff), and the next attempt prefers another host."""
        reason, run.launch_error, run.avoid_host = run.launch_error, "", run.host
        self._crash(run, f"the launch on {run.host} failed: {reason}")

    def _host_silent(self, run: Run, host: HostObservation | None, configured: set[str]) -> None:
        if run.host not in configured:
            self._crash(run, f"lost: host {run.host} is no longer in the config")
            return
        down_since = host.down_since if host and host.down_since else self.now
        down_for = (self.now - down_since).total_seconds()
        if self.policy.on_host_lost == "requeue" and down_for >= self.policy.host_lost_timeout_s:
            self._crash(run, f"lost: host {run.host} unreachable for {int(down_for)}s")
        elif run.status != Status.LOST:
            lifecycle.lose(
                run, f"host {run.host} unreachable: {host.error if host else 'not probed'}"
            )

    def _seen(self, run: Run, seen: AttemptObservation | None) -> None:
        if seen is not None:
            run.seen.metrics = dict(seen.metrics) or run.seen.metrics
            run.seen.summary = dict(seen.summary) or run.seen.summary
            run.seen.log_path = seen.log_path or run.seen.log_path
        state = seen.state if seen else AttemptState.MISSING
        left_queue = run.in_cluster_queue and state == AttemptState.RUNNING
        run.in_cluster_queue = state == AttemptState.QUEUED and seen is not None
        if left_queue:
            run.message = ""  # Slurm's reason for waiting no longer holds
        tail = f": {seen.log_tail}" if seen and seen.log_tail else ""
        said = f" ({seen.reason})" if seen and seen.scheduler and seen.reason else ""
        ended = state in (AttemptState.EXITED, AttemptState.VANISHED)
        by_us = run.timed_out or run.status == Status.STALLED  # our own cancel of it
        if ended and seen and seen.scheduler == "CANCELLED" and not by_us:
            self._cancelled_outside(run, seen)
        elif state == AttemptState.EXITED:
            self._exited(
                run, seen.exit_code if seen else None, said + tail, seen.leftovers if seen else ""
            )
        elif state == AttemptState.VANISHED:
            self._crash(run, (seen.reason if seen and said else _lost_reason(seen)) + tail)
        elif state == AttemptState.QUEUED and seen:
            self._queued(run, seen)
        elif state in (AttemptState.MISSING, AttemptState.STARTING):
            self._not_started(run, state, seen)
        elif run.status == Status.STALLED:
            self._kill(run, "no heartbeat (stalled; kill sent again until it is gone)")
        else:
            self._alive(run, seen)

    def _exited(self, run: Run, code: int | None, tail: str = "", leftovers: str = "") -> None:
        if run.status == Status.STALLED:
            self._crash(run, run.stall_reason or "stalled")
        elif run.timed_out:
            lifecycle.fail(
                run, self.now, f"time limit {_duration(self._time_limit(run) or 0)} reached"
            )
            self.out.events.append(Event(run.run_id, "failed", "time limit reached"))
        elif code == 0:
            note = f"succeeded; leftover processes killed: {leftovers}" if leftovers else ""
            lifecycle.succeed(run, self.now, note)
            self.out.events.append(Event(run.run_id, "succeeded", f"attempt={run.attempt}"))
        elif code in self.policy.no_retry_exit_codes.get(run.spec.job, ()):
            lifecycle.fail(
                run,
                self.now,
                f"exit code {code} on attempt {run.attempt}, which is not retried (a usage "
                f"error: jobs.{run.spec.job}.no_retry_exit_codes){tail}",
            )
            self.out.events.append(Event(run.run_id, "failed", f"exit code {code}, not retried"))
        else:
            self._crash(run, f"exit code {code} on attempt {run.attempt}{tail}")

    def _cancelled_outside(self, run: Run, seen: AttemptObservation) -> None:
        """Cancelled in the cluster by someone else (sheetrunner's own cancels stop the run
        first, so it is no longer observed): the run is stopped, with what the cluster says."""
        reason = f"cancelled outside sheetrunner: {seen.reason or seen.scheduler}"
        lifecycle.stop(run, self.now, reason)
        self.out.events.append(Event(run.run_id, "stopped", reason))

    def _queued(self, run: Run, seen: AttemptObservation) -> None:
        """Waiting in a cluster's queue: no launch timeout (the queue may be long), and the
        time limit and the hang timeout count from when it leaves the queue. The row's
        `hold` holds it there; `run` releases it."""
        if run.status == Status.LOST:
            lifecycle.found_again(run)
        run.attempt_started_at = self.now
        wants_hold = run.link.last_action == Action.HOLD
        if wants_hold != seen.held and run.host and seen.job_id:
            hold = Hold(run.run_id, run.attempt, run.host, seen.job_id, release=not wants_hold)
            self.out.holds.append(hold)
        if wants_hold:
            run.message = "held in the cluster's queue: the row's action is hold"
        else:
            run.message = f"queued by the cluster: {seen.reason or 'waiting'}"

    def _not_started(
        self, run: Run, state: AttemptState, seen: AttemptObservation | None = None
    ) -> None:
        """The host has no process for the attempt yet: the core, not the host, decides when
        that has lasted too long (`launch_timeout`)."""
        began = run.attempt_started_at or (seen.started_at if seen else None) or self.now
        age = (self.now - began).total_seconds()
        if age < self.policy.launch_timeout_s:
            if run.status == Status.LOST:
                lifecycle.found_again(run)
            return
        if state == AttemptState.STARTING:
            self._kill(run, "the job did not start in time")
        self._crash(run, f"lost: attempt {run.attempt} did not start within {int(age)}s")

    def _alive(self, run: Run, seen: AttemptObservation | None) -> None:
        beat = (seen.heartbeat_at if seen else None) or run.attempt_started_at or self.now
        if seen and seen.scheduler and run.attempt_started_at:
            # a cluster's requeued attempt restarts its clock when it leaves the queue again,
            # though the files of its earlier start (and their times) are still there
            beat = max(beat, run.attempt_started_at)
        silent_s = (self.now - beat).total_seconds()
        if silent_s > self.policy.hang_timeout_s:
            self._kill(run, "no heartbeat")
            lifecycle.stall(run, silent_s)
            self.out.events.append(Event(run.run_id, "stalled", f"attempt={run.attempt}"))
            return
        limit = self._time_limit(run)
        ran_s = (self.now - (run.attempt_started_at or self.now)).total_seconds()
        if limit is not None and ran_s > limit and not run.timed_out:
            self._kill(run, f"time limit {_duration(limit)} reached")
            run.timed_out = True
            self.out.events.append(Event(run.run_id, "timed-out", f"attempt={run.attempt}"))
        elif run.timed_out:
            self._kill(run, f"time limit {_duration(limit or 0)} reached (kill sent again)")
        lifecycle.running(run)
        if run.timed_out:
            run.message = f"time limit {_duration(limit or 0)} reached; being stopped"

    def _crash(self, run: Run, reason: str) -> None:
        """A crash, hang or loss: retry with exponential backoff until retries are spent."""
        self.out.events.append(Event(run.run_id, "crashed", reason))
        if run.timed_out:
            lifecycle.fail(
                run, self.now, f"time limit {_duration(self._time_limit(run) or 0)} reached"
            )
            return
        lifecycle.crash(run, self.now, reason, self.policy.backoff_s, self.policy.backoff_max_s)

    def _time_limit(self, run: Run) -> float | None:
        """The row's time_limit, else the job's, else the config's default (None: no limit)."""
        if run.link.time_limit_s is not None:
            return run.link.time_limit_s
        return self.policy.job_time_limit_s.get(run.spec.job, self.policy.time_limit_s)

    # -- 3. fencing ----------------------------------------------------------------------------

    def fence(self, observed: Mapping[str, HostObservation]) -> None:
        """Only the newest attempt of a live run may run; kill any other we know of."""
        for host in observed.values():
            for seen in host.attempts:
                if seen.state not in UNENDED_ATTEMPT_STATES:
                    continue
                run = self.runs.get(seen.run_id)
                if run is None:
                    continue  # not ours to judge (another daemon's state dir?)
                current = (
                    run.status.is_live
                    and run.attempt == seen.attempt
                    and host.host in gang.node_hosts(run)
                )
                if not current and not self._already_killing(run.run_id, seen.attempt, host.host):
                    self.out.kills.append(
                        Kill(
                            run.run_id,
                            seen.attempt,
                            host.host,
                            "fenced: not the run's current attempt",
                        )
                    )

    def _already_killing(self, run_id: str, attempt: int, host: str) -> bool:
        return any(
            k.run_id == run_id and k.attempt == attempt and k.host == host for k in self.out.kills
        )

    # -- 4. placement ------------------------------------------------------------------------

    def place(
        self, hosts: list[HostCapacity], observed: Mapping[str, HostObservation] | None = None
    ) -> None:
        """Waiting runs, highest priority first then row order, onto free accelerators. A run
        no configured host could ever take is `unplaceable` (until the config changes); a
        retry waits until the attempt it replaces is seen gone (fencing kills it meanwhile),
        so two processes of one row never overlap."""
        placement = Placement(hosts, self.runs.values())
        groups = gang.HostGroups(placement, hosts, self.runs.values(), self.policy.slices)
        replaced = {r.link.replaced_by: r for r in self.runs.values() if r.link.replaced_by}
        for run in sorted(
            self._waiting(), key=lambda r: (-r.link.priority, r.link.row, r.created_at)
        ):
            previous = replaced.get(run.run_id, run)  # a rerun waits for the run it replaces
            if _still_alive(run, observed or {}) or _still_alive(previous, observed or {}):
                run.message = _waiting_for_previous(previous)
                continue
            never = gang.never_fits_across(run, hosts, self.policy.slices)
            if never is None and run.link.nodes == 1:
                never = never_fits(run, hosts)
            if never is not None:
                lifecycle.unplaceable(run, never)
                continue
            if run.status == Status.UNPLACEABLE:
                lifecycle.queue(run)
            if run.link.nodes > 1:
                self._place_across(run, groups)
                continue
            found = placement.take(run)
            if isinstance(found, str):
                run.message = found
            else:
                self._launch(run, *found)

    def _waiting(self) -> Iterable[Run]:
        for run in self.runs.values():
            if run.status in (Status.QUEUED, Status.UNPLACEABLE) or (
                run.status == Status.RETRYING and (run.next_attempt_at or self.now) <= self.now
            ):
                yield run

    def _launch(self, run: Run, host: str, accelerators: tuple[str, ...]) -> None:
        lifecycle.launch(run, host, accelerators, self.now)
        run.timed_out, run.stall_reason, run.spread, run.slice_name = False, "", (), ""
        self.out.launches.append(Launch(run.run_id, run.attempt, host, accelerators))

    def _place_across(self, run: Run, groups: gang.HostGroups) -> None:
        """Every node in this cycle or none; a run that waited long holds hosts (gang.py)."""
        found = groups.take(run)
        if isinstance(found, str):
            run.waited_cycles += 1
            if run.waited_cycles > self.policy.reserve_after_cycles:
                found += groups.hold(run, f"waited {run.waited_cycles} cycles")
            run.message = found
            return
        (host, accelerators), *_ = found
        lifecycle.launch(run, host, accelerators, self.now)
        run.timed_out, run.stall_reason = False, ""
        run.spread, run.waited_cycles = tuple(found), 0
        run.slice_name = gang.slice_taken(found, self.policy.slices)
        port = gang.coordinator_port(run.run_id, run.attempt)
        nodes = tuple(h for h, _ in found)
        for rank, (node, given) in enumerate(found):
            self.out.launches.append(
                Launch(run.run_id, run.attempt, node, given, rank, nodes, port)
            )

    # -- result --------------------------------------------------------------------------------

    def result(self, known: Mapping[str, Run]) -> Plan:
        for run_id, run in self.runs.items():
            if known.get(run_id) != run:
                run.updated_at = self.now
                self.out.runs[run_id] = run
        return self.out


def _still_alive(run: Run, observed: Mapping[str, HostObservation]) -> bool:
    """The run's newest attempt still shows as running or starting on one of its hosts."""
    for name in gang.node_hosts(run):
        host = observed.get(name)
        seen = (
            host.attempt(run.run_id, run.attempt)
            if host and host.reachable and run.attempt
            else None
        )
        if seen is not None and seen.state in UNENDED_ATTEMPT_STATES:
            return True
    return False


def _waiting_for_previous(run: Run) -> str:
    where = "+".join(gang.node_hosts(run))
    return f"waiting for attempt {run.attempt} on {where} to end before the next one starts"


def _lost_reason(seen: AttemptObservation | None) -> str:
    """What the host knows of an attempt that ended without an exit code."""
    why = seen.reason if seen and seen.reason else "host rebooted or supervisor killed"
    if "unknown" in why:
        return f"lost: {why} (its exit code was never recorded; retried, resuming its checkpoint)"
    return f"lost: the process ended without an exit code ({why})"


def _duration(seconds: float) -> str:
    """2h, 90m, 45s: how a person wrote the limit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
