#!/usr/bin/env bash
# Throwaway Redis for the redis driver tests (tests/servers/redis.py starts redis-server on a
# free loopback port): Debian's redis-server binary, and redis[hiredis] in .venv.
# Idempotent; a no-op in well under a second when everything is already there. The Debian
# package also enables a system redis.service on 6379; the tests never use it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

if command -v redis-server >/dev/null 2>&1; then
    echo "redis: $(redis-server --version | cut -d' ' -f1-3) already installed"
else
    echo "redis: installing Debian's redis-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    command -v redis-server >/dev/null 2>&1 || { echo "redis: redis-server still missing" >&2; exit 1; }
fi

if version="$("$ROOT/.venv/bin/python" -c "import redis, hiredis; print(redis.__version__)" 2>/dev/null)"; then
    echo "redis: redis-py $version with hiredis already in .venv"
else
    echo "redis: installing redis[hiredis] into .venv"
    "$ROOT/.venv/bin/pip" install --quiet --disable-pip-version-check "redis[hiredis]>=5.0"
fi
