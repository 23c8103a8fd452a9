"""A lab's sheet for the chaos tests: a workbook, a config, the fake job with its guard.

Each row carries a `--tag`; the fake job records every start under that tag and
whether a copy of the same row was still running (tests/jobs/fake_job.py), so a
test can count starts and concurrent copies from the job's side, whatever the
daemon believes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sheetrunner.daemon import Daemon, build
from sheetrunner.sheet.schema import OWNED_COLUMNS
from tests.helpers import (
    files_outside,
    guard_report,
    local_config,
    processes_under,
    read_workbook,
    write_workbook,
)

HEADER = ["job", "--tag", "--steps", "--sleep", "--exit", "--fail-attempts", "gpus", "retries",
          "action", *OWNED_COLUMNS]


def row(tag: str, steps: int = 3, sleep: float = 0.1, exit_code: int | None = None,
        retries: int | None = None, fail_attempts: int | None = None) -> list:
    return ["fake", tag, steps, sleep, exit_code, fail_attempts, 0, retries, None]


@dataclass
class Lab:
    """One sheet with its config; `guard` is shared by every lab of a test."""

    dir: Path
    guard: Path

    @property
    def workbook(self) -> Path:
        return self.dir / "experiments.xlsx"

    @property
    def config_path(self) -> Path:
        return self.dir / "sheetrunner.toml"

    def rows(self) -> list[dict]:
        return read_workbook(self.workbook)

    def statuses(self) -> list[str]:
        return [r.get("status") for r in self.rows()]

    def daemon(self) -> Daemon:
        return build(self.config)

    def cli(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        return self.cli_with(self.config_path, *args, timeout_s=timeout_s)

    def cli_with(self, config: Path, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sheetrunner.cli", args[0], "-c", str(config),
                               *args[1:]], capture_output=True, text=True, timeout=timeout_s)

    def start_daemon(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "sheetrunner.cli", "daemon", "-c",
                                 str(self.config_path), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_for(self, done: Callable[[list[dict]], bool], timeout_s: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                rows = self.rows()
            except Exception:  # caught mid-save: read again
                rows = []
            if rows and done(rows):
                return rows
            assert time.monotonic() < deadline, f"timed out; sheet shows {rows}"
            time.sleep(0.2)

    def starts(self) -> dict[str, int]:
        return guard_report(self.guard)[0]

    def concurrent(self) -> list[str]:
        return guard_report(self.guard)[1]


def make_lab(dir: Path, guard: Path, rows: list[list], root: str = "host",
             state_dir: str = "state", **cfg) -> Lab:
    dir.mkdir(parents=True, exist_ok=True)
    write_workbook(dir / "experiments.xlsx", HEADER, rows)
    extra = f'\n[jobs.fake.env]\nFAKE_GUARD_DIR = "{guard}"\n'
    lab = Lab(dir, guard)
    lab.config = local_config(dir, extra=extra, root=root, state_dir=state_dir, **cfg)
    return lab


def nothing_outside(top: Path, *allowed: Path) -> None:
    """Nothing was created under `top` except in the labs' own directories (config, workbook,
    state, host root) and the allowed ones (a shared root, the guard, a backup)."""
    stray = files_outside(top, list(allowed))
    assert stray == [], stray


def all_final(rows: list[dict]) -> bool:
    return all(r.get("status") in ("succeeded", "failed", "stopped", "invalid", "duplicate")
               for r in rows)


def record(**facts: object) -> None:
    """Hand measured facts (a recovery time, escaped processes) to scripts/reliability.py,
    which sets SHEETRUNNER_RELIABILITY_FACTS when it runs the chaos suite; a no-op otherwise."""
    path = os.environ.get("SHEETRUNNER_RELIABILITY_FACTS")
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    if path and test:
        with open(f"{path}.measured", "a") as f:
            f.write(json.dumps({"test": test, **facts}) + "\n")


def our_processes(root: Path) -> list[int]:
    """Processes still running from attempt directories under `root` (escaped ones, once
    every row is final)."""
    return processes_under(root)
