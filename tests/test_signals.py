"""Ctrl-C and SIGTERM at any point of a cycle: the cycle finishes, the store closes after it,
nothing is lost and nothing prints a traceback.

A terminal's Ctrl-C reaches the whole foreground process group, so the daemon is started in
a process group of its own (start_new_session) and signalled with os.killpg, as a terminal
would: the signal reaches the daemon and everything it started in its own group. The
local transport's subprocesses (probes, launches) run in their own session, so a probe in
flight is not killed (which made the host look unreachable and its healthy runs lost).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import HEADER, kill_jobs_under, local_config, read_workbook, write_workbook

ROWS = [["fake", 40, 0.1, None, 0], ["fake", 40, 0.1, None, 0], ["fake", 1, 0.01, None, 0]]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sheetrunner.cli", *args]


def start_daemon(tmp_path: Path, rows: list[list] = ROWS, slots: int = 3) -> subprocess.Popen:
    """The daemon in a process group of its own (as a shell gives a foreground job), returned
    once it holds its state directory's lock: from then on it is started, its signals set."""
    if not (tmp_path / "experiments.xlsx").exists():
        write_workbook(tmp_path / "experiments.xlsx", HEADER, rows)
        local_config(tmp_path, slots=slots)
    lock = tmp_path / "state" / "daemon.lock"
    lock.unlink(missing_ok=True)
    proc = subprocess.Popen(
        cli("daemon", "-c", str(tmp_path / "sheetrunner.toml")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not (lock.exists() and lock.read_text().strip() == str(proc.pid)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return proc


def ctrl_c(proc: subprocess.Popen) -> tuple[str, str]:
    """SIGINT to the daemon's whole process group, as a terminal's Ctrl-C; its output."""
    os.killpg(proc.pid, signal.SIGINT)
    return proc.communicate(timeout=60)


def ps(tmp_path: Path) -> list[dict]:
    done = subprocess.run(
        cli("ps", "--json", "--all", "-c", str(tmp_path / "sheetrunner.toml")),
        capture_output=True, text=True, timeout=60, check=True,
    )
    return json.loads(done.stdout)


def attempts_on_host(root: Path) -> set[tuple[str, int]]:
    """Every attempt directory the agent created (a launch that reached the host)."""
    return {
        (d.parent.name, int(d.name))
        for d in root.glob("*/hosts/local/runs/*/*")
        if d.is_dir() and d.name.isdigit()
    }


def check_clean_stop(tmp_path: Path, proc: subprocess.Popen, err: str) -> list[dict]:
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert "closed database" not in err and "JobLookupError" not in err, err
    entries = ps(tmp_path)
    recorded = {e["id"]: e for e in entries if e["id"]}
    for run_id, attempt in attempts_on_host(tmp_path / "host"):
        assert run_id in recorded, f"attempt {run_id}/{attempt} started but not in the store"
        assert recorded[run_id]["attempt"] >= attempt, (run_id, attempt, recorded[run_id])
    assert not [e for e in entries if e["status"] == "lost"], entries
    return entries


@pytest.fixture
def cleanup(tmp_path):
    yield
    kill_jobs_under(tmp_path / "host")


@pytest.mark.parametrize("delay_s", [0.0, 0.1, 0.3, 0.6, 1.0])
def test_ctrl_c_soon_after_start_exits_0_and_loses_nothing(tmp_path, cleanup, delay_s):
    proc = start_daemon(tmp_path)
    time.sleep(delay_s)
    _, err = ctrl_c(proc)
    check_clean_stop(tmp_path, proc, err)


def wait_for(tmp_path: Path, done, timeout_s: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            rows = read_workbook(tmp_path / "experiments.xlsx")
        except Exception:  # noqa: BLE001 - the daemon may be replacing the file right now
            rows = []
        if rows and done(rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)


def test_ctrl_c_mid_run_finishes_the_cycle_and_the_runs_go_on(tmp_path, cleanup):
    proc = start_daemon(tmp_path)
    wait_for(tmp_path, lambda rows: rows[0].get("status") == "running")
    time.sleep(0.3)  # somewhere in a later cycle: a probe is likely in flight
    _, err = ctrl_c(proc)
    entries = check_clean_stop(tmp_path, proc, err)
    assert "SIGINT received: finishing the current cycle" in err
    assert {e["status"] for e in entries if e["row"] in (2, 3)} <= {"running", "launching"}


def test_ctrl_c_twice_and_sigterm_during_cycles_all_stop_cleanly(tmp_path, cleanup):
    proc = start_daemon(tmp_path)
    wait_for(tmp_path, lambda rows: any(r.get("status") for r in rows))
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # an impatient second Ctrl-C
    _, err = proc.communicate(timeout=60)
    check_clean_stop(tmp_path, proc, err)
    # and again, stopped with SIGTERM (systemd) this time, over the same state
    proc = start_daemon(tmp_path)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    check_clean_stop(tmp_path, proc, err)
    assert "SIGTERM received" in err


def test_a_burst_of_ctrl_c_at_many_moments_never_loses_a_launch(tmp_path, cleanup):
    """Signals spread over the first cycles, where launches happen: each daemon restarted on
    the same state adopts what the last one started, and every start is in the store."""
    for delay_s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.7):
        proc = start_daemon(tmp_path, [["fake", 30, 0.1, None, 0]] * 4, slots=4)
        time.sleep(delay_s)
        _, err = ctrl_c(proc)
        check_clean_stop(tmp_path, proc, err)


def test_once_with_json_logs_writes_one_object_per_line_naming_run_and_host(tmp_path, cleanup):
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [["fake", 1, 0.01, None, 0]])
    local_config(tmp_path)
    done = subprocess.run(
        cli("once", "--log-format", "json", "-c", str(tmp_path / "sheetrunner.toml")),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(e) for e in lines)
    launched = [e for e in lines if e["message"].startswith("launched run=")]
    assert launched, lines
    assert launched[0]["host"] == "local" and launched[0]["run"] in launched[0]["message"]
    assert launched[0]["level"] == "INFO" and launched[0]["logger"] == "sheetrunner.daemon"
    assert launched[0]["time"].endswith("+00:00")


def test_daemon_json_logs_escape_a_cell_with_a_newline(tmp_path, cleanup):
    header = [*HEADER[:4], "--echo", *HEADER[4:]]
    write_workbook(tmp_path / "experiments.xlsx", header,
                   [["fake", 1, 0.01, None, "a\nFORGED line", 0]])
    local_config(tmp_path)
    done = subprocess.run(
        cli("daemon", "--exit-when-done", "--log-format", "json", "-c",
            str(tmp_path / "sheetrunner.toml")),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for line in done.stderr.splitlines():
        entry = json.loads(line)  # every line is a whole object: the newline stayed inside
        assert not entry["message"].startswith("FORGED")
    assert any("FORGED" in json.loads(line)["message"] for line in done.stderr.splitlines())
    assert read_workbook(tmp_path / "experiments.xlsx")[0]["status"] == "succeeded"


# -- nothing holds a cycle: the Sheets API gets a budget of seconds, a kill returns at once ------


@pytest.fixture
def emu(monkeypatch):
    from sheets_emulator import SheetsEmulator

    from sheetrunner.sheets.google import ENDPOINT_ENV

    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    with SheetsEmulator() as emulator:
        yield emulator


def google(emu, **options):
    """A backend with the default retries (6 attempts, 1 s doubling to 32 s: about a minute
    of retrying without a budget), on the emulator, after its start-up reads."""
    from sheetrunner.sheets.google import GoogleSheet

    key = emu.create_spreadsheet({"Runs": [["job", "id", "status"], ["fake", "", ""]]})
    backend = GoogleSheet(key, "Runs", credentials="none", endpoint=emu.url, **options)
    backend.read()
    emu.reset_counts()
    return backend


def test_a_storm_of_503s_makes_one_read_give_up_within_the_budget(emu):
    from sheetrunner.errors import SheetUnavailable
    from sheetrunner.sheets.google_http import cycle_budget

    backend = google(emu)
    emu.fail_next(1000, 503)
    started = time.monotonic()
    with cycle_budget(3.0), pytest.raises(SheetUnavailable, match="budget of 3 s") as raised:
        backend.read()
    assert time.monotonic() - started < 3.5
    assert "HTTP 503" in str(raised.value) and "next cycle" in str(raised.value)
    assert emu.counts["read"] >= 2  # it did retry, within the budget
    emu.clear_faults()
    assert backend.read().value(2, "job") == "fake"  # the next cycle reads as usual


def test_a_slow_api_is_cut_off_at_the_budget_and_a_write_after_it_is_kept(emu):
    from sheetrunner.errors import SheetUnavailable
    from sheetrunner.sheet.table import RowUpdate, SheetWrite
    from sheetrunner.sheets.google_http import cycle_budget

    backend = google(emu)  # a 30 s timeout per request
    emu.latency_s = 5.0
    started = time.monotonic()
    with cycle_budget(1.0):
        with pytest.raises(SheetUnavailable):
            backend.read()
        assert time.monotonic() - started < 2.0
        write = SheetWrite(rows=[RowUpdate(2, "", {"status": "queued"})])
        with pytest.raises(SheetUnavailable, match="budget"):
            backend.write(write)  # the cycle's budget is spent: given up at once
    assert time.monotonic() - started < 2.5
    assert backend.pending is not None  # kept for the next cycle's write


def test_a_cycle_on_an_unreachable_google_sheet_goes_on_within_the_budget(emu, tmp_path, cleanup):
    import helpers

    from sheetrunner.daemon import build

    key = emu.create_spreadsheet({"experiments": [HEADER, ["fake", 1, 0.01, None, 0]]})
    sheet = "\n".join([f'url = "https://docs.google.com/spreadsheets/d/{key}/edit"',
                       'worksheet = "experiments"', 'credentials = "none"',
                       f'endpoint = "{emu.url}"', "retry_budget = 2"])
    daemon = build(helpers.local_config(tmp_path, sheet=sheet))
    try:
        emu.fail_next(1000, 503)
        started = time.monotonic()
        report = daemon.cycle()
        assert not report.sheet_ok and time.monotonic() - started < 3.5
        emu.clear_faults()
        deadline = time.monotonic() + 30
        while daemon.cycle().launched == [] and time.monotonic() < deadline:
            time.sleep(0.1)  # the lease first, then the launch
        assert daemon.store.runs()
    finally:
        daemon.close()


def test_a_kill_does_not_wait_out_the_grace(tmp_path):
    """HostAgent.kill's timeout is the probe timeout alone: the agent signals and returns,
    its supervisor sends SIGKILL after the grace (stop_grace) on its own."""
    from sheetrunner.config import HostConfig
    from sheetrunner.pool.hosts import HostAgent
    from sheetrunner.pool.transport import CommandResult

    seen = []

    class Recorder:
        def run(self, argv, *, stdin=b"", timeout_s=30.0):
            seen.append((list(argv), timeout_s))
            return CommandResult(0, b'{"killed": true, "state": "running"}', b"")

    agent = HostAgent(HostConfig(name="h", local=True), Recorder(), timeout_s=7.0,
                      namespace="testns000001")
    assert agent.kill("1a2b3c4d-k7m2qx", 3, grace_s=600) == "running"
    (argv, timeout_s), = seen
    assert timeout_s == 7.0 and argv[-3:] == ["1a2b3c4d-k7m2qx", "3", "600"]


def test_the_daemon_passes_stop_grace_to_every_kill(tmp_path):
    from sheetrunner import config as config_module
    from sheetrunner.daemon import build
    from sheetrunner.reconcile import Kill

    write_workbook(tmp_path / "experiments.xlsx", HEADER, [])
    path = local_config(tmp_path).path
    path.write_text(path.read_text().replace("launch_timeout = 10",
                                             "launch_timeout = 10\nstop_grace = 42"))
    daemon = build(config_module.load(path))
    calls = []

    class Agent:
        def kill(self, run_id, attempt, grace_s=10.0):
            calls.append((run_id, attempt, grace_s))
            return "exited"

    real = daemon.pool.agents
    try:
        daemon.pool.agents = {"local": Agent()}
        assert daemon._kill([Kill("1a2b3c4d-k7m2qx", 2, "local", "stop")]) == ["1a2b3c4d-k7m2qx"]
        assert calls == [("1a2b3c4d-k7m2qx", 2, 42.0)]
    finally:
        daemon.pool.agents = real
        daemon.close()
