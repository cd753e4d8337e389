"""Regression tests from the code review: resume correctness."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from blokrun import RunError, Runner, StepFailed
from tests.integration import wfnodes
from tests.regressions.brc import NODE, calls, crashing, mem


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    wfnodes.CALLS.clear()
    wfnodes.FAIL_AT.clear()
    yield
    wfnodes.FAIL_AT.clear()


ADD = f"{NODE}:add"


async def test_last_step_not_checkpointed_head_never_completed() -> None:
    """BUG: _drive sets run.status='completed' before on_run_end, and Checkpointer.on_run_end
    then skips writing the completed head; with an un-checkpointed last step the head stays
    'running' forever and a resume runs the last step again."""
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
        print("head status after a completed run:", head.status)
        again = await runner.resume("lastnc")
        print("resume of the completed run ran:", again.steps_run, "calls:", calls("lastnc"))
        assert head.status == "completed"
        assert again.steps_run == ()


async def test_from_step_then_failure_next_resume_skips_rerun_step() -> None:
    """BUG: after `resume --from-step c`, the head records seq=4 (the old latest) but key of
    checkpoint #2; if c fails, the next plain resume takes attempt 1's checkpoint of c (#3)
    and never re-runs c: stale output, and --set edits are lost."""
    wf = {"name": "w", "steps": [{"name": n, "node": ADD} for n in ("a", "b", "c", "d")]}
    async with Runner([mem()]) as runner:
        await runner.run(wf, {"total": 0}, request_id="fs")
        wfnodes.FAIL_AT.add("c")
        with pytest.raises(StepFailed):
            await runner.resume("fs", from_step="c", set_vars={"total": 1000})
        wfnodes.FAIL_AT.clear()
        plan = await runner.plan_resume("fs")
        print(
            "plan after failed --from-step c:",
            plan.after,
            plan.from_seq,
            "skip",
            plan.skip,
            "run",
            plan.run,
        )
        res = await runner.resume("fs")
        print("vars total:", res.vars["total"], "steps_run:", res.steps_run)
        assert "c" in res.steps_run
        assert res.vars["total"] >= 1000


async def test_roll_forward_stops_at_uncheckpointed_step() -> None:
    """BUG: roll_forward only probes the first not-done step; when it is not checkpointed,
    a newer checkpoint the head missed (crash between checkpoint and head) is ignored and
    that completed step runs again."""
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
    print("stored c checkpoint:", await ds.load("rf1-c") is not None)
    async with Runner([ds]) as runner:
        await runner.resume("rf1")
    print("calls:", calls("rf1"))
    assert calls("rf1").count("c") == 1, calls("rf1")


async def test_roll_forward_parallel_out_of_order() -> None:
    """BUG: same, parallel graph: checkpoints complete out of declaration order."""
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
        with pytest.raises(BaseException):  # noqa: B017 - the simulated crash, whatever wraps it  # noqa: B017 - the simulated crash, whatever wraps it
            await runner.run(wf, {}, request_id="rf2")
    print("b checkpoint stored:", await ds.load("rf2-b") is not None)
    async with Runner([ds]) as runner:
        await runner.resume("rf2")
    print("calls:", calls("rf2"))
    assert calls("rf2").count("b") == 1, calls("rf2")
