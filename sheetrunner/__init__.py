"""sheetrunner: run ML experiments from the rows of a spreadsheet on a pool of hosts."""

__version__ = "0.1.0"
