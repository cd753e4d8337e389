"""Hostile review of the PostgreSQL driver's kept connection (commit 5af7278; four cases
failed on it and were fixed in the next commit): one pooled
connection kept out of the asyncpg pool and used by whichever operation finds it free.

The claim under attack: the same behaviour as borrowing from the pool each time (nothing
lost, no deadlock or starvation, no leaked pool slot, no state leaking between borrowers,
errors translated the same). Where a test compares with the pool, the same test runs with
the kept connection disabled (``kept=False``: every borrower goes through the pool, as
before the commit) as the control.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest

from blokrun import CheckpointError, Runner
from blokrun.datasources import build_datasource
from blokrun.datasources.postgresql import PostgresStore
from blokrun.errors import DatasourceError, DatasourceUnavailable
from blokrun.queues.pg_queue import PostgresQueue
from blokrun.queues.queue import Job, open_queue
from tests.contract.pg_kept import disable_kept, opened, store_of
from tests.integration import wfnodes
from tests.servers.postgresql import PASSWORD_ROLE, PostgresServer

pytestmark = pytest.mark.server
NODE = "tests.integration.wfnodes"
_LOCK_ID = 0x626C6F6B72756E  # the store's (and the queue's) migration advisory lock


@pytest.fixture
def pg(server_pool: Any) -> PostgresServer:
    server: PostgresServer = server_pool.get("postgresql")
    return server


@contextlib.asynccontextmanager
async def raw(pg: PostgresServer) -> AsyncIterator[Any]:
    con = await asyncpg.connect(pg.url)
    try:
        yield con
    finally:
        await con.close()


async def committed(pg: PostgresServer, store: PostgresStore, key: str) -> bytes | None:
    """The value of ``key`` as another session sees it (committed data only)."""
    async with raw(pg) as con:
        value: bytes | None = await con.fetchval(
            f'SELECT data FROM "{store.table}" WHERE key = $1', key
        )
    return value


def assert_pool_whole(store: PostgresStore, pool: Any, pool_size: int) -> None:
    """Every connection is idle in the pool or is the (free) kept one; none is forgotten."""
    assert not store._hot_busy
    assert pool.get_size() <= pool_size
    kept = 1 if store._hot is not None else 0
    assert pool.get_idle_size() + kept == pool.get_size(), (
        pool.get_idle_size(),
        kept,
        pool.get_size(),
    )


async def close_promptly(store: PostgresStore, limit: float = 1.5) -> None:
    t0 = time.monotonic()
    await store.close()
    assert time.monotonic() - t0 < limit, "pool.close() waited for a forgotten holder"


class SlowRelay:
    """A TCP relay in front of the server: while ``delay`` is set, each new connection
    waits that long before it reaches the server (a distant server, TLS, a busy
    pgbouncer: opening a connection costs more than running a statement)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.delay = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> SlowRelay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, pg: PostgresServer) -> str:
        return pg.url.replace(f":{pg.port}/", f":{self.port}/")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
            self._writers.append(up_w)

            async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                try:
                    while data := await r.read(65536):
                        w.write(data)
                        await w.drain()
                except (ConnectionError, asyncio.CancelledError):
                    pass
                finally:
                    w.close()

            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


# -- starvation: a waiter behind the kept connection -------------------------------------


@pytest.mark.parametrize("kept", [False, True])
async def test_a_waiter_is_not_left_behind_a_connection_still_being_opened(
    pg: PostgresServer, kept: bool
) -> None:
    """Pool of two, one connection open (asyncpg opens the others on demand, and closes
    idle ones beyond the minimum after 5 minutes). A brief borrower has the kept
    connection; a second borrower takes the pool's other slot, whose connection takes
    0.6 s to open, and then waits for a third borrower's result; the third borrower
    waits for a connection. When the brief one is done, the pool looks like it has room
    (``get_size() == 1 < 2``: the slot being opened is not counted), so the first fix (a
    pool-size test) kept the connection -- idle -- while the third borrower stayed queued in the
    pool until its timeout. Through the pool, it gets the brief borrower's connection at
    once, and everyone finishes."""
    async with SlowRelay(pg.port) as relay:
        store = store_of(pg, pool_size=2, timeout=1.5, url=relay.url(pg))
        await store.connect()
        try:
            await store.save("k", b"1")
            if not kept:
                await disable_kept(store)
            assert store._pool.get_size() == 1
            relay.delay = 0.6
            brief_done, waiter_done = anyio.Event(), anyio.Event()
            outcome: list[Any] = []

            async def brief(*, task_status: Any) -> None:
                async with store.connection("brief") as con:
                    await con.fetchval("SELECT 1")
                    task_status.started()
                    await brief_done.wait()

            async def second() -> None:
                async with store.connection("second") as con:
                    await con.fetchval("SELECT 1")
                    await waiter_done.wait()  # needs the third borrower's result

            async def third() -> None:
                await anyio.sleep(0.05)
                try:
                    outcome.append(await store.load("k"))
                except DatasourceError as exc:
                    outcome.append(exc)
                finally:
                    outcome.append(time.monotonic() - released)
                    waiter_done.set()

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    await tg.start(brief)
                    tg.start_soon(second)  # opening the second connection (0.6 s)
                    tg.start_soon(third)
                    await anyio.sleep(0.15)
                    released = time.monotonic()
                    brief_done.set()
            relay.delay = 0.0
            value, latency = outcome
            assert value == b"1", (
                f"{value} ({latency:.2f}s after a connection was free): the kept connection "
                "sat idle while this borrower waited in the pool"
            )
            assert latency < 0.3, latency
        finally:
            await store.close()


