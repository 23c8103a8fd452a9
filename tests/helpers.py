"""Builders shared by the tests: a workbook with rows, a config around it, a fake clock."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openpyxl

from sheetrunner import config as config_module
from sheetrunner.sheet.schema import OWNED_COLUMNS

FAKE_JOB = Path(__file__).parent / "jobs" / "fake_job.py"


def write_workbook(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "experiments"
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    book.save(path)
    return path


def read_workbook(path: Path) -> list[dict[str, Any]]:
    sheet = openpyxl.load_workbook(path).worksheets[0]
    rows = list(sheet.iter_rows(values_only=True))
    header = [str(h) for h in rows[0]]
    return [dict(zip(header, r, strict=False)) for r in rows[1:] if any(v is not None for v in r)]


def fill_of(path: Path, row: int) -> str:
    sheet = openpyxl.load_workbook(path).worksheets[0]
    return str(sheet.cell(row=row, column=1).fill.start_color.rgb)[-6:]


def local_config(tmp: Path, extra: str = "", slots: int = 2, accelerators: int = 0,
                 hang_timeout: float = 600, retries: int = 2, backoff: float = 0.5,
                 sheet: str = 'path = "experiments.xlsx"', root: str = "host",
                 state_dir: str = "state") -> config_module.Config:
    """A config running the fake job on this machine; `sheet` is the body of [sheet]."""
    text = "[sheet]\n" + textwrap.dedent(sheet).strip() + "\n" + textwrap.dedent(f"""

        [daemon]
        poll_interval = 0.5
        state_dir = "{state_dir}"

        [defaults]
        retries = {retries}
        hang_timeout = {hang_timeout}
        backoff = {backoff}
        launch_timeout = 10

        [jobs.fake]
        command = ["{sys.executable}", "{FAKE_JOB}"]

        [[hosts]]
        name = "local"
        local = true
        accelerators = {accelerators}
        slots = {slots}
        root = "{root}"
    """) + textwrap.dedent(extra)
    path = tmp / "sheetrunner.toml"
    path.write_text(text)
    return config_module.load(path)


HEADER = ["job", "--steps", "--sleep", "--exit", "gpus", "action", *OWNED_COLUMNS]


class Clock:
    """A clock the test moves by hand: time is a parameter, tests never wait on it."""

    def __init__(self, start: datetime | None = None):
        self.now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def cycle_until(daemon, done: Callable[[list[dict]], bool], timeout_s: float = 30,
                read: Callable[[], list[dict]] | None = None) -> list[dict]:
    """Run cycles until the sheet (the workbook, unless `read` says otherwise) shows `done`."""
    read = read or (lambda: read_workbook(daemon.config.sheet.path))
    deadline = time.monotonic() + timeout_s
    while True:
        daemon.cycle()
        rows = read()
        if done(rows):
            return rows
        assert time.monotonic() < deadline, f"timed out; sheet shows {rows}"
        time.sleep(0.2)


def processes_under(root: Path) -> list[int]:
    """Processes whose SHEETRUNNER_RUN_DIR lies under `root`: jobs started from attempt
    directories there."""
    marker = f"SHEETRUNNER_RUN_DIR={root}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(marker) for item in environ.split(b"\0")):
            found.append(int(pid))
    return found


def kill_jobs_under(root: Path, settle_s: float = 5.0) -> None:
    """SIGKILL every process whose SHEETRUNNER_RUN_DIR lies under `root`, again until none
    is left (a supervisor may be starting its job just as the first pass looks)."""
    deadline = time.monotonic() + settle_s
    while True:
        found = processes_under(root)
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not found or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def guard_report(directory: Path) -> tuple[dict[str, int], list[str]]:
    """What the fake job's guard saw: starts per row tag, and starts that found a copy of
    their row still running (must be none)."""
    starts: dict[str, int] = {}
    log = directory / "starts.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        tag = line.split()[0]
        starts[tag] = starts.get(tag, 0) + 1
    concurrent = directory / "concurrent.log"
    return starts, concurrent.read_text().splitlines() if concurrent.exists() else []


def files_outside(top: Path, allowed: list[Path]) -> list[Path]:
    """Files and directories under `top` that are not under any of `allowed`."""
    allowed = [a.resolve() for a in allowed]
    found = []
    for path in top.rglob("*"):
        resolved = path.resolve()
        if not any(resolved == a or a in resolved.parents for a in allowed):
            found.append(path)
    return found


def make_run(run_id: str, key: str = "k", job: str = "train", params: tuple = (), gpus: int = 1,
             where: str | None = None, status: Any = None, created_at: datetime | None = None,
             updated_at: datetime | None = None, **flat: Any) -> Any:
    """A Run from the flat field names tests think in: each goes to its part (spec, link,
    seen) or stays on the run (its lifecycle)."""
    from dataclasses import fields as _fields

    from sheetrunner.model import RowLink, Run, RunSpec, Seen, Status

    now = created_at or datetime(2026, 1, 1, tzinfo=UTC)
    link = {n: flat.pop(n) for n in [f.name for f in _fields(RowLink)] if n in flat}
    seen = {n: flat.pop(n) for n in [f.name for f in _fields(Seen)] if n in flat}
    return Run(run_id=run_id, spec=RunSpec(key, job, params), status=status or Status.QUEUED,
               created_at=now, updated_at=updated_at or now,
               link=RowLink(gpus=gpus, where=where, **link), seen=Seen(**seen), **flat)
