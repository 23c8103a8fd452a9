"""Rows through a real single-node Slurm cluster (tests/slurm_cluster.py), driven by the
daemon: submitted with sbatch, watched with one squeue per cycle, ended as Slurm says."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from helpers import FAKE_JOB, HEADER, cycle_until, write_workbook
from slurm_cluster import slurm  # noqa: F401 - the module's cluster fixture

from sheetrunner import config as config_module
from sheetrunner.daemon import build

pytestmark = pytest.mark.slurm


def cluster_config(tmp: Path, slurm_conf: Path, extra: str = "", retries: int = 0) -> Path:
    text = textwrap.dedent(f"""
        [sheet]
        path = "experiments.xlsx"

        [daemon]
        poll_interval = 0.5
        state_dir = "state"

        [defaults]
        retries = {retries}
        backoff = 0.5
        launch_timeout = 30

        [jobs.fake]
        command = ["{sys.executable}", "{FAKE_JOB}"]

        [[clusters]]
        name = "ci"
        local = true
        partition = "gpu"
        root = "{tmp}/shared"
        time = "10"
        slurm_conf = "{slurm_conf}"
    """) + textwrap.dedent(extra)
    path = tmp / "sheetrunner.toml"
    path.write_text(text)
    return path


def start(tmp: Path, slurm, rows: list[list], **kw):  # noqa: F811
    write_workbook(tmp / "experiments.xlsx", HEADER, rows)
    return build(config_module.load(cluster_config(tmp, slurm.conf, **kw)))


def test_rows_run_on_the_cluster_to_success_with_metrics(tmp_path, slurm):  # noqa: F811
    daemon = start(tmp_path, slurm, [["fake", 3, 0.05, 0, 1], ["fake", 2, 0.05, 1, 0]])
    try:
        rows = cycle_until(
            daemon, lambda rows: all(r["status"] in ("succeeded", "failed") for r in rows)
        )
    finally:
        daemon.close()
    assert rows[0]["status"] == "succeeded", rows
    assert rows[0]["metrics"] == "step=3 loss=0.3333" and rows[0]["host"] == "ci"
    assert rows[1]["status"] == "failed" and "exit code 1" in rows[1]["message"]
    names = {j["name"]: j for j in slurm.jobs()}
    mine = [n for n in names if rows[0]["id"] in n]
    assert len(mine) == 1 and names[mine[0]]["state"] == "COMPLETED"
    assert Path(rows[0]["log"]).is_file()
