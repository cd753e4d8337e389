"""Workers in one process over the memory queue: submit, wait, serve, limits, drain,
dead-lettering. The multi-process SIGKILL harness on Redis and PostgreSQL is in
``test_workers_cluster.py``."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

from blokrun import RunError, Runner
from blokrun.config import DatasourceSettings
from blokrun.workers import serve
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"
ACTIVE: Counter[str] = Counter()
PEAK: Counter[str] = Counter()
ORDER: list[str] = []


async def tracked(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Records how many runs of this workflow run at once, and the order runs start."""
    wf = ctx.workflow.name
    if ctx.step == "a":
        ORDER.append(ctx.request.id)
    ACTIVE[wf] += 1
    PEAK[wf] = max(PEAK[wf], ACTIVE[wf])
    try:
        await anyio.sleep(float(inputs.get("seconds", 0.01)))
    finally:
        ACTIVE[wf] -= 1
    ctx.vars["total"] = ctx.vars.get("total", 0) + 1
    return None


def wf(name: str = "w", steps: int = 3, seconds: float = 0.01) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {
                "name": s,
                "node": "tests.integration.test_workers:tracked",
                "inputs": {"seconds": seconds},
            }
            for s in "abcdefgh"[:steps]
        ],
    }


def runner(**kw: Any) -> Runner:
    kw.setdefault("lease_ttl", 1.0)  # claims last as long: a "killed" worker's jobs return fast
    return Runner([DatasourceSettings(name="default", type="memory")], **kw)


@pytest.fixture(autouse=True)
def _reset() -> None:
    ACTIVE.clear()
    PEAK.clear()
    ORDER.clear()
    wfnodes.CALLS.clear()


async def test_submitted_runs_are_run_by_a_worker_and_waited_for() -> None:
    async with runner() as r:
        ids = [await r.submit(wf(), {"total": i * 10}) for i in range(20)]
        stop = anyio.Event()
        results = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(r, concurrency=4, stop=stop))
            with anyio.fail_after(20):
                for rid in ids:
                    results[rid] = (await r.wait(rid)).vars["total"]
            stop.set()
        assert results == {rid: i * 10 + 3 for i, rid in enumerate(ids)}
        assert PEAK["w"] == 4  # the concurrency limit held, and was used
        assert (await (await r.queue()).stats()).waiting == 0


async def test_submit_deduplicates_by_request_id_and_higher_priority_goes_first() -> None:
    async with runner() as r:
        assert await r.submit(wf(), request_id="low") == "low"
        assert await r.submit(wf(), request_id="low") == "low"  # queued already
        await r.submit(wf(), request_id="high", priority=5)
        stats = await serve(r, concurrency=1, max_runs=2)
        assert ORDER == ["high", "low"]
        assert stats.outcomes == {"completed": 2}
        await r.submit(wf(), request_id="low")  # stored and completed: not queued again
        assert (await (await r.queue()).stats()).waiting == 0


async def test_a_per_workflow_limit_holds_across_workers() -> None:
    async with runner() as r:
        for i in range(8):
            await r.submit(wf("slow", seconds=0.05), request_id=f"s{i}")
            await r.submit(wf("fast"), request_id=f"f{i}")
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:  # two workers, one cap of 2 for "slow"
            for _ in range(2):
                tg.start_soon(lambda: serve(r, concurrency=6, per_workflow={"slow": 2}, stop=stop))
            with anyio.fail_after(30):
                for i in range(8):
                    assert (await r.wait(f"s{i}")).status == "completed"
                    assert (await r.wait(f"f{i}")).status == "completed"
            stop.set()
        assert PEAK["slow"] == 2  # the cap held across both workers (6 + 6 slots), and was used


async def test_stopping_drains_then_cancels_and_another_worker_resumes_without_rerunning() -> None:
    async with runner() as r:
        for i in range(3):
            await r.submit(wf(steps=6, seconds=0.2), request_id=f"d{i}")
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(r, concurrency=3, stop=stop, grace=0.0))
            await anyio.sleep(0.5)  # every run is in step b or c
            stop.set()
        heads = [await r.head(f"d{i}") for i in range(3)]
        assert {h.status for h in heads if h is not None} == {"cancelled"}
        done_before = {f"d{i}": list((await r.inspect(f"d{i}")).checkpoints) for i in range(3)}
        assert all(done_before.values())
        ORDER.clear()
        await serve(r, concurrency=3, max_runs=3)  # the released jobs, resumed
        for i in range(3):
            result = await r.wait(f"d{i}")
            assert result.vars["total"] == 6 + 0  # each of the 6 steps counted once
        assert ORDER == []  # step a never ran again


async def crash_worker(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Stands for a step that kills its worker: the test cancels the worker from here."""
    CRASHES[-1].set()
    await anyio.sleep(10)


CRASHES: list[anyio.Event] = []


async def test_a_run_that_keeps_killing_its_workers_is_dead_lettered() -> None:
    doc = {
        "name": "poison",
        "steps": [
            {"name": "ok", "node": f"{NODE}:add"},
            {"name": "boom", "node": "tests.integration.test_workers:crash_worker"},
        ],
    }
    async with runner(max_resumes=2) as r:
        await r.submit(doc, request_id="poison")
        for _ in range(3):  # three workers die in 'boom'
            CRASHES.append(anyio.Event())
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: serve(r, concurrency=1, grace=0.0))
                with anyio.fail_after(10):
                    await CRASHES[-1].wait()
                tg.cancel_scope.cancel()
        stats = await serve(r, concurrency=1, max_runs=1)
        assert stats.outcomes == {"dead": 1}
        head = await r.head("poison")
        assert head is not None and head.status == "dead"
        with pytest.raises(RunError, match=r"dead-lettered after \d+ recovery attempt") as dead:
            await r.wait("poison")
        assert "blokrun resume poison --force" in str(dead.value)
        assert (await (await r.queue()).stats()).waiting == 0  # acked, not looping


async def test_no_datasource_that_can_hold_the_queue_is_a_clear_error(tmp_path: Any) -> None:
    from blokrun import ConfigError

    fs = DatasourceSettings(name="default", type="filesystem", path=str(tmp_path))
    async with Runner([fs]) as r:
        with pytest.raises(ConfigError) as info:
            await r.submit(wf(), {})
        assert info.value.variable == "BLOKRUN_QUEUE_DATASOURCE"
        assert "Redis or PostgreSQL" in str(info.value)
    async with Runner([fs], queue_datasource="default") as r:
        with pytest.raises(ConfigError, match="cannot hold the run queue"):
            await r.queue()


async def test_wait_on_an_unknown_id_fails_at_once_and_on_a_queued_one_waits(
    tmp_path: Any,
) -> None:
    from blokrun import RunNotFound

    async with runner() as r:
        with anyio.fail_after(5), pytest.raises(RunNotFound, match="no such run"):
            await r.wait("never-submitted")
        await r.submit(wf(steps=1), request_id="queued-1")
        with anyio.move_on_after(0.3) as scope:  # queued, no worker yet: it waits
            await r.wait("queued-1")
        assert scope.cancelled_caught
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(r, concurrency=1, max_runs=1))
            with anyio.fail_after(10):
                assert (await r.wait("queued-1")).status == "completed"
    fs = DatasourceSettings(name="default", type="filesystem", path=str(tmp_path))
    async with Runner([fs]) as alone:  # no datasource can hold a queue: unknown at once
        with anyio.fail_after(5), pytest.raises(RunNotFound):
            await alone.wait("nope")
