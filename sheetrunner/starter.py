"""`sheetrunner init`: a starter config and workbook, or the header of an existing sheet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from . import config as config_module
from .daemon import open_sheet
from .sheet.schema import OWNED_COLUMNS, USER_COLUMNS

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
accelerators = 0                 # GPUs on this machine (an integer, or "auto")
slots = 2                        # CPU-only runs (gpus = 0) at once
root = ".sheetrunner-state/host"
"""

EXAMPLE_PARAMS = ["--lr", "--seed"]


def starter_header(params: list[str]) -> list[str]:
    return ["job", *params, *USER_COLUMNS[1:], *OWNED_COLUMNS]


def initialize(path: Path) -> Iterator[str]:
    """Write what is missing; never touch rows that already hold data."""
    if not path.exists():
        path.write_text(STARTER_CONFIG, encoding="utf-8")
        yield f"wrote {path}: edit [jobs] and [[hosts]], then run `sheetrunner init -c {path}` again"
    config = config_module.load(path)
    sheet = open_sheet(config)
    sheet.initialize(starter_header(EXAMPLE_PARAMS), sorted(config.jobs))
    where = config.sheet.path or config.sheet.url
    yield f"sheet ready: {where} (header row, job and action dropdowns)"
    yield f"start it with: sheetrunner daemon -c {path}"
