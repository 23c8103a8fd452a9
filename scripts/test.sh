#!/usr/bin/env bash
# The tests: installs what they need on a fresh machine, then runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k reconcile).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/sbin/sshd ]; then  # the SSH tests start real OpenSSH servers
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq openssh-server openssh-client >/dev/null
fi
scripts/install.sh "jobs,test"
exec python3 -m pytest -q "$@"
