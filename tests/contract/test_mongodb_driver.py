"""MongoDB driver tests that the generic contract suite does not cover.

They run on the throwaway server of ``tests/servers/mongodb.py``: mongoeco (a MongoDB
wire-protocol *emulator*) by default, a real mongod when ``BLOKRUN_TEST_MONGO_URL`` is set.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import anyio
import pytest
from pymongo import AsyncMongoClient, monitoring

from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, mongodb
from blokrun.datasources.mongodb import TTL_INDEX, MongoStore, create, prefix_regex
from blokrun.errors import DatasourceError, DatasourceUnavailable
from tests.conftest import ServerPool
from tests.servers.base import ThrowawayServer, free_port

pytestmark = pytest.mark.server


@pytest.fixture
def mongo(server_pool: ServerPool) -> ThrowawayServer:
    return server_pool.get("mongodb")


def _ds(settings: DatasourceSettings) -> Datasource:
    return Datasource(settings, create(settings))


def _raw_client(settings: DatasourceSettings, **kwargs: Any) -> AsyncMongoClient[dict[str, Any]]:
    assert settings.url
    return AsyncMongoClient(settings.url, serverSelectionTimeoutMS=5000, **kwargs)


async def test_round_trip(mongo: ThrowawayServer) -> None:
    async with _ds(mongo.settings()) as ds:
        blob = bytes(range(256)) * 4
        await ds.save("runs/../../etc/passwd", blob)
        assert await ds.load("runs/../../etc/passwd") == blob
        assert await ds.exists("runs/../../etc/passwd")
        await ds.save("runs/../../etc/passwd", b"v2")
        assert await ds.load("runs/../../etc/passwd") == b"v2"
        assert await ds.delete("runs/../../etc/passwd")
        assert not await ds.delete("runs/../../etc/passwd")
        assert await ds.load("runs/../../etc/passwd") is None
        assert not await ds.exists("runs/../../etc/passwd")
        long_key = "ü" * 512  # 1024 UTF-8 bytes
        await ds.save(long_key, b"x")
        assert await ds.keys("ü") == [long_key]


async def test_document_layout_and_indexes(mongo: ThrowawayServer) -> None:
    settings = mongo.settings(ttl=60)
    async with _ds(settings) as ds:
        await ds.save("k", b"\x00data")
        await ds.save("forever", b"f", ttl=None)
    client = _raw_client(settings)
    try:
        coll = client[settings.database or ""][settings.collection or ""]
        doc = await coll.find_one({"_id": "k"})
        assert doc is not None
        assert doc["data"] == b"\x00data"
        assert isinstance(doc["expires_at"], dt.datetime)
        indexes = await coll.index_information()
        assert indexes[TTL_INDEX]["key"] == [("expires_at", 1)]
        assert indexes[TTL_INDEX]["expireAfterSeconds"] == 0
    finally:
        await client.close()


async def test_ttl_expiry(mongo: ThrowawayServer) -> None:
    async with _ds(mongo.settings()) as ds:
        await ds.save("short", b"s", ttl=0.3)
        await ds.save_batch([("short-b", b"b", 0.3), ("long", b"l", 60.0)])
        assert await ds.load_batch(["short", "short-b", "long"]) == {
            "short": b"s",
            "short-b": b"b",
            "long": b"l",
        }
        await anyio.sleep(0.6)
        assert await ds.load("short") is None
        assert not await ds.exists("short")
        assert await ds.load_batch(["short", "short-b", "long"]) == {"long": b"l"}
        assert await ds.keys() == ["long"]
        assert await ds.size() == 1


async def test_expired_documents_are_filtered_without_the_ttl_monitor(
    mongo: ThrowawayServer,
) -> None:
    """mongod deletes expired documents only every 60 s: reads must filter them meanwhile.

    The TTL index is dropped, so neither mongod's monitor nor the emulator's lazy purge
    can hide the document: only the driver's read filter does.
    """
    settings = mongo.settings()
    async with _ds(settings) as ds:
        client = _raw_client(settings)
        try:
            coll = client[settings.database or ""][settings.collection or ""]
            await coll.drop_index(TTL_INDEX)
            past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
            await coll.insert_one({"_id": "stale", "data": b"old", "expires_at": past})
            await coll.insert_one({"_id": "fresh", "data": b"new", "expires_at": None})
            assert await coll.count_documents({}) == 2  # still stored ...
            assert await ds.load("stale") is None  # ... but never returned
            assert not await ds.exists("stale")
            assert await ds.load_batch(["stale", "fresh"]) == {"fresh": b"new"}
            assert await ds.keys() == ["fresh"]
            assert await ds.size() == 1
            assert not await ds.delete("stale")  # an expired leftover is not reported live
            assert await coll.count_documents({}) == 1
        finally:
            await client.close()


async def test_batch(mongo: ThrowawayServer) -> None:
    """1,000 keys on a real mongod; 300 on the emulator, which writes ~5-25 ms a document
    (more than 2 chunks of ``$in`` either way)."""
    n = 300 if getattr(mongo, "emulator", False) else 1000
    async with _ds(mongo.settings()) as ds:
        entries = [(f"batch/{i:04d}", f"value-{i}".encode() * 10, None) for i in range(n)]
        t0 = time.perf_counter()
        await ds.save_batch(entries)
        t1 = time.perf_counter()
        loaded = await ds.load_batch([k for k, _, _ in entries] + ["batch/missing"])
        t2 = time.perf_counter()
        assert loaded == {k: d for k, d, _ in entries}
        assert len(await ds.keys("batch/")) == n
        assert await ds.size() == n
        cut = n * 3 // 5
        assert await ds.delete_batch([k for k, _, _ in entries[:cut]] + ["batch/missing"]) == cut
        assert await ds.size() == n - cut
        print(f"[{mongo.label}] save_batch({n}) {t1 - t0:.3f}s, load_batch({n}) {t2 - t1:.3f}s")


async def test_keys_stems_and_metacharacters(mongo: ThrowawayServer) -> None:
    keys = [
        "job-1",
        "job-10",
        "job-1/step",
        "job-2",
        "a.b",
        "aXb",
        "a*b",
        "a?b",
        "a[b]",
        "ab]",
        "a%b",
        "a_b",
        "a\\b",
        "a\\\\b",
        "a b",
        "a|b",
        "(a)",
        "^a",
        "a$",
        "a+b",
        "a{1}",
        "#a",
        "é/ü/日本",
        "\\Qa\\E",
    ]
    async with _ds(mongo.settings(prefix="p.*/")) as ds:
        await ds.save_batch([(k, k.encode(), None) for k in keys])
        assert sorted(await ds.keys()) == sorted(keys)
        assert sorted(await ds.keys("job-1")) == ["job-1", "job-1/step", "job-10"]
        assert sorted(await ds.keys("job-1/")) == ["job-1/step"]
        for k in keys:
            expected = sorted(x for x in keys if x.startswith(k))
            assert sorted(await ds.keys(k)) == expected, k
        assert await ds.keys("a.") == ["a.b"]
        assert await ds.keys("nothing") == []


async def test_save_batch_last_entry_wins(mongo: ThrowawayServer) -> None:
    async with _ds(mongo.settings()) as ds:
        await ds.save_batch([("b", b"1", None), ("c", b"c", None), ("b", b"2", None)])
        assert await ds.load_batch(["b", "c"]) == {"b": b"2", "c": b"c"}


async def test_keys_streams_with_a_cursor(
    mongo: ThrowawayServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keys() reads in batches (find + getMore), never one reply with every key."""

    class Commands(monitoring.CommandListener):
        def __init__(self) -> None:
            self.names: list[str] = []

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            self.names.append(event.command_name)

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    monkeypatch.setattr(mongodb, "_CURSOR_BATCH", 10)  # 1,000 in production
    settings = mongo.settings()
    listener = Commands()
    client = _raw_client(settings, event_listeners=[listener])
    store = MongoStore(client=client, database=settings.database, collection=settings.collection)
    try:
        await store.connect()
        await store.save_batch([(f"s{i:05d}", b"", None) for i in range(35)])
        listener.names.clear()
        seen = [k async for k in store.keys("s")]
        assert len(seen) == 35
        assert listener.names.count("find") == 1
        assert listener.names.count("getMore") >= 2
    finally:
        await store.close()
        # the injected client is still open: the driver closes only what it opened
        assert await client.admin.command("ping")
        await client.close()


