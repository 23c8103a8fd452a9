"""Getting hosts ready for a job before its first launch there: its code (`sync`) and its
setup (`[[hosts]] setup`, `[jobs.NAME] setup`).

Once a cycle, before the plan, for every job that has rows waiting to start and every
reachable host that may take them: the job's current code version is uploaded where it is
missing (sheetrunner/code_sync.py), and its setup is started there, detached, once per code
version (prep_policy.setup_key). The core gets, per host, the jobs it cannot start yet and
why ("setup running", "setup failed: ..."), and places their runs elsewhere or lets them
wait with that reason. A setup is observed by later cycles, never waited for; a failed one is
not started again until its key changes or the user asks (`sheetrunner setup --retry`).

What each host's setups are doing is kept in `<state_dir>/setups.json` for `pool`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from . import prep_policy as policy
from .atomic import write_atomic
from .code_sync import BlobSource, CodeUploader, CodeVersion, LocalTree
from .code_versions import VersionStore
from .config import Config, HostConfig, JobConfig, job_workdir
from .errors import TransportError
from .pool.hosts import HostAgent, Pool

log = logging.getLogger(__name__)

STATE_FILE = "setups.json"
RETRY_FILE = "setup-retry"  # `sheetrunner setup --retry` leaves it; the daemon takes it


@dataclass(frozen=True)
class SetupSeen:
    """A setup as last seen on a host."""

    job: str
    key: str
    state: str
    detail: str = ""  # the log's tail, or why it could not be asked
    log: str = ""  # its output file on the host
    at: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "key": self.key,
            "state": self.state,
            "detail": self.detail,
            "log": self.log,
            "at": self.at,
        }


class HostPrep:
    """The code versions of synced jobs, and the setups seen on each host."""

    def __init__(self, config: Config):
        self.state_dir = Path(config.daemon.state_dir)
        self.uploader = CodeUploader()
        self.trees: dict[Path, LocalTree] = {}
        self.setups: dict[tuple[str, str], SetupSeen] = {}  # (host, job[@pin]) -> last seen
        self.kept = VersionStore(self.state_dir)  # every version read, for `pin` cells
        self.current: dict[str, str] = {}  # job -> its current version's hash (last read)
        self.use(config)

    def use(self, config: Config) -> None:
        """The config (again, after a reload): a tree per synced directory, the daemon's own
        files (state directory, workbook, the local host's root) never part of it."""
        self.config = config
        self.uploader.present.clear()  # a host's root may have changed: ask again once
        exclude = [config.daemon.state_dir]
        if config.sheet.path is not None:
            exclude.append(config.sheet.path)
        exclude += [Path(h.root).expanduser() for h in config.hosts if h.local]  # runs live there
        self.trees = {
            job.sync: self.trees.get(job.sync) or LocalTree(job.sync, exclude)
            for job in config.jobs.values()
            if job.sync is not None
        }

    def versions(self) -> dict[str, CodeVersion]:
        """Each synced job's code as it is now (a file is read again only when changed)."""
        read = {path: tree.snapshot() for path, tree in self.trees.items()}
        found = {n: read[j.sync] for n, j in self.config.jobs.items() if j.sync is not None}
        self.current = {n: v.hash for n, v in found.items()}
        for name, version in found.items():
            try:  # kept in the state directory, so a row can pin it later
                where = self.config.jobs[name].sync
                self.kept.keep(version, self.trees[where], name, str(where))  # type: ignore[index]
            except OSError as exc:
                log.warning("code %s of job %s not kept for pins: %s", version.label, name, exc)
        return found

    def source(self, job: JobConfig, version: CodeVersion) -> BlobSource:
        """Where the version's files are read from: the job's tree for its current version,
        the state directory's store for a pinned one."""
        tree = self.trees.get(job.sync) if job.sync is not None else None
        if tree is not None and self.current.get(job.name) == version.hash:
            return tree
        return self.kept

    def prepare(
        self,
        pool: Pool,
        wanted: Mapping[str, Iterable[str]],
        versions: dict[str, CodeVersion],
        now: datetime,
        pinned: Mapping[str, Iterable[CodeVersion]] | None = None,
    ) -> dict[str, dict[str, str]]:
        """For every host in `wanted` (host -> jobs with rows waiting that it may take): the
        jobs it cannot start yet, and why. Hosts are prepared in parallel. `pinned`: the
        versions rows pin, per job; a job is blocked on a host until every version it needs
        there (its current one and the pinned ones) is uploaded and set up."""
        pins = {job: sorted(set(v), key=lambda v: v.hash) for job, v in (pinned or {}).items()}
        retry = self._take_retry()
        todo = {h: sorted(set(j)) for h, j in wanted.items() if h in pool.agents and j}
        if not todo:
            return {}
        with ThreadPoolExecutor(max_workers=min(pool.max_parallel, len(todo))) as ex:
            found = dict(
                zip(
                    todo,
                    ex.map(
                        lambda h: self._prepare_host(
                            pool.agents[h], todo[h], versions, pins, now, retry
                        ),
                        todo,
                    ),
                    strict=True,
                )
            )
        self._save()
        return {h: blocked for h, blocked in found.items() if blocked}

    def _prepare_host(
        self,
        agent: HostAgent,
        jobs: list[str],
        versions: dict[str, CodeVersion],
        pins: dict[str, list[CodeVersion]],
        now: datetime,
        retry: set[str],
    ) -> dict[str, str]:
        blocked = {}
        again = agent.name in retry or "*" in retry
        for name in jobs:
            job = self.config.jobs[name]
            current = versions.get(name)
            needed = [(None, current)] + [
                (v, v) for v in pins.get(name, []) if current is None or v.hash != current.hash
            ]
            for pin, version in needed:
                try:
                    if version is not None:
                        self.uploader.ensure(agent, version, self.source(job, version))
                    reason = self._setup(agent, job, version, now, again, pinned=pin is not None)
                except (TransportError, ValueError, OSError) as exc:  # down, refused; file gone
                    log.warning("host=%s job=%s not ready: %s", agent.name, name, exc)
                    reason = f"code or setup not ready: {exc}"
                if reason:
                    label = f" (pinned code {version.label})" if pin and version else ""
                    blocked[name] = reason + label
                    break
        return blocked

    def _setup(
        self,
        agent: HostAgent,
        job: JobConfig,
        version: CodeVersion | None,
        now: datetime,
        retry: bool,
        pinned: bool = False,
    ) -> str:
        python = agent.config.python
        commands = [
            [python if part == "{python}" else part for part in argv]
            for argv in (*agent.config.setup, *job.setup)
        ]
        if not commands:
            return ""
        workdir = self.workdir(agent, job, version)
        env = {**job.env, **agent.config.env}
        key = policy.setup_key(version.hash if version else "", commands, env, workdir)
        slot = (agent.name, f"{job.name}@{version.label}" if pinned and version else job.name)
        seen = self.setups.get(slot)
        known = seen.state if seen is not None and seen.key == key else None
        if policy.setup_call_needed(known, retry):
            request = {
                "key": key,
                "commands": [list(c) for c in commands],
                "env": env,
                "workdir": workdir,
                "retry": retry,
            }
            answer = agent.command("setup", request)
            seen = SetupSeen(
                slot[1],
                key,
                str(answer.get("state") or policy.SETUP_RUNNING),
                str(answer.get("tail") or ""),
                str(answer.get("log") or ""),
                now.isoformat(),
            )
            if known != seen.state:
                log.info("host=%s job=%s setup %s", agent.name, job.name, seen.state)
            self.setups[slot] = seen
        assert seen is not None
        return policy.setup_blocks(seen.state, seen.detail)

    def workdir(self, agent: HostAgent, job: JobConfig, version: CodeVersion | None) -> str | None:
        """Where the job (and its setup) runs on this host: its code version's directory, or
        its configured workdir."""
        if version is not None:
            return self.uploader.where(agent, version)
        return job_workdir(self.config, job.name, agent.config)

    def _take_retry(self) -> set[str]:
        """Hosts named by `sheetrunner setup --retry` since the last cycle ("*": all)."""
        path = self.state_dir / RETRY_FILE
        try:
            names = set(path.read_text().split())
            path.unlink()
        except OSError:
            return set()
        return names or {"*"}

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Each host's setups as last seen: for `pool` and the pool tab."""
        data: dict[str, list[dict[str, Any]]] = {}
        for (host, _job), seen in sorted(self.setups.items()):
            data.setdefault(host, []).append(seen.as_json())
        return data

    def _save(self) -> None:
        data = self.snapshot()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.state_dir / STATE_FILE, json.dumps(data, indent=1).encode())
        except OSError as exc:
            log.warning("setup states not saved for `pool`: %s", exc)


def load(state_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The setups each host showed the daemon, as it last saved them (for `pool`)."""
    try:
        found = json.loads((Path(state_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def ask_retry(state_dir: Path, hosts: Iterable[str] = ()) -> Path:
    """`sheetrunner setup --retry [HOST...]`: the running daemon starts failed setups again on
    those hosts (all when none is named) next cycle."""
    path = Path(state_dir) / RETRY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(" ".join(hosts) + "\n" if hosts else "*\n")
    return path


def wanted_hosts(
    hosts: Iterable[HostConfig], jobs: Iterable[tuple[str, str | None]], reachable: set[str]
) -> dict[str, set[str]]:
    """Which jobs each reachable host should be ready for: those of rows waiting to start
    (job, where) that the host matches. Pure."""
    out: dict[str, set[str]] = {}
    pairs = set(jobs)
    for host in hosts:
        if host.name not in reachable or host.drain:
            continue
        for job, where in pairs:
            if where is None or where == host.name or where in host.labels:
                out.setdefault(host.name, set()).add(job)
    return out
