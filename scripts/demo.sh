#!/usr/bin/env bash
# The demo: the example workbook's rows run on this machine. Ctrl-C stops the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh jobs
exec sheetrunner daemon -c examples/local/sheetrunner.toml "$@"
