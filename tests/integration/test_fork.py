"""Fork: a new run from a checkpoint of an old one; the old run's record is untouched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from blokrun import DefinitionChanged, RunExists, Runner, RunNotFound, StepFailed
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource
from tests.integration import wfnodes
from tests.integration.test_cli import blokrun, write_wf

NODE = "tests.integration.wfnodes"


def fs(root: Path) -> Datasource:
    return build_datasource(DatasourceSettings(name="default", type="filesystem", path=str(root)))


def linear(n: int) -> dict[str, Any]:
    return {
        "name": "forkable",
        "version": "1",
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i}} for i in range(1, n + 1)
        ],
    }


def calls(rid: str) -> list[str]:
    return [step for r, step in wfnodes.CALLS if r == rid]


async def snapshot(ds: Datasource, rid: str) -> dict[str, bytes]:
    """Every key of run ``rid`` and its bytes (to show a fork changes none of them)."""
    keys = [k for k in await ds.keys("") if f".{rid}/" in k or k.endswith(f".{rid}")]
    keys += [k for k in await ds.keys(f"{rid}-")]
    return await ds.load_batch(sorted(set(keys)))


async def test_fork_from_a_step_runs_that_step_and_the_rest_under_a_new_id(
    tmp_path: Path,
) -> None:
    ds = fs(tmp_path)
    async with Runner([ds]) as runner:
        first = await runner.run(linear(4), {"total": 0}, request_id="orig")
        before = await snapshot(ds, "orig")
        forked = await runner.fork("orig", new_id="copy", from_step="s3", set_vars={"total": 100})
        after = await snapshot(ds, "orig")
        info = await runner.inspect("copy")
        orig_info = await runner.inspect("orig")
    assert first.vars["total"] == 10
    assert forked.request_id == "copy"
    assert calls("copy") == ["s3", "s4"]  # s1, s2 are taken from orig's checkpoint
    assert forked.vars["total"] == 107 and forked.vars["s1"] == {"seen_total": 1}
    assert forked.steps_skipped == ("s1", "s2")
    assert len(before) >= 6  # head, run record, 4 checkpoints (and aliases)
    assert before == after  # the old run's records are byte for byte the same
    assert orig_info.status == "completed"
    statuses = [(c.step, c.status) for c in info.checkpoints]
    assert statuses == [("s2", "forked"), ("s3", "completed"), ("s4", "completed")]


async def test_a_fork_that_fails_resumes_as_its_own_run(tmp_path: Path) -> None:
    async with Runner([fs(tmp_path)]) as runner:
        await runner.run(linear(4), {"total": 0}, request_id="src")
        wfnodes.FAIL_AT.add("s4")
        with pytest.raises(StepFailed) as info:
            await runner.fork("src", new_id="f1", from_step="s2")
        assert info.value.request_id == "f1"
        wfnodes.FAIL_AT.clear()
        resumed = await runner.resume("f1")
    assert calls("f1") == ["s2", "s3", "s4", "s4"]
    assert resumed.vars["total"] == 10


async def test_fork_of_a_failed_run_from_its_latest_checkpoint(tmp_path: Path) -> None:
    async with Runner([fs(tmp_path)]) as runner:
        wfnodes.FAIL_AT.add("s3")
        with pytest.raises(StepFailed):
            await runner.run(linear(4), {"total": 0}, request_id="broken")
        wfnodes.FAIL_AT.clear()
        forked = await runner.fork("broken")
        info = await runner.inspect("broken")
    assert forked.request_id != "broken"
    assert calls(forked.request_id) == ["s3", "s4"]
    assert info.status == "failed"  # the original stays failed, to be resumed or not


async def test_fork_from_the_first_step_keeps_the_edited_inputs_across_a_crash(
    tmp_path: Path,
) -> None:
    async with Runner([fs(tmp_path)]) as runner:
        await runner.run(linear(2), {"total": 0}, request_id="a")
        wfnodes.FAIL_AT.add("s1")
        with pytest.raises(StepFailed):
            await runner.fork("a", new_id="b", from_step="s1", set_vars={"total": 50})
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("b")
    assert result.vars["total"] == 53


async def test_fork_refuses_an_existing_id_an_unknown_run_and_a_changed_workflow(
    tmp_path: Path,
) -> None:
    async with Runner([fs(tmp_path)]) as runner:
        await runner.run(linear(3), {"total": 0}, request_id="x")
        await runner.run(linear(3), {"total": 0}, request_id="y")
        with pytest.raises(RunExists):
            await runner.fork("x", new_id="y")
        with pytest.raises(RunExists):
            await runner.fork("x", new_id="x")
        with pytest.raises(RunNotFound):
            await runner.fork("nope", new_id="z")
        changed = linear(3)
        changed["steps"][0]["inputs"] = {"n": 99}
        with pytest.raises(DefinitionChanged):
            await runner.fork("x", new_id="z", from_step="s3", workflow=changed)
        forced = await runner.fork("x", new_id="z", from_step="s3", workflow=changed, force=True)
    assert forced.vars["total"] == 6
    assert calls("y") == ["s1", "s2", "s3"]  # y was not touched by the refused fork


def test_the_fork_command(tmp_path: Path) -> None:
    home = tmp_path / "home"
    wf = write_wf(tmp_path, linear(3))
    assert (
        blokrun(home, "run", str(wf), "--request-id", "c1", "--input", '{"total": 0}').returncode
        == 0
    )
    out = blokrun(home, "fork", "c1", "--from-step", "s2", "--set", "total=10", "--as", "c2")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total"] == 15
    assert "forked c1 as c2: skipped 1 step(s), ran 2" in out.stderr
    runs = blokrun(home, "runs")
    assert "c1" in runs.stdout and "c2" in runs.stdout
    bad = blokrun(home, "fork", "c1", "--from-step", "nope")
    assert bad.returncode == 2
    assert "--from-step 'nope' is not a step" in bad.stderr
