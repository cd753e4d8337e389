"""PostgreSQL-specific checks: schema and migrations, index use, TTL filtering, outages."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest

from blokrun.config import DatasourceSettings
from blokrun.datasources.datasource import Datasource
from blokrun.datasources.postgresql import (
    PAGE,
    PostgresStore,
    _generic_plans,
    create,
    prefix_end,
)
from blokrun.datasources.registry import create_store
from blokrun.errors import DatasourceError, DatasourceUnavailable
from tests.servers.base import free_port
from tests.servers.postgresql import PASSWORD_ROLE, PostgresServer

pytestmark = pytest.mark.server


@pytest.fixture
def pg(server_pool: Any) -> PostgresServer:
    server: PostgresServer = server_pool.get("postgresql")
    return server


@asynccontextmanager
async def opened(settings: DatasourceSettings) -> AsyncIterator[Datasource]:
    async with Datasource(settings, create_store(settings)) as ds:
        yield ds


@asynccontextmanager
async def raw(pg: PostgresServer) -> AsyncIterator[Any]:
    """A plain superuser connection, outside any store's pool."""
    con = await asyncpg.connect(pg.url)
    try:
        yield con
    finally:
        await con.close()


async def test_round_trip_and_capabilities(pg: PostgresServer) -> None:
    async with opened(pg.settings()) as ds:
        caps = ds.capabilities
        assert (caps.native_ttl, caps.native_batch, caps.atomic_batch) == (False, True, True)
        assert caps.durable and caps.shared
        assert await ds.load("a") is None
        assert not await ds.exists("a")
        await ds.save("a", b"\x00\x01binary\xff")
        assert await ds.load("a") == b"\x00\x01binary\xff"
        assert await ds.exists("a")
        await ds.save("a", b"")  # replace, and empty bytes are a value
        assert await ds.load("a") == b""
        assert await ds.size() == 1
        assert await ds.delete("a") is True
        assert await ds.delete("a") is False
        assert await ds.load("a") is None


async def test_the_pool_plans_each_statement_once(pg: PostgresServer) -> None:
    """Every pooled connection plans generically (``plan_cache_mode``), so a statement run
    rarely -- a resume's acquire -- is not planned again on each of its first five
    executions; a server that refuses the setting still connects."""
    async with opened(pg.settings()) as ds:
        store = ds.store
        assert isinstance(store, PostgresStore)
        async with store.connection("test") as con:
            assert await con.fetchval("SHOW plan_cache_mode") == "force_generic_plan"

    class Refusing:
        async def execute(self, sql: str) -> None:
            raise asyncpg.UndefinedObjectError('unrecognized configuration parameter "x"')

    await _generic_plans(Refusing())  # PostgreSQL 11 and older: left as it is


async def test_schema_and_versioned_migration(pg: PostgresServer) -> None:
    settings = pg.settings()
    async with opened(settings):
        pass
    async with raw(pg) as con:
        cols = await con.fetch(
            "SELECT column_name, data_type, is_nullable, collation_name "
            "FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            settings.table,
        )
        versions = await con.fetch(
            "SELECT version FROM blokrun_migrations WHERE table_name = $1", settings.table
        )
    assert [tuple(c) for c in cols] == [
        ("key", "text", "NO", "C"),
        ("data", "bytea", "NO", None),
        ("expires_at", "timestamp with time zone", "YES", None),
        ("updated_at", "timestamp with time zone", "NO", None),
    ]
    assert [v[0] for v in versions] == [1, 2, 3]  # 2: the lease table, 3: the run index


async def test_concurrent_first_connects_do_not_race(pg: PostgresServer) -> None:
    settings = pg.settings()  # one new table, eight processes' worth of pools at once
    stores = [create(settings) for _ in range(8)]
    await asyncio.gather(*(s.connect() for s in stores))
    try:
        await stores[0].save("k", b"v")
        assert await stores[7].load("k") == b"v"
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    async with raw(pg) as con:
        n = await con.fetchval(
            "SELECT count(*) FROM blokrun_migrations WHERE table_name = $1", settings.table
        )
    assert n == 3  # each migration once


