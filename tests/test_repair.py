"""`[[hosts]] repair`: a host unreachable for `repair_after` seconds gets its repair command run
in the background, bounded in time, with backoff between tries; `pool` shows it; a repaired
host rejoins by itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import tomli_w
from helpers import Clock, kill_jobs_under, read_workbook, write_workbook

from sheetrunner import repair as repair_module
from sheetrunner.config import HostConfig, load
from sheetrunner.daemon import build
from sheetrunner.repair import Repairs
from sheetrunner.views import pool_json, pool_rows

try:
    from tests.sshd import REVIVE_SSHD, SSHD, SshdLab, sshd_lab, wait_for_port  # noqa: F401  (a fixture)
except ImportError:
    from sshd import REVIVE_SSHD, SSHD, SshdLab, sshd_lab, wait_for_port  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
FAKE_JOB = REPO / "tests" / "jobs" / "fake_job.py"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def host(argv: list[str], after: float = 60) -> HostConfig:
    return HostConfig(name="tpu-a", address="10.0.0.9", repair=tuple(argv), repair_after_s=after)


def wait_until(check, timeout_s: float = 10):
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return found


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code), *args]


# -- the schedule, without hosts ------------------------------------------------------------------


def test_a_repair_starts_after_repair_after_and_runs_in_the_background(tmp_path):
    clock = Clock(T0)
    repairs = Repairs(tmp_path / "state", tmp_path, clock=clock)
    config = host(python("import time; time.sleep(0.6)"), after=60)
    down = {"tpu-a": T0}
    assert repairs.tick([config], down, T0 + timedelta(seconds=59)) == []
    assert repairs.snapshot() == {}
    started = time.monotonic()
    clock.advance(61)
    repairs.tick([config], down, clock())
    assert time.monotonic() - started < 0.3  # the cycle does not wait for it
    state = repairs.snapshot()["tpu-a"]
    assert state["state"] == "repairing" and state["tries"] == 1
    wait_until(lambda: repairs.snapshot()["tpu-a"]["pid"])
    assert repair_module.load(tmp_path / "state")["tpu-a"]["state"] == "repairing"
    wait_until(lambda: repairs.snapshot()["tpu-a"]["state"] == "waiting")
    assert repairs.tick([config], down, T0 + timedelta(seconds=62)) == ["tpu-a"]
    state = repairs.snapshot()["tpu-a"]
    assert state["ok"] is True and state["last_result"] == "exit 0" and state["tries"] == 1
    # the host answers again: its repair is forgotten
    repairs.tick([config], {}, T0 + timedelta(seconds=70))
    assert repairs.snapshot() == {} and repair_module.load(tmp_path / "state") == {}


def test_failed_tries_back_off_doubling_up_to_the_cap_and_say_why(tmp_path):
    clock = Clock(T0 + timedelta(seconds=5))
    repairs = Repairs(tmp_path / "state", tmp_path, backoff_s=10, backoff_max_s=25, clock=clock)
    config = host(python("import sys; print('quota exceeded'); sys.exit(3)"), after=1)
    down = {"tpu-a": T0}
    waits = []
    for _ in range(4):
        repairs.tick([config], down, clock())
        wait_until(lambda: repairs.snapshot()["tpu-a"]["state"] == "waiting")
        state = repairs.snapshot()["tpu-a"]
        assert state["ok"] is False and state["last_result"] == "exit 3: quota exceeded"
        next_try = datetime.fromisoformat(state["next_try"])
        waits.append((next_try - clock()).total_seconds())
        clock.advance(1)
        repairs.tick([config], down, clock())  # too early: no new try
        assert repairs.snapshot()["tpu-a"]["tries"] == len(waits)
        clock.now = next_try
    assert waits == [10, 20, 25, 25]


def test_a_try_past_its_time_is_killed_with_its_whole_process_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open(sys.argv[1], "w").write(str(child.pid))
        time.sleep(60)
    """
    repairs = Repairs(tmp_path / "state", tmp_path, timeout_s=1.0)
    config = host(python(code, str(pid_file)), after=1)
    repairs.tick([config], {"tpu-a": T0}, T0 + timedelta(seconds=5))
    state = wait_until(lambda: repairs.snapshot()["tpu-a"]["state"] == "waiting" and
                       repairs.snapshot()["tpu-a"], timeout_s=15)
    assert state["last_result"].startswith("timed out after 1 s, killed")
    child = int(pid_file.read_text())
    wait_until(lambda: not _alive(child), timeout_s=10)


