"""The real torch job under the daemon: a crash mid-training resumes from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cycle_until, write_workbook

from sheetrunner import config as config_module
from sheetrunner.daemon import build

pytestmark = pytest.mark.torch
REPO = Path(__file__).resolve().parents[1]


def test_a_digits_run_that_crashes_is_retried_and_resumes_from_its_checkpoint(tmp_path):
    (tmp_path / "sheetrunner.toml").write_text(f"""
[sheet]
path = "experiments.xlsx"
metric_columns = ["acc"]
[daemon]
poll_interval = 1
state_dir = "state"
[defaults]
retries = 1
backoff = 0.5
[jobs.digits]
command = ["{{python}}", "jobs/digits.py"]
workdir = "{REPO}"
env = {{ SHEETRUNNER_TEST_CRASH_AT_EPOCH = "2", OMP_NUM_THREADS = "1" }}
keep_checkpoints = 1
best_metric = "acc"
[[hosts]]
name = "local"
local = true
slots = 1
root = "host"
""")
    write_workbook(tmp_path / "experiments.xlsx", ["job", "--epochs", "--lr", "gpus"],
                   [["digits", 4, 0.05, 0]])
    daemon = build(config_module.load(tmp_path / "sheetrunner.toml"))
    (row,) = cycle_until(daemon, lambda rows: rows[0].get("status") in ("succeeded", "failed"), 120)
    assert row["status"] == "succeeded" and row["attempt"] == 2
    assert row["acc"] > 0.5 and row["best acc"] >= row["acc"]
    (run_dir,) = (tmp_path / "host").glob(f"*/hosts/local/runs/{row['id']}")
    first = [json.loads(x) for x in (run_dir / "1" / "metrics.jsonl").read_text().splitlines()]
    second = [json.loads(x) for x in (run_dir / "2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in first if "epoch" in r] == [1, 2]
    assert [r["epoch"] for r in second if "epoch" in r] == [3, 4]  # resumed, not from 0
    assert min(r["step"] for r in second) > max(r["step"] for r in first)
    checkpoints = run_dir.parents[3] / "checkpoints" / row["id"]
    kept = sorted(p.name for p in checkpoints.glob("ckpt-*.pt"))
    assert 1 <= len(kept) <= 2  # the newest, plus the best by acc when it is another one