async def test_newer_schema_version_is_refused(pg: PostgresServer) -> None:
    settings = pg.settings()
    async with opened(settings):
        pass
    async with raw(pg) as con:
        await con.execute(
            "INSERT INTO blokrun_migrations (table_name, version) VALUES ($1, 99)", settings.table
        )
    with pytest.raises(DatasourceError, match="version 99"):
        async with opened(settings):
            pass


async def test_ttl_expiry_is_filtered_everywhere(pg: PostgresServer) -> None:
    settings = pg.settings()
    async with opened(settings) as ds:
        await ds.save("short", b"1", ttl=0.3)
        await ds.save("long", b"2", ttl=60)
        await ds.save("forever", b"3")
        assert await ds.load("short") == b"1"
        await asyncio.sleep(0.45)
        assert await ds.load("short") is None
        assert not await ds.exists("short")
        assert await ds.load_batch(["short", "long", "forever"]) == {"long": b"2", "forever": b"3"}
        assert sorted(await ds.keys()) == ["forever", "long"]
        assert await ds.size() == 2
        assert await ds.delete("short") is False  # nothing live was removed
        await ds.save("short", b"again", ttl=0.2)  # an expired row is simply overwritten
        assert await ds.load("short") == b"again"
        await asyncio.sleep(0.3)
        assert isinstance(ds.store, PostgresStore)
        assert await ds.store.purge_expired() == 1
        assert await ds.size() == 2
    async with raw(pg) as con:  # the server never expired anything itself
        assert await con.fetchval(f'SELECT count(*) FROM "{settings.table}"') == 2


async def test_batch_of_1000(pg: PostgresServer) -> None:
    async with opened(pg.settings()) as ds:
        entries = [(f"batch/{i:04d}", f"value {i}".encode() * 20, None) for i in range(1000)]
        t0 = time.perf_counter()
        await ds.save_batch(entries)
        saved = time.perf_counter() - t0
        keys = [k for k, _, _ in entries]
        loaded = await ds.load_batch([*keys, "missing"])
        assert loaded == {k: d for k, d, _ in entries}
        assert sorted(await ds.keys("batch/")) == keys
        assert await ds.size() == 1000
        assert await ds.delete_batch([*keys[:500], "missing"]) == 500
        assert await ds.size() == 500
        assert saved < 5


async def test_save_batch_duplicates_last_wins_and_is_atomic(pg: PostgresServer) -> None:
    async with opened(pg.settings()) as ds:
        await ds.save_batch([("a", b"1", None), ("b", b"2", None), ("a", b"3", None)])
        assert await ds.load_batch(["a", "b"]) == {"a": b"3", "b": b"2"}
    store = create(pg.settings())
    await store.connect()
    try:
        with pytest.raises(DatasourceError):  # a bad third entry: nothing is written
            await store.save_batch([("x", b"1", None), ("y", b"2", None), ("z", b"3", 1e300)])
        assert await store.size() == 0
    finally:
        await store.close()


async def test_keys_stems_and_metacharacters(pg: PostgresServer) -> None:
    odd = [
        "job-1",
        "job-10",
        "job-1/step",
        "job-2",
        "../../etc/passwd",
        "a%b",
        "axb",
        "a_b",
        "a\\b",
        "a\\\\b",
        "a*b",
        "a?b",
        "a[b]",
        "with space",
        "ünïcødé/ключ/鍵/🔑",
        "\ud7ff-edge",
        "\U0010ffff\U0010ffff",
        "k" * 1024,
    ]
    async with opened(pg.settings()) as ds:
        await ds.save_batch([(k, k.encode(), None) for k in odd])
        assert sorted(await ds.keys()) == sorted(odd)
        assert sorted(await ds.keys("job-1")) == ["job-1", "job-1/step", "job-10"]
        assert await ds.keys("job-10") == ["job-10"]
        assert await ds.keys("a%") == ["a%b"]
        assert await ds.keys("a_") == ["a_b"]
        assert sorted(await ds.keys("a\\")) == ["a\\\\b", "a\\b"]
        assert await ds.keys("a\\\\") == ["a\\\\b"]
        assert await ds.keys("a*") == ["a*b"]
        assert await ds.keys("a?") == ["a?b"]
        assert await ds.keys("a[") == ["a[b]"]
        assert await ds.keys("../") == ["../../etc/passwd"]
        assert await ds.keys("ünï") == ["ünïcødé/ключ/鍵/🔑"]
        assert await ds.keys("\ud7ff") == ["\ud7ff-edge"]
        assert await ds.keys("\U0010ffff") == ["\U0010ffff\U0010ffff"]
        assert await ds.keys("k" * 1000) == ["k" * 1024]
        for k in odd:
            assert await ds.load(k) == k.encode()


