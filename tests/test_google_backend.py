"""GoogleSheet through unmodified gspread, over real HTTP, against the Sheets API emulator.

What matters here is what a real sheet would show and what the quota would
count: requests per cycle, typed cells, text that must never become a formula,
colours, and what survives a 429 storm or a user renaming, sorting or deleting.
"""

from __future__ import annotations

import json
import logging
import os

import google.oauth2.credentials
import pytest
from sheets_emulator import DROP, SheetsEmulator

from sheetrunner.errors import ConfigError, SheetError, SheetUnavailable
from sheetrunner.model import Status
from sheetrunner.sheet.lease import META_TAB
from sheetrunner.sheet.table import RowInsert, RowUpdate, SheetWrite, Sparkline
from sheetrunner.sheets.google import ENDPOINT_ENV, GoogleSheet, typed_value

HEADER = ["job", "--lr", "action", "id", "status", "host", "message"]


@pytest.fixture
def emu(monkeypatch):
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    with SheetsEmulator() as emulator:
        yield emulator


def runs_tab(n: int) -> list[list[object]]:
    """A header and `n` experiment rows, every third one already claimed."""
    rows: list[list[object]] = [list(HEADER)]
    for i in range(n):
        claimed = [f"r{i}", "running", "gpu1"] if i % 3 == 0 else []
        rows.append(["mnist", 0.001 * (i + 1), "", *claimed])
    return rows


def sheet(emu: SheetsEmulator, key: str, **options) -> GoogleSheet:
    """A backend on the emulator with tiny backoff delays, so retry tests stay fast."""
    options = {"max_attempts": 4, "backoff_base_s": 0.001, "backoff_max_s": 0.005} | options
    return GoogleSheet(key, "Runs", credentials="none", endpoint=emu.url, timeout_s=5, **options)


META_ROWS = [["sheetrunner", "note"], ["namespace", "ns1"]]


def opened(emu: SheetsEmulator, rows: list[list[object]], **options) -> GoogleSheet:
    """A backend that has done its start-up reads; the emulator's counters reset after.

    The spreadsheet has its `_sheetrunner` tab, as it does once a daemon wrote its lease."""
    tabs = {"Runs": rows, "hosts": [], META_TAB: META_ROWS}
    backend = sheet(emu, emu.create_spreadsheet(tabs), **options)
    backend.read()
    emu.reset_counts()
    return backend


# ---------------------------------------------------------------- the call budget


@pytest.mark.parametrize("n", [10, 2000])
def test_a_read_is_one_request_whatever_the_rows(emu, n):
    backend = opened(emu, runs_tab(n))
    table = backend.read()
    assert dict(emu.counts) == {"read": 1, "values.batchGet": 1}
    assert table.header == HEADER
    assert len(table.rows) == n
    assert table.value(2, "id") == "r0" and table.value(3, "id") == ""
    assert table.value(n + 1, "--lr") == pytest.approx(0.001 * n)


def test_start_up_costs_two_metadata_reads_once(emu):
    backend = sheet(emu, emu.create_spreadsheet({"Runs": runs_tab(3), META_TAB: META_ROWS}))
    for _ in range(3):
        table = backend.read()
    assert emu.counts["spreadsheets.get"] == 2
    assert emu.counts["values.batchGet"] == 3
    assert table.meta == {"sheetrunner": "note", "namespace": "ns1"}
    assert table.source == backend.key


def test_the_meta_tab_comes_in_the_same_request(emu):
    backend = opened(emu, runs_tab(3))
    table = backend.read()
    assert dict(emu.counts) == {"read": 1, "values.batchGet": 1}
    assert emu.log[-1].ranges == ("'Runs'", f"'{META_TAB}'")
    assert table.meta == {"sheetrunner": "note", "namespace": "ns1"}
    assert table.header == HEADER and len(table.rows) == 3


