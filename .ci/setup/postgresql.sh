#!/usr/bin/env bash
# Throwaway PostgreSQL for the contract tests (tests/servers/postgresql.py): initdb/pg_ctl,
# a `postgres` user to run them as (they refuse to run as root), asyncpg in .venv.
# Idempotent; a no-op in well under a second when everything is already there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

have_initdb() {
    local dir
    dir="$(pg_config --bindir 2>/dev/null || true)"
    [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]] && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return 0
    command -v initdb >/dev/null 2>&1
}

if ! have_initdb; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # Like the official postgres image: no system cluster on 5432 (tests never use one).
    apt-get install -y --no-install-recommends postgresql-common
    sed -ri 's/^#?\s*(create_main_cluster)\s*=.*$/\1 = false/' \
        /etc/postgresql-common/createcluster.conf
    apt-get install -y --no-install-recommends postgresql
fi

if ! id -u postgres >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

if ! "$ROOT/.venv/bin/python" -c "import asyncpg" 2>/dev/null; then
    "$ROOT/.venv/bin/pip" install "asyncpg>=0.29"
fi
