"""Sub-workflows: a step runs another workflow file as a child run with an id derived from
the parent's; a resumed parent finds its child (finished: not run again; unfinished:
resumed); the child's result is the step's; mistakes in the child file are caught at load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from blokrun import Runner, StepFailed, WorkflowError
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource
from tests.conftest import ServerPool
from tests.integration import wfnodes
from tests.servers.base import settings_env

NODE = "tests.integration.wfnodes"


def fs(root: Path) -> Datasource:
    return build_datasource(DatasourceSettings(name="default", type="filesystem", path=str(root)))


def add(name: str, n: int) -> dict[str, Any]:
    return {"name": name, "node": f"{NODE}:add", "inputs": {"n": n}}


def write(folder: Path, name: str, doc: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


def calls(rid: str) -> list[str]:
    return [step for r, step in wfnodes.CALLS if r == rid]


def family(tmp_path: Path) -> Path:
    """parent.json: prepare, then child.json (in sub/) as step 'billing', then finish."""
    write(
        tmp_path / "flows" / "sub",
        "child.json",
        {"name": "billing", "steps": [add("c1", 10), add("c2", 20)]},
    )
    return write(
        tmp_path / "flows",
        "parent.json",
        {
            "name": "order",
            "steps": [
                add("prepare", 1),
                {"name": "billing", "workflow": "sub/child.json", "inputs": {"total": 100}},
                add("finish", 2),
            ],
        },
    )


async def test_the_child_runs_as_its_own_run_and_its_result_is_the_steps(tmp_path: Path) -> None:
    parent = family(tmp_path)
    async with Runner([fs(tmp_path / "ck")]) as runner:
        result = await runner.run(parent, {"total": 0}, request_id="p-1")
        child = await runner.inspect("p-1:billing")
        info = await runner.inspect("p-1")
    assert calls("p-1") == ["prepare", "finish"]
    assert calls("p-1:billing") == ["c1", "c2"]
    assert result.vars["billing"]["total"] == 130  # the child's final vars
    assert result.vars["total"] == 3  # the parent's own vars are its own
    assert child.status == "completed" and child.parent == "p-1"
    assert [(c.step, c.request_id, c.status) for c in info.children] == [
        ("billing", "p-1:billing", "completed")
    ]


async def test_a_resumed_parent_does_not_run_a_finished_child_again(tmp_path: Path) -> None:
    parent = family(tmp_path)
    wfnodes.FAIL_AT.add("finish")
    async with Runner([fs(tmp_path / "ck")]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(parent, {"total": 0}, request_id="p-2")
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("p-2")
    assert calls("p-2:billing") == ["c1", "c2"]  # once
    assert calls("p-2") == ["prepare", "finish", "finish"]
    assert result.vars["billing"]["total"] == 130


async def test_a_child_that_failed_is_resumed_from_its_own_checkpoint(tmp_path: Path) -> None:
    parent = family(tmp_path)
    wfnodes.FAIL_AT.add("c2")
    async with Runner([fs(tmp_path / "ck")]) as runner:
        with pytest.raises(StepFailed) as info:
            await runner.run(parent, {"total": 0}, request_id="p-3")
        assert "child run p-3:billing (billing) failed" in str(info.value)
        assert (await runner.inspect("p-3:billing")).status == "failed"
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("p-3")
    assert calls("p-3:billing") == ["c1", "c2", "c2"]  # c1 not again
    assert calls("p-3") == ["prepare", "finish"]
    assert result.vars["finish"] == {"seen_total": 3}


async def test_a_map_of_sub_workflows_gives_each_item_its_own_child(tmp_path: Path) -> None:
    write(tmp_path / "flows", "one.json", {"name": "one", "steps": [add("inc", 1)]})
    parent = write(
        tmp_path / "flows",
        "fan.json",
        {
            "name": "fan",
            "steps": [
                {
                    "name": "each",
                    "workflow": "one.json",
                    "map": {"items": [5, 6, 7], "concurrency": 2},
                    "inputs": {"total": "${ctx.item}"},
                }
            ],
        },
    )
    async with Runner([fs(tmp_path / "ck")]) as runner:
        result = await runner.run(parent, request_id="m-1")
    assert [r["total"] for r in result.vars["each"]["results"]] == [6, 7, 8]
    assert sorted(calls("m-1:each:0") + calls("m-1:each:2")) == ["inc", "inc"]


def load_error(path: Path) -> WorkflowError:
    from blokrun.execution.workflows import load_workflow

    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    return info.value


def test_a_missing_child_file_names_where_it_looked(tmp_path: Path) -> None:
    parent = write(
        tmp_path, "p.json", {"name": "p", "steps": [{"name": "c", "workflow": "nope.json"}]}
    )
    err = load_error(parent)
    assert err.path == "$.steps[0].workflow"
    assert "sub-workflow 'nope.json' not found (looked at" in str(err)
    assert str(tmp_path / "nope.json") in str(err)


def test_a_mistake_in_the_child_is_reported_with_both_paths(tmp_path: Path) -> None:
    write(tmp_path, "bad.json", {"name": "bad", "steps": [{"name": "x", "node": "nope"}]})
    parent = write(
        tmp_path, "p.json", {"name": "p", "steps": [{"name": "c", "workflow": "bad.json"}]}
    )
    err = load_error(parent)
    assert err.path == "$.steps[0].workflow"
    assert "in sub-workflow 'bad.json'" in str(err) and "$.steps[0]" in str(err)
    assert "unknown built-in node 'nope'" in str(err)


def test_workflows_that_run_each_other_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "a.json", {"name": "a", "steps": [{"name": "to-b", "workflow": "b.json"}]})
    write(tmp_path, "b.json", {"name": "b", "steps": [{"name": "to-a", "workflow": "a.json"}]})
    err = load_error(tmp_path / "a.json")
    assert "sub-workflows run each other in a cycle" in str(err)
    selfish = write(
        tmp_path, "s.json", {"name": "s", "steps": [{"name": "me", "workflow": "s.json"}]}
    )
    assert "cycle" in str(load_error(selfish))


def test_a_step_with_node_and_workflow_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "c.json", {"name": "c", "steps": [add("x", 1)]})
    parent = write(
        tmp_path,
        "p.json",
        {"name": "p", "steps": [{"name": "s", "node": "echo", "workflow": "c.json"}]},
    )
    err = load_error(parent)
    assert "a step has one of 'node', 'workflow' or 'choice', not node and workflow" in str(err)


def test_inspect_shows_the_tree(tmp_path: Path) -> None:
    from tests.integration.test_cli import blokrun

    parent = family(tmp_path)
    home = tmp_path / "home"
    ran = blokrun(home, "run", str(parent), "--request-id", "t-1", "--input", '{"total": 0}')
    assert ran.returncode == 0, ran.stderr
    shown = blokrun(home, "inspect", "t-1")
    assert "child runs:" in shown.stdout
    assert "billing" in shown.stdout and "t-1:billing  completed" in shown.stdout
    child = blokrun(home, "inspect", "t-1:billing")
    assert "child run of t-1" in child.stdout
    as_json = json.loads(blokrun(home, "inspect", "t-1", "--json").stdout)
    assert as_json["children"] == [
        {"step": "billing", "request_id": "t-1:billing", "status": "completed"}
    ]


@pytest.mark.parametrize("driver", ["filesystem", "redis"])
def test_sigkill_inside_a_child_then_resume_the_parent(
    driver: str, tmp_path: Path, server_pool: ServerPool
) -> None:
    """The process dies inside the child's second step; resuming the parent resumes the
    child from its own checkpoint (c1 does not run again) and then finishes the parent."""
    import signal
    import subprocess
    import sys

    from tests.integration.test_cli import REPO, cli_env

    ds_env: dict[str, str] = {}
    if driver != "filesystem":
        ds_env = settings_env("default", server_pool.get(driver).settings("default", timeout=30.0))
    parent = family(tmp_path)
    home, ledger = tmp_path / "home", tmp_path / "ledger"

    def blokrun(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "blokrun", *args],
            cwd=REPO,
            env=cli_env(home, WF_LEDGER=str(ledger), **ds_env, **extra),
            capture_output=True,
            text=True,
            timeout=60,
        )

    killed = blokrun(
        "run", str(parent), "--request-id", "k-1", "--input", '{"total": 0}', WF_KILL_AT="c2"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = blokrun("resume", "k-1")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["billing"]["total"] == 130
    lines = ledger.read_text().split("\n")
    ran = [line for line in lines if line]
    assert ran == ["k-1 prepare", "k-1:billing c1", "k-1:billing c2", "k-1:billing c2",
                   "k-1 finish"]  # fmt: skip


async def test_a_run_of_its_own_under_a_childs_id_is_never_taken_over(tmp_path: Path) -> None:
    """Someone ran another workflow as ``p-9:billing``: the parent's step fails naming it,
    and that run is left as it was (not restarted, not resumed)."""
    parent = family(tmp_path)
    other = {"name": "unrelated", "steps": [add("u1", 1)]}
    async with Runner([fs(tmp_path / "ck")]) as runner:
        await runner.run(other, {"total": 0}, request_id="p-9:billing")
        before = await runner.inspect("p-9:billing")
        with pytest.raises(StepFailed, match="is taken by another run"):
            await runner.run(parent, {"total": 0}, request_id="p-9")
        after = await runner.inspect("p-9:billing")
    assert before.checkpoints == after.checkpoints and after.incarnation == 1
    assert calls("p-9:billing") == ["u1"]


async def test_time_travel_over_a_map_and_a_timer_runs_them_afresh(tmp_path: Path) -> None:
    """resume --from-step runs the steps again: their stored item results and wake-up
    times are not reused (nor left for a later resume to mix in)."""
    wf = {
        "name": "again",
        "steps": [
            {"name": "nap", "node": "sleep", "inputs": {"seconds": 0.05}},
            {
                "name": "each",
                "node": f"{NODE}:map_item",
                "map": {"items": [1, 2, 3], "concurrency": 1},
                "inputs": {"x": "${ctx.item}"},
            },
        ],
    }
    wfnodes.FAIL_AT.add("item:2")
    async with Runner([fs(tmp_path / "ck")]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(wf, request_id="tt-1")
        wfnodes.FAIL_AT.clear()
        await runner.resume("tt-1", from_step="nap")
    items = [s for r, s in wfnodes.CALLS if r == "tt-1"]
    assert items == ["each[0]", "each[1]", "each[2]", "each[0]", "each[1]", "each[2]"]
