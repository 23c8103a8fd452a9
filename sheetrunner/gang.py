"""Runs across hosts: a row with `nodes` > 1 gets that many hosts at once, as one attempt.

Part of the pure core (no IO), called from `reconcile.plan`. The rules:

- **All chosen in one cycle.** A run across hosts is placed only when every node it needs is
  free in the same cycle: `nodes` ordinary hosts with `gpus` free accelerators each (a free
  CPU slot each for `gpus = 0`), or one `[[slices]]` entry with exactly `nodes` hosts, all
  reachable, taken whole. A slice's hosts take no other runs.
- **One attempt, all or nothing.** The nodes' observations are folded into one
  (`combined`): the attempt runs while every node runs, it crashed when any node exited
  non-zero, vanished or did not start in time, and it succeeded when every node exited 0.
  A crash is one crash of the run; fencing then kills the nodes still running (they are no
  longer the current attempt), and the retry waits until every node is seen gone.
- **No deadlock, no starvation.** Nothing is reserved while a run across hosts waits, so
  rows on one host keep every free accelerator. Once it has waited `reserve_after_cycles`
  cycles, the highest-priority such run holds, each cycle, the `nodes` matching hosts
  closest to fitting (most free accelerators): rows placed after it in priority order cannot
  take what frees up there, so those hosts drain until it fits. One run holds at a time,
  at most `nodes` hosts, and a hold lasts one cycle (recomputed from scratch).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .model import AttemptObservation, AttemptState, HostObservation, Run
from .placement import HostCapacity, Placement, _Free

COORDINATOR_PORTS = (29500, 30500)  # the range a run's coordinator port is taken from

Node = tuple[str, tuple[str, ...]]  # (host, accelerators) of one node


@dataclass(frozen=True)
class Slice:
    """A `[[slices]]` entry: hosts that only ever run one program together (a TPU pod slice)."""

    name: str
    hosts: tuple[str, ...]
    labels: tuple[str, ...] = ()

    def matches(self, where: str | None) -> bool:
        return where is None or where == self.name or where in self.labels


def node_hosts(run: Run) -> tuple[str, ...]:
    """Every host the run's current attempt runs on, rank 0 first."""
    if run.spread:
        return tuple(host for host, _ in run.spread)
    return (run.host,) if run.host else ()


def shown_host(run: Run) -> str:
    """What the `host` cell and `ps` show: `h1+h2`, or the slice's name."""
    return run.slice_name or "+".join(node_hosts(run))


def slice_taken(nodes: Iterable[Node], slices: Iterable[Slice]) -> str:
    """The name of the slice these nodes are, whole ("" when they are ordinary hosts)."""
    hosts = {host for host, _ in nodes}
    return next((s.name for s in slices if set(s.hosts) == hosts), "")


def coordinator_port(run_id: str, attempt: int) -> int:
    """The port rank 0 listens on, the same on every node without asking any host: taken
    from the run id and attempt number, so each attempt gets its own port (a straggler of
    the previous attempt never holds it) and a busy port costs one crash, the retry then
    trying another."""
    low, high = COORDINATOR_PORTS
    digest = hashlib.sha256(f"{run_id}/{attempt}".encode()).digest()
    return low + int.from_bytes(digest[:4], "big") % (high - low)


# -- observation ------------------------------------------------------------------------------


def silent_node(
    run: Run, observed: Mapping[str, HostObservation]
) -> tuple[str, HostObservation | None] | None:
    """The first node whose host did not answer this cycle (or was not probed)."""
    for host in node_hosts(run):
        seen = observed.get(host)
        if seen is None or not seen.reachable:
            return host, seen
    return None


def failure(run: Run, observed: Mapping[str, HostObservation]) -> AttemptObservation | None:
    """The first node that failed on a host that answered: it decides the attempt even
    while another node's host is silent."""
    hosts = node_hosts(run)
    for rank, host in enumerate(hosts):
        found = _attempt_on(run, observed, host)
        if found and _failed(found):
            return _on_node(found, rank, host, _attempt_on(run, observed, hosts[0]))
    return None


