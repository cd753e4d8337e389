"""The run-queue contract (``blokrun/queues/queue.py``) on every backend: memory, Redis
(Streams with a consumer group), PostgreSQL (a table claimed with ``FOR UPDATE SKIP LOCKED``).

"Two workers" are two datasources with their own connections on one store."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING
from uuid import uuid4

import anyio
import pytest

from blokrun.datasources import build_datasource
from blokrun.queues.queue import Job, Queue, open_queue

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from blokrun.datasources import Datasource
    from tests.servers.base import ThrowawayServer

BACKENDS = ("memory", "redis", "postgresql")
#: Only the datasources that can hold the queue: the others are refused by open_queue().
pytestmark = pytest.mark.parametrize("server", BACKENDS, indirect=True)


@asynccontextmanager
async def _queues(server: ThrowawayServer, n: int = 2) -> AsyncIterator[list[Queue]]:
    base = server.settings("q0", prefix=f"q-{uuid4().hex[:8]}/")
    async with AsyncExitStack() as stack:
        stores: list[Datasource] = []
        for i in range(n):
            if server.driver == "memory" and stores:
                ds = stores[0]
            else:
                ds = await stack.enter_async_context(build_datasource(replace(base, name=f"q{i}")))
            stores.append(ds)
        queues = [open_queue(ds) for ds in stores]
        for q in queues:
            await q.setup()
        yield queues


def job(rid: str, priority: int = 0) -> Job:
    return Job(
        request_id=rid,
        workflow="w",
        document={"name": "w", "steps": [{"name": "a", "node": "set", "inputs": {"x": 1}}]},
        inputs={"n": rid},
        priority=priority,
        enqueued_at=time.time(),
    )


async def test_enqueue_is_idempotent_by_request_id(server: ThrowawayServer) -> None:
    async with _queues(server) as (a, b):
        assert await a.enqueue(job("r1")) is True
        assert await b.enqueue(job("r1")) is False
        assert (await a.stats()).waiting == 1
        [claim] = await a.claim("w1", 10, 30)
        assert await b.enqueue(job("r1")) is False  # claimed is still in the queue
        assert claim.job.request_id == "r1" and claim.job.document["name"] == "w"
        assert claim.job.inputs == {"n": "r1"} and claim.deliveries == 1
        await a.ack("w1", "r1")
        assert await b.enqueue(job("r1")) is True  # gone after the ack: a new run may reuse it


async def test_claims_come_by_priority_then_age_and_never_twice(server: ThrowawayServer) -> None:
    async with _queues(server) as (a, b):
        for i in range(6):
            await a.enqueue(job(f"r{i}", priority=1 if i in (3, 4) else 0))
            await anyio.sleep(0.002)
        first = await a.claim("w1", 3, 30)
        assert [c.job.request_id for c in first] == ["r3", "r4", "r0"]
        second = await b.claim("w2", 10, 30)
        assert [c.job.request_id for c in second] == ["r1", "r2", "r5"]
        assert await a.claim("w1", 10, 30) == []
        stats = await a.stats()
        assert (stats.waiting, stats.claimed) == (0, 6)


async def test_many_workers_claiming_at_once_split_the_jobs(server: ThrowawayServer) -> None:
    n_workers = 2 if server.driver == "memory" else 5
    async with _queues(server, n_workers) as queues:
        for i in range(60):
            await queues[0].enqueue(job(f"r{i}"))
        got: dict[str, list[str]] = {}

        async def worker(i: int, q: Queue) -> None:
            mine = got.setdefault(f"w{i}", [])
            while claims := await q.claim(f"w{i}", 4, 30):
                mine.extend(c.job.request_id for c in claims)

        async with anyio.create_task_group() as tg:
            for i, q in enumerate(queues):
                tg.start_soon(worker, i, q)
        every = [rid for ids in got.values() for rid in ids]
        assert sorted(every) == sorted(f"r{i}" for i in range(60))  # each once


async def test_an_expired_claim_is_handed_to_another_worker(server: ThrowawayServer) -> None:
    async with _queues(server) as (a, b):
        await a.enqueue(job("r1"))
        await a.enqueue(job("r2"))
        claims = await a.claim("dead", 2, 1.0)
        assert len(claims) == 2
        assert await a.renew("dead", ["r2"], 1.0) == {"r2"}
        await anyio.sleep(0.6)
        assert await a.renew("dead", ["r2"], 1.0) == {"r2"}  # r2 kept alive, r1 not
        await anyio.sleep(0.6)
        taken = await b.claim("alive", 10, 30)
        assert [(c.job.request_id, c.deliveries) for c in taken] == [("r1", 2)]
        assert await a.renew("dead", ["r1", "r2"], 1.0) == {"r2"}  # r1 is someone else's
        await b.ack("alive", "r1")
        await a.release("dead", "r2")
        again = await b.claim("alive", 10, 30)
        assert [c.job.request_id for c in again] == ["r2"]
        assert (await a.stats()).claimed == 1


async def test_release_puts_a_job_back_at_once(server: ThrowawayServer) -> None:
    async with _queues(server) as (a, b):
        await a.enqueue(job("r1"))
        [claim] = await a.claim("w1", 1, 30)
        await b.release("w2", "r1")  # not w2's: ignored
        assert await b.claim("w2", 1, 30) == []
        await a.release("w1", "r1")
        [again] = await b.claim("w2", 1, 30)
        assert again.job.request_id == "r1" and again.deliveries == claim.deliveries + 1


async def test_holds_tells_whether_a_job_is_in_the_queue(server: ThrowawayServer) -> None:
    async with _queues(server) as (a, b):
        assert not await b.holds("h-1")
        await a.enqueue(job("h-1"))
        assert await b.holds("h-1")  # waiting
        (claim,) = await b.claim("w", 1, 30)
        assert claim.job.request_id == "h-1" and await a.holds("h-1")  # claimed
        await b.ack("w", "h-1")
        assert not await a.holds("h-1")  # done
