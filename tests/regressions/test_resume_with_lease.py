"""A resume's start is written with its lease, as a compare-and-set on the head it was
planned on (Redis: ``Capabilities.lease_matches``; PostgreSQL writes it on its own, and
must behave the same). Attacked on the real servers: the head moves between the plan and
the lease (another process resumed the run, or someone wrote over the head); a folded
resume fails or is cancelled in its first re-run step and is resumed again, up to the
dead letter; a resume given input for a run that waits for none changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import uuid4

import pytest

from blokrun import Runner, StepFailed
from blokrun.datasources import build_datasource
from blokrun.errors import BlokrunError, ResumeError
from blokrun.persistence.keys import head_key
from blokrun.persistence.planner import Planner
from tests.integration import wfnodes

if TYPE_CHECKING:
    from blokrun.config import DatasourceSettings
    from tests.conftest import ServerPool

NODE = "tests.integration.wfnodes"
pytestmark = pytest.mark.parametrize("driver", ["redis", "postgresql"])


def flow(n: int = 4) -> dict[str, Any]:
    return {
        "name": "resumed",
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i}} for i in range(1, n + 1)
        ],
    }


@pytest.fixture
def settings(server_pool: ServerPool, driver: str) -> DatasourceSettings:
    return server_pool.get(driver).settings("default", prefix=f"rl-{uuid4().hex[:8]}/")


async def _failed_at(runner: Runner, rid: str, step: str) -> None:
    wfnodes.FAIL_AT.add(step)
    try:
        with pytest.raises(StepFailed):
            await runner.run(flow(), {"total": 0}, request_id=rid)
    finally:
        wfnodes.FAIL_AT.clear()


async def test_a_head_moved_on_between_plan_and_lease_is_not_written_over(
    settings: DatasourceSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process A plans the resume; before it takes the lease, process B resumes the run to
    its end. A must not write its start over B's completed head: it plans again, finds the
    run completed, and runs nothing."""
    async with (
        Runner([build_datasource(settings)]) as a,
        Runner([build_datasource(settings)]) as b,
    ):
        await _failed_at(a, "moved", "s3")
        original = Planner.plan
        planner_a = a.store.planner
        raced: list[Any] = []

        async def plan(self: Planner, *args: Any, **kwargs: Any) -> Any:
            prepared = await original(self, *args, **kwargs)
            if self is planner_a and not raced:
                raced.append(await b.resume("moved"))  # between A's plan and A's lease
            return prepared

        monkeypatch.setattr(Planner, "plan", plan)
        wfnodes.CALLS.clear()
        result = await a.resume("moved")
        head = await a.head("moved")
    assert raced[0].status == "completed" and raced[0].steps_run == ("s3", "s4")
    assert result.status == "completed" and result.steps_run == ()
    assert [step for rid, step in wfnodes.CALLS if rid == "moved"] == ["s3", "s4"]  # once each
    assert head is not None and head.status == "completed" and head.attempt == 2
    assert result.vars["total"] == 10


async def test_a_head_overwritten_between_plan_and_lease_is_judged_afresh(
    settings: DatasourceSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes that are no head replace the head after the plan: the compare-and-set fails,
    the resume plans again under the lease -- ignoring what does not verify, as any resume
    does -- and continues from the run's checkpoints (the same on both drivers)."""
    ds = build_datasource(settings)
    async with Runner([ds]) as runner:
        await _failed_at(runner, "squatted", "s2")
        original = Planner.plan
        key = head_key("squatted")
        plans: list[str | None] = []

        async def plan(self: Planner, *args: Any, **kwargs: Any) -> Any:
            prepared = await original(self, *args, **kwargs)
            if not plans:
                await ds.save(key, b"someone else's bytes")
            plans.append(prepared.plan.after)
            return prepared

        monkeypatch.setattr(Planner, "plan", plan)
        wfnodes.CALLS.clear()
        result = await runner.resume("squatted")
        head = await runner.head("squatted")
    assert plans == ["s1", "s1"]  # planned again under the lease
    assert result.status == "completed" and result.steps_run == ("s2", "s3", "s4")
    assert result.vars["total"] == 10
    assert [step for _, step in wfnodes.CALLS] == ["s2", "s3", "s4"]
    assert head is not None and head.status == "completed"


async def test_folded_resumes_that_fail_again_count_toward_the_dead_letter(
    settings: DatasourceSettings,
) -> None:
    async with Runner([build_datasource(settings)], max_resumes=2) as runner:
        await _failed_at(runner, "stubborn", "s2")
        wfnodes.FAIL_AT.add("s2")
        try:
            for attempt in (2, 3):
                with pytest.raises(StepFailed):
                    await runner.resume("stubborn")
                head = await runner.head("stubborn")
                assert head is not None
                assert (head.status, head.attempt, head.failed_step) == ("failed", attempt, "s2")
            with pytest.raises(ResumeError, match="dead-lettered"):
                await runner.resume("stubborn")
            head = await runner.head("stubborn")
            assert head is not None and head.status == "dead" and head.attempt == 3
        finally:
            wfnodes.FAIL_AT.clear()
        result = await runner.resume("stubborn", force=True)
    assert result.status == "completed" and result.vars["total"] == 10


async def test_a_resume_given_input_a_run_does_not_wait_for_changes_nothing(
    settings: DatasourceSettings,
) -> None:
    ds = build_datasource(settings)
    async with Runner([ds]) as runner:
        await _failed_at(runner, "quiet", "s2")
        before = await ds.load(head_key("quiet"))
        with pytest.raises(BlokrunError):
            await runner.resume("quiet", input={"approved": True}, token="not-a-token")
        assert await ds.load(head_key("quiet")) == before
        result = await runner.resume("quiet")
    assert result.status == "completed" and result.steps_run == ("s2", "s3", "s4")
