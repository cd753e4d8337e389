"""The ``durability`` setting: "sync" (default), "async" (write-behind) and "exit"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from blokrun import CheckpointError, ConfigError, Runner, StepFailed, WorkflowError, load_workflow
from blokrun.config import DatasourceSettings, settings_from_env
from blokrun.datasources import Datasource
from blokrun.datasources.memory import MemoryStore
from tests import records
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"
Entry = tuple[str, bytes, float | None]


class GatedStore(MemoryStore):
    """Records the order of events; a checkpoint save of ``gate_key`` waits for ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.gate = anyio.Event()
        self.gate_key: str | None = None
        self.fail_key: str | None = None

    async def save_batch(self, entries: Sequence[Entry]) -> None:
        keys = [k for k, _, _ in entries if not k.startswith(("_blokrun.", "\x1e"))]
        for key in keys:
            self.events.append(f"save {key} start")
            if key == self.fail_key:
                raise OSError("disk full (simulated)")
            if key == self.gate_key:
                with anyio.fail_after(5):
                    await self.gate.wait()
        await super().save_batch(entries)
        for key in keys:
            self.events.append(f"save {key} end")


def _runner(store: GatedStore, durability: str = "sync") -> Runner:
    ds = Datasource(DatasourceSettings(name="default", type="memory"), store)
    return Runner([ds], durability=durability, lease_ttl=None)  # type: ignore[arg-type]


CURRENT: list[GatedStore] = []


async def opener(ctx: Any, inputs: dict[str, Any]) -> Any:
    """Opens the gate the previous step's save waits on; records that it ran."""
    store = CURRENT[-1]
    store.events.append(f"step {ctx.step}")
    store.gate.set()
    return None


def _wf(n: int, **persistence: Any) -> dict[str, Any]:
    return {
        "name": "dur",
        "persistence": persistence,
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i}} for i in range(1, n + 1)
        ],
    }


async def test_async_saves_overlap_the_next_step_and_all_land_before_run_returns() -> None:
    store = GatedStore()
    store.gate_key = "g-s1"
    runner = _runner(store, "async")
    # s2 opens the gate s1's save waits on: in "sync" this would wait 5 s and fail.
    wf = {
        "name": "gated",
        "steps": [
            {"name": "s1", "node": f"{NODE}:add"},
            {"name": "s2", "node": "tests.integration.test_durability:opener"},
            {"name": "s3", "node": f"{NODE}:add"},
        ],
    }
    CURRENT.append(store)
    async with runner:
        result = await runner.run(wf, {"total": 0}, request_id="g")
        assert result.vars["total"] == 2
        # s2 ran while s1's checkpoint was being saved; s3's save waited for s2's (order).
        ev = store.events
        assert ev.index("step s2") < ev.index("save g-s1 end")
        assert ev.index("save g-s1 end") < ev.index("save g-s2 start")
        assert ev.index("save g-s2 end") < ev.index("save g-s3 start")
        head = await records.head(runner.datasources["default"], "g")
        assert head.status == "completed" and head.last_done == "s3"  # flushed before returning
        resumed = await runner.resume("g")
        assert resumed.steps_run == ()


async def test_sync_save_blocks_the_next_step() -> None:
    store = GatedStore()
    store.gate_key = "g-s1"
    store.gate.set()  # nothing waits: just check the order
    async with _runner(store) as runner:
        await runner.run(_wf(3), {"total": 0}, request_id="g")
    ev = store.events
    assert ev == [f"save g-s{i} {w}" for i in (1, 2, 3) for w in ("start", "end")]


async def test_a_failed_write_behind_fails_the_run_at_the_next_step_boundary() -> None:
    store = GatedStore()
    store.fail_key = "f-s2"
    wfnodes.CALLS.clear()
    async with _runner(store, "async") as runner:
        with pytest.raises(CheckpointError) as info:
            await runner.run(_wf(5), {"total": 0}, request_id="f")
        assert info.value.datasource == "default" and "disk full" in str(info.value)
        ran = [s for r, s in wfnodes.CALLS if r == "f"]
        assert ran in (["s1", "s2"], ["s1", "s2", "s3"])  # at most the one step after
        head = await records.head(runner.datasources["default"], "f")
        assert head.status == "failed" and head.last_done == "s1"  # stands on the last stored one
        store.fail_key = None
        wfnodes.CALLS.clear()
        resumed = await runner.resume("f")
        assert resumed.vars["total"] == 15
        assert next(s for r, s in wfnodes.CALLS if r == "f") == "s2"


async def test_exit_stores_one_checkpoint_per_attempt_and_a_failure_keeps_the_last_good_step() -> (
    None
):
    store = GatedStore()
    wfnodes.CALLS.clear()
    wfnodes.FAIL_AT.add("s4")
    try:
        async with _runner(store, "exit") as runner:
            with pytest.raises(StepFailed):
                await runner.run(_wf(5), {"total": 0}, request_id="x")
            assert [e for e in store.events if e.endswith("start")] == ["save x-s3 start"]
            rec = await records.checkpoint(runner.datasources["default"], "x-s3")
            assert rec.done == ["s1", "s2", "s3"] and rec.vars["total"] == 6
            wfnodes.FAIL_AT.clear()
            wfnodes.CALLS.clear()
            resumed = await runner.resume("x")
            assert resumed.vars["total"] == 15
            assert [s for r, s in wfnodes.CALLS if r == "x"] == ["s4", "s5"]
            assert [e for e in store.events if e.endswith("start")][-1] == "save x-s5 start"
    finally:
        wfnodes.FAIL_AT.clear()


async def test_the_workflow_file_overrides_the_runner_default() -> None:
    store = GatedStore()
    async with _runner(store, "sync") as runner:
        await runner.run(_wf(3, durability="exit"), {"total": 0}, request_id="o")
    assert [e for e in store.events if e.endswith("start")] == ["save o-s3 start"]


def test_bad_durability_values_name_the_variable_or_path() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_env({"BLOKRUN_DURABILITY": "eventually"})
    assert info.value.variable == "BLOKRUN_DURABILITY" and "sync, async, exit" in str(info.value)
    with pytest.raises(WorkflowError) as wf_info:
        load_workflow(_wf(1, durability="later"))
    assert "$.persistence.durability" in str(wf_info.value)
    assert "sync, async, exit" in str(wf_info.value)
    with pytest.raises(ConfigError):
        Runner([], durability="never")  # type: ignore[arg-type]
