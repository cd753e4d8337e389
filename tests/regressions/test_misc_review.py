from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from blokrun import Runner, StepFailed
from blokrun.errors import ResumeError
from tests.integration import wfnodes
from tests.regressions.brc import NODE, calls, mem

ADD = f"{NODE}:add"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    wfnodes.CALLS.clear()
    wfnodes.FAIL_AT.clear()
    yield
    wfnodes.FAIL_AT.clear()


async def test_user_value_shaped_like_blob_ref_breaks_resume() -> None:
    """BUG (state.py:192/209 + codec.py:128): a user dict {"$blokrun": "ref", "v": {...}} is
    escaped on write but un-escaped on read, then resolve_blobs treats it as a blob reference."""
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
        try:
            res = await runner.resume("ref1")
        except ResumeError as exc:
            print("resume refused:", exc)
            raise
    assert res.vars["fetch"]["$blokrun"] == "ref"


async def test_dead_letter_after_approvals() -> None:
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
        print("head after first real failure:", head.status, "attempt", head.attempt)
        try:
            await runner.resume("sus2")  # first retry after the first failure
        except ResumeError as exc:
            print("refused:", exc)
            raise


async def test_concurrent_resumes_with_one_token_run_next_step_once() -> None:
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
        results = []

        async def one() -> None:
            try:
                results.append(await runner.resume("tok", input={"n": 1}, token=res.token))
            except Exception as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
    print(
        "results:",
        [getattr(r, "status", r) for r in results],
        "charge calls:",
        calls("tok").count("charge"),
    )
    assert calls("tok").count("charge") == 1
    assert sorted(type(r).__name__ for r in results) == ["RunBusy", "RunResult"]
