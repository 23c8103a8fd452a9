"""Keeping the hosts' disks tidy: `[[hosts]] keep_finished_days` and `sheetrunner gc`.

What goes is decided by `prep_policy.gc_choice` (attempt directories of runs final for
longer than the host's keep_finished_days, their checkpoints unless the sheet still shows
the run, code versions no run uses); the end of each of their logs is archived in the state
directory first (log_archive.py), and a run whose log could not be archived is kept. The
agent removes (sheetrunner/remote/codestore.py), never touching a run with an unfinished
attempt there, and says how many bytes went. The daemon does this once an hour per host;
`sheetrunner gc [--dry-run]` does it at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .code_versions import VersionStore
from .config import Config, HostConfig
from .errors import TransportError
from .log_archive import ARCHIVED_BYTES, LogArchive
from .model import Run
from .pool.hosts import HostAgent, Pool
from .prep_policy import GcChoice, gc_choice
from .store import Store

log = logging.getLogger(__name__)

INTERVAL = timedelta(hours=1)
GC_TIMEOUT_S = 300.0


@dataclass
class GcResult:
    """What `gc` did (or would do, dry run) on one host."""

    host: str
    freed_bytes: int = 0
    removed: list[str] = field(default_factory=list)
    error: str = ""


def collect(
    config: Config,
    pool: Pool,
    store: Store,
    archive: LogArchive,
    now: datetime,
    current_code: Iterable[str] = (),
    hosts: Iterable[str] | None = None,
    dry_run: bool = False,
) -> list[GcResult]:
    """Tidy each host (all, or those named), all at once: one agent call per host."""
    runs = list(store.runs().values())
    names = set(hosts) if hosts is not None else {h.name for h in config.hosts}
    current = list(current_code)
    chosen = [h for h in config.hosts if h.name in names and h.name in pool.agents]
    if not chosen:
        return []

    def tidy(host: HostConfig) -> GcResult:
        choice = gc_choice(runs, now, host.keep_finished_days, host.gc_shown_checkpoints, current)
        return _tidy(pool.agents[host.name], choice, runs, archive, dry_run)

    with ThreadPoolExecutor(max_workers=min(pool.max_parallel, len(chosen))) as ex:
        results = list(ex.map(tidy, chosen))
    if not dry_run:
        prune_kept_code(config, runs, current)
    return results


def prune_kept_code(config: Config, runs: Iterable[Run], current: Iterable[str]) -> int:
    """The versions kept in the state directory for `pin` cells (code_versions.py) that no
    run in the store used and no job has now are dropped, with their unshared blobs."""
    keep = {*current, *(r.code_hash for r in runs if r.code_hash)}
    try:
        freed = VersionStore(config.daemon.state_dir).prune(keep)
    except OSError as exc:
        log.warning("kept code versions not pruned: %s", exc)
        return 0
    if freed:
        log.info("kept code versions pruned: %d bytes freed", freed)
    return freed


def _tidy(
    agent: HostAgent, choice: GcChoice, runs: list[Run], archive: LogArchive, dry_run: bool
) -> GcResult:
    by_id = {r.run_id: r for r in runs}
    kept = [] if dry_run else _unarchived(agent, [by_id[i] for i in choice.runs], archive)
    request = {
        "runs": [r for r in choice.runs if r not in kept],
        "checkpoints": [r for r in choice.checkpoints if r not in kept],
        "keep_code": list(choice.keep_code),
        "dry_run": dry_run,
    }
    result = GcResult(agent.name)
    try:
        answer = agent.command("gc", request)
    except (TransportError, ValueError) as exc:
        result.error = str(exc)
        log.warning("host=%s gc not done: %s", agent.name, exc)
        return result
    result.freed_bytes = int(answer.get("freed_bytes") or 0)
    result.removed = [str(p) for p in answer.get("removed") or []]
    if result.removed and not dry_run:
        log.info(
            "host=%s gc removed %d paths, %d bytes freed",
            agent.name,
            len(result.removed),
            result.freed_bytes,
        )
    return result


def _unarchived(agent: HostAgent, runs: list[Run], archive: LogArchive) -> list[str]:
    """Archive the logs of the runs that ran here and lack one; the ids whose last attempt's
    log could not be archived (they are kept until it can)."""
    kept = []
    for run in runs:
        if run.host != agent.name:
            continue
        for attempt in range(1, run.attempt + 1):
            if archive.read(run.run_id, attempt) is not None:
                continue
            try:
                archive.save(run.run_id, attempt, agent.tail(run.run_id, attempt, ARCHIVED_BYTES))
            except TransportError as exc:
                if attempt == run.attempt and "No such" not in str(exc):
                    log.info("run=%s kept on %s: log not archived: %s", run.run_id, agent.name, exc)
                    kept.append(run.run_id)
    return kept
