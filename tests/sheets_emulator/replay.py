"""Replay recorded Sheets API traffic (vcrpy cassettes) against the emulator.

Each gspread test in a cassette creates a spreadsheet through Drive, works on
it, and deletes it. An episode here is one such spreadsheet: it is seeded as
Drive would create it (one 1000x26 "Sheet1", sheetId 0), then every recorded
Sheets request is sent again and the answer compared with the recording, byte
for byte, once the sheetIds the real API drew at random are mapped to ours.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .server import SheetsEmulator

SHEETS_ORIGIN = "https://sheets.googleapis.com"
DRIVE_CREATE = "https://www.googleapis.com/drive/v3/files?"
_SHEET_ID = re.compile(r'("sheetId": )(\d+)')


@dataclass
class Episode:
    spreadsheet_id: str
    title: str
    interactions: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Mismatch:
    request: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.request}\n--- recorded\n{self.expected}\n--- emulator\n{self.actual}"


def episodes(path: Path) -> Iterator[Episode]:
    """The cassette's spreadsheets, each with its Sheets API interactions in order."""
    current: Episode | None = None
    for interaction in json.loads(path.read_text(encoding="utf-8"))["interactions"]:
        request = interaction["request"]
        if request["method"] == "POST" and request["uri"].startswith(DRIVE_CREATE):
            if current is not None:
                yield current
            created = json.loads(interaction["response"]["body"]["string"])
            current = Episode(created["id"], created["name"])
        elif current is not None and request["uri"].startswith(SHEETS_ORIGIN):
            current.interactions.append(interaction)
    if current is not None:
        yield current


def replay(emulator: SheetsEmulator, episode: Episode) -> list[Mismatch]:
    """Send the episode's requests to the emulator; list the answers that differ."""
    emulator.create_spreadsheet(title=episode.title, spreadsheet_id=episode.spreadsheet_id)
    ids: dict[str, str] = {}
    mismatches = []
    with requests.Session() as session:
        for interaction in episode.interactions:
            mismatch = _replay_one(session, emulator.url, interaction, ids)
            if mismatch is not None:
                mismatches.append(mismatch)
    emulator.delete_spreadsheet(episode.spreadsheet_id)
    return mismatches


def _replay_one(
    session: requests.Session, url: str, interaction: dict[str, Any], ids: dict[str, str]
) -> Mismatch | None:
    request, recorded = interaction["request"], interaction["response"]
    body = _map_ids(request.get("body") or "", ids)
    answer = session.request(
        request["method"],
        url + request["uri"][len(SHEETS_ORIGIN) :],
        data=body.encode("utf-8") if body else None,
        headers={"Content-Type": "application/json"} if body else {},
        timeout=10,
    )
    expected = recorded["body"]["string"] or ""
    _learn_ids(expected, answer.text, ids)
    expected = _map_ids(expected, ids)
    if answer.status_code == recorded["status"]["code"] and answer.text == expected:
        return None
    described = f"{request['method']} {request['uri']} {body[:300]}"
    status = f"{recorded['status']['code']} != {answer.status_code}\n"
    return Mismatch(described, status + expected, answer.text)


def _learn_ids(expected: str, actual: str, ids: dict[str, str]) -> None:
    """Pair the sheetIds of a recorded answer with the emulator's, in order of appearance."""
    for (_, old), (_, new) in zip(
        _SHEET_ID.findall(expected), _SHEET_ID.findall(actual), strict=False
    ):
        if old != new and old not in ids:
            ids[old] = new


def _map_ids(text: str, ids: dict[str, str]) -> str:
    return _SHEET_ID.sub(lambda m: m.group(1) + ids.get(m.group(2), m.group(2)), text)
