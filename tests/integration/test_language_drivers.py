"""Each construct stopped in the middle and resumed, on the filesystem default and on Redis
(maps, child runs and schedule ticks have their own crash tests beside them)."""

from __future__ import annotations

import time
from typing import Any
from uuid import uuid4

import anyio
import pytest

from blokrun import Runner, StepFailed
from blokrun.config import DatasourceSettings
from tests.conftest import ServerPool
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"
DRIVERS = ["filesystem", "redis"]


def settings(server_pool: ServerPool, driver: str) -> DatasourceSettings:
    return server_pool.get(driver).settings("default", prefix=f"lang-{uuid4().hex[:8]}/")


def add(name: str, n: int = 1, **extra: Any) -> dict[str, Any]:
    return {"name": name, "node": f"{NODE}:add", "inputs": {"n": n}, **extra}


def calls(rid: str) -> list[str]:
    return [step for r, step in wfnodes.CALLS if r == rid]


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_failure_inside_a_branch_resumes_in_that_branch(
    driver: str, server_pool: ServerPool
) -> None:
    wf = {
        "name": "branchy",
        "steps": [
            add("first"),
            add("maybe", when="${ctx.vars.total > 5}"),
            {
                "name": "route",
                "choice": [
                    {"when": "${ctx.vars.total < 5}", "steps": [add("small-1"), add("small-2")]},
                    {"steps": [add("big")]},
                ],
            },
            add("last"),
        ],
    }
    wfnodes.FAIL_AT.add("small-2")
    async with Runner([settings(server_pool, driver)]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(wf, {"total": 0}, request_id="b-1")
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("b-1", set_vars={"total": 100})  # would choose "big" now
        statuses: dict[str, str] = {}
        for c in (await runner.inspect("b-1")).checkpoints:
            statuses.setdefault(c.step, c.status)  # (a later "edited" version holds the --set)
    assert calls("b-1") == ["first", "small-1", "small-2", "small-2", "last"]
    assert result.vars["route"]["branch"] == 0
    assert statuses["maybe"] == "skipped" and statuses["big"] == "skipped"


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_timer_cancelled_half_way_waits_only_what_is_left(
    driver: str, server_pool: ServerPool
) -> None:
    wf = {
        "name": "nap",
        "steps": [add("a"), {"name": "z", "node": "sleep", "inputs": {"seconds": 1.6}}, add("b")],
    }
    async with Runner([settings(server_pool, driver)]) as runner:
        with anyio.move_on_after(0.8):
            await runner.run(wf, {"total": 0}, request_id="t-1")
        t0 = time.monotonic()
        result = await runner.resume("t-1")
        waited = time.monotonic() - t0
    assert result.vars["total"] == 2
    assert waited < 1.3, waited  # ~0.8 s left, not 1.6


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_fork_leaves_the_source_and_resumes_as_its_own_run(
    driver: str, server_pool: ServerPool
) -> None:
    wf = {"name": "forky", "steps": [add("s1", 1), add("s2", 2), add("s3", 3)]}
    async with Runner([settings(server_pool, driver)]) as runner:
        await runner.run(wf, {"total": 0}, request_id="src")
        before = await runner.inspect("src")
        wfnodes.FAIL_AT.add("s3")
        with pytest.raises(StepFailed):
            await runner.fork("src", new_id="dst", from_step="s2", set_vars={"total": 10})
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("dst")
        after = await runner.inspect("src")
    assert result.vars["total"] == 15
    assert calls("dst") == ["s2", "s3", "s3"]
    assert before.checkpoints == after.checkpoints and after.status == "completed"
