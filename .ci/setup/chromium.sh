#!/usr/bin/env bash
# Headless Chromium for the browser tests (tests/browser): Debian's chromium, driven by
# Playwright (in .venv, from the dev extra) through its executable path -- no browser
# download, so never `playwright install`. Without recommends (udev, upower, printer tools:
# nothing headless uses) but with fonts-liberation, the metric-compatible Arial/Times/Courier
# pages fall back to, so screenshots look the same on every machine.
# Idempotent; a no-op in well under a second when everything is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PACKAGES=(chromium fonts-liberation)

if [ -x /usr/bin/chromium ]; then
    echo "chromium: $(/usr/bin/chromium --version 2>/dev/null | head -1) already installed"
else
    echo "chromium: installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    # apt-get update only when the package lists are missing or stale (the install fails)
    if ! apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1; then
        echo "chromium: refreshing the package lists (apt-get update)"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    fi
    [ -x /usr/bin/chromium ] || { echo "chromium: /usr/bin/chromium still missing" >&2; exit 1; }
    echo "chromium: $(/usr/bin/chromium --version 2>/dev/null | head -1) installed"
fi

if version="$("$ROOT/.venv/bin/python" -c "from importlib.metadata import version; print(version('playwright'))" 2>/dev/null)"; then
    echo "chromium: playwright $version already in .venv"
else
    echo "chromium: installing playwright into .venv"
    "$ROOT/.venv/bin/pip" install --quiet --disable-pip-version-check -c "$ROOT/constraints.txt" playwright
fi
