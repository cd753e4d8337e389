"""Owned entries (``Capabilities.owned_writes``) on the drivers that write them, against
their real servers: written where the key is free or already the owner's, refused (and
told) where another owner or a foreign value holds it -- in plain, fenced and
group-committed batches, checked and written in one step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import pytest

from blokrun.datasources import build_datasource
from blokrun.datasources.protocol import owned_key

if TYPE_CHECKING:
    from blokrun.datasources import Datasource
    from tests.servers.base import ThrowawayServer

#: Redis writes owned entries in its save scripts, PostgreSQL in a CTE of its save statement;
#: the memory driver (where a read costs no round trip) and the others keep the recorder's
#: read-then-write
pytestmark = pytest.mark.parametrize("server", ["redis", "postgresql"], indirect=True)


def value(owner: str, body: str = "v") -> bytes:
    return b"\xb1BKA" + owner.encode() + b"\x00" + body.encode()


def open_ds(server: ThrowawayServer) -> Datasource:
    return build_datasource(server.settings("ow", prefix=f"ow-{uuid4().hex[:8]}/"))


async def test_free_or_own_is_written_another_owners_is_refused(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        assert ds.capabilities.owned_writes
        await ds.save_batch([(owned_key("k"), value("a", "1"), None), ("x", b"plain", None)])
        assert await ds.load("k") == value("a", "1")
        assert not ds.refused("k")
        await ds.save_batch([(owned_key("k"), value("a", "2"), None)])  # the same owner
        assert await ds.load("k") == value("a", "2")
        await ds.save_batch([(owned_key("k"), value("b", "3"), None), ("y", b"also", None)])
        assert await ds.load("k") == value("a", "2")  # kept: another owner's
        assert await ds.load("y") == b"also"  # the rest of the batch is written
        assert ds.refused("k") and not ds.refused("k")  # told once
        # a prefix of the owner is not the owner: "a" does not own what "ab" wrote
        await ds.save_batch([(owned_key("p"), value("ab"), None)])
        await ds.save_batch([(owned_key("p"), value("a"), None)])
        assert await ds.load("p") == value("ab")


async def test_foreign_values_and_values_without_an_owner(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        await ds.save("data", b"a user's own value")
        await ds.save_batch([(owned_key("data"), value("a"), None)])
        assert await ds.load("data") == b"a user's own value"
        assert ds.refused("data")
        await ds.save_batch([(owned_key("none"), b"no NUL here", None)])
        assert await ds.load("none") is None  # no owner: never written as owned
        # a lease is never replaced by an owned write
        await ds.acquire_lease("_blokrun.lease.r", "me", 30)
        await ds.save_batch([(owned_key("_blokrun.lease.r"), value("a"), None)])
        assert (await ds.read_lease("_blokrun.lease.r")) is not None


async def test_an_expired_value_is_free(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        await ds.save_batch([(owned_key("t"), value("a"), 0.05)])
        await anyio.sleep(0.15)
        await ds.save_batch([(owned_key("t"), value("b"), None)])
        assert await ds.load("t") == value("b")


async def test_fenced_and_grouped_writes_keep_the_rule(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        await ds.save_batch([(owned_key("shared"), value("first"), None)])
        held = await ds.acquire_lease("_blokrun.lease.f", "me", 30)
        assert await ds.save_batch_fenced(
            [("c1", b"ckpt", None), (owned_key("shared"), value("second"), None)],
            "_blokrun.lease.f",
            held.token,
        )
        assert await ds.load("c1") == b"ckpt"
        assert await ds.load("shared") == value("first")
        assert ds.refused("shared")
        # a fence that refuses writes nothing, owned entries included
        await ds.release_lease("_blokrun.lease.f", "me", held.token)
        await ds.acquire_lease("_blokrun.lease.f", "thief", 30)
        assert not await ds.save_batch_fenced(
            [(owned_key("fresh"), value("me"), None)], "_blokrun.lease.f", held.token
        )
        assert await ds.load("fresh") is None
        # many runs at once (group commit where the driver has it): each keeps its own
        leases = {i: await ds.acquire_lease(f"_blokrun.lease.g{i}", "me", 30) for i in range(30)}

        async def one(i: int) -> None:
            batch = [(owned_key(f"g{i % 3}"), value(f"run{i}"), None)]
            await ds.save_batch_fenced(batch, f"_blokrun.lease.g{i}", leases[i].token)

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, i)
        owners = {await ds.load(f"g{j}") for j in range(3)}
        assert len(owners) == 3  # one owner each, whoever came first
        for j in range(3):
            raw = await ds.load(f"g{j}")
            assert raw is not None and raw.startswith(b"\xb1BKArun")


async def test_owned_rows_beside_index_rows_and_a_doubled_key_in_one_flush(
    server: ThrowawayServer,
) -> None:
    """The statement variants: owned entries with run index rows, and two runs' saves that
    carry the same owned key in one group-commit flush (the first one's is kept)."""
    from blokrun.datasources.index import IndexQuery, index_entry

    async with open_ds(server) as ds:
        await ds.save_batch(
            [(owned_key("a1"), value("r1"), None), index_entry("r1", "running", 1.0, "w")]
        )
        assert await ds.load("a1") == value("r1")
        held = await ds.acquire_lease("_blokrun.lease.r2", "me", 30)
        assert await ds.save_batch_fenced(
            [(owned_key("a1"), value("r2"), None), index_entry("r2", "failed", 2.0, "w")],
            "_blokrun.lease.r2",
            held.token,
        )
        assert await ds.load("a1") == value("r1") and ds.refused("a1")
        assert [r.request_id for r in await ds.index_query(IndexQuery())] == ["r2", "r1"]
        if not ds.capabilities.group_commit:
            return
        store: Any = ds.store
        p = ds.settings.prefix
        groups = [
            ([("\x1f" + p + "dup", value("g1"), None)], None, 0),
            ([("\x1f" + p + "dup", value("g2"), None), (p + "other", b"x", None)], None, 0),
        ]
        assert await store.save_groups(groups) == [True, True]
        assert await ds.load("dup") == value("g1")  # the first group's
        assert await ds.load("other") == b"x"
        assert ds.refused("dup")
