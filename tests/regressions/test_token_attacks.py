"""Attacks on fencing tokens from the clock (4516ddb), by a hostile review; the first three
failed on that code and are fixed:

* ``test_gc_that_outlives_its_lease_*``: gc took a run's lease but never renewed it and
  never fenced its deletes, so a gc whose deletion outlived the lease's TTL (a pause, or
  simply a large run) deleted a run that was resumed meanwhile -- and the resumer's live
  lease with it. gc now renews its lease before each batch, fences each batch on the
  lease's datasource (``delete_batch_fenced``) and deletes the lease only with its own
  token (``delete_lease(key, token)``).
* ``test_gc_that_outlives_its_lease_does_not_delete_a_new_runs_live_lease``: the same gc,
  paused before ``delete_lease``, deleted a new run's live lease (stopping it with
  LeaseLost).
* ``test_a_clock_step_back_does_not_reissue_a_token_on_the_memory_store``: a clock that
  steps back by a microsecond reissued a deleted lease's token; the memory store keeps a
  floor now (the other drivers need their clock not to step back: LeaseStore's rules).
* The rest held: evidence kept.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import pytest

from blokrun import Runner, StepFailed
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource, protocol
from blokrun.datasources.memory import MemoryStore
from blokrun.errors import RunBusy, RunNotFound
from blokrun.persistence.keys import lease_key
from tests.integration import wfnodes
from tests.regressions.test_token_after_gc import _zombie

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import ServerPool

NODE = "tests.integration.wfnodes"


def flow(name: str = "gcz") -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i}} for i in range(1, 4)
        ],
    }


def _settings(request: pytest.FixtureRequest, driver: str, tmp_path: Path) -> DatasourceSettings:
    if driver == "filesystem":
        return DatasourceSettings(name="default", type="filesystem", path=str(tmp_path / "fs"))
    pool: ServerPool = request.getfixturevalue("server_pool")
    return pool.get(driver).settings("default", prefix=f"ta-{uuid4().hex[:8]}/")


# -- 1. gc is a lease holder that is never fenced -------------------------------------------


class FrozenDeletes:
    """``ds``'s first delete (fenced or not) waits until thawed: gc paused (a long GC pause,
    a frozen VM) or simply slow (a run with many checkpoints) in the middle of its deletion."""

    def __init__(self, ds: Datasource, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = anyio.Event()
        self.thawed = anyio.Event()
        plain, fenced = type(ds).delete_batch, type(ds).delete_batch_fenced

        async def stall(inner: Datasource) -> None:
            if inner is ds and not self.thawed.is_set():
                self.entered.set()
                await self.thawed.wait()

        async def delete_batch(inner: Datasource, keys: Any) -> int:
            await stall(inner)
            n: int = await plain(inner, keys)
            return n

        async def delete_batch_fenced(inner: Datasource, keys: Any, lease: str, token: int) -> bool:
            await stall(inner)
            held: bool = await fenced(inner, keys, lease, token)
            return held

        monkeypatch.setattr(type(ds), "delete_batch", delete_batch)
        monkeypatch.setattr(type(ds), "delete_batch_fenced", delete_batch_fenced)


@pytest.mark.parametrize("driver", ["redis", "postgresql", "filesystem"])
async def test_gc_that_outlives_its_lease_leaves_no_half_resumed_run(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    driver: str,
) -> None:
    """A failed run ``z`` is collected by gc (process G), which takes ``z``'s lease and
    starts deleting. G takes longer than the lease's TTL, and B resumes ``z``. Before, B
    completed it and G, its deletes unfenced, deleted B's completed run (a retry of the id
    then ran every step again). Now G marked z's head "collecting" before deleting
    anything: B's resume is refused and runs nothing, and G finishes the deletion."""
    settings = _settings(request, driver, tmp_path)
    wfnodes.FAIL_AT.add("s2")
    ds_g, ds_b = build_datasource(settings), build_datasource(settings)
    frozen = FrozenDeletes(ds_g, monkeypatch)
    async with Runner([ds_g], lease_ttl=0.3) as g, Runner([ds_b], lease_ttl=0.3) as b:
        with pytest.raises(StepFailed):
            await b.run(flow(), {"total": 0}, request_id="z")
        wfnodes.FAIL_AT.clear()
        reports: list[Any] = []

        async def collect() -> None:
            reports.append(
                await g.collect_garbage(completed_older_than=None, failed_older_than=0.0)
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            with anyio.fail_after(10):
                await frozen.entered.wait()  # G holds z's lease and is about to delete
            await anyio.sleep(0.6)  # G's lease runs out (nobody renews it)
            wfnodes.CALLS.clear()
            with pytest.raises(RunBusy, match="being deleted by gc"):
                await b.resume("z")
            assert wfnodes.CALLS == []
            frozen.thawed.set()
        with pytest.raises(RunNotFound):
            await b.head("z")  # gc finished: nothing of z is left
        lease = await ds_b.read_lease(lease_key("z"))
    assert [r.request_id for r in reports[0].runs] == ["z"], reports[0].errors
    assert lease is None


class FrozenLeaseDelete:
    """``ds``'s ``delete_lease`` waits until thawed (gc paused just before it)."""

    def __init__(self, ds: Datasource, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = anyio.Event()
        self.thawed = anyio.Event()
        original = type(ds).delete_lease

        async def delete_lease(inner: Datasource, key: str, token: int | None = None) -> bool:
            if inner is ds:
                self.entered.set()
                await self.thawed.wait()
            done: bool = await original(inner, key, token)
            return done

        monkeypatch.setattr(type(ds), "delete_lease", delete_lease)


@pytest.mark.parametrize("driver", ["redis", "postgresql", "filesystem"])
async def test_gc_that_outlives_its_lease_does_not_delete_a_new_runs_live_lease(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    driver: str,
) -> None:
    """gc has deleted run ``z``'s records and pauses before ``delete_lease`` longer than its
    lease's TTL. A new run of ``z`` starts (the id is free, the lease expired) and takes the
    lease. gc wakes: it must leave the new run's lease alone (before, ``delete_lease`` was
    unconditional: the new run's next checkpoint was refused with LeaseLost, though nobody
    else ever held its lease, and its head was left saying "running")."""
    from tests.regressions import nodes

    settings = _settings(request, driver, tmp_path)
    ds_g, ds_c = build_datasource(settings), build_datasource(settings)
    frozen = FrozenLeaseDelete(ds_g, monkeypatch)
    nodes.PAUSED[:] = [anyio.Event()]
    nodes.PAUSED_ONCE.clear()
    paused_flow = {
        "name": "c",
        "steps": [
            {"name": "s1", "node": "tests.regressions.nodes:pause_first", "inputs": {"n": 1}},
            {"name": "s2", "node": "tests.regressions.nodes:pause_first", "inputs": {"n": 1}},
        ],
    }
    outcome: list[Any] = []
    try:
        async with Runner([ds_g], lease_ttl=0.3) as g, Runner([ds_c], lease_ttl=0.3) as c:
            done = await c.run(flow(), {"total": 0}, request_id="z")
            assert done.status == "completed"

            async def collect() -> None:
                await g.collect_garbage(completed_older_than=0.0, failed_older_than=None)

            async def run_c() -> None:
                try:
                    outcome.append(await c.run(paused_flow, {"total": 0}, request_id="z"))
                except Exception as exc:  # what the new run ended with
                    outcome.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(collect)
                with anyio.fail_after(10):
                    await frozen.entered.wait()  # z's records are gone; its lease not yet
                await anyio.sleep(0.6)  # gc's lease runs out
                tg.start_soon(run_c)
                with anyio.fail_after(10):
                    while not nodes.PAUSED_ONCE:  # noqa: ASYNC110 -- C is in s1, holding z
                        await anyio.sleep(0.01)
                frozen.thawed.set()  # gc deletes "its" lease: C's
                await anyio.sleep(0.2)
                nodes.PAUSED[0].set()
    finally:
        nodes.PAUSED.clear()
        nodes.PAUSED_ONCE.clear()
    assert not isinstance(outcome[0], Exception), (
        f"the new run, which held z's lease all along, was stopped: {outcome[0]!r}"
    )


# -- 2. the contract's "higher than any token ever issued", with a clock that steps back --


class SteppingClock:
    """``time.time_ns`` as protocol.next_token reads it, set by the test (an NTP step, a VM
    restored from a snapshot: the wall clock is not monotonic)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.us = 1_800_000_000_000_000
        clock = self

        class _Time:
            @staticmethod
            def time_ns() -> int:
                return clock.us * 1000

        monkeypatch.setattr(protocol, "time", _Time)


async def test_a_clock_step_back_does_not_reissue_a_token_on_the_memory_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A holds token T, issued at clock T; gc-style ``delete_lease``; the clock steps back
    by 1 us; B acquires and acquires again, as a takeover from a dead holder does (acquire
    under the dead owner's name, release, acquire under one's own). Before, B got T -- A's
    token -- and A's fenced write landed on B's lease; the memory store now keeps the
    highest token of a deleted lease as a floor."""
    clock = SteppingClock(monkeypatch)
    settings = DatasourceSettings(name="default", type="memory")
    store = MemoryStore()
    async with Datasource(settings, store) as ds:
        key = "_blokrun.lease.z"
        a = await ds.acquire_lease(key, "A", 30)
        assert a.token == clock.us
        assert await ds.delete_lease(key)
        clock.us -= 1  # the wall clock steps back one microsecond
        dead = await ds.acquire_lease(key, "dead", 30)
        await ds.release_lease(key, "dead", dead.token)
        b = await ds.acquire_lease(key, "B", 30)
        assert await ds.save_batch_fenced([("head", b"B's head", None)], key, b.token)
        # A wakes up: its write must be refused (B holds the lease)
        stale = await ds.save_batch_fenced([("head", b"A's stale head", None)], key, a.token)
        assert not stale and await ds.load("head") == b"B's head", (
            f"A's stale write landed over B's lease: A had token {a.token}; after the delete "
            f"and a 1 us clock step back, {dead.token} then B's {b.token} were issued"
        )


# -- 3. what held -----------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["mongodb", "s3"])
@pytest.mark.parametrize("forget", ["gc", "lost data"])
async def test_zombie_after_gc_on_the_other_shared_drivers(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    driver: str,
    forget: str,
) -> None:
    """Held: the regression's frozen holder, on the two drivers it does not cover."""
    await _zombie(_settings(request, driver, tmp_path), monkeypatch, forget)


@pytest.mark.parametrize("driver", ["redis", "postgresql", "mongodb", "s3", "filesystem"])
async def test_racing_first_acquires_after_each_delete(
    request: pytest.FixtureRequest, tmp_path: Path, driver: str
) -> None:
    """Held: rounds of 6 racing acquirers (own connections) of a key gc deleted: exactly one
    wins, all see its token, and every round's token is above every earlier one."""
    base = _settings(request, driver, tmp_path)
    stores = [build_datasource(replace(base, name=f"r{i}")) for i in range(6)]
    async with AsyncExitStack() as st:
        for ds in stores:
            await st.enter_async_context(ds)
        key = "_blokrun.lease.race"
        highest = 0
        for _ in range(8):
            results: dict[str, Any] = {}

            async def take(i: int, ds: Datasource, results: dict[str, Any] = results) -> None:
                results[f"o{i}"] = await ds.acquire_lease(key, f"o{i}", 30)

            async with anyio.create_task_group() as tg:
                for i, ds in enumerate(stores):
                    tg.start_soon(take, i, ds)
            winners = [o for o, s in results.items() if s.owner == o]
            assert len(winners) == 1, results
            tokens = {s.token for s in results.values()}
            assert len(tokens) == 1, results
            (token,) = tokens
            assert token > highest, (token, highest)
            highest = token
            assert await stores[0].delete_lease(key)


async def test_postgresql_fresh_row_racing_writers_write_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Held: on PostgreSQL, racing ``acquire_lease_writing`` of a deleted lease row (a new
    run of a collected id, started from 6 processes): exactly one is told its row is new
    and writes; the others write nothing and see the winner's write."""
    base = _settings(request, "postgresql", tmp_path)
    stores = [build_datasource(replace(base, name=f"w{i}")) for i in range(6)]
    async with AsyncExitStack() as st:
        for ds in stores:
            await st.enter_async_context(ds)
        key = "_blokrun.lease.w"
        for round_ in range(6):
            out: dict[int, Any] = {}

            async def take(
                i: int, ds: Datasource, r: int = round_, out: dict[int, Any] = out
            ) -> None:
                out[i] = await ds.acquire_lease_writing(
                    key, f"o{i}", 30, [f"h{r}"], [(f"h{r}", f"by {i}".encode(), None)]
                )

            async with anyio.create_task_group() as tg:
                for i, ds in enumerate(stores):
                    tg.start_soon(take, i, ds)
            wrote = [i for i, (_, _, w) in out.items() if w]
            assert len(wrote) == 1, out
            (w,) = wrote
            state, found, _ = out[w]
            # the keys as they were before the write (none): from the statement's snapshot
            assert state.owner == f"o{w}" and found == {}
            for i, (s, f, _) in out.items():
                if i != w:
                    # refused: the wrapper read the keys after the statement (the winner's)
                    assert s.owner == f"o{w}" and f == {f"h{round_}": f"by {w}".encode()}
            assert await stores[0].load(f"h{round_}") == f"by {w}".encode()
            assert await stores[0].delete_lease(key)


async def test_postgresql_same_owner_reacquire_in_one_transaction_is_not_fresh(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Held (and a probe of now() as the transaction's clock): two acquires of one new row
    inside one transaction share ``now()``; the second is an update (token + 1), not new."""
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    from blokrun.datasources.postgresql import PostgresStore

    base = _settings(request, "postgresql", tmp_path)
    async with Datasource(base, build_datasource(base).store) as ds:
        store = ds.store
        assert isinstance(store, PostgresStore)
        sql = store._sql["acquire_reading"]
        con: Any = await asyncpg.connect(base.url)
        try:
            async with con.transaction():
                first = await con.fetchrow(sql, "k1", "o", 30.0, [])
                second = await con.fetchrow(sql, "k1", "o", 30.0, [])
                await con.execute(store._sql["delete_lease"], "k1")
                third = await con.fetchrow(sql, "k1", "o", 30.0, [])
                raise asyncio.CancelledError  # roll back
        except asyncio.CancelledError:
            pass
        finally:
            await con.close()
    assert first[5] and not second[5] and second[1] == first[1] + 1
    # a delete and a new row inside one transaction: the same now(), the same token again
    # (no blokrun code does this: every lease statement is its own transaction)
    assert third[5] and third[1] == first[1]


class FrozenUnindex:
    """``ds``'s ``index_remove`` waits until thawed (gc paused after deleting the head,
    before removing the run's index row)."""

    def __init__(self, ds: Datasource, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = anyio.Event()
        self.thawed = anyio.Event()
        original = type(ds).index_remove

        async def index_remove(inner: Datasource, rids: Any, **kwargs: Any) -> Any:
            if inner is ds:
                self.entered.set()
                await self.thawed.wait()
            return await original(inner, rids, **kwargs)

        monkeypatch.setattr(type(ds), "index_remove", index_remove)


@pytest.mark.parametrize("driver", ["redis", "postgresql", "filesystem"])
async def test_gc_that_outlives_its_lease_does_not_unlist_a_new_run(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    driver: str,
) -> None:
    """gc has deleted run ``z`` (its head included) and pauses before removing z's row from
    the run index, longer than its lease's TTL. A new run of ``z`` runs and fails. gc wakes:
    it must not remove the new run's row -- a failed run missing from the index is missing
    from ``list_runs`` (``blokrun runs``), where users find runs to resume."""
    settings = _settings(request, driver, tmp_path)
    ds_g, ds_c = build_datasource(settings), build_datasource(settings)
    frozen = FrozenUnindex(ds_g, monkeypatch)
    async with Runner([ds_g], lease_ttl=0.3) as g, Runner([ds_c], lease_ttl=0.3) as c:
        assert (await c.run(flow(), {"total": 0}, request_id="z")).status == "completed"

        async def collect() -> None:
            await g.collect_garbage(completed_older_than=0.0, failed_older_than=None)

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            with anyio.fail_after(10):
                await frozen.entered.wait()  # z is deleted; its index row not yet
            await anyio.sleep(0.6)  # gc's lease runs out
            wfnodes.FAIL_AT.add("s2")
            try:
                with pytest.raises(StepFailed):
                    await c.run(flow("again"), {"total": 0}, request_id="z")
            finally:
                wfnodes.FAIL_AT.clear()
            frozen.thawed.set()
        listed = [r.request_id for r in (await c.list_runs(status="failed")).runs]
    assert listed == ["z"], f"the new failed run z is not listed: {listed}"