def _attempt_on(
    run: Run, observed: Mapping[str, HostObservation], host: str
) -> AttemptObservation | None:
    seen = observed.get(host)
    return seen.attempt(run.run_id, run.attempt) if seen and seen.reachable else None


def _failed(seen: AttemptObservation) -> bool:
    return seen.state == AttemptState.VANISHED or (
        seen.state == AttemptState.EXITED and seen.exit_code != 0
    )


def combined(run: Run, observed: Mapping[str, HostObservation]) -> AttemptObservation | None:
    """The attempt's nodes as one observation: the worst state of any node, named by rank;
    metrics and the log of rank 0; the oldest heartbeat of the nodes still running (a node
    that hangs makes the attempt hang)."""
    nodes = [
        (rank, host, observed[host].attempt(run.run_id, run.attempt))
        for rank, host in enumerate(node_hosts(run))
    ]
    first = nodes[0][2]
    for rank, host, seen in nodes:
        if seen is None or seen.state in (AttemptState.MISSING, AttemptState.STARTING):
            return seen  # not started there yet: judged by launch_timeout like one host
        if _failed(seen):
            return _on_node(seen, rank, host, first)
    running = [seen for _, _, seen in nodes if seen and seen.state == AttemptState.RUNNING]
    if not running:
        return first  # every node exited 0
    beats = [s.heartbeat_at for s in running]
    oldest = None if None in beats else min(b for b in beats if b is not None)
    base = first if first is not None and first.state == AttemptState.RUNNING else running[0]
    rank0 = first or base
    return _replace(
        base,
        heartbeat_at=oldest,
        metrics=rank0.metrics,
        summary=rank0.summary,
        log_path=rank0.log_path,
    )


def _on_node(
    seen: AttemptObservation, rank: int, host: str, first: AttemptObservation | None
) -> AttemptObservation:
    """A node's failure, said as the attempt's: which node, and rank 0's metrics kept."""
    tail = f"node {rank} on {host}" + (f": {seen.log_tail}" if seen.log_tail else "")
    reason = f"node {rank} on {host}: {seen.reason}" if seen.reason else ""
    return _replace(
        seen,
        log_tail=tail,
        reason=reason,
        metrics=first.metrics if first else {},
        log_path=first.log_path if first else seen.log_path,
    )


def _replace(seen: AttemptObservation, **changes: object) -> AttemptObservation:
    return dataclasses.replace(seen, **changes)  # type: ignore[arg-type]


# -- placement --------------------------------------------------------------------------------