# -- borrower leftovers: what the pool cleans on release, the kept connection keeps -------


@pytest.mark.parametrize("kept", [False, True])
async def test_a_transaction_left_open_does_not_swallow_the_next_save(
    pg: PostgresServer, kept: bool
) -> None:
    """A borrower of the public ``connection()`` hook leaves a transaction open and exits
    without an error. The module docstring: "asyncpg still rolls back a transaction left
    open" -- the pool does on release. On the kept connection nothing rolled it back (the
    next store.save() ran inside it and was not committed) until the connection went back
    to the pool whenever a transaction is left open (``_reusable``)."""
    async with opened(pg, kept=kept) as store:
        async with store.connection("careless") as con:
            await con.execute("BEGIN")
            await con.execute(
                f'INSERT INTO "{store.table}" (key, data) VALUES ($1, $2)', "careless", b"x"
            )
        await store.save("acknowledged", b"1")
        assert await store.load("acknowledged") == b"1"
        assert await committed(pg, store, "acknowledged") == b"1", (
            "save() returned, but its row is in another borrower's open transaction"
        )


@pytest.mark.parametrize("kept", [False, True])
async def test_a_handle_used_after_its_block_is_refused(pg: PostgresServer, kept: bool) -> None:
    """Through the pool, a connection used after its ``async with`` block fails at once
    (asyncpg detaches the proxy on release). The kept connection is never released: a stale
    handle (a task spawned in the block, a reference kept) ran statements on the connection
    another borrower was using, until each borrower got a handle of its own that refuses
    after its block (``_Lent``)."""
    async with opened(pg, kept=kept) as store:
        async with store.connection("first") as con:
            await con.fetchval("SELECT 1")
        with pytest.raises(asyncpg.InterfaceError, match="released"):
            await con.fetchval("SELECT 1")


@pytest.mark.parametrize("kept", [False, True])
async def test_a_notification_listener_does_not_outlive_its_borrower(
    pg: PostgresServer, kept: bool
) -> None:
    """A borrower adds a LISTEN callback and forgets it. The pool warns and drops the
    client-side listener on release (the server-side LISTEN stays: reset is a no-op, the
    same with or without the kept connection). The kept connection kept calling the old
    borrower's callback while others used it, until a connection left with a listener went
    back to the pool (``_reusable``)."""
    store = store_of(pg, pool_size=4)
    await store.connect()
    heard: list[str] = []
    try:
        if not kept:
            await disable_kept(store)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", asyncpg.InterfaceWarning)
            async with store.connection("listen") as con:
                await con.add_listener("attack_chan", lambda *a: heard.append(a[3]))
        async with raw(pg) as other:
            await other.execute("NOTIFY attack_chan, 'after'")
        for _ in range(5):
            await store.save("k", b"1")  # whoever has the connection now
            await anyio.sleep(0.05)
        assert heard == [], "a finished borrower's callback still hears notifications"
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", asyncpg.InterfaceWarning)
            await store.close()


# -- transactions, cancellation and timeouts on the kept connection -----------------------


def job(rid: str) -> Job:
    return Job(request_id=rid, workflow="w", document={"name": "w"}, inputs={}, priority=0,
               enqueued_at=time.time())  # fmt: skip


async def idle_in_transaction(pg: PostgresServer) -> int:
    async with raw(pg) as con:
        n: int = await con.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
            "AND pid <> pg_backend_pid()"
        )
    return n


