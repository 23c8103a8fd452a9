"""Placement: which host and which accelerators a waiting run gets this cycle.

Part of the pure core (no IO). Multi-accelerator runs are packed onto one
host; the host with the fewest free accelerators that still fit is chosen,
so big holes stay free for big runs; nothing is ever handed out twice. A GPU
counts for a run only with the memory it needs free: the host's
`min_free_memory` and the row's `gpu_memory`, whichever is more (a GPU whose
memory nvidia-smi does not report is not checked). docs/shared-gpus.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .gpu_memory import describe_need, format_mib
from .model import Run


@dataclass(frozen=True)
class HostCapacity:
    """What a host offers this cycle: built from its config and its probe."""

    name: str
    labels: tuple[str, ...] = ()
    accelerators: tuple[str, ...] = ()  # every accelerator id of the host
    busy: tuple[str, ...] = ()  # taken by processes sheetrunner did not start
    slots: int = 1  # CPU-only runs at once
    reachable: bool = True
    draining: bool = False  # takes no new runs
    known: bool = True  # its accelerators are known (an "auto" host not yet probed: not)
    free_memory_mib: tuple[tuple[str, int], ...] = ()  # accelerator -> free MiB, where reported
    min_free_memory_mib: int = 0  # the host's floor for every run (0: none)
    largest_memory_mib: int = 0  # its biggest GPU's total memory (0: not reported)
    closed: str = ""  # why it takes no new runs at all (its disk is nearly full)
    blocked: tuple[tuple[str, str], ...] = ()  # (job, why): jobs it cannot start yet (setup)
    claimed: tuple[str, ...] = ()  # accelerators with a GPU claim on the host (any sheet's)

    def matches(self, where: str | None) -> bool:
        return where is None or where == self.name or where in self.labels

    def blocks(self, job: str) -> str:
        """Why this host cannot start `job` now ("" when it can)."""
        return self.closed or dict(self.blocked).get(job, "")


class Placement:
    """Free capacity of every reachable host, shrinking as runs are placed."""

    def __init__(self, hosts: list[HostCapacity], runs: Iterable[Run]):
        runs = list(runs)
        self.hosts = hosts
        self.free = _free_capacity(hosts, runs)
        # shapes (gpus, where, job, memory) no host can take this cycle
        self.full: dict[tuple[int, str | None, str, int | None], str] = {}
        self.ours = {(r.host, a) for r in runs if r.status.is_live for a in r.accelerators}

    def take(self, run: Run) -> tuple[str, tuple[str, ...]] | str:
        """(host, accelerators) for the run, or why it waits."""
        shape = (run.link.gpus, run.link.where, run.spec.job, run.link.gpu_memory_mib)
        host = None if shape in self.full else _best_fit(run, self.hosts, self.free)
        if host is None:
            why = _why_waiting(run, self.hosts) + self._claimed_note(run)
            return self.full.setdefault(shape, why)
        return host.name, _take(run, host, self.free)

    def _claimed_note(self, run: Run) -> str:
        """Which GPUs the run might have had but another sheet's run claims on the host."""
        if not run.link.gpus:
            return ""
        others = [
            f"GPU {a} on {h.name}"
            for h in self.hosts
            if h.matches(run.link.where) and h.reachable
            for a in h.claimed
            if (h.name, a) not in self.ours
        ]
        if not others:
            return ""
        return f" ({', '.join(others[:3])} claimed by another sheet's run: sheetrunner pool)"


@dataclass
class _Free:
    accelerators: list[str]
    slots: int
    memory_mib: dict[str, int] = field(default_factory=dict)
    min_free_memory_mib: int = 0

    def usable(self, run: Run) -> list[str]:
        """The free accelerators with the memory the run needs (unreported memory: usable)."""
        need = memory_need(run, self.min_free_memory_mib)
        return [a for a in self.accelerators if self.memory_mib.get(a, need) >= need]


def memory_need(run: Run, floor_mib: int) -> int:
    """Free MiB a run needs on each of its GPUs: its row's gpu_memory or the host's floor."""
    return max(floor_mib, run.link.gpu_memory_mib or 0)


def _free_capacity(hosts: list[HostCapacity], runs: Iterable[Run]) -> dict[str, _Free]:
    """What is free on each reachable host once live runs and foreign processes are counted."""
    free = {
        h.name: _Free(
            [a for a in h.accelerators if a not in h.busy],
            h.slots,
            dict(h.free_memory_mib),
            h.min_free_memory_mib,
        )
        for h in hosts
        if h.reachable and not h.draining and not h.closed
    }
    for run in runs:
        if not run.status.is_live or run.host not in free:
            continue
        if run.link.gpus == 0:
            free[run.host].slots -= 1
        for acc in run.accelerators:
            if acc in free[run.host].accelerators:
                free[run.host].accelerators.remove(acc)
    return free


