"""A checkpoint server going away in the middle of a run: fail fast, lose nothing, resume."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from blokrun import CheckpointError, Runner, StepFailed
from blokrun.config import DatasourceSettings
from tests.conftest import ServerPool
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"
pytestmark = pytest.mark.server


def workflow(targets: list[str]) -> dict[str, Any]:
    return {
        "name": "outage",
        "persistence": {"targets": targets},
        "steps": [
            {"name": "s1", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "s2", "node": f"{NODE}:add", "inputs": {"n": 2}},
            {"name": "s3", "node": f"{NODE}:add", "inputs": {"n": 3}},
        ],
    }


def calls(rid: str) -> list[str]:
    return [step for r, step in wfnodes.CALLS if r == rid]


@pytest.mark.parametrize("driver", ["redis", "postgresql"])
@pytest.mark.parametrize("second_target", [False, True])
async def test_the_server_stops_mid_run_the_run_fails_fast_and_resumes_after_restart(
    server_pool: ServerPool, driver: str, second_target: bool, tmp_path: Any
) -> None:
    server = server_pool.get(driver)
    settings = [server.settings("db", timeout=2.0)]
    targets = ["db"]
    if second_target:  # the documented policy with two targets and one down: fail the run
        settings.append(DatasourceSettings(name="local", type="filesystem", path=str(tmp_path)))
        targets.append("local")
    rid = f"outage-{driver}-{int(second_target)}"

    class StopServerAfterS1:
        async def __call__(self, event: Any) -> None:
            if event.step.name == "s1":
                server.stop()

    try:
        async with Runner(settings, hooks=[StopServerAfterS1()]) as runner:
            started = time.monotonic()
            with pytest.raises(CheckpointError) as info:
                await runner.run(workflow(targets), {"total": 0}, request_id=rid)
            elapsed = time.monotonic() - started
    finally:
        server.start()
    err = info.value
    assert err.datasource == "db" and err.step == "s2", str(err)
    assert "'db'" in str(err) and "s3cret" not in str(err)
    assert elapsed < 2.0 + 3.0, elapsed  # bounded by the datasource's timeout, no hang
    assert calls(rid) == ["s1", "s2"]  # s3 never ran
    async with Runner(settings) as runner:
        result = await runner.resume(rid)  # s1's checkpoint survived on the server
    assert result.vars["total"] == 6
    ran = calls(rid)
    assert ran.count("s1") == 1 and ran.count("s3") == 1
    # s2 runs again unless its checkpoint reached the other target before the failure
    # (resume takes the latest checkpoint on any target)
    assert ran.count("s2") in ((1, 2) if second_target else (2,))


def test_step_failures_are_not_checkpoint_errors() -> None:
    assert not issubclass(StepFailed, CheckpointError)


@pytest.mark.parametrize("driver", ["redis", "postgresql"])
async def test_a_failed_group_commit_blames_each_run_for_its_own_keys_only(
    server_pool: ServerPool, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server stops under 100 concurrent runs whose saves share round trips: each run's
    error (and each 'could not record the failure' line) names that run's own keys."""
    server = server_pool.get(driver)
    n = 100
    wf = {
        "name": "blame",
        "persistence": {"targets": ["db"]},
        "steps": [
            {"name": "s1", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "gate", "node": f"{NODE}:wait_gate"},
            {"name": "s3", "node": f"{NODE}:add", "inputs": {"n": 3}},
        ],
    }
    ids = [f"blame-{i:03d}" for i in range(n)]
    errors: dict[str, BaseException] = {}
    wfnodes.GATE.clear()
    try:
        async with Runner([server.settings("db", timeout=2.0)], lease_ttl=None) as runner:
            assert runner.datasources["db"].group_commit is not None

            async def one(rid: str) -> None:
                try:
                    await runner.run(wf, {"total": 0}, request_id=rid)
                except CheckpointError as exc:
                    errors[rid] = exc

            async with anyio.create_task_group() as tg:
                for rid in ids:
                    tg.start_soon(one, rid)
                with anyio.fail_after(30):
                    await wfnodes.wait_for_gate_waiters(n)
                server.stop()  # fast shutdown: every connection dies at once
                wfnodes.GATE.set()
    finally:
        server.start()
    assert set(errors) == set(ids)  # every run failed on the save of its gate step
    for rid, exc in errors.items():
        assert isinstance(exc, CheckpointError)
        assert exc.request_id == rid
        assert exc.key is not None
        assert f".{rid}/" in exc.key or exc.key.endswith(f".{rid}") or exc.key.startswith(rid)
        others = [o for o in ids if o != rid and o in str(exc)]
        assert not others, f"{rid}'s error names {others}: {exc}"
    for record in caplog.records:
        message = record.getMessage()
        named = [rid for rid in ids if rid in message]
        assert len(named) <= 1, f"a log line names several runs: {message}"