async def test_queue_setup_cancelled_mid_transaction_on_it_leaks_no_transaction(
    pg: PostgresServer,
) -> None:
    """The queue's setup runs in a transaction on the kept connection and blocks on the
    migration lock; meanwhile 20 saves run (they must not land in that transaction), then
    the setup is cancelled. Every save is committed, no session is left idle in a
    transaction, the next statements commit, and setup runs again cleanly."""
    settings = pg.settings(timeout=3.0, pool_size=3)
    async with build_datasource(settings) as ds:
        store = ds.store
        assert isinstance(store, PostgresStore)
        queue = open_queue(ds)
        assert isinstance(queue, PostgresQueue)
        await store.save("warm", b"1")  # the kept connection exists
        async with raw(pg) as locker, locker.transaction():
            await locker.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            entered = anyio.Event()

            async def setup() -> None:
                with anyio.move_on_after(0.5):
                    entered.set()
                    await queue.setup()

            async with anyio.create_task_group() as tg:
                tg.start_soon(setup)
                await entered.wait()
                await anyio.sleep(0.05)
                assert store._hot_busy  # the setup's transaction is on the kept connection
                for i in range(20):
                    tg.start_soon(store.save, f"during{i}", b"d")
        for i in range(20):
            assert await committed(pg, store, f"during{i}") == b"d"
        await store.save("after", b"a")
        assert await committed(pg, store, "after") == b"a"
        async with store.connection("probe") as con:
            assert not con.is_in_transaction()
        assert await idle_in_transaction(pg) == 0
        await queue.setup()
        assert await queue.enqueue(job("r1"))
        assert [c.job.request_id for c in await queue.claim("w", 5, 30)] == ["r1"]
        assert_pool_whole(store, store._pool, 3)


@pytest.mark.parametrize("how", ["cancelled", "command_timeout", "error"])
async def test_a_transaction_on_it_that_does_not_finish_is_rolled_back(
    pg: PostgresServer, how: str
) -> None:
    """A transaction on the kept connection is cancelled between statements, hits the
    command timeout, or fails: its insert is not committed, and the next borrowers (which
    find the kept connection free again) are outside any transaction and commit."""
    store = store_of(pg, pool_size=3, timeout=0.5)
    await store.connect()
    try:
        await store.save("warm", b"1")
        table = store.table

        async def doomed() -> None:
            async with store.connection("doomed") as con, con.transaction():
                assert store._hot_busy
                await con.execute(f'INSERT INTO "{table}" (key, data) VALUES ($1, $2)', "x", b"x")
                if how == "cancelled":
                    await anyio.sleep(5)
                elif how == "command_timeout":
                    await con.execute("SELECT pg_sleep(3)")
                else:
                    await con.execute("SELECT 1/0")

        t0 = time.monotonic()
        if how == "cancelled":
            with anyio.move_on_after(0.2):
                await doomed()
        else:
            with pytest.raises(DatasourceError):
                await doomed()
        assert time.monotonic() - t0 < 1.5
        for i in range(5):
            async with store.connection("next") as con:
                assert not con.is_in_transaction()
            await store.save(f"n{i}", b"n")
            assert await committed(pg, store, f"n{i}") == b"n"
        assert await committed(pg, store, "x") is None
        assert await store.load("x") is None
        assert await idle_in_transaction(pg) == 0
        assert_pool_whole(store, store._pool, 3)
    finally:
        await close_promptly(store)


async def _password_url(pg: PostgresServer, password: str) -> str:
    """A URL of ``pg`` for the role PASSWORD_ROLE, (re)created with ``password``."""
    async with raw(pg) as con:
        exists = await con.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", PASSWORD_ROLE)
        verb = "ALTER" if exists else "CREATE"
        await con.execute(f"{verb} ROLE {PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '{password}'")
    return f"postgresql://{PASSWORD_ROLE}:{password}@127.0.0.1:{pg.port}/postgres"


