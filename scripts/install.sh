#!/usr/bin/env bash
# Install sheetrunner with its extras into the project's virtual environment.
#
#   scripts/install.sh [EXTRAS]   EXTRAS: comma-separated, default "jobs" (e.g. "jobs,test")
#   scripts/install.sh --check    quick check: a throw-away venv made by $PYTHON takes
#                                 `pip install -e . --no-deps` and imports sheetrunner
#
# The venv is .venv at the repository root (SHEETRUNNER_VENV=DIR for another place),
# created by ${PYTHON:-python3} the first time and reused after that; nothing is ever
# pip-installed into a system Python (Debian and Ubuntu refuse it anyway: PEP 668).
# torch==2.13.0 goes in first: a bare torch requirement with no torch installed would
# pull several GB of CUDA packages; 2.13.0 is the CPU build this project is tested with.
# The project is installed again only when pyproject.toml changed or new extras are
# asked for (SHEETRUNNER_REINSTALL=1 forces it).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH="torch==2.13.0"
py="${PYTHON:-python3}"
venv="${SHEETRUNNER_VENV:-.venv}"

die() { echo "install.sh: $*" >&2; exit 1; }

venv_hint() {
    local ver
    ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 3)"
    echo "install.sh: $py cannot create a virtual environment (no venv/ensurepip):" \
        "on Debian/Ubuntu run: sudo apt-get install python3-venv" \
        "(python$ver-venv for a python$ver that is not the default python3)" >&2
}

# make_venv DIR: a fresh venv with pip at DIR, or the one-line hint and exit 1.
make_venv() {
    command -v "$py" >/dev/null 2>&1 || die "no $py found: install Python >= 3.11 or set PYTHON=/path/to/python3"
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$py is Python $("$py" -c 'import sys; print(sys.version.split()[0])'); sheetrunner needs >= 3.11 (set PYTHON=/path/to/python3.11)"
    if ! "$py" -m venv "$1" >/dev/null 2>&1 || ! "$1/bin/python" -m pip --version >/dev/null 2>&1; then
        rm -rf "$1"   # a venv without pip (Debian without python3-venv) is of no use
        venv_hint
        exit 1
    fi
}

# require_venv PYTHON: refuse to pip-install into anything but a virtual environment.
require_venv() {
    if ! "$1" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; then
        die "refusing to pip-install into $1: it is not a virtual environment (a system" \
            "Python is externally managed, PEP 668); remove $venv or set SHEETRUNNER_VENV to a venv"
    fi
}

if [ "${1:-}" = --check ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    if "$py" -c 'import sys, sysconfig, os; sys.exit(not (sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))' 2>/dev/null; then
        echo "install.sh --check: $py is externally managed (PEP 668); checking the venv path"
    fi
    make_venv "$tmp/venv"
    require_venv "$tmp/venv/bin/python"
    "$tmp/venv/bin/python" -m pip install --quiet --no-deps -e . \
        || die "pip install -e . --no-deps failed in a venv made by $py"
    "$tmp/venv/bin/python" -c 'import sheetrunner, sheetrunner.remote.protocol' \
        || die "sheetrunner does not import in a venv made by $py"
    echo "install.sh --check: a venv made by $py installs and imports sheetrunner"
    exit 0
fi

extras="${1:-jobs}"
vpy="$venv/bin/python"
if [ ! -e "$vpy" ]; then
    echo "install.sh: creating the virtual environment $venv with $py"
    make_venv "$venv"
fi
"$vpy" -c 'pass' 2>/dev/null \
    || die "$vpy does not run (was its Python removed or upgraded?): rm -rf $venv and run again"
require_venv "$vpy"

case ",$extras," in
*,jobs,*)
    if ! "$vpy" -c "import importlib.util as u, sys; sys.exit(u.find_spec(\"torch\") is None)" 2>/dev/null; then
        echo "install.sh: installing $TORCH into $venv"
        "$vpy" -m pip install --quiet "$TORCH"
    fi
    ;;
esac

# Installed already with these extras (or more) from this pyproject.toml? Then nothing to do.
stamp="$venv/.sheetrunner-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have_hash=""; have_extras=""
if [ -f "$stamp" ]; then
    { read -r have_hash || true; read -r have_extras || true; } <"$stamp"
fi
needed=0
[ "${SHEETRUNNER_REINSTALL:-}" = 1 ] && needed=1
[ "$have_hash" = "$want" ] || { needed=1; have_extras=""; }
"$vpy" -c "import sheetrunner" 2>/dev/null || needed=1
IFS=, read -r -a asked <<<"$extras"
for e in "${asked[@]}"; do
    case ",$have_extras," in *",$e,"*) ;; *) needed=1 ;; esac
done
if [ "$needed" = 1 ]; then
    all="$(printf '%s\n' ${have_extras//,/ } "${asked[@]}" | sort -u | paste -sd, -)"
    echo "install.sh: installing sheetrunner[$all] into $venv"
    "$vpy" -m pip install --quiet -e ".[$all]"
    printf '%s\n%s\n' "$want" "$all" >"$stamp"
fi
