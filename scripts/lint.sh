#!/usr/bin/env bash
# Lint: ruff check, ruff format (the package) and mypy, pinned in the test extra, from .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
venv="${SHEETRUNNER_VENV:-.venv}"
status=0
"$venv/bin/ruff" check . || status=1
"$venv/bin/ruff" format --check sheetrunner || status=1
"$venv/bin/mypy" || status=1
exit "$status"