async def test_a_backend_terminated_mid_statement_on_it_fails_that_statement_only(
    pg: PostgresServer,
) -> None:
    """The kept connection's backend is killed while it runs a statement (URL with a
    password): that statement fails as unavailable with the password masked; the next
    ones run on a new backend; the pool stays whole."""
    password = "Kept-Attack-Pw-77q"
    url = await _password_url(pg, password)
    store = store_of(pg, pool_size=3, timeout=3.0, url=url)
    await store.connect()
    try:
        await store.save("k", b"1")
        async with store.connection("pid") as con:
            pid = con.get_server_pid()

        async def kill() -> None:
            async with raw(pg) as other:
                for _ in range(100):
                    if await other.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND "
                        "query LIKE '%pg_sleep%' AND state = 'active'",
                        pid,
                    ):
                        break
                    await anyio.sleep(0.01)
                assert await other.fetchval("SELECT pg_terminate_backend($1)", pid)

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill)
            with pytest.raises(DatasourceUnavailable) as info:
                async with store.connection("sleepy") as con:
                    assert con.get_server_pid() == pid
                    await con.execute("SELECT pg_sleep(5)")
        message = str(info.value)
        assert password not in message and "***" in message, message
        assert await store.load("k") == b"1"
        async with store.connection("pid") as con:
            assert con.get_server_pid() != pid
        for i in range(10):
            await store.save(f"a{i}", b"a")
        assert_pool_whole(store, store._pool, 3)
    finally:
        await close_promptly(store)


async def test_the_server_down_while_kept_errors_scrub_the_password(pg: PostgresServer) -> None:
    """The server stops while the kept connection idles: the next operation (which must
    open a new connection and cannot) fails as unavailable, password masked; after the
    server is back, operations succeed without a reconnect."""
    password = "Kept-Attack-Pw-77q"
    url = await _password_url(pg, password)
    store = store_of(pg, pool_size=3, timeout=2.0, url=url)
    await store.connect()
    try:
        await store.save("k", b"1")
        assert store._hot is not None
        pg.stop()
        try:
            await anyio.sleep(0.2)
            for _ in range(3):
                with pytest.raises(DatasourceUnavailable) as info:
                    await store.load("k")
                message = str(info.value)
                assert password not in message and "***" in message, message
                assert not store._hot_busy
        finally:
            pg.start()
        await anyio.sleep(0.1)
        assert await store.load("k") == b"1"
        await store.save("k2", b"2")
        assert await committed(pg, store, "k2") == b"2"
        assert_pool_whole(store, store._pool, 3)
    finally:
        await close_promptly(store)


async def test_an_injected_pool_never_has_a_connection_kept_from_it(pg: PostgresServer) -> None:
    pool = await asyncpg.create_pool(pg.url, min_size=1, max_size=3)
    try:
        settings = pg.settings()
        store = PostgresStore(None, table=settings.table or "", pool=pool, timeout=2.0)
        await store.connect()
        for i in range(10):
            await store.save(f"k{i}", b"v")
            assert await store.load(f"k{i}") == b"v"
            assert store._hot is None
            assert pool.get_idle_size() == pool.get_size()
        await store.close()
        assert not pool.is_closing()
        async with pool.acquire() as con:
            assert await con.fetchval(f'SELECT count(*) FROM "{store.table}"') == 10
    finally:
        await pool.close()


# -- many borrowers: exclusivity, accounting, close ----------------------------------------


async def test_a_storm_of_borrowers_never_shares_a_connection_nor_loses_a_slot(
    pg: PostgresServer,
) -> None:
    """400 borrowers on a pool of three: statements, failing statements, and borrowers
    cancelled at random points (before, during and after a statement). No connection is
    ever in two borrowers' hands at once, the pool never grows past its size, and
    afterwards every connection is back (idle or the free kept one)."""
    rng = random.Random(5)
    size = 3
    store = store_of(pg, pool_size=size, timeout=5.0)
    await store.connect()
    pool = store._pool
    in_use: set[int] = set()
    shared: list[int] = []
    sizes: list[int] = []
    outcomes = {"ok": 0, "error": 0, "cancelled": 0}
    try:

        async def one(i: int) -> None:
            kind = rng.choice(["ok", "ok", "error", "cancel", "sleep"])
            deadline = rng.choice([0.0, 0.001, 0.003, 0.01, 0.03])
            with anyio.move_on_after(deadline if kind in ("cancel", "sleep") else 30) as scope:
                try:
                    async with store.connection(f"op{i}") as con:
                        pid = con.get_server_pid()
                        if pid in in_use:
                            shared.append(pid)
                        in_use.add(pid)
                        try:
                            sizes.append(pool.get_size())
                            if kind == "error":
                                await con.execute("SELECT 1/0")
                            elif kind == "sleep":
                                await con.execute("SELECT pg_sleep(0.02)")
                            else:
                                await con.execute(
                                    f'INSERT INTO "{store.table}" (key, data) VALUES ($1, $2) '
                                    "ON CONFLICT (key) DO NOTHING",
                                    f"k{i}",
                                    b"v",
                                )
                        finally:
                            in_use.discard(pid)
                    outcomes["ok"] += 1
                except DatasourceError:
                    outcomes["error"] += 1
            if scope.cancelled_caught:
                outcomes["cancelled"] += 1

        with anyio.fail_after(25):
            async with anyio.create_task_group() as tg:
                for i in range(400):
                    tg.start_soon(one, i)
                    if i % 50 == 0:
                        await anyio.sleep(0.01)
        assert not shared, f"connections used by two borrowers at once: {shared}"
        assert max(sizes) <= size
        assert outcomes["error"] > 0 and outcomes["ok"] > 0, outcomes
        await anyio.sleep(0.1)  # shielded releases of cancelled borrowers finish
        assert_pool_whole(store, pool, size)
        async with store.connection("probe") as con:
            assert not con.is_in_transaction()
        assert await idle_in_transaction(pg) == 0
    finally:
        await close_promptly(store)


