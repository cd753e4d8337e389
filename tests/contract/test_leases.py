"""The lease contract (``LeaseStore`` in ``blokrun/datasources/protocol.py``) on every driver.

Leases keep two processes from driving one run at once; the fencing token makes a holder
that lost its lease (paused, partitioned, presumed dead) unable to write. Each test opens
its own datasources on the shared throwaway server, under a prefix of its own; "two
processes" are two datasources with their own connections (the cross-process race is in
``tests/integration/test_leases_runs.py``).
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import anyio.lowlevel

from blokrun.datasources import Datasource, build_datasource
from blokrun.datasources.filesystem import FilesystemStore
from blokrun.datasources.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from tests.servers.base import ThrowawayServer

LEASE = "_blokrun.lease.run-1"


@asynccontextmanager
async def _pair(server: ThrowawayServer, n: int = 2) -> AsyncIterator[list[Datasource]]:
    """``n`` datasources with their own connections over one prefix (one shared store)."""
    prefix = f"l-{uuid4().hex[:8]}/"
    base = server.settings("lease0", prefix=prefix)  # one table / database / bucket
    async with AsyncExitStack() as stack:
        out: list[Datasource] = []
        for i in range(n):
            ds = build_datasource(replace(base, name=f"lease{i}"))
            if server.driver == "memory" and out:
                ds = out[0]  # one process, one dict: the memory store is not shared
            else:
                await stack.enter_async_context(ds)
            out.append(ds)
        yield out


class FakeClock:
    """Wall-clock seconds that move only when told: lease expiry without sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def _timed_pair(
    server: ThrowawayServer,
) -> AsyncIterator[tuple[Datasource, Datasource, Callable[[float], Awaitable[None]]]]:
    """Two datasources over one store, and ``elapse(seconds)``: on the drivers that keep
    time in this process (memory, filesystem) an injected clock moves forward at once; a
    server keeps its own clock, so there it is a real sleep."""
    if server.driver not in ("memory", "filesystem"):
        async with _pair(server) as (a, b):
            yield a, b, anyio.sleep
        return
    clock = FakeClock()
    base = server.settings("lease0")
    if server.driver == "memory":
        shared = Datasource(base, MemoryStore(clock=clock))
        pair = [shared, shared]
    else:
        pair = [
            Datasource(
                replace(base, name=f"lease{i}"), FilesystemStore(str(base.path), clock=clock)
            )
            for i in range(2)
        ]

    async def elapse(seconds: float) -> None:
        clock.now += seconds
        await anyio.lowlevel.checkpoint()

    async with AsyncExitStack() as stack:
        for ds in {id(d): d for d in pair}.values():
            await stack.enter_async_context(ds)
        yield pair[0], pair[1], elapse


async def test_a_free_lease_is_taken_and_a_held_one_is_refused(server: ThrowawayServer) -> None:
    async with _pair(server) as (a, b):
        assert a.supports_leases and a.capabilities.leases
        assert await a.read_lease(LEASE) is None
        before = time.time_ns() // 1000
        mine = await a.acquire_lease(LEASE, "owner-a", 30)
        # a new lease's token is the (server's) clock in microseconds: above any token a
        # deleted lease of this key could have issued (protocol.next_token)
        assert mine.owner == "owner-a" and abs(mine.token - before) < 60_000_000
        assert mine.expires_at > time.time() + 20
        theirs = await b.acquire_lease(LEASE, "owner-b", 30)
        assert theirs.owner == "owner-a"  # refused: the state names the live holder
        assert theirs.token == mine.token
        stored = await b.read_lease(LEASE)
        assert stored is not None and (stored.owner, stored.token) == ("owner-a", mine.token)
        again = await a.acquire_lease(LEASE, "owner-a", 30)  # the holder may re-acquire
        assert again.owner == "owner-a" and again.token > mine.token


async def test_renew_and_release_follow_the_token(server: ThrowawayServer) -> None:
    async with _pair(server) as (a, b):
        first = await a.acquire_lease(LEASE, "owner-a", 30)
        assert await a.renew_lease(LEASE, "owner-a", first.token, 30) is True
        assert await a.renew_lease(LEASE, "owner-a", first.token + 7, 30) is False
        await b.release_lease(LEASE, "owner-b", first.token + 1)  # not the latest: ignored
        held = await b.acquire_lease(LEASE, "owner-b", 30)
        assert held.owner == "owner-a"
        await a.release_lease(LEASE, "owner-a", first.token)
        taken = await b.acquire_lease(LEASE, "owner-b", 30)
        assert taken.owner == "owner-b"
        assert taken.token > first.token  # the count survives a release
        assert await a.renew_lease(LEASE, "owner-a", first.token, 30) is False