def test_without_a_meta_tab_each_read_also_looks_for_one(emu):
    """While the cached metadata knows no `_sheetrunner` tab, a read fetches the metadata
    first (one more read): a tab another daemon created is seen by the very next read."""
    backend = sheet(emu, emu.create_spreadsheet({"Runs": runs_tab(2)}))
    assert backend.read().meta is None
    emu.reset_counts()
    assert backend.read().meta is None
    assert dict(emu.counts) == {"read": 2, "spreadsheets.get": 1, "values.batchGet": 1}
    other = sheet(emu, backend.key)
    other.read()
    other.write(SheetWrite(meta=[["namespace", "ns9"]], meta_expect=None))
    emu.reset_counts()
    assert backend.read().meta == {"namespace": "ns9"}
    emu.reset_counts()
    backend.read()
    assert dict(emu.counts) == {"read": 1, "values.batchGet": 1}


def test_a_deleted_meta_tab_costs_one_metadata_read_then_reads_as_none(emu):
    backend = opened(emu, runs_tab(2))
    emu.delete_tab(META_TAB)
    table = backend.read()
    assert table.meta is None and len(table.rows) == 2
    assert emu.counts["spreadsheets.get"] == 1


def test_a_write_is_one_request(emu):
    backend = opened(emu, runs_tab(10))
    backend.read()
    emu.reset_counts()
    change = SheetWrite(
        new_columns=["elapsed"],
        rows=[
            RowUpdate(2, "r0", {"status": "succeeded", "elapsed": 12.5}, fill="D9EAD3"),
            RowUpdate(3, None, {"id": "r1", "status": "queued", "host": ""}, job="mnist"),
            RowUpdate(5, "r3", {"message": "lost contact"}, fill="FFF2CC"),
        ],
        tabs={"hosts": [["host", "gpus"], ["gpu1", 8]]},
    )
    backend.write(change)
    # the write re-reads both tabs just before its one batch, to place every row again
    assert dict(emu.counts) == {
        "read": 1, "values.batchGet": 1, "write": 1, "spreadsheets.batchUpdate": 1
    }
    assert [r.endpoint for r in emu.log] == ["values.batchGet", "spreadsheets.batchUpdate"]
    assert emu.values(tab="Runs")[0] == [*HEADER, "elapsed"]
    assert [emu.cell(a1).value for a1 in ("E2", "H2", "D3", "E3", "G5")] == [
        "succeeded",
        12.5,
        "r1",
        "queued",
        "lost contact",
    ]
    assert emu.values(tab="hosts") == [["host", "gpus"], ["gpu1", 8]]


def test_nothing_is_sent_when_nothing_changed(emu):
    backend = opened(emu, runs_tab(5))
    backend.write(SheetWrite())
    backend.write(SheetWrite(rows=[RowUpdate(2, "r0", {"no such column": 1})]))
    assert sum(emu.counts.values()) == 0


# ---------------------------------------------------------------- typed values and injection


def test_user_text_reads_back_exactly_and_formulas_as_their_value(emu):
    backend = opened(emu, [["job", "--name", "--x"], ["mnist"], ["mnist"], ["mnist"], ["mnist"]])
    emu.set_cell("B2", "=1+1", as_text=True)
    emu.set_cell("B3", "'=1+1")  # typed in the UI with a leading apostrophe
    emu.set_cell("B4", "$(id)")
    emu.set_cell("B5", "; rm -rf ~")
    emu.set_cell("C2", "=1+1")  # a real formula
    emu.set_cell("C3", "1.2345e-4")  # shown as 1.23E-04 in the sheet
    table = backend.read()
    assert [table.value(r, "--name") for r in (2, 3, 4, 5)] == [
        "=1+1",
        "=1+1",
        "$(id)",
        "; rm -rf ~",
    ]
    assert table.value(2, "--x") == 2
    assert table.value(3, "--x") == 0.00012345


def test_text_we_write_is_never_a_formula_except_a_sparkline(emu):
    backend = opened(emu, runs_tab(1))
    curve = Sparkline((0.9, 0.5, 0.2), "_metrics", 2)
    cells = {
        "message": "=1+1",
        "host": '=HYPERLINK("http://x")',
        "action": "=SPARKLINE({1,2})",  # text, even when it looks like our own formula
        "status": curve,
    }
    backend.write(SheetWrite(rows=[RowUpdate(2, "r0", cells)]))
    for a1, text in (("G2", "=1+1"), ("F2", '=HYPERLINK("http://x")'), ("C2", "=SPARKLINE({1,2})")):
        assert emu.cell(a1).formula is None and emu.cell(a1).value == text
    assert emu.cell("E2").formula == "=SPARKLINE('_metrics'!B2:D2)"