async def test_close_racing_in_flight_statements_then_reconnect_cycles(
    pg: PostgresServer,
) -> None:
    """Five rounds of: 60 operations in flight (some holding the kept connection in a
    slow statement), close() in the middle, then connect again. Each operation either
    succeeds or raises DatasourceError (nothing else), close() returns promptly, and the
    store works after each reconnect with its kept connection reset."""
    store = store_of(pg, pool_size=3, timeout=3.0)
    others: list[BaseException] = []

    async def op(rnd: int, i: int) -> None:
        try:
            if i % 3 == 0:
                async with store.connection("slow") as con:
                    await con.execute("SELECT pg_sleep(0.05)")
            else:
                await store.save(f"r{rnd}-{i}", b"x")
        except DatasourceError:
            pass
        except Exception as exc:  # any other error is the finding
            others.append(exc)

    for round_ in range(5):
        await store.connect()
        await store.save(f"r{round_}", b"1")
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(60):
                    tg.start_soon(op, round_, i)
                await anyio.sleep(0.01)
                t0 = time.monotonic()
                await store.close()
                assert time.monotonic() - t0 < 2.0
        assert not others, others
        assert store._hot is None and not store._hot_busy
    await store.connect()
    try:
        for round_ in range(5):
            assert await store.load(f"r{round_}") == b"1"
        assert_pool_whole(store, store._pool, 3)
    finally:
        await close_promptly(store)


def test_a_store_used_on_two_event_loops_one_after_the_other(pg: PostgresServer) -> None:
    """connect/use/close on one event loop, then again on another: the kept connection of
    the first loop's pool is not carried into the second."""
    store = store_of(pg, pool_size=2)

    async def use(n: int) -> None:
        await store.connect()
        try:
            await store.save(f"loop{n}", b"v")
            got = await asyncio.gather(*(store.load(f"loop{n}") for _ in range(20)))
            assert got == [b"v"] * 20
            if n:
                assert await store.load("loop0") == b"v"
        finally:
            await store.close()

    asyncio.run(use(0))
    asyncio.run(use(1))


async def test_queue_workers_on_a_pool_of_two_deliver_each_job_once(pg: PostgresServer) -> None:
    """300 jobs, 12 workers claiming and acking concurrently with saves on a pool of two:
    every job is delivered once and acked; the pool stays whole."""
    settings = pg.settings(timeout=5.0, pool_size=2)
    async with build_datasource(settings) as ds:
        store = ds.store
        assert isinstance(store, PostgresStore)
        queue = open_queue(ds)
        assert isinstance(queue, PostgresQueue)
        await queue.setup()
        ids = [f"job{i:03d}" for i in range(300)]
        async with anyio.create_task_group() as tg:
            for rid in ids:
                tg.start_soon(queue.enqueue, job(rid))
        seen: list[str] = []

        async def worker(w: int) -> None:
            while True:
                claims = await queue.claim(f"w{w}", 3, 30)
                if not claims:
                    return
                for c in claims:
                    assert c.deliveries == 1
                    seen.append(c.job.request_id)
                    await store.save(f"done/{c.job.request_id}", b"1")
                    await queue.ack(f"w{w}", c.job.request_id)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for w in range(12):
                    tg.start_soon(worker, w)
        assert sorted(seen) == ids
        stats = await queue.stats()
        assert stats.waiting == 0 and stats.claimed == 0
        assert len(await store.load_batch([f"done/{r}" for r in ids])) == 300
        assert_pool_whole(store, store._pool, 2)


