"""Two runs whose keys collide under the user's key pattern (issue 13, class 1).

With the default pattern ``${ctx.request.id}-${stepName}``, run ``job`` + step ``2-c`` and
run ``job-2`` + step ``c`` both render ``job-2-c``. A run's records live under internal keys
that cannot collide; the pattern names an *alias*, owned by the first run that wrote it and
never replaced by another run (nor written over data blokrun did not write). Checked in both
orders, on the filesystem, Redis and PostgreSQL.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from blokrun import Runner, StepFailed
from tests import records

if TYPE_CHECKING:
    from tests.servers.base import ThrowawayServer

pytestmark = pytest.mark.parametrize("server", ["filesystem", "redis", "postgresql"], indirect=True)

RAN: Counter[tuple[str, str]] = Counter()
FAIL: set[tuple[str, str]] = set()


async def mark(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Returns who ran it; fails while (request id, step) is in FAIL."""
    RAN[(ctx.request.id, ctx.step)] += 1
    if (ctx.request.id, ctx.step) in FAIL:
        raise RuntimeError(f"{ctx.step} failed on purpose")
    ctx.vars.setdefault("trail", []).append(f"{ctx.request.id}/{ctx.step}")
    return {"by": ctx.request.id}


def wf(*steps: str) -> dict[str, Any]:
    return {
        "name": "collide",
        "steps": [{"name": s, "node": f"{__name__}:mark"} for s in steps],
    }


def own(result_vars: dict[str, Any], rid: str, steps: tuple[str, ...]) -> None:
    """Every value in the run's vars came from the run itself."""
    assert result_vars["trail"] == [f"{rid}/{s}" for s in steps]
    for s in steps:
        assert result_vars[s] == {"by": rid}


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()
    FAIL.clear()


@pytest.mark.parametrize("first", ["job", "job-2"])
async def test_runs_whose_keys_collide_keep_their_own_records(
    server: ThrowawayServer, first: str, caplog: pytest.LogCaptureFixture
) -> None:
    tag = uuid.uuid4().hex[:6]
    a, b = f"job{tag}", f"job{tag}-2"  # a + "2-c" and b + "c" both render "<b>-c"
    plan = {a: ("s1", "2-c", "d"), b: ("c", "e")}
    order = [a, b] if first == "job" else [b, a]
    caplog.set_level(logging.WARNING, logger="blokrun")
    async with Runner([server.settings("default")]) as runner:
        ds = runner.datasources["default"]
        for rid in order:  # each fails at its last step, after the colliding one
            FAIL.add((rid, plan[rid][-1]))
            with pytest.raises(StepFailed):
                await runner.run(wf(*plan[rid]), {}, request_id=rid)
        owner = await records.alias(ds, f"{b}-c")
        assert owner is not None and owner.request_id == order[0]  # the first writer's
        FAIL.clear()
        results = {rid: await runner.resume(rid) for rid in plan}
        for rid, steps in plan.items():
            own(results[rid].vars, rid, steps)
            assert RAN[(rid, steps[-1])] == 2  # only the failed step ran again
            for s in steps[:-1]:
                assert RAN[(rid, s)] == 1, (rid, s)  # a completed step never ran again
        # the alias still points at the first writer's checkpoint, which is its own
        owner = await records.alias(ds, f"{b}-c")
        assert owner is not None and owner.request_id == order[0]
        rec = await records.load_checkpoint(ds, owner.key)
        assert rec.request_id == order[0]
        # resuming again (completed) returns the same vars, running nothing
        again = {rid: await runner.resume(rid) for rid in plan}
        assert {r: v.vars for r, v in again.items()} == {r: v.vars for r, v in results.items()}
    warned = [r.getMessage() for r in caplog.records if f"{b}-c" in r.getMessage()]
    assert warned and order[1] in warned[0] and order[0] in warned[0]


async def test_an_alias_never_replaces_data_blokrun_did_not_write(
    server: ThrowawayServer,
) -> None:
    rid = f"user{uuid.uuid4().hex[:6]}"
    async with Runner([server.settings("default")]) as runner:
        ds = runner.datasources["default"]
        await ds.save(f"{rid}-s1", b'{"mine": true}')  # someone's own data under that key
        result = await runner.run(wf("s1", "s2"), {}, request_id=rid)
        own(result.vars, rid, ("s1", "s2"))
        assert await ds.load(f"{rid}-s1") == b'{"mine": true}'
        assert (await records.checkpoint(ds, f"{rid}-s2")).request_id == rid


async def test_the_same_new_id_run_twice_at_once_runs_once(server: ThrowawayServer) -> None:
    """Two `run` calls with one new request id, at the same time: one runs it, the other is
    refused (busy, or it exists) or returns the stored result -- every step runs once."""
    from blokrun.errors import RunBusy, RunExists

    rid = f"twice{uuid.uuid4().hex[:6]}"
    outcomes: list[Any] = []
    settings = server.settings("default")  # one store: each call gives a fresh one
    async with Runner([settings]) as a, Runner([settings]) as b:

        async def go(runner: Runner) -> None:
            try:
                outcomes.append(await runner.run(wf("s1", "s2", "s3"), {}, request_id=rid))
            except (RunBusy, RunExists) as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(go, a)
            tg.start_soon(go, b)
    assert all(RAN[(rid, s)] == 1 for s in ("s1", "s2", "s3")), (RAN, outcomes)
    finished = [o for o in outcomes if not isinstance(o, Exception)]
    assert finished
    for result in finished:
        own(result.vars, rid, ("s1", "s2", "s3"))


async def test_a_new_run_never_adopts_the_leftovers_of_a_lost_one(
    server: ThrowawayServer,
) -> None:
    """An earlier run under the same id lost its head and run record, but its checkpoints
    remain (same incarnation number, later sequence numbers). ``run`` treats the id as new
    without scanning the store, and its resume continues its own chain, never theirs."""
    from blokrun.persistence.keys import head_key, run_key

    rid = f"lost{uuid.uuid4().hex[:6]}"
    async with Runner([server.settings("default")]) as runner:
        ds = runner.datasources["default"]
        await runner.run(wf("s1", "s2", "s3", "s4"), {}, request_id=rid)
        await ds.delete(head_key(rid))
        await ds.delete(run_key(rid, 1))  # the old run is gone but for its checkpoints
        RAN.clear()
        FAIL.add((rid, "s2"))
        with pytest.raises(StepFailed):
            await runner.run(wf("s1", "s2", "s3", "s4"), {"fresh": True}, request_id=rid)
        FAIL.clear()
        result = await runner.resume(rid)
    own(result.vars, rid, ("s1", "s2", "s3", "s4"))
    assert result.vars["fresh"] is True
    assert result.steps_run == ("s2", "s3", "s4")  # not the old run's s3/s4 checkpoints
    assert RAN[(rid, "s3")] == 1 and RAN[(rid, "s1")] == 1
