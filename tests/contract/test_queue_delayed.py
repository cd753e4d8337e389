"""Delayed jobs (``Job.not_before``) and ``Queue.defer`` on every queue backend (memory, Redis,
PostgreSQL), plus what only one backend has: Redis keeps delayed jobs out of its streams,
PostgreSQL filters them on the claim index and migrates a queue table of schema v1.

Delays are short (0.2-0.5 s) and measured from a ``t0`` taken before the enqueues; the
servers run on this machine, so their clocks are the test's."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import anyio
import asyncpg  # type: ignore[import-untyped,unused-ignore]
import msgspec
import pytest
import redis.asyncio as aioredis
from anyio.lowlevel import checkpoint

from blokrun.datasources import build_datasource
from blokrun.queues.pg_queue import SCHEMA_VERSION, PostgresQueue
from blokrun.queues.queue import Claim, Job, Queue, open_queue
from blokrun.queues.redis_queue import NAMESPACE, RedisQueue
from tests.contract.test_queue import BACKENDS, _queues, job
from tests.servers.postgresql import PostgresServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from blokrun.config import DatasourceSettings
    from tests.conftest import ServerPool
    from tests.servers.base import ThrowawayServer

over_backends = pytest.mark.parametrize("server", BACKENDS, indirect=True)


def later(rid: str, at: float, priority: int = 0) -> Job:
    """A job not claimable before ``at`` (Unix seconds)."""
    return msgspec.structs.replace(job(rid, priority), not_before=at)


async def until(at: float) -> None:
    await anyio.sleep(max(0.0, at - time.time()))


def ids(claims: list[Claim]) -> list[str]:
    return [c.job.request_id for c in claims]


@asynccontextmanager
async def one_queue(settings: DatasourceSettings) -> AsyncIterator[Queue]:
    """The queue (set up) of a datasource with ``settings``."""
    async with build_datasource(settings) as ds:
        q = open_queue(ds)
        await q.setup()
        yield q


def postgresql(server_pool: ServerPool) -> PostgresServer:
    server = server_pool.get("postgresql")
    assert isinstance(server, PostgresServer)
    return server


@over_backends
async def test_a_delayed_job_is_claimed_only_from_its_time_on(server: ThrowawayServer) -> None:
    async with _queues(server) as (a, b):
        t0 = time.time()
        assert await a.enqueue(later("d1", t0 + 0.3)) is True
        assert await a.enqueue(later("past", t0 - 60)) is True  # a time past: at once
        assert ids(await b.claim("w", 10, 30)) == ["past"]
        assert await b.claim("w", 10, 30) == []
        stats = await a.stats()
        assert (stats.waiting, stats.claimed, stats.delayed) == (0, 1, 1)
        assert await b.holds("d1")
        await until(t0 + 0.2)
        assert await b.claim("w", 10, 30) == []  # still not due
        await until(t0 + 0.35)
        [claim] = await b.claim("w", 10, 30)
        assert time.time() >= t0 + 0.3
        assert (claim.job.request_id, claim.deliveries, claim.deferrals) == ("d1", 1, 0)
        assert claim.job.not_before == t0 + 0.3 and claim.job.inputs == {"n": "d1"}
        stats = await a.stats()
        assert (stats.waiting, stats.claimed, stats.delayed) == (0, 2, 0)


@over_backends
async def test_enqueue_stays_idempotent_for_delayed_jobs(server: ThrowawayServer) -> None:
    async with _queues(server) as (a, b):
        t0 = time.time()
        assert await a.enqueue(later("d1", t0 + 0.2)) is True
        assert await b.enqueue(later("d1", t0 + 60)) is False
        assert await b.enqueue(job("d1")) is False  # not even as a job due now
        assert await a.claim("w", 10, 30) == []
        stats = await b.stats()
        assert (stats.waiting, stats.delayed) == (0, 1)
        await until(t0 + 0.25)
        assert await b.enqueue(later("d1", t0 + 60)) is False  # due, not claimed yet
        [claim] = await a.claim("w", 10, 30)
        assert claim.job.not_before == t0 + 0.2  # the first job, not a later one
        await a.ack("w", "d1")
        assert await b.enqueue(later("d1", time.time() + 60)) is True  # gone after the ack
        assert (await a.stats()).delayed == 1


@over_backends
async def test_due_jobs_come_by_priority_then_the_time_they_became_due(
    server: ThrowawayServer,
) -> None:
    async with _queues(server) as (a, b):
        t0 = time.time()
        await a.enqueue(later("late", t0 + 0.45))
        await a.enqueue(later("early", t0 + 0.2))
        await a.enqueue(later("urgent", t0 + 0.45, priority=1))
        await a.enqueue(job("now"))
        await until(t0 + 0.3)
        stats = await b.stats()
        assert (stats.waiting, stats.claimed, stats.delayed) == (2, 0, 2)
        await b.enqueue(job("after-early"))  # enqueued after "early" was due
        await until(t0 + 0.55)
        # "now" was claimable first, then "early" (due at 0.2), "after-early" (0.3), "late"
        claims = await b.claim("w", 10, 30)
        assert ids(claims) == ["urgent", "now", "early", "after-early", "late"]
        assert all((c.deliveries, c.deferrals) == (1, 0) for c in claims)


@over_backends
async def test_defer_by_the_holder_gives_the_job_back_for_later(server: ThrowawayServer) -> None:
    async with _queues(server) as (a, b):
        await a.enqueue(job("r1"))
        await a.enqueue(job("r2"))
        [first] = await a.claim("w1", 1, 30)
        assert first.job.request_id == "r1"
        assert await b.defer("w2", "r1", time.time() + 0.3) is False  # not w2's claim
        assert await b.defer("w1", "unknown", time.time() + 0.3) is False
        assert await b.defer("w1", "r2", time.time() + 0.3) is False  # waiting, not claimed
        t0 = time.time()
        assert await b.defer("w1", "r1", t0 + 0.3) is True
        assert await a.defer("w1", "r1", t0 + 0.3) is False  # no longer held
        assert await a.renew("w1", ["r1"], 30) == set()
        await a.release("w1", "r1")  # not held: nothing
        assert await a.enqueue(job("r1")) is False  # still in the queue
        assert await b.holds("r1")
        stats = await a.stats()
        assert (stats.waiting, stats.claimed, stats.delayed) == (1, 0, 1)
        assert ids(await b.claim("w2", 10, 30)) == ["r2"]  # r1 is not due yet
        await until(t0 + 0.35)
        [again] = await b.claim("w2", 10, 30)
        # a deferral is not a failed delivery: deliveries starts again, deferrals counts it
        assert (again.job.request_id, again.deliveries, again.deferrals) == ("r1", 1, 1)
        assert again.job == first.job  # the job as enqueued
        assert await a.renew("w2", ["r1"], 30) == {"r1"}
        assert await a.defer("w2", "r1", 0) is True  # a time past: claimable at once
        [third] = await a.claim("w1", 10, 30)
        assert (third.job.request_id, third.deliveries, third.deferrals) == ("r1", 1, 2)
        await a.ack("w1", "r1")
        assert not await b.holds("r1")
        assert await b.defer("w1", "r1", 0) is False  # acked


@over_backends
async def test_a_stale_holder_cannot_defer_and_redeliveries_keep_counting(
    server: ThrowawayServer,
) -> None:
    async with _queues(server) as (a, b):
        await a.enqueue(job("r1"))
        await a.claim("w1", 1, 30)
        assert await a.defer("w1", "r1", 0) is True
        [claim] = await b.claim("dead", 1, 0.2)  # after a deferral, then its worker dies
        assert (claim.deliveries, claim.deferrals) == (1, 1)
        await anyio.sleep(0.3)
        [taken] = await b.claim("alive", 1, 30)
        assert (taken.deliveries, taken.deferrals) == (2, 1)
        assert await a.defer("dead", "r1", 0) is False  # its claim was taken over
        await a.release("alive", "r1")
        assert await a.defer("alive", "r1", 0) is False  # released: not held any more
        assert ids(await b.claim("w", 1, 30)) == ["r1"]


@over_backends
async def test_workers_claiming_as_jobs_fall_due_never_share_one(
    server: ThrowawayServer,
) -> None:
    n_workers = 2 if server.driver == "memory" else 5
    async with _queues(server, n_workers) as queues:
        t0 = time.time()
        due = {f"r{i:02}": t0 + 0.3 + (i % 3) * 0.05 for i in range(30)}
        for rid, at in due.items():
            assert await queues[0].enqueue(later(rid, at))
        got: dict[str, list[tuple[str, float]]] = {}

        async def worker(i: int, q: Queue) -> None:
            mine = got.setdefault(f"w{i}", [])
            while sum(len(v) for v in got.values()) < len(due) and time.time() < t0 + 5:
                claims = await q.claim(f"w{i}", 2, 30)
                seen = time.time()
                mine.extend((c.job.request_id, seen) for c in claims)
                await anyio.sleep(0 if claims else 0.002)

        await until(t0 + 0.25)
        async with anyio.create_task_group() as tg:
            for i, q in enumerate(queues):
                tg.start_soon(worker, i, q)
        every = sorted(rid for claims in got.values() for rid, _ in claims)
        assert every == sorted(due)  # each once
        assert all(seen >= due[rid] for claims in got.values() for rid, seen in claims)
        stats = await queues[0].stats()
        assert (stats.waiting, stats.claimed, stats.delayed) == (0, 30, 0)


@over_backends
async def test_deferring_while_others_claim_hands_the_job_out_once(
    server: ThrowawayServer,
) -> None:
    n_workers = 2 if server.driver == "memory" else 4
    async with _queues(server, n_workers) as queues:
        for i in range(8):
            await queues[0].enqueue(job(f"r{i}"))
        held = await queues[0].claim("w0", 8, 30)
        got: list[str] = []

        async def give_back() -> None:
            for c in held:  # each due again at once: the claimers race for it
                assert await queues[0].defer("w0", c.job.request_id, 0)
                await checkpoint()

        async def worker(i: int, q: Queue) -> None:
            deadline = time.time() + 5
            while len(got) < len(held) and time.time() < deadline:
                got.extend(c.job.request_id for c in await q.claim(f"c{i}", 3, 30))
                await checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(give_back)
            for i, q in enumerate(queues[1:], start=1):
                tg.start_soon(worker, i, q)
        assert sorted(got) == sorted(c.job.request_id for c in held)


@over_backends
async def test_bad_not_before_is_refused(server: ThrowawayServer) -> None:
    async with _queues(server) as (a, _):
        for bad in (float("nan"), float("inf"), 1e13):
            with pytest.raises(ValueError, match="not_before"):
                await a.enqueue(later("x", bad))
        await a.enqueue(job("r1"))
        await a.claim("w", 1, 30)
        with pytest.raises(ValueError, match="not_before"):
            await a.defer("w", "r1", float("nan"))
        assert not await a.holds("x")
        assert await a.defer("w", "r1", -5.0)  # before the epoch: at once


# -- Redis: delayed jobs wait outside the streams ---------------------------------------------


async def test_redis_delayed_jobs_wait_outside_the_streams(server_pool: ServerPool) -> None:
    server = server_pool.get("redis")
    prefix = f"d-{time.time_ns()}/"
    ns = (prefix + NAMESPACE).encode()
    settings = server.settings("q", prefix=prefix)
    assert settings.url is not None
    async with one_queue(settings) as q:
        assert isinstance(q, RedisQueue)
        raw = aioredis.Redis.from_url(settings.url)
        try:
            t0 = time.time()
            for i in range(200):
                await q.enqueue(later(f"d{i:03}", t0 + 60))
            await q.enqueue(later("soon", t0 + 0.2))
            await q.enqueue(job("now"))
            assert await raw.xlen(ns + b"p0") == 1  # only "now" is in a stream
            assert await raw.zcard(ns + b"delayed") == 201
            assert await raw.hlen(ns + b"delayed.jobs") == 201
            assert ids(await q.claim("w", 10, 30)) == ["now"]
            await until(t0 + 0.25)
            [claim] = await q.claim("w", 10, 30)
            assert claim.job.request_id == "soon"
            assert await raw.zcard(ns + b"delayed") == 200
            assert await q.defer("w", "soon", time.time() + 60)
            fields = await raw.hget(ns + b"ids", "soon")
            assert fields == b"0 - 1"
            for i in range(200):
                await q.ack("w", f"d{i:03}")  # any worker acks, also a delayed job
            await q.ack("w", "soon")
            await q.ack("w", "now")
            assert await raw.keys(prefix + "*") == []  # nothing left behind
        finally:
            await raw.aclose()


# -- PostgreSQL: the claim index and the migration from schema v1 -----------------------------

_V1_TABLE = """CREATE TABLE {q} (
    prefix text COLLATE "C" NOT NULL,
    request_id text COLLATE "C" NOT NULL,
    priority integer NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    job bytea NOT NULL,
    worker text NULL,
    claimed_until timestamptz NULL,
    deliveries integer NOT NULL DEFAULT 0,
    PRIMARY KEY (prefix, request_id)) WITH (fillfactor = 80)"""


def _v1_job(rid: str) -> bytes:
    """A job as the previous blokrun encoded it (no ``not_before`` field)."""
    doc = {"request_id": rid, "workflow": "w", "document": {"name": "w"}, "inputs": {},
           "priority": 0, "enqueued_at": 1.0, "source": "<queue>"}  # fmt: skip
    return msgspec.json.encode(doc)


async def test_postgresql_queue_table_of_schema_v1_is_migrated(server_pool: ServerPool) -> None:
    server = postgresql(server_pool)
    settings = replace(server.settings(), prefix="")
    table = f'"{settings.table}_queue"'
    con = await asyncpg.connect(server.url)
    try:  # the table as blokrun queue v1 left it: three jobs waiting, one of them claimed
        await con.execute(_V1_TABLE.format(q=table))
        await con.execute(
            f"CREATE INDEX ON {table} (prefix, priority DESC, enqueued_at, request_id)"
        )
        await con.execute(f"COMMENT ON TABLE {table} IS 'blokrun queue v1'")
        for i, rid in enumerate(["old-c", "old-a", "old-b"]):
            await con.execute(
                f"INSERT INTO {table} (prefix, request_id, priority, enqueued_at, job) "
                "VALUES ('', $1, 0, now() - make_interval(secs => $2), $3)",
                rid, 60.0 - i, _v1_job(rid),
            )  # fmt: skip
        await con.execute(
            f"UPDATE {table} SET worker = 'w-old', claimed_until = now() + interval '1 hour', "
            "deliveries = 1 WHERE request_id = 'old-a'"
        )
    finally:
        await con.close()
    async with one_queue(settings) as q:
        assert isinstance(q, PostgresQueue)
        await q.setup()  # already at v2: nothing more
        stats = await q.stats()
        assert (stats.waiting, stats.claimed, stats.delayed) == (2, 1, 0)
        await q.enqueue(later("new-later", time.time() + 0.2))
        await q.enqueue(job("new"))
        claims = await q.claim("w", 10, 30)
        assert ids(claims) == ["old-c", "old-b", "new"]  # the old order is kept
        assert claims[0].job.not_before == 0.0 and claims[0].job.enqueued_at == 1.0
        assert await q.defer("w-old", "old-a", 0)  # a claim taken under v1 is still held
        assert ids(await q.claim("w", 10, 30)) == ["old-a"]
        await until(time.time() + 0.25)
        assert ids(await q.claim("w", 10, 30)) == ["new-later"]
    con = await asyncpg.connect(server.url)
    try:
        comment = await con.fetchval("SELECT obj_description(to_regclass($1), 'pg_class')", table)
        cols = await con.fetch(
            "SELECT column_name, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_name = $1 ORDER BY ordinal_position",
            f"{settings.table}_queue",
        )
        indexes = await con.fetch(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1::regclass "
            "AND NOT indisprimary",
            table,
        )
    finally:
        await con.close()
    assert comment == f"blokrun queue v{SCHEMA_VERSION}" and SCHEMA_VERSION == 2
    assert [(c[0], c[1]) for c in cols][-2:] == [("not_before", "NO"), ("deferrals", "NO")]
    assert cols[-2][2] == "now()" and cols[-1][2] == "0"
    [index] = [r[0] for r in indexes]  # the v1 claim index is gone
    assert index.endswith("(prefix, priority DESC, not_before, request_id)"), index


async def test_postgresql_claim_filters_delayed_jobs_on_the_index(
    server_pool: ServerPool,
) -> None:
    server = postgresql(server_pool)
    settings = replace(server.settings(), prefix="")
    async with one_queue(settings) as q:
        assert isinstance(q, PostgresQueue)
        t0 = time.time()
        for i in range(200):
            await q.enqueue(later(f"d{i:03}", t0 + 60, priority=i % 3))
        await q.enqueue(job("now", priority=1))
        assert ids(await q.claim("w", 5, 30)) == ["now"]
        con = await asyncpg.connect(server.url)
        try:
            await con.execute(f'ANALYZE "{settings.table}_queue"')
            await con.execute("SET enable_seqscan = off")
            sql = q._sql["claim"]
            for arg, value in (("$1", "''"), ("$2", "'x'"), ("$3", "10"), ("$4", "30")):
                sql = sql.replace(arg, value)
            plan = "\n".join(r[0] for r in await con.fetch("EXPLAIN " + sql))
        finally:
            await con.close()
    init = plan.split("InitPlan")[1]
    assert "Sort" not in init.split("Index Scan")[0], plan  # the index gives the order
    assert "_prefix_priority_not_before_request_id_idx" in init, plan
    assert "not_before <= now()" in init.split("Index Cond:")[1].split("\n")[0], plan
