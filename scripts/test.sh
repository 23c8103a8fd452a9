#!/usr/bin/env bash
# The tests: installs what they need on a fresh machine, then runs pytest in .venv.
#   - OpenSSH's sshd binary (scripts/install-sshd.sh, only if /usr/sbin/sshd is missing;
#     apt-get, its service never started): the SSH tests start their own sshd processes
#   - Slurm's daemons, client commands and munge (scripts/install-slurm.sh, only if missing;
#     apt-get, services never started): the Slurm tests start their own single-node cluster
#   - tmux (apt-get, only if missing): `sheetrunner top` is tested in a real terminal
#   - .venv with torch==2.13.0 (CPU) and sheetrunner[jobs,test] (scripts/install.sh)
# Extra arguments go to pytest (e.g. scripts/test.sh -k reconcile).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-sshd.sh
scripts/install-slurm.sh
if ! command -v tmux >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"  # `sheetrunner top` is tested in a real terminal
    $sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq tmux >/dev/null
fi
scripts/install.sh "jobs,test"
# Two worker processes by default (pytest-xdist): SHEETRUNNER_TEST_WORKERS=0 runs them in
# this process (e.g. to use a debugger), =auto one per core.
exec "${SHEETRUNNER_VENV:-.venv}/bin/python" -m pytest -q -n "${SHEETRUNNER_TEST_WORKERS:-2}" "$@"
