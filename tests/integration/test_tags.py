"""Run tags: kept with the run through resumes and forks, filtered on by the API, the CLI
(``run/submit --tag``, ``runs --tag``), workers and the dashboard; bad tags refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from blokrun import ArgumentError, Runner, StepFailed
from blokrun.config import DatasourceSettings
from blokrun.web import blokrun_app
from blokrun.workers import serve
from tests.integration import wfnodes
from tests.integration.test_cli import blokrun, write_wf

NODE = "tests.integration.wfnodes"


def flow() -> dict[str, Any]:
    return {"name": "tagged", "steps": [
        {"name": "a", "node": f"{NODE}:add", "inputs": {"n": 1}},
        {"name": "b", "node": f"{NODE}:add", "inputs": {"n": 2}},
    ]}  # fmt: skip


def fs(tmp_path: Path) -> DatasourceSettings:
    return DatasourceSettings(name="default", type="filesystem", path=str(tmp_path / "ck"))


async def test_tags_survive_resume_and_fork_and_filter_runs(tmp_path: Path) -> None:
    async with Runner([fs(tmp_path)]) as rt:
        wfnodes.FAIL_AT.add("b")
        with pytest.raises(StepFailed):
            await rt.run(
                flow(), {"total": 0}, request_id="t-1", tags={"team": "ops", "env": "prod"}
            )
        wfnodes.FAIL_AT.clear()
        await rt.resume("t-1")
        await rt.run(flow(), {"total": 0}, request_id="t-2", tags={"team": "data"})
        await rt.fork("t-1", new_id="t-3", from_step="b")
        ops = [r.request_id for r in await rt.list_runs(tags={"team": "ops"})]
        both = [r.request_id for r in await rt.list_runs(tags={"team": "ops", "env": "prod"})]
        none = await rt.list_runs(tags={"team": "ops", "env": "dev"})
        head = await rt.head("t-1")
    assert sorted(ops) == ["t-1", "t-3"]  # the fork keeps its source's tags
    assert sorted(both) == ["t-1", "t-3"] and len(none) == 0
    assert head is not None and head.tags == {"team": "ops", "env": "prod"}


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"a b": "x"}, "tag key 'a b'"),
        ({"k": 1}, "expected a string"),
        ({"k": "x" * 300}, "at most 256"),
        ({f"k{i}": "v" for i in range(21)}, "at most 20"),
    ],
)
async def test_bad_tags_are_refused_before_anything_runs(
    tmp_path: Path, tags: dict[str, Any], message: str
) -> None:
    async with Runner([fs(tmp_path)]) as rt:
        with pytest.raises(ArgumentError, match=message):
            await rt.run(flow(), request_id="bad", tags=tags)
        assert len(await rt.list_runs()) == 0


async def test_submitted_tags_reach_the_run_a_worker_drives() -> None:
    async with Runner([DatasourceSettings(name="default", type="memory")]) as rt:
        rid = await rt.submit(flow(), {"total": 0}, tags={"batch": "7"})
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(rt, stop=stop, grace=1))
            await rt.wait(rid)
            stop.set()
        assert [r.request_id for r in await rt.list_runs(tags={"batch": "7"})] == [rid]


async def test_the_dashboard_shows_and_filters_tags(tmp_path: Path) -> None:
    async with Runner([fs(tmp_path)]) as rt:
        await rt.run(flow(), {"total": 0}, request_id="d-1", tags={"team": "<ops>"})
        await rt.run(flow(), {"total": 0}, request_id="d-2")
        transport = httpx.ASGITransport(app=blokrun_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            page = await http.get("/", params={"tag": "team=<ops>"})
            api = (await http.get("/api/runs", params={"tag": "team=<ops>"})).json()
            bad = await http.get("/api/runs", params={"tag": "nokey"})
    assert "team=&lt;ops&gt;" in page.text and ">d-2<" not in page.text
    assert [r["request_id"] for r in api["runs"]] == ["d-1"]
    assert api["runs"][0]["tags"] == {"team": "<ops>"}
    assert bad.status_code == 400


def test_the_cli_tags_and_filters(tmp_path: Path) -> None:
    home = tmp_path / "home"
    wf = write_wf(tmp_path, flow())
    assert blokrun(home, "run", str(wf), "--request-id", "c-1", "--tag", "team=ops",
                   "--input", '{"total": 0}').returncode == 0  # fmt: skip
    assert (
        blokrun(home, "run", str(wf), "--request-id", "c-2", "--input", '{"total": 0}').returncode
        == 0
    )
    listed = json.loads(blokrun(home, "runs", "--tag", "team=ops", "--json").stdout)
    assert [r["request_id"] for r in listed["runs"]] == ["c-1"]
    assert listed["runs"][0]["tags"] == {"team": "ops"}
    bad = blokrun(home, "run", str(wf), "--tag", "novalue")
    assert bad.returncode == 2 and "--tag 'novalue': expected KEY=VALUE" in bad.stderr
