"""The run index (:mod:`blokrun.datasources.index`) on every driver that keeps one, against
its real server: rows written with batches (plain, fenced, group-committed), the order and
filters of a page, compare-and-set repairs, building, removal -- and, with hypothesis, any
sequence of those against the in-memory reference."""

from __future__ import annotations

import string
from typing import TYPE_CHECKING
from uuid import uuid4

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blokrun.datasources import build_datasource
from blokrun.datasources.index import (
    IndexQuery,
    IndexRow,
    MemoryIndex,
    index_entry,
    order_key,
)

if TYPE_CHECKING:
    from blokrun.datasources import Datasource
    from tests.servers.base import ThrowawayServer

pytestmark = pytest.mark.parametrize(
    "server", ["memory", "filesystem", "redis", "postgresql"], indirect=True
)

T0 = 1_700_000_000.0


def row(rid: str, status: str = "running", at: float = T0, workflow: str = "wf") -> IndexRow:
    return IndexRow(rid, status, at, workflow)


def entry(r: IndexRow) -> tuple[str, bytes, float | None]:
    return index_entry(r.request_id, r.status, r.started_at, r.workflow)


async def put(ds: Datasource, *rows: IndexRow, data: bool = True) -> None:
    """Rows written the way heads are: in a batch beside a record."""
    batch = [entry(r) for r in rows]
    if data:
        batch.insert(0, (f"rec-{rows[0].request_id}", b"x", None))
    await ds.save_batch(batch)


async def page(ds: Datasource, **query: object) -> list[str]:
    return [r.request_id for r in await ds.index_query(IndexQuery(**query))]  # type: ignore[arg-type]


def open_ds(server: ThrowawayServer, prefix: str | None = None) -> Datasource:
    return build_datasource(server.settings("ix", prefix=prefix or f"ix-{uuid4().hex[:8]}/"))


