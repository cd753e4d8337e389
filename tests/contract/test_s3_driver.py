"""S3 driver tests that the generic contract suite does not cover (on a throwaway moto)."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aioboto3
import anyio
import pytest

from blokrun.config import DatasourceSettings
from blokrun.datasources.datasource import Datasource
from blokrun.datasources.registry import create_store
from blokrun.datasources.s3 import S3Store, create, decode_key, encode_key
from blokrun.errors import DatasourceError, DatasourceUnavailable
from tests.conftest import ServerPool
from tests.servers.base import free_port
from tests.servers.s3 import ACCESS_KEY, BUCKET, SECRET_KEY, MotoServer

pytestmark = pytest.mark.server


@pytest.fixture
def moto(server_pool: ServerPool) -> MotoServer:
    server = server_pool.get("s3")
    assert isinstance(server, MotoServer)
    return server


@pytest.fixture
async def ds(moto: MotoServer) -> AsyncIterator[Datasource]:
    settings = moto.settings()
    async with Datasource(settings, create_store(settings)) as source:
        yield source


@pytest.fixture
async def raw(moto: MotoServer) -> AsyncIterator[Any]:
    """A plain aioboto3 client on the same moto, to look at object names and metadata."""
    session = aioboto3.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1"
    )
    async with session.client("s3", endpoint_url=moto.endpoint) as client:
        yield client


def url_prefix(ds: Datasource) -> str:
    return (ds.settings.url or "").split("/", 3)[3] + "/"


async def names(raw: Any, ds: Datasource) -> list[str]:
    """The object names under the datasource's URL prefix (prefix stripped)."""
    prefix = url_prefix(ds)
    resp = await raw.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"][len(prefix) :] for o in resp.get("Contents", []))


# -- the key encoding ----------------------------------------------------------------------

WEIRD = [
    "../../etc/passwd",
    "..",
    ".",
    ".hidden",
    "a//b",
    "trailing/",
    "/leading",
    "back\\slash",
    "{brace}^caret",
    "100%_done",
    "hash#frag?q=1&x",
    "glob*?[ab]",
    "with space",
    "ünïcødé-日本-🚀",
    "+plus=eq;semi:colon,comma'quote\"dq",
    "~tilde",
]


def test_encoding_round_trips_and_keeps_prefixes() -> None:
    for key in WEIRD:
        enc = encode_key(key)
        assert decode_key(enc) == key
        assert "/" not in enc and "~" not in enc and not enc.startswith(".")
        assert enc.isascii()
        for cut in range(1, len(key)):
            assert enc.startswith(encode_key(key[:cut]))
    assert encode_key("job-1_a.b") == "job-1_a.b"  # common keys stay readable


def test_decode_rejects_names_the_encoder_never_produces() -> None:
    for name in ["a/b", "%2", "%zz", "a%2e", "%C3", ".x", "a b", "~ttl", "%2F%2E", "", "a%"]:
        assert decode_key(name) is None, name


def test_create_parses_url() -> None:
    base = DatasourceSettings(name="x", type="s3", url="s3://bkt/some/prefix")
    store = create(base)
    assert store._bucket == "bkt" and store._prefix == "some/prefix/"
    assert create(replace(base, url="s3://bkt"))._prefix == ""
    assert create(replace(base, url="s3://bkt/p/"))._prefix == "p/"
    with pytest.raises(DatasourceError, match="expected s3://bucket"):
        create(replace(base, url="s3:///nobucket"))
    assert not store.capabilities.native_ttl and not store.capabilities.native_batch


# -- round trip, names, TTL -----------------------------------------------------------------


async def test_round_trip(ds: Datasource) -> None:
    assert await ds.load("k") is None
    assert not await ds.exists("k")
    await ds.save("k", b"one")
    await ds.save("k", b"two")
    assert await ds.load("k") == b"two"
    assert await ds.exists("k")
    assert await ds.size() == 1
    await ds.save("empty", b"")
    assert await ds.load("empty") == b""
    assert await ds.delete("k") is True
    assert await ds.delete("k") is False
    assert await ds.load("k") is None
    assert await ds.keys() == ["empty"]