def test_curves_and_their_hidden_tab_go_in_one_request(emu):
    backend = opened(emu, runs_tab(1))
    change = SheetWrite(
        new_columns=["curve"],
        rows=[RowUpdate(2, "r0", {"curve": Sparkline((0.9, 0.5), "_metrics", 2)})],
        tabs={"_metrics": [["run", "loss"], ["r0", 0.9, 0.5]]},
    )
    backend.write(change)
    assert emu.counts["write"] == 1
    assert emu.sheet_properties("_metrics")["hidden"] is True
    assert emu.values(tab="_metrics") == [["run", "loss"], ["r0", 0.9, 0.5]]
    assert emu.cell("H2").formula == "=SPARKLINE('_metrics'!B2:C2)"
    assert "hidden" not in emu.sheet_properties("hosts")


def test_typed_values():
    assert typed_value(3) == {"numberValue": 3}
    assert typed_value(0.5) == {"numberValue": 0.5}
    assert typed_value(True) == {"boolValue": True}
    assert typed_value("007") == {"stringValue": "007"}
    assert typed_value("=SPARKLINE(A1:B1)") == {"stringValue": "=SPARKLINE(A1:B1)"}
    assert typed_value(Status.RUNNING) == {"stringValue": "running"}
    assert typed_value(float("nan")) == {"stringValue": "nan"}
    assert typed_value("") == {} and typed_value(None) == {}


# ---------------------------------------------------------------- colours and addressing


def test_row_fill_colours_the_whole_row_and_nothing_else(emu):
    backend = opened(emu, runs_tab(3))
    backend.write(SheetWrite(rows=[RowUpdate(3, None, {}, fill="C9DAF8", job="mnist")]))
    assert emu.cell("A3").background == "C9DAF8"
    assert emu.cell("Z3").background == "C9DAF8"
    assert emu.cell("A2").background is None
    assert emu.cell("A3").value == "mnist"  # values untouched
    assert set(emu.cell("A3").format) == {"backgroundColor", "backgroundColorStyle"}


def test_a_renamed_tab_is_still_written_by_sheet_id_and_then_read(emu):
    backend = opened(emu, runs_tab(3))
    emu.rename_tab("Runs", "Experiments")
    backend.write(SheetWrite(rows=[RowUpdate(2, "r0", {"status": "stopped"})]))
    assert emu.counts["write"] == 1
    assert emu.counts["spreadsheets.get"] == 1  # once, in the re-read, to find it by sheetId
    assert emu.cell("E2", tab="Experiments").value == "stopped"
    emu.reset_counts()
    assert backend.read().value(2, "status") == "stopped"
    assert dict(emu.counts) == {"read": 1, "values.batchGet": 1}
    emu.reset_counts()
    backend.read()
    assert dict(emu.counts) == {"read": 1, "values.batchGet": 1}


def test_new_columns_grow_a_narrow_grid_in_the_same_request(emu):
    key = emu.create_spreadsheet({"Runs": [["job", "--lr"], ["mnist", 0.1]]}, cols=2)
    backend = sheet(emu, key)
    backend.read()
    emu.reset_counts()
    change = SheetWrite(
        new_columns=["id", "status"], rows=[RowUpdate(2, None, {"id": "r9"}, job="mnist")]
    )
    backend.write(change)
    assert emu.counts["write"] == 1
    assert emu.sheet_properties("Runs")["gridProperties"]["columnCount"] == 4
    assert emu.values(tab="Runs") == [["job", "--lr", "id", "status"], ["mnist", 0.1, "r9"]]


def test_a_side_tab_is_created_once_then_replaced_whole(emu):
    backend = opened(emu, runs_tab(1))
    backend.write(SheetWrite(tabs={"pool": [["host", "state"], ["a", "up"], ["b", "down"]]}))
    backend.write(SheetWrite(tabs={"pool": [["host", "state"], ["a", "up"]]}))
    assert emu.counts["write"] == 2 and emu.counts["read"] == 2  # a re-read before each
    assert emu.values(tab="pool") == [["host", "state"], ["a", "up"]]


