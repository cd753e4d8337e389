"""History and time travel: every checkpoint kept, state at a step, diff, --from-step, --set, --dry-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blokrun import ResumeError, Runner
from blokrun.config import DatasourceSettings
from tests.integration import wfnodes
from tests.integration.test_cli import blokrun, linear, write_wf

NODE = "tests.integration.wfnodes"


def mem() -> DatasourceSettings:
    return DatasourceSettings(name="default", type="memory")


def calls(rid: str) -> list[str]:
    return [step for r, step in wfnodes.CALLS if r == rid]


async def test_restart_from_an_earlier_step_keeps_the_old_checkpoints() -> None:
    async with Runner([mem()]) as runner:
        first = await runner.run(linear(4), {"total": 0}, request_id="tt-1")
        plan = await runner.plan_resume("tt-1", from_step="s3")
        assert (plan.after, plan.skip, plan.run) == ("s2", ("s1", "s2"), ("s3", "s4"))
        again = await runner.resume(
            "tt-1", from_step="s3", set_vars={"total": 100, "note.by": "ops"}
        )
        info = await runner.inspect("tt-1")
    assert first.vars["total"] == 10
    assert again.vars["total"] == 100 + 3 + 4 and again.vars["note"] == {"by": "ops"}
    assert calls("tt-1") == ["s1", "s2", "s3", "s4", "s3", "s4"]
    # The first attempt's checkpoints are still there, beside the new ones.
    # #5 is the --set edit, stored as a new version of s2's checkpoint before s3 ran again
    assert [(c.seq, c.step, c.attempt) for c in info.checkpoints] == [
        (1, "s1", 1), (2, "s2", 1), (3, "s3", 1), (4, "s4", 1), (5, "s2", 2), (6, "s3", 2), (7, "s4", 2),
    ]  # fmt: skip
    assert len({c.key for c in info.checkpoints}) == 7


async def test_state_at_a_step_and_by_number() -> None:
    async with Runner([mem()]) as runner:
        await runner.run(linear(3), {"total": 0}, request_id="sa-1")
        info, state = await runner.state_at("sa-1", step="s2")
        assert (info.seq, state["total"]) == (2, 3)
        info, state = await runner.state_at("sa-1", seq=1)
        assert (info.step, state["total"]) == ("s1", 1)
        with pytest.raises(
            ResumeError, match="no checkpoint for step 'zz'; checkpoints: #1 s1, #2 s2, #3 s3"
        ):
            await runner.state_at("sa-1", step="zz")


async def test_from_an_unknown_step_or_a_bad_set_path_is_refused() -> None:
    async with Runner([mem()]) as runner:
        await runner.run(linear(2), {"total": 0}, request_id="bad-1")
        with pytest.raises(ResumeError, match="'nope' is not a step"):
            await runner.resume("bad-1", from_step="nope")
        with pytest.raises(ResumeError, match=r"vars\.total is a int, not an object"):
            await runner.resume("bad-1", from_step="s2", set_vars={"total.x": 1})


def test_cli_dry_run_from_step_set_inspect_step_and_diff(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, linear(3))
    assert (
        blokrun(
            tmp_path,
            "run",
            str(wf),
            "--request-id",
            "cli-tt",
            "--input",
            '{"total": 0}',
            WF_FAIL_AT="s3",
        ).returncode
        == 1
    )
    dry = blokrun(tmp_path, "resume", "cli-tt", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would resume after checkpoint #2 (s2) as attempt 2" in dry.stdout
    assert "skip: s1, s2" in dry.stdout and "run:  s3" in dry.stdout
    done = blokrun(
        tmp_path, "resume", "cli-tt", "--from-step", "s2", "--set", "total=50", "--set", "who=ops"
    )
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stdout)
    assert final["total"] == 50 + 2 + 3 and final["who"] == "ops"
    at = blokrun(tmp_path, "inspect", "cli-tt", "--step", "#1")  # s1 as first stored
    assert json.loads(at.stdout)["total"] == 1
    diff = blokrun(tmp_path, "diff", "cli-tt", "#1", "s3")
    assert diff.returncode == 0, diff.stderr
    assert "~ vars.total: 1 -> 55" in diff.stdout and '+ vars.who = "ops"' in diff.stdout
    table = blokrun(tmp_path, "inspect", "cli-tt").stdout
    assert "attempt" in table and table.count(" s2 ") == 2  # both attempts of s2 are listed


async def test_a_key_pattern_with_the_date_is_found_by_inspect_and_the_scan_fallback() -> None:
    from blokrun.persistence.keys import head_key

    wf = linear(3) | {"persistence": {"keyPattern": "ck/${ctx.date}/${ctx.request.id}/${stepName}"}}
    wfnodes.FAIL_AT.add("s3")
    async with Runner([mem()]) as runner:
        with pytest.raises(Exception, match="s3 failed"):
            await runner.run(wf, {"total": 0}, request_id="dated-1")
        info = await runner.inspect("dated-1")
        assert [c.step for c in info.checkpoints] == ["s1", "s2"]
        await runner.datasources["default"].delete(head_key("dated-1"))
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("dated-1")
    assert result.vars["total"] == 6 and calls("dated-1") == ["s1", "s2", "s3", "s3"]
