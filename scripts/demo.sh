#!/usr/bin/env bash
# The demo: the example workbook's rows run on this machine. Ctrl-C stops the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh jobs
# `python3 -m sheetrunner` is the `sheetrunner` command, whether or not PATH knows it yet.
exec "${PYTHON:-python3}" -m sheetrunner daemon -c examples/local/sheetrunner.toml "$@"
