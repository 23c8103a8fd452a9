"""Write examples/slurm/experiments.xlsx: a few rows for the Slurm example (a sweep of
learning rates, one row on 2 GPUs)."""

from pathlib import Path

import openpyxl

HEADER = ["job", "--lr", "--steps", "gpus", "action"]
ROWS = [
    ["train", 0.1, 5, 1, None],
    ["train", 0.3, 5, 1, None],
    ["train", 0.2, 5, 2, None],
]


def main(path: Path | None = None) -> Path:
    path = path or Path(__file__).with_name("experiments.xlsx")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "experiments"
    sheet.append(HEADER)
    for row in ROWS:
        sheet.append(row)
    book.save(path)
    return path


if __name__ == "__main__":
    print(main())
