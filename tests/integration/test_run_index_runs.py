"""The run index under a Runner, attacked: what ``list_runs`` / ``count_runs`` answer through
the index must be what reading every head answers, whatever happened to the index -- a
write torn between row and head, an index file deleted, rows of runs that are gone, rows
copied from elsewhere, repairs racing writers. On the filesystem default and Redis (and
PostgreSQL where it is cheap)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import anyio.lowlevel
import pytest

from blokrun import Runner, StepFailed
from blokrun.config import DatasourceSettings
from blokrun.datasources.index import INDEX_KEY, IndexQuery, IndexRow
from blokrun.errors import DatasourceError
from blokrun.lifecycle.runs import RunSummary, run_order
from blokrun.persistence.keys import head_key
from tests.conftest import ServerPool
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"
#: request id -> the step that fails in it (the racing test: per run, not global)
FAILING: dict[str, str] = {}


async def flaky(ctx: Any, inputs: dict[str, Any]) -> Any:
    if FAILING.get(ctx.request.id) == ctx.step:
        raise RuntimeError(f"{ctx.step} of {ctx.request.id} fails on purpose")
    return {"ok": ctx.step}


def wf(name: str = "alpha", steps: int = 2) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": 1}} for i in range(steps)
        ],
    }


@pytest.fixture(params=["filesystem", "redis", "postgresql"])
async def runner(request: pytest.FixtureRequest, server_pool: ServerPool) -> AsyncIterator[Runner]:
    settings = server_pool.get(request.param).settings("default", prefix=f"ix-{uuid4().hex[:8]}/")
    async with Runner([settings]) as rt:
        yield rt


async def scanned(rt: Runner, **filters: Any) -> list[str]:
    """What listing answers when every head is read (the reference)."""
    runs: list[RunSummary] = [r async for r in rt.iter_runs()]
    out = []
    for r in sorted(runs, key=run_order):
        if "status" in filters and r.status not in filters["status"]:
            continue
        if "workflow" in filters and r.workflow != filters["workflow"]:
            continue
        if "tags" in filters and any(r.tags.get(k) != v for k, v in filters["tags"].items()):
            continue
        out.append(r.request_id)
    return out


async def listed(rt: Runner, limit: int = 7, **filters: Any) -> list[str]:
    """Every page of ``list_runs`` (through the index), concatenated."""
    out: list[str] = []
    cursor = None
    while True:
        page = await rt.list_runs(limit=limit, cursor=cursor, **filters)
        out += [r.request_id for r in page]
        cursor = page.cursor
        if cursor is None:
            return out


async def tally(rt: Runner) -> dict[str, int]:
    counts: dict[str, int] = {}
    async for r in rt.iter_runs():
        counts[r.status] = counts.get(r.status, 0) + 1
    return dict(sorted(counts.items()))


async def some_runs(rt: Runner, n: int = 30, seed: int = 7) -> None:
    rnd = random.Random(seed)
    for i in range(n):
        name = rnd.choice(["alpha", "beta"])
        tags = {"team": rnd.choice(["x", "y"])}
        if rnd.random() < 0.3:
            wfnodes.FAIL_AT.add("s1")
            with pytest.raises(StepFailed):
                await rt.run(wf(name), request_id=f"run-{i:02d}", tags=tags)
            wfnodes.FAIL_AT.clear()
        else:
            await rt.run(wf(name), request_id=f"run-{i:02d}", tags=tags)


async def test_listing_through_the_index_equals_reading_every_head(runner: Runner) -> None:
    ds = runner.datasources["default"]
    assert ds.indexed and await ds.index_built()
    await some_runs(runner)
    assert await listed(runner) == await scanned(runner)
    for status in (["failed"], ["completed"], ["failed", "completed"]):
        assert await listed(runner, status=status) == await scanned(runner, status=status)
    assert await listed(runner, workflow="beta") == await scanned(runner, workflow="beta")
    assert await listed(runner, tags={"team": "x"}, limit=3) == await scanned(
        runner, tags={"team": "x"}
    )
    assert await runner.count_runs() == await tally(runner)
    assert [r.request_id for r in await runner.list_runs(search="-1")] == [
        r for r in await scanned(runner) if "-1" in r
    ]


async def test_a_resumed_run_moves_between_statuses(runner: Runner) -> None:
    wfnodes.FAIL_AT.add("s1")
    with pytest.raises(StepFailed):
        await runner.run(wf(), request_id="moves")
    wfnodes.FAIL_AT.clear()
    assert await listed(runner, status=["failed"]) == ["moves"]
    await runner.resume("moves")
    assert await listed(runner, status=["failed"]) == []
    assert await listed(runner, status=["completed"]) == ["moves"]
    assert await runner.count_runs() == {"completed": 1}


async def test_rows_of_runs_that_are_gone_or_foreign_are_never_shown(runner: Runner) -> None:
    ds = runner.datasources["default"]
    await some_runs(runner, n=6)
    # a head deleted behind blokrun's back; rows written for runs that never existed (a
    # tampered or copied index)
    await ds.delete(head_key("run-03"))
    await ds.index_fill([IndexRow("ghost", "failed", 1.0, "alpha")])
    # an index entry that is not a row is refused with the batch it came in
    with pytest.raises(DatasourceError, match="index entry"):
        await ds.save_batch([("x", b"x", None), (INDEX_KEY, b"not a row", None)])
    assert await ds.load("x") is None
    want = await scanned(runner)
    assert "run-03" not in want and "ghost" not in want
    assert await listed(runner) == want
    assert await listed(runner, status=["failed"]) == await scanned(runner, status=["failed"])
    # the listing removed the stale rows
    rows = [r.request_id for r in await ds.index_query(IndexQuery(limit=100))]
    assert "run-03" not in rows and "ghost" not in rows
    assert await runner.count_runs() == await tally(runner)


async def test_a_row_that_disagrees_with_its_head_is_repaired_and_the_head_wins(
    runner: Runner,
) -> None:
    ds = runner.datasources["default"]
    await runner.run(wf(), request_id="done")
    (row,) = await ds.index_query(IndexQuery())
    assert row.status == "completed"
    # the row says failed and started long ago: the head says otherwise
    assert await ds.index_fix(row, IndexRow("done", "failed", 5.0, "other"))
    assert [r.request_id for r in await runner.list_runs(status="completed")] == []
    assert [r.request_id for r in await runner.list_runs(status="failed")] == []  # repaired
    assert [r.request_id for r in await runner.list_runs(status="completed")] == ["done"]
    (row,) = await ds.index_query(IndexQuery())
    assert (row.status, row.workflow) == ("completed", "alpha")


async def test_gc_removes_the_rows_of_what_it_deletes(runner: Runner) -> None:
    ds = runner.datasources["default"]
    await some_runs(runner, n=8)
    report = await runner.collect_garbage(completed_older_than=0, failed_older_than=0)
    assert report.runs_deleted == 8
    assert await ds.index_query(IndexQuery(limit=100)) == []
    assert await runner.count_runs() == {}


async def test_an_index_lost_is_rebuilt_from_the_heads_at_the_next_start(
    tmp_path: Path,
) -> None:
    settings = DatasourceSettings(name="default", type="filesystem", path=str(tmp_path / "d"))
    async with Runner([settings]) as rt:
        await some_runs(rt, n=12)
        before = await listed(rt)
    (tmp_path / "d" / ".index.sqlite").unlink()
    for extra in tmp_path.joinpath("d").glob(".index.sqlite-*"):
        extra.unlink()
    async with Runner([settings]) as rt:
        assert await rt.datasources["default"].index_built()
        assert await listed(rt) == before == await scanned(rt)
        assert await rt.count_runs() == await tally(rt)


async def test_a_write_torn_between_row_and_files_never_hides_a_run(tmp_path: Path) -> None:
    """Filesystem: the row is written (pending) before the files. A crash after the row and
    before the head leaves the row ahead of the head: the run is still listed under what its
    head says, by every filter, until a listing confirms it."""
    settings = DatasourceSettings(name="default", type="filesystem", path=str(tmp_path / "d"))
    async with Runner([settings]) as rt:
        wfnodes.FAIL_AT.add("s1")
        with pytest.raises(StepFailed):
            await rt.run(wf(), request_id="torn")
        wfnodes.FAIL_AT.clear()
        store = rt.datasources["default"].store
        (row,) = await rt.datasources["default"].index_query(IndexQuery())
        # what a crash leaves: the next write's row (completed), pending; its files never came
        torn = IndexRow("torn", "completed", row.started_at, row.workflow)
        store._index.write([("", torn)], pending=True)  # type: ignore[attr-defined]
        assert [r.request_id for r in await rt.list_runs(status="failed")] == ["torn"]
        assert [r.request_id for r in await rt.list_runs(status="completed")] == []
        assert [r.status for r in await rt.list_runs()] == ["failed"]
        # still pending (it disagrees with the head): checked on every listing
        (left,) = await rt.datasources["default"].index_query(IndexQuery())
        assert left.pending
        await rt.resume("torn")  # the next real write settles it
        (settled,) = await rt.datasources["default"].index_query(IndexQuery())
        assert not settled.pending and settled.status == "completed"
        assert [r.request_id for r in await rt.list_runs(status="completed")] == ["torn"]


async def test_listings_racing_writers_leave_every_row_equal_to_its_head(
    runner: Runner,
) -> None:
    """Runs start, fail and get resumed while listings (which repair rows) run beside them:
    at the end every run's row says what its head says."""
    ds = runner.datasources["default"]
    racing = {
        "name": "racing",
        "steps": [
            {"name": f"s{i}", "node": "tests.integration.test_run_index_runs:flaky"}
            for i in range(3)
        ],
    }

    async def work(i: int) -> None:
        rid = f"race-{i}"
        if i % 2:
            FAILING[rid] = f"s{i % 3}"
        try:
            await runner.run(racing, request_id=rid)
        except StepFailed:
            pass
        if i % 4 == 1:
            del FAILING[rid]
            await runner.resume(rid)

    async def look(stop: anyio.Event) -> None:
        while not stop.is_set():
            await runner.list_runs(status=["running", "failed", "completed"], limit=5)
            await runner.count_runs()
            await anyio.lowlevel.checkpoint()

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(look, stop)
        tg.start_soon(look, stop)
        async with anyio.create_task_group() as workers:
            for i in range(24):
                workers.start_soon(work, i)
        stop.set()
    FAILING.clear()
    heads = {r.request_id: r async for r in runner.iter_runs()}
    rows = {r.request_id: r for r in await ds.index_query(IndexQuery(limit=100))}
    assert set(rows) == set(heads)
    for rid, run in heads.items():
        assert (rows[rid].status, rows[rid].workflow) == (run.status, run.workflow), rid
        assert not rows[rid].pending
    assert await listed(runner) == await scanned(runner)