async def test_weird_keys_round_trip_and_stay_flat(ds: Datasource, raw: Any) -> None:
    long_ascii = "k" * 1024
    long_wide = "é" * 512  # 1024 UTF-8 bytes, 3072 encoded chars: a hashed name
    keys = [*WEIRD, long_ascii, long_wide, long_wide[:-1] + "x"]
    await ds.save_batch([(k, k.encode(), None) for k in keys])
    assert sorted(await ds.keys()) == sorted(keys)
    for k in keys:
        assert await ds.load(k) == k.encode(), k
        assert await ds.exists(k)
    assert sorted(await ds.keys("é" * 400)) == sorted([long_wide, long_wide[:-1] + "x"])
    assert await ds.keys("k" * 1000) == [long_ascii]
    assert await ds.keys("../") == ["../../etc/passwd"]
    stored = await names(raw, ds)
    room = 1024 - len(url_prefix(ds))
    assert all("/" not in n and n.isascii() and len(n) <= room for n in stored)
    assert sum("~" in n for n in stored) == 3  # both long keys, hashed
    assert await ds.delete_batch(keys) == len(keys)
    assert await names(raw, ds) == []


async def test_keys_prefix_is_literal(moto: MotoServer) -> None:
    settings = moto.settings(prefix="run:")
    async with Datasource(settings, create_store(settings)) as ds:
        stems = ["job-1", "job-10", "job-1/a", "job-2", "job_1", "job%1", "job*", "job[1]", "jo"]
        await ds.save_batch([(k, b"x", None) for k in stems])
        assert sorted(await ds.keys("job-1")) == ["job-1", "job-1/a", "job-10"]
        assert sorted(await ds.keys("job-1/")) == ["job-1/a"]
        assert await ds.keys("job_") == ["job_1"]
        assert await ds.keys("job%") == ["job%1"]
        assert await ds.keys("job*") == ["job*"]
        assert await ds.keys("job[") == ["job[1]"]
        assert await ds.keys("x") == []
        assert await ds.size() == len(stems)


async def test_foreign_objects_under_the_prefix_are_ignored(ds: Datasource, raw: Any) -> None:
    await ds.save("mine", b"1")
    prefix = url_prefix(ds)
    for foreign in ["notes/readme.txt", "a b", "%zz", ".x"]:
        await raw.put_object(Bucket=BUCKET, Key=prefix + foreign, Body=b"?")
    assert await ds.keys() == ["mine"]
    assert await ds.size() == 1


async def test_ttl_is_enforced_on_read(ds: Datasource, raw: Any) -> None:
    await ds.save("forever", b"f")
    assert "~ttl" not in await names(raw, ds)  # no TTL yet: keys() needs no HEADs
    await ds.save("short", b"s", ttl=0.6)
    await ds.save_batch([("b1", b"1", 0.6), ("b2", b"2", 60.0)])
    await ds.save("renewed", b"r", ttl=0.6)
    await ds.save("renewed", b"r2")  # a save without TTL replaces the expiry too
    assert "~ttl" in await names(raw, ds)
    head = await raw.head_object(Bucket=BUCKET, Key=url_prefix(ds) + "short")
    assert float(head["Metadata"]["blokrun-expires"]) > time.time()
    assert sorted(await ds.keys()) == ["b1", "b2", "forever", "renewed", "short"]
    await anyio.sleep(0.7)
    assert await ds.load("short") is None
    assert not await ds.exists("short")
    assert await ds.load_batch(["short", "b1", "b2"]) == {"b2": b"2"}
    assert sorted(await ds.keys()) == ["b2", "forever", "renewed"]
    assert await ds.size() == 3
    assert await ds.load("renewed") == b"r2"