async def test_an_expired_lease_can_be_taken_over(server: ThrowawayServer) -> None:
    ttl = 1.0
    async with _timed_pair(server) as (a, b, elapse):
        first = await a.acquire_lease(LEASE, "owner-a", ttl)
        assert (await b.acquire_lease(LEASE, "owner-b", 30)).owner == "owner-a"
        await elapse(ttl / 2)
        assert (await b.acquire_lease(LEASE, "owner-b", 30)).owner == "owner-a"  # still held
        # Expired but not taken: the holder's token is still the latest, so it may renew.
        await elapse(ttl / 2 + 0.3)
        assert await a.renew_lease(LEASE, "owner-a", first.token, ttl) is True
        await elapse(ttl + 0.3)
        taken = await b.acquire_lease(LEASE, "owner-b", 30)
        assert taken.owner == "owner-b" and taken.token > first.token
        assert await a.renew_lease(LEASE, "owner-a", first.token, ttl) is False


async def test_fenced_writes_stop_when_the_lease_is_taken(server: ThrowawayServer) -> None:
    async with _timed_pair(server) as (a, b, elapse):
        old = await a.acquire_lease(LEASE, "owner-a", 0.5)
        assert await a.save_batch_fenced([("k", b"a1", None), ("h", b"a1", None)], LEASE, old.token)
        assert await a.load("k") == b"a1"
        await elapse(0.8)
        new = await b.acquire_lease(LEASE, "owner-b", 30)
        assert new.owner == "owner-b"
        # The stale holder's write is rejected as a whole: nothing of it is stored.
        assert not await a.save_batch_fenced(
            [("k", b"a2", None), ("other", b"a2", None)], LEASE, old.token
        )
        assert await a.load("k") == b"a1"
        assert await a.load("other") is None
        assert await b.save_batch_fenced([("k", b"b1", 60.0)], LEASE, new.token)
        assert await a.load("k") == b"b1"
        # A token never issued is rejected too, as is any token for a lease never taken.
        assert not await b.save_batch_fenced([("k", b"x", None)], LEASE, new.token + 1)
        assert not await b.save_batch_fenced([("k", b"x", None)], LEASE + "-none", 1)
        assert await a.load("k") == b"b1"


async def test_only_one_of_many_racing_owners_wins(server: ThrowawayServer) -> None:
    n = 2 if server.driver == "memory" else 6
    async with _pair(server, n) as stores:
        results: dict[str, Any] = {}

        async def race(i: int, ds: Datasource) -> None:
            results[f"o{i}"] = await ds.acquire_lease(LEASE, f"o{i}", 30)

        async with anyio.create_task_group() as tg:
            for i, ds in enumerate(stores):
                tg.start_soon(race, i, ds)
        winners = [owner for owner, state in results.items() if state.owner == owner]
        assert len(winners) == 1, results
        assert {state.owner for state in results.values()} == set(winners)
        assert len({state.token for state in results.values()}) == 1  # one token issued


async def test_leases_of_different_runs_are_independent_and_keys_are_safe(
    server: ThrowawayServer,
) -> None:
    keys = [
        "_blokrun.lease.a",
        "_blokrun.lease.b",
        "_blokrun.lease.../../etc/passwd",
        "_blokrun.lease.キー 🚀",
        "_blokrun.lease." + "x" * 900,
    ]
    async with _pair(server) as (a, b):
        last: dict[str, int] = {}
        for i, key in enumerate(keys):
            for _ in range(i + 1):
                token = (await a.acquire_lease(key, "o", 30)).token
                assert token > last.get(key, 0), key  # every acquire issues a higher token
                last[key] = token
                await a.release_lease(key, "o", token)
        for key in keys:
            state = await b.read_lease(key)
            assert state is not None and state.token == last[key], key
            assert not state.live(time.time())
        assert await b.delete_lease(keys[0]) is True
        assert await b.delete_lease(keys[0]) is False
        assert await b.read_lease(keys[0]) is None
        fresh = await b.acquire_lease(keys[0], "o", 30)
        assert fresh.token > last[keys[0]]  # gc forgot the lease, not where its tokens were