class HostGroups:
    """Placement of runs across hosts, sharing one `Placement`'s free capacity: slice hosts
    are taken out of it (only whole-slice runs get them) and held hosts too."""

    def __init__(
        self,
        placement: Placement,
        hosts: list[HostCapacity],
        runs: Iterable[Run],
        slices: Iterable[Slice] = (),
    ):
        self.placement = placement
        self.hosts = {h.name: h for h in hosts}
        self.slices = [s for s in slices if s.hosts]
        self.slice_of = {host: s.name for s in self.slices for host in s.hosts}
        self.free = placement.free  # ordinary hosts: shared with single-host runs
        self.slice_free = {h: self.free.pop(h) for h in list(self.free) if h in self.slice_of}
        self.held: dict[str, _Free] = {}
        self.holder: str | None = None  # the run holding hosts this cycle
        for run in runs:
            if run.status.is_live:
                self._count(run)

    def _count(self, run: Run) -> None:
        """Nodes after rank 0 of a live run (rank 0 is counted by `Placement`)."""
        for host, accelerators in run.spread[1:]:
            space = self.free.get(host) or self.slice_free.get(host)
            if space is None:
                continue
            if run.link.gpus == 0:
                space.slots -= 1
            space.accelerators = [a for a in space.accelerators if a not in accelerators]

    def take(self, run: Run) -> list[Node] | str:
        """Every node for the run (rank 0 first), or what it waits for."""
        for found in self.slices:
            if found.matches(run.link.where) and len(found.hosts) == run.link.nodes:
                spaces = [self.slice_free.get(h) for h in found.hosts]
                if all(s is not None and _fits(run, s) for s in spaces):
                    return [
                        (h, _take(run, s)) for h, s in zip(found.hosts, spaces, strict=True) if s
                    ]
        fitting = [h for h in self._ordinary(run) if _fits(run, self.free[h])]
        fitting.sort(key=lambda h: (h == run.avoid_host, len(self.free[h].accelerators), h))
        if len(fitting) >= run.link.nodes:
            chosen = sorted(fitting[: run.link.nodes], key=list(self.hosts).index)
            return [(h, _take(run, self.free[h])) for h in chosen]
        return self._why_waiting(run, len(fitting))

    def _ordinary(self, run: Run) -> list[str]:
        return [h for h in self.free if self.hosts[h].matches(run.link.where)]

    def _why_waiting(self, run: Run, fitting: int) -> str:
        each = f"{run.link.gpus} free accelerators" if run.link.gpus else "a free CPU slot"
        slices = [s.name for s in self.slices if s.matches(run.link.where)]
        whole = f", or slice {' or '.join(slices)} whole and free" if slices else ""
        return (
            f"waiting for {run.link.nodes} hosts with {each} each in the same cycle "
            f"({fitting} {'has' if fitting == 1 else 'have'} them now){whole}"
        )

    def hold(self, run: Run, waited: str) -> str:
        """Hold the `nodes` matching hosts closest to fitting for this run, this cycle: rows
        placed after it cannot take their free accelerators. Returns what the row says."""
        if self.holder is not None:
            return ""
        ranked = sorted(
            self._ordinary(run),
            key=lambda h: (-len(self.free[h].accelerators), -self.free[h].slots, h),
        )[: run.link.nodes]
        if len(ranked) < run.link.nodes:
            return ""
        self.holder = run.run_id
        for host in ranked:
            self.held[host] = self.free.pop(host)
        return f"; holding {', '.join(sorted(ranked))} for it as they free up ({waited})"


def _fits(run: Run, space: _Free) -> bool:
    if run.link.gpus == 0:
        return space.slots > 0
    return len(space.accelerators) >= run.link.gpus


def _take(run: Run, space: _Free) -> tuple[str, ...]:
    if run.link.gpus == 0:
        space.slots -= 1
        return ()
    given = tuple(space.accelerators[: run.link.gpus])
    del space.accelerators[: run.link.gpus]
    return given


def never_fits_across(run: Run, hosts: list[HostCapacity], slices: Iterable[Slice]) -> str | None:
    """Why no configured hosts could ever take this run (None: they could, now or later).
    A run on one host is told when the only hosts it names belong to a slice."""
    slices = list(slices)
    in_slice = {h: s for s in slices for h in s.hosts}
    matching = [h for h in hosts if h.matches(run.link.where)]
    ordinary = [h for h in matching if h.name not in in_slice]
    if run.link.nodes == 1:
        if matching and not ordinary:
            found = in_slice[matching[0].name]
            return (
                f"host {matching[0].name} belongs to slice {found.name}, which runs only "
                f"programs across all its {len(found.hosts)} hosts; set nodes = "
                f"{len(found.hosts)} and where = {found.name}"
            )
        return None
    whole = [s for s in slices if s.matches(run.link.where) and len(s.hosts) == run.link.nodes]
    if whole or any(not h.known for h in ordinary):
        return None
    able = [h for h in ordinary if _could_fit(run, h)]
    if len(able) >= run.link.nodes:
        return None
    each = f"{run.link.gpus} accelerators" if run.link.gpus else "a CPU slot"
    return (
        f"needs {run.link.nodes} hosts with {each} each; the config has {len(able)} such "
        f"host{'' if len(able) == 1 else 's'}"
        + (f" matching where = {run.link.where}" if run.link.where else "")
        + " and no slice of that size; lower nodes or gpus, or add hosts"
    )


def _could_fit(run: Run, host: HostCapacity) -> bool:
    if run.link.gpus == 0:
        return host.slots > 0
    return len(host.accelerators) >= run.link.gpus
