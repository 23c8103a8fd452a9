"""Scripted fakes for driving the real daemon through failure paths in milliseconds.

`FakePool` obeys the interface `sheetrunner.daemon.Daemon` uses of its pool
(`probe_all`, `capacities`, `agents[name].launch/kill/tail`, `set_namespace`,
`namespace`, `last`, `down_since`, `max_parallel`, `close`, `replace_agents`).
Its hosts (`FakeHost`) keep attempts in memory and answer a probe with the same
JSON document the real agent prints (ages measured on the host's own clock);
the pool turns that into `HostObservation`s with the real
`sheetrunner.pool.hosts.observation_from_probe` and into `HostCapacity` with
the real `capacity`, so the daemon-side conversion of ages is the real one.

A test scripts faults per host or per attempt: crash an attempt with an exit
code, hang it (its heartbeat stops), refuse launches or kills (TransportError),
lose a launch's answer after the attempt started, go silent (probe
unreachable), come back with a new boot id (its attempts are then `lost`, as
the agent reports a pid recorded under another boot), run the host's clock
off by any amount, freeze a process so kills do not take effect until thawed.

Rows are told apart by their `--tag` parameter. `FakePool.overlaps` is the
job-side guard of the chaos tests in memory: every start of an attempt that
found another attempt of the same row (tag) still alive is recorded there.

`Rig` builds a real `Daemon` around a `MemorySheet` (tests/contract), a real
`Store` in tmp_path, a config from `tests.helpers.local_config` whose hosts are
the fake's, and the fake `Clock`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sheetrunner.config import Config, HostConfig
from sheetrunner.daemon import CycleReport, Daemon, open_store
from sheetrunner.errors import SheetUnavailable, TransportError
from sheetrunner.model import HostObservation
from sheetrunner.placement import HostCapacity
from sheetrunner.pool.hosts import LaunchResult, capacity, observation_from_probe
from sheetrunner.remote.protocol import is_namespace
from sheetrunner.sheet.schema import OWNED_COLUMNS
from sheetrunner.sheet.table import SheetWrite, Table
from tests.contract.memory_sheet import MemoryBook, MemorySheet
from tests.helpers import Clock, local_config

KILLED_EXIT = 128 + 15  # what the agent's supervisor writes for a job ended by SIGTERM


@dataclass
class FakeAttempt:
    """One attempt directory on a fake host; times are on the host's clock."""

    host: str
    run_id: str
    attempt: int
    spec: dict
    boot_id: str
    started: datetime
    heartbeat: datetime
    state: str = "running"  # starting | running | exited | lost
    exit_code: int | None = None
    hung: bool = False  # alive, but its heartbeat stopped
    frozen: bool = False  # signals do not take effect until thawed
    stop_requested: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    log: str = ""

    @property
    def tag(self) -> str:
        return dict((p[0], p[1]) for p in self.spec.get("params", [])).get("tag", "")

    @property
    def alive(self) -> bool:
        return self.state in ("starting", "running")


class _NoTransport:
    """What `Pool.replace_agents` closes; nothing to close here."""

    def close(self) -> None:
        pass


