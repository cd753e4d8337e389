"""Taking a lease and reading keys in one round trip (``Capabilities.lease_reads``: Redis in
one script, PostgreSQL in one statement), against the real servers; the other drivers take
two round trips through the wrapper and must give the same answers.

What a run's start relies on: the values are the ones stored once the lease is taken --
never older than a write fenced by an earlier token (else a run could be taken for new and
started over on top of itself).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from uuid import uuid4

import pytest

from blokrun.datasources import build_datasource
from tests.contract.pg_stall import takeover_during_stalled_write

if TYPE_CHECKING:
    from blokrun.datasources import Datasource
    from tests.servers.base import ThrowawayServer

LEASE = "_blokrun.lease.run-1"
#: the drivers that keep leases here (MongoDB's emulator and S3 keep theirs too, but are
#: left to the lease contract suite: too slow to add nothing here)
pytestmark = pytest.mark.parametrize(
    "server", ["memory", "filesystem", "redis", "postgresql"], indirect=True
)


def open_ds(server: ThrowawayServer) -> Datasource:
    return build_datasource(server.settings("lr", prefix=f"lr-{uuid4().hex[:8]}/"))


async def test_reads_with_the_lease_what_load_batch_reads(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        one_trip = server.driver in ("redis", "postgresql")
        assert ds.capabilities.lease_reads == one_trip
        await ds.save_batch([("a", b"\x00one", None), ("b/c d", b"two", None)])
        keys = ["a", "b/c d", "missing", LEASE]  # the lease key itself holds no value
        state, values = await ds.acquire_lease_reading(LEASE, "me", 30, keys)
        assert state.owner == "me"
        assert values == await ds.load_batch(keys) == {"a": b"\x00one", "b/c d": b"two"}
        # held by another: its state comes back (the caller raises RunBusy)
        other, _ = await ds.acquire_lease_reading(LEASE, "you", 30, keys)
        assert (other.owner, other.token) == ("me", state.token)
        # taken again by its holder: a new token, and what is stored now
        await ds.save("missing", b"now here")
        again, values = await ds.acquire_lease_reading(LEASE, "me", 30, keys)
        assert again.owner == "me" and again.token > state.token
        assert values == await ds.load_batch(keys)
        assert values["missing"] == b"now here"
        # no keys: the lease alone
        alone, values = await ds.acquire_lease_reading("_blokrun.lease.other", "me", 30, [])
        assert alone.owner == "me" and values == {}


async def test_an_expired_value_is_not_read(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        await ds.save("gone", b"x", ttl=0.05)
        await asyncio.sleep(0.15)
        _, values = await ds.acquire_lease_reading(LEASE, "me", 30, ["gone"])
        assert values == {}


async def test_the_read_sees_a_fenced_write_the_acquire_waited_for(
    server: ThrowawayServer,
) -> None:
    """A takeover that meets the old holder's fenced write in flight (PostgreSQL: the write
    holds the lease row FOR SHARE; the acquire waits for its commit) must read that write:
    the statement's own snapshot predates it, so PostgreSQL gives no values for a lease
    that had a holder, and the wrapper reads afresh. A transaction holding the lock and
    inserting the head stands in for the stalled write."""
    if server.driver != "postgresql":
        pytest.skip(
            f"{server.driver}: no stalled write to stand in for: Redis runs the acquire and "
            "the read as one script; memory and filesystem read after the acquire, when a "
            "write fenced by the old token is refused"
        )
    settings = server.settings("lr", prefix="")
    async with build_datasource(settings) as ds:
        old_token, (state, values) = await takeover_during_stalled_write(
            ds,
            settings,
            LEASE,
            "INSERT INTO {table} (key, data) VALUES ($1, $2)",
            ("head", b"late"),
            lambda: ds.acquire_lease_reading(LEASE, "new", 30, ["head"]),
        )
        assert state.owner == "new" and state.token > old_token
        assert values == {"head": b"late"}
