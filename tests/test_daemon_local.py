"""The whole loop on the embedded default: a real workbook, this machine, real processes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import helpers
import openpyxl
import pytest
from helpers import (
    FAKE_JOB,
    HEADER,
    cycle_until,
    fill_of,
    local_config,
    read_workbook,
    write_workbook,
)

from sheetrunner.daemon import Daemon, build
from sheetrunner.model import STATUS_COLOURS, Status


def start(tmp_path: Path, rows: list[list], header: list[str] = HEADER, **cfg) -> Daemon:
    write_workbook(tmp_path / "experiments.xlsx", header, rows)
    return build(local_config(tmp_path, **cfg))


def statuses(rows: list[dict]) -> list[str]:
    return [r.get("status") for r in rows]


def all_in(*wanted: str) -> Callable[[list[dict]], bool]:
    return lambda rows: all(s in wanted for s in statuses(rows))


def test_rows_run_to_success_and_the_sheet_shows_ids_metrics_and_colours(tmp_path):
    daemon = start(tmp_path, [["fake", 3, 0.05, None, 0], ["fake", 2, 0.05, None, 0]])
    first = cycle_until(daemon, lambda rows: all(r["status"] for r in rows))
    assert set(statuses(first)) <= {"launching", "running"}
    rows = cycle_until(daemon, all_in("succeeded"))
    assert len({r["id"] for r in rows}) == 2
    assert rows[0]["metrics"] == "step=3 loss=0.3333" and rows[0]["attempt"] == 1
    assert rows[0]["host"] == "local" and Path(rows[0]["log"]).is_file()
    assert fill_of(daemon.config.sheet.path, 2) == STATUS_COLOURS[Status.SUCCEEDED]


def test_a_crash_is_retried_and_then_succeeds(tmp_path):
    header = [*HEADER[:4], "--fail-attempts", *HEADER[4:]]
    daemon = start(tmp_path, [["fake", 1, 0.01, None, 1, 0]], header)
    rows = cycle_until(daemon, all_in("succeeded"))
    assert rows[0]["attempt"] == 2


def test_crashes_past_the_retries_fail_the_row_with_the_reason(tmp_path):
    daemon = start(tmp_path, [["fake", 1, 0.01, 1, 0]], retries=1, backoff=1)
    rows = cycle_until(daemon, lambda rows: rows[0]["status"] == "retrying")
    assert rows[0]["message"].startswith("retry 1/1 in 1s after exit code 1 on attempt 1")
    rows = cycle_until(daemon, all_in("failed"))
    assert rows[0]["message"].startswith("no retries left (1 allowed) after exit code 1")
    assert "RuntimeError: failing on purpose with 1 (attempt 2)" in rows[0]["message"]
    assert rows[0]["attempt"] == 2
    launches = [e for e in daemon.store.events(rows[0]["id"]) if e[2] == "launch-intent"]
    assert len(launches) == 2
    assert fill_of(daemon.config.sheet.path, 2) == STATUS_COLOURS[Status.FAILED]


def test_a_hung_run_is_stalled_killed_and_failed_when_no_retries_are_left(tmp_path):
    header = [*HEADER[:4], "--hang", *HEADER[4:]]
    daemon = start(tmp_path, [["fake", 1, 0.01, None, 1, 0]], header, hang_timeout=2, retries=0)
    rows = cycle_until(daemon, all_in("running"))
    pid_file = Path(rows[0]["log"]).parent / "pid"
    pid = int(pid_file.read_text().split()[0])
    rows = cycle_until(daemon, all_in("failed"))
    assert "stalled: no heartbeat" in rows[0]["message"]
    assert not _alive(pid)


def test_stop_kills_a_running_row(tmp_path):
    header = [*HEADER[:4], "--hang", *HEADER[4:]]
    daemon = start(tmp_path, [["fake", 1, 0.01, None, 1, 0]], header)
    rows = cycle_until(daemon, all_in("running"))
    pid = int((Path(rows[0]["log"]).parent / "pid").read_text().split()[0])
    _edit(daemon.config.sheet.path, lambda s: s.cell(row=2, column=header.index("action") + 1, value="stop"))
    rows = cycle_until(daemon, all_in("stopped"))
    assert not _alive(pid)


def test_a_row_added_and_rows_sorted_while_running_land_on_the_right_rows(tmp_path):
    daemon = start(tmp_path, [["fake", 300, 0.1, None, 0], ["fake", 1, 0.01, None, 0]])
    cycle_until(daemon, lambda rows: rows[1]["status"] == "succeeded")
    ids = [r["id"] for r in read_workbook(daemon.config.sheet.path)]

    def sort_and_add(sheet):
        values = [[c.value for c in row] for row in sheet.iter_rows(min_row=2)]
        for r, row in enumerate([values[1], values[0], ["fake", 2, 0.01, None, 0]], start=2):
            for c, v in enumerate(row, start=1):
                sheet.cell(row=r, column=c, value=v)

    _edit(daemon.config.sheet.path, sort_and_add)
    rows = cycle_until(daemon, lambda rows: rows[2].get("status") == "succeeded")
    assert [r["id"] for r in rows[:2]] == [ids[1], ids[0]]
    assert rows[0]["status"] == "succeeded" and rows[0]["--steps"] == 1
    assert rows[1]["status"] == "running" and rows[1]["--steps"] == 300
    assert rows[2]["id"] not in ids
    daemon.cycle()


def test_a_deleted_row_stops_its_run(tmp_path):
    daemon = start(tmp_path, [["fake", 300, 0.1, None, 0], ["fake", 1, 0.01, None, 0]])
    rows = cycle_until(daemon, lambda rows: rows[0]["status"] == "running")
    pid = int((Path(rows[0]["log"]).parent / "pid").read_text().split()[0])
    _edit(daemon.config.sheet.path, lambda s: s.delete_rows(2))
    daemon.cycle()
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)
    run = daemon.store.run(rows[0]["id"])
    assert run.status == Status.STOPPED and "deleted" in run.message


def test_an_invalid_row_says_why_and_the_others_still_run(tmp_path):
    daemon = start(tmp_path, [["nosuchjob", 1, 0.01, None, 0], ["fake", 1, 0.01, None, "two"],
                              ["fake", 1, 0.01, None, 0]])
    rows = cycle_until(daemon, lambda rows: rows[2]["status"] == "succeeded")
    assert rows[0]["status"] == "invalid" and "unknown job 'nosuchjob'" in rows[0]["message"]
    assert rows[1]["status"] == "invalid" and "gpus must be a whole number" in rows[1]["message"]
    assert rows[0]["id"] is None


def test_a_restarted_daemon_does_not_start_a_running_row_again(tmp_path):
    daemon = start(tmp_path, [["fake", 15, 0.1, None, 0]])
    cycle_until(daemon, all_in("running"))
    daemon.close()
    again = build(daemon.config)
    rows = cycle_until(again, all_in("succeeded"))
    run_dir = Path(rows[0]["log"]).parent.parent
    assert sorted(p.name for p in run_dir.iterdir() if p.name.isdigit()) == ["1"]
    assert [e[2] for e in again.store.events(rows[0]["id"])].count("launch-intent") == 1


def test_a_typed_over_owned_cell_is_put_right_and_a_quiet_cycle_writes_nothing(tmp_path):
    daemon = start(tmp_path, [["fake", 1, 0.01, None, 0]])
    cycle_until(daemon, all_in("succeeded"))
    status_col = HEADER.index("status") + 1
    _edit(daemon.config.sheet.path, lambda s: s.cell(row=2, column=status_col, value="oops"))
    assert daemon.cycle().cells_written == 1
    assert read_workbook(daemon.config.sheet.path)[0]["status"] == "succeeded"
    before = daemon.config.sheet.path.stat().st_mtime_ns
    assert daemon.cycle().cells_written == 0
    assert daemon.config.sheet.path.stat().st_mtime_ns == before


def test_an_unreadable_workbook_is_retried_and_nothing_is_lost(tmp_path):
    daemon = start(tmp_path, [["fake", 8, 0.1, None, 0]])
    cycle_until(daemon, all_in("running"))
    good = daemon.config.sheet.path.read_bytes()
    daemon.config.sheet.path.write_bytes(good[:100])  # caught mid-save
    deadline = time.monotonic() + 20
    while daemon.store.runs().popitem()[1].status != Status.SUCCEEDED:
        assert not daemon.cycle().sheet_ok
        assert time.monotonic() < deadline
        time.sleep(0.2)
    daemon.config.sheet.path.write_bytes(good)
    rows = cycle_until(daemon, all_in("succeeded"))
    assert rows[0]["metrics"].startswith("step=8")


def test_cli_daemon_exit_when_done_and_ps(tmp_path):
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [["fake", 2, 0.01, None, 0]])
    local_config(tmp_path)
    cfg = str(tmp_path / "sheetrunner.toml")
    done = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "daemon", "-c", cfg,
                           "--exit-when-done"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ps = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "ps", "-c", cfg, "--json"],
                        capture_output=True, text=True, timeout=30)
    assert '"status": "succeeded"' in ps.stdout


def test_exit_when_done_sums_up_and_exits_3_when_a_row_failed(tmp_path):
    write_workbook(tmp_path / "experiments.xlsx", HEADER,
                   [["fake", 1, 0.01, None, 0], ["fake", 1, 0.01, 4, 0], ["nope", 1, 0.01, None, 0],
                    ["fake", 1, 0.01, None, 64]])
    local_config(tmp_path, retries=0)
    cfg = str(tmp_path / "sheetrunner.toml")
    done = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "daemon", "-c", cfg,
                           "--exit-when-done"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    log = " ".join(done.stderr.split())
    assert "done: " in log and "1 succeeded" in log and "1 failed" in log and "1 invalid" in log
    assert "1 unplaceable" in log
    assert "row 3 failed" in log and "row 4 invalid" in log and "row 5 unplaceable" in log
    assert "status=succeeded" in log and "status=failed message=no retries left" in log


def test_sighup_reloads_the_config_and_a_bad_one_is_refused(tmp_path):
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [["later", 1, 0.01, None, 0]])
    local_config(tmp_path)
    cfg = tmp_path / "sheetrunner.toml"
    good = cfg.read_text()
    daemon = subprocess.Popen([sys.executable, "-m", "sheetrunner.cli", "daemon", "-c", str(cfg)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_rows(tmp_path, lambda rows: rows[0].get("status") == "invalid")
        cfg.write_text(good + "\n[daemon.nonsense]\n")  # a bad edit: refused, the old config stays
        daemon.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert daemon.poll() is None
        later = good.replace("[jobs.fake]", f'[jobs.later]\ncommand = ["{sys.executable}", "{FAKE_JOB}"]\n\n[jobs.fake]')
        cfg.write_text(later)  # a job added: the row runs without a restart
        daemon.send_signal(signal.SIGHUP)
        _wait_rows(tmp_path, lambda rows: rows[0].get("status") == "succeeded")
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=30)
    assert "config not reloaded" in err and "config reloaded" in err


def _wait_rows(tmp_path: Path, done, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if done(read_workbook(tmp_path / "experiments.xlsx")):
                return
        except Exception:  # caught mid-save
            pass
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_failed_row_is_announced_by_the_notify_command(tmp_path):
    said = tmp_path / "said.txt"
    script = tmp_path / "say.py"
    script.write_text(f"import sys\nopen({str(said)!r}, 'a').write(sys.argv[-1] + '\\n')\n")
    write_workbook(tmp_path / "experiments.xlsx", HEADER,
                   [["fake", 1, 0.01, None, 0], ["fake", 1, 0.01, 5, 0]])
    daemon = build(local_config(tmp_path, retries=0, extra=f"""
        [notify]
        command = ["{sys.executable}", "{script}"]
    """))
    try:
        cycle_until(daemon, lambda rows: [r.get("status") for r in rows] == ["succeeded", "failed"])
    finally:
        daemon.close()
    text = said.read_text()
    assert "failed" in text and "row 3" in text and "succeeded" not in text


def test_cli_daemon_finishes_its_cycle_and_exits_cleanly_on_sigterm(tmp_path):
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [["fake", 100, 0.1, None, 0]])
    local_config(tmp_path)
    cfg = str(tmp_path / "sheetrunner.toml")
    proc = subprocess.Popen([sys.executable, "-m", "sheetrunner.cli", "daemon", "-c", cfg],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while read_workbook(tmp_path / "experiments.xlsx")[0].get("status") != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err


def test_a_bad_config_fails_at_start_with_the_key_and_exit_code_2(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[sheet]\npath = "x.xlsx"\n[daemon]\npoll_intervall = 3\n')
    done = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "once", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "daemon.poll_intervall" in done.stdout


def _edit(path: Path, change) -> None:
    """Edit the workbook as a person would in their spreadsheet program, then save."""
    book = openpyxl.load_workbook(path)
    change(book.worksheets[0])
    book.save(path)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(autouse=True)
def _no_stray_jobs(tmp_path):
    """Kill the jobs this test started and left running (only those: their run directory
    is under this test's tmp_path), so tests stay independent of each other and of
    anything else running on the machine."""
    yield
    helpers.kill_jobs_under(tmp_path)


def test_init_writes_a_starter_config_and_workbook_and_is_safe_to_repeat(tmp_path):
    cfg = tmp_path / "sheetrunner.toml"
    first = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "init", "-c", str(cfg)],
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "wrote" in first.stdout and cfg.exists()
    book = openpyxl.load_workbook(tmp_path / "experiments.xlsx")
    header = [c.value for c in book.worksheets[0][1]]
    assert header[:3] == ["job", "--lr", "--seed"] and "status" in header and "id" in header
    assert book.worksheets[0].freeze_panes == "A2"
    book.worksheets[0].append(["train", 0.1])
    book.save(tmp_path / "experiments.xlsx")
    again = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "init", "-c", str(cfg)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "wrote" not in again.stdout
    assert read_workbook(tmp_path / "experiments.xlsx")[0]["--lr"] == 0.1  # rows untouched


def test_logs_prints_a_runs_output(tmp_path):
    daemon = start(tmp_path, [["fake", 2, 0.01, None, 0]])
    (row,) = cycle_until(daemon, all_in("succeeded"))
    done = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "logs", row["id"], "-c",
                           str(daemon.config.path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and 'SHEETRUNNER {"step": 2' in done.stdout
    missing = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "logs", "nope", "-c",
                              str(daemon.config.path)], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "sheetrunner ps" in missing.stdout
    archived = tmp_path / "state" / "logs" / row["id"] / "1.log"
    assert archived.read_bytes() == Path(row["log"]).read_bytes()
    cfg = daemon.config.path
    cfg.write_text(cfg.read_text().replace('name = "local"', 'name = "elsewhere"'))
    gone = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "logs", row["id"], "-c",
                           str(cfg)], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 0 and 'SHEETRUNNER {"step": 2' in gone.stdout
    assert "showing the copy kept when the attempt ended" in gone.stderr


def test_a_sigkilled_daemon_restarted_adopts_its_running_jobs(tmp_path):
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [["fake", 25, 0.2, None, 0],
                                                           ["fake", 20, 0.2, None, 0]])
    local_config(tmp_path)
    cfg = str(tmp_path / "sheetrunner.toml")
    first = subprocess.Popen([sys.executable, "-m", "sheetrunner.cli", "daemon", "-c", cfg],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while statuses(read_workbook(tmp_path / "experiments.xlsx")) != ["running", "running"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    first.kill()  # SIGKILL: no clean-up at all
    first.wait()
    rows = read_workbook(tmp_path / "experiments.xlsx")
    pids = [(Path(r["log"]).parent / "pid").read_text().split()[0] for r in rows]
    again = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "daemon", "-c", cfg,
                            "--exit-when-done"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    rows = read_workbook(tmp_path / "experiments.xlsx")
    assert statuses(rows) == ["succeeded", "succeeded"] and [r["attempt"] for r in rows] == [1, 1]
    for row, pid in zip(rows, pids, strict=True):
        run_dir = Path(row["log"]).parent.parent
        assert [p.name for p in run_dir.iterdir() if p.name.isdigit()] == ["1"]
        assert (run_dir / "1" / "pid").read_text().split()[0] == pid  # the same process


@pytest.mark.torch
def committed_example_workbook(repo: Path) -> bytes:
    """examples/local/experiments.xlsx as committed (HEAD), never the work tree's copy,
    which `make demo` fills in and a person may edit. Outside a git checkout (an
    unpacked sdist) the file on disk is the only copy there is."""
    path = "examples/local/experiments.xlsx"
    try:
        inside = subprocess.run(["git", "-C", str(repo), "rev-parse", "--is-inside-work-tree"],
                                capture_output=True, text=True).stdout.strip() == "true"
    except FileNotFoundError:  # no git at all
        inside = False
    if not inside:
        return (repo / path).read_bytes()
    return subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"],
                          capture_output=True, check=True).stdout


def test_the_example_finishes_every_row_green_with_metrics(tmp_path):
    """What `make demo` runs, on a copy of examples/local (its workbook as committed, so a
    `make demo` before `make test` changes nothing here), with --exit-when-done."""
    repo = Path(__file__).resolve().parents[1]
    example = tmp_path / "examples" / "local"
    shutil.copytree(repo / "examples" / "local", example,
                    ignore=shutil.ignore_patterns(".state", ".~lock*", "~$*"))
    (example / "experiments.xlsx").write_bytes(committed_example_workbook(repo))
    (tmp_path / "jobs").symlink_to(repo / "jobs")  # workdir = "../.." is the repository root
    done = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "daemon", "-c",
                           str(example / "sheetrunner.toml"), "--exit-when-done"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_workbook(example / "experiments.xlsx")
    assert len(rows) == 6
    assert statuses(rows) == ["succeeded"] * 6
    assert all("acc=" in r["metrics"] for r in rows)
    assert {fill_of(example / "experiments.xlsx", n) for n in range(2, 8)} == {
        STATUS_COLOURS[Status.SUCCEEDED]}


def test_a_second_daemon_on_the_same_state_is_refused(tmp_path):
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [["fake", 100, 0.1, None, 0]])
    local_config(tmp_path)
    cfg = str(tmp_path / "sheetrunner.toml")
    first = subprocess.Popen([sys.executable, "-m", "sheetrunner.cli", "daemon", "-c", cfg],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while read_workbook(tmp_path / "experiments.xlsx")[0].get("status") != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        second = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "once", "-c", cfg],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert f"another sheetrunner daemon (pid {first.pid})" in second.stdout
    finally:
        first.terminate()
        first.wait(timeout=30)


def test_a_stale_copy_saved_over_the_workbook_starts_nothing_twice(tmp_path):
    """A person's spreadsheet program saves the copy it opened before sheetrunner wrote ids."""
    daemon = start(tmp_path, [["fake", 15, 0.1, None, 0]])
    stale = daemon.config.sheet.path.read_bytes()
    rows = cycle_until(daemon, all_in("running"))
    daemon.config.sheet.path.write_bytes(stale)
    again = cycle_until(daemon, all_in("running", "succeeded"))
    assert again[0]["id"] == rows[0]["id"] and again[0]["attempt"] == 1
    rows = cycle_until(daemon, all_in("succeeded"))
    run_dir = Path(rows[0]["log"]).parent.parent
    assert [p.name for p in run_dir.iterdir() if p.name.isdigit()] == ["1"]
    assert len(daemon.store.runs()) == 1


def test_logs_follow_prints_output_as_it_grows(tmp_path):
    daemon = start(tmp_path, [["fake", 30, 0.1, None, 0]])
    (row,) = cycle_until(daemon, all_in("running"))
    follow = subprocess.Popen([sys.executable, "-m", "sheetrunner.cli", "logs", row["id"], "-f",
                               "-c", str(daemon.config.path)], stdout=subprocess.PIPE, text=True)
    try:
        seen = [follow.stdout.readline() for _ in range(12)]  # lines written after it started too
    finally:
        follow.kill()
    steps = [json.loads(line.split(" ", 1)[1])["step"] for line in seen if line.startswith("SHEETRUNNER")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 10
