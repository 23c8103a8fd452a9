"""The plain data sheetrunner works with: experiments, runs, attempts, observations.

Vocabulary (used everywhere, no synonyms): a *job* is a program declared in
the config; an *experiment* is a row of the sheet; a *run* is an experiment's
execution and has a stable id; an *attempt* is the n-th launch of a run; a
*host* is a machine of the *pool*.

Words settled: an experiment's *key* is the hash of its job and parameters (its
identity; `sheetrunner.sheet.schema.experiment_key`); `gpus` is the sheet's column
and means accelerators wanted, GPUs or TPU chips alike, while `accelerators` are the
ids a launched attempt was given; `Status` is a run's (what the row shows) and
`AttemptState` an attempt directory's on a host (what the probe found), so an
attempt that vanished without an exit code is `AttemptState.VANISHED`, never a
`Status`. The status sets live here, each with the one question it answers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import argv as argv_styles


class Status(enum.StrEnum):
    """A run's status; the value is exactly the text shown in the sheet."""

    QUEUED = "queued"
    LAUNCHING = "launching"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    STALLED = "stalled"
    LOST = "lost"
    FAILED = "failed"
    STOPPED = "stopped"
    HELD = "held"
    UNPLACEABLE = "unplaceable"  # no configured host could ever take it (rechecked each cycle)
    INVALID = "invalid"
    DUPLICATE = "duplicate"

    @property
    def is_live(self) -> bool:
        """A process of this run may exist on a host."""
        return self in LIVE_STATUSES

    @property
    def is_final(self) -> bool:
        """Nothing more happens to this run unless the user asks (rerun)."""
        return self in FINAL_STATUSES


LIVE_STATUSES = frozenset({Status.LAUNCHING, Status.RUNNING, Status.STALLED, Status.LOST})
FINAL_STATUSES = frozenset(
    {Status.SUCCEEDED, Status.FAILED, Status.STOPPED, Status.INVALID, Status.DUPLICATE}
)
# A process of the run has just ended (its log is archived then).
ENDED_STATUSES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.RETRYING, Status.STOPPED})
# What `--exit-when-done` waits for (unplaceable, held and invalid rows do not count).
UNFINISHED_STATUSES = frozenset(
    {Status.QUEUED, Status.LAUNCHING, Status.RUNNING, Status.RETRYING, Status.STALLED, Status.LOST}
)

# Row fill colours (RGB hex) by status, as DESIGN.md lists them.
STATUS_COLOURS: dict[Status, str] = {
    Status.QUEUED: "D9D9D9",
    Status.LAUNCHING: "C9DAF8",
    Status.RUNNING: "C9DAF8",
    Status.SUCCEEDED: "D9EAD3",
    Status.RETRYING: "FCE5CD",
    Status.STALLED: "FFF2CC",
    Status.LOST: "FFF2CC",
    Status.FAILED: "F4CCCC",
    Status.STOPPED: "999999",
    Status.HELD: "999999",
    Status.UNPLACEABLE: "F4CCCC",
    Status.INVALID: "F4CCCC",
    Status.DUPLICATE: "D9EAD3",
}


class Action(enum.StrEnum):
    """What the user asks of a row in its `action` cell."""

    RUN = "run"
    HOLD = "hold"
    STOP = "stop"
    RERUN = "rerun"


def param_argv(params: tuple[tuple[str, str], ...]) -> list[str]:
    """Parameters as argv items, ["--lr", "0.1", ...]: what a job receives, never a shell
    string (the styles: `sheetrunner/argv.py`)."""
    return argv_styles.param_argv(params)