# -- end to end: Runner runs -----------------------------------------------------------------


def three_steps(middle: str = "add") -> dict[str, Any]:
    return {
        "name": "kept",
        "persistence": {"targets": ["db"]},
        "steps": [
            {"name": "s1", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "s2", "node": f"{NODE}:{middle}", "inputs": {"n": 2}},
            {"name": "s3", "node": f"{NODE}:add", "inputs": {"n": 3}},
        ],
    }


def calls(rid: str) -> list[str]:
    return [step for r, step in wfnodes.CALLS if r == rid]


async def test_many_runs_fail_and_resume_on_a_pool_of_two(pg: PostgresServer) -> None:
    """150 runs with leases and group commit on a pool of two; s2 fails in each; then each
    run is resumed: every run ends with total 6, s1 and s3 ran once, s2 twice."""
    settings = pg.settings("db", timeout=5.0, pool_size=2)
    ids = [f"kept-{i:03d}" for i in range(150)]
    wf = three_steps()
    wfnodes.FAIL_AT.add("s2")
    async with Runner([settings]) as runner:
        assert runner.datasources["db"].group_commit is not None
        store = runner.datasources["db"].store
        assert isinstance(store, PostgresStore)
        failed: list[str] = []

        async def first(rid: str) -> None:
            try:
                await runner.run(wf, {"total": 0}, request_id=rid)
            except Exception:  # StepFailed expected
                failed.append(rid)

        with anyio.fail_after(25):
            async with anyio.create_task_group() as tg:
                for rid in ids:
                    tg.start_soon(first, rid)
        assert sorted(failed) == ids
        wfnodes.FAIL_AT.clear()
        totals: dict[str, int] = {}

        async def again(rid: str) -> None:
            result = await runner.resume(rid)
            totals[rid] = result.vars["total"]

        with anyio.fail_after(25):
            async with anyio.create_task_group() as tg:
                for rid in ids:
                    tg.start_soon(again, rid)
        assert totals == {rid: 6 for rid in ids}
        for rid in ids:
            assert calls(rid) == ["s1", "s2", "s2", "s3"], (rid, calls(rid))
        assert_pool_whole(store, store._pool, 2)
        pool = store._pool
    assert pool.is_closing()


async def test_server_restart_with_runs_in_flight_then_resume(pg: PostgresServer) -> None:
    """60 runs with leases and group commit on a pool of three wait at a gate; the server
    stops (every connection, the kept one too, dies), the gate opens, every run fails with
    a checkpoint error (nothing else); the server starts and the runs are resumed on the
    same runner (the kept connection is the dead one: replaced without an error). Every
    run ends with total 4, s1 and s3 ran once; the pool is whole and closes promptly."""
    n = 60
    settings = pg.settings("db", timeout=3.0, pool_size=3)
    wf = {
        "name": "restart",
        "persistence": {"targets": ["db"]},
        "steps": [
            {"name": "s1", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "gate", "node": f"{NODE}:wait_gate"},
            {"name": "s3", "node": f"{NODE}:add", "inputs": {"n": 3}},
        ],
    }
    ids = [f"restart-{i:03d}" for i in range(n)]
    errors: dict[str, BaseException] = {}
    totals: dict[str, int] = {}
    async with Runner([settings]) as runner:
        store = runner.datasources["db"].store
        assert isinstance(store, PostgresStore)

        async def one(rid: str) -> None:
            try:
                result = await runner.run(wf, {"total": 0}, request_id=rid)
                totals[rid] = result.vars["total"]
            except CheckpointError as exc:
                errors[rid] = exc

        try:
            async with anyio.create_task_group() as tg:
                for rid in ids:
                    tg.start_soon(one, rid)
                with anyio.fail_after(20):
                    await wfnodes.wait_for_gate_waiters(n)
                await anyio.to_thread.run_sync(pg.stop)  # the loop sees every socket close
                wfnodes.GATE.set()  # the gate's checkpoints meet a stopped server
        finally:
            pg.start()
        assert set(errors) == set(ids)

        async def again(rid: str) -> None:
            result = await runner.resume(rid)
            totals[rid] = result.vars["total"]

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for rid in errors:
                    tg.start_soon(again, rid)
        assert totals == {rid: 4 for rid in ids}
        for rid in ids:
            ran = calls(rid)
            assert ran.count("s1") == 1, (rid, ran)
            assert ran.count("s3") == 1, (rid, ran)
        assert_pool_whole(store, store._pool, 3)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 2.0
