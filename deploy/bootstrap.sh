#!/usr/bin/env bash
# Make this machine able to run saga-shop natively and its tests: a Python 3.11 virtualenv with
# the project installed (re-installed only when pyproject.toml changes) and nginx from Debian.
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
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi

# nginx is the gateway in native mode. Debian's package; /usr/sbin may be missing from PATH.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "bootstrap: installing nginx from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq nginx >/dev/null
    else
        echo "bootstrap: nginx is missing; native mode needs it. Install it with:" >&2
        echo "    sudo apt-get update && sudo apt-get install -y nginx" >&2
    fi
fi
echo "bootstrap: ready ($("$VENV/bin/python" --version), $( (command -v nginx || echo /usr/sbin/nginx) ))"