def test_inserts_go_under_their_rows_bottom_first_in_the_same_request(emu):
    backend = opened(emu, runs_tab(4))
    change = SheetWrite(
        rows=[RowUpdate(3, None, {"id": "s1", "status": "queued"}, job="mnist")],
        inserts=[
            RowInsert(3, [{"job": "mnist", "--lr": 0.1}, {"job": "mnist", "--lr": 0.2}]),
            RowInsert(5, [{"job": "cifar", "nope": 1}]),
        ],
    )
    backend.write(change)
    assert emu.counts["write"] == 1
    jobs = [tuple((row + ["", "", "", ""])[i] for i in (0, 1, 3)) for row in emu.values()[1:]]
    assert jobs == [
        ("mnist", 0.001, "r0"),
        ("mnist", 0.002, "s1"),  # the claimed parent
        ("mnist", 0.1, ""),
        ("mnist", 0.2, ""),
        ("mnist", 0.003, ""),
        ("mnist", 0.004, "r3"),
        ("cifar", "", ""),
    ]
    emu.reset_counts()
    assert len(backend.read().rows) == 7
    assert emu.counts["read"] == 1


# ---------------------------------------------------------------- retries, faults, pending writes


def test_a_429_storm_that_ends_is_ridden_out_within_the_attempt_budget(emu):
    backend = opened(emu, runs_tab(3))
    emu.fail_next(3, 429)
    assert backend.read().value(2, "id") == "r0"
    assert emu.counts["read"] == 4


def test_dropped_connections_are_retried(emu):
    backend = opened(emu, runs_tab(3))
    emu.fail_next(2, DROP)
    assert len(backend.read().rows) == 3


def test_a_slow_api_times_out_instead_of_hanging(emu):
    backend = opened(emu, runs_tab(1), max_attempts=2)
    backend._client.http_client.set_timeout(0.2)
    emu.latency_s = 0.5
    with pytest.raises(SheetUnavailable, match="cannot reach Google Sheets"):
        backend.read()
    assert emu.counts["read"] == 2


def test_a_storm_that_lasts_keeps_the_write_and_delivers_it_later(emu):
    backend = opened(emu, runs_tab(3), max_attempts=3)
    emu.fail_next(50, 429, kind="write")
    first = SheetWrite(rows=[RowUpdate(2, "r0", {"status": "failed", "message": "exit 1"})])
    with pytest.raises(SheetUnavailable, match="429") as raised:
        backend.write(first)
    assert emu.counts["write"] == 3
    assert "kept for the next write" in str(raised.value)
    assert backend.pending is not None
    emu.clear_faults()
    emu.reset_counts()
    backend.read()
    backend.write(SheetWrite(rows=[RowUpdate(2, "r0", {"status": "retrying"})]))
    assert emu.counts["write"] == 1
    assert emu.cell("E2").value == "retrying"  # the newest value wins
    assert emu.cell("G2").value == "exit 1"  # the older cell was delivered too
    assert backend.pending is None


def test_a_pending_update_follows_its_run_when_the_user_sorts(emu):
    backend = opened(emu, runs_tab(7))
    backend.read()
    emu.fail_next(10, 503, kind="write")
    with pytest.raises(SheetUnavailable):
        backend.write(SheetWrite(rows=[RowUpdate(5, "r3", {"status": "succeeded"})]))
    emu.clear_faults()
    emu.sort_rows("--lr", descending=True)
    backend.read()
    backend.write(SheetWrite())
    row = next(r for r in emu.values() if len(r) > 3 and r[3] == "r3")
    assert row[4] == "succeeded"
    assert [r[4] for r in emu.values() if len(r) > 4].count("succeeded") == 1


def test_a_pending_update_of_a_deleted_row_is_dropped(emu):
    backend = opened(emu, runs_tab(4))
    backend.read()
    emu.fail_next(10, 500, kind="write")
    with pytest.raises(SheetUnavailable):
        backend.write(SheetWrite(rows=[RowUpdate(5, "r3", {"status": "stopped"})]))
    emu.clear_faults()
    emu.delete_row(5)
    backend.read()
    emu.reset_counts()
    backend.write(SheetWrite())
    assert emu.counts["write"] == 0
    assert "stopped" not in json.dumps(emu.values())


