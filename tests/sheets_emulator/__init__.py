"""A small Google Sheets API v4 emulator for tests: real HTTP, in-memory sheets.

    with SheetsEmulator() as emu:
        key = emu.create_spreadsheet({"Runs": [["job", "--lr"], ["mnist", 0.1]]})
        ...point gspread at emu.url...
        emu.cell("Runs!B2").value  # -> 0.1

It implements the endpoints gspread 6.2 uses for the calls sheetrunner makes
(see docs/google-sheets.md), answering byte for byte like the recorded API.
"""

from .model import ApiError
from .server import DROP, CellInfo, RequestRecord, SheetsEmulator

__all__ = ["DROP", "ApiError", "CellInfo", "RequestRecord", "SheetsEmulator"]
