"""Redis-specific tests: native TTL, batches in one round trip, SCAN with literal prefixes,
bounded connects and outages, password never in messages, unix sockets, injected clients.

The outage and password tests use a dedicated password-protected server (so stopping it does
not disturb the shared one); everything else uses the pool's shared server, one fresh
database per ``settings()`` call.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as aioredis

from blokrun.config import DatasourceSettings
from blokrun.datasources.datasource import Datasource
from blokrun.datasources.redis import RedisStore, create, escape_glob
from blokrun.datasources.registry import create_store
from blokrun.errors import DatasourceError, DatasourceUnavailable
from tests.servers.base import free_port
from tests.servers.redis import RedisServer, launch

if TYPE_CHECKING:
    from tests.conftest import ServerPool

pytestmark = pytest.mark.server

PASSWORD = "s3cr:et@p/w%d"  # characters that need quoting in a URL
QUOTED = quote(PASSWORD, safe="")


def no_secret(exc: BaseException) -> None:
    """Neither the message nor any chained message carries the password."""
    seen: BaseException | None = exc
    while seen is not None:
        for text in (str(seen), repr(seen)):
            assert PASSWORD not in text and QUOTED not in text, text
        seen = seen.__cause__ or seen.__context__


@pytest.fixture
def server(server_pool: ServerPool) -> RedisServer:
    srv = server_pool.get("redis")
    assert isinstance(srv, RedisServer)
    return srv


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = launch(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD)
    yield srv
    srv.stop()
    assert srv.pid is None


async def open_ds(settings: DatasourceSettings) -> Datasource:
    ds = Datasource(settings, create_store(settings))
    await ds.connect()
    return ds


@pytest.fixture
async def ds(server: RedisServer) -> AsyncIterator[Datasource]:
    d = await open_ds(server.settings())
    yield d
    await d.close()


async def raw_client(settings: DatasourceSettings) -> aioredis.Redis:
    assert settings.url is not None
    return aioredis.Redis.from_url(settings.url)


# -- basics ------------------------------------------------------------------------------


async def test_round_trip(ds: Datasource) -> None:
    assert ds.capabilities.native_ttl and ds.capabilities.native_batch
    assert ds.capabilities.atomic_batch and not ds.capabilities.durable
    assert await ds.load("a") is None
    assert not await ds.exists("a")
    await ds.save("a", b"\x00\xffbytes")
    assert await ds.load("a") == b"\x00\xffbytes"
    assert await ds.exists("a")
    await ds.save("a", b"v2")
    assert await ds.load("a") == b"v2"
    assert await ds.delete("a")
    assert not await ds.delete("a")
    assert await ds.load("a") is None
    await ds.save("empty", b"")
    assert await ds.load("empty") == b""
    assert await ds.exists("empty")


async def test_ttl_is_native_and_expires(server: RedisServer) -> None:
    settings = server.settings()
    ds = await open_ds(settings)
    raw = await raw_client(settings)
    try:
        await ds.save("short", b"x", ttl=0.15)
        await ds.save("long", b"y", ttl=3600)
        await ds.save("forever", b"z")
        assert 0 < await raw.pttl("short") <= 150
        assert 3_599_000 < await raw.pttl("long") <= 3_600_000
        assert await raw.pttl("forever") == -1
        await ds.save("tiny", b"t", ttl=0.0001)  # rounds up to 1 ms, never to "no expiry"
        assert await ds.load("short") == b"x"
        await anyio.sleep(0.2)
        assert await ds.load("short") is None
        assert await ds.load("tiny") is None
        assert not await ds.exists("short")
        assert await ds.load_batch(["short", "long"]) == {"long": b"y"}
        assert sorted(await ds.keys()) == ["forever", "long"]
        assert await ds.size() == 2
    finally:
        await raw.aclose()
        await ds.close()


async def test_default_ttl_from_settings(server: RedisServer) -> None:
    settings = server.settings(ttl=60.0)
    ds = await open_ds(settings)
    raw = await raw_client(settings)
    try:
        await ds.save("k", b"v")
        assert 59_000 < await raw.pttl("k") <= 60_000
    finally:
        await raw.aclose()
        await ds.close()


async def test_size_ignores_expired_keys_dbsize_would_count(server: RedisServer) -> None:
    """Why size() scans: DBSIZE counts keys that expired but were not reclaimed yet."""
    settings = server.settings()
    ds = await open_ds(settings)
    raw = await raw_client(settings)
    await raw.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "0")  # type: ignore[no-untyped-call]
    try:
        await ds.save_batch([(f"gone-{i}", b"x", 0.001) for i in range(50)])
        await ds.save("kept", b"y")
        await anyio.sleep(0.05)
        assert await raw.dbsize() == 51
        assert await ds.size() == 1
        assert await ds.keys() == ["kept"]
    finally:
        await raw.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "1")  # type: ignore[no-untyped-call]
        await raw.aclose()
        await ds.close()


# -- batches -----------------------------------------------------------------------------


async def test_batch_of_1000(ds: Datasource) -> None:
    entries = [(f"job-{i}", f"value-{i}".encode() * 10, None) for i in range(1000)]
    await ds.save_batch(entries)
    assert await ds.size() == 1000
    found = await ds.load_batch([k for k, _, _ in entries] + ["missing"])
    assert found == {k: v for k, v, _ in entries}
    assert sorted(await ds.keys("job-99")) == ["job-99", *(f"job-99{i}" for i in range(10))]
    assert await ds.delete_batch([k for k, _, _ in entries[:600]] + ["missing"]) == 600
    assert await ds.size() == 400


async def test_save_batch_mixed_ttls_and_repeated_keys(server: RedisServer) -> None:
    settings = server.settings()
    ds = await open_ds(settings)
    raw = await raw_client(settings)
    try:
        await ds.save("had-ttl", b"old", ttl=60)
        await ds.save_batch(
            [
                ("had-ttl", b"new", None),  # MSET clears the old TTL, like SET
                ("twice", b"first", None),
                ("ttl", b"t", 30.0),
                ("twice", b"second", 10.0),  # last occurrence wins, TTL included
                ("plain", b"p", None),
            ]
        )
        assert await ds.load_batch(["had-ttl", "twice", "ttl", "plain"]) == {
            "had-ttl": b"new",
            "twice": b"second",
            "ttl": b"t",
            "plain": b"p",
        }
        assert await raw.pttl("had-ttl") == -1
        assert await raw.pttl("plain") == -1
        assert 9_000 < await raw.pttl("twice") <= 10_000
        assert 29_000 < await raw.pttl("ttl") <= 30_000
    finally:
        await raw.aclose()
        await ds.close()


async def test_save_batch_is_one_transaction(server: RedisServer) -> None:
    """MULTI/EXEC: a concurrent reader never sees part of a batch.

    The batch is ~1 MB, more than Redis reads from a socket at once, so without the
    transaction the reader's EXISTS lands between the SETs (checked: it does).
    """
    settings = server.settings()
    ds = await open_ds(settings)
    raw = await raw_client(settings)
    keys = [f"k{i}" for i in range(500)]
    batch = [(k, b"v" * 2048, None if i % 2 else 60.0) for i, k in enumerate(keys)]
    seen: set[int] = set()
    done = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                while not done.is_set():
                    seen.add(await raw.exists(*keys))

            tg.start_soon(reader)
            for _ in range(10):
                await ds.save_batch(batch)
                await ds.delete_batch(keys)
            done.set()
        assert seen <= {0, len(keys)}
        assert len(seen) == 2 or seen == {0}  # the reader did run
    finally:
        await raw.aclose()
        await ds.close()


# -- keys() and prefixes -----------------------------------------------------------------


def test_escape_glob() -> None:
    assert escape_glob("a*b?c[d]e\\f") == b"a\\*b\\?c\\[d\\]e\\\\f"
    assert escape_glob("é%_ ") == "é%_ ".encode()


async def test_keys_stems_and_metacharacters(ds: Datasource) -> None:
    odd = [
        "job-1",
        "job-10",
        "job-1/step",
        "a*b",
        "aXb",
        "a?c",
        "abc",
        "a[1]",
        "a1",
        "a\\d",
        "a\\\\d",
        "a%_",
        "a%x",
        "../../etc/passwd",
        "with space",
        "ünï©ødé-ключ-🔑",
        "k" * 1024,
        "é" * 512,
    ]
    for k in odd:
        await ds.save(k, k.encode())
    assert sorted(await ds.keys()) == sorted(odd)
    for k in odd:
        assert await ds.load(k) == k.encode()
    assert sorted(await ds.keys("job-1")) == ["job-1", "job-1/step", "job-10"]
    assert sorted(await ds.keys("job-10")) == ["job-10"]
    assert await ds.keys("a*") == ["a*b"]
    assert await ds.keys("a?") == ["a?c"]
    assert await ds.keys("a[") == ["a[1]"]
    assert await ds.keys("a[1") == ["a[1]"]
    assert sorted(await ds.keys("a\\")) == ["a\\\\d", "a\\d"]
    assert await ds.keys("a\\\\") == ["a\\\\d"]
    assert sorted(await ds.keys("a%")) == ["a%_", "a%x"]
    assert await ds.keys("a%_") == ["a%_"]
    assert await ds.keys("../") == ["../../etc/passwd"]
    assert await ds.keys("ünï") == ["ünï©ødé-ключ-🔑"]
    assert await ds.keys("zzz") == []


async def test_datasource_prefix_with_metacharacters(server: RedisServer) -> None:
    """Two datasources in one database whose prefixes differ only where a glob would match."""
    base = server.settings()
    mine = await open_ds(replace_settings(base, prefix="run[1]*:"))
    other = await open_ds(replace_settings(base, prefix="run11x:"))
    whole = await open_ds(base)
    try:
        await mine.save("a", b"1")
        await mine.save("b", b"2")
        await other.save("a", b"3")
        assert sorted(await mine.keys()) == ["a", "b"]
        assert await mine.size() == 2
        assert await other.size() == 1
        assert await mine.load_batch(["a", "b", "c"]) == {"a": b"1", "b": b"2"}
        assert sorted(await whole.keys()) == ["run11x:a", "run[1]*:a", "run[1]*:b"]
        assert await whole.size() == 3
    finally:
        for d in (mine, other, whole):
            await d.close()


def replace_settings(settings: DatasourceSettings, **changes: object) -> DatasourceSettings:
    from dataclasses import replace

    return replace(settings, **changes)  # type: ignore[arg-type]


async def test_keys_stream_over_many_scan_pages(ds: Datasource) -> None:
    await ds.save_batch([(f"p{i:05d}", b"", None) for i in range(3500)])
    await ds.save_batch([(f"q{i:05d}", b"", None) for i in range(500)])
    got = [k async for k in ds.store.keys("p")]
    assert len(got) == len(set(got)) == 3500
    assert await ds.size() == 4000


async def test_foreign_non_utf8_keys_are_skipped(server: RedisServer) -> None:
    settings = server.settings()
    ds = await open_ds(settings)
    raw = await raw_client(settings)
    try:
        await raw.set(b"\xff\xfebinary", b"x")
        await ds.save("ok", b"y")
        assert await ds.keys() == ["ok"]
        assert await ds.size() == 1
    finally:
        await raw.aclose()
        await ds.close()


async def test_databases_are_isolated(server: RedisServer) -> None:
    one, two = server.settings(), server.settings()
    assert one.url != two.url
    a, b = await open_ds(one), await open_ds(two)
    try:
        await a.save("k", b"a")
        assert await b.load("k") is None
        assert await b.size() == 0
    finally:
        await a.close()
        await b.close()


# -- connections, pool, lifecycle ----------------------------------------------------------


def connected(store: RedisStore) -> bool:  # a call, so mypy does not narrow the property
    return store.is_connected


async def test_pool_burst_waits_instead_of_failing(server: RedisServer) -> None:
    ds = await open_ds(server.settings(pool_size=4))
    try:
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(ds.save, f"k{i}", b"v")
        assert await ds.size() == 200
        assert len(ds.store._client.connection_pool._available_connections) <= 4  # type: ignore[attr-defined]
    finally:
        await ds.close()


async def test_unix_socket_url(server: RedisServer) -> None:
    if not server.socket.exists():
        pytest.skip("socket path too long for this tmp dir")
    ds = await open_ds(DatasourceSettings(name="u", type="redis", url=server.unix_url))
    try:
        await ds.save("over-unix", b"1")
        assert await ds.load("over-unix") == b"1"
    finally:
        await ds.delete("over-unix")
        await ds.close()


async def test_unix_socket_with_password_in_query(auth_server: RedisServer) -> None:
    if not auth_server.socket.exists():
        pytest.skip("socket path too long for this tmp dir")
    assert f"password={QUOTED}" in auth_server.unix_url
    ds = await open_ds(DatasourceSettings(name="u", type="redis", url=auth_server.unix_url))
    try:
        await ds.save("over-unix", b"1")
        assert await ds.load("over-unix") == b"1"
    finally:
        await ds.close()
    bad = auth_server.unix_url.replace(f"password={QUOTED}", f"password=no{QUOTED}")
    store = RedisStore(bad, timeout=1.0)
    with pytest.raises(DatasourceError) as info:
        await store.connect()
    assert not isinstance(info.value, DatasourceUnavailable)
    assert "authentication failed" in str(info.value)
    assert str(auth_server.socket) in str(info.value)
    no_secret(info.value)


async def test_injected_client_is_left_open(server: RedisServer) -> None:
    client = await raw_client(server.settings())
    try:
        store = RedisStore(client=client)
        await store.connect()
        assert connected(store)
        await store.save("k", b"v")
        await store.close()
        assert not connected(store)
        assert await client.get("k") == b"v"  # still usable: we did not close it
        with pytest.raises(DatasourceError, match="not connected"):
            await store.load("k")
    finally:
        await client.aclose()


async def test_decoding_client_is_refused(server: RedisServer) -> None:
    assert server.settings().url is not None
    client = aioredis.Redis(port=server.port, decode_responses=True)
    try:
        with pytest.raises(DatasourceError, match="must not decode"):
            RedisStore(client=client)
    finally:
        await client.aclose()


async def test_connect_close_idempotent(server: RedisServer) -> None:
    store = create(server.settings())
    assert not connected(store)
    await store.connect()
    await store.connect()
    assert connected(store)
    await store.close()
    await store.close()
    assert not connected(store)
    await store.connect()  # and again after a close
    assert await store.load("x") is None
    await store.close()


# -- failures: bounded, clear, no password -------------------------------------------------


async def test_connect_to_dead_port_fails_fast(server: RedisServer) -> None:
    port = free_port()
    url = f"redis://:{QUOTED}@127.0.0.1:{port}/0"
    settings = DatasourceSettings(name="dead", type="redis", url=url, timeout=1.0)
    ds = Datasource(settings, create_store(settings))
    start = time.monotonic()
    with pytest.raises(DatasourceUnavailable) as info:
        await ds.connect()
    assert time.monotonic() - start < 1.0
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "'dead'" in str(info.value)
    no_secret(info.value)
    assert not ds.is_connected


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (a hung server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


async def test_connect_to_silent_server_is_bounded(silent_port: int) -> None:
    url = f"redis://:{QUOTED}@127.0.0.1:{silent_port}/0"
    store = RedisStore(url, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(DatasourceUnavailable) as info:
        await store.connect()  # the driver alone, without the wrapper's fail_after
    assert time.monotonic() - start < 1.0
    assert f"127.0.0.1:{silent_port}" in str(info.value)
    no_secret(info.value)


async def test_wrong_password_is_an_error_not_an_outage(auth_server: RedisServer) -> None:
    url = f"redis://:wrong-{QUOTED}@127.0.0.1:{auth_server.port}/0"
    settings = DatasourceSettings(name="auth", type="redis", url=url, timeout=2.0)
    ds = Datasource(settings, create_store(settings))
    with pytest.raises(DatasourceError) as info:
        await ds.connect()
    assert not isinstance(info.value, DatasourceUnavailable)
    assert "authentication failed" in str(info.value)
    assert f"127.0.0.1:{auth_server.port}" in str(info.value)
    no_secret(info.value)


async def test_server_stopped_mid_test(auth_server: RedisServer) -> None:
    settings = auth_server.settings(name="cache", timeout=1.0)
    ds = await open_ds(settings)
    try:
        await ds.save("before", b"1")
        auth_server.stop()
        for op in (
            lambda: ds.load("before"),
            lambda: ds.save("during", b"2"),
            lambda: ds.save_batch([("x", b"1", None), ("y", b"2", 5.0)]),
            ds.keys,
        ):
            start = time.monotonic()
            with pytest.raises(DatasourceUnavailable) as info:
                await op()
            assert time.monotonic() - start < 1.5
            text = str(info.value)
            assert "'cache'" in text and f"127.0.0.1:{auth_server.port}" in text
            no_secret(info.value)
        auth_server.start()
        await ds.save("after", b"3")  # the pool reconnects by itself
        assert await ds.load("after") == b"3"
        assert await ds.load_batch(["after", "before"]) == {"after": b"3", "before": b"1"}
    finally:
        auth_server.start()
        await ds.close()


async def test_not_a_redis_url_is_an_error() -> None:
    store = RedisStore(f"redis://:{QUOTED}@127.0.0.1:notaport/0", timeout=0.5)
    with pytest.raises(DatasourceError) as info:
        await store.connect()
    no_secret(info.value)


def test_create_needs_url(tmp_path: Path) -> None:
    with pytest.raises(DatasourceError):
        create(DatasourceSettings(name="x", type="redis"))
