#!/usr/bin/env bash
# Make this machine able to run saga-shop natively and its tests: a Python 3.11 virtualenv with
# the project installed (re-installed only when pyproject.toml changes), nginx and chromium from
# Debian.
# Safe to run any number of times; `make bootstrap` and .ci/run both call it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
stamp="$VENV/.saga-installed"

if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing saga-shop and its dev tools into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev,native]'
    touch "$stamp"
fi

# debian_package PACKAGE PATH WHAT: apt-get install PACKAGE unless PATH is there (as root; else
# say how).
debian_package() {
    local package=$1 path=$2 what=$3
    if [ -x "$path" ] || command -v "$package" >/dev/null 2>&1; then
        return
    fi
    if [ "$(id -u)" -eq 0 ]; then
        echo "bootstrap: installing $package from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "$package" >/dev/null
    else
        echo "bootstrap: $package is missing; $what needs it. Install it with:" >&2
        echo "    sudo apt-get update && sudo apt-get install -y $package" >&2
    fi
}

# nginx is the gateway in native mode (/usr/sbin may be missing from PATH). Chromium drives
# tests/e2e/test_browser.py: Playwright's Python package launches it with executable_path, so
# no browser is ever downloaded.
debian_package nginx /usr/sbin/nginx "native mode"
debian_package chromium /usr/bin/chromium "the browser tests"
echo "bootstrap: ready ($("$VENV/bin/python" --version), $( (command -v nginx || echo /usr/sbin/nginx) ))"