async def test_keys_with_datasource_prefix(pg: PostgresServer) -> None:
    async with opened(pg.settings(prefix="tenant%_/")) as ds:
        await ds.save("job-1", b"1")
        await ds.save("job-10", b"2")
        assert sorted(await ds.keys("job-1")) == ["job-1", "job-10"]
        assert await ds.size() == 2


def test_prefix_end() -> None:
    assert prefix_end("") is None
    assert prefix_end("job-1") == "job-2"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff") is None
    assert prefix_end("x\ud7ff") == "x\ue000"  # skips the surrogates


async def test_keys_pages_through_more_than_one_page(pg: PostgresServer) -> None:
    n = PAGE * 2 + 345
    async with opened(pg.settings()) as ds:
        await ds.save_batch([(f"p/{i}", b"", None) for i in range(n)])
        await ds.save("q", b"")
        got = await ds.keys("p/")
        assert len(got) == n
        assert set(got) == {f"p/{i}" for i in range(n)}


async def test_keys_query_is_an_index_scan(pg: PostgresServer) -> None:
    """EXPLAIN the exact keys() SQL, with custom and with generic (cached) plans.

    No planner switch is turned off: the table holds 20,000 rows and is ANALYZEd, so a
    sequential scan is a real option the planner rejects. The generic plan is what a
    prepared statement runs after five executions, so it must use the index too.
    """
    settings = pg.settings()
    store = create(settings)
    await store.connect()
    try:
        await store.save_batch([(f"job-{i}/step-{i % 7}", b"x" * 50, None) for i in range(20000)])
        sql = store._sql["keys"]
        async with raw(pg) as con:
            await con.execute(f'ANALYZE "{settings.table}"')
            for mode in ("force_custom_plan", "force_generic_plan"):
                await con.execute(f"SET plan_cache_mode = {mode}")
                stmt = await con.prepare(f"EXPLAIN (FORMAT JSON) {sql}")
                plan = json.loads(await stmt.fetchval("job-1", "", prefix_end("job-1")))
                text = json.dumps(plan)
                assert "Seq Scan" not in text, (mode, text)
                assert f'"Index Name": "{settings.table}_pkey"' in text, (mode, text)
                assert '"Node Type": "Index Scan"' in text, (mode, text)
    finally:
        await store.close()


async def test_pool_does_not_send_reset_query(pg: PostgresServer) -> None:
    """The last statement the backend ran is our SELECT, not asyncpg's reset query."""
    settings = replace(pg.settings(), url=pg.url + "?application_name=blokrun_reset_probe")
    store = PostgresStore(settings.url, table=settings.table or "", pool_size=1)
    await store.connect()
    try:
        await store.load("anything")
        async with raw(pg) as con:
            last = await con.fetchval(
                "SELECT query FROM pg_stat_activity WHERE application_name = $1",
                "blokrun_reset_probe",
            )
        assert last.startswith("SELECT data FROM"), last
    finally:
        await store.close()


