"""MongoDB lease tests that ``tests/contract/test_leases.py`` does not cover: the lease
documents and their collection, and the acquire's ``DuplicateKeyError`` path. They run on
mongoeco (an emulator) unless ``BLOKRUN_TEST_MONGO_URL`` names a real mongod."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import pytest
from pymongo import AsyncMongoClient

from blokrun.config import DatasourceSettings
from blokrun.datasources.mongodb import MongoStore, create
from blokrun.errors import DatasourceError
from tests.conftest import ServerPool
from tests.servers.base import ThrowawayServer

pytestmark = pytest.mark.server

LEASE = "_blokrun.lease.run-1"


@pytest.fixture
def mongo(server_pool: ServerPool) -> ThrowawayServer:
    return server_pool.get("mongodb")


@asynccontextmanager
async def stores(settings: DatasourceSettings, n: int) -> AsyncIterator[list[MongoStore]]:
    out = [create(settings) for _ in range(n)]
    try:
        for store in out:
            await store.connect()
        yield out
    finally:
        for store in out:
            await store.close()


@asynccontextmanager
async def raw_leases(settings: DatasourceSettings) -> AsyncIterator[Any]:
    assert settings.url
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.url, serverSelectionTimeoutMS=5000, tz_aware=True
    )
    try:
        yield client[settings.database or ""][f"{settings.collection}_leases"]
    finally:
        await client.close()


async def test_lease_documents_live_in_their_own_collection(mongo: ThrowawayServer) -> None:
    settings = mongo.settings()
    async with stores(settings, 1) as (store,):
        await store.save("k", b"v")
        state = await store.acquire_lease(LEASE, "owner-a", 30)
        listing = store.keys()  # an async iterator (not a dict's keys)
        assert [k async for k in listing] == ["k"]
        assert await store.size() == 1
        assert store.capabilities.leases and not store.capabilities.atomic_fencing
    async with raw_leases(settings) as coll:
        doc = await coll.find_one({"_id": LEASE})
        assert doc is not None and set(doc) == {"_id", "owner", "token", "expires_at"}
        assert (doc["owner"], doc["token"]) == ("owner-a", state.token)
        assert isinstance(doc["expires_at"], dt.datetime)
        assert doc["expires_at"].timestamp() == state.expires_at
        indexes = await coll.index_information()
        assert list(indexes) == ["_id_"]  # no TTL index: an expired lease keeps its count


async def test_racing_takeovers_of_an_expired_lease_issue_one_token(
    mongo: ThrowawayServer,
) -> None:
    async with stores(mongo.settings(), 6) as racers:
        last = 0
        for _round in range(1, 4):
            states: dict[int, Any] = {}

            async def race(i: int, store: MongoStore) -> None:
                states[i] = await store.acquire_lease(LEASE, f"o{i}", 0.5)  # noqa: B023

            async with anyio.create_task_group() as tg:
                for i, store in enumerate(racers):
                    tg.start_soon(race, i, store)
            winners = [i for i, st in states.items() if st.owner == f"o{i}"]
            assert len(winners) == 1, states
            won = states[winners[0]]
            assert {(st.owner, st.token) for st in states.values()} == {
                (f"o{winners[0]}", won.token)
            }
            assert won.token > last  # one token per round, each higher
            last = won.token
            await anyio.sleep(0.6)


async def test_a_refused_acquire_retries_when_the_holder_left_meanwhile(
    mongo: ThrowawayServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The update is refused (DuplicateKeyError), then the holder releases before the read:
    the acquire tries again and takes the lease instead of reporting a holder that left."""
    settings = mongo.settings()
    async with stores(settings, 2) as (a, b):
        held = await a.acquire_lease(LEASE, "a", 30)
        leases = b.lease_collection
        real_find_one = type(leases).find_one
        calls = 0

        async def release_then_find(self: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                await a.release_lease(LEASE, "a", held.token)
            return await real_find_one(self, *args, **kwargs)

        monkeypatch.setattr(type(leases), "find_one", release_then_find)
        taken = await b.acquire_lease(LEASE, "b", 30)
        assert calls == 1
        assert taken.owner == "b" and taken.token > held.token


async def test_release_keeps_the_token_and_renew_follows_it(mongo: ThrowawayServer) -> None:
    async with stores(mongo.settings(), 1) as (store,):
        state = await store.acquire_lease(LEASE, "a", 30)
        assert abs(state.expires_at - (time.time() + 30)) < 2
        await store.release_lease(LEASE, "a", state.token)
        released = await store.read_lease(LEASE)
        assert released is not None and (released.token, released.expires_at) == (state.token, 0.0)
        assert await store.renew_lease(LEASE, "a", state.token, 10) is True
        renewed = await store.read_lease(LEASE)
        assert renewed is not None and renewed.expires_at > time.time() + 5


async def test_fenced_batches_keep_ttls_and_collapse_duplicates(mongo: ThrowawayServer) -> None:
    async with stores(mongo.settings(), 1) as (store,):
        token = (await store.acquire_lease(LEASE, "a", 30)).token
        entries = [("a", b"1", None), ("b", b"2", 0.3), ("a", b"3", 60.0)]
        assert await store.save_batch_fenced(entries, LEASE, token)
        assert await store.load_batch(["a", "b"]) == {"a": b"3", "b": b"2"}
        await anyio.sleep(0.4)
        assert await store.load_batch(["a", "b"]) == {"a": b"3"}
        assert await store.save_batch_fenced([], LEASE, token)  # nothing to write, still held
        assert not await store.save_batch_fenced([], LEASE, token + 1)


async def test_a_foreign_lease_document_is_a_datasource_error(mongo: ThrowawayServer) -> None:
    settings = mongo.settings()
    async with stores(settings, 1) as (store,):
        async with raw_leases(settings) as coll:
            await coll.insert_one({"_id": LEASE, "owner": "x", "token": "one"})
        with pytest.raises(DatasourceError, match="not a blokrun lease"):
            await store.read_lease(LEASE)


async def test_lease_writes_are_acknowledged_even_when_data_writes_are_not(
    mongo: ThrowawayServer,
) -> None:
    settings = mongo.settings()
    assert settings.url
    sep = "&" if "?" in settings.url else "?"
    unacked = replace(settings, url=f"{settings.url}{sep}w=0")
    async with stores(unacked, 1) as (store,):
        assert not store.capabilities.durable
        state = await store.acquire_lease(LEASE, "a", 30)
        assert await store.renew_lease(LEASE, "a", state.token, 30) is True  # a real count
        assert await store.renew_lease(LEASE, "a", state.token + 1, 30) is False
        assert await store.delete_lease(LEASE) is True