async def test_prefix_query_uses_the_id_index(mongo: ThrowawayServer) -> None:
    settings = mongo.settings()
    client = _raw_client(settings)
    try:
        coll = client[settings.database or ""][settings.collection or ""]
        await coll.insert_many([{"_id": f"job-{i}"} for i in range(50)])
        plan = await coll.find({"_id": {"$regex": prefix_regex("job-1")}}, {"_id": 1}).explain()
    finally:
        await client.close()
    if "queryPlanner" not in plan:
        pytest.skip(
            "the mongoeco emulator answers explain() with its own SQLite plan, not mongod's "
            "queryPlanner: index use can only be shown on a real mongod (BLOKRUN_TEST_MONGO_URL)"
        )
    text = str(plan["queryPlanner"]["winningPlan"])
    assert "IXSCAN" in text
    assert "_id_" in text
    assert "COLLSCAN" not in text


async def test_connect_to_dead_port_fails_fast_without_password() -> None:
    port = free_port()
    settings = DatasourceSettings(
        name="dead",
        type="mongodb",
        url=f"mongodb://blok:s3cr3t-pw@127.0.0.1:{port}/db",
        timeout=1.0,
    )
    ds = _ds(settings)
    t0 = time.perf_counter()
    with pytest.raises(DatasourceUnavailable) as info:
        await ds.connect()
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.5
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "s3cr3t" not in message
    assert "s3cr3t" not in repr(info.value.__cause__) or "***" in message  # cause is pymongo's
    assert not ds.is_connected
    await ds.close()


