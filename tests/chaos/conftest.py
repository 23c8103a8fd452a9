"""What the chaos tests share: the Sheets API emulator, for the scenarios on Google's side."""

from __future__ import annotations

import pytest
from sheets_emulator import SheetsEmulator

from sheetrunner.sheets.google import ENDPOINT_ENV


@pytest.fixture
def emu(monkeypatch):
    """A running emulator; the endpoint comes from each test's config, not the environment."""
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    with SheetsEmulator() as emulator:
        yield emulator
