#!/usr/bin/env bash
# Install sheetrunner with its extras into the current Python, torch first.
# A bare torch requirement with no torch installed would pull several GB of
# CUDA packages; torch==2.13.0 is the CPU build this project is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-jobs}"
py="${PYTHON:-python3}"
if ! "$py" -c "import torch" 2>/dev/null; then
    "$py" -m pip install --quiet "torch==2.13.0"
fi
if ! "$py" -c "import sheetrunner, gspread, paramiko, openpyxl" 2>/dev/null \
    || [ "${SHEETRUNNER_REINSTALL:-}" = 1 ] || [ "$extras" != jobs ]; then
    "$py" -m pip install --quiet -e ".[$extras]"
fi
