"""`python -m sheetrunner ...` is the `sheetrunner` command (useful before PATH knows it)."""

from .cli import run

run()