class FakeHost:
    """The agent of one host, in memory. Scripted through its attributes and methods."""

    _boots = itertools.count(1)

    def __init__(self, config: HostConfig, clock: Clock, pool: FakePool):
        self.config = config
        self.clock = clock
        self.pool = pool
        self.transport = _NoTransport()
        self.namespace: str | None = None
        self.attempts: dict[tuple[str, int], FakeAttempt] = {}
        self.boot_id = f"boot-{config.name}-{next(self._boots)}"
        self.skew_s = 0.0  # the host's clock minus the daemon's
        self.silent = False  # every call fails as an unreachable host's would
        self.refuse_launches = 0  # launches to refuse (TransportError); -1: all
        self.lose_launch_answers = 0  # launches that start the job, then fail to answer
        self.refuse_kills = 0  # kills to refuse (TransportError); -1: all
        self.calls: list[tuple[str, str, int]] = []  # (op, run_id, attempt), in order

    @property
    def name(self) -> str:
        return self.config.name

    def now(self) -> datetime:
        return self.clock() + timedelta(seconds=self.skew_s)

    # -- scripting ----------------------------------------------------------------------------

    def go_silent(self) -> None:
        self.silent = True

    def come_back(self, new_boot: bool = False) -> None:
        """Answer again; with `new_boot`, as a rebooted host: every process it had is gone."""
        self.silent = False
        if new_boot:
            self.reboot()

    def reboot(self) -> None:
        self.boot_id = f"boot-{self.name}-{next(self._boots)}"
        for seen in self.attempts.values():
            if seen.alive:
                seen.state = "lost"  # the agent: a pid recorded under another boot is gone

    # -- the agent's commands -----------------------------------------------------------------

    def _reachable(self, what: str) -> None:
        if self.silent:
            raise TransportError(f"{self.name}: connection timed out ({what})")
        if not self.namespace:
            raise TransportError(f"{self.name}: agent called with no namespace yet")

    def _settle(self) -> None:
        """Time passes on the host: live jobs beat, thawed jobs act on their stop requests."""
        now = self.now()
        for seen in self.attempts.values():
            if not seen.alive:
                continue
            if seen.stop_requested and not seen.frozen:
                seen.state, seen.exit_code = "exited", KILLED_EXIT
            elif not seen.hung and not seen.frozen:
                seen.heartbeat = max(seen.heartbeat, now)

    def probe(self, wanted: Iterable[tuple[str, int]], runs: Iterable[str] = ()) -> dict:
        self._reachable("probe")
        self._settle()
        self.calls.append(("probe", "", 0))
        keys = {(r, int(a)) for r, a in wanted}
        keys |= {k for k, seen in self.attempts.items() if seen.alive}
        for run_id in runs:
            numbers = [a for r, a in self.attempts if r == run_id]
            if numbers:
                keys.add((run_id, max(numbers)))
        now = self.now()
        answer = []
        for key in sorted(keys):
            seen = self.attempts.get(key)
            if seen is None:
                answer.append({"run_id": key[0], "attempt": key[1], "state": "missing",
                               "exit_code": None, "spec": {}, "heartbeat_age_s": None,
                               "started_age_s": None})
                continue
            answer.append({
                "run_id": seen.run_id,
                "attempt": seen.attempt,
                "state": seen.state,
                "exit_code": seen.exit_code,
                "spec": {k: seen.spec.get(k) for k in ("key", "job", "params", "gpus",
                                                       "accelerators")},
                "heartbeat_age_s": (now - seen.heartbeat).total_seconds(),
                "started_age_s": (now - seen.started).total_seconds(),
                "metrics": dict(seen.metrics),
                "log_path": f"/fake/{self.name}/{seen.run_id}/{seen.attempt}/log",
                "log_tail": seen.log if seen.state == "lost" or seen.exit_code else "",
            })
        return {"boot_id": self.boot_id, "gpus": [], "load": 0.0,
                "disk_free_bytes": 10**12, "attempts": answer}

    def command(self, name: str, request: dict, with_host: bool = True) -> dict:
        """The agent's disk command, as a host with nothing to remove answers it (the fake
        keeps no files); the code and setup commands are for synced jobs, which the fake
        pool's tests do not configure."""
        self._reachable(name)
        if name != "gc":
            raise ValueError(f"{self.name}: the fake host has no {name!r} command")
        return {"freed_bytes": 0, "removed": []}

    def launch(self, spec: dict) -> LaunchResult:
        self._reachable("launch")
        self._settle()
        key = (spec["run_id"], int(spec["attempt"]))
        self.calls.append(("launch", *key))
        if self.refuse_launches:
            self.refuse_launches -= self.refuse_launches > 0
            raise TransportError(f"{self.name}: agent launch failed: refused by the test")
        if key in self.attempts:
            return LaunchResult(False, "already claimed")
        now = self.now()
        seen = FakeAttempt(self.name, key[0], key[1], dict(spec), self.boot_id, now, now)
        self.pool.started(seen)
        self.attempts[key] = seen
        if self.lose_launch_answers:
            self.lose_launch_answers -= self.lose_launch_answers > 0
            raise TransportError(f"{self.name}: agent launch failed: connection reset")
        return LaunchResult(True, f"/fake/{self.name}/{key[0]}/{key[1]}")

    def kill(self, run_id: str, attempt: int, grace_s: float = 10.0) -> str:
        self._reachable("kill")
        self.calls.append(("kill", run_id, attempt))
        if self.refuse_kills:
            self.refuse_kills -= self.refuse_kills > 0
            raise TransportError(f"{self.name}: agent kill failed: refused by the test")
        seen = self.attempts.get((run_id, attempt))
        if seen is None:
            return "missing"
        seen.stop_requested = True
        self._settle()
        return seen.state

    def tail(self, run_id: str, attempt: int, size: int = 65536,
             offset: int | None = None) -> bytes:
        self._reachable("tail")
        seen = self.attempts.get((run_id, attempt))
        data = (seen.log if seen else "").encode()
        return data[offset:] if offset is not None else data[-size:]

    def kills(self, run_id: str | None = None) -> list[tuple[str, int]]:
        return [(r, a) for op, r, a in self.calls if op == "kill" and run_id in (None, r)]

    def launches(self) -> list[tuple[str, int]]:
        return [(r, a) for op, r, a in self.calls if op == "launch"]


