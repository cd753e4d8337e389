"""Taking a lease, checking keys are free and writing a batch in one round trip and one
atomic step (``Capabilities.lease_writes``: Redis in one script, PostgreSQL in one
statement), against the real servers; the other drivers write nothing with the lease and
say so, and the caller saves the batch itself.

What a new run's start relies on: its start record is written only by the holder of a
new lease, only where nothing of the run exists yet -- never over another run's record,
never by two racing starts of the same id.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from uuid import uuid4

import pytest

from blokrun.datasources import build_datasource
from blokrun.datasources.index import index_entry
from blokrun.datasources.protocol import RELEASE_ENTRY, owned_key
from blokrun.errors import DatasourceError
from tests.contract.pg_stall import takeover_during_stalled_write

if TYPE_CHECKING:
    from blokrun.datasources import Datasource
    from tests.servers.base import ThrowawayServer

LEASE = "_blokrun.lease.run-1"
KEYS = ["head", "run"]
BATCH = [("definition", b"def", None), ("run", b"run record", None), ("head", b"running", None)]
pytestmark = pytest.mark.parametrize(
    "server", ["memory", "filesystem", "redis", "postgresql"], indirect=True
)


def open_ds(server: ThrowawayServer) -> Datasource:
    return build_datasource(server.settings("lw", prefix=f"lw-{uuid4().hex[:8]}/"))


def one_trip(server: ThrowawayServer) -> bool:
    return server.driver in ("redis", "postgresql")


async def test_writes_with_a_new_lease_when_every_key_is_free(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        assert ds.capabilities.lease_writes == one_trip(server)
        state, values, written = await ds.acquire_lease_writing(LEASE, "me", 30, KEYS, BATCH)
        assert state.owner == "me"
        assert values == {}
        assert written == one_trip(server)
        stored = await ds.load_batch([k for k, _, _ in BATCH])
        expected = {k: v for k, v, _ in BATCH} if written else {}
        assert stored == expected
        # the writes were fenced by the new token: the lease is the one that wrote them
        assert await ds.save_batch_fenced([("after", b"x", None)], LEASE, state.token)


async def test_a_key_that_holds_anything_stops_the_write(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        await ds.save("run", b"another run's record")
        state, values, written = await ds.acquire_lease_writing(LEASE, "me", 30, KEYS, BATCH)
        assert state.owner == "me"  # the lease is taken all the same: the caller decides
        assert not written
        assert values == {"run": b"another run's record"}
        assert await ds.load_batch(["definition", "head", "run"]) == {
            "run": b"another run's record"
        }


async def test_another_holder_stops_the_write(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        held = await ds.acquire_lease(LEASE, "you", 30)
        state, _, written = await ds.acquire_lease_writing(LEASE, "me", 30, KEYS, BATCH)
        assert (state.owner, state.token) == ("you", held.token)
        assert not written
        assert await ds.load_batch([k for k, _, _ in BATCH]) == {}


async def test_a_lease_that_had_a_holder_writes_only_where_the_check_is_sure(
    server: ThrowawayServer,
) -> None:
    """Taken again after a release (token 2), with the keys free: Redis checks inside its
    script and writes; PostgreSQL's statement snapshot may predate the last holder's write,
    so it writes nothing and says so (the caller saves, as before)."""
    async with open_ds(server) as ds:
        first = await ds.acquire_lease(LEASE, "old", 30)
        await ds.release_lease(LEASE, "old", first.token)
        state, values, written = await ds.acquire_lease_writing(LEASE, "me", 30, KEYS, BATCH)
        assert state.owner == "me" and state.token > first.token
        assert values == {}
        assert written == (server.driver == "redis")


async def test_an_expired_value_counts_as_free(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        await ds.save("head", b"old", ttl=0.05)
        await asyncio.sleep(0.15)
        _, values, written = await ds.acquire_lease_writing(LEASE, "me", 30, KEYS, BATCH)
        assert values == {}
        assert written == one_trip(server)
        if written:
            assert await ds.load("head") == b"running"


async def test_an_owned_or_release_entry_is_refused_before_anything_is_taken(
    server: ThrowawayServer,
) -> None:
    async with open_ds(server) as ds:
        for bad in ((owned_key("alias"), b"me\x00x", None), RELEASE_ENTRY):
            if not ds.capabilities.lease_writes:
                break  # nothing is written with the lease there: nothing to refuse
            with pytest.raises(DatasourceError, match="plain and index entries only"):
                await ds.acquire_lease_writing(LEASE, "me", 30, KEYS, [*BATCH, bad])
        assert await ds.read_lease(LEASE) is None
        assert await ds.load_batch([k for k, _, _ in BATCH]) == {}


async def test_the_index_row_goes_with_the_batch(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        if not ds.indexed:
            pytest.skip(f"{server.driver}: keeps no run index")
        batch = [*BATCH, index_entry("run-1", "running", 1.5, "wf")]
        _, _, written = await ds.acquire_lease_writing(LEASE, "me", 30, KEYS, batch)
        if not written:
            await ds.save_batch(batch)  # what the caller does where it was not written
        counts = await ds.index_counts()
        assert counts == {"running": 1}


async def test_of_racing_starts_of_one_id_exactly_one_writes(server: ThrowawayServer) -> None:
    """Twenty processes start the same new run at once: one lease, one start record -- the
    winner's -- and every other gets the winner as the holder."""
    async with open_ds(server) as ds:

        async def start(i: int) -> tuple[str, bool]:
            batch = [(k, f"{v.decode()} of {i}".encode(), t) for k, v, t in BATCH]
            state, _, written = await ds.acquire_lease_writing(LEASE, f"p{i}", 30, KEYS, batch)
            return state.owner, written

        results = await asyncio.gather(*(start(i) for i in range(20)))
        owners = {owner for owner, _ in results}
        assert len(owners) == 1
        (winner,) = owners
        writers = [i for i, (_, written) in enumerate(results) if written]
        if one_trip(server):
            assert writers == [int(winner[1:])]
            assert await ds.load("head") == f"running of {winner[1:]}".encode()
        else:
            assert writers == []


