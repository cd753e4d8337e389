"""Attacks on gc's tombstone (6940eda): heads marked ``collecting`` before gc deletes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import pytest

from blokrun import Runner, StepFailed
from blokrun.cli.inspect import format_table
from blokrun.datasources import build_datasource
from blokrun.errors import RunBusy, RunError
from blokrun.persistence.keys import HEAD_PREFIX, head_key
from tests.integration import wfnodes
from tests.regressions.gc_pause import (
    TTL,
    Stall,
    pause_settings,
    two_target_flow,
    two_target_runners,
)

if TYPE_CHECKING:
    from pathlib import Path


def _head_entry(entries: list[Any]) -> bool:
    return any(e[0].startswith(HEAD_PREFIX) for e in entries)


# -- A. gc's unfenced mark on a second target lands on a new run's head ---------------------


@pytest.mark.parametrize("driver", ["filesystem", "redis", "postgresql"])
async def test_a_stale_collecting_mark_does_not_doom_a_new_run(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    driver: str,
) -> None:
    """Run ``z`` (targets ``a`` -- its lease -- and ``b``) failed. gc1 pauses just before
    its mark, past its lease's TTL. gc2 collects z whole. The id is free: a new run ``z``
    starts and fails at s2 (to be resumed). gc1 wakes: its mark must not land on the new
    run. (Found against the first tombstone, which also marked ``b`` with a plain write:
    that mark landed over the new run's head there, which could then never be resumed and
    was deleted by a gc told to keep failed runs for an hour. Only the lease's datasource
    is marked now, fenced: gc1's mark is refused.)"""
    runner = two_target_runners(request, driver, tmp_path)

    wfnodes.FAIL_AT.add("s2")
    try:
        async with runner() as g1, runner() as g2, runner() as c:
            with pytest.raises(StepFailed):
                await c.run(two_target_flow(), {"total": 0}, request_id="z")
            stall = Stall(g1.datasources["a"], monkeypatch, "save_batch_fenced", _head_entry)
            reports: list[Any] = []

            async def collect() -> None:
                reports.append(
                    await g1.collect_garbage(completed_older_than=None, failed_older_than=0.0)
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(collect)
                with anyio.fail_after(10):
                    await stall.entered.wait()  # gc1's mark on its way
                await anyio.sleep(3 * TTL)  # gc1's lease runs out
                second = await g2.collect_garbage(completed_older_than=None, failed_older_than=0.0)
                assert [r.request_id for r in second.runs] == ["z"], second.errors
                # the id is free: a new run of it, failed at s2, to be resumed later
                with pytest.raises(StepFailed):
                    await c.run(two_target_flow(), {"total": 0}, request_id="z")
                stall.thawed.set()
            wfnodes.FAIL_AT.clear()
            b_head = await c.datasources["b"].load(head_key("z"))
            outcome: Any
            try:
                outcome = (await c.resume("z")).status
            except RunBusy as exc:
                outcome = exc
            third = await g2.collect_garbage(completed_older_than=None, failed_older_than=3600.0)
    finally:
        wfnodes.FAIL_AT.clear()
    assert outcome == "completed" and third.runs == (), (
        f"the new run z cannot be resumed: {outcome!r}; gc keeping failed runs for an hour "
        f"deleted {[r.request_id for r in third.runs]}; b's head: {b_head!r}; gc1: "
        f"{reports[0].errors}"
    )


# -- C. a resume planned before the mark, when the lease's target holds no head ------------


@pytest.mark.parametrize("driver", ["filesystem", "redis", "postgresql"])
async def test_a_resume_planned_before_gc_does_not_bring_back_a_deleted_run(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    driver: str,
) -> None:
    """Run ``z`` (targets ``a`` -- its lease -- and ``b``) failed at s2; ``a`` then lost
    its records of z (a target restored from an older backup, a write cut short there):
    only ``b`` holds z. A resume plans (it would repair ``a`` from ``b``) and, before it
    takes the lease, gc collects z: it leases ``a``, marks b's head collecting (unfenced:
    ``a`` holds no head), deletes z and reports it deleted. The resume then takes the
    lease; its check that the run did not move (``Planner.unchanged``) compares the head
    *on the lease's datasource*: absent when planned, absent now -- unchanged. It goes on
    from its stale plan: the run gc reported deleted is back, with only what the resume
    carried in memory. The commit says a resume planned before the mark plans again."""
    runner = two_target_runners(request, driver, tmp_path)

    wfnodes.FAIL_AT.add("s2")
    try:
        async with runner() as g, runner() as c:
            with pytest.raises(StepFailed):
                await c.run(two_target_flow(), {"total": 0}, request_id="z")
            wfnodes.FAIL_AT.clear()
            ds_a = c.datasources["a"]
            lost = [k for k in await ds_a.keys("") if "z" in k and "_blokrun.def." not in k]
            assert lost
            await ds_a.delete_batch(lost)

            store = c.store
            entered, thawed = anyio.Event(), anyio.Event()
            original = type(store).acquire

            async def paused_acquire(self: Any, *args: Any, **kwargs: Any) -> Any:
                if self is store and not entered.is_set():
                    entered.set()
                    await thawed.wait()
                return await original(self, *args, **kwargs)

            monkeypatch.setattr(type(store), "acquire", paused_acquire)
            outcome: list[Any] = []

            async def resume() -> None:
                try:
                    outcome.append((await c.resume("z")).status)
                except Exception as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(resume)
                with anyio.fail_after(10):
                    await entered.wait()  # the resume planned; no lease yet
                report = await g.collect_garbage(completed_older_than=None, failed_older_than=0.0)
                thawed.set()
            after = {
                name: sorted(
                    k for k in await c.datasources[name].keys("") if "_blokrun.def." not in k
                )
                for name in ("a", "b")
            }
    finally:
        wfnodes.FAIL_AT.clear()
    assert [r.request_id for r in report.runs] == ["z"], report.errors
    assert after == {"a": [], "b": []}, (
        f"gc reported z deleted, yet the resume planned before went on ({outcome[0]!r}) and "
        f"z is back: {after}"
    )


# -- D. a collection cut short between two heads, judged by the other head -----------------


@pytest.mark.parametrize("driver", ["filesystem", "redis"])
async def test_a_collection_cut_short_is_finished_by_the_next_gc(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    driver: str,
) -> None:
    """Run ``z`` on ``a`` (its lease) and ``b``: failed at s2, then resumed and failed at
    s3 -- but ``a`` kept its head of the first failure (a write cut short there): ``b``'s
    head is the most advanced. ``blokrun gc --failed-older-than 0`` marks a's head
    collecting and dies before it deletes anything. From then on the id is refused
    ('being deleted by gc ... blokrun gc finishes the deletion'); listings must say so
    (``collecting`` if any head says it, not only the most advanced one), and a gc with
    the default policy (failed runs kept 30 days) must finish it."""
    runner = two_target_runners(request, driver, tmp_path)

    wfnodes.FAIL_AT.add("s2")
    try:
        async with runner() as g1, runner() as g2, runner() as c:
            with pytest.raises(StepFailed):
                await c.run(two_target_flow(), {"total": 0}, request_id="z")
            behind = await c.datasources["a"].load(head_key("z"))
            assert behind is not None
            wfnodes.FAIL_AT.clear()
            wfnodes.FAIL_AT.add("s3")
            with pytest.raises(StepFailed):
                await c.resume("z")
            wfnodes.FAIL_AT.clear()
            await c.datasources["a"].save(head_key("z"), behind)  # a's head fell behind
            stall = Stall(g1.datasources["b"], monkeypatch, "delete_batch")

            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: g1.collect_garbage(completed_older_than=None, failed_older_than=0.0)
                )
                with anyio.fail_after(10):
                    await stall.entered.wait()  # a's head marked; nothing deleted yet
                tg.cancel_scope.cancel()  # gc1 dies here
            await anyio.sleep(3 * TTL)
            with pytest.raises(RunBusy, match="being deleted by gc"):
                await c.resume("z")
            listed = {r.request_id: r for r in (await c.list_runs()).runs}
            report = await g2.collect_garbage(
                completed_older_than=7 * 86400.0, failed_older_than=30 * 86400.0
            )
            outcome: Any
            try:
                outcome = await c.resume("z")
            except Exception as exc:
                outcome = exc
    finally:
        wfnodes.FAIL_AT.clear()
    assert [r.request_id for r in report.runs] == ["z"], (
        f"the next gc left the collection cut short unfinished (listed as "
        f"{listed['z'].status!r}, collecting={listed['z'].collecting}); kept "
        f"{report.runs_kept}; the id stays refused: {outcome!r}"
    )


# -- E. read-only looks at a run gc is collecting -------------------------------------------


async def test_inspect_and_wait_show_a_run_being_collected(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gc cut short (it died after marking z's head, before deleting): ``list_runs``
    shows z as failed and being deleted, while ``inspect`` -- a read -- and ``wait``
    raised RunBusy ('being deleted by gc'): the dashboard's run page answered 409 for a
    run its own list shows. A read-only look now shows the run (its head says gc is
    deleting it); a resume or a new run of the id is still refused (the tests above)."""
    settings = pause_settings(request, "filesystem", tmp_path, "a", uuid4().hex[:8])

    def runner() -> Runner:
        return Runner([build_datasource(settings)], lease_ttl=TTL)

    flow = {**two_target_flow(), "persistence": {"targets": ["a"]}}
    wfnodes.FAIL_AT.add("s2")
    try:
        async with runner() as g, runner() as c:
            with pytest.raises(StepFailed):
                await c.run(flow, {"total": 0}, request_id="z")
            stall = Stall(g.datasources["a"], monkeypatch, "delete_batch_fenced")
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: g.collect_garbage(completed_older_than=None, failed_older_than=0.0)
                )
                with anyio.fail_after(10):
                    await stall.entered.wait()
                tg.cancel_scope.cancel()
            listed = {r.request_id: r for r in (await c.list_runs()).runs}
            results: dict[str, Any] = {}
            for name, call in (("inspect", c.inspect), ("wait", c.wait)):
                try:
                    with anyio.fail_after(5):
                        results[name] = await call("z")
                except Exception as exc:
                    results[name] = exc
            outcomes = await c.resume_failed()  # a failed run, but gc is deleting it
    finally:
        wfnodes.FAIL_AT.clear()
    assert listed["z"].collecting
    assert not any(isinstance(v, RunBusy) for v in results.values()), (
        f"listed as {listed['z'].status!r}, but a read-only look is refused: {results}"
    )
    info = results["inspect"]
    assert info.head is not None and info.head.collecting and info.head.status == "failed"
    assert "being deleted by gc" in format_table(info)  # what `blokrun inspect` prints
    assert isinstance(results["wait"], RunError) and not isinstance(results["wait"], RunBusy)
    assert "s2 failed on purpose" in str(results["wait"])
    assert outcomes == [], outcomes  # not picked up for a resume (it would be refused)
