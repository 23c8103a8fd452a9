"""Pure rules for hosts' code, setups and disks: which host may take new runs, when a setup
runs (again), what `gc` removes. No IO: host_prep.py and disk_gc.py apply them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from .model import Run

GIB = 1 << 30

# What a setup's state can be, as the host reports it (sheetrunner/remote/codestore.py).
SETUP_RUNNING = "running"
SETUP_SUCCEEDED = "succeeded"
SETUP_FAILED = "failed"
SETUP_FINAL = frozenset({SETUP_SUCCEEDED, SETUP_FAILED})


def low_disk(min_free: int, free_bytes: int | None) -> str:
    """Why a host takes no new runs for want of disk ("" when it may): its free disk under
    `[[hosts]] min_free_disk`. A host whose free disk is unknown is not judged."""
    if free_bytes is None or free_bytes >= min_free:
        return ""
    return f"free disk {free_bytes / GIB:.1f} GiB < min_free_disk {min_free / GIB:.1f} GiB"


def setup_key(
    code_hash: str,
    commands: Iterable[Iterable[str]],
    env: Mapping[str, str],
    workdir: str | None,
) -> str:
    """The setup's identity on a host: it runs once per key, so a new code version, a changed
    argv, environment or working directory runs it again; nothing else does."""
    text = json.dumps(
        [code_hash, [list(c) for c in commands], sorted(env.items()), workdir or ""],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def setup_call_needed(known: str | None, retry: bool = False) -> bool:
    """Whether to ask the host about a setup this cycle: while its state is unknown or
    running; a final state is known until its key changes (a failure is never retried every
    cycle), unless the user asked for a retry (`sheetrunner setup --retry`)."""
    return retry or known not in SETUP_FINAL


def setup_blocks(state: str | None, detail: str = "") -> str:
    """Why a job cannot start on a host because of its setup ("" once it succeeded)."""
    if state == SETUP_SUCCEEDED:
        return ""
    if state == SETUP_FAILED:
        last = next((ln for ln in reversed(detail.strip().splitlines()) if ln.strip()), "")
        return f"setup failed{': ' + last[:200] if last else ''} (sheetrunner setup --retry)"
    return "setup running"


@dataclass(frozen=True)
class GcChoice:
    """What to remove on the hosts: run directories and checkpoints, by run id."""

    runs: tuple[str, ...] = ()
    checkpoints: tuple[str, ...] = ()
    keep_code: tuple[str, ...] = ()


def gc_choice(
    runs: Iterable[Run],
    now: datetime,
    keep_days: float,
    gc_shown_checkpoints: bool = False,
    current_code: Iterable[str] = (),
) -> GcChoice:
    """Final runs that ended more than `keep_days` ago lose their attempt directories; their
    checkpoints go too unless the sheet still shows the run (its row was not deleted and no
    rerun replaced it), unless `gc_shown_checkpoints`. Code versions kept: the current ones
    and those of every run not final (it may start or restart in them)."""
    cutoff = now - timedelta(days=keep_days)
    old, checkpoints, keep = [], [], set(current_code)
    for run in runs:
        if not run.status.is_final:
            if run.code_hash:
                keep.add(run.code_hash)
            continue
        if run.attempt == 0 or run.finished_at is None or run.finished_at > cutoff:
            continue
        old.append(run.run_id)
        if gc_shown_checkpoints or not shown(run):
            checkpoints.append(run.run_id)
    return GcChoice(tuple(sorted(old)), tuple(sorted(checkpoints)), tuple(sorted(keep)))


def shown(run: Run) -> bool:
    """The sheet still shows the run: its row was not deleted, no rerun took its place."""
    return not run.link.released and not run.link.replaced_by
