"""The README's promise under the faults a lab meets: a row is never started twice by
accident and never silently lost. Each test injects one fault against real processes
(the workbook, the daemon, the jobs) and checks from the job's side (tests/chaos/lab.py):
no row ever ran two copies at once, no row started more often than its attempts say,
every typed row reached a final status, nothing was created outside the roots."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import openpyxl

from sheetrunner import config as config_module
from tests.chaos.lab import all_final, make_lab, nothing_outside, row
from tests.helpers import cycle_until


def _ids(lab) -> list[str]:
    return [r["id"] for r in lab.rows()]


def _cycle_all(daemons, done, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        for daemon in daemons:
            daemon.cycle()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


# 1 ------------------------------------------------------------------------------------------

def test_two_sheets_sharing_a_host_root_never_see_each_others_runs(tmp_path):
    """The same job and parameters on two sheets, one host root: each runs its own copy."""
    root = tmp_path / "shared-root"
    a = make_lab(tmp_path / "a", tmp_path / "guard-a", [row("same", steps=15)], root=str(root))
    b = make_lab(tmp_path / "b", tmp_path / "guard-b", [row("same", steps=15)], root=str(root))
    first, second = a.daemon(), b.daemon()
    try:
        _cycle_all([first, second], lambda: all_final(a.rows()) and all_final(b.rows()))
    finally:
        first.close()
        second.close()
    assert a.statuses() == b.statuses() == ["succeeded"]
    assert _ids(a) != _ids(b)
    assert a.starts() == b.starts() == {"same": 1}  # each sheet really ran its row
    assert a.concurrent() == b.concurrent() == []
    nothing_outside(tmp_path, a.dir, b.dir, root, a.guard, b.guard)


# 2 ------------------------------------------------------------------------------------------

def test_a_second_daemon_on_the_same_sheet_refuses_and_names_the_first(tmp_path):
    lab = make_lab(tmp_path / "lab", tmp_path / "guard", [row(f"r{i}", steps=10) for i in range(3)])
    second_config = lab.dir / "second.toml"  # a copy of the config with its own state
    second_config.write_text(lab.config_path.read_text().replace('state_dir = "state"',
                                                                 'state_dir = "state2"'))
    first = lab.start_daemon()
    try:
        lab.wait_for(lambda rows: all(r.get("id") for r in rows))
        second = lab.cli_with(second_config, "daemon", "--exit-when-done", timeout_s=60)
        assert second.returncode != 0
        assert f"pid {first.pid}" in second.stdout + second.stderr
        lab.wait_for(all_final)
    finally:
        first.terminate()
        first.wait(timeout=30)
    assert lab.statuses() == ["succeeded"] * 3
    assert lab.starts() == {"r0": 1, "r1": 1, "r2": 1} and lab.concurrent() == []


def test_take_over_from_a_dead_daemon_adopts_its_running_jobs(tmp_path):
    lab = make_lab(tmp_path / "lab", tmp_path / "guard", [row(f"r{i}", steps=40) for i in range(2)])
    second_config = lab.dir / "second.toml"
    second_config.write_text(lab.config_path.read_text().replace('state_dir = "state"',
                                                                 'state_dir = "state2"'))
    first = lab.start_daemon()
    lab.wait_for(lambda rows: [r.get("status") for r in rows] == ["running"] * 2)
    first.kill()  # SIGKILL: its lease stays in the sheet
    first.wait()
    again = lab.cli_with(second_config, "daemon", "--exit-when-done", "--take-over", timeout_s=120)
    assert again.returncode == 0, again.stderr
    assert lab.statuses() == ["succeeded"] * 2 and [r["attempt"] for r in lab.rows()] == [1, 1]
    assert lab.starts() == {"r0": 1, "r1": 1} and lab.concurrent() == []


# 3 ------------------------------------------------------------------------------------------

def _run_until_running(lab, daemon) -> None:
    cycle_until(daemon, lambda rows: all(r.get("status") == "running" for r in rows))


def _finish_with_a_new_daemon(lab) -> None:
    daemon = lab.daemon()
    try:
        cycle_until(daemon, all_final, timeout_s=60)
    finally:
        daemon.close()


def test_a_deleted_state_directory_adopts_every_running_job(tmp_path):
    lab = make_lab(tmp_path / "lab", tmp_path / "guard", [row(f"r{i}", steps=25) for i in range(2)])
    daemon = lab.daemon()
    _run_until_running(lab, daemon)
    daemon.close()
    shutil.rmtree(lab.dir / "state")
    _finish_with_a_new_daemon(lab)
    assert lab.statuses() == ["succeeded"] * 2 and [r["attempt"] for r in lab.rows()] == [1, 1]
    assert lab.starts() == {"r0": 1, "r1": 1} and lab.concurrent() == []
    nothing_outside(tmp_path, lab.dir, lab.guard)


def test_a_corrupt_store_is_moved_aside_and_rebuilt(tmp_path):
    lab = make_lab(tmp_path / "lab", tmp_path / "guard", [row(f"r{i}", steps=25) for i in range(2)])
    daemon = lab.daemon()
    _run_until_running(lab, daemon)
    daemon.close()
    store = lab.dir / "state" / "state.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    store.write_bytes(b"not a database" * 100)
    _finish_with_a_new_daemon(lab)
    assert list((lab.dir / "state").glob("state.sqlite.corrupt-*"))
    assert lab.statuses() == ["succeeded"] * 2
    assert lab.starts() == {"r0": 1, "r1": 1} and lab.concurrent() == []


def test_a_store_restored_from_an_older_copy_adopts_the_newer_attempt(tmp_path):
    lab = make_lab(tmp_path / "lab", tmp_path / "guard", [row("r", steps=30, fail_attempts=1)])
    daemon = lab.daemon()
    _run_until_running(lab, daemon)
    shutil.copytree(lab.dir / "state", tmp_path / "backup")  # the backup: attempt 1 running
    cycle_until(daemon, lambda rows: rows[0].get("attempt") == 2 and rows[0]["status"] == "running")
    daemon.close()
    shutil.rmtree(lab.dir / "state")
    shutil.copytree(tmp_path / "backup", lab.dir / "state")
    _finish_with_a_new_daemon(lab)
    (shown,) = lab.rows()
    assert shown["status"] == "succeeded" and shown["attempt"] == 2
    assert lab.starts() == {"r": 2} and lab.concurrent() == []  # attempt 1 crashed, 2 ran
    nothing_outside(tmp_path, lab.dir, lab.guard, tmp_path / "backup")


def test_the_local_hosts_default_root_lies_outside_the_state_directory():
    config = config_module.load(Path(__file__).parents[2] / "examples" / "local" / "sheetrunner.toml")
    state = Path(config.daemon.state_dir).resolve()
    for host in config.hosts:
        assert state not in Path(host.root).expanduser().resolve().parents


# 4 ------------------------------------------------------------------------------------------

def test_a_stale_copy_saved_over_final_rows_takes_their_runs_back(tmp_path):
    lab = make_lab(tmp_path / "lab", tmp_path / "guard",
                   [row("ok"), row("bad", exit_code=1, retries=0)])
    stale = tmp_path / "stale.xlsx"
    shutil.copy(lab.workbook, stale)  # someone's copy from before the daemon wrote anything
    daemon = lab.daemon()
    try:
        cycle_until(daemon, all_final)
        ids = _ids(lab)
        assert lab.statuses() == ["succeeded", "failed"]
        shutil.copy(stale, lab.workbook)  # ... saved over ours
        for _ in range(4):
            daemon.cycle()
    finally:
        daemon.close()
    assert lab.statuses() == ["succeeded", "failed"] and _ids(lab) == ids
    assert lab.starts() == {"ok": 1, "bad": 1}
    nothing_outside(tmp_path, lab.dir, lab.guard, stale)


# 7 ------------------------------------------------------------------------------------------

def test_a_running_row_copied_with_its_id_and_edited_runs_as_a_new_row(tmp_path):
    lab = make_lab(tmp_path / "lab", tmp_path / "guard", [row("orig", steps=30)])
    daemon = lab.daemon()
    try:
        _run_until_running(lab, daemon)
        (orig,) = lab.rows()
        book = openpyxl.load_workbook(lab.workbook)
        sheet = book.worksheets[0]
        sheet.insert_rows(2)  # the copy, pasted above the original, then its tag edited
        for col in range(1, sheet.max_column + 1):
            sheet.cell(row=2, column=col).value = sheet.cell(row=3, column=col).value
        sheet.cell(row=2, column=2).value = "copy"
        book.save(lab.workbook)
        cycle_until(daemon, lambda rows: all_final(rows) and len(rows) == 2)
    finally:
        daemon.close()
    copy, original = lab.rows()
    assert original["id"] == orig["id"] and original["status"] == "succeeded"
    assert original["attempt"] == 1
    assert copy["id"] != orig["id"] and copy["status"] == "succeeded"
    assert lab.starts() == {"orig": 1, "copy": 1} and lab.concurrent() == []
    nothing_outside(tmp_path, lab.dir, lab.guard)


# 8 ------------------------------------------------------------------------------------------

def test_an_id_cell_that_is_not_a_run_id_is_never_used_as_a_path(tmp_path):
    lab = make_lab(tmp_path / "lab", tmp_path / "guard", [row("r")])
    book = openpyxl.load_workbook(lab.workbook)
    sheet = book.worksheets[0]
    header = [c.value for c in sheet[1]]
    sheet.cell(row=2, column=header.index("id") + 1).value = "../../escaped"
    sheet.cell(row=2, column=header.index("status") + 1).value = "running"
    book.save(lab.workbook)
    daemon = lab.daemon()
    try:
        for _ in range(3):
            daemon.cycle()
    finally:
        daemon.close()
    (shown,) = lab.rows()
    assert shown["status"] == "invalid" and "clear the id cell" in shown["message"]
    assert shown["id"] == "../../escaped"  # the person's text, left for them to clear
    assert not list(tmp_path.rglob("escaped*")) and lab.starts() == {}
    nothing_outside(tmp_path, lab.dir, lab.guard)


# 10 -----------------------------------------------------------------------------------------

def test_exit_when_done_runs_every_row_of_a_sheet_holding_only_a_sweep(tmp_path):
    lab = make_lab(tmp_path / "lab", tmp_path / "guard", [row("x, y, z")])
    done = lab.cli("daemon", "--exit-when-done")
    assert done.returncode == 0, done.stderr
    rows = lab.rows()
    assert [r["status"] for r in rows[1:]] == ["succeeded"] * 3
    assert lab.starts() == {"x": 1, "y": 1, "z": 1}
    nothing_outside(tmp_path, lab.dir, lab.guard)