async def test_rows_written_with_batches_are_listed_newest_first(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        assert ds.indexed
        await put(ds, row("b", at=T0 + 1), row("a", at=T0 + 1), row("c", at=T0 + 2))
        await put(ds, row("old", at=T0 - 5, status="failed"))
        assert await page(ds) == ["c", "a", "b", "old"]  # ties by request id
        assert await ds.load("rec-b") == b"x"
        # a later row replaces the run's row: status and time move it
        await put(ds, row("b", status="completed", at=T0 + 1))
        assert await page(ds, statuses=("completed",)) == ["b"]
        assert await page(ds, statuses=("running",)) == ["c", "a"]
        assert await page(ds, statuses=("running", "failed")) == ["c", "a", "old"]
        assert await ds.index_counts() == {"running": 2, "completed": 1, "failed": 1}
        # an unchanged row written again changes nothing
        await put(ds, row("b", status="completed", at=T0 + 1))
        assert await ds.index_counts() == {"running": 2, "completed": 1, "failed": 1}


async def test_filters_and_paging_cover_each_row_once(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        rows = [
            row(
                f"run-{i:03d}",
                status=("failed", "completed", "running")[i % 3],
                at=T0 + i // 2,  # pairs share a start time
                workflow=("alpha", "beta")[i % 2],
            )
            for i in range(60)
        ]
        for r in rows:
            await put(ds, r, data=False)
        expected = [
            r.request_id for r in sorted(rows, key=lambda r: order_key(r.request_id, r.started_at))
        ]
        seen: list[str] = []
        after = None
        while True:
            got = await ds.index_query(IndexQuery(after=after, limit=7))
            seen += [r.request_id for r in got]
            if len(got) < 7:
                break
            after = order_key(got[-1].request_id, got[-1].started_at)
        assert seen == expected
        beta_failed = [
            r.request_id
            for r in sorted(rows, key=lambda r: order_key(r.request_id, r.started_at))
            if r.workflow == "beta" and r.status == "failed"
        ]
        assert await page(ds, statuses=("failed",), workflow="beta", limit=100) == beta_failed
        assert (
            await page(ds, workflow="alpha", limit=3)
            == [r for r in expected if int(r[-3:]) % 2 == 0][:3]
        )
        assert await page(ds, since=T0 + 28, limit=100) == expected[:4]
        assert await page(ds, contains="-05", limit=100) == [r for r in expected if "-05" in r]
        assert await page(ds, statuses=("dead",)) == []
        # several statuses: one page, merged, cut at the limit
        assert (
            await page(ds, statuses=("failed", "running"), limit=5)
            == [r for r in expected if int(r[-3:]) % 3 in (0, 2)][:5]
        )


async def test_a_fenced_batch_refused_writes_no_row(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        held = await ds.acquire_lease("_blokrun.lease.r", "me", 30)
        assert await ds.save_batch_fenced(
            [("k", b"1", None), entry(row("r"))], "_blokrun.lease.r", held.token
        )
        await ds.release_lease("_blokrun.lease.r", "me", held.token)
        await ds.acquire_lease("_blokrun.lease.r", "thief", 30)
        stale = [("k", b"2", None), entry(row("r", status="completed"))]
        assert not await ds.save_batch_fenced(stale, "_blokrun.lease.r", held.token)
        assert await page(ds, statuses=("running",)) == ["r"]
        assert await page(ds, statuses=("completed",)) == []


async def test_group_committed_saves_keep_every_runs_row(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        leases = {i: await ds.acquire_lease(f"_blokrun.lease.g{i}", "me", 30) for i in range(40)}
        for i in range(0, 40, 8):  # taken over: their rows must not land
            await ds.release_lease(f"_blokrun.lease.g{i}", "me", leases[i].token)
            await ds.acquire_lease(f"_blokrun.lease.g{i}", "other", 30)

        async def one(i: int) -> None:
            batch = [(f"g{i}-s", b"v", None), entry(row(f"g{i:02d}", at=T0 + i))]
            await ds.save_batch_fenced(batch, f"_blokrun.lease.g{i}", leases[i].token)

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
        assert await page(ds, limit=100) == [f"g{i:02d}" for i in reversed(range(40)) if i % 8]


async def test_fix_is_compare_and_set(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        await put(ds, row("r", status="running"))
        stale = row("r", status="failed")
        assert not await ds.index_fix(stale, row("r", status="completed"))
        assert await page(ds, statuses=("running",)) == ["r"]
        assert await ds.index_fix(row("r"), row("r", status="completed", at=T0 + 9))
        (got,) = await ds.index_query(IndexQuery())
        assert got.same(row("r", status="completed", at=T0 + 9)) and not got.pending
        assert await ds.index_counts() == {"completed": 1}
        assert await ds.index_fix(got, None)
        assert await page(ds) == [] and await ds.index_counts() == {}
        assert not await ds.index_fix(got, None)  # gone already


async def test_fill_adds_only_missing_rows_and_marks_built(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        if server.driver != "memory":  # a memory store starts empty: built from the start
            assert not await ds.index_built()
        await put(ds, row("kept", status="completed"))
        await ds.index_fill([row("kept", status="running"), row("new", at=T0 + 1)])
        assert await page(ds, statuses=("completed",)) == ["kept"]
        assert await page(ds) == ["new", "kept"]
        await ds.index_fill([], built=True)
        assert await ds.index_built()


async def test_remove_and_spaces_are_separate(server: ThrowawayServer) -> None:
    async with open_ds(server, "one/") as one, open_ds(server, "two/") as two:
        await put(one, row("a"), row("b", at=T0 + 1))
        await put(two, row("a", status="failed"))
        assert await page(one) == ["b", "a"]
        assert await page(two) == ["a"] and await two.index_counts() == {"failed": 1}
        await one.index_remove(["a", "missing"])
        assert await page(one) == ["b"]
        assert await page(two) == ["a"]
        # index entries are never keys: nothing listed, nothing loadable
        assert not [k for k in await one.keys() if "ix" in k or "index" in k]


async def test_awkward_names_round_trip(server: ThrowawayServer) -> None:
    async with open_ds(server) as ds:
        names = ["wf\nwith newline", "é'\";--", "a b", "x" * 300]
        rids = ["r:1", "r~2", "r.3", "R_4-x"]
        for i, (rid, wf) in enumerate(zip(rids, names, strict=True)):
            await put(ds, row(rid, status="suspended", at=T0 + i, workflow=wf))
        for rid, wf in zip(rids, names, strict=True):
            assert await page(ds, workflow=wf) == [rid]
        got = await ds.index_query(IndexQuery(limit=10))
        assert [r.workflow for r in got] == names[::-1]
        assert await page(ds, contains="~") == ["r~2"]


_RIDS = st.sampled_from([f"r{c}" for c in string.ascii_lowercase[:6]])
_ROWS = st.builds(
    IndexRow,
    _RIDS,
    st.sampled_from(["running", "failed", "completed"]),
    st.integers(0, 5).map(lambda i: T0 + i),
    st.sampled_from(["a", "b"]),
)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _ROWS),
        st.tuples(st.just("fix"), _ROWS, st.one_of(st.none(), _ROWS)),
        st.tuples(st.just("remove"), _RIDS),
        st.tuples(st.just("fill"), _ROWS),
    ),
    min_size=4,
    max_size=40,
)
_QUERIES = st.builds(
    IndexQuery,
    statuses=st.one_of(
        st.none(),
        st.sets(st.sampled_from(["running", "failed", "completed"]), min_size=1).map(tuple),
    ),
    workflow=st.one_of(st.none(), st.sampled_from(["a", "b"])),
    since=st.one_of(st.none(), st.integers(0, 5).map(lambda i: T0 + i)),
    contains=st.one_of(st.none(), st.sampled_from(["a", "rb", "r"])),
    limit=st.integers(1, 8),
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_OPS, queries=st.lists(_QUERIES, min_size=1, max_size=4))
async def test_any_sequence_answers_like_the_reference(
    server: ThrowawayServer, ops: list[tuple[object, ...]], queries: list[IndexQuery]
) -> None:
    """Whatever the operations, every query answers what the in-memory reference does,
    and counts agree. (Fix's ``actual`` keeps the expected run's id, as callers do.)"""
    ref = MemoryIndex()
    async with open_ds(server) as ds:
        for op in ops:
            if op[0] == "put":
                r = op[1]
                assert isinstance(r, IndexRow)
                await put(ds, r, data=False)
                ref.put(r)
            elif op[0] == "fix":
                exp, act = op[1], op[2]
                assert isinstance(exp, IndexRow)
                if isinstance(act, IndexRow):
                    act = IndexRow(exp.request_id, act.status, act.started_at, act.workflow)
                assert await ds.index_fix(exp, act) == ref.fix(exp, act)  # type: ignore[arg-type]
            elif op[0] == "remove":
                await ds.index_remove([str(op[1])])
                ref.remove([str(op[1])])
            else:
                r = op[1]
                assert isinstance(r, IndexRow)
                await ds.index_fill([r])
                ref.fill([r], False)
        for q in queries:
            got = [(r.request_id, r.status, r.workflow) for r in await ds.index_query(q)]
            want = [(r.request_id, r.status, r.workflow) for r in ref.query(q)]
            assert got == want, q
        assert await ds.index_counts() == ref.counts()
