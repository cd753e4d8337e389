"""``blokrun doctor``: every datasource checked against real throwaway servers, in a real
subprocess (exit codes, the table, ``--json``); schema damage, dead and frozen servers, and
passwords that must never be printed."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest
import redis

from blokrun.datasources import Capabilities, Datasource, DatasourceSettings, StoreHealth
from blokrun.datasources.health import folder_health, mount_type, redis_health
from blokrun.lifecycle.health import check_health
from tests.conftest import ServerPool
from tests.integration.test_cli import cli_env
from tests.servers.base import free_port, settings_env
from tests.servers.postgresql import PASSWORD_ROLE, PostgresServer
from tests.servers.redis import RedisServer

REPO = Path(__file__).resolve().parents[2]
SECRET = "Doc-Pw-7q2x-Secret"
_FIELDS = {"name", "driver", "where", "status", "reachable", "latency_ms", "latencies_ms"}
_FIELDS |= {"server", "version", "schema", "keeps_leases", "leases", "notes", "problems"}


def doctor(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blokrun", "doctor", *args],
        cwd=REPO,
        env=cli_env(home, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def report(home: Path, **env: str) -> tuple[int, dict[str, Any]]:
    proc = doctor(home, "--json", **env)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def row(stdout: str, name: str) -> list[str]:
    """The table row of datasource ``name``, split on runs of two or more spaces."""
    for line in stdout.splitlines():
        if line.startswith(name + " "):
            return re.split(r"\s{2,}", line)
    raise AssertionError(f"no row for {name!r} in:\n{stdout}")


def pg_env(settings: DatasourceSettings, name: str = "pg") -> dict[str, str]:
    return settings_env(name, replace(settings, name=name))


async def _pg(server: PostgresServer, *sql: str) -> list[Any]:
    con = await asyncpg.connect(server.url)
    try:
        return [await con.fetchval(statement) for statement in sql]
    finally:
        await con.close()


def pg_sql(server: PostgresServer, *sql: str) -> list[Any]:
    return anyio.run(lambda: _pg(server, *sql))


@contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and then never says a word (a frozen server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


# -- healthy ---------------------------------------------------------------------------------


def test_the_embedded_filesystem_default_is_healthy(tmp_path: Path) -> None:
    proc = doctor(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0].split() == [
        "NAME", "DRIVER", "STATUS", "LATENCY", "VERSION", "SCHEMA", "/", "NOTES",
    ]  # fmt: skip
    name, driver, status, latency, version, detail = row(proc.stdout, "default")
    assert (name, driver, status, version) == ("default", "filesystem", "ok", "-")
    assert re.fullmatch(r"\d+\.\d\d ms", latency), latency
    assert str(tmp_path / "checkpoints") in detail and "free of" in detail
    assert "leases: ttl 30 s; kept on default (ok, atomic fencing)" in proc.stdout
    assert proc.stdout.rstrip().endswith("healthy: 1 datasource(s) ok")


def test_redis_and_postgresql_report_the_versions_the_servers_give(
    tmp_path: Path, server_pool: ServerPool
) -> None:
    rd: RedisServer = server_pool.get("redis")  # type: ignore[assignment]
    pg: PostgresServer = server_pool.get("postgresql")  # type: ignore[assignment]
    env = {**settings_env("cache", rd.settings("cache")), **pg_env(pg.settings())}
    proc = doctor(tmp_path, **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    client = redis.Redis(port=rd.port)
    try:
        redis_version = str(client.info("server")["redis_version"])
    finally:
        client.close()
    cli = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    assert f"v={redis_version} " in cli.stdout  # the binary the pool started
    (pg_version,) = pg_sql(pg, "SHOW server_version")

    assert row(proc.stdout, "cache")[:3] == ["cache", "redis", "ok"]
    assert row(proc.stdout, "cache")[4] == redis_version
    assert row(proc.stdout, "pg")[:3] == ["pg", "postgresql", "ok"]
    assert row(proc.stdout, "pg")[4] == pg_version
    code, out = report(tmp_path, **env)
    assert code == 0 and out["healthy"] is True
    by_name = {d["name"]: d for d in out["datasources"]}
    assert set(by_name) == {"default", "cache", "pg"}
    assert by_name["cache"]["version"] == redis_version
    assert by_name["pg"]["version"] == pg_version
    table = env["DATASOURCE_PG_TABLE"]
    assert by_name["pg"]["schema"] == (
        f"{table} + {table}_leases + {table}_runs, migration 3/3: ok"
    )
    for d in by_name.values():
        assert set(d) >= _FIELDS, d
        assert d["status"] == "ok" and d["problems"] == [] and d["reachable"] is True
        assert len(d["latencies_ms"]) == 5 and d["latency_ms"] > 0
        assert d["leases"] == "ok, atomic fencing" and d["keeps_leases"] is True
    leases = {"enabled": True, "ttl": 30.0, "datasources": ["cache", "pg", "default"]}
    assert out["leases"] == leases  # in the order configured, the embedded default last
    assert out["queue"]["status"] == "not configured"
    assert out["queue"]["datasource"] == "cache"  # the first that can hold it


def test_a_configured_queue_is_set_up_and_counted(tmp_path: Path, server_pool: ServerPool) -> None:
    rd = server_pool.get("redis")
    env = {**settings_env("cache", rd.settings("cache")), "BLOKRUN_QUEUE_DATASOURCE": "cache"}
    proc = doctor(tmp_path, **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "queue: redis on 'cache': ok, 0 waiting, 0 claimed" in proc.stdout
    code, out = report(tmp_path, **env)
    assert code == 0
    assert out["queue"] == {
        "configured": True, "datasource": "cache", "backend": "redis", "ok": True,
        "waiting": 0, "claimed": 0, "problem": None, "status": "ok",
    }  # fmt: skip


# -- unhealthy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("DROP TABLE {t}", "table '{t}' is missing"),
        (
            'ALTER TABLE {t} ALTER COLUMN key TYPE text COLLATE "POSIX"',
            "table '{t}': column 'key' has collation 'POSIX', expected 'C'",
        ),
        (
            "ALTER TABLE {t}_leases DROP COLUMN token",
            "table '{t}_leases': column 'token' is missing",
        ),
        (
            "ALTER TABLE {t} ALTER COLUMN data DROP NOT NULL",
            "table '{t}': column 'data' should be NOT NULL",
        ),
        ("ALTER TABLE {t} DROP CONSTRAINT {t}_pkey", "table '{t}': primary key is none"),
    ],
)
def test_a_damaged_postgresql_schema_is_reported_and_exits_1(
    tmp_path: Path, server_pool: ServerPool, damage: str, expected: str
) -> None:
    pg: PostgresServer = server_pool.get("postgresql")  # type: ignore[assignment]
    settings = pg.settings()
    env = pg_env(settings)
    assert doctor(tmp_path, **env).returncode == 0  # migrates the fresh table
    table = settings.table
    assert table is not None
    pg_sql(pg, damage.format(t=table))
    proc = doctor(tmp_path, **env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert row(proc.stdout, "pg")[2] == "FAIL"
    assert expected.format(t=table) in row(proc.stdout, "pg")[-1]
    assert row(proc.stdout, "default")[2] == "ok"
    assert "unhealthy: 1 of 2 datasource(s) failing (pg)" in proc.stdout
    code, out = report(tmp_path, **env)
    pg_report = next(d for d in out["datasources"] if d["name"] == "pg")
    assert code == 1 and out["healthy"] is False
    assert pg_report["status"] == "FAIL" and pg_report["reachable"] is True
    assert pg_report["problems"][0].startswith(expected.format(t=table))
    assert pg_report["version"] != "unknown"


def test_a_closed_port_is_a_failure_within_the_timeout(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = {"DATASOURCE_DOWN_TYPE": "redis", "DATASOURCE_DOWN_URL": f"redis://127.0.0.1:{port}/0"}
    started = time.monotonic()
    proc = doctor(tmp_path, "--timeout", "2", **env)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert elapsed < 10
    _, driver, status, latency, version, detail = row(proc.stdout, "down")
    assert (driver, status, latency, version) == ("redis", "FAIL", "-", "unknown")
    assert detail.startswith("unreachable: ") and f"127.0.0.1:{port}" in detail
    assert row(proc.stdout, "default")[2] == "ok"
    code, out = report(tmp_path, **env)
    down = next(d for d in out["datasources"] if d["name"] == "down")
    assert code == 1 and down["reachable"] is False and down["leases"] == "not checked"


@pytest.mark.parametrize("driver", ["redis", "postgresql"])
def test_a_frozen_server_is_unreachable_after_the_timeout_not_a_hang(
    tmp_path: Path, driver: str
) -> None:
    with silent_port() as port:
        scheme = "redis" if driver == "redis" else "postgresql"
        env = {
            "DATASOURCE_FROZEN_TYPE": driver,
            "DATASOURCE_FROZEN_URL": f"{scheme}://u:{SECRET}@127.0.0.1:{port}/0",
            "DATASOURCE_FROZEN_TIMEOUT": "30",  # the doctor's own limit is what bounds it
        }
        started = time.monotonic()
        proc = doctor(tmp_path, "--timeout", "1", **env)
        elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert elapsed < 8, elapsed  # interpreter start-up included
    assert row(proc.stdout, "frozen")[2] == "FAIL"
    assert "unreachable after 1 s" in row(proc.stdout, "frozen")[-1]
    assert SECRET not in proc.stdout + proc.stderr


def test_a_configured_queue_on_an_unreachable_datasource_fails(tmp_path: Path) -> None:
    env = {
        "DATASOURCE_Q_TYPE": "redis",
        "DATASOURCE_Q_URL": f"redis://127.0.0.1:{free_port()}/0",
        "BLOKRUN_QUEUE_DATASOURCE": "q",
    }
    proc = doctor(tmp_path, "--timeout", "2", **env)
    assert proc.returncode == 1
    assert "queue: redis on 'q': FAIL: its datasource 'q' is unreachable" in proc.stdout


# -- secrets ------------------------------------------------------------------------------------


def _password_role(pg: PostgresServer) -> None:
    exists = pg_sql(pg, f"SELECT count(*) FROM pg_roles WHERE rolname = '{PASSWORD_ROLE}'")[0]
    verb = "ALTER" if exists else "CREATE"
    pg_sql(
        pg,
        "CREATE TABLE IF NOT EXISTS blokrun_migrations (table_name text NOT NULL, "
        "version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (table_name, version))",
        f"{verb} ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{SECRET}'",
        f"GRANT CREATE ON SCHEMA public TO {PASSWORD_ROLE}",
        f"GRANT SELECT, INSERT ON blokrun_migrations TO {PASSWORD_ROLE}",
    )


def test_a_password_in_a_url_is_never_printed(tmp_path: Path, server_pool: ServerPool) -> None:
    pg: PostgresServer = server_pool.get("postgresql")  # type: ignore[assignment]
    _password_role(pg)
    base = f"127.0.0.1:{pg.port}/postgres"
    good = replace(pg.settings(), url=f"postgresql://{PASSWORD_ROLE}:{SECRET}@{base}")
    wrong = replace(pg.settings(), url=f"postgresql://{PASSWORD_ROLE}:no-{SECRET}@{base}")
    env = {
        **pg_env(good, "good"),
        **pg_env(wrong, "wrong"),
        "DATASOURCE_DOWN_TYPE": "redis",
        "DATASOURCE_DOWN_URL": f"redis://:{SECRET}@127.0.0.1:{free_port()}/0",
    }
    text = doctor(tmp_path, "--timeout", "3", **env)
    as_json = doctor(tmp_path, "--json", "--timeout", "3", **env)
    for proc in (text, as_json):
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
        assert f"{PASSWORD_ROLE}:***@{base}" in proc.stdout
    assert row(text.stdout, "good")[2] == "ok"
    assert row(text.stdout, "wrong")[2] == "FAIL"
    assert "password authentication failed" in row(text.stdout, "wrong")[-1]
    assert row(text.stdout, "down")[2] == "FAIL"
    out = json.loads(as_json.stdout)
    assert {d["name"]: d["status"] for d in out["datasources"]} == {
        "default": "ok", "down": "FAIL", "good": "ok", "wrong": "FAIL",
    }  # fmt: skip


# -- configuration and third-party drivers -------------------------------------------------------


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    proc = doctor(tmp_path, DATASOURCE_X_TYPE="redis")  # no URL
    assert proc.returncode == 2
    assert "DATASOURCE_X_URL is missing" in proc.stderr
    proc = doctor(tmp_path, BLOKRUN_QUEUE_DATASOURCE="nope")
    assert proc.returncode == 2
    assert "BLOKRUN_QUEUE_DATASOURCE='nope' is not a configured datasource" in proc.stderr


class _PlainStore:
    """A third-party driver from before ``describe``: the bare minimum the doctor touches."""

    def __init__(self) -> None:
        self.connected = False

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    @property
    def is_connected(self) -> bool:
        return self.connected

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        self.connected = False

    async def exists(self, key: str) -> bool:
        return False


async def test_a_driver_without_describe_is_unknown_but_healthy() -> None:
    ds = Datasource(DatasourceSettings(name="old", type="memory"), _PlainStore())  # type: ignore[arg-type]
    report = await check_health({"old": ds}, lease_ttl=30.0)
    (health,) = report.datasources
    assert health.ok and report.healthy
    assert (health.server, health.version, health.schema) == ("unknown", "unknown", "unknown")
    assert health.leases == "not kept by this driver" and not health.keeps_leases
    assert len(health.latencies_ms) == 5
    assert not ds.is_connected  # closed again


class _FrozenAfterConnect(_PlainStore):
    """Connects, then never answers again (a server stopped with SIGSTOP after the ping)."""

    async def describe(self) -> StoreHealth:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_server_frozen_after_connect_stops_the_check_at_the_deadline() -> None:
    ds = Datasource(DatasourceSettings(name="stuck", type="memory"), _FrozenAfterConnect())  # type: ignore[arg-type]
    started = time.monotonic()
    report = await check_health({"stuck": ds}, lease_ttl=30.0, stage_timeout=0.3)
    assert time.monotonic() - started < 2
    (health,) = report.datasources
    assert health.problems == ("describe: no answer after 0.3 s",)
    assert not health.ok and not health.reachable and not report.healthy
    assert health.latencies_ms == ()  # the later stages were skipped, not waited for


# -- what the drivers make of what they read ------------------------------------------------------


def test_redis_health_flags_old_servers_cluster_mode_and_eviction() -> None:
    fine = redis_health({"redis_version": "7.2.4", "redis_mode": "standalone"}, 3, 0)
    assert fine.healthy and fine.version == "7.2.4" and "3 key(s) in database 0" in fine.notes
    assert "needs 6.0" in redis_health({"redis_version": "5.0.7"}, 0, 0).problems[0]
    assert (
        "Cluster"
        in redis_health({"redis_version": "7.0.0", "redis_mode": "cluster"}, 0, 0).problems[0]
    )
    evicting = redis_health(
        {"redis_version": "7.0.0", "maxmemory": 1 << 30, "maxmemory_policy": "allkeys-lru"}, 0, 1
    )
    assert evicting.healthy and any("may evict checkpoints" in n for n in evicting.notes)
    disabled = redis_health({}, 0, 0)
    assert disabled.version == "unknown" and disabled.healthy


def test_folder_health_flags_a_missing_folder_and_a_network_filesystem(tmp_path: Path) -> None:
    assert folder_health(tmp_path, fsync=True).healthy
    gone = folder_health(tmp_path / "gone", fsync=True)
    assert "does not exist" in gone.problems[0]
    (tmp_path / "file").write_text("")
    assert "is not a folder" in folder_health(tmp_path / "file", fsync=True).problems[0]
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nsrv:/x {tmp_path} nfs4 rw 0 0\n")
    assert mount_type(tmp_path / "sub", mounts) == "nfs4"
    assert mount_type(Path("/"), mounts) == "ext4"
    assert "fsync off" in folder_health(tmp_path, fsync=False).notes[-1]