def test_a_pending_claim_is_dropped_when_the_user_changed_its_row(emu):
    backend = opened(emu, runs_tab(3))
    table = backend.read()
    expect = {"job": "mnist", "--lr": "0.002"}
    assert table.value(3, "--lr") == 0.002
    emu.fail_next(10, 503, kind="write")
    with pytest.raises(SheetUnavailable):
        claim = RowUpdate(3, None, {"id": "c1", "status": "queued"}, job="mnist", expect=expect)
        backend.write(SheetWrite(rows=[claim]))
    emu.clear_faults()
    emu.set_cell("B3", "0.5")
    backend.read()
    emu.reset_counts()
    backend.write(SheetWrite())
    assert emu.counts["write"] == 0
    assert emu.cell("D3").value == ""


# ---------------------------------------------------------------- rows that moved before the write


def test_updates_follow_their_runs_when_rows_are_sorted_before_the_write(emu):
    backend = opened(emu, runs_tab(7))
    table = backend.read()
    assert [table.value(r, "id") for r in (2, 5, 8)] == ["r0", "r3", "r6"]
    emu.sort_rows("--lr", descending=True)  # r6 is now on row 2, r0 on row 8
    backend.write(SheetWrite(rows=[RowUpdate(2, "r0", {"status": "stopped"}),
                                   RowUpdate(8, "r6", {"status": "succeeded"}, fill="D9EAD3")]))
    by_id = {r[3]: r for r in emu.values()[1:] if len(r) > 3 and r[3]}
    assert by_id["r0"][4] == "stopped" and by_id["r6"][4] == "succeeded"
    assert by_id["r3"][4] == "running"
    assert emu.cell("A2").background == "D9EAD3" and emu.cell("A8").background is None


def test_an_update_whose_row_was_deleted_before_the_write_is_dropped(emu, caplog):
    backend = opened(emu, runs_tab(4))
    backend.read()
    emu.delete_row(5)  # r3
    before = emu.values()
    with caplog.at_level(logging.INFO, logger="sheetrunner.sheets.google"):
        backend.write(SheetWrite(rows=[RowUpdate(5, "r3", {"status": "stopped"})]))
    assert emu.values() == before
    assert emu.counts["write"] == 0
    assert "run r3" in caplog.text


def test_a_claim_is_dropped_when_its_row_changed_before_the_write(emu):
    backend = opened(emu, runs_tab(3))
    backend.read()
    emu.set_cell("B3", "0.5")
    claim = RowUpdate(3, None, {"id": "c1", "status": "queued"}, job="mnist",
                      expect={"job": "mnist", "--lr": "0.002"})
    backend.write(SheetWrite(rows=[claim, RowUpdate(2, "r0", {"status": "succeeded"})]))
    assert emu.cell("D3").value == "" and emu.cell("E2").value == "succeeded"


def test_sweep_rows_are_inserted_only_under_an_unchanged_parent(emu):
    backend = opened(emu, runs_tab(3))
    backend.read()
    expect = {"job": "mnist", "--lr": "0.002"}
    emu.set_cell("B3", "0.7")
    backend.write(SheetWrite(inserts=[RowInsert(3, [{"job": "mnist"}], expect=expect)]))
    assert len(emu.values()) == 4
    emu.set_cell("B3", "0.002")
    backend.read()
    backend.write(SheetWrite(inserts=[RowInsert(3, [{"job": "cifar"}], expect=expect)]))
    assert [r[0] for r in emu.values()[1:]] == ["mnist", "mnist", "cifar", "mnist"]


def test_a_failed_re_read_keeps_the_write_for_the_next_one(emu):
    backend = opened(emu, runs_tab(2), max_attempts=2)
    backend.read()
    emu.fail_next(2, 503, kind="read")
    with pytest.raises(SheetUnavailable, match="kept for the next write"):
        backend.write(SheetWrite(rows=[RowUpdate(2, "r0", {"status": "failed"})]))
    assert emu.counts["write"] == 0
    backend.read()
    backend.write(SheetWrite())
    assert emu.cell("E2").value == "failed"


# ---------------------------------------------------------------- the _sheetrunner tab


def lease_rows(namespace: str) -> list[list[str]]:
    return [["sheetrunner", "note"], ["namespace", namespace]]


def test_the_meta_tab_is_created_hidden_and_read_back(emu):
    backend = sheet(emu, emu.create_spreadsheet({"Runs": runs_tab(1)}))
    assert backend.read().meta is None
    backend.write(SheetWrite(meta=lease_rows("ns1"), meta_expect=None))
    assert emu.sheet_properties(META_TAB)["hidden"] is True
    assert backend.read().meta == {"sheetrunner": "note", "namespace": "ns1"}


