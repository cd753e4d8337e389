#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser tests (tests/browser): Debian's chromium,
# driven by Playwright (in .venv, from the dev extra) through its executable path -- no
# browser download. Idempotent; a no-op in well under a second when it is there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

if [ -x /usr/bin/chromium ]; then
    echo "chromium: $(/usr/bin/chromium --version 2>/dev/null | head -1) already installed"
else
    echo "chromium: installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
    [ -x /usr/bin/chromium ] || { echo "chromium: /usr/bin/chromium still missing" >&2; exit 1; }
fi

if version="$("$ROOT/.venv/bin/python" -c "from importlib.metadata import version; print(version('playwright'))" 2>/dev/null)"; then
    echo "chromium: playwright $version already in .venv"
else
    echo "chromium: installing playwright into .venv"
    "$ROOT/.venv/bin/pip" install --quiet --disable-pip-version-check -c "$ROOT/constraints.txt" playwright
fi
