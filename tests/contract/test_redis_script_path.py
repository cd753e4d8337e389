"""The Redis driver's direct path (``RedisStore._direct``: the scripts' ``EVALSHA`` and
``load_batch``'s ``MGET``): packed by hiredis and read straight off a pooled connection,
bypassing redis-py's command machinery.

What that machinery did must still hold, attacked where a hand-driven connection goes wrong:
a reply must never be read by the wrong caller (a cancelled or timed-out command leaves its
connection closed, not back in the pool with a reply in flight), a connection the server
dropped is replaced and the command sent once more, a script the server lost is loaded
again, and every script call goes through it (one ``EVALSHA`` each, nothing else).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as aioredis

from blokrun.datasources.datasource import Datasource
from blokrun.datasources.redis import RedisStore
from blokrun.datasources.registry import create_store
from blokrun.errors import DatasourceUnavailable
from tests.servers.redis import RedisServer

if TYPE_CHECKING:
    from tests.conftest import ServerPool

pytestmark = pytest.mark.server

LEASE = "_blokrun.lease.run-1"


@pytest.fixture
def server(server_pool: ServerPool) -> RedisServer:
    srv = server_pool.get("redis")
    assert isinstance(srv, RedisServer)
    return srv


@pytest.fixture
async def pair(server: RedisServer) -> AsyncIterator[tuple[Datasource, aioredis.Redis]]:
    settings = server.settings(prefix="p/", pool_size=4, timeout=0.5)
    ds = Datasource(settings, create_store(settings))
    await ds.connect()
    assert settings.url is not None
    raw = aioredis.Redis.from_url(settings.url)
    yield ds, raw
    await raw.aclose()
    await ds.close()


async def _check_every_connection_answers_its_own(ds: Datasource, token: int) -> None:
    """Many concurrent fenced saves and reads of distinct values: a connection left with an
    unread reply would hand one caller another's answer (a wrong value, or a list where a
    value was expected)."""
    results: dict[int, bytes | None] = {}

    async def one(i: int) -> None:
        assert await ds.save_batch_fenced([(f"c{i}", f"v{i}".encode(), None)], LEASE, token)
        results[i] = await ds.load(f"c{i}")

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(one, i)
    assert results == {i: f"v{i}".encode() for i in range(40)}


async def test_cancelled_script_calls_never_hand_a_reply_to_another_caller(
    pair: tuple[Datasource, aioredis.Redis],
) -> None:
    ds, _ = pair
    token = (await ds.acquire_lease(LEASE, "me", 30)).token
    store = ds.store  # the driver itself: the wrapper's group commit shields its calls
    assert isinstance(store, RedisStore)
    rng = random.Random(7)
    cancelled = 0
    for i in range(300):  # cancelled before, during and after the send and the read
        entries = [(f"p/x{i}", b"x" * rng.randrange(1, 200_000), None)]
        with anyio.move_on_after(rng.random() * 0.0004) as scope:
            if i % 3 == 0:
                await store.save_batch_fenced(entries, "p/" + LEASE, token)
            elif i % 3 == 1:
                await store.acquire_lease_reading("p/" + LEASE, "me", 30, ["p/c1", "p/c2"])
            else:  # MGET takes the same path
                await store.load_batch([f"p/x{i - 2}", "p/c1"])
        cancelled += scope.cancelled_caught
    assert cancelled > 20, "the cancellations must land inside the calls"
    lease = await ds.read_lease(LEASE)  # each acquire by the same owner took the next token
    assert lease is not None
    await _check_every_connection_answers_its_own(ds, lease.token)


async def test_a_connection_the_server_dropped_is_replaced_and_the_script_sent_again(
    pair: tuple[Datasource, aioredis.Redis],
) -> None:
    ds, raw = pair
    token = (await ds.acquire_lease(LEASE, "me", 30)).token
    for round_ in range(5):
        me = (await raw.client_info())["id"]
        for client in await raw.client_list():  # every connection of the datasource's pool
            if int(client["id"]) != int(me):
                await raw.client_kill_filter(_id=client["id"])
        assert await ds.save_batch_fenced([("k", f"{round_}".encode(), None)], LEASE, token)
        assert await raw.get("p/k") == f"{round_}".encode()
    await _check_every_connection_answers_its_own(ds, token)


async def test_a_timed_out_script_call_closes_its_connection(
    pair: tuple[Datasource, aioredis.Redis], server: RedisServer
) -> None:
    ds, raw = pair
    token = (await ds.acquire_lease(LEASE, "me", 30)).token
    blocker = aioredis.Redis.from_url(server.url)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(blocker.execute_command, "DEBUG", "SLEEP", "0.8")
            await anyio.sleep(0.05)
            with pytest.raises(DatasourceUnavailable):  # 0.5 s timeout, server asleep 0.8 s
                await ds.save_batch_fenced([("late", b"1", None)], LEASE, token)
    finally:
        await blocker.aclose()
    # the late reply (written after the timeout) went to a closed connection, not a caller
    await _check_every_connection_answers_its_own(ds, token)
    assert await raw.get("p/late") == b"1"  # it did run: a timeout is not a refusal


async def test_a_lost_script_is_loaded_again_on_every_script_call(
    pair: tuple[Datasource, aioredis.Redis],
) -> None:
    ds, raw = pair
    state, found = await ds.acquire_lease_reading(LEASE, "me", 30, ["a"])
    assert found == {}
    await raw.script_flush()
    state, found = await ds.acquire_lease_reading(LEASE, "me", 30, ["a"])
    await raw.script_flush()
    assert await ds.save_batch_fenced([("a", b"1", None)], LEASE, state.token)
    await raw.script_flush()
    assert await ds.renew_lease(LEASE, "me", state.token, 30)
    await raw.script_flush()
    assert (await ds.acquire_lease_reading(LEASE, "me", 30, ["a"]))[1] == {"a": b"1"}


async def test_each_script_call_is_one_evalsha_and_nothing_else(
    pair: tuple[Datasource, aioredis.Redis],
) -> None:
    ds, raw = pair
    token = (await ds.acquire_lease(LEASE, "me", 30)).token
    await ds.save_batch_fenced([], LEASE, token)  # scripts loaded before counting
    await ds.renew_lease(LEASE, "me", token, 30)
    await raw.config_resetstat()
    for i in range(10):
        assert await ds.save_batch_fenced([(f"k{i}", b"v", None)], LEASE, token)
    assert await ds.renew_lease(LEASE, "me", token, 30)
    stats = await raw.info("commandstats")
    calls = {name: v["calls"] for name, v in stats.items()}
    calls.pop("cmdstat_info", None)
    calls.pop("cmdstat_config|resetstat", None)
    calls.pop("cmdstat_config", None)
    assert calls.pop("cmdstat_evalsha") == 11
    # what the scripts do inside (HGET, SET, HSET) is counted too; no other client command
    assert set(calls) <= {"cmdstat_hget", "cmdstat_set", "cmdstat_hset", "cmdstat_time"}


async def test_the_pool_stays_bounded_and_a_waiting_caller_gets_its_turn(
    server: RedisServer,
) -> None:
    """The pool's quick path (a free connection taken without the pool's condition) must
    neither open more connections than the pool size under a burst nor let busy callers
    keep the connections from one that waits for them. (Callers that never yield between
    commands starve a waiter in redis-py's own blocking pool too: its condition is not
    fair; not tested here.)"""
    settings = server.settings(prefix="q/", pool_size=2, timeout=2.0)
    ds = Datasource(settings, create_store(settings))
    await ds.connect()
    raw = aioredis.Redis.from_url(str(settings.url))
    try:
        token = (await ds.acquire_lease(LEASE, "me", 30)).token
        peak = 0
        stop = anyio.Event()

        async def watch() -> None:
            nonlocal peak
            me = (await raw.client_info())["id"]
            while not stop.is_set():
                clients = [c for c in await raw.client_list() if int(c["id"]) != int(me)]
                peak = max(peak, len(clients))
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            async with anyio.create_task_group() as burst:
                for i in range(300):
                    burst.start_soon(ds.save_batch_fenced, [(f"b{i}", b"v", None)], LEASE, token)
            stop.set()
        me = (await raw.client_info())["id"]
        pooled = [c for c in await raw.client_list() if int(c["id"]) != int(me)]
        assert 1 <= len(pooled) <= 2  # the pool's connections stay open, idle, after the burst
        assert peak <= 2

        store = ds.store
        assert isinstance(store, RedisStore)
        turns = {"busy": 0, "waiter": 0}
        done = anyio.Event()

        async def busy() -> None:  # back to back; between calls, the scheduler's turn
            while not done.is_set():
                await store.save_batch_fenced([("q/busy", b"1", None)], "q/" + LEASE, token)
                turns["busy"] += 1
                await anyio.lowlevel.checkpoint()

        async def waiter() -> None:
            for _ in range(20):
                await store.save_batch_fenced([("q/w", b"1", None)], "q/" + LEASE, token)
                turns["waiter"] += 1
            done.set()

        with anyio.fail_after(10):  # a starved waiter would never finish
            async with anyio.create_task_group() as tg:
                tg.start_soon(busy)
                tg.start_soon(busy)
                tg.start_soon(busy)
                tg.start_soon(waiter)
        assert turns["waiter"] == 20 and turns["busy"] > 0
    finally:
        await raw.aclose()
        await ds.close()


@pytest.mark.parametrize("how", ["single-connection client", "no hiredis packer"])
async def test_the_paths_around_the_direct_one_give_the_same_answers(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Where the direct path is not taken (an injected single-connection client has its
    own lock; without hiredis there is no C packer), redis-py's own path answers alike."""
    from blokrun.datasources import redis as redis_driver

    url = f"{server.url}/{server.fresh_db()}"
    if how == "no hiredis packer":
        monkeypatch.setattr(redis_driver, "_hiredis_pack", None)
        client = aioredis.Redis.from_url(url)
    else:
        client = aioredis.Redis.from_url(url, single_connection_client=True)
    store = RedisStore(client=client)
    await store.connect()
    try:
        assert not redis_driver._direct_ok(client)
        state, found = await store.acquire_lease_reading(LEASE, "me", 30, ["a", "b"])
        assert found == {}
        entries = [("a", b"1", None), ("b", b"2", 60.0)]
        assert await store.save_batch_fenced(entries, LEASE, state.token)
        assert await store.load_batch(["a", "b", "c"]) == {"a": b"1", "b": b"2"}
        assert not await store.save_batch_fenced(entries, LEASE, state.token - 1)  # stale
        await client.script_flush()
        assert await store.renew_lease(LEASE, "me", state.token, 30)  # reloaded there too
    finally:
        await store.close()
        await client.aclose()
