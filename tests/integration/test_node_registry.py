"""Nodes a program registers by name (issue 14.13): ``Runner(nodes={...})`` functions that a
workflow -- a dict built by a service, or a file -- names without a module path; resolvable by
any process that registers the same names (a resume, a worker), and a clear error otherwise."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

from blokrun import ArgumentError, Runner, StepFailed, WorkflowError
from blokrun.config import DatasourceSettings
from blokrun.workers import serve

CALLS: Counter[str] = Counter()
FAIL: set[str] = set()


async def charge(ctx: Any, inputs: dict[str, Any]) -> Any:
    if ctx.step in FAIL:
        raise RuntimeError("card declined")
    CALLS[ctx.step] += 1
    return {"charged": inputs.get("amount", 0)}


def receipt(ctx: Any, inputs: dict[str, Any]) -> Any:  # a plain def: runs in a thread
    if ctx.step in FAIL:
        raise RuntimeError("mail server down")
    CALLS[ctx.step] += 1
    return f"receipt for {ctx.vars['pay']['charged']}"


NODES = {"charge": charge, "send-receipt": receipt}
WF = {
    "name": "shop",
    "steps": [
        {"name": "pay", "node": "charge", "inputs": {"amount": 42}},
        {"name": "mail", "node": "send-receipt", "type": "module"},  # seed style
    ],
}


@pytest.fixture(autouse=True)
def _fresh() -> None:
    CALLS.clear()
    FAIL.clear()


async def test_registered_nodes_run_and_resume_in_another_runner(tmp_path: Any) -> None:
    store = DatasourceSettings(name="default", type="filesystem", path=str(tmp_path))
    FAIL.add("mail")
    async with Runner([store], nodes=NODES) as first:
        with pytest.raises(StepFailed):
            await first.run(WF, request_id="order-1")
    FAIL.clear()
    async with Runner([store], nodes=NODES) as second:  # another process, same names
        result = await second.resume("order-1")
    assert result.vars["mail"] == "receipt for 42"
    assert Counter({"pay": 1, "mail": 1}) == CALLS  # the failed attempt raised before counting


async def test_a_process_without_the_names_says_which_are_missing(tmp_path: Any) -> None:
    store = DatasourceSettings(name="default", type="filesystem", path=str(tmp_path))
    FAIL.add("mail")
    async with Runner([store], nodes=NODES) as first:
        with pytest.raises(StepFailed):
            await first.run(WF, request_id="order-2")
    async with Runner([store], nodes={"charge": charge}) as other:
        with pytest.raises(WorkflowError) as info:
            await other.resume("order-2")
    message = str(info.value)
    assert "'send-receipt'" in message and "registered: charge" in message
    assert "$.steps[1].node" in message


async def test_workers_run_registered_nodes() -> None:
    async with Runner([DatasourceSettings(name="default", type="memory")], nodes=NODES) as r:
        await r.submit(WF, request_id="w-1")
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(r, concurrency=1, max_runs=1))
            with anyio.fail_after(10):
                done = await r.wait("w-1")
    assert done.vars["mail"] == "receipt for 42"


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        ({"echo": charge}, "built-in"),
        ({"pkg.mod:fn": charge}, "no ':'"),
        ({"bad name": charge}, "expected 1-128"),
        ({"ok": 42}, "not callable"),
    ],
)
def test_bad_registrations_are_refused(nodes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ArgumentError, match=expected):
        Runner([DatasourceSettings(name="default", type="memory")], nodes=nodes)
