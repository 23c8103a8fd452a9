"""Untrusted input end to end: a collaborator's hostile cells, a damaged header and a
hostile job never take the daemon down, never destroy a user cell, and never run
anything but the declared job with the typed text as argv items. The same corpus runs
on the workbook and on the Sheets API emulator (real HTTP, gspread unmodified); the
hostile-job case runs over real sshd (tests/sshd.py)."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import openpyxl
import pytest

from sheetrunner.daemon import build
from sheetrunner.model import AttemptState
from sheetrunner.sheet.schema import OWNED_COLUMNS
from tests.chaos.lab import all_final
from tests.helpers import guard_report, local_config, read_workbook, write_workbook

HEADER = ["job", "--tag", "--steps", "--dup", "--dup", "priority", "notes", "gpus", "--a b",
          *OWNED_COLUMNS]
SHELLISH = "$(touch pwned); `id` ; rm -rf ~ | cat"
# (row cells, the outcome: "succeeded" or a fragment of the invalid row's message)
CORPUS = [
    (["fake", "good", 2, None, None, None, "a note", 0], "succeeded"),
    (["fake", SHELLISH, 2, None, None, None, "note: $(id)", 0], "succeeded"),
    # one argv item, exactly as typed: the job's own argparse then refuses a value
    # starting with a dash (a job that wants one reads --tag=VALUE)
    (["fake", "-leading-dash", 2, None, None, None, None, 0], "failed:expected one argument"),
    (["fake", "x" * 10_000, 2, None, None, None, None, 0], "4,096"),
    (["fake", "nanprio", 2, None, None, "nan", None, 0], "priority"),
    (["fake", "dups", 2, 1, 2, None, None, 0], "--dup"),
    (["fake", "1..1000000000", 2, None, None, None, None, 0], "at most 1,000"),
    (["rm", "unknown-job", 2, None, None, None, None, 0], "unknown job"),
    (["fake", "malformed", 2, None, None, None, None, 0, "x"], "--a b"),
]
# A workbook cannot hold a NUL (openpyxl refuses to save one); a Google Sheet can.
# Nor more than 32,767 characters in a cell: a 200 KB cell (it once froze the daemon's
# log for minutes) and a 48 KB sweep-looking cell (its message once had 48,056
# characters) are Google-only too.
GOOGLE_ONLY = [
    (["fake", "nul\x00here", 2, None, None, None, None, 0], "NUL"),
    (["fake", "y" * 200_000, 2, None, None, None, None, 0], "4,096"),
    (["fake", ", ".join(str(i) for i in range(9_000)), 2, None, None, None, None, 0], "4,096"),
]


def _expect_row(outcome: str, shown: dict) -> None:
    if outcome == "succeeded":
        assert shown["status"] == "succeeded", shown
    elif outcome.startswith("failed:"):
        assert shown["status"] == "failed" and outcome[7:] in shown["message"], shown
    else:
        assert shown["status"] == "invalid" and outcome in shown["message"], shown
        assert len(shown["message"]) <= 2000


def _user_cells(rows: list[list]) -> list[list]:
    return [[v for v, name in zip(r, HEADER, strict=False) if name not in OWNED_COLUMNS]
            for r in rows]


def _cycle(daemon, read, timeout_s: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        daemon.cycle()
        rows = read()
        if all(r.get("status") for r in rows) and all_final(rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


def _check(rows: list[dict], guard: Path, tmp_path: Path, corpus=CORPUS) -> None:
    for (_, outcome), shown in zip(corpus, rows, strict=True):
        _expect_row(outcome, shown)
    starts, concurrent = guard_report(guard)
    assert starts == {"good": 1, SHELLISH.split()[0]: 1}, starts  # the log splits on spaces
    assert concurrent == []
    assert not list(tmp_path.rglob("pwned")) and not Path("pwned").exists()


def test_the_hostile_corpus_on_the_workbook(tmp_path):
    guard = tmp_path / "guard"
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [cells for cells, _ in CORPUS])
    before = _user_cells([list(r) for r in openpyxl.load_workbook(
        tmp_path / "experiments.xlsx").worksheets[0].iter_rows(min_row=2, values_only=True)])
    config = local_config(tmp_path, slots=3, extra=f'\n[jobs.fake.env]\nFAKE_GUARD_DIR = "{guard}"\n')
    daemon = build(config)
    try:
        rows = _cycle(daemon, lambda: read_workbook(tmp_path / "experiments.xlsx"))
    finally:
        daemon.close()
    _check(rows, guard, tmp_path)
    after = _user_cells([list(r) for r in openpyxl.load_workbook(
        tmp_path / "experiments.xlsx").worksheets[0].iter_rows(min_row=2, values_only=True)])
    assert after == before  # every user cell exactly as typed


def test_the_hostile_corpus_on_a_google_sheet(emu, tmp_path):
    guard = tmp_path / "guard"
    corpus = CORPUS + GOOGLE_ONLY
    key = emu.create_spreadsheet({"experiments": [HEADER, *[c for c, _ in corpus]]})
    before = _user_cells(emu.values(tab="experiments")[1:])
    sheet = "\n".join([f'url = "https://docs.google.com/spreadsheets/d/{key}/edit"',
                       'worksheet = "experiments"', 'credentials = "none"',
                       f'endpoint = "{emu.url}"'])
    config = local_config(tmp_path, slots=3, sheet=sheet,
                          extra=f'\n[jobs.fake.env]\nFAKE_GUARD_DIR = "{guard}"\n')

    def read() -> list[dict]:
        header, *values = emu.values(tab="experiments")
        return [dict(zip(header, r, strict=False)) for r in values]

    daemon = build(config)
    try:
        rows = _cycle(daemon, read)
    finally:
        daemon.close()
    _check(rows, guard, tmp_path, corpus)
    after = _user_cells(emu.values(tab="experiments")[1:])
    assert [[v for v in r if v not in ("", None)] for r in after] == \
        [[v for v in r if v not in ("", None)] for r in before]


def test_an_id_typed_over_a_running_row_is_put_right_and_its_run_goes_on(tmp_path):
    guard = tmp_path / "guard"
    header = ["job", "--tag", "--steps", "--sleep", "gpus", *OWNED_COLUMNS]
    path = tmp_path / "experiments.xlsx"
    write_workbook(path, header, [["fake", "r0", 30, 0.1, 0]])
    daemon = build(local_config(tmp_path, extra=f'\n[jobs.fake.env]\nFAKE_GUARD_DIR = "{guard}"\n'))
    try:
        while read_workbook(path)[0].get("status") != "running":
            daemon.cycle()
            time.sleep(0.2)
        run_id = read_workbook(path)[0]["id"]
        book = openpyxl.load_workbook(path)
        book.worksheets[0].cell(row=2, column=header.index("id") + 1).value = "typed-over"
        book.save(path)
        report = daemon.cycle()
        assert not report.killed and not report.launched
        assert read_workbook(path)[0]["id"] == run_id  # put right on the next cycle
        rows = _cycle(daemon, lambda: read_workbook(path))
    finally:
        daemon.close()
    assert rows[0]["status"] == "succeeded" and rows[0]["attempt"] == 1
    assert guard_report(guard) == ({"r0": 1}, [])


def test_a_cleared_header_stops_nothing_and_writes_nothing_until_it_is_back(tmp_path):
    guard = tmp_path / "guard"
    header = ["job", "--tag", "--steps", "--sleep", "gpus", *OWNED_COLUMNS]
    write_workbook(tmp_path / "experiments.xlsx", header,
                   [["fake", f"r{i}", 30, 0.1, 0] for i in range(2)])
    config = local_config(tmp_path, extra=f'\n[jobs.fake.env]\nFAKE_GUARD_DIR = "{guard}"\n')
    daemon = build(config)
    path = tmp_path / "experiments.xlsx"
    try:
        while [r.get("status") for r in read_workbook(path)] != ["running"] * 2:
            daemon.cycle()
            time.sleep(0.2)
        book = openpyxl.load_workbook(path)
        for cell in book.worksheets[0][1]:
            cell.value = None  # someone clears the header row
        book.save(path)
        cleared = path.read_bytes()
        for _ in range(3):
            report = daemon.cycle()
            assert not report.killed and not report.launched and not report.sheet_ok
        assert path.read_bytes() == cleared  # nothing written over their sheet
        book = openpyxl.load_workbook(path)
        for col, name in enumerate(header, start=1):
            book.worksheets[0].cell(row=1, column=col).value = name
        book.save(path)
        rows = _cycle(daemon, lambda: read_workbook(path))
    finally:
        daemon.close()
    assert [r["status"] for r in rows] == ["succeeded"] * 2 and [r["attempt"] for r in rows] == [1, 1]
    assert guard_report(guard) == ({"r0": 1, "r1": 1}, [])


TESTS = Path(__file__).resolve().parents[1]
try:
    from tests.sshd import SshdLab, sshd_lab  # noqa: F401  (a fixture)
except ImportError:
    sys.path.insert(0, str(TESTS))
    from sshd import SshdLab, sshd_lab  # noqa: F401


@pytest.mark.sshd
def test_a_job_that_damages_its_run_directory_never_takes_its_ssh_host_down(tmp_path, sshd_lab):
    from sheetrunner.config import HostConfig
    from sheetrunner.pool.hosts import HostAgent, Pool
    from sheetrunner.pool.ssh import SshTransport
    from sheetrunner.remote.protocol import new_namespace
    from tests.chaos.test_ssh_default_root import (
        DEFAULT_ROOT,
        HANGING_JOB,
        launch,
        new_run,
        wait_for,
    )

    fake = sshd_lab.add_host("gpu-a", gpus=2)
    host = HostConfig(name="gpu-a", address=fake.address, port=fake.port, user=fake.user,
                      identity=str(sshd_lab.client_key), python=sys.executable,
                      accelerators=2, root="~/" + DEFAULT_ROOT)
    pool = Pool([HostAgent(host, SshTransport(**sshd_lab.transport_kwargs(fake)))])
    pool.set_namespace(new_namespace())
    # each on its own GPU: every launch claims its GPUs on the host (docs/shared-gpus.md)
    hostile = new_run("hostile")
    healthy = dataclasses.replace(new_run("healthy"), accelerators=("1",))
    try:
        for run in (hostile, healthy):
            launch(pool, "gpu-a", run, HANGING_JOB)
            wait_for(pool, "gpu-a", run, AttemptState.RUNNING)
        attempt = (sshd_lab.home / DEFAULT_ROOT / pool.namespace / "hosts" / "gpu-a" / "runs"
                   / hostile.run_id / "1")
        (attempt / "pid").write_text("garbage")
        (attempt / "metrics.summary.json").write_text("[]")
        with open(attempt / "metrics.jsonl", "w") as f:  # hostile metrics: huge lines and keys
            f.write('{"x": "' + "z" * 2_000_000 + '"}\n')
            f.write("{" + ", ".join(f'"k{i}": {i}' for i in range(200_000)) + "}\n")
        for _ in range(3):  # and it stays so, cycle after cycle
            seen = pool.probe_all({"gpu-a": {(hostile.run_id, 1), (healthy.run_id, 1)}},
                                  datetime.now(UTC))["gpu-a"]
            assert seen.reachable, seen.error
            assert seen.attempt(healthy.run_id, 1).state == AttemptState.RUNNING
            damaged = seen.attempt(hostile.run_id, 1)
            assert damaged is not None and len(damaged.metrics) <= 200
    finally:
        for run in (hostile, healthy):
            try:
                pool.agents["gpu-a"].kill(run.run_id, 1, grace_s=1)
            except Exception:
                pass
        pool.close()
        shutil.rmtree(sshd_lab.home / DEFAULT_ROOT / pool.namespace, ignore_errors=True)