async def test_default_ttl_from_settings(moto: MotoServer) -> None:
    settings = moto.settings(ttl=0.5)
    async with Datasource(settings, create_store(settings)) as ds:
        await ds.save("k", b"v")
        assert await ds.keys() == ["k"]
        await anyio.sleep(0.6)
        assert await ds.keys() == []
        assert await ds.load("k") is None


async def test_batch(ds: Datasource) -> None:
    n = 200  # moto serves ~100-150 requests/s; AWS or MinIO do 1,000 in about the same time
    entries = [(f"item-{i:04d}", f"value {i}".encode() * 50, None) for i in range(n)]
    await ds.save_batch(entries)
    wanted = [k for k, _, _ in entries] + ["missing"]
    found = await ds.load_batch(wanted)
    assert found == {k: d for k, d, _ in entries}
    assert len(await ds.keys("item-")) == n
    assert await ds.size() == n
    assert await ds.delete_batch([*wanted, "item-0000"]) == n
    assert await ds.size() == 0


# -- lifecycle and failures ------------------------------------------------------------------


def dead_settings(endpoint: str, timeout: float) -> DatasourceSettings:
    return DatasourceSettings(
        name="dead",
        type="s3",
        url=f"s3://{BUCKET}/p",
        endpoint_url=endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        timeout=timeout,
    )


async def test_dead_port_fails_fast_without_secret() -> None:
    port = free_port()
    settings = dead_settings(f"http://127.0.0.1:{port}", timeout=3.0)
    ds = Datasource(settings, create_store(settings))
    start = time.monotonic()
    with pytest.raises(DatasourceUnavailable) as info:
        await ds.connect()
    assert time.monotonic() - start < 2.5  # refused at once; one retry after <= 1 s backoff
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text and BUCKET in text and "dead" in text
    assert SECRET_KEY not in text
    assert not ds.is_connected
    await ds.close()


async def test_hung_server_fails_within_timeout() -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        settings = dead_settings(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
        start = time.monotonic()
        with pytest.raises(DatasourceUnavailable, match=r"timed out|cannot reach"):
            async with Datasource(settings, create_store(settings)):
                pass
        assert time.monotonic() - start < 1.0


async def test_missing_bucket_is_named(moto: MotoServer) -> None:
    settings = replace(moto.settings(), url="s3://no-such-bucket/x")
    with pytest.raises(DatasourceError, match=r"no-such-bucket.*does not exist") as info:
        async with Datasource(settings, create_store(settings)):
            pass
    assert not isinstance(info.value, DatasourceUnavailable)
    assert SECRET_KEY not in str(info.value)


async def test_injected_client_is_left_open(moto: MotoServer, raw: Any) -> None:
    store = S3Store(BUCKET, "injected", client=raw)
    await store.connect()
    await store.save("k", b"v")
    await store.close()
    assert not store.is_connected
    await raw.head_bucket(Bucket=BUCKET)  # still usable
    await store.connect()
    assert await store.load("k") == b"v"
    assert await store.delete("k")
    await store.close()


async def test_server_outage_then_recovery(moto: MotoServer) -> None:
    settings = moto.settings(timeout=1.0)
    async with Datasource(settings, create_store(settings)) as ds:
        await ds.save("before", b"1", ttl=600)
        moto.stop()
        try:
            for op in (lambda: ds.load("before"), lambda: ds.save("during", b"2"), ds.keys):
                start = time.monotonic()
                with pytest.raises(DatasourceUnavailable) as info:
                    await op()
                assert time.monotonic() - start < 1.5
                assert "ds" in str(info.value) and SECRET_KEY not in str(info.value)
        finally:
            moto.start()
        assert await ds.load("before") == b"1"  # moto's state survives the restart
        await ds.save("after", b"3")
        assert sorted(await ds.keys()) == ["after", "before"]
