"""Render a workbook's first tab to a PNG, as a spreadsheet program shows it (for the docs).

    python scripts/render_sheet.py examples/local/experiments.xlsx docs/images/sheet.png

Needs LibreOffice (`soffice`, Debian: libreoffice-calc-nogui) and pdftoppm
(poppler-utils); neither is a dependency of sheetrunner. Long columns (`log`,
`started`, `priority`) are hidden and the page is fitted to one landscape
width, on a copy: the workbook itself is not changed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import openpyxl
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from PIL import Image, ImageOps

HIDDEN = {"log", "started", "priority"}
WIDTHS = {"job": 9, "--lr": 6, "--prune-fraction": 13, "gpus": 5, "action": 6, "id": 11,
          "status": 10, "host": 6, "metrics": 44, "message": 60, "curve": 12}


def printable_copy(source: Path, target: Path) -> None:
    book = openpyxl.load_workbook(source)
    for other in book.worksheets[1:]:
        other.sheet_state = "hidden"
    sheet = book.worksheets[0]
    for index, cell in enumerate(sheet[1], start=1):
        column = sheet.column_dimensions[get_column_letter(index)]
        column.width = WIDTHS.get(str(cell.value), 8)
        column.hidden = cell.value in HIDDEN
        cell.font = Font(bold=True)
    sheet.page_setup.orientation = "landscape"
    sheet.page_setup.paperSize = sheet.PAPERSIZE_A3
    sheet.sheet_properties.pageSetUpPr.fitToPage = True
    sheet.page_setup.fitToWidth, sheet.page_setup.fitToHeight = 1, 0
    sheet.print_options.gridLines = True
    book.save(target)


def render(source: Path, png: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "sheet.xlsx"
        printable_copy(source, copy)
        subprocess.run(["soffice", "--headless", "--convert-to", "pdf", "--outdir", tmp, str(copy)],
                       check=True, capture_output=True, timeout=120)
        subprocess.run(["pdftoppm", "-png", "-r", "200", "-singlefile", str(Path(tmp) / "sheet.pdf"),
                        str(Path(tmp) / "page")], check=True, timeout=120)
        image = Image.open(Path(tmp) / "page.png").convert("RGB")
    left, top, right, bottom = ImageOps.invert(image.convert("L")).getbbox()
    image.crop((max(0, left - 12), max(0, top - 12), right + 12, bottom + 12)).save(png, optimize=True)


if __name__ == "__main__":
    render(Path(sys.argv[1]), Path(sys.argv[2]))
