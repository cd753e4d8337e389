"""The PostgreSQL driver's kept connection (issue 18, round six): statements run on one
connection kept out of the pool when it is free, instead of an acquire and a release
each. Attacked here: its backend killed while it idles, a statement cancelled or failing
on it, a borrower that holds the pool's other connections (it must not wait for the kept
one), a pool of one, hundreds of operations at once, and closing with it idle or in use.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest

from blokrun.datasources.postgresql import PostgresStore
from blokrun.errors import DatasourceError
from tests.contract.pg_kept import store_of
from tests.servers.postgresql import PostgresServer

pytestmark = pytest.mark.server


@pytest.fixture
def pg(server_pool: Any) -> PostgresServer:
    server: PostgresServer = server_pool.get("postgresql")
    return server


async def backend(store: PostgresStore) -> int:
    async with store.connection("pid") as con:
        pid: int = await con.fetchval("SELECT pg_backend_pid()")
    return pid


class Acquires:
    """Counts the pool's acquires."""

    def __init__(self, store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        pool = store._pool
        original = asyncpg.Pool.acquire

        def counted(inner: Any, *args: Any, **kwargs: Any) -> Any:
            if inner is pool:
                self.count += 1
            return original(inner, *args, **kwargs)

        monkeypatch.setattr(asyncpg.Pool, "acquire", counted)


async def test_statements_one_after_another_share_one_connection(
    pg: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(pg)
    await store.connect()
    try:
        first = await backend(store)
        acquires = Acquires(store, monkeypatch)
        for i in range(50):
            await store.save_batch([(f"k{i}", b"v", None)])
            assert await store.load(f"k{i}") == b"v"
        assert acquires.count == 0
        assert await backend(store) == first
    finally:
        await store.close()


async def test_a_backend_killed_while_idle_is_replaced_without_an_error(
    pg: PostgresServer,
) -> None:
    store = store_of(pg)
    await store.connect()
    try:
        await store.save("k", b"1")
        pid = await backend(store)
        con = await asyncpg.connect(pg.url)
        try:
            assert await con.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await con.close()
        await anyio.sleep(0.2)  # the client sees the socket close (the pool takes it back)
        assert await store.load("k") == b"1"
        assert await backend(store) != pid
    finally:
        await store.close()


async def test_a_statement_cancelled_or_failing_on_it_leaves_the_next_ones_whole(
    pg: PostgresServer,
) -> None:
    store = store_of(pg, timeout=1.0)
    await store.connect()
    try:
        await store.save("k", b"1")
        table = store.table
        con = await asyncpg.connect(pg.url)
        try:
            async with con.transaction():
                await con.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
                with anyio.move_on_after(0.2) as scope:  # cancelled mid-statement
                    await store.load("k")
                assert scope.cancelled_caught
                with pytest.raises(DatasourceError):  # its command timeout, on it
                    await store.save("k", b"2")
        finally:
            await con.close()
        for i in range(20):
            await store.save(f"after{i}", str(i).encode())
        assert await store.load_batch([f"after{i}" for i in range(20)]) == {
            f"after{i}": str(i).encode() for i in range(20)
        }
        assert await store.load("k") == b"1"
    finally:
        await store.close()


@pytest.mark.parametrize("pool_size", [1, 2, 3])
async def test_a_borrower_never_waits_for_the_kept_connection(
    pg: PostgresServer, pool_size: int
) -> None:
    """Every connection is in use -- the kept one briefly, the others for long (a long
    transaction, a queue's work) -- and a statement waits for one. When the brief user is
    done, the waiter gets that connection at once: the kept one goes back to the pool when
    the pool has nothing else to give (and a pool of one keeps nothing)."""
    store = store_of(pg, pool_size=pool_size, timeout=3.0)
    await store.connect()
    try:
        await store.save("k", b"1")  # the kept connection exists now
        brief, long, done = anyio.Event(), anyio.Event(), anyio.Event()
        got: list[float] = []

        async def hold(until: anyio.Event, name: str, *, task_status: Any) -> None:
            async with store.connection(name) as con:
                await con.fetchval("SELECT 1")
                task_status.started()
                await until.wait()

        async def waiter() -> None:
            assert await store.load("k") == b"1"
            got.append(time.monotonic())
            done.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(hold, brief, "brief")  # finds the kept one free
                for i in range(pool_size - 1):
                    await tg.start(hold, long, f"long{i}")
                tg.start_soon(waiter)
                await anyio.sleep(0.1)
                assert not got  # every connection is in use: it waits
                released = time.monotonic()
                brief.set()
                with anyio.move_on_after(2.0):
                    await done.wait()
                long.set()
        assert got and got[0] - released < 1.0, "the waiter waited for the long holders"
    finally:
        await store.close()


async def test_hundreds_at_once_on_a_pool_of_two(pg: PostgresServer) -> None:
    store = store_of(pg, pool_size=2, timeout=10.0)
    await store.connect()
    try:

        async def one(i: int) -> None:
            await store.save(f"m{i}", str(i).encode())
            assert await store.load(f"m{i}") == str(i).encode()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(300):
                    tg.start_soon(one, i)
        assert store._pool.get_size() <= 2
    finally:
        await store.close()


@pytest.mark.parametrize("in_use", [False, True])
async def test_closing_returns_it_to_the_pool(pg: PostgresServer, in_use: bool) -> None:
    store = store_of(pg, timeout=5.0)
    await store.connect()
    await store.save("k", b"1")
    t0 = time.monotonic()
    if in_use:
        entered = anyio.Event()

        async def busy() -> None:
            async with store.connection("busy") as con:
                entered.set()
                await con.fetchval("SELECT pg_sleep(0.2)")

        async with anyio.create_task_group() as tg:
            tg.start_soon(busy)
            await entered.wait()
            tg.start_soon(store.close)
    else:
        await store.close()
    assert time.monotonic() - t0 < 2.0  # pool.close() did not wait out its timeout
    with pytest.raises(DatasourceError, match="not connected"):
        await store.load("k")


async def test_sequential_operations_still_work_after_reconnecting(pg: PostgresServer) -> None:
    store = store_of(pg)
    await store.connect()
    await store.save("k", b"1")
    await store.close()
    await store.connect()
    try:
        assert await store.load("k") == b"1"
        await asyncio.sleep(0)
    finally:
        await store.close()
