from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from blokrun import RunError, Runner
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource
from blokrun.datasources.memory import MemoryStore
from tests.integration import wfnodes
from tests.regressions.brc import NODE, calls, mem

NAP = f"{NODE}:nap"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    wfnodes.CALLS.clear()
    wfnodes.FAIL_AT.clear()
    wfnodes.TIMES.clear()
    yield
    wfnodes.FAIL_AT.clear()


class SlowStore(MemoryStore):
    """A store whose writes take 0.3 s (a remote database across a WAN, a busy disk)."""

    async def save_batch(self, entries):  # type: ignore[override]
        await anyio.sleep(0.3)
        await super().save_batch(entries)


async def test_finished_branch_waiting_for_hook_lock_is_cancelled() -> None:
    """BUG (engine.py:190): the lock is acquired outside the shield. A branch that finished
    while a sibling's checkpoint holds the lock is cancelled when a third branch fails, so
    its completed step is never checkpointed and runs again on resume."""
    wf = {
        "name": "p",
        "steps": [
            {"name": "start", "node": NAP},
            {"name": "a", "node": NAP, "depends_on": ["start"], "inputs": {"seconds": 0.05}},
            {"name": "b", "node": NAP, "depends_on": ["start"], "inputs": {"seconds": 0.1}},
            {
                "name": "c",
                "node": NAP,
                "depends_on": ["start"],
                "inputs": {"seconds": 0.2, "fail": True},
            },
            {"name": "join", "node": NAP, "depends_on": ["a", "b", "c"]},
        ],
    }
    ds = Datasource(DatasourceSettings(name="default", type="memory"), SlowStore())
    wfnodes.FAIL_AT.add("c")
    async with Runner([ds]) as runner:
        with pytest.raises(RunError):
            await runner.run(wf, {}, request_id="lk")
        wfnodes.FAIL_AT.clear()
        print("b finished at", wfnodes.TIMES[("lk", "b")])
        await runner.resume("lk")
    print("calls:", calls("lk"))
    assert calls("lk").count("b") == 1, calls("lk")


@pytest.mark.xfail(
    strict=True,
    reason="parallel branches share ctx.vars: a failing branch's partial changes can be checkpointed by a sibling (documented; per-branch copies are future work)",
)
async def test_sibling_partial_mutation_is_checkpointed_then_reapplied() -> None:
    """BUG: in a parallel graph a checkpoint of branch a captures ctx.vars changes of branch b
    that has not finished; b fails, resume restores them and runs b again: applied twice."""
    wf = {
        "name": "p",
        "steps": [
            {"name": "start", "node": NAP},
            {"name": "a", "node": NAP, "depends_on": ["start"], "inputs": {"seconds": 0.05}},
            {
                "name": "b",
                "node": "tests.regressions.rvnodes:bump_then_fail",
                "depends_on": ["start"],
                "inputs": {"seconds": 0.3, "fail": "${ctx.vars.fail_b ?? false}"},
            },
        ],
    }
    async with Runner([mem()]) as runner:
        with pytest.raises(RunError):
            await runner.run(wf, {"fail_b": True}, request_id="pm")
        res = await runner.resume("pm", set_vars={"fail_b": False})
    print("counter after b ran successfully once:", res.vars["counter"], calls("pm"))
    assert res.vars["counter"] == 1


async def test_parallel_checkpoint_with_blobs_dict_changed_size(tmp_path: Any) -> None:
    """BUG (state.py:141): StateWriter.encode iterates run.vars with awaits inside (blob
    exists()), while a sibling branch adds vars -> RuntimeError, the run fails."""
    wf = {
        "name": "p",
        "steps": [
            {"name": "start", "node": NAP},
            {
                "name": "a",
                "node": f"{NODE}:big",
                "depends_on": ["start"],
                "inputs": {"seed": 1, "size": 40000},
            },
            {
                "name": "b",
                "node": "tests.regressions.rvnodes:churn",
                "depends_on": ["start"],
                "inputs": {"n": 3000},
            },
        ],
    }
    blobs = build_datasource(
        DatasourceSettings(name="blobs", type="filesystem", path=str(tmp_path))
    )
    async with Runner([mem(), blobs], blob_datasource="blobs", blob_threshold=1024) as runner:
        try:
            res = await runner.run(wf, {}, request_id="bl")
        except RunError as exc:
            print("run failed:", exc)
            raise
    assert res.status == "completed"