class FakePool:
    """The pool as the daemon uses it, over `FakeHost`s."""

    def __init__(self, hosts: Iterable[HostConfig], clock: Clock, max_parallel: int = 16):
        self.clock = clock
        self.agents: dict[str, FakeHost] = {h.name: FakeHost(h, clock, self) for h in hosts}
        self.max_parallel = max(1, max_parallel)
        self.down_since: dict[str, datetime] = {}
        self.last: dict[str, HostObservation] = {}
        self.namespace: str | None = None
        self.overlaps: list[tuple[str, str, int]] = []  # (tag, run id, attempt) started twice
        self.starts: list[FakeAttempt] = []  # every attempt started, in order
        self.closed = False

    def __getitem__(self, name: str) -> FakeHost:
        return self.agents[name]

    # -- what the daemon calls ----------------------------------------------------------------

    def set_namespace(self, namespace: str) -> None:
        if not is_namespace(namespace):
            raise ValueError(f"not a namespace: {namespace!r}")
        self.namespace = namespace
        for agent in self.agents.values():
            agent.namespace = namespace

    def probe_all(self, wanted: Mapping[str, set[tuple[str, int]]], now: datetime,
                  runs: Iterable[str] = ()) -> dict[str, HostObservation]:
        runs = frozenset(runs)
        self.last = {name: self._probe_one(agent, wanted.get(name, set()), runs, now)
                     for name, agent in self.agents.items()}
        return self.last

    def _probe_one(self, agent: FakeHost, wanted: set[tuple[str, int]], runs: frozenset[str],
                   now: datetime) -> HostObservation:
        try:
            facts = agent.probe(wanted, runs)
        except TransportError as exc:
            since = self.down_since.setdefault(agent.name, now)
            return HostObservation(agent.name, False, now, error=str(exc), down_since=since)
        self.down_since.pop(agent.name, None)
        return observation_from_probe(agent.name, facts, now)

    def capacities(self) -> list[HostCapacity]:
        return [capacity(a.config, self.last.get(name)) for name, a in self.agents.items()]

    def replace_agents(self, agents: list[Any]) -> None:
        self.agents = {a.name: a for a in agents}
        if self.namespace:
            self.set_namespace(self.namespace)
        self.last = {n: o for n, o in self.last.items() if n in self.agents}
        self.down_since = {n: t for n, t in self.down_since.items() if n in self.agents}

    def close(self) -> None:
        self.closed = True

    # -- the job-side view --------------------------------------------------------------------

    def started(self, seen: FakeAttempt) -> None:
        """The guard: a start while another attempt of the same row is alive is an overlap."""
        if any(a.alive and a.tag == seen.tag for a in self.all_attempts()):
            self.overlaps.append((seen.tag, seen.run_id, seen.attempt))
        self.starts.append(seen)

    def all_attempts(self) -> list[FakeAttempt]:
        return [a for host in self.agents.values() for a in host.attempts.values()]

    def attempts(self, tag: str) -> list[FakeAttempt]:
        """Every attempt of the row `tag`, in the order they started."""
        return [a for a in self.starts if a.tag == tag]

    def live(self, tag: str) -> FakeAttempt:
        """The one live attempt of the row `tag` (fails if there is none or more than one)."""
        alive = [a for a in self.attempts(tag) if a.alive]
        assert len(alive) == 1, f"{tag}: live attempts {alive}"
        return alive[0]

    def latest(self, tag: str) -> FakeAttempt:
        found = self.attempts(tag)
        assert found, f"{tag}: never started"
        return found[-1]

    # -- faults of one attempt ----------------------------------------------------------------

    def exit(self, tag: str, code: int, log: str = "") -> FakeAttempt:
        """The live attempt of `tag` ends with `code` (a crash unless 0)."""
        seen = self.live(tag)
        seen.state, seen.exit_code = "exited", code
        seen.log = log or (f"RuntimeError: failing on purpose with {code}" if code else "done")
        return seen

    def hang(self, tag: str) -> FakeAttempt:
        """The live attempt of `tag` stays alive but stops beating."""
        seen = self.live(tag)
        seen.hung = True
        return seen

    def freeze(self, tag: str) -> FakeAttempt:
        """Signals to the live attempt of `tag` do nothing until `thaw` (uninterruptible IO)."""
        seen = self.live(tag)
        seen.frozen = True
        return seen

    def thaw(self, tag: str) -> None:
        for seen in self.attempts(tag):
            seen.frozen = False