def test_the_meta_tab_is_replaced_whole_and_kept_hidden(emu):
    backend = opened(emu, runs_tab(1))
    emu.set_hidden(META_TAB, False)  # a person showed it
    table = backend.read()
    backend.write(SheetWrite(meta=[["namespace", "ns2"]], meta_expect=table.meta))
    assert emu.values(tab=META_TAB) == [["namespace", "ns2"]]
    assert emu.sheet_properties(META_TAB)["hidden"] is True


def test_the_meta_write_is_compare_and_set_and_the_rest_still_lands(emu, caplog):
    backend = opened(emu, runs_tab(1))
    table = backend.read()
    emu.set_cell("B2", "ns-other", tab=META_TAB)
    change = SheetWrite(rows=[RowUpdate(2, "r0", {"status": "succeeded"})],
                        meta=[["namespace", "mine"]], meta_expect=table.meta)
    with caplog.at_level(logging.INFO, logger="sheetrunner.sheets.google"):
        backend.write(change)
    assert emu.values(tab=META_TAB) == [["sheetrunner", "note"], ["namespace", "ns-other"]]
    assert emu.cell("E2").value == "succeeded"
    assert "changed since this cycle's read" in caplog.text


def test_two_daemons_creating_the_meta_tab_at_once_exactly_one_lands(emu):
    key = emu.create_spreadsheet({"Runs": runs_tab(2)})
    first, second = sheet(emu, key), sheet(emu, key)
    assert first.read().meta is None and second.read().meta is None
    first.write(SheetWrite(meta=lease_rows("first"), meta_expect=None))
    second.write(SheetWrite(meta=lease_rows("second"), meta_expect=None,
                            rows=[RowUpdate(2, "r0", {"status": "succeeded"})]))
    assert emu.values(tab=META_TAB)[1] == ["namespace", "first"]
    assert emu.tabs().count(META_TAB) == 1
    assert emu.cell("E2", tab="Runs").value == "succeeded"
    assert second.read().meta == first.read().meta


def test_a_meta_tab_created_between_re_read_and_batch_loses_only_the_meta(emu, monkeypatch):
    """The API has no compare-and-set: the addSheet of a title taken an instant ago fails the
    whole batch. The backend then sends the rest again, without the meta tab."""
    backend = sheet(emu, emu.create_spreadsheet({"Runs": runs_tab(2)}))
    backend.read()
    reread = backend._reread_for

    def reread_then_race(change):
        fresh = reread(change)
        emu.add_tab(META_TAB, lease_rows("racer"))
        return fresh

    monkeypatch.setattr(backend, "_reread_for", reread_then_race)
    backend.write(SheetWrite(meta=lease_rows("late"), meta_expect=None,
                             rows=[RowUpdate(2, "r0", {"status": "succeeded"})]))
    assert emu.values(tab=META_TAB)[1] == ["namespace", "racer"]
    assert emu.cell("E2", tab="Runs").value == "succeeded"
    assert emu.counts["spreadsheets.batchUpdate"] == 2
    monkeypatch.undo()
    emu.reset_counts()
    assert backend.read().meta == {"sheetrunner": "note", "namespace": "racer"}
    assert dict(emu.counts) == {"read": 1, "values.batchGet": 1}


# ---------------------------------------------------------------- initialize


def test_initialize_an_empty_tab(emu):
    backend = sheet(emu, emu.create_spreadsheet({"Runs": []}))
    backend.initialize(HEADER, ["mnist", "cifar"])
    assert emu.counts["write"] == 1
    assert emu.values() == [HEADER]
    assert emu.sheet_properties("Runs")["gridProperties"]["frozenRowCount"] == 1
    action = emu.cell("C2").validation
    assert [v["userEnteredValue"] for v in action["condition"]["values"]] == [
        "run",
        "hold",
        "stop",
        "rerun",
    ]
    assert action["strict"] is True and action["showCustomUi"] is True
    assert emu.cell("C1000").validation == action
    assert emu.cell("C1").validation is None
    job = emu.cell("A2").validation
    assert [v["userEnteredValue"] for v in job["condition"]["values"]] == ["mnist", "cifar"]


