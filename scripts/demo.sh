#!/usr/bin/env bash
# The demo: the example workbook's rows run on this machine. Ctrl-C stops the daemon.
# sheetrunner[jobs,plot] goes into .venv first (scripts/install.sh; reused when present).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh jobs,plot
# `python -m sheetrunner` is the `sheetrunner` command, whether or not PATH knows it.
exec "${SHEETRUNNER_VENV:-.venv}/bin/python" -m sheetrunner daemon -c examples/local/sheetrunner.toml "$@"