def test_the_command_is_argv_never_a_shell_and_runs_in_the_config_directory(tmp_path):
    code = "import sys; open(sys.argv[1], 'w').write('ok')"
    repairs = Repairs(tmp_path / "state", tmp_path)
    config = host(python(code, "a; touch pwned"), after=1)
    repairs.tick([config], {"tpu-a": T0}, T0 + timedelta(seconds=5))
    wait_until(lambda: repairs.snapshot()["tpu-a"]["state"] == "waiting")
    assert (tmp_path / "a; touch pwned").read_text() == "ok"
    assert not (tmp_path / "pwned").exists()


def test_a_missing_program_is_a_failed_try_not_a_crash(tmp_path):
    repairs = Repairs(tmp_path / "state", tmp_path)
    config = host(["/nonexistent/gcloud", "start"], after=1)
    repairs.tick([config], {"tpu-a": T0}, T0 + timedelta(seconds=5))
    state = wait_until(lambda: repairs.snapshot()["tpu-a"]["state"] == "waiting" and
                       repairs.snapshot()["tpu-a"])
    assert state["ok"] is False and "could not start /nonexistent/gcloud" in state["last_result"]


def test_closing_stops_a_running_try_and_a_dead_daemons_try_shows_interrupted(tmp_path):
    repairs = Repairs(tmp_path / "state", tmp_path)
    config = host(python("import time; time.sleep(60)"), after=1)
    repairs.tick([config], {"tpu-a": T0}, T0 + timedelta(seconds=5))
    pid = wait_until(lambda: repairs.snapshot()["tpu-a"]["pid"])
    repairs.close()
    wait_until(lambda: not _alive(pid))
    assert repair_module.load(tmp_path / "state") == {}
    # a daemon SIGKILLed mid-repair leaves "repairing" behind: `pool` sees its process gone
    (tmp_path / "state" / "repairs.json").write_text(json.dumps(
        {"tpu-a": {"state": "repairing", "tries": 1, "pid": pid, "last_result": ""}}))
    assert repair_module.load(tmp_path / "state")["tpu-a"]["last_result"] == "interrupted"


def test_the_pool_view_and_tab_show_repairing_with_the_last_try_and_its_result():
    config = host(["true"])
    repairing = {"state": "repairing", "tries": 2, "last_try": T0.isoformat(),
                 "last_result": "exit 1", "next_try": None}
    (entry,) = pool_json([config], {}, [], {"tpu-a": T0}, repairs={"tpu-a": repairing})
    assert entry["state"] == "repairing" and entry["repair"]["tries"] == 2
    assert ", repairing (try 2 since 2026-01-01" in pool_rows([entry], UTC)[1][1]
    waiting = {**repairing, "state": "waiting", "next_try": (T0 + timedelta(hours=1)).isoformat()}
    (entry,) = pool_json([config], {}, [], {"tpu-a": T0}, repairs={"tpu-a": waiting})
    assert entry["state"] == "down"
    cell = pool_rows([entry], UTC)[1][1]
    assert "repair try 2 at 2026-01-01 00:00 UTC: exit 1; next try 2026-01-01 01:00 UTC" in cell
    (entry,) = pool_json([config], {}, [], {"tpu-a": T0})
    assert entry["repair"] is None and entry["state"] == "down"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


