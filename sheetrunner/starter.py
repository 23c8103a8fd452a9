"""`sheetrunner init`: a starter config, job and workbook, or the header of an existing sheet.

What it writes works together out of the box: the starter rows ask for `gpus = 0`, which the
starter host (`accelerators = 0`, CPU slots) can place, so the first `sheetrunner daemon`
runs them instead of leaving them queued forever for a GPU the machine lacks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import config as config_module
from .daemon import open_sheet
from .sheet.schema import OWNED_COLUMNS, USER_COLUMNS
from .sheet.table import RowInsert, SheetWrite

STARTER_CONFIG = """\
# sheetrunner config: every key is documented in README.md.
[sheet]
path = "experiments.xlsx"        # a local workbook; for Google Sheets use url = "..."

[daemon]
poll_interval = 15               # seconds between cycles
state_dir = ".sheetrunner-state" # SQLite state and, for the local host, the runs

[defaults]
retries = 2                      # restarts after a crash or hang
hang_timeout = 600               # seconds without a heartbeat before a run counts as hung

[jobs.train]
command = ["{python}", "train.py"]  # row parameters are appended as --NAME VALUE

[[hosts]]
name = "local"
local = true
accelerators = 0                 # GPUs on this machine (a count, or "auto"); with 0, rows
                                 # need gpus = 0 (a row's gpus defaults to 1)
slots = 2                        # CPU-only runs (gpus = 0) at once
root = ".sheetrunner-state/host"
"""

STARTER_JOB_FILE = "train.py"
STARTER_JOB = '''\
"""A starter job for sheetrunner: replace the loop with your training.

Each row's parameters arrive as argv (`--lr 0.1 --seed 0`). A line
`SHEETRUNNER {"step": ..., "loss": ...}` reports metrics to the sheet; for
checkpoints and more, see `sheetrunner.job` (docs/jobs.md).
"""

import argparse
import json
import random
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)
    loss = 1.0
    for step in range(1, 11):
        loss *= 1 - min(abs(args.lr), 0.9) * random.uniform(0.2, 1.0)
        print("SHEETRUNNER " + json.dumps({"step": step, "loss": round(loss, 6)}), flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main()
'''

EXAMPLE_PARAMS = ["--lr", "--seed"]
# Rows for a new workbook: CPU only, so the starter host runs them (see the module docstring).
STARTER_ROWS: list[dict[str, Any]] = [
    {"job": "train", "--lr": 0.1, "--seed": 0, "gpus": 0},
    {"job": "train", "--lr": 0.01, "--seed": 0, "gpus": 0},
]


def starter_header(params: list[str]) -> list[str]:
    users = [c for c in USER_COLUMNS[1:] if c != "pin"]  # only for synced jobs: added by hand
    return ["job", *params, *users, *OWNED_COLUMNS]


def initialize(path: Path) -> Iterator[str]:
    """Write what is missing; never touch rows that already hold data."""
    if not path.exists():
        path.write_text(STARTER_CONFIG, encoding="utf-8")
        yield f"wrote {path}: edit [jobs] and [[hosts]], then run `sheetrunner init -c {path}` again"
        job_file = path.parent / STARTER_JOB_FILE
        if not job_file.exists():
            job_file.write_text(STARTER_JOB, encoding="utf-8")
            yield f"wrote {job_file}: the starter job; put your training in it"
    config = config_module.load(path)
    book = config.sheet.path
    creating = book is not None and not Path(book).exists()
    sheet = open_sheet(config)
    sheet.initialize(starter_header(EXAMPLE_PARAMS), sorted(config.jobs))
    if creating:
        follow_umask(Path(book or ""))
        if "train" in config.jobs:
            sheet.write(SheetWrite(inserts=[RowInsert(after_row=1, rows=STARTER_ROWS)]))
    where = book or config.sheet.url
    yield f"sheet ready: {where} (header row, job and action dropdowns)"
    yield f"start it with: sheetrunner daemon -c {path}"


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """A new file gets the mode any program would give it (0644 under umask 022, 0600 under
    077): the workbook is a document to share with collaborators, or to keep private."""
    os.chmod(path, 0o666 & ~current_umask())
