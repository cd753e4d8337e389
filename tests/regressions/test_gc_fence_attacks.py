"""Attacks on gc's fenced deletes (a836233, 233d5df), by a hostile review.

gc takes a run's lease, renews it before each delete batch, fences the batches *on the
lease's datasource* and drops the index row there under the same fence. Everything gc
deletes elsewhere -- a second target, a stray datasource, the blob datasource's marks --
is guarded by the renewal before the batch and checked again after it. Five findings:

1. ``test_gc_that_outlives_its_lease_does_not_delete_a_new_runs_blob`` (fixed): gc deleted
   a new run's blob mark (unfenced), reported the old run deleted, and its sweep deleted
   the blob: the new completed run could not be read back. gc now renews after each
   unfenced batch; if the lease was lost it writes the marks back and reports the run kept.
2. ``test_gc_that_outlives_its_lease_leaves_a_resumed_run_on_both_targets`` (fixed): the
   second target's records of a run resumed meanwhile went.
3. ``test_gc_stopped_by_its_fence_does_not_make_a_resume_run_steps_again`` (fixed): a gc
   stopped mid-run (by its fence, or a crash) left the head without checkpoints; a resume
   then ran completed steps again.

   Both fixed by a tombstone: before it deletes anything, gc marks every head of the run
   ``collecting`` (fenced on the lease's datasource). No run or resume takes such an id
   (``RunBusy``: "being deleted by gc"), a resume planned before sees its head changed,
   and the next gc finishes a collection cut short.
4. ``test_delete_batch_fenced_naming_the_lease_key_keeps_the_lease`` (fixed): Redis deleted
   the lease hash when its key was among the keys; the wrapper now leaves the lease key out.
5. ``test_gc_without_a_definition_keeps_a_run_it_cannot_lock`` (fixed): with the definition
   gone gc leased "the first holder that keeps leases", maybe not the one runs lock; with
   several such holders it now keeps the run and says why.

The rest held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import pytest

from blokrun import Runner
from blokrun.datasources import build_datasource
from blokrun.errors import RunBusy, RunNotFound
from blokrun.persistence.keys import BLOB_PREFIX, BLOBREF_PREFIX
from tests.integration import wfnodes
from tests.regressions.gc_pause import (
    NODE,
    TTL,
    Stall,
    pause_settings,
    two_target_flow,
    two_target_runners,
)

if TYPE_CHECKING:
    from pathlib import Path


# -- 1. the blob datasource's marks are deleted unfenced ------------------------------------


def blob_flow(seed: int) -> dict[str, Any]:
    return {
        "name": "blobby",
        "version": "1",
        "persistence": {"targets": ["a"]},
        "steps": [
            {"name": "make", "node": f"{NODE}:big", "inputs": {"seed": seed, "size": 5000}},
            {"name": "after", "node": f"{NODE}:add", "inputs": {"n": 1}},
        ],
    }


@pytest.mark.parametrize("driver", ["filesystem", "redis", "postgresql"])
async def test_gc_that_outlives_its_lease_does_not_delete_a_new_runs_blob(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    driver: str,
) -> None:
    """Run ``z`` (checkpoints on ``a``, large values on ``blobs``) completed. gc collects it:
    its records on ``a`` go, fenced; then gc renews its lease and pauses just before
    deleting z's blob mark on ``blobs`` (unfenced), past its lease's TTL. A new run of
    ``z`` (the id is free now) produces the same large value: it marks the blob
    (``_blokrun.blobref.z/<sha>`` -- the very key gc planned to delete), finds it present
    and only refers to it, and completes. gc woke, deleted that mark, reported z as
    deleted, and its blob sweep then found the blob unmarked and deleted it: the new
    completed run referred to a blob that was gone. Now z's head on ``a`` says gc is
    deleting it until the rest is gone, so the new run is refused while gc is paused; it
    takes the lease on its way, so gc stops (writing its marks back); the next gc finishes
    z; a new run of z then keeps its blob through any later sweep."""
    tag = uuid4().hex[:8]
    a = pause_settings(request, driver, tmp_path, "a", tag)
    blobs = pause_settings(request, driver, tmp_path, "blobs", tag)

    def runner() -> Runner:
        return Runner(
            [build_datasource(a), build_datasource(blobs)],
            blob_datasource="blobs",
            blob_threshold=1000,
            lease_ttl=TTL,
        )

    async with runner() as g, runner() as c:
        assert (await c.run(blob_flow(1), request_id="z")).status == "completed"
        stall = Stall(
            g.datasources["blobs"],
            monkeypatch,
            "delete_batch",
            lambda keys: any(BLOBREF_PREFIX in k for k in keys),
        )
        reports: list[Any] = []

        async def collect() -> None:
            reports.append(
                await g.collect_garbage(completed_older_than=0.0, failed_older_than=None)
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            with anyio.fail_after(10):
                await stall.entered.wait()  # z is gone from a; its mark not yet
            await anyio.sleep(3 * TTL)  # gc's lease runs out
            with pytest.raises(RunBusy, match="being deleted by gc"):
                await c.run(blob_flow(1), request_id="z")
            stall.thawed.set()
        assert any("taken over" in e for e in reports[0].errors), reports[0].errors
        finished = await g.collect_garbage(completed_older_than=0.0, failed_older_than=None)
        assert [r.request_id for r in finished.runs] == ["z"], finished.errors
        new = await c.run(blob_flow(1), request_id="z")
        assert new.status == "completed" and not new.existing
        swept = await g.collect_garbage(completed_older_than=None, failed_older_than=None)
        assert swept.runs == ()
        left = await c.datasources["blobs"].keys(BLOB_PREFIX)
        marks = await c.datasources["blobs"].keys(BLOBREF_PREFIX)
        try:
            again = await c.resume("z")  # completed: read back from its checkpoints
            outcome: Any = again.vars["make"] == wfnodes._text(1, 5000)
        except Exception as exc:  # the blob it refers to is gone
            outcome = exc
    assert outcome is True, (
        f"the new completed run z lost its large value: resume gave {outcome!r}; gc report "
        f"deleted {[r.request_id for r in reports[0].runs]} and {reports[0].blobs_deleted} "
        f"blob(s); blobs left {left}, marks left {marks}"
    )


# -- 2. a second target's deletes are unfenced ----------------------------------------------


@pytest.mark.parametrize("driver", ["filesystem", "redis", "postgresql"])
async def test_a_run_gc_began_deleting_is_not_resumed_from_its_second_target(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    driver: str,
) -> None:
    """Run ``z`` checkpoints to ``a`` (its lease) and ``b``, and failed at s2. gc collects
    it: ``a``'s records go, fenced; gc renews its lease and pauses just before its
    (unfenced) delete on ``b``, past the lease's TTL. The user resumes ``z`` -- ``b`` still
    holds it. Before, the resume completed on both targets and gc then deleted what it had
    planned on ``b``: the resumed run's head and aliases there. Now gc marked every head
    of ``z`` "collecting" before deleting anything: the resume is refused (being deleted
    by gc), runs nothing, and gc, woken, finishes -- nothing of ``z`` is left anywhere."""
    runner = two_target_runners(request, driver, tmp_path)

    wfnodes.FAIL_AT.add("s2")
    try:
        async with runner() as g, runner() as c:
            from blokrun import StepFailed

            with pytest.raises(StepFailed):
                await c.run(two_target_flow(), {"total": 0}, request_id="z")
            wfnodes.FAIL_AT.clear()
            b_before = sorted(await c.datasources["b"].keys(""))
            stall = Stall(g.datasources["b"], monkeypatch, "delete_batch")
            reports: list[Any] = []

            async def collect() -> None:
                reports.append(
                    await g.collect_garbage(completed_older_than=None, failed_older_than=0.0)
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(collect)
                with anyio.fail_after(10):
                    await stall.entered.wait()  # z is gone from a; b not yet
                await anyio.sleep(3 * TTL)  # gc's lease runs out
                wfnodes.CALLS.clear()
                with pytest.raises(RunBusy, match="being deleted by gc"):
                    await c.resume("z")
                assert wfnodes.CALLS == []  # nothing ran
                stall.thawed.set()
            left = {
                name: [k for k in await c.datasources[name].keys("") if "_blokrun.def." not in k]
                for name in ("a", "b")
            }
            listed = [r.request_id for r in (await c.list_runs()).runs]
    finally:
        wfnodes.FAIL_AT.clear()
    assert [r.request_id for r in reports[0].runs] == ["z"], reports[0].errors
    assert b_before and left == {"a": [], "b": []} and listed == [], (left, listed)


# -- 3. a gc stopped by its fence leaves a half-deleted run to the next holder -------------


def long_flow(n: int) -> dict[str, Any]:
    return {
        "name": "long",
        "steps": [{"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": 1}} for i in range(n)],
    }


@pytest.mark.parametrize("driver", ["filesystem", "redis", "postgresql"])
async def test_a_gc_cut_short_leaves_nothing_a_resume_runs_again(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    driver: str,
) -> None:
    """A failed run ``z`` with more keys than one gc batch (300 steps: 300 checkpoints and
    300 aliases; gc deletes 500 keys per batch, checkpoints first). gc deletes its first
    batch -- every checkpoint -- fenced, renews, and pauses before the second (the run's
    head is deleted last), past its lease's TTL. The user resumes ``z``: the lease is free,
    the head says failed at the last step. Before, the resume took over a run gc had half
    deleted: it found no checkpoint and ran every step that had already run again (side
    effects twice). Now the head says gc is deleting it: the resume (and a new run of the
    id) is refused and runs nothing; the gc stopped by its fence leaves that mark, and the
    next gc finishes the deletion whatever the run's age; then the id is free again."""
    n = 300
    settings = pause_settings(request, driver, tmp_path, "default", uuid4().hex[:8])
    last = f"s{n - 1}"
    wfnodes.FAIL_AT.add(last)
    try:
        async with (
            Runner([build_datasource(settings)], lease_ttl=TTL) as g,
            Runner([build_datasource(settings)], lease_ttl=TTL) as c,
        ):
            from blokrun import StepFailed

            with pytest.raises(StepFailed):
                await c.run(long_flow(n), {"total": 0}, request_id="z")
            wfnodes.FAIL_AT.clear()
            stall = Stall(
                g.datasources["default"],
                monkeypatch,
                "delete_batch_fenced",
                lambda keys: not any("_blokrun.ckpt." in k for k in keys),
            )
            reports: list[Any] = []

            async def collect() -> None:
                reports.append(
                    await g.collect_garbage(completed_older_than=None, failed_older_than=0.0)
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(collect)
                with anyio.fail_after(30):
                    await stall.entered.wait()  # every checkpoint of z is gone; its head not
                await anyio.sleep(3 * TTL)  # gc's lease runs out
                wfnodes.CALLS.clear()
                with pytest.raises(RunBusy, match="being deleted by gc"):
                    await c.resume("z")
                with pytest.raises(RunBusy, match="being deleted by gc"):
                    await c.run(long_flow(3), {"total": 0}, request_id="z")
                assert wfnodes.CALLS == []  # nothing ran again
                stall.thawed.set()
            # the refused run took the lease on its way (a run's lease comes before its
            # existence check): this gc stops; the next one finishes what is left
            assert reports[0].runs == () or [r.request_id for r in reports[0].runs] == []
            assert any("taken over" in e for e in reports[0].errors), reports[0].errors
            with pytest.raises(RunBusy, match="being deleted by gc"):
                await c.resume("z")
            report = await g.collect_garbage(completed_older_than=None, failed_older_than=0.0)
            assert [r.request_id for r in report.runs] == ["z"], report.errors
            with pytest.raises(RunNotFound):
                await c.resume("z")
            fresh = await c.run(long_flow(3), {"total": 0}, request_id="z")
            assert fresh.status == "completed" and not fresh.existing
    finally:
        wfnodes.FAIL_AT.clear()


# -- 4. the driver methods themselves ---------------------------------------------------------

ODD = [
    "plain",
    "with space",
    "quote'\"`",
    "pct%_under",
    "glob*?[x]",
    "back\\slash",
    "unicod\u00e9/\u6f22\u5b57",
    "semi;--drop",
    "{brace}tag",
    "dots..and//slashes",
]


@pytest.mark.parametrize(
    "server", ["memory", "filesystem", "redis", "postgresql", "mongodb", "s3"], indirect=True
)
async def test_delete_batch_fenced_odd_keys_empty_and_lease_key(server: Any) -> None:
    """Held? Odd keys are deleted exactly (no pattern matching), an empty batch answers by
    the token alone and deletes nothing, and the lease key among the keys does not end the
    lease -- nor does a stale token delete anything."""
    settings = server.settings("odd", prefix=f"odd-{uuid4().hex[:8]}/")
    async with build_datasource(settings) as ds:
        lease = "_blokrun.lease.odd"
        held = await ds.acquire_lease(lease, "gc", 30)
        keep = [f"{k}-keep" for k in ODD] + ["glob1x", "globax", "pct", "plai"]
        await ds.save_batch([(k, k.encode(), None) for k in [*ODD, *keep]])
        assert await ds.delete_batch_fenced([], lease, held.token)
        assert not await ds.delete_batch_fenced([], lease, held.token - 1)
        assert not await ds.delete_batch_fenced(ODD, lease, held.token - 1)
        assert sorted(await ds.load_batch(ODD)) == sorted(ODD)
        assert await ds.delete_batch_fenced(ODD, lease, held.token)
        assert await ds.load_batch(ODD) == {}
        assert sorted(await ds.load_batch(keep)) == sorted(keep)
        assert await ds.renew_lease(lease, "gc", held.token, 30)


@pytest.mark.parametrize(
    "server", ["memory", "filesystem", "redis", "postgresql", "mongodb", "s3"], indirect=True
)
async def test_delete_batch_fenced_naming_the_lease_key_keeps_the_lease(server: Any) -> None:
    """The lease key among the keys of a fenced delete: five drivers keep leases apart from
    data and leave the lease alone; Redis keeps both in one keyspace and DELs the lease
    hash (a later acquire then starts from the clock; no gc path names it that I found)."""
    settings = server.settings("lk", prefix=f"lk-{uuid4().hex[:8]}/")
    async with build_datasource(settings) as ds:
        lease = "_blokrun.lease.lk"
        held = await ds.acquire_lease(lease, "gc", 30)
        assert await ds.delete_batch_fenced(["x", lease], lease, held.token)
        state = await ds.read_lease(lease)
        assert state is not None and state.token == held.token, (
            f"a fenced delete that named the lease key ended the lease: {state}"
        )


@pytest.mark.parametrize("server", ["redis", "postgresql"], indirect=True)
async def test_delete_batch_fenced_huge_batch(server: Any) -> None:
    """Held? 30 000 keys in one fenced delete (Redis: past Lua's unpack limit of ~8000;
    PostgreSQL: one array parameter)."""
    settings = server.settings("huge", prefix=f"huge-{uuid4().hex[:8]}/")
    async with build_datasource(settings) as ds:
        lease = "_blokrun.lease.huge"
        held = await ds.acquire_lease(lease, "gc", 30)
        keys = [f"k{i:06d}" for i in range(30_000)]
        for start in range(0, len(keys), 5000):
            await ds.save_batch([(k, b"x", None) for k in keys[start : start + 5000]])
        await ds.save("other", b"y")
        assert await ds.delete_batch_fenced(keys, lease, held.token)
        assert await ds.keys("k") == []
        assert await ds.load("other") == b"y"


@pytest.mark.parametrize("server", ["memory", "filesystem", "redis", "postgresql"], indirect=True)
async def test_index_remove_fenced_on_a_lease_that_is_gone(server: Any) -> None:
    """Held? ``index_remove(fence=...)`` on a lease that was deleted (or never existed)
    removes nothing and says so; with the latest token it removes the row."""
    from blokrun.persistence.keys import lease_key

    async with Runner(
        [build_datasource(server.settings("default", prefix=f"ix-{uuid4().hex[:8]}/"))]
    ) as r:
        await r.run(two_target_flow("ix") | {"persistence": {}}, {"total": 0}, request_id="z")
        ds = r.datasources["default"]
        assert [x.request_id for x in (await r.list_runs()).runs] == ["z"]
        key = lease_key("z")
        state = await ds.read_lease(key)
        assert state is not None
        assert not await ds.index_remove(["z"], fence=(key, state.token - 1))
        assert await ds.delete_lease(key, state.token)
        assert not await ds.index_remove(["z"], fence=(key, state.token))
        assert [x.request_id for x in (await r.list_runs()).runs] == ["z"]
        again = await ds.acquire_lease(key, "gc", 30)
        assert await ds.index_remove(["z"], fence=(key, again.token))


# -- 5. with the definition gone, gc takes the lease where runs do not ----------------------


@pytest.mark.parametrize("driver", ["filesystem", "redis", "postgresql"])
async def test_gc_without_a_definition_keeps_a_run_it_cannot_lock(
    request: pytest.FixtureRequest, tmp_path: Path, driver: str
) -> None:
    """Run ``z``'s workflow checkpoints to ``b`` then ``a`` (its lease is on ``b``); the
    runner lists ``a`` first. The stored definition is gone, and both datasources keep
    leases: gc cannot tell which one a resume would lock. Before, it leased ``a`` -- a lease
    no run of z takes -- so a resume ran unopposed while gc deleted, and gc deleted the
    completed run. Now gc keeps the run and says why; the run is still there to resume."""
    tag = uuid4().hex[:8]
    a = pause_settings(request, driver, tmp_path, "a", tag)
    b = pause_settings(request, driver, tmp_path, "b", tag)
    flow = two_target_flow("nodef") | {"persistence": {"targets": ["b", "a"]}}
    wfnodes.FAIL_AT.add("s2")
    try:
        async with Runner([build_datasource(a), build_datasource(b)], lease_ttl=30) as c:
            from blokrun import StepFailed

            with pytest.raises(StepFailed):
                await c.run(flow, {"total": 0}, request_id="z")
            wfnodes.FAIL_AT.clear()
            for name in ("a", "b"):
                ds = c.datasources[name]
                await ds.delete_batch(await ds.keys("_blokrun.def."))
            report = await c.collect_garbage(completed_older_than=None, failed_older_than=0.0)
            assert [r.request_id for r in report.runs] == []
            assert any("definition is missing" in e and "z" in e for e in report.errors), (
                report.errors
            )
            resumed = await c.resume("z", workflow=flow)
            assert resumed.status == "completed"
            head = await c.head("z")
            assert head is not None and head.status == "completed"
    finally:
        wfnodes.FAIL_AT.clear()
