#!/usr/bin/env bash
# What the SSH tests need from the system: OpenSSH's sshd binary and ssh-keygen.
# The tests start their own sshd processes on loopback ports; they never use the
# system's ssh service. So the package is installed with services forbidden to start
# (a policy-rc.d answering 101, which invoke-rc.d and deb-systemd-invoke obey), and a
# service it enabled for the next boot is disabled again: installing leaves no sshd
# listening, now or after a reboot, that was not there before.
#
#   scripts/install-sshd.sh              install openssh-server if /usr/sbin/sshd is missing
#   scripts/install-sshd.sh --reinstall  reinstall it the same way (to check this script)
set -euo pipefail

if [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null 2>&1 && [ "${1:-}" != --reinstall ]; then
    exit 0
fi
command -v apt-get >/dev/null 2>&1 \
    || { echo "install-sshd.sh: no apt-get: install OpenSSH's server (/usr/sbin/sshd) and ssh-keygen yourself" >&2; exit 1; }

sudo_=""
[ "$(id -u)" = 0 ] || sudo_="sudo"
policy=/usr/sbin/policy-rc.d
placed_policy=0
was_installed=0
[ -x /usr/sbin/sshd ] && was_installed=1

cleanup() {
    if [ "$placed_policy" = 1 ]; then $sudo_ rm -f "$policy"; fi
}
trap cleanup EXIT

if [ ! -e "$policy" ]; then
    # Only ours is removed afterwards; an existing policy-rc.d is left as it is.
    printf '#!/bin/sh\n# placed by sheetrunner scripts/install-sshd.sh while it installs openssh-server\nexit 101\n' \
        | $sudo_ tee "$policy" >/dev/null
    $sudo_ chmod 755 "$policy"
    placed_policy=1
fi

echo "install-sshd.sh: installing openssh-server (the sshd binary only: its service is not started)"
$sudo_ apt-get update -qq
reinstall=""
[ "${1:-}" = --reinstall ] && reinstall="--reinstall"
DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends $reinstall \
    openssh-server openssh-client >/dev/null

# Newly installed: the package enabled its service for the next boot; undo that
# (a machine that had sshd before keeps whatever it had).
if [ "$was_installed" = 0 ]; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        $sudo_ systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
    else
        # No systemd: a policy-rc.d that was already there may have let it start.
        if [ -f /run/sshd.pid ] && [ -x /etc/init.d/ssh ]; then
            $sudo_ /etc/init.d/ssh stop >/dev/null 2>&1 || true
        fi
        if command -v update-rc.d >/dev/null 2>&1; then
            $sudo_ update-rc.d ssh disable >/dev/null 2>&1 || true
        fi
    fi
fi