class FlakySheet:
    """A `SheetBackend` over a `MemorySheet` that can be made unreachable."""

    def __init__(self, sheet: MemorySheet):
        self.inner = sheet
        self.down = False
        self.reads = 0
        self.writes = 0
        self.refused = 0

    def read(self) -> Table:
        if self.down:
            self.refused += 1
            raise SheetUnavailable("503 from the sheet (made unreachable by the test)")
        self.reads += 1
        return self.inner.read()

    def write(self, change: SheetWrite) -> None:
        if self.down:
            self.refused += 1
            raise SheetUnavailable("503 from the sheet (made unreachable by the test)")
        self.writes += 1
        self.inner.write(change)

    def initialize(self, header: list[str], job_names: list[str]) -> None:
        self.inner.initialize(header, job_names)


HEADER = ["job", "--tag", "gpus", "where", "retries", "action", *OWNED_COLUMNS]


def row(tag: str, gpus: int = 0, where: str = "", retries: int | None = None,
        action: str = "") -> list[Any]:
    return ["fake", tag, gpus, where, "" if retries is None else retries, action]


HOSTS_EXTRA = """
[[hosts]]
name = "{name}"
address = "{name}.invalid"
slots = {slots}
accelerators = {accelerators}
labels = [{labels}]
"""


class Rig:
    """A real Daemon over a memory sheet, a fake pool, a real store and a fake clock.

    Hosts: `local` (from local_config, `slots` CPU slots) plus `others` as
    {name: slots}. The first cycle claims the sheet's lease (`start()` runs it);
    from the second on the daemon acts."""

    def __init__(self, tmp: Path, rows: list[list[Any]], slots: int = 2,
                 others: Mapping[str, int] | None = None, daemon: Mapping[str, Any] | None = None,
                 **cfg: Any):
        extra = "".join(HOSTS_EXTRA.format(name=name, slots=n, accelerators=0,
                                           labels=f'"{name}"')
                        for name, n in (others or {}).items())
        cfg.setdefault("backoff", 30)
        config: Config = local_config(tmp, extra=extra, slots=slots, **cfg)
        if daemon:
            config = dataclasses.replace(config, daemon=dataclasses.replace(config.daemon,
                                                                            **daemon))
        self.config = config
        self.clock = Clock()
        self.book = MemoryBook(list(HEADER), [list(r) for r in rows])
        self.sheet = FlakySheet(MemorySheet(self.book))
        self.pool = FakePool(config.hosts, self.clock)
        self.store = open_store(config)
        self.daemon = Daemon(config, self.sheet, self.pool, self.store,  # type: ignore[arg-type]
                             clock=self.clock)
        self.reports: list[CycleReport] = []

    def start(self) -> CycleReport:
        """The lease cycle, then the first acting cycle."""
        first = self.cycle()
        assert not first.acting
        return self.cycle()

    def cycle(self, after_s: float = 0) -> CycleReport:
        self.clock.advance(after_s)
        report = self.daemon.cycle()
        self.reports.append(report)
        return report

    def run_for(self, seconds: float, step_s: float = 15) -> list[CycleReport]:
        """Cycles every `step_s` seconds (the poll interval of a real daemon) for `seconds`."""
        done = []
        for _ in range(int(seconds // step_s)):
            done.append(self.cycle(step_s))
        return done

    def cycle_until(self, tag: str, status: str, step_s: float = 15,
                    most_s: float = 4 * 3600) -> float:
        """Cycle until the row `tag` shows `status`; returns the seconds that took."""
        start = self.clock()
        while self.status(tag) != status:
            assert (self.clock() - start).total_seconds() < most_s, (
                f"{tag} still {self.status(tag)!r} ({self.row(tag).get('message')!r})")
            self.cycle(step_s)
        return (self.clock() - start).total_seconds()

    # -- what the sheet shows -----------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.book.header, r, strict=False)) for r in self.book.rows]

    def row(self, tag: str) -> dict[str, Any]:
        found = [r for r in self.rows() if r.get("--tag") == tag]
        assert len(found) == 1, f"{tag}: rows {found}"
        return found[0]

    def status(self, tag: str) -> str:
        return str(self.row(tag).get("status") or "")

    def set_cell(self, tag: str, column: str, value: Any) -> None:
        index = next(i for i, r in enumerate(self.rows()) if r.get("--tag") == tag)
        self.book.put(index + 2, column, value)

    def add_row(self, cells: list[Any]) -> None:
        self.book.rows.append(list(cells))
        self.book.fills.append(None)

    def events(self, kind: str | None = None) -> list[tuple[str, str, str, str]]:
        return [e for e in self.store.events() if kind is None or kind in e]

    def close(self) -> None:
        self.daemon.close()
