#!/usr/bin/env bash
# What the Slurm tests need from the system: Debian's Slurm daemons and client commands
# and munge. The tests start their own single-node cluster (slurmctld + slurmd in a
# temporary directory, SLURM_CONF pointing there); the packages' services are never
# started (a policy-rc.d answering 101 while installing, as scripts/install-sshd.sh does).
#
#   scripts/install-slurm.sh   install slurmctld slurmd slurm-client munge if any is missing
set -euo pipefail

have_all() {
    command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
        && command -v sbatch >/dev/null 2>&1 && command -v munged >/dev/null 2>&1
}
# PATH may lack /usr/sbin for a non-root user.
PATH="$PATH:/usr/sbin:/sbin"
if have_all; then
    exit 0
fi
command -v apt-get >/dev/null 2>&1 \
    || { echo "install-slurm.sh: no apt-get: install Slurm (slurmctld, slurmd, the client commands) and munge yourself" >&2; exit 1; }

sudo_=""
[ "$(id -u)" = 0 ] || sudo_="sudo"
policy=/usr/sbin/policy-rc.d
placed_policy=0
cleanup() {
    if [ "$placed_policy" = 1 ]; then $sudo_ rm -f "$policy"; fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# placed by sheetrunner scripts/install-slurm.sh while it installs Slurm\nexit 101\n' \
        | $sudo_ tee "$policy" >/dev/null
    $sudo_ chmod 755 "$policy"
    placed_policy=1
fi

packages="slurmctld slurmd slurm-client munge"
echo "install-slurm.sh: installing $packages (their services are not started)"
install() {
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends $packages >/dev/null
}
# The package lists are refreshed only when the install cannot find the packages.
if ! apt-cache show slurmctld >/dev/null 2>&1 || ! install; then
    $sudo_ apt-get update -qq
    install
fi
