"""The Redis run queue (``blokrun/queues/redis_queue.py``) beyond the shared contract: its
keys (under the prefix, never values), per-claim TTLs with the age order kept, the cleanup
of drained streams and idle consumers, ``SCRIPT FLUSH``, and errors without the password.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import quote

import anyio
import pytest
import redis.asyncio as aioredis

from blokrun.datasources.datasource import Datasource
from blokrun.errors import DatasourceUnavailable
from blokrun.queues.queue import Job, open_queue
from blokrun.queues.redis_queue import GROUP, RedisQueue
from tests.servers.base import connected as _open
from tests.servers.redis import RedisServer, launch

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


pytestmark = pytest.mark.server

NS = "p/_blokrun.queue."
PASSWORD = "qu:eue@p/w%d"


def job(rid: str, priority: int = 0) -> Job:
    return Job(request_id=rid, workflow="w", document={}, inputs={}, priority=priority)


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    return redis_server


@pytest.fixture
async def pair(server: RedisServer) -> AsyncIterator[tuple[Datasource, aioredis.Redis]]:
    """A datasource under a prefix and a raw client on the same database."""
    settings = server.settings(prefix="p/")
    ds = await _open(settings)
    assert settings.url is not None
    raw = aioredis.Redis.from_url(settings.url)
    yield ds, raw
    await raw.aclose()
    await ds.close()


async def _queue(ds: Datasource) -> RedisQueue:
    q = open_queue(ds)
    assert isinstance(q, RedisQueue)
    await q.setup()
    return q


async def test_queue_keys_are_under_the_prefix_and_not_values(
    pair: tuple[Datasource, aioredis.Redis],
) -> None:
    ds, raw = pair
    q = await _queue(ds)
    await ds.save("record", b"v")
    await q.enqueue(job("r1", priority=2))
    await q.enqueue(job("r2", priority=-1))
    await q.claim("w", 1, 30)
    found = sorted(await raw.keys("*"))
    assert found == [
        b"p/_blokrun.queue.c2",
        b"p/_blokrun.queue.ids",
        b"p/_blokrun.queue.p-1",
        b"p/_blokrun.queue.p2",
        b"p/_blokrun.queue.priorities",
        b"p/record",
    ]
    assert await ds.keys() == ["record"]
    assert await ds.load("_blokrun.queue.ids") is None
    groups = await raw.xinfo_groups(NS + "p2")
    assert [g["name"] for g in groups] == [GROUP.encode()]


async def test_each_claim_has_its_own_ttl_and_age_order_is_kept(
    pair: tuple[Datasource, aioredis.Redis],
) -> None:
    ds, _ = pair
    q = await _queue(ds)
    for rid in ("r1", "r2", "r3"):
        await q.enqueue(job(rid))
    assert [c.job.request_id for c in await q.claim("a", 1, 0.2)] == ["r1"]
    assert [c.job.request_id for c in await q.claim("b", 1, 30)] == ["r2"]
    await anyio.sleep(0.3)
    # r1 (expired) is older than r3 (new): it comes first; r2's long claim still holds
    taken = await q.claim("c", 5, 30)
    assert [(c.job.request_id, c.deliveries) for c in taken] == [("r1", 2), ("r3", 1)]
    assert await q.renew("a", ["r1"], 30) == set()
    assert await q.renew("b", ["r2"], 30) == {"r2"}
    stats = await q.stats()
    assert (stats.waiting, stats.claimed) == (0, 3)


async def test_a_released_claim_is_not_renewed_and_release_is_idempotent(
    pair: tuple[Datasource, aioredis.Redis],
) -> None:
    ds, _ = pair
    q = await _queue(ds)
    await q.enqueue(job("r1"))
    await q.claim("w", 1, 30)
    await q.release("w", "r1")
    await q.release("w", "r1")
    assert await q.renew("w", ["r1"], 30) == set()
    assert (await q.stats()).waiting == 1
    [again] = await q.claim("w", 1, 30)
    assert again.deliveries == 2
    assert await q.renew("w", ["r1", "unknown"], 30) == {"r1"}


async def test_drained_streams_and_idle_consumers_are_removed(
    pair: tuple[Datasource, aioredis.Redis],
) -> None:
    ds, raw = pair
    q = await _queue(ds)
    await q.enqueue(job("r1"))
    await q.enqueue(job("r2"))
    await q.claim("w1", 1, 0.05)
    await q.claim("w2", 1, 30)
    await anyio.sleep(0.1)
    [taken] = await q.claim("w3", 1, 30)  # from w1, whose consumer is now empty
    assert taken.job.request_id == "r1"
    names = {c["name"] for c in await raw.xinfo_consumers(NS + "p0", GROUP)}
    assert names == {b"w2", b"w3"}
    await q.ack("w3", "r1")
    names = {c["name"] for c in await raw.xinfo_consumers(NS + "p0", GROUP)}
    assert names == {b"w2"}
    await q.ack("w2", "r2")
    await q.ack("w2", "r2")  # already gone: nothing
    assert await raw.keys("*") == []
    assert await q.enqueue(job("r1")) is True  # the stream and group come back
    assert [c.job.request_id for c in await q.claim("w", 5, 30)] == ["r1"]


async def test_scripts_are_reloaded_after_script_flush(
    pair: tuple[Datasource, aioredis.Redis],
) -> None:
    ds, raw = pair
    q = await _queue(ds)
    await raw.script_flush()
    assert await q.enqueue(job("r1")) is True
    await raw.script_flush()
    assert len(await q.claim("w", 1, 30)) == 1


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = launch(tmp_path_factory.mktemp("redis-queue-auth"), password=PASSWORD)
    yield srv
    srv.stop()


async def test_outage_is_unavailable_without_the_password(auth_server: RedisServer) -> None:
    ds = await _open(auth_server.settings(name="queue", timeout=1.0))
    try:
        q = await _queue(ds)
        await q.enqueue(job("r1"))
        auth_server.stop()
        for op in (
            lambda: q.enqueue(job("r2")),
            lambda: q.claim("w", 1, 30),
            lambda: q.renew("w", ["r1"], 30),
            lambda: q.ack("w", "r1"),
            lambda: q.release("w", "r1"),
            q.stats,
        ):
            start = time.monotonic()
            with pytest.raises(DatasourceUnavailable) as info:
                await op()
            assert time.monotonic() - start < 1.5
            text = str(info.value)
            assert "'queue'" in text and f"127.0.0.1:{auth_server.port}" in text
            seen: BaseException | None = info.value
            while seen is not None:
                for secret in (PASSWORD, quote(PASSWORD, safe="")):
                    assert secret not in str(seen) + repr(seen)
                seen = seen.__cause__ or seen.__context__
        auth_server.start()  # reloads dump.rdb: the job is still there
        assert [c.job.request_id for c in await q.claim("w", 1, 30)] == ["r1"]
    finally:
        auth_server.start()
        await ds.close()
