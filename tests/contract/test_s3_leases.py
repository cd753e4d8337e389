"""S3 lease tests that ``tests/contract/test_leases.py`` does not cover: what the leases rest
on (moto's conditional writes), the lease objects' names and format, and the
compare-and-swap's retries (on a throwaway moto)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aioboto3
import anyio
import pytest
from botocore.exceptions import ClientError

from blokrun.config import DatasourceSettings
from blokrun.datasources import build_datasource
from blokrun.datasources.s3 import S3Store, create, encode_key
from blokrun.errors import DatasourceError
from tests.conftest import ServerPool
from tests.servers.s3 import ACCESS_KEY, BUCKET, SECRET_KEY, MotoServer

pytestmark = pytest.mark.server

LEASE = "_blokrun.lease.run-1"


@pytest.fixture
def moto(server_pool: ServerPool) -> MotoServer:
    server = server_pool.get("s3")
    assert isinstance(server, MotoServer)
    return server


@pytest.fixture
async def raw(moto: MotoServer) -> AsyncIterator[Any]:
    """A plain aioboto3 client on the same moto."""
    session = aioboto3.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1"
    )
    async with session.client("s3", endpoint_url=moto.endpoint) as client:
        yield client


@asynccontextmanager
async def stores(settings: DatasourceSettings, n: int) -> AsyncIterator[list[S3Store]]:
    out = [create(settings) for _ in range(n)]
    try:
        for store in out:
            await store.connect()
        yield out
    finally:
        for store in out:
            await store.close()


def url_prefix(settings: DatasourceSettings) -> str:
    return (settings.url or "").split("/", 3)[3] + "/"


async def test_moto_honours_conditional_writes(raw: Any, moto: MotoServer) -> None:
    """The compare-and-swap rests on these (AWS S3 has them since 2024)."""
    name = url_prefix(moto.settings()) + "cas"
    first = await raw.put_object(Bucket=BUCKET, Key=name, Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as exists:
        await raw.put_object(Bucket=BUCKET, Key=name, Body=b"2", IfNoneMatch="*")
    assert exists.value.response["Error"]["Code"] == "PreconditionFailed"
    second = await raw.put_object(Bucket=BUCKET, Key=name, Body=b"3", IfMatch=first["ETag"])
    with pytest.raises(ClientError) as stale:
        await raw.put_object(Bucket=BUCKET, Key=name, Body=b"4", IfMatch=first["ETag"])
    assert stale.value.response["Error"]["Code"] == "PreconditionFailed"
    with pytest.raises(ClientError) as gone:
        await raw.put_object(Bucket=BUCKET, Key=name + "-absent", Body=b"5", IfMatch='"x"')
    assert gone.value.response["Error"]["Code"] == "NoSuchKey"
    body = await (await raw.get_object(Bucket=BUCKET, Key=name))["Body"].read()
    assert body == b"3" and second["ETag"] != first["ETag"]


async def test_lease_objects_are_json_that_keys_never_lists(raw: Any, moto: MotoServer) -> None:
    settings = moto.settings()  # no datasource prefix: keys() lists the whole store
    long_key = "_blokrun.lease." + "y" * 1000
    async with build_datasource(settings) as ds:
        await ds.save("k", b"v")
        state = await ds.acquire_lease(LEASE, "owner-a", 30)
        assert (await ds.acquire_lease(long_key, "owner-a", 30)).owner == "owner-a"
        assert await ds.keys() == ["k"]
        assert await ds.keys("_") == []
        assert await ds.size() == 1
        assert await ds.read_lease(long_key) is not None
        prefix = url_prefix(settings)
        resp = await raw.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        names = sorted(o["Key"][len(prefix) :] for o in resp["Contents"])
        assert names[0] == "k" and names[1] == "~lease/" + encode_key(LEASE)
        assert names[2].startswith("~lease/_blokrun.lease.yyy") and len(prefix + names[2]) <= 1024
        obj = await raw.get_object(Bucket=BUCKET, Key=prefix + names[1])
        doc = json.loads(await obj["Body"].read())
        assert doc == {"owner": "owner-a", "token": state.token, "expires_at": state.expires_at}
        assert obj["Metadata"] == {}  # no TTL: a lease never expires away
        await ds.save("t", b"ttl", ttl=60)  # TTLs in use: keys() HEADs objects, not leases
        assert sorted(await ds.keys()) == ["k", "t"]
        assert await ds.delete_lease(long_key) is True
        assert await ds.read_lease(long_key) is None


async def test_a_write_from_a_stale_read_loses(moto: MotoServer) -> None:
    async with stores(moto.settings(), 2) as (a, b):
        first = await a.acquire_lease(LEASE, "a", 30)
        name = a._name(LEASE, "~lease/")
        seen, etag = await a._get_lease(name, "test")
        assert seen == first and etag is not None
        assert await b.renew_lease(LEASE, "a", first.token, 60)
        assert not await a._put_lease(name, first, etag, "test")  # 412: changed since read
        assert not await a._put_lease(name, first, None, "test")  # 412: exists
        assert await b.delete_lease(LEASE)
        assert not await a._put_lease(name, first, etag, "test")  # 404: deleted since read
        assert (await a.acquire_lease(LEASE, "a", 30)).token > first.token  # from the clock


async def test_racing_takeovers_of_an_expired_lease_issue_one_token(moto: MotoServer) -> None:
    async with stores(moto.settings(), 6) as racers:
        last = 0
        for _round in range(1, 4):
            states: dict[int, Any] = {}

            async def race(i: int, store: S3Store) -> None:
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


async def test_release_keeps_the_token_and_renew_follows_it(moto: MotoServer) -> None:
    async with stores(moto.settings(), 1) as (store,):
        state = await store.acquire_lease(LEASE, "a", 30)
        assert abs(state.expires_at - (time.time() + 30)) < 2
        await store.release_lease(LEASE, "a", state.token)
        await store.release_lease(LEASE, "a", state.token)  # released already: no write
        released = await store.read_lease(LEASE)
        assert released is not None and (released.token, released.expires_at) == (state.token, 0.0)
        assert await store.renew_lease(LEASE, "a", state.token, 10) is True
        renewed = await store.read_lease(LEASE)
        assert renewed is not None and renewed.expires_at > time.time() + 5


async def test_fenced_batches_keep_ttls_and_collapse_duplicates(moto: MotoServer) -> None:
    async with stores(moto.settings(), 1) as (store,):
        token = (await store.acquire_lease(LEASE, "a", 30)).token
        entries = [("a", b"1", None), ("b", b"2", 0.3), ("a", b"3", 60.0)]
        assert await store.save_batch_fenced(entries, LEASE, token)
        assert await store.load_batch(["a", "b"]) == {"a": b"3", "b": b"2"}
        await anyio.sleep(0.4)
        assert await store.load_batch(["a", "b"]) == {"a": b"3"}
        assert await store.save_batch_fenced([], LEASE, token)  # nothing to write, still held
        assert not await store.save_batch_fenced([], LEASE, token + 1)


async def test_a_foreign_lease_object_is_a_datasource_error(raw: Any, moto: MotoServer) -> None:
    settings = moto.settings()
    async with stores(settings, 1) as (store,):
        name = store._name(LEASE, "~lease/")
        await raw.put_object(Bucket=BUCKET, Key=name, Body=b"not json")
        with pytest.raises(DatasourceError, match="not a blokrun lease") as err:
            await store.read_lease(LEASE)
        assert SECRET_KEY not in str(err.value)
        with pytest.raises(DatasourceError):
            await store.acquire_lease(LEASE, "a", 30)


async def test_endless_contention_gives_up(moto: MotoServer, monkeypatch: Any) -> None:
    async with stores(moto.settings(), 1) as (store,):

        async def always_lost(*args: Any) -> bool:
            return False

        monkeypatch.setattr(S3Store, "_put_lease", always_lost)  # instances have __slots__
        with pytest.raises(DatasourceError, match="kept changing"):
            await store.acquire_lease(LEASE, "a", 30)