async def test_injected_pool_is_left_open(pg: PostgresServer) -> None:
    pool = await asyncpg.create_pool(pg.url, min_size=1, max_size=2)
    try:
        store = PostgresStore(None, table=pg.settings().table or "", pool=pool)
        await store.connect()
        await store.save("k", b"v")
        assert await store.load("k") == b"v"
        await store.close()
        assert not store.is_connected
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_dead_port_fails_fast_without_password(pg: PostgresServer) -> None:
    port = free_port()
    url = f"postgresql://blok:s3cret-pw@127.0.0.1:{port}/postgres"
    settings = replace(pg.settings(), url=url, timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(DatasourceUnavailable) as info:
        async with opened(settings):
            pass
    assert time.monotonic() - t0 < 2.5
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "blok:***@" in message
    assert "s3cret-pw" not in message
    assert isinstance(info.value.__cause__, BaseException)


async def test_silent_server_times_out_within_timeout(pg: PostgresServer) -> None:
    """A port that accepts TCP but never answers (a hung server): connect must not hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes handshakes; nobody ever reads or writes
        port = silent.getsockname()[1]
        url = f"postgresql://blok:pw-x@127.0.0.1:{port}/postgres"
        settings = replace(pg.settings(), url=url, timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(DatasourceUnavailable) as info:
            async with opened(settings):
                pass
        assert 0.9 < time.monotonic() - t0 < 1.8
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "timed out" in str(info.value)
    assert "pw-x" not in str(info.value)


async def test_password_role(pg: PostgresServer) -> None:
    password = "Pw-9f3k-Secret"
    async with opened(pg.settings()):  # blokrun_migrations exists, owned by the superuser
        pass
    async with raw(pg) as con:
        exists = await con.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", PASSWORD_ROLE)
        verb = "ALTER" if exists else "CREATE"
        await con.execute(f"{verb} ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{password}'")
        await con.execute(f"GRANT CREATE ON SCHEMA public TO {PASSWORD_ROLE}")
        await con.execute(f"GRANT SELECT, INSERT ON blokrun_migrations TO {PASSWORD_ROLE}")
    base = f"127.0.0.1:{pg.port}/postgres"
    good = replace(pg.settings(), url=f"postgresql://{PASSWORD_ROLE}:{password}@{base}")
    async with opened(good) as ds:
        await ds.save("k", b"v")
        assert await ds.load("k") == b"v"
        assert password not in repr(ds)
    bad = replace(good, url=f"postgresql://{PASSWORD_ROLE}:wrong-{password}@{base}", timeout=3)
    with pytest.raises(DatasourceUnavailable) as info:
        async with opened(bad):
            pass
    message = str(info.value)
    assert "password authentication failed" in message
    assert f"{PASSWORD_ROLE}:***@127.0.0.1:{pg.port}" in message
    assert password not in message


async def test_blocked_operation_is_bounded_by_the_driver(pg: PostgresServer) -> None:
    """command_timeout bounds a query even without the wrapper's own deadline."""
    settings = pg.settings(timeout=1.0)
    store = create(settings)
    await store.connect()
    try:
        async with raw(pg) as con, con.transaction():
            await con.execute(f'LOCK TABLE "{settings.table}" IN ACCESS EXCLUSIVE MODE')
            t0 = time.monotonic()
            with pytest.raises(DatasourceUnavailable, match="load"):
                await store.load("k")
            assert time.monotonic() - t0 < 1.8
        await store.save("k", b"v")  # the pool recovered
        assert await store.load("k") == b"v"
    finally:
        await store.close()


async def test_server_stopped_mid_test(pg: PostgresServer) -> None:
    settings = pg.settings(timeout=2.0)
    async with opened(settings) as ds:
        await ds.save("before", b"1")
        pg.stop()
        try:
            ops: list[Callable[[], Awaitable[object]]] = [
                lambda: ds.load("before"),
                lambda: ds.save("during", b"2"),
                ds.keys,
                ds.size,
            ]
            for op in ops:
                t0 = time.monotonic()
                with pytest.raises(DatasourceUnavailable) as info:
                    await op()
                assert time.monotonic() - t0 < 2.5
                assert f"127.0.0.1:{pg.port}" in str(info.value)
            t0 = time.monotonic()
            with pytest.raises(DatasourceUnavailable):
                async with opened(pg.settings(timeout=2.0)):
                    pass
            assert time.monotonic() - t0 < 2.5
        finally:
            pg.start()
        await ds.save("after", b"3")
        assert await ds.load_batch(["before", "during", "after"]) == {
            "before": b"1",
            "after": b"3",
        }


def test_create_validates_settings() -> None:
    with pytest.raises(DatasourceError, match="URL"):
        create(DatasourceSettings(name="x", type="postgresql"))
    with pytest.raises(DatasourceError, match="table"):
        create(
            DatasourceSettings(
                name="x", type="postgresql", url="postgresql://h/db", table='t"; DROP TABLE x'
            )
        )
    store = create(DatasourceSettings(name="x", type="postgresql", url="postgresql://h/db"))
    assert store.table == "blokrun_store"
    assert not store.is_connected
