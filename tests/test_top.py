"""`sheetrunner top`: the view as text at two widths, and the real thing in a tmux pane."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from sheetrunner import config as config_module
from sheetrunner.model import Accelerator, HostObservation, Run, Status
from sheetrunner.sheet.table import SPARK_BLOCKS
from sheetrunner.store import Store
from sheetrunner.top import curve_text, render
from tests.helpers import make_run as new_run

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.now(UTC).replace(microsecond=0)

CONFIG = """\
[sheet]
path = "experiments.xlsx"
curve = "acc"

[daemon]
poll_interval = 5
state_dir = "state"

[jobs.digits]
command = ["{python}", "jobs/digits.py"]

[[hosts]]
name = "gpu-alpha"
address = "10.0.0.1"
accelerators = 2

[[hosts]]
name = "gpu-bravo"
address = "10.0.0.2"
accelerators = 1
drain = true

[[hosts]]
name = "cpu-local"
local = true
slots = 2
"""


def top_run(run_id: str, row: int, status: Status, host: str | None = None,
             accelerators: tuple[str, ...] = (), gpus: int = 1, minutes: int = 5,
             acc: list[float] | None = None, message: str = "") -> Run:
    started = NOW - timedelta(minutes=minutes)
    final = status.is_final
    return new_run(run_id, "k" + run_id, "digits", (("lr", "0.1"),), gpus, None, status,
               started, NOW, attempt=1 if host else 0, host=host, accelerators=accelerators,
               started_at=started if host else None, attempt_started_at=started if host else None,
               finished_at=NOW - timedelta(minutes=1) if final else None, row=row,
               message=message,
               metrics={"step": len(acc or []), "acc": (acc or [0])[-1], "loss": 0.25} if acc else {},
               summary={"history": {"acc": acc, "step": list(range(len(acc)))}} if acc else {})


CURVE = [0.1, 0.3, 0.45, 0.6, 0.7, 0.78, 0.84, 0.88, 0.9, 0.91]
RUNS = [
    top_run("1a2b3c4d-k7m2qx", 2, Status.RUNNING, "gpu-alpha", ("0",), acc=CURVE, minutes=42),
    top_run("5e6f7a8b-p3n8zr", 3, Status.SUCCEEDED, "cpu-local", gpus=0, acc=CURVE[::-1]),
    top_run("9c0d1e2f-aa11bb", 4, Status.FAILED, "gpu-alpha", ("1",), acc=[1.0, 2.0],
             message="Traceback (most recent call last):\nValueError: lr must be positive"),
    top_run("3a4b5c6d-q9w8e7", 5, Status.QUEUED, message="waiting for 1 free accelerator"),
]
HOSTS = [
    HostObservation("gpu-alpha", True, NOW - timedelta(seconds=3), load=3.5,
                    disk_free_bytes=120 * 2**30,
                    accelerators=(Accelerator("0", "NVIDIA H100 80GB HBM3", 61440, 81559, 97),
                                  Accelerator("1", "NVIDIA H100 80GB HBM3", 2048, 81559, 4))),
    HostObservation("gpu-bravo", False, NOW - timedelta(seconds=3), error="timed out",
                    down_since=NOW - timedelta(minutes=7)),
    HostObservation("cpu-local", True, NOW - timedelta(seconds=3), load=0.4,
                    disk_free_bytes=30 * 2**30),
]


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "sheetrunner.toml"
    path.write_text(CONFIG)
    store = Store(tmp_path / "state" / "state.sqlite")
    store.save_runs(RUNS)
    store.save_hosts(HOSTS)
    store.close()
    return path


def as_text(renderable, width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, height=40, color_system=None, legacy_windows=False).print(renderable)
    return out.getvalue()


def test_render_fits_80_columns_by_dropping_the_least_useful(config_path: Path):
    config = config_module.load(config_path)
    store = Store(config_path.parent / "state" / "state.sqlite")
    text = as_text(render(store.runs(), store.hosts(), config, 80, now=NOW), 80)
    store.close()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    for name in ("gpu-alpha", "gpu-bravo", "cpu-local", "1a2b3c4d-k7m2qx", "running", "failed",
                 "queued", "succeeded", "97%", "down 7m"):
        assert name in text, (name, text)
    busiest = next(line for line in lines if "97%" in line)
    assert "drain" in text and "1a2b3c4d-k7m2qx" in busiest  # who holds the accelerator
    assert any(ch in text for ch in SPARK_BLOCKS[1:])
    assert "message" not in text and "disk free" not in text  # dropped when narrow


def test_render_at_160_columns_shows_everything(config_path: Path):
    config = config_module.load(config_path)
    store = Store(config_path.parent / "state" / "state.sqlite")
    text = as_text(render(store.runs(), store.hosts(), config, 160, now=NOW), 160)
    store.close()
    assert max(len(line) for line in text.splitlines()) <= 160, text
    for name in ("message", "disk free", "model", "NVIDIA H100", "60.0/80G", "0/2 slots",
                 "ValueError: lr must be", "free", "42m00s", "acc=0.91", "█"):
        assert name in text, (name, text)
    assert curve_text(RUNS[0], config, 24) == "▁▃▄▅▆▇▇███"


def test_render_gives_way_on_a_short_screen(config_path: Path):
    config = config_module.load(config_path)
    many = [top_run(f"{i:08x}-aaaaaa", i, Status.SUCCEEDED, "cpu-local", gpus=0) for i in range(50)]
    text = as_text(render([*RUNS, *many], {h.host: h for h in HOSTS}, config, 100, height=24,
                          now=NOW), 100)
    assert len(text.splitlines()) <= 24, text
    assert "1a2b3c4d-k7m2qx" in text and "3a4b5c6d-q9w8e7" in text  # unfinished runs stay
    assert "older finished runs not shown" in text


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_top_in_a_real_terminal(config_path: Path):
    session = f"sheetrunner-top-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    command = f"{sys.executable} -m sheetrunner.top -c {config_path} -n 0.5"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", command],
                   check=True, env=env, cwd=ROOT)
    try:
        screen = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.5)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                    capture_output=True, text=True).stdout
            if "1a2b3c4d-k7m2qx" in screen:
                break
        for name in ("gpu-alpha", "gpu-bravo", "cpu-local", "1a2b3c4d-k7m2qx", "running"):
            assert name in screen, (name, screen)
        assert any(ch in screen for ch in SPARK_BLOCKS[1:]), screen
        assert max(len(line) for line in screen.splitlines()) <= 120, screen
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and subprocess.run(
                ["tmux", "has-session", "-t", session], capture_output=True).returncode == 0:
            time.sleep(0.2)
        assert subprocess.run(["tmux", "has-session", "-t", session],
                              capture_output=True).returncode != 0, "q did not quit top"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
