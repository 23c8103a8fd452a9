"""Recovery from the faults a lab meets, timed: a job that crashes, a job that hangs, a host
that dies (with on_host_lost = "requeue"), a preempted host brought back by its repair
command. Each runs the real daemon against real processes (the local host, or real sshd
hosts from tests/sshd.py), checks that nothing ran twice at once and no process of the row
outlived it, and hands the time from the fault to the row running again to
scripts/reliability.py (docs/reliability.md). The times are reported, never asserted."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import tomli_w

from sheetrunner.config import load
from sheetrunner.daemon import build
from tests.chaos.lab import all_final, make_lab, our_processes, record, row
from tests.helpers import guard_report, kill_jobs_under, read_workbook, write_workbook

try:
    from tests.sshd import REVIVE_SSHD, SSHD, SshdLab, sshd_lab  # noqa: F401  (a fixture)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sshd import REVIVE_SSHD, SSHD, SshdLab, sshd_lab  # noqa: F401

FAKE_JOB = Path(__file__).resolve().parents[1] / "jobs" / "fake_job.py"


def _cycle_until(daemon, path: Path, done, timeout_s: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        daemon.cycle()
        rows = read_workbook(path)
        if done(rows):
            return rows
        assert time.monotonic() < deadline, f"timed out; sheet shows {rows}"
        time.sleep(0.1)


def _running_again(rows: list[dict]) -> bool:
    return rows[0].get("status") == "running" and rows[0].get("attempt") == 2


def test_a_crashed_job_runs_again_from_its_next_attempt(tmp_path):
    """job crash → running again (backoff 0.5 s)."""
    lab = make_lab(tmp_path / "lab", tmp_path / "guard", [row("r", steps=40, fail_attempts=1)],
                   backoff=0.5)
    daemon = lab.daemon()
    try:
        _cycle_until(daemon, lab.workbook, lambda rows: rows[0].get("status") == "running")
        _cycle_until(daemon, lab.workbook,
                     lambda _: any((lab.dir / "host").rglob("runs/*/1/exit_code")), 30)
        crashed_at = next((lab.dir / "host").rglob("runs/*/1/exit_code")).stat().st_mtime
        _cycle_until(daemon, lab.workbook, _running_again)
        took = time.time() - crashed_at
        _cycle_until(daemon, lab.workbook, all_final)
    finally:
        daemon.close()
    assert lab.statuses() == ["succeeded"] and guard_report(lab.guard) == ({"r": 2}, [])
    escaped = our_processes(lab.dir / "host")
    record(recovery_s=round(took, 2), escaped=len(escaped), fault="exit code 3 on attempt 1")
    assert escaped == []


def test_a_hung_job_is_stopped_and_runs_again(tmp_path):
    """stalled job → killed → running again (hang_timeout 2 s)."""
    lab = make_lab(tmp_path / "lab", tmp_path / "guard", [row("r", steps=30)],
                   hang_timeout=2, backoff=0.5)
    book = lab.workbook
    import openpyxl

    sheet = openpyxl.load_workbook(book)
    ws = sheet.worksheets[0]
    ws.cell(row=1, column=ws.max_column + 1).value = "--hang-attempts"
    ws.cell(row=2, column=ws.max_column).value = 1
    sheet.save(book)
    daemon = lab.daemon()
    try:
        _cycle_until(daemon, book, lambda rows: rows[0].get("status") == "running")
        hung_at = time.time()  # it never beats: the fault is from its start
        _cycle_until(daemon, book, _running_again)
        took = time.time() - hung_at
        _cycle_until(daemon, book, all_final)
    finally:
        daemon.close()
    assert lab.statuses() == ["succeeded"]
    starts, concurrent = guard_report(lab.guard)
    assert starts == {"r": 2} and concurrent == []
    escaped = our_processes(lab.dir / "host")
    record(recovery_s=round(took, 2), escaped=len(escaped), fault="no heartbeat from the start")
    assert escaped == []


def _ssh_config(tmp_path: Path, lab: SshdLab, hosts: list, **daemon: object) -> Path:
    raw = {
        "sheet": {"path": "experiments.xlsx"},
        "daemon": {"poll_interval": 0.5, "state_dir": "state", **daemon},
        "defaults": {"retries": 2, "backoff": 0.5, "launch_timeout": 10},
        "jobs": {"fake": {"command": ["{python}", str(FAKE_JOB)],
                          "env": {"FAKE_GUARD_DIR": str(tmp_path / "guard")}}},
        "hosts": [{
            "name": name, "accelerators": 1, "address": fake.address, "port": fake.port,
            "user": fake.user, "root": str(fake.root_dir), "identity": str(lab.client_key),
            "python": sys.executable, **extra,
        } for name, fake, extra in hosts],
        "ssh": {"known_hosts": str(lab.known_hosts), "connect_timeout": 2, "keepalive": 1,
                "config_file": str(tmp_path / "no-ssh-config")},
    }
    path = tmp_path / "sheetrunner.toml"
    path.write_text(tomli_w.dumps(raw))
    write_workbook(tmp_path / "experiments.xlsx", ["job", "--tag", "--steps", "--sleep", "gpus"],
                   [["fake", "r", 300, 0.1, 1]])
    return path


@pytest.mark.sshd
def test_a_dead_host_with_requeue_has_its_run_running_elsewhere(tmp_path, sshd_lab):
    """host killed (sshd and its jobs) with on_host_lost = "requeue" → running on the other."""
    a, b = sshd_lab.add_host("gpu-a", gpus=1), sshd_lab.add_host("gpu-b", gpus=1)
    path = _ssh_config(tmp_path, sshd_lab, [("gpu-a", a, {}), ("gpu-b", b, {})],
                       on_host_lost="requeue", host_lost_timeout=2)
    daemon = build(load(path))
    book = tmp_path / "experiments.xlsx"
    try:
        first = _cycle_until(daemon, book, lambda rows: rows[0].get("status") == "running")[0]
        dead = a if first["host"] == "gpu-a" else b
        dead.kill()
        kill_jobs_under(dead.root_dir)  # the machine is gone, its processes with it
        died_at = time.time()
        moved = _cycle_until(daemon, book, _running_again)[0]
        took = time.time() - died_at
    finally:
        daemon.close()
        for fake in (a, b):
            kill_jobs_under(fake.root_dir)
    assert moved["host"] != first["host"]
    assert guard_report(tmp_path / "guard")[1] == []
    escaped = our_processes(a.root_dir) + our_processes(b.root_dir)
    record(recovery_s=round(took, 2), escaped=len(escaped), fault="host killed, requeue")
    assert escaped == []


@pytest.mark.sshd
def test_a_preempted_host_is_repaired_and_its_run_runs_again(tmp_path, sshd_lab):
    """host preempted (sshd and its jobs gone) → repair command → rejoined → running again."""
    import os
    import signal

    a = sshd_lab.add_host("gpu-a", gpus=1)
    script = tmp_path / "stand_in.py"
    script.write_text(REVIVE_SSHD)
    pid_file = tmp_path / "sshd.pid"
    repair = {"repair_after": 1, "repair": [sys.executable, str(script), SSHD, str(a.config_path),
                                            str(a.log_path), str(pid_file), str(a.port), "0"]}
    path = _ssh_config(tmp_path, sshd_lab, [("gpu-a", a, repair)])
    daemon = build(load(path))
    book = tmp_path / "experiments.xlsx"
    try:
        _cycle_until(daemon, book, lambda rows: rows[0].get("status") == "running")
        a.kill()
        kill_jobs_under(a.root_dir)
        preempted_at = time.time()
        again = _cycle_until(daemon, book, _running_again, timeout_s=90)[0]
        took = time.time() - preempted_at
    finally:
        daemon.close()
        kill_jobs_under(a.root_dir)
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except OSError:
                pass
    assert again["host"] == "gpu-a"
    assert guard_report(tmp_path / "guard")[1] == []
    escaped = our_processes(a.root_dir)
    record(recovery_s=round(took, 2), escaped=len(escaped), fault="host preempted, repaired")
    assert escaped == []
