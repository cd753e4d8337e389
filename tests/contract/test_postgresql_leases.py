"""PostgreSQL leases: the lease contract on one shared table, the lease table's migration,
and the fencing lock (an acquire waits for a fenced write in flight).

``tests/contract/test_leases.py`` builds each datasource of a test from its own
``server.settings()`` call, and the throwaway PostgreSQL gives every call a table of its
own, so its "two processes" would not share a store. Here the same tests run with every
``settings()`` call of a test on one table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest

from blokrun.config import DatasourceSettings
from blokrun.datasources.postgresql import PostgresStore, create, lease_table
from tests.contract import test_leases as contract
from tests.servers.postgresql import PostgresServer

pytestmark = pytest.mark.server

LEASE = contract.LEASE


class _OneTable:
    """The throwaway server, every :meth:`settings` call on the same table."""

    driver = "postgresql"

    def __init__(self, pg: PostgresServer) -> None:
        self._pg = pg
        self._table = pg.settings().table

    def settings(self, name: str = "ds", **overrides: object) -> DatasourceSettings:
        return self._pg.settings(name, **{"table": self._table, **overrides})


@pytest.fixture
def pg(server_pool: Any) -> PostgresServer:
    server: PostgresServer = server_pool.get("postgresql")
    return server


@pytest.fixture
def server(pg: PostgresServer) -> _OneTable:
    return _OneTable(pg)


# The lease contract, collected here with the ``server`` fixture above.
test_a_free_lease_is_taken_and_a_held_one_is_refused = (
    contract.test_a_free_lease_is_taken_and_a_held_one_is_refused
)
test_renew_and_release_follow_the_token = contract.test_renew_and_release_follow_the_token
test_an_expired_lease_can_be_taken_over = contract.test_an_expired_lease_can_be_taken_over
test_fenced_writes_stop_when_the_lease_is_taken = (
    contract.test_fenced_writes_stop_when_the_lease_is_taken
)
test_only_one_of_many_racing_owners_wins = contract.test_only_one_of_many_racing_owners_wins
test_leases_of_different_runs_are_independent_and_keys_are_safe = (
    contract.test_leases_of_different_runs_are_independent_and_keys_are_safe
)
test_a_stale_holder_cannot_overwrite_after_takeover = (
    contract.test_a_stale_holder_cannot_overwrite_after_takeover
)


@asynccontextmanager
async def raw(pg: PostgresServer) -> AsyncIterator[Any]:
    con = await asyncpg.connect(pg.url)
    try:
        yield con
    finally:
        await con.close()


@asynccontextmanager
async def stores(settings: DatasourceSettings, n: int) -> AsyncIterator[list[PostgresStore]]:
    out = [create(settings) for _ in range(n)]
    await asyncio.gather(*(s.connect() for s in out))
    try:
        yield out
    finally:
        await asyncio.gather(*(s.close() for s in out))


async def test_lease_table_schema_and_migration_from_version_1(pg: PostgresServer) -> None:
    settings = pg.settings()
    async with raw(pg) as con:  # a table migrated by a blokrun that knew only version 1
        await con.execute(
            f'CREATE TABLE "{settings.table}" (key text COLLATE "C" PRIMARY KEY, data bytea '
            "NOT NULL, expires_at timestamptz NULL, updated_at timestamptz NOT NULL DEFAULT now())"
        )
        await con.execute(
            "CREATE TABLE IF NOT EXISTS blokrun_migrations (table_name text NOT NULL, "
            "version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (table_name, version))"
        )
        await con.execute(
            "INSERT INTO blokrun_migrations (table_name, version) VALUES ($1, 1)", settings.table
        )
        await con.execute(f"INSERT INTO \"{settings.table}\" (key, data) VALUES ('old', 'x')")
    async with stores(settings, 1) as (store,):
        assert await store.load("old") == b"x"
        assert (await store.acquire_lease("l", "o", 30)).token > 1
    async with raw(pg) as con:
        versions = await con.fetch(
            "SELECT version FROM blokrun_migrations WHERE table_name = $1 ORDER BY version",
            settings.table,
        )
        cols = await con.fetch(
            "SELECT column_name, data_type, is_nullable, collation_name "
            "FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            f"{settings.table}_leases",
        )
    assert [v[0] for v in versions] == [1, 2, 3]
    assert [tuple(c) for c in cols] == [
        ("key", "text", "NO", "C"),
        ("owner", "text", "NO", None),
        ("token", "bigint", "NO", None),
        ("expires_at", "timestamp with time zone", "NO", None),
    ]


def test_lease_table_names_fit_an_identifier() -> None:
    assert lease_table("blokrun_store") == "blokrun_store_leases"
    assert lease_table("t" * 56) == "t" * 56 + "_leases"
    long_a, long_b = "a" * 62 + "1", "a" * 62 + "2"
    assert len(lease_table(long_a)) == 63
    assert lease_table(long_a) != lease_table(long_b)


async def test_a_long_table_name_gets_its_own_lease_table(pg: PostgresServer) -> None:
    one, two = pg.settings(table="x" * 62 + "1"), pg.settings(table="x" * 62 + "2")
    async with stores(one, 1) as (a,), stores(two, 1) as (b,):
        held = await a.acquire_lease("l", "a", 30)
        assert held.owner == "a"
        assert (await b.acquire_lease("l", "b", 30)).owner == "b"  # not a's lease
        assert await a.save_batch_fenced([("k", b"v", None)], "l", held.token)
        assert await a.load("k") == b"v"
        assert await b.load("k") is None


async def test_racing_takeovers_of_an_expired_lease_issue_one_token(pg: PostgresServer) -> None:
    async with stores(pg.settings(), 8) as racers:
        last = 0
        for _round in range(1, 6):
            states = await asyncio.gather(
                *(s.acquire_lease(LEASE, f"o{i}", 0.2) for i, s in enumerate(racers))
            )
            winners = [i for i, st in enumerate(states) if st.owner == f"o{i}"]
            assert len(winners) == 1, states
            won = states[winners[0]]
            assert {(st.owner, st.token) for st in states} == {(f"o{winners[0]}", won.token)}
            assert won.token > last  # one token per round, each higher
            last = won.token
            await asyncio.sleep(0.25)


async def test_an_acquire_waits_for_a_fenced_write_in_flight(pg: PostgresServer) -> None:
    """The write's FOR SHARE lock holds a takeover back until the write commits, so the
    write is never half-fenced. A transaction holding the same lock stands in for a
    fenced write stalled mid-statement."""
    settings = pg.settings()
    async with stores(settings, 1) as (store,), raw(pg) as con:
        old = await store.acquire_lease(LEASE, "a", 0.2)
        await asyncio.sleep(0.3)
        tx = con.transaction()
        await tx.start()
        locked = await con.fetchval(
            f'SELECT token FROM "{settings.table}_leases" WHERE key = $1 AND token = $2 FOR SHARE',
            LEASE,
            old.token,
        )
        assert locked == old.token
        takeover = asyncio.ensure_future(store.acquire_lease(LEASE, "b", 30))
        await asyncio.sleep(0.3)
        assert not takeover.done()  # blocked behind the write
        await tx.commit()
        new = await asyncio.wait_for(takeover, 5)
        assert new.owner == "b" and new.token > old.token
        assert not await store.save_batch_fenced([("k", b"late", None)], LEASE, old.token)


async def test_fenced_batches_keep_ttls_and_collapse_duplicates(pg: PostgresServer) -> None:
    async with stores(pg.settings(), 1) as (store,):
        token = (await store.acquire_lease(LEASE, "a", 30)).token
        entries = [("a", b"1", None), ("b", b"2", 0.2), ("a", b"3", 60.0)]
        assert await store.save_batch_fenced(entries, LEASE, token)
        assert await store.load_batch(["a", "b"]) == {"a": b"3", "b": b"2"}
        await asyncio.sleep(0.3)
        assert await store.load_batch(["a", "b"]) == {"a": b"3"}
        assert await store.save_batch_fenced([], LEASE, token)  # nothing to write, still held
        assert not await store.save_batch_fenced([], LEASE, token + 1)


async def test_lease_times_are_unix_seconds_from_the_server(pg: PostgresServer) -> None:
    async with stores(pg.settings(), 1) as (store,):
        state = await store.acquire_lease(LEASE, "a", 30)
        assert isinstance(state.expires_at, float)
        assert abs(state.expires_at - (time.time() + 30)) < 2
        await store.release_lease(LEASE, "a", state.token)
        released = await store.read_lease(LEASE)
        assert released is not None and released.expires_at == 0.0
        assert released.token == state.token
        assert await store.renew_lease(LEASE, "a", state.token, 10) is True
        renewed = await store.read_lease(LEASE)
        assert renewed is not None and renewed.expires_at > time.time() + 5