async def test_a_key_to_match_must_hold_exactly_those_bytes(server: ThrowawayServer) -> None:
    """A resume's compare-and-set on its head: written only where the head is byte for byte
    the one planned on -- on a driver that can check it in the same step (Redis in its
    script, PostgreSQL by an UPDATE); the others take the lease and write nothing."""
    async with open_ds(server) as ds:
        matches = server.driver in ("redis", "postgresql")
        assert ds.lease_matches == matches
        await ds.save("head", b"planned on")
        for stored in (b"planned on!", b"planned o", b""):
            if stored:
                await ds.save("head", stored)
            else:
                await ds.delete("head")
            state, _, written = await ds.acquire_lease_writing(
                LEASE, "me", 30, KEYS, BATCH, match={"head": b"planned on"}
            )
            assert state.owner == "me" and not written, stored
            await ds.release_lease(LEASE, "me", state.token)
        await ds.save("head", b"planned on")
        # the head to match, and the run record that must be free: only Redis checks both
        state, values, written = await ds.acquire_lease_writing(
            LEASE, "me", 30, KEYS, BATCH, match={"head": b"planned on"}
        )
        assert values == {"head": b"planned on"}
        assert written == (server.driver == "redis")
        await ds.release_lease(LEASE, "me", state.token)
        if not written:  # the head alone: a resume's compare-and-set
            state, values, written = await ds.acquire_lease_writing(
                LEASE, "me", 30, ["head"], BATCH, match={"head": b"planned on"}
            )
            assert written == matches
            assert values["head"] in (b"planned on", b"running")  # as read, or as written
        assert await ds.load("head") == (b"running" if matches else b"planned on")


async def test_a_key_to_match_that_is_not_read_is_refused(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        with pytest.raises(DatasourceError, match="among the keys read"):
            await ds.acquire_lease_writing(LEASE, "me", 30, ["run"], BATCH, match={"head": b"x"})
        assert await ds.read_lease(LEASE) is None


async def test_a_key_of_another_type_is_neither_free_nor_a_match(server: ThrowawayServer) -> None:
    if server.driver != "redis":
        pytest.skip(f"{server.driver}: keys hold bytes only")
    async with open_ds(server) as ds:
        client = ds.store.client()  # type: ignore[attr-defined]
        await client.hset(ds.settings.prefix + "head", "field", "value")
        for match in (None, {"head": b"value"}, {"head": b""}):
            state, values, written = await ds.acquire_lease_writing(
                LEASE, "me", 30, KEYS, BATCH, match=match
            )
            assert not written and "head" not in values, match
            await ds.release_lease(LEASE, "me", state.token)
        assert await client.type(ds.settings.prefix + "head") == b"hash"


async def test_the_compare_sees_a_write_the_acquire_waited_for(server: ThrowawayServer) -> None:
    """PostgreSQL: a takeover that meets the old holder's write in flight (it holds the
    lease row FOR SHARE and has moved the head on, not yet committed) waits for it, and
    its compare-and-set then sees the head it wrote -- not the statement's older snapshot --
    and writes nothing."""
    if server.driver != "postgresql":
        pytest.skip(f"{server.driver}: no statement snapshot to predate a write")
    settings = server.settings("lw", prefix="")
    async with build_datasource(settings) as ds:
        await ds.save("head", b"planned on")
        old_token, (state, _, written) = await takeover_during_stalled_write(
            ds,
            settings,
            LEASE,
            "UPDATE {table} SET data = $2 WHERE key = $1",
            ("head", b"moved on"),
            lambda: ds.acquire_lease_writing(
                LEASE, "new", 30, ["head"], BATCH, match={"head": b"planned on"}
            ),
        )
        assert state.owner == "new" and state.token > old_token
        assert not written
        assert await ds.load_batch(["head", "definition", "run"]) == {"head": b"moved on"}