async def test_a_deleted_lease_never_issues_an_old_token_again(server: ThrowawayServer) -> None:
    """gc deletes a run's lease (and a store may lose it): the tokens issued after that are
    above every token issued before, however fast the old ones were issued -- so a holder
    paused since then cannot find its token is the latest again (its write, renewal and
    release do nothing)."""
    async with _pair(server) as (a, b):
        issued = []
        for i in range(40):  # as fast as the store takes them: tokens outrun the clock
            state = await a.acquire_lease(LEASE, f"owner-{i % 3}", 30)
            issued.append(state.token)
            await a.release_lease(LEASE, state.owner, state.token)
        assert issued == sorted(set(issued))  # strictly increasing
        for _ in range(3):
            assert await b.delete_lease(LEASE)
            new = await b.acquire_lease(LEASE, "new", 30)
            assert new.token > max(issued), (new.token, max(issued))
            for old in (issued[0], issued[-1]):
                assert not await a.save_batch_fenced([("k", b"stale", None)], LEASE, old)
                assert not await a.renew_lease(LEASE, "owner-0", old, 30)
                await a.release_lease(LEASE, "owner-0", old)
            assert await b.save_batch_fenced([("k", b"mine", None)], LEASE, new.token)
            held = await b.read_lease(LEASE)
            assert held is not None and (held.owner, held.token) == ("new", new.token)
            assert held.live(time.time())
            issued.append(new.token)
        assert await b.load("k") == b"mine"


async def test_fenced_deletes_act_only_with_the_latest_token(server: ThrowawayServer) -> None:
    """gc's deletes: a batch, and the lease itself, are deleted only while the token given
    is the lease's latest -- a gc that lost its lease deletes nothing of whoever holds it."""
    async with _pair(server) as (a, b):
        old = await a.acquire_lease(LEASE, "gc", 30)
        await a.save_batch([("k1", b"1", None), ("k2", b"2", None), ("k3", b"3", None)])
        assert await a.delete_batch_fenced(["k1", "missing"], LEASE, old.token)
        assert await b.load_batch(["k1", "k2", "k3"]) == {"k2": b"2", "k3": b"3"}
        await a.release_lease(LEASE, "gc", old.token)
        new = await b.acquire_lease(LEASE, "resumer", 30)  # the lease passed on
        assert new.owner == "resumer"
        assert not await a.delete_batch_fenced(["k2", "k3"], LEASE, old.token)
        assert not await a.delete_batch_fenced(["k2"], LEASE + "-none", old.token)
        assert await b.load_batch(["k2", "k3"]) == {"k2": b"2", "k3": b"3"}
        assert not await a.delete_lease(LEASE, old.token)  # not gc's any more: kept
        held = await b.read_lease(LEASE)
        assert held is not None and (held.owner, held.token) == ("resumer", new.token)
        assert await b.delete_lease(LEASE, new.token)
        assert await b.read_lease(LEASE) is None
        assert not await b.delete_lease(LEASE, new.token)  # gone already


async def test_a_stale_holder_cannot_overwrite_after_takeover(server: ThrowawayServer) -> None:
    """The holder keeps writing while another takes over: once the takeover returned and
    the new holder wrote, the old holder's writes are rejected and the value stays."""
    async with _pair(server) as (a, b):
        old = await a.acquire_lease(LEASE, "owner-a", 0.3)
        rejected = anyio.Event()
        taken = anyio.Event()

        async def stale_writer() -> None:
            i = 0
            while not rejected.is_set():
                i += 1
                ok = await a.save_batch_fenced([("v", b"a%d" % i, None)], LEASE, old.token)
                if not ok and taken.is_set():
                    rejected.set()
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stale_writer)
            await anyio.sleep(0.5)
            new = await b.acquire_lease(LEASE, "owner-b", 30)
            assert new.owner == "owner-b"
            taken.set()
            assert await b.save_batch_fenced([("v", b"b", None)], LEASE, new.token)
            with anyio.fail_after(10):
                await rejected.wait()
        if b.capabilities.atomic_fencing:
            assert await b.load("v") == b"b"
