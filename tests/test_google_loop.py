"""The whole loop on the Google backend: daemon -> gspread -> HTTP -> the Sheets API emulator.

Same scenarios as the workbook's end-to-end tests, seen from the sheet's side:
what a collaborator would see in the cells and colours, and what the quota
would count (one read and at most one write per cycle, however many rows).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import HEADER
from sheets_emulator import SheetsEmulator

from sheetrunner.daemon import Daemon, build
from sheetrunner.model import STATUS_COLOURS, Status
from sheetrunner.sheets.google import ENDPOINT_ENV

TAB = "experiments"


@pytest.fixture
def emu(monkeypatch):
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    with SheetsEmulator() as emulator:
        yield emulator


def start(
    emu: SheetsEmulator, tmp_path: Path, rows: list[list[Any]], slots: int = 2, sheet: str = ""
) -> Daemon:
    """A daemon whose [sheet] url points at a new spreadsheet in the emulator."""
    key = emu.create_spreadsheet({TAB: [HEADER, *rows]})
    sheet_body = "\n".join([f'url = "https://docs.google.com/spreadsheets/d/{key}/edit"',
                            f'worksheet = "{TAB}"', 'credentials = "none"',
                            f'endpoint = "{emu.url}"', sheet])
    config = helpers.local_config(tmp_path, slots=slots, sheet=sheet_body)
    return build(config)


def shown(emu: SheetsEmulator) -> list[dict[str, Any]]:
    """The experiment rows as the sheet shows them, by header."""
    header, *rows = emu.values(tab=TAB)
    return [dict(zip(header, row, strict=False)) for row in rows]


def cycle_until(
    emu: SheetsEmulator, daemon: Daemon, done: Callable[[list[dict]], bool], timeout_s: float = 30
) -> list[dict]:
    """Cycle until the sheet shows `done`, checking the call budget of every cycle."""

    def read_within_budget() -> list[dict]:
        writes = emu.counts["spreadsheets.batchUpdate"]
        assert writes <= 1, dict(emu.counts)
        # one read; a cycle that writes reads again just before its write (rows may have moved)
        assert emu.counts["values.batchGet"] == 1 + writes, dict(emu.counts)
        assert emu.counts["read"] - emu.counts["spreadsheets.get"] == 1 + writes
        rows = shown(emu)
        emu.reset_counts()
        return rows

    emu.reset_counts()
    return helpers.cycle_until(daemon, done, timeout_s, read=read_within_budget)


def statuses(rows: list[dict]) -> list[str]:
    return [r.get("status", "") for r in rows]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_row_goes_queued_running_succeeded_in_the_sheet(emu, tmp_path):
    daemon = start(emu, tmp_path, [["fake", 5, 0.1, None, 0], ["fake", 10, 0.1, None, 0]], slots=1)
    seen: list[list[str]] = []
    rows = cycle_until(
        emu,
        daemon,
        lambda rows: seen.append(statuses(rows)) or statuses(rows) == ["succeeded", "succeeded"],
    )
    second = [s[1] for s in seen]
    assert second.index("queued") < second.index("running") < second.index("succeeded")
    assert len({r["id"] for r in rows}) == 2
    assert rows[1]["metrics"] == "step=10 loss=0.1" and rows[1]["host"] == "local"
    assert emu.cell("A3", tab=TAB).background == STATUS_COLOURS[Status.SUCCEEDED]
    assert emu.cell("K3", tab=TAB).background == STATUS_COLOURS[Status.SUCCEEDED]
    emu.reset_counts()
    daemon.cycle()  # nothing changed: one read, no write
    assert dict(emu.counts) == {"read": 1, "values.batchGet": 1}
    daemon.close()


def test_a_user_sorting_the_tab_mid_run_moves_nothing_to_the_wrong_row(emu, tmp_path):
    daemon = start(emu, tmp_path, [["fake", 30, 0.1, None, 0], ["fake", 1, 0.01, None, 0]])
    before = cycle_until(emu, daemon, lambda rows: statuses(rows) == ["running", "succeeded"])
    ids = {r["--steps"]: r["id"] for r in before}
    emu.sort_rows("--steps")  # the short, finished run is now on top
    rows = cycle_until(emu, daemon, lambda rows: statuses(rows) == ["succeeded", "succeeded"])
    assert [(r["--steps"], r["id"]) for r in rows] == [(1, ids[1]), (30, ids[30])]
    assert rows[1]["metrics"].startswith("step=30")
    assert emu.cell("A3", tab=TAB).background == STATUS_COLOURS[Status.SUCCEEDED]
    daemon.close()


def test_a_deleted_row_has_its_run_stopped(emu, tmp_path):
    daemon = start(emu, tmp_path, [["fake", 300, 0.1, None, 0], ["fake", 1, 0.01, None, 0]])
    rows = cycle_until(emu, daemon, lambda rows: statuses(rows)[0] == "running")
    run_id = rows[0]["id"]
    pid = int((Path(rows[0]["log"]).parent / "pid").read_text().split()[0])
    emu.delete_row(2, tab=TAB)
    cycle_until(emu, daemon, lambda rows: True)
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)
    assert daemon.store.run(run_id).status == Status.STOPPED
    assert run_id not in [r.get("id") for r in shown(emu)]
    daemon.close()


@pytest.mark.parametrize("count", [10, 2000])
def test_the_call_budget_holds_with_many_rows(emu, tmp_path, count):
    rows = [["fake", 1, 0.01, None, 0, "hold"] for _ in range(count)]
    rows[0][5] = ""
    daemon = start(emu, tmp_path, rows)
    done = cycle_until(emu, daemon, lambda rows: rows[0].get("status") == "succeeded", 60)
    assert statuses(done)[1:] == ["held"] * (count - 1)
    emu.reset_counts()
    daemon.cycle()
    assert dict(emu.counts) == {"read": 1, "values.batchGet": 1}
    daemon.close()


def test_a_curve_is_a_sparkline_over_the_hidden_metrics_tab(emu, tmp_path):
    daemon = start(emu, tmp_path, [["fake", 4, 0.05, None, 0]],
                   sheet='curve = "loss"\nmetric_columns = ["loss"]')
    rows = cycle_until(emu, daemon, lambda rows: statuses(rows) == ["succeeded"])
    assert rows[0]["loss"] == pytest.approx(0.25) and rows[0]["best loss"] == pytest.approx(0.25)
    header = emu.values(tab=TAB)[0]
    curve = emu.cell(f"{chr(ord('A') + header.index('curve'))}2", tab=TAB)
    assert curve.formula is not None and curve.formula.startswith("=SPARKLINE('_metrics'!B2:")
    assert emu.sheet_properties("_metrics")["hidden"] is True
    history = emu.values(tab="_metrics")[1]
    assert history[0] == rows[0]["id"] and history[-1] == pytest.approx(0.25)
    daemon.close()


def test_the_daemon_command_drives_a_google_sheet_to_completion(emu, tmp_path):
    """`sheetrunner daemon -c CONFIG` with [sheet] endpoint: the CLI, a real process, real HTTP."""
    daemon = start(emu, tmp_path, [["fake", 2, 0.05, None, 0], ["fake", 3, 0.05, None, 0]])
    daemon.close()
    done = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "daemon", "-c",
                           str(daemon.config.path), "--exit-when-done"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert statuses(shown(emu)) == ["succeeded", "succeeded"]
    assert emu.cell("A2", tab=TAB).background == STATUS_COLOURS[Status.SUCCEEDED]
