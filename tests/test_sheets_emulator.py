"""The Sheets API emulator answers like the real API.

Ground truth is recorded traffic: every Sheets request in the cassettes is
replayed and must get the recorded answer byte for byte. The behaviours the
recordings do not show (typing rules sheetrunner's safety depends on, faults,
counters, user-action hooks) are pinned by the tests below them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from sheets_emulator import DROP, SheetsEmulator
from sheets_emulator.replay import episodes, replay

# The recordings are gspread's own test cassettes. They are reference data kept beside the
# project (../shared/reference), not part of it; SHEETRUNNER_CASSETTES points elsewhere.
CASSETTE_DIR = Path(os.environ.get(
    "SHEETRUNNER_CASSETTES",
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "sheets-api-cassettes"))
USED = [
    "ClientTest.test_access_non_existing_spreadsheet", "SpreadsheetTest.test_add_del_worksheet",
    "SpreadsheetTest.test_values_get", "WorksheetTest.test_add_validation",
    "WorksheetTest.test_append_row_with_empty_value", "WorksheetTest.test_batch_get",
    "WorksheetTest.test_batch_update", "WorksheetTest.test_format", "WorksheetTest.test_freeze",
    "WorksheetTest.test_get_all_values",
    "WorksheetTest.test_get_all_values_date_time_render_options", "WorksheetTest.test_sort",
    "WorksheetTest.test_update_cells_noncontiguous", "WorksheetTest.test_worksheet_notes",
]
CASSETTES = [p for p in (CASSETTE_DIR / f"{name}.json" for name in USED) if p.exists()]
needs_cassettes = pytest.mark.skipif(
    not CASSETTES, reason=f"the recorded Sheets API traffic is not at {CASSETTE_DIR}")


@pytest.fixture(scope="module")
def emulator():
    with SheetsEmulator() as emu:
        yield emu


@pytest.fixture
def emu(emulator):
    emulator.reset_counts()
    emulator.latency_s = 0.0
    return emulator


def _get(emu, key, path, **params):
    return requests.get(f"{emu.url}/v4/spreadsheets/{key}{path}", params=params, timeout=5)


def _post(emu, key, path, body, **params):
    url = f"{emu.url}/v4/spreadsheets/{key}{path}"
    return requests.post(url, json=body, params=params, timeout=5)


def _values(emu, key, rng, **params):
    answer = _get(emu, key, "/values/" + requests.utils.quote(rng, safe=""), **params)
    assert answer.status_code == 200, answer.text
    return answer.json().get("values", [])


# ---------------------------------------------------------------- recorded traffic


@needs_cassettes
def test_the_recordings_are_all_there():
    assert len(CASSETTES) == len(USED)


@pytest.mark.parametrize("cassette", CASSETTES, ids=lambda p: p.stem)
def test_recorded_answers_are_reproduced_byte_for_byte(emu, cassette):
    replayed = 0
    for episode in episodes(cassette):
        mismatches = replay(emu, episode)
        assert not mismatches, "\n\n".join(str(m) for m in mismatches[:3])
        replayed += len(episode.interactions)
    assert replayed > 0


@needs_cassettes
def test_replay_notices_a_different_answer(emu, tmp_path):
    """Guard against a comparison that cannot fail: alter one recorded body."""
    recording = json.loads(CASSETTES[0].read_text(encoding="utf-8"))
    for interaction in recording["interactions"]:
        body = interaction["response"]["body"]["string"] or ""
        if "sheets.googleapis.com" in interaction["request"]["uri"] and '"code": 404' in body:
            interaction["response"]["body"]["string"] = body.replace("404", "410", 1)
    altered = tmp_path / "altered.json"
    altered.write_text(json.dumps(recording), encoding="utf-8")
    assert any(replay(emu, episode) for episode in episodes(altered))


# ---------------------------------------------------------------- typing and rendering


def test_text_that_looks_like_a_formula_stays_text_unless_user_entered(emu):
    key = emu.create_spreadsheet({"T": []})
    body = {"values": [["=1+1", "'=1+1", "$(id)", "; rm -rf ~", "0.1"]]}
    raw = requests.put(
        f"{emu.url}/v4/spreadsheets/{key}/values/T!A1",
        params={"valueInputOption": "RAW"},
        json=body,
        timeout=5,
    )
    assert raw.status_code == 200
    entered = requests.put(
        f"{emu.url}/v4/spreadsheets/{key}/values/T!A2",
        params={"valueInputOption": "USER_ENTERED"},
        json=body,
        timeout=5,
    )
    assert entered.status_code == 200
    rows = _values(emu, key, "T", valueRenderOption="UNFORMATTED_VALUE")
    assert rows[0] == ["=1+1", "'=1+1", "$(id)", "; rm -rf ~", "0.1"]
    assert rows[1] == [2, "=1+1", "$(id)", "; rm -rf ~", 0.1]
    assert _values(emu, key, "T!A2", valueRenderOption="FORMULA") == [["=1+1"]]
    assert emu.cell("T!A1").formula is None and emu.cell("T!A2").formula == "=1+1"


def test_unformatted_values_keep_precision_that_the_display_loses(emu):
    key = emu.create_spreadsheet(
        {"T": [["1.2345e-4", "2,000,000.01", "50%", "2024-03-01", "TRUE"]]}
    )
    assert _values(emu, key, "T", valueRenderOption="UNFORMATTED_VALUE") == [
        [0.00012345, 2000000.01, 0.5, 45352, True]
    ]
    assert _values(emu, key, "T") == [["1.23E-04", "2,000,000.01", "50%", "2024-03-01", "TRUE"]]
    dates = _values(
        emu,
        key,
        "T!D1",
        valueRenderOption="UNFORMATTED_VALUE",
        dateTimeRenderOption="FORMATTED_STRING",
    )
    assert dates == [["2024-03-01"]]


def test_ragged_rows_and_columns_are_trimmed_like_the_api(emu):
    key = emu.create_spreadsheet({"T": [["a", "", "c"], [], ["", "b"], [], []]})
    assert _values(emu, key, "T") == [["a", "", "c"], [], ["", "b"]]
    assert _values(emu, key, "T", majorDimension="COLUMNS") == [["a"], ["", "", "b"], ["c"]]
    answer = _get(emu, key, "/values/T%21A1%3AC").json()
    assert answer["range"] == "T!A1:C1000"


def test_typed_update_cells_values_are_never_parsed(emu):
    key = emu.create_spreadsheet({"T": []})
    cells = [
        {"userEnteredValue": {"stringValue": "=1+1"}},
        {"userEnteredValue": {"numberValue": 0.00012345}},
        {"userEnteredValue": {"boolValue": False}},
        {"userEnteredValue": {"formulaValue": "=SPARKLINE({1,2,3})"}},
        {"userEnteredValue": {"stringValue": "007"}},
    ]
    request = {
        "updateCells": {
            "range": {
                "sheetId": 0,
                "startRowIndex": 0,
                "endRowIndex": 1,
                "startColumnIndex": 0,
                "endColumnIndex": 5,
            },
            "rows": [{"values": cells}],
            "fields": "userEnteredValue",
        }
    }
    assert _post(emu, key, ":batchUpdate", {"requests": [request]}).status_code == 200
    assert _values(emu, key, "T", valueRenderOption="UNFORMATTED_VALUE") == [
        ["=1+1", 0.00012345, False, "", "007"]
    ]
    assert emu.cell("T!A1").formula is None
    assert emu.cell("T!D1").formula == "=SPARKLINE({1,2,3})"


def test_formulas_compute_simple_arithmetic(emu):
    emu.create_spreadsheet({"T": [["2", "=A1*3", "=(B1-1)/2^2", "=1/0", "=FOO(1)"]]})
    assert [emu.cell(a1, tab="T").value for a1 in ("B1", "C1", "D1", "E1")] == [
        6,
        1.25,
        "#DIV/0!",
        "#NAME?",
    ]


# ---------------------------------------------------------------- batchUpdate requests


def test_repeat_cell_sets_only_the_masked_format(emu):
    key = emu.create_spreadsheet({"T": [["a", "b"]]})
    bold = {
        "repeatCell": {
            "range": {"sheetId": 0, "startRowIndex": 0, "endRowIndex": 1},
            "cell": {"userEnteredFormat": {"textFormat": {"bold": True}}},
            "fields": "userEnteredFormat.textFormat.bold",
        }
    }
    colour = {
        "repeatCell": {
            "range": {"sheetId": 0, "startRowIndex": 0, "endRowIndex": 1},
            "cell": {"userEnteredFormat": {"backgroundColor": {"red": 0.8, "green": 0.5}}},
            "fields": "userEnteredFormat.backgroundColor",
        }
    }
    assert _post(emu, key, ":batchUpdate", {"requests": [bold, colour]}).status_code == 200
    cell = emu.cell("T!Z1")
    assert cell.background == "CC7F00"
    assert cell.format["textFormat"] == {"bold": True}
    assert cell.format["backgroundColorStyle"] == {"rgbColor": {"red": 0.8, "green": 0.49803922}}


def test_a_failing_request_leaves_the_whole_batch_unapplied(emu):
    key = emu.create_spreadsheet({"T": [["a"]]})
    rename = {
        "updateSheetProperties": {"properties": {"sheetId": 0, "title": "New"}, "fields": "title"}
    }
    broken = {"deleteSheet": {"sheetId": 12345}}
    answer = _post(emu, key, ":batchUpdate", {"requests": [rename, broken]})
    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "code": 400,
        "message": "Invalid requests[1].deleteSheet: No grid with id: 12345",
        "status": "INVALID_ARGUMENT",
    }
    assert emu.tabs() == ["T"]


def test_dimensions_can_be_appended_inserted_and_deleted(emu):
    key = emu.create_spreadsheet({"T": [["a"], ["b"], ["c"]]}, rows=3, cols=2)
    requests_ = [
        {"appendDimension": {"sheetId": 0, "dimension": "COLUMNS", "length": 3}},
        {
            "insertDimension": {
                "range": {"sheetId": 0, "dimension": "ROWS", "startIndex": 1, "endIndex": 2}
            }
        },
        {
            "deleteDimension": {
                "range": {"sheetId": 0, "dimension": "ROWS", "startIndex": 3, "endIndex": 4}
            }
        },
    ]
    assert _post(emu, key, ":batchUpdate", {"requests": requests_}).status_code == 200
    assert emu.sheet_properties("T")["gridProperties"] == {"rowCount": 3, "columnCount": 5}
    assert emu.values(tab="T") == [["a"], [], ["b"]]


def test_add_sheet_with_a_chosen_id_and_a_duplicate_title(emu):
    key = emu.create_spreadsheet({"T": []})
    add = {"addSheet": {"properties": {"sheetId": 77, "title": "log"}}}
    reply = _post(emu, key, ":batchUpdate", {"requests": [add]}).json()["replies"][0]
    assert reply["addSheet"]["properties"]["sheetId"] == 77
    again = _post(emu, key, ":batchUpdate", {"requests": [add]})
    assert again.status_code == 400
    assert "already exists" in again.json()["error"]["message"]


# ---------------------------------------------------------------- errors, faults, counters


def test_errors_have_the_api_shape(emu):
    key = emu.create_spreadsheet({"T": []})
    bad = _get(emu, key, "/values/%27Nope%27%21A1")
    assert bad.status_code == 400
    assert bad.json() == {
        "error": {
            "code": 400,
            "message": "Unable to parse range: 'Nope'!A1",
            "status": "INVALID_ARGUMENT",
        }
    }
    assert _get(emu, "missing", "").status_code == 404
    emu.deny_access(key)
    assert _get(emu, key, "").json()["error"]["status"] == "PERMISSION_DENIED"


def test_injected_faults_then_recovery(emu):
    key = emu.create_spreadsheet({"T": [["a"]]})
    emu.fail_next(1, 429)
    emu.fail_next(1, 503)
    quota = _get(emu, key, "/values/T")
    assert quota.status_code == 429
    assert quota.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert "read_requests" in quota.text
    assert _get(emu, key, "/values/T").json()["error"]["status"] == "UNAVAILABLE"
    assert _get(emu, key, "/values/T").status_code == 200
    emu.fail_next(1, DROP)
    with pytest.raises(requests.ConnectionError):
        _get(emu, key, "/values/T")


def test_faults_can_target_writes_only(emu):
    key = emu.create_spreadsheet({"T": []})
    emu.fail_next(1, 500, kind="write")
    assert _get(emu, key, "/values/T").status_code == 200
    assert _post(emu, key, ":batchUpdate", {"requests": []}).status_code == 500
    assert _post(emu, key, ":batchUpdate", {"requests": []}).status_code == 200


def test_counts_by_kind_and_endpoint(emu):
    key = emu.create_spreadsheet({"T": []})
    _get(emu, key, "")
    _get(emu, key, "/values:batchGet", ranges="T")
    _post(emu, key, ":batchUpdate", {"requests": []})
    assert emu.counts["read"] == 2 and emu.counts["write"] == 1
    assert emu.counts["spreadsheets.get"] == 1 and emu.counts["values.batchGet"] == 1
    assert [r.status for r in emu.log] == [200, 200, 200]
    emu.reset_counts()
    assert emu.counts["read"] == 0 and emu.log == []


# ---------------------------------------------------------------- user-action hooks


def test_user_actions(emu):
    emu.create_spreadsheet({"Runs": [["job", "n"], ["b", 2], ["a", 1], ["c", 3]]})
    emu.sort_rows("job")
    assert emu.values(tab="Runs") == [["job", "n"], ["a", 1], ["b", 2], ["c", 3]]
    emu.sort_rows("n", descending=True)
    assert [row[0] for row in emu.values()[1:]] == ["c", "b", "a"]
    emu.delete_row(2)
    assert emu.values()[1:] == [["b", 2], ["a", 1]]
    emu.set_cell("C2", "=B2*10")
    emu.set_cell("D2", "=B2*10", as_text=True)
    assert emu.cell("C2").value == 20 and emu.cell("D2").value == "=B2*10"
    emu.insert_row(2, ["z", 9])
    emu.rename_tab("Runs", "Renamed")
    assert emu.values(tab="Renamed")[1] == ["z", 9]