def _best_fit(run: Run, hosts: list[HostCapacity], free: dict[str, _Free]) -> HostCapacity | None:
    """The host with the fewest free accelerators that still fit: big holes stay for big runs."""
    fits = [
        h
        for h in hosts
        if h.name in free
        and h.matches(run.link.where)
        and not h.blocks(run.spec.job)
        and _fits(run, free[h.name])
    ]
    fits = [h for h in fits if h.name != run.avoid_host] or fits  # not where a launch just failed
    if not fits:
        return None
    if run.link.gpus == 0:
        return max(fits, key=lambda h: free[h.name].slots)
    return min(fits, key=lambda h: len(free[h.name].usable(run)))


def _fits(run: Run, free: _Free) -> bool:
    if run.link.gpus == 0:
        return free.slots > 0
    return len(free.usable(run)) >= run.link.gpus


def _take(run: Run, host: HostCapacity, free: dict[str, _Free]) -> tuple[str, ...]:
    space = free[host.name]
    if run.link.gpus == 0:
        space.slots -= 1
        return ()
    given = tuple(space.usable(run)[: run.link.gpus])
    space.accelerators = [a for a in space.accelerators if a not in given]
    return given


def never_fits(run: Run, hosts: list[HostCapacity]) -> str | None:
    """Why no configured host could ever take this run (None: one could, now or later).
    A host whose accelerators are not known yet (counted on first probe) might."""
    matching = [h for h in hosts if h.matches(run.link.where)]
    if not matching:
        named = ", ".join(sorted(h.name for h in hosts)) or "none"
        return (
            f"no host is named or labelled {run.link.where!r} (hosts: {named}); fix the where cell"
        )
    if any(not h.known for h in matching):
        return None
    if run.link.gpus == 0 and not any(h.slots > 0 for h in matching):
        return "no matching host has CPU slots (slots = 0); ask for gpus or add slots"
    most = max(len(h.accelerators) for h in matching)
    if run.link.gpus > most:
        return (
            f"needs {run.link.gpus} accelerators on one host; the largest matching host has "
            f"{most}; lower gpus or add a bigger host"
        )
    return _never_enough_memory(run, [h for h in matching if len(h.accelerators) >= run.link.gpus])


def _never_enough_memory(run: Run, hosts: list[HostCapacity]) -> str | None:
    """Why no GPU of these hosts could ever have the memory the run needs free, or None
    (also when a host does not report its GPUs' memory: it might)."""
    if run.link.gpus == 0 or not hosts or any(not h.largest_memory_mib for h in hosts):
        return None
    needs = [memory_need(run, h.min_free_memory_mib) for h in hosts]
    if any(need <= h.largest_memory_mib for need, h in zip(needs, hosts, strict=True)):
        return None
    largest = max(h.largest_memory_mib for h in hosts)
    return (
        f"needs {describe_need(min(needs))} on each GPU; the largest GPU of a matching host has "
        f"{format_mib(largest)}; lower gpu_memory (or the host's min_free_memory) or add a "
        "host with bigger GPUs"
    )


def _why_waiting(run: Run, hosts: list[HostCapacity]) -> str:
    matching = [h for h in hosts if h.matches(run.link.where)]
    if not matching:
        return f"waiting: no host is named or labelled {run.link.where!r}"
    if run.link.gpus > max(len(h.accelerators) for h in matching):
        most = max(len(h.accelerators) for h in matching)
        return f"waiting: needs {run.link.gpus} accelerators on one host; the largest has {most}"
    if not any(h.reachable for h in matching):
        return "waiting: no matching host is reachable"
    if all(h.draining for h in matching):
        return "waiting: every matching host is draining"
    open_hosts = [h for h in matching if h.reachable and not h.draining]
    if all(h.blocks(run.spec.job) for h in open_hosts):
        why = "; ".join(f"{h.name}: {h.blocks(run.spec.job)}" for h in open_hosts)
        return f"waiting: {why}"
    need = f"{run.link.gpus} free accelerators" if run.link.gpus else "a free CPU slot"
    memory = max((memory_need(run, h.min_free_memory_mib) for h in matching), default=0)
    if run.link.gpus and memory:
        need += f" with {describe_need(memory)}"
    return f"waiting for {need}"
