"""Redis leases: how they are stored (a hash, no TTL, server clock), that they stay out of
``keys()``/``size()``/``load()``, that the scripts survive ``SCRIPT FLUSH``, that a fenced
batch is written like ``save_batch`` (PX rounded up, last repeated key wins) in one
``EVALSHA``, and that failures are translated without the password.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis

from blokrun.datasources.datasource import Datasource
from blokrun.errors import DatasourceError, DatasourceUnavailable
from tests.servers.base import connected as _open
from tests.servers.redis import RedisServer, launch

if TYPE_CHECKING:
    pass

pytestmark = pytest.mark.server

LEASE = "_blokrun.lease.run-1"
PASSWORD = "le:ase@p/w%d"
QUOTED = quote(PASSWORD, safe="")


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


async def _server_ms(raw: aioredis.Redis) -> int:
    sec, usec = await raw.time()
    return int(sec) * 1000 + int(usec) // 1000


async def test_a_lease_is_a_hash_without_ttl_timed_by_the_server(
    pair: tuple[Datasource, aioredis.Redis],
) -> None:
    ds, raw = pair
    before = await _server_ms(raw)
    state = await ds.acquire_lease(LEASE, "me", 30.0001)  # ms rounded up, like save's PX
    after = await _server_ms(raw)
    stored = await raw.hgetall("p/" + LEASE)
    assert stored == {
        b"owner": b"me",
        b"token": b"%d" % state.token,
        b"expires_ms": stored[b"expires_ms"],
    }
    expires_ms = int(stored[b"expires_ms"])
    assert before + 30_001 <= expires_ms <= after + 30_001
    assert state.expires_at == expires_ms / 1000
    assert await raw.pttl("p/" + LEASE) == -1  # no Redis TTL: the count outlives the lease
    await ds.release_lease(LEASE, "me", state.token)
    assert await raw.hgetall("p/" + LEASE) == {
        b"owner": b"me",
        b"token": b"%d" % state.token,
        b"expires_ms": b"0",
    }
    again = await ds.acquire_lease(LEASE, "other", 1)
    assert again.owner == "other" and again.token > state.token
    read = await ds.read_lease(LEASE)
    assert read == again


async def test_leases_are_not_values(pair: tuple[Datasource, aioredis.Redis]) -> None:
    ds, _ = pair
    await ds.save_batch([("a", b"1", None), ("_blokrun.head.r", b"2", 60.0)])
    await ds.acquire_lease(LEASE, "me", 30)
    await ds.acquire_lease("_blokrun.lease.other", "me", 30)
    assert sorted(await ds.keys()) == ["_blokrun.head.r", "a"]
    assert await ds.keys("_blokrun.lease.") == []
    assert await ds.size() == 2
    assert await ds.load(LEASE) is None
    assert await ds.load_batch([LEASE, "a"]) == {"a": b"1"}
    assert (await ds.read_lease(LEASE)) is not None  # untouched by the reads above


async def test_scripts_are_reloaded_after_script_flush(
    pair: tuple[Datasource, aioredis.Redis],
) -> None:
    ds, raw = pair
    first = await ds.acquire_lease(LEASE, "me", 30)
    await raw.script_flush()
    assert await ds.renew_lease(LEASE, "me", first.token, 30)
    await raw.script_flush()
    assert await ds.save_batch_fenced([("k", b"v", None)], LEASE, first.token)
    await raw.script_flush()
    await ds.release_lease(LEASE, "me", first.token)
    await raw.script_flush()
    assert (await ds.acquire_lease(LEASE, "you", 30)).token > first.token
    assert await ds.load("k") == b"v"


async def test_fenced_batch_like_save_batch_in_one_evalsha(
    pair: tuple[Datasource, aioredis.Redis],
) -> None:
    ds, raw = pair
    token = (await ds.acquire_lease(LEASE, "me", 30)).token
    await ds.save("had-ttl", b"old", ttl=60)
    await ds.save_batch_fenced([], LEASE, token)  # loads the script before counting
    await raw.config_resetstat()
    ok = await ds.save_batch_fenced(
        [
            ("had-ttl", b"new", None),  # SET clears the old TTL
            ("twice", b"first", None),
            ("ttl", b"t", 30.0),
            ("twice", b"second", 10.0),  # last occurrence wins, TTL included
            ("tiny", b"x" * 1024, 0.0001),  # rounds up to 1 ms, never to "no expiry"
        ],
        LEASE,
        token,
    )
    stats = await raw.info("commandstats")
    assert ok
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert {k for k in stats if k.startswith("cmdstat_")} <= {
        "cmdstat_evalsha",
        "cmdstat_set",  # the SETs inside the script
        "cmdstat_hget",
        "cmdstat_info",
        "cmdstat_config|resetstat",
    }
    assert await ds.load_batch(["had-ttl", "twice", "ttl"]) == {
        "had-ttl": b"new",
        "twice": b"second",
        "ttl": b"t",
    }
    assert await raw.pttl("p/had-ttl") == -1
    assert 9_000 < await raw.pttl("p/twice") <= 10_000
    assert 29_000 < await raw.pttl("p/ttl") <= 30_000
    assert await ds.save_batch_fenced([], LEASE, token)  # no entries: only the check
    assert not await ds.save_batch_fenced([], LEASE, token + 1)


async def test_a_value_at_a_lease_key_is_an_error(pair: tuple[Datasource, aioredis.Redis]) -> None:
    ds, raw = pair
    await raw.set("p/" + LEASE, b"not a hash")
    for op in (
        lambda: ds.acquire_lease(LEASE, "me", 30),
        lambda: ds.renew_lease(LEASE, "me", 1, 30),
        lambda: ds.save_batch_fenced([("k", b"v", None)], LEASE, 1),
        lambda: ds.read_lease(LEASE),
    ):
        with pytest.raises(DatasourceError, match="WRONGTYPE") as info:
            await op()
        assert not isinstance(info.value, DatasourceUnavailable)
    assert await ds.load("k") is None
    await raw.delete("p/" + LEASE)
    await raw.hset("p/" + LEASE, "something", "else")
    with pytest.raises(DatasourceError, match="not a blokrun lease"):
        await ds.read_lease(LEASE)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = launch(tmp_path_factory.mktemp("redis-lease-auth"), password=PASSWORD)
    yield srv
    srv.stop()


async def test_outage_is_unavailable_without_the_password(auth_server: RedisServer) -> None:
    ds = await _open(auth_server.settings(name="leases", timeout=1.0))
    try:
        token = (await ds.acquire_lease(LEASE, "me", 30)).token
        auth_server.stop()
        for op in (
            lambda: ds.acquire_lease(LEASE, "me", 30),
            lambda: ds.renew_lease(LEASE, "me", token, 30),
            lambda: ds.release_lease(LEASE, "me", token),
            lambda: ds.save_batch_fenced([("k", b"v", None)], LEASE, token),
            lambda: ds.read_lease(LEASE),
            lambda: ds.delete_lease(LEASE),
        ):
            start = time.monotonic()
            with pytest.raises(DatasourceUnavailable) as info:
                await op()
            assert time.monotonic() - start < 1.5
            text = str(info.value)
            assert "'leases'" in text and f"127.0.0.1:{auth_server.port}" in text
            seen: BaseException | None = info.value
            while seen is not None:
                assert PASSWORD not in str(seen) + repr(seen)
                assert QUOTED not in str(seen) + repr(seen)
                seen = seen.__cause__ or seen.__context__
        auth_server.start()  # reloads dump.rdb: the lease (and its count) is still there
        assert await ds.renew_lease(LEASE, "me", token, 30)
    finally:
        auth_server.start()
        await ds.close()
