"""Resume continues exactly where the stored record says: after a completed run, after a
failed ``--from-step``, and past a checkpoint the head missed."""

from __future__ import annotations

import pytest

from blokrun import RunError, Runner, StepFailed
from tests import records
from tests.integration import wfnodes
from tests.regressions.helpers import NODE, calls, crashing, mem

ADD = f"{NODE}:add"


async def test_a_run_whose_last_step_is_not_checkpointed_is_recorded_completed() -> None:
    """The head says completed even when the last step keeps no checkpoint, and a resume of
    the run runs nothing (it once stayed 'running' and the last step ran again)."""
    wf = {
        "name": "w",
        "steps": [
            {"name": "a", "node": ADD},
            {"name": "b", "node": ADD, "persistence": {"enabled": False}},
        ],
    }
    ds = mem()
    async with Runner([ds]) as runner:
        res = await runner.run(wf, {}, request_id="lastnc")
        assert res.status == "completed"
        head = await runner.head("lastnc")
        assert head is not None
        again = await runner.resume("lastnc")
        assert head.status == "completed"
        assert again.steps_run == ()


async def test_a_failed_from_step_resume_is_continued_from_that_step() -> None:
    """After ``resume --from-step c`` fails at c, the next plain resume runs c again with the
    edited vars; it never takes the first attempt's later checkpoint of c."""
    wf = {"name": "w", "steps": [{"name": n, "node": ADD} for n in ("a", "b", "c", "d")]}
    async with Runner([mem()]) as runner:
        await runner.run(wf, {"total": 0}, request_id="fs")
        wfnodes.FAIL_AT.add("c")
        with pytest.raises(StepFailed):
            await runner.resume("fs", from_step="c", set_vars={"total": 1000})
        wfnodes.FAIL_AT.clear()
        plan = await runner.plan_resume("fs")
        assert "c" in plan.run and "c" not in plan.skip
        res = await runner.resume("fs")
        assert "c" in res.steps_run
        assert res.vars["total"] >= 1000


async def test_resume_finds_a_checkpoint_the_head_missed_past_an_unsaved_step() -> None:
    """A crash between a checkpoint and the head: resume finds that checkpoint even when an
    un-checkpointed step lies before it, so the completed step does not run again."""
    wf = {
        "name": "w",
        "steps": [
            {"name": "a", "node": ADD},
            {"name": "b", "node": ADD, "persistence": {"enabled": False}},
            {"name": "c", "node": ADD},
            {"name": "d", "node": ADD},
        ],
    }
    ds, store = crashing()
    store.crash_key = "rf1-c"
    async with Runner([ds]) as runner:
        with pytest.raises(RunError):
            await runner.run(wf, {}, request_id="rf1")
    assert "c" in [c.step for c in await records.checkpoints(ds, "rf1")]  # the head missed it
    async with Runner([ds]) as runner:
        await runner.resume("rf1")
    assert calls("rf1").count("c") == 1, calls("rf1")


async def test_resume_finds_a_checkpoint_the_head_missed_in_a_parallel_level() -> None:
    """The same, with parallel steps whose checkpoints complete out of declaration order."""
    nap = f"{NODE}:nap"
    wf = {
        "name": "p",
        "steps": [
            {"name": "start", "node": nap},
            {"name": "a", "node": nap, "depends_on": ["start"], "inputs": {"seconds": 0.3}},
            {"name": "b", "node": nap, "depends_on": ["start"], "inputs": {"seconds": 0.05}},
            {"name": "join", "node": nap, "depends_on": ["a", "b"]},
        ],
    }
    ds, store = crashing()
    store.crash_key = "rf2-b"  # b finishes first; the crash hits between its checkpoint and head
    async with Runner([ds]) as runner:
        with pytest.raises(BaseException):  # noqa: B017 - the simulated crash, whatever wraps it
            await runner.run(wf, {}, request_id="rf2")
    assert "b" in [c.step for c in await records.checkpoints(ds, "rf2")]
    async with Runner([ds]) as runner:
        await runner.resume("rf2")
    assert calls("rf2").count("b") == 1, calls("rf2")