def test_initialize_a_tab_with_data_only_adds_missing_columns(emu):
    rows = [["job", "--lr", "notes"], ["mnist", 0.1, "keep me"]]
    backend = sheet(emu, emu.create_spreadsheet({"Runs": rows}, cols=4))
    backend.initialize(HEADER, ["mnist"])
    assert emu.values() == [
        ["job", "--lr", "notes", "action", "id", "status", "host", "message"],
        ["mnist", 0.1, "keep me"],
    ]
    assert "frozenRowCount" not in emu.sheet_properties("Runs")["gridProperties"]
    assert emu.cell("A2").validation is None
    emu.reset_counts()
    backend.initialize(HEADER, ["mnist"])
    assert emu.counts["write"] == 0


# ---------------------------------------------------------------- errors and configuration


def test_errors_say_what_to_fix(emu):
    with pytest.raises(SheetError, match="not found"):
        sheet(emu, "1NoSuchSpreadsheet").read()
    key = emu.create_spreadsheet({"Other": []})
    with pytest.raises(SheetError, match="no tab named 'Runs'.*'Other'"):
        sheet(emu, key).read()
    emu.deny_access(key)
    with pytest.raises(SheetError, match="share it as Editor"):
        GoogleSheet(key, None, "none", emu.url).read()


def test_error_messages_never_carry_the_token(emu):
    key = emu.create_spreadsheet({"Runs": runs_tab(1)})
    token = google.oauth2.credentials.Credentials(token="ya29.SECRET-TOKEN")
    backend = GoogleSheet(key, "Runs", credentials=token, endpoint=emu.url)
    emu.fail_next(1, 401)
    with pytest.raises(SheetError) as raised:
        backend.read()
    assert "check [sheet] credentials" in str(raised.value)
    assert "SECRET" not in str(raised.value)


def test_a_permanent_error_drops_the_write_and_is_not_transient(emu):
    backend = opened(emu, runs_tab(2))
    emu.fail_next(1, 400, kind="write")
    with pytest.raises(SheetError) as raised:
        backend.write(SheetWrite(rows=[RowUpdate(2, "r0", {"status": "x"})]))
    assert not isinstance(raised.value, SheetUnavailable)
    assert backend.pending is None


def test_configuration_errors(monkeypatch, tmp_path):
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    with pytest.raises(ConfigError, match="only works with an endpoint"):
        GoogleSheet("1abc", None, credentials="none", endpoint=None)
    with pytest.raises(ConfigError, match="not a Google Sheets URL"):
        GoogleSheet("https://example.com/x", None, credentials="none", endpoint="http://x")
    with pytest.raises(ConfigError, match="no credentials file"):
        GoogleSheet("1abc", None, credentials=str(tmp_path / "missing.json"))
    bad = tmp_path / "key.json"
    bad.write_text(json.dumps({"type": "external_account"}))
    with pytest.raises(ConfigError, match="expected a service-account key"):
        GoogleSheet("1abc", None, credentials=str(bad))


def test_url_and_endpoint_from_the_environment(emu, monkeypatch):
    key = emu.create_spreadsheet({"Runs": runs_tab(1)})
    monkeypatch.setenv(ENDPOINT_ENV, emu.url)
    url = f"https://docs.google.com/spreadsheets/d/{key}/edit#gid=0"
    backend = GoogleSheet(url, "Runs", credentials="none", endpoint="http://127.0.0.1:9")
    assert backend.read().value(2, "id") == "r0"


def test_a_service_account_key_is_used_and_a_loose_mode_is_warned(emu, tmp_path, caplog):
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "test",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "runner@test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"{emu.url}/token",
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    os.chmod(path, 0o644)
    key = emu.create_spreadsheet({"Runs": runs_tab(1)})
    with caplog.at_level(logging.WARNING, logger="sheetrunner.sheets.google"):
        backend = GoogleSheet(key, "Runs", credentials=str(path), endpoint=emu.url)
    assert "chmod 600" in caplog.text
    assert backend.read().value(2, "id") == "r0"
    assert emu.counts["token"] == 1
    assert backend._client.http_client.auth.scopes == [
        "https://www.googleapis.com/auth/spreadsheets"
    ]