@dataclass(frozen=True)
class Experiment:
    """One row of the sheet, parsed. `error` set means the row is invalid."""

    row: int  # sheet row number as read this cycle (1-based, header is row 1)
    run_id: str | None  # the `id` cell: set once the row was claimed
    job: str
    params: tuple[tuple[str, str], ...]  # (name, value) in column order, empty cells omitted
    key: str  # hash of (job, canonical params): the experiment's identity
    gpus: int = 1
    where: str | None = None
    pin: str | None = None  # the `pin` cell: the code version its next attempts run (not hashed)
    priority: float = 0
    retries: int | None = None  # None: the config's default
    time_limit_s: float | None = None  # the `time_limit` cell (None: the job's or the default)
    gpu_memory_mib: int | None = None  # the `gpu_memory` cell: free memory wanted on each GPU
    action: Action = Action.RUN
    error: str | None = None
    shown_status: str = ""  # the `status` cell as read: used to adopt an id the store lacks
    shown: tuple[tuple[str, str], ...] = ()  # every owned cell as read (rebuilding a lost run)
    foreign_id: str = ""  # an `id` cell sheetrunner did not write (not in the run id format)
    sweep_id: str = ""  # the `sweep` cell: the id of the sweep row this row was expanded from
    children: tuple[tuple[tuple[str, str], ...], ...] = ()  # a sweep row: its combinations
    nodes: int = 1  # hosts the run spans, each with `gpus` accelerators (sheetrunner/gang.py)

    @property
    def is_sweep(self) -> bool:
        """A row whose parameter cells hold lists or ranges: it expands, it does not run."""
        return bool(self.children)


@dataclass(frozen=True)
class RunSpec:
    """What a run runs: its job, its parameters and the experiment hash they make.

    Frozen: a run that launched never changes what it runs (an edited row is told to
    use `rerun`); only a run that never launched takes a new spec from its row."""

    key: str
    job: str
    params: tuple[tuple[str, str], ...]


@dataclass
class RowLink:
    """The run's link to its row: what the row asks of it as last read, and how the two
    found each other. Row wishes (`gpus`, `where`, `retries`, ...) apply from the next launch."""

    row: int = 0  # the row it was last seen in (for ordering and display only)
    in_sheet: bool = False  # its id has been seen in the sheet at least once
    gpus: int = 1  # accelerators wanted on one host (0: a CPU slot)
    where: str | None = None
    priority: float = 0
    retries: int = 0  # restarts allowed after a crash or hang
    time_limit_s: float | None = None  # the row's time_limit (None: the job's, the config's)
    gpu_memory_mib: int | None = None  # free memory wanted on each GPU (None: the host's floor)
    last_action: Action = Action.RUN
    sweep_id: str = ""  # the sweep its row was expanded from (for ps and notifications)
    duplicate_of: str | None = None
    replaced_by: str | None = None  # a rerun's new run: the row now shows that one
    released: bool = False  # stopped because its row was deleted: no new row takes it back
    # Owned cells the sheet showed for a run rebuilt without its history (lost state):
    # shown as they were until the run has values of its own, never blanked.
    kept_cells: dict[str, str] = field(default_factory=dict)
    nodes: int = 1  # hosts wanted, each with `gpus` accelerators (from the next launch)


@dataclass
class Seen:
    """What the probes last reported of the run's current attempt."""

    metrics: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # min/max/history of the attempt
    log_path: str = ""


@dataclass
class Run:
    """An experiment's execution, as the store knows it: what it runs (`spec`), its link
    to its row (`link`), what the probes saw (`seen`), and its lifecycle (the rest: only
    sheetrunner/lifecycle.py changes `status`)."""

    run_id: str
    spec: RunSpec
    status: Status
    created_at: datetime
    updated_at: datetime
    link: RowLink = field(default_factory=RowLink)
    seen: Seen = field(default_factory=Seen)
    attempt: int = 0  # number of the newest attempt (0: never launched)
    host: str | None = None
    accelerators: tuple[str, ...] = ()  # the ids the current attempt was given
    crashes: int = 0
    started_at: datetime | None = None  # first launch of the run
    attempt_started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None  # backoff: not before this
    message: str = ""
    launch_error: str = ""  # the last launch did not reach its host: the core counts it
    launch_refused: str = ""  # the host refused the last launch, starting nothing (a GPU claimed)
    avoid_host: str | None = None  # where the last launch failed: another host first
    stall_reason: str = ""  # why the current attempt was killed as stalled
    timed_out: bool = False  # the current attempt passed its time limit and is being stopped
    # The code the current attempt runs (`[jobs.NAME] sync`): `a1b2c3d`, `a1b2c3d+dirty`, or
    # the content hash's first digits outside git; and the content hash itself.
    code: str = ""
    code_hash: str = ""
    # A run across hosts: (host, accelerators) of every node of the current attempt, rank 0
    # first (its host and accelerators are also `host` and `accelerators`); () for one host.
    spread: tuple[tuple[str, tuple[str, ...]], ...] = ()
    waited_cycles: int = 0  # cycles a run across hosts has waited for them (sheetrunner/gang.py)
    slice_name: str = ""  # the [[slices]] entry the current attempt took whole, if any
    # The current attempt waits in a cluster scheduler's queue (Slurm PENDING): the run is
    # live (`launching`: it holds its attempt), but users see it as `queued` (shown_status).
    in_cluster_queue: bool = False

    @property
    def shown_status(self) -> Status:
        """The status users see: a launched attempt in a cluster's queue (not started yet, or
        requeued after a node failure) shows as `queued` (with the scheduler's reason in
        `message`), though the core keeps it live."""
        if self.in_cluster_queue and self.status in (Status.LAUNCHING, Status.RUNNING):
            return Status.QUEUED
        return self.status