# -- a preempted fake host, repaired by a stand-in script, end to end ------------------------------

@pytest.mark.sshd
def test_a_preempted_host_is_repaired_shown_repairing_and_rejoins(tmp_path, sshd_lab):
    fake = sshd_lab.add_host("gpu-a", gpus=1)
    script = tmp_path / "stand_in_repair.py"
    script.write_text(REVIVE_SSHD)
    pid_file = tmp_path / "repaired-sshd.pid"
    write_workbook(tmp_path / "experiments.xlsx", ["job", "--steps", "--sleep", "gpus"],
                   [["fake", 150, 0.1, 1]])
    raw = {
        "sheet": {"path": "experiments.xlsx", "pool_tab": "pool"},
        "daemon": {"poll_interval": 0.5, "state_dir": "state"},
        "defaults": {"retries": 1, "backoff": 0.5, "launch_timeout": 10},
        "jobs": {"fake": {"command": ["{python}", str(FAKE_JOB)]}},
        "hosts": [{
            "name": "gpu-a", "accelerators": 1, "address": fake.address, "port": fake.port,
            "user": fake.user, "root": str(fake.root_dir), "identity": str(sshd_lab.client_key),
            "python": sys.executable, "repair_after": 1,
            "repair": [sys.executable, str(script), SSHD, str(fake.config_path),
                       str(fake.log_path), str(pid_file), str(fake.port), "3"],
        }],
        "ssh": {"known_hosts": str(sshd_lab.known_hosts), "connect_timeout": 3, "keepalive": 2,
                "config_file": str(tmp_path / "no-ssh-config")},
    }
    path = tmp_path / "sheetrunner.toml"
    path.write_text(tomli_w.dumps(raw))
    daemon = build(load(path))
    rows = read_workbook(path.parent / "experiments.xlsx")
    try:
        rows = _cycle_until(daemon, lambda rows: rows[0].get("status") == "running")
        fake.kill()  # preempted: sshd gone (the job, detached, goes on as on a stopped VM's disk)
        _cycle_until(daemon, lambda _: "gpu-a" in daemon.repairs.snapshot(), timeout_s=30)
        assert daemon.repairs.snapshot()["gpu-a"]["state"] == "repairing"
        shown = subprocess.run(
            [sys.executable, "-m", "sheetrunner.cli", "pool", "--json", "-c", str(path)],
            capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        (entry,) = json.loads(shown.stdout)
        assert entry["state"] == "repairing" and entry["repair"]["tries"] == 1, entry
        assert not entry["reachable"]
        daemon.cycle()  # the pool tab, written this cycle, says so too
        tab = [[c for c in row] for row in _tab(path.parent / "experiments.xlsx", "pool")]
        assert "repairing (try 1" in str(tab[1][1]), tab
        _cycle_until(daemon, lambda _: daemon.pool.last["gpu-a"].reachable, timeout_s=40)
        rows = _cycle_until(daemon, lambda rows: rows[0].get("status") in ("running", "succeeded"))
        assert rows[0]["attempt"] == 1  # the same attempt: nothing started twice
        daemon.cycle()
        assert daemon.repairs.snapshot() == {}  # reachable again: the repair is forgotten
        assert repair_module.load(path.parent / "state") == {}
        log = (path.parent / "state" / "repair" / "gpu-a.log")
        assert log.exists()
    finally:
        daemon.close()
        kill_jobs_under(fake.root_dir)
        if pid_file.exists():
            with _suppress():
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _cycle_until(daemon, done, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while True:
        daemon.cycle()
        rows = read_workbook(daemon.config.sheet.path)
        if done(rows):
            return rows
        assert time.monotonic() < deadline, f"timed out; sheet shows {rows}"
        time.sleep(0.2)


def _tab(path: Path, name: str):
    import openpyxl

    return openpyxl.load_workbook(path)[name].iter_rows(values_only=True)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)