async def test_outage_gives_unavailable_then_recovers(mongo: ThrowawayServer) -> None:
    async with _ds(mongo.settings(timeout=2.0)) as ds:
        await ds.save("before", b"1")
        mongo.stop()
        try:
            t0 = time.perf_counter()
            with pytest.raises(DatasourceUnavailable):
                await ds.save("during", b"2")
            assert time.perf_counter() - t0 < 2.5
            with pytest.raises(DatasourceUnavailable):
                await ds.load("before")
        finally:
            mongo.start()
        await ds.save("after", b"3")
        assert await ds.load("before") == b"1"
        assert await ds.load("after") == b"3"


async def test_non_connection_errors_are_datasource_errors(mongo: ThrowawayServer) -> None:
    async with _ds(mongo.settings()) as ds:
        with pytest.raises(DatasourceError) as info:
            await ds.save("huge", b"x" * (17 * 1024 * 1024))  # over MongoDB's 16 MiB limit
        assert not isinstance(info.value, DatasourceUnavailable)
        assert info.value.key == "huge"


async def test_database_from_url_and_write_concern(mongo: ThrowawayServer) -> None:
    base = mongo.settings()
    assert base.url
    url = base.url.split("?")[0].rstrip("/") + "/blokrun_from_url"
    if "?" in base.url:
        url += "?" + base.url.split("?", 1)[1]
    store = create(DatasourceSettings(name="u", type="mongodb", url=url))
    await store.connect()
    try:
        assert store.collection.database.name == "blokrun_from_url"
        assert store.collection.name == "blokrun_store"
        assert store.collection.write_concern.document == {"j": True}
        assert store.capabilities.durable and store.capabilities.native_ttl
        await store.collection.database.client.drop_database("blokrun_from_url")
    finally:
        await store.close()
    sep = "&" if "?" in url else "?"
    weak = create(DatasourceSettings(name="w", type="mongodb", url=url + sep + "journal=false"))
    await weak.connect()
    try:
        assert not weak.capabilities.durable
    finally:
        await weak.close()