@dataclass(frozen=True)
class Accelerator:
    """One accelerator of a host, as the probe saw it."""

    index: str
    name: str = ""
    memory_used_mib: int | None = None
    memory_total_mib: int | None = None
    utilization_pct: int | None = None
    foreign: bool = False  # busy with a process sheetrunner did not start
    healthy: bool = True  # False: lost, or uncorrected ECC errors; never given to a run
    health: str = ""  # why it is unhealthy
    uuid: str = ""
    # Who holds it (docs/shared-gpus.md): a sheetrunner claim on the host (any sheet's,
    # ours included) and the users of the foreign processes, where the host lets us see them.
    claim_namespace: str = ""
    claim_run: str = ""
    claim_user: str = ""
    foreign_users: tuple[str, ...] = ()

    @property
    def memory_free_mib(self) -> int | None:
        if self.memory_total_mib is None or self.memory_used_mib is None:
            return None
        return max(0, self.memory_total_mib - self.memory_used_mib)


class AttemptState(enum.StrEnum):
    """What the probe found for one attempt directory on a host."""

    STARTING = "starting"  # directory claimed, job not started yet
    RUNNING = "running"  # process alive (pid, start time and boot id match)
    EXITED = "exited"  # exit code written
    VANISHED = (
        "lost"  # gone without an exit code (host rebooted, supervisor killed); not Status.LOST
    )
    MISSING = "missing"  # no such attempt directory
    QUEUED = "queued"  # waiting in a cluster scheduler's queue (Slurm PENDING): not started


# An attempt in one of these may still start or run: fencing, recovery and retries wait on it.
UNENDED_ATTEMPT_STATES = frozenset(
    {AttemptState.STARTING, AttemptState.RUNNING, AttemptState.QUEUED}
)


@dataclass(frozen=True)
class AttemptObservation:
    run_id: str
    attempt: int
    state: AttemptState
    exit_code: int | None = None
    heartbeat_at: datetime | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    log_path: str = ""
    summary: dict[str, Any] = field(default_factory=dict)  # {"min": {}, "max": {}, "history": {}}
    log_tail: str = ""  # the last lines of a failed attempt's log
    reason: str = ""  # why the host says so: "host rebooted", "supervisor killed; outcome unknown"
    leftovers: str = ""  # processes of the attempt that outlived it, killed at its end
    # From the attempt's spec.json on the host: enough to rebuild the run when the
    # store lost it (the store is a cache; attempt directories are the truth).
    key: str = ""
    job: str = ""
    params: tuple[tuple[str, str], ...] = ()
    gpus: int = 0
    accelerators: tuple[str, ...] = ()
    started_at: datetime | None = None  # when the attempt directory was claimed (host's age)
    # On a cluster: the scheduler's own word for the job ("PENDING", "TIMEOUT", "CANCELLED"...),
    # its id there, and whether it is held in the queue (sheetrunner/slurm_states.py maps them).
    scheduler: str = ""
    job_id: str = ""
    held: bool = False


@dataclass(frozen=True)
class HostObservation:
    """One host's probe result for this cycle. Unreachable is an observation, not an error."""

    host: str
    reachable: bool
    observed_at: datetime
    error: str = ""
    boot_id: str = ""
    accelerators: tuple[Accelerator, ...] = ()
    load: float | None = None
    disk_free_bytes: int | None = None
    attempts: tuple[AttemptObservation, ...] = ()
    down_since: datetime | None = None  # first failed probe of the current outage

    def attempt(self, run_id: str, number: int) -> AttemptObservation | None:
        for seen in self.attempts:
            if seen.run_id == run_id and seen.attempt == number:
                return seen
        return None
