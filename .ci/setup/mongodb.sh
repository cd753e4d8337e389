#!/usr/bin/env bash
# Test server for the mongodb driver: mongoeco, a MongoDB wire-protocol *emulator* written in
# Python (no real mongod can be installed here: every route downloads a binary from a host
# this machine cannot reach). mongoeco needs Python >= 3.13, so it lives in its own venv,
# .venv-mongoeco/ at the repo root, built with pyenv's CPython 3.13; the project stays on
# its own interpreter and talks to it over TCP like to any mongod.
# Idempotent: does nothing when the venv already has the pinned mongoeco.
set -euo pipefail

MONGOECO_VERSION=4.11.0
PYMONGO_VERSION=4.20.0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv-mongoeco"

if [[ -x "$VENV/bin/python" ]] \
    && "$VENV/bin/python" -c "import importlib.metadata as m, sys; import bson; sys.exit(m.version('mongoeco') != '$MONGOECO_VERSION')" 2>/dev/null; then
    echo "mongodb: mongoeco $MONGOECO_VERSION already in $VENV"
    exit 0
fi

PY313=""
if command -v pyenv >/dev/null 2>&1 && [[ -x "$(pyenv root)/versions/3.13.0/bin/python" ]]; then
    PY313="$(pyenv root)/versions/3.13.0/bin/python"
elif command -v python3.13 >/dev/null 2>&1; then
    PY313="$(command -v python3.13)"
fi
if [[ -z "$PY313" ]]; then
    # Debian 12 has no python3.13 package: without pyenv's 3.13 the mongodb tests skip.
    echo "mongodb: no Python 3.13 (pyenv 3.13.0 or python3.13) found; mongodb tests will be skipped" >&2
    exit 0
fi

echo "mongodb: creating $VENV with $PY313 and installing mongoeco[wire]==$MONGOECO_VERSION"
"$PY313" -m venv "$VENV"
# [wire] pulls pymongo: the wire server needs its bson package to (de)code messages.
"$VENV/bin/pip" install --quiet --disable-pip-version-check "mongoeco[wire]==$MONGOECO_VERSION" "pymongo==$PYMONGO_VERSION"
