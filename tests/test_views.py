"""What `ps` and `pool` print, rendered to text as a person sees it."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from rich.console import Console

from sheetrunner.config import HostConfig
from sheetrunner.model import Accelerator, HostObservation, Run, Status
from sheetrunner.views import pool_json, pool_rows, pool_table, runs_table

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def render(table) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(table)
    return out.getvalue()


def run(run_id: str, host: str, accelerators: tuple[str, ...], gpus: int = 1) -> Run:
    return Run(run_id, "k", "digits", (("lr", "0.1"),), gpus, None, Status.RUNNING, NOW, NOW,
               attempt=2, host=host, accelerators=accelerators, attempt_started_at=NOW,
               metrics={"step": 7, "acc": 0.91}, row=3)


def test_ps_shows_each_run_with_status_host_attempt_and_metrics():
    text = render(runs_table([run("abc-1", "gpu-a", ("0",))], now=NOW + timedelta(minutes=3)))
    assert "abc-1" in text and "running" in text and "gpu-a" in text
    assert "3m" in text and "step=7 acc=0.91" in text


def test_pool_shows_models_memory_use_holders_and_down_hosts():
    hosts = [HostConfig("gpu-a", accelerators="auto", slots=2),
             HostConfig("gpu-b", accelerators=2), HostConfig("cpu", slots=4)]
    seen = {
        "gpu-a": HostObservation("gpu-a", True, NOW, load=1.25, disk_free_bytes=50 * 2**30,
                                 accelerators=(
                                     Accelerator("0", "NVIDIA A100", 40960, 81920, 97),
                                     Accelerator("1", "NVIDIA A100", 1024, 81920, 0, foreign=True),
                                 )),
        "gpu-b": HostObservation("gpu-b", False, NOW, error="timed out"),
        "cpu": HostObservation("cpu", True, NOW, load=0.5, disk_free_bytes=2**30),
    }
    runs = [run("abc-1", "gpu-a", ("0",)), run("cpu-1", "cpu", (), gpus=0)]
    entries = pool_json(hosts, seen, runs, {"gpu-b": NOW - timedelta(minutes=5)})
    assert [a["run"] for a in entries[0]["accelerators"]] == ["abc-1", None]
    assert entries[1]["unreachable_since"].startswith("2026-01-01T11:55")
    text = render(pool_table(entries))
    assert "NVIDIA A100" in text and "40.0/80 GiB" in text and "97%" in text
    assert "another user's process" in text and "down since 2026-01-01T11:55" in text
    assert "1/4 slots: cpu-1" in text and "50.0 GiB" in text
    assert pool_rows(entries)[0][:3] == ["host", "state", "accelerator"]
