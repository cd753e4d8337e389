"""The PostgreSQL run queue beyond the contract: prefixes sharing one table, a setup race,
the queue table's version, the claim plan, holder-only acks, long table names, errors."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest

from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource
from blokrun.errors import DatasourceError
from blokrun.queues.pg_queue import SCHEMA_VERSION, PostgresQueue, queue_table
from blokrun.queues.queue import Job, open_queue
from tests.servers.postgresql import PostgresServer

pytestmark = pytest.mark.server


@pytest.fixture
def pg(server_pool: Any) -> PostgresServer:
    server: PostgresServer = server_pool.get("postgresql")
    return server


@asynccontextmanager
async def raw(pg: PostgresServer) -> AsyncIterator[Any]:
    con = await asyncpg.connect(pg.url)
    try:
        yield con
    finally:
        await con.close()


@asynccontextmanager
async def queues(
    settings: list[DatasourceSettings], *, setup: bool = True
) -> AsyncIterator[list[PostgresQueue]]:
    async with AsyncExitStack() as stack:
        out = []
        for s in settings:
            ds: Datasource = await stack.enter_async_context(build_datasource(s))
            q = open_queue(ds)
            assert isinstance(q, PostgresQueue)
            out.append(q)
        if setup:
            for q in out:
                await q.setup()
        yield out


def job(rid: str, priority: int = 0) -> Job:
    return Job(request_id=rid, workflow="w", document={"name": "w"}, inputs={}, priority=priority,
               enqueued_at=time.time())  # fmt: skip


async def test_two_prefixes_on_one_table_never_see_each_others_jobs(pg: PostgresServer) -> None:
    base = pg.settings()
    a_s = replace(base, name="a", prefix="one/")
    b_s = replace(base, name="b", prefix="two/")
    async with queues([a_s, b_s]) as (a, b):
        assert a.table == b.table
        assert await a.enqueue(job("r1")) is True
        assert await b.enqueue(job("r1")) is True  # same id, other prefix: another job
        await a.enqueue(job("r2"))
        assert [c.job.request_id for c in await b.claim("w", 10, 30)] == ["r1"]
        assert (await a.stats()).waiting == 2 and (await b.stats()).claimed == 1
        await a.ack("w", "r1")  # a's r1 is not claimed by w: nothing happens
        await b.ack("w", "r1")
        assert (await b.stats()).claimed == 0 and (await a.stats()).waiting == 2


async def test_many_workers_set_up_one_fresh_table_at_once(pg: PostgresServer) -> None:
    settings = pg.settings()
    async with queues([settings] * 8, setup=False) as qs:
        async with anyio.create_task_group() as tg:
            for q in qs:
                tg.start_soon(q.setup)
        await qs[0].setup()  # idempotent
        assert await qs[3].enqueue(job("r1"))
    async with raw(pg) as con:
        comment = await con.fetchval(
            "SELECT obj_description(to_regclass($1), 'pg_class')", f'"{settings.table}_queue"'
        )
        store_versions = await con.fetch(
            "SELECT version FROM blokrun_migrations WHERE table_name = $1 ORDER BY version",
            settings.table,
        )
        cols = await con.fetch(
            "SELECT column_name, data_type, is_nullable, collation_name FROM "
            "information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            f"{settings.table}_queue",
        )
    assert comment == f"blokrun queue v{SCHEMA_VERSION}"
    assert [v[0] for v in store_versions] == [1, 2, 3]  # the store's own version is untouched
    assert [c[0] for c in cols] == ["prefix", "request_id", "priority", "enqueued_at", "job",
                                    "worker", "claimed_until", "deliveries"]  # fmt: skip
    assert cols[1][3] == "C"


async def test_a_table_that_is_not_a_queue_or_is_newer_is_refused(pg: PostgresServer) -> None:
    foreign, newer = pg.settings(), pg.settings()
    async with raw(pg) as con:
        await con.execute(f'CREATE TABLE "{foreign.table}_queue" (key text)')
    async with queues([foreign], setup=False) as (q,):
        with pytest.raises(DatasourceError, match="not a blokrun queue table") as info:
            await q.setup()
        assert info.value.datasource == foreign.name
    async with queues([newer]) as (q,):
        pass
    async with raw(pg) as con:
        await con.execute(f"COMMENT ON TABLE \"{newer.table}_queue\" IS 'blokrun queue v99'")
    async with queues([newer], setup=False) as (q,):
        with pytest.raises(DatasourceError, match="schema version 99, newer"):
            await q.setup()


async def test_the_claim_walks_the_claim_index(pg: PostgresServer) -> None:
    settings = pg.settings()
    async with queues([settings]) as (q,):
        for i in range(200):
            await q.enqueue(job(f"r{i:03}", priority=i % 3))
        claims = await q.claim("w", 5, 30)
        assert [c.job.request_id for c in claims] == ["r002", "r005", "r008", "r011", "r014"]
    async with raw(pg) as con:
        await con.execute(f'ANALYZE "{settings.table}_queue"')
        await con.execute("SET enable_seqscan = off")  # a 200-row table: force the choice
        sql = q._sql["claim"].replace("$1", "''").replace("$2", "'x'").replace("$3", "10")
        plan = "\n".join(r[0] for r in await con.fetch("EXPLAIN " + sql.replace("$4", "30")))
    assert "Sort" not in plan.split("InitPlan")[1].split("Index Scan")[0], plan
    assert "_queue_prefix_priority_enqueued_at_request_id_idx" in plan, plan


async def test_only_the_holder_acks_and_a_stale_holder_cannot(pg: PostgresServer) -> None:
    async with queues([pg.settings()]) as (q,):
        await q.enqueue(job("r1"))
        await q.claim("dead", 1, 0.2)
        await q.ack("other", "r1")
        assert (await q.stats()).claimed == 1
        await anyio.sleep(0.3)
        [again] = await q.claim("alive", 1, 30)
        assert again.deliveries == 2
        await q.ack("dead", "r1")  # its claim was taken over: ignored
        await q.release("dead", "r1")
        assert (await q.stats()).claimed == 1
        assert await q.renew("dead", ["r1"], 30) == set()
        await q.ack("alive", "r1")
        assert (await q.stats()).claimed == 0 and (await q.stats()).waiting == 0


async def test_an_expired_claim_not_yet_taken_is_still_renewed(pg: PostgresServer) -> None:
    async with queues([pg.settings()]) as (q,):
        await q.enqueue(job("r1"))
        await q.claim("slow", 1, 0.1)
        await anyio.sleep(0.2)
        assert await q.renew("slow", ["r1", "unknown"], 30) == {"r1"}
        assert await q.claim("other", 1, 30) == []


def test_queue_table_names_fit_an_identifier() -> None:
    assert queue_table("blokrun_store") == "blokrun_store_queue"
    assert queue_table("t" * 57) == "t" * 57 + "_queue"
    long_a, long_b = "a" * 62 + "1", "a" * 62 + "2"
    assert len(queue_table(long_a)) <= 63
    assert queue_table(long_a) != queue_table(long_b)


async def test_a_long_table_name_gets_its_own_queue_table(pg: PostgresServer) -> None:
    one, two = pg.settings(table="q" * 62 + "1"), pg.settings(table="q" * 62 + "2")
    async with queues([one, two]) as (a, b):
        assert a.table != b.table
        await a.enqueue(job("r1"))
        assert (await b.stats()).waiting == 0 and (await a.stats()).waiting == 1


async def test_bad_arguments_and_an_undecodable_job(pg: PostgresServer) -> None:
    settings = pg.settings()
    async with queues([settings]) as (q,):
        with pytest.raises(DatasourceError, match="priority"):
            await q.enqueue(job("r1", priority=2**40))
        with pytest.raises(DatasourceError, match="invalid key"):
            await q.enqueue(job("bad\x00id"))
        with pytest.raises(DatasourceError, match="ttl"):
            await q.claim("w", 1, 0)
        assert await q.claim("w", 0, 30) == []
        await q.enqueue(job("r1"))
        await q.enqueue(job("r2"))
        async with raw(pg) as con:
            await con.execute(
                f"UPDATE \"{settings.table}_queue\" SET job = 'not json' WHERE request_id = 'r1'"
            )
        assert [c.job.request_id for c in await q.claim("w", 10, 30)] == ["r2"]
        assert (await q.stats()).claimed == 2  # r1 stays claimed, re-delivered after its TTL


async def test_errors_name_the_datasource_and_the_request(pg: PostgresServer) -> None:
    settings = pg.settings()
    async with queues([settings]) as (q,):
        async with raw(pg) as con:
            await con.execute(f'DROP TABLE "{settings.table}_queue"')
        with pytest.raises(DatasourceError, match="queue enqueue") as info:
            await q.enqueue(job("r1"))
        assert (info.value.datasource, info.value.key) == (settings.name, "r1")
        await q.setup()  # recreates it
        assert await q.enqueue(job("r1"))
