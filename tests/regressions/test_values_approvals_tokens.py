"""User values shaped like blokrun's own markers, approvals and the dead-letter limit, one
resume token used twice at once."""

from __future__ import annotations

import anyio
import pytest

from blokrun import Runner, StepFailed
from tests.integration import wfnodes
from tests.regressions.helpers import NODE, calls, mem

ADD = f"{NODE}:add"


async def test_a_user_value_shaped_like_a_blob_reference_is_kept_as_data() -> None:
    """A user dict ``{"$blokrun": "ref", "v": {...}}`` survives a resume as the same dict; it
    is never taken for a blob reference (it was: escaped on write, un-escaped on read)."""
    wf = {
        "name": "w",
        "steps": [
            {
                "name": "fetch",
                "node": "echo",
                "inputs": {
                    "$blokrun": "ref",
                    "v": {"ds": "elsewhere", "key": "k", "sha256": "0", "size": 1},
                },
            },
            {"name": "next", "node": ADD},
        ],
    }
    async with Runner([mem()]) as runner:
        wfnodes.FAIL_AT.add("next")
        with pytest.raises(StepFailed):
            await runner.run(wf, {}, request_id="ref1")
        wfnodes.FAIL_AT.clear()
        res = await runner.resume("ref1")
    assert res.vars["fetch"]["$blokrun"] == "ref"


async def test_answering_approvals_does_not_count_towards_the_dead_letter_limit() -> None:
    """Ten answered ``await-input`` steps are ten resumes, none of them a recovery: the first
    resume after the run's first real failure is not refused as dead-lettered."""
    steps = [
        {"name": f"ask{i}", "node": "await-input", "inputs": {"prompt": "ok?"}} for i in range(10)
    ]
    steps.append({"name": "work", "node": ADD})
    wf = {"name": "approvals", "steps": steps}
    async with Runner([mem()]) as runner:
        res = await runner.run(wf, {}, request_id="sus2")
        wfnodes.FAIL_AT.add("work")
        for i in range(10):
            try:
                res = await runner.resume("sus2", input={"ok": True}, token=res.token)
            except StepFailed:
                assert i == 9
        wfnodes.FAIL_AT.clear()
        head = await runner.head("sus2")
        assert head is not None and head.status == "failed"
        done = await runner.resume("sus2")  # the first retry after the first failure
    assert done.status == "completed" and done.steps_run == ("work",)


async def test_two_resumes_with_one_token_run_the_next_step_once() -> None:
    """Was: the token was not consumed atomically, two resumes with it both proceeded.
    Now the run's lease lets one through; the other is told the run is busy elsewhere."""
    wf = {
        "name": "w",
        "steps": [
            {"name": "ask", "node": "await-input", "inputs": {"prompt": "amount?"}},
            {"name": "charge", "node": f"{NODE}:nap", "inputs": {"seconds": 0.1}},
        ],
    }
    async with Runner([mem()]) as runner:
        res = await runner.run(wf, {}, request_id="tok")
        results: list[object] = []

        async def one() -> None:
            try:
                results.append(await runner.resume("tok", input={"n": 1}, token=res.token))
            except Exception as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
    assert calls("tok").count("charge") == 1
    assert sorted(type(r).__name__ for r in results) == ["RunBusy", "RunResult"]
