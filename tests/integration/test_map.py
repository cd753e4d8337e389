"""Map steps: a node per item with a concurrency limit, results in order, per-item retries,
a failure policy, each item's result checkpointed as it completes -- and a crash at item
7,000 of 10,000 whose resume runs only the items whose result was not stored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from blokrun import Hook, ItemFinished, Runner, StepFailed, WorkflowError
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource
from blokrun.persistence.keys import ITEMS_PREFIX
from tests.conftest import ServerPool
from tests.integration import wfnodes
from tests.servers.base import settings_env

REPO = Path(__file__).resolve().parents[2]
NODE = "tests.integration.wfnodes"


def fs(root: Path) -> Datasource:
    return build_datasource(DatasourceSettings(name="default", type="filesystem", path=str(root)))


def mem() -> Datasource:
    return build_datasource(DatasourceSettings(name="default", type="memory"))


def mapped(n: int, *, concurrency: int = 4, tolerate: int = 0, **step: Any) -> dict[str, Any]:
    return {
        "name": "mapped",
        "steps": [
            {"name": "make", "node": "set", "inputs": {"xs": list(range(n))}},
            {
                "name": "square",
                "node": f"{NODE}:map_item",
                "map": {
                    "items": "${ctx.vars.xs}",
                    "concurrency": concurrency,
                    "tolerate": tolerate,
                },
                "inputs": {"x": "${ctx.item}"},
                **step,
            },
            {"name": "after", "node": "echo", "inputs": {"count": "${ctx.vars.square.results}"}},
        ],
    }


def item_calls(rid: str) -> Counter[int]:
    return Counter(
        int(step.split("[")[1].rstrip("]")) for r, step in wfnodes.CALLS if r == rid and "[" in step
    )


async def test_results_in_item_order_with_a_concurrency_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = 0
    peak = 0
    seen: list[int] = []

    class Watch(Hook):
        async def after_item(self, event: ItemFinished) -> None:
            assert event.step.name == "square"
            seen.append(event.index)

    async def slow(ctx: Any, inputs: dict[str, Any]) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await anyio.sleep(0.005 * ((40 - ctx.index) % 3))  # finish out of order
        finally:
            running -= 1
        return inputs["x"] * 10

    monkeypatch.setattr(wfnodes, "map_item", slow)
    async with Runner([mem()], hooks=[Watch()]) as runner:
        result = await runner.run(mapped(40, concurrency=5), request_id="order-1")
    assert result.vars["square"] == {"results": [x * 10 for x in range(40)], "failed": []}
    assert peak == 5
    assert sorted(seen) == list(range(40)) and seen != sorted(seen)  # told per item


async def test_each_item_is_stored_as_it_completes(tmp_path: Path) -> None:
    """When an item's after_item returns its result is on the datasource: kill (cancel)
    the run then and a resume finds it."""
    ds = fs(tmp_path)
    wfnodes.FAIL_AT.add("item:30")
    async with Runner([ds]) as runner:
        with pytest.raises(StepFailed, match="item 30 failed on purpose"):
            await runner.run(mapped(60, concurrency=1), request_id="m-1")
        stored = [k for k in await ds.keys(ITEMS_PREFIX)]
        assert stored  # the items before 30 are stored, not only the step
        wfnodes.FAIL_AT.clear()
        first = item_calls("m-1")
        result = await runner.resume("m-1")
    again = item_calls("m-1") - first
    assert sorted(again) == list(range(30, 60))  # 0..29 not run again
    assert result.vars["square"]["results"] == [{"sq": x * x} for x in range(60)]
    assert result.vars["after"]["count"] == result.vars["square"]["results"]
    assert await ds.keys(ITEMS_PREFIX) == []  # the step's checkpoint holds them: deleted


async def test_retries_are_per_item_and_tolerated_failures_are_reported(tmp_path: Path) -> None:
    wfnodes.FAIL_AT.update({"item:3", "item:7"})
    wf = mapped(10, concurrency=3, tolerate=2, retry={"attempts": 2, "delay": 0})
    async with Runner([fs(tmp_path)]) as runner:
        result = await runner.run(wf, request_id="t-1")
    out = result.vars["square"]
    assert [f["index"] for f in out["failed"]] == [3, 7]
    assert "item 3 failed on purpose (after 2 attempts)" in out["failed"][0]["error"]
    assert out["results"][3] is None and out["results"][4] == {"sq": 16}
    calls = item_calls("t-1")
    assert calls[3] == 2 and calls[7] == 2 and calls[4] == 1  # retried per item


async def test_one_failure_more_than_tolerated_fails_the_step_and_resume_redoes_failed(
    tmp_path: Path,
) -> None:
    wfnodes.FAIL_AT.update({"item:2", "item:5"})
    async with Runner([fs(tmp_path)]) as runner:
        with pytest.raises(StepFailed) as info:
            await runner.run(mapped(8, concurrency=1, tolerate=1), request_id="f-1")
        assert "2 of 8 items failed (tolerated 1); item 2: " in str(info.value)
        wfnodes.FAIL_AT.clear()
        before = item_calls("f-1")
        result = await runner.resume("f-1")
    again = item_calls("f-1") - before
    assert sorted(again) == [2, 5, 6, 7]  # failed items run again; stored ones do not
    assert result.vars["square"]["failed"] == []


async def test_stored_items_are_reused_only_for_the_same_list(tmp_path: Path) -> None:
    """A resume whose list of items changed (edited vars) runs every item again: an index
    means nothing for another list."""
    wfnodes.FAIL_AT.add("item:4")
    async with Runner([fs(tmp_path)]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(mapped(6, concurrency=1), request_id="l-1")
        wfnodes.FAIL_AT.clear()
        before = item_calls("l-1")
        result = await runner.resume("l-1", set_vars={"xs": [10, 11, 12, 13, 14, 15]})
    assert sorted(item_calls("l-1") - before) == [0, 1, 2, 3, 4, 5]
    assert result.vars["square"]["results"][0] == {"sq": 100}


async def test_items_that_are_not_a_list_fail_the_step_with_the_path() -> None:
    wf = mapped(3)
    wf["steps"][0]["inputs"] = {"xs": {"not": "a list"}}
    async with Runner([mem()]) as runner:
        with pytest.raises(StepFailed, match=r"\$\.steps\[1\]\.map\.items: expected a list"):
            await runner.run(wf, request_id="nl-1")


async def test_an_empty_list_gives_empty_results() -> None:
    async with Runner([mem()]) as runner:
        result = await runner.run(mapped(0), request_id="e-1")
    assert result.vars["square"] == {"results": [], "failed": []}


@pytest.mark.parametrize(
    ("map_", "at", "message"),
    [
        ({"items": [1], "concurrency": 0}, "$.steps[0].map.concurrency", "expected 1 to 10000"),
        ({"items": [1], "tolerate": -1}, "$.steps[0].map.tolerate", "0 or more"),
        ({"items": "abc"}, "$.steps[0].map.items", "expected a list, or a ${...}"),
        ({"items": "${ctx.vars.x >}"}, "$.steps[0].map.items", "expected an expression"),
        ({"items": [1], "size": 3}, "$.steps[0].map.size", "unknown field 'size'"),
        ({}, "$.steps[0].map", "missing required field 'items'"),
    ],
)
def test_map_mistakes_are_caught_at_load(
    tmp_path: Path, map_: dict[str, Any], at: str, message: str
) -> None:
    import orjson

    from blokrun.execution.workflows import load_workflow

    path = tmp_path / "wf.json"
    path.write_bytes(
        orjson.dumps({"name": "bad", "steps": [{"name": "m", "node": "echo", "map": map_}]})
    )
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert info.value.path == at, str(info.value)
    assert message in str(info.value), str(info.value)


# -- 10,000 items, SIGKILL at item 7,000, resume in a fresh process ------------------------


def child(
    home: Path, rid: str, mode: str, ledger: Path, ds_env: dict[str, str], n: int, kill_at: int
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "WF_"))}
    env.update(PYTHONPATH=str(REPO), WF_LEDGER=str(ledger), **ds_env)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integration.map_child",
            str(home),
            rid,
            mode,
            str(n),
            str(kill_at),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["filesystem", "redis"])
def test_crash_at_item_7000_of_10000_resumes_only_the_missing_items(
    driver: str, tmp_path: Path, server_pool: ServerPool
) -> None:
    from tests.integration.map_child import CONCURRENCY

    n, kill_at = 10_000, 7_000
    ds_env: dict[str, str] = {}
    if driver != "filesystem":
        ds_env = settings_env("default", server_pool.get(driver).settings("default", timeout=30.0))
    home, ledger = tmp_path / "home", tmp_path / "ledger"
    crashed = child(home, "big-1", "run", ledger, ds_env, n, kill_at)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    started = [int(x) for x in ledger.read_text().split()]
    counted = child(home, "big-1", "count", tmp_path / "unused", ds_env, n, kill_at)
    assert counted.returncode == 0, counted.stderr[-2000:]
    stored = {int(x) for x in counted.stdout.split()}
    assert stored <= set(started)
    assert kill_at not in stored
    # checkpointed as they completed: all but the items in flight at the crash are stored
    assert len(stored) >= kill_at - 2 * CONCURRENCY, len(stored)
    assert len(set(started) - stored) <= 2 * CONCURRENCY
    ledger.write_text("")
    resumed = child(home, "big-1", "resume", ledger, ds_env, n, -1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    count, checksum, failed = map(int, resumed.stdout.split())
    assert (count, checksum, failed) == (n, sum(x * x for x in range(n)), 0)
    again = Counter(int(x) for x in ledger.read_text().split())
    assert set(again) == set(range(n)) - stored  # exactly the missing items, once each
    assert set(again.values()) == {1}


async def test_a_tampered_or_copied_item_batch_is_never_taken_for_results(tmp_path: Path) -> None:
    """A batch record flipped on disk, or another run's batch copied under this run's key,
    does not verify: its items run again instead of lending their results."""
    ds = fs(tmp_path)
    wfnodes.FAIL_AT.add("item:3")
    async with Runner([ds]) as runner:
        for rid in ("x-1", "y-1"):
            with pytest.raises(StepFailed):
                await runner.run(mapped(5, concurrency=1), request_id=rid)
        x_keys = sorted(await ds.keys(f"{ITEMS_PREFIX}x-1/"))
        y_keys = sorted(await ds.keys(f"{ITEMS_PREFIX}y-1/"))
        assert len(x_keys) == 3 and len(y_keys) == 3  # items 0, 1, 2: a batch each
        raw = await ds.load(x_keys[0])
        assert raw is not None
        await ds.save(x_keys[0], raw[:-1] + bytes([raw[-1] ^ 1]))  # flipped
        await ds.save(y_keys[1], await ds.load(x_keys[1]) or b"")  # x's batch, y's key
        wfnodes.FAIL_AT.clear()
        before = {rid: item_calls(rid) for rid in ("x-1", "y-1")}
        x = await runner.resume("x-1")
        y = await runner.resume("y-1")
    assert sorted(item_calls("x-1") - before["x-1"]) == [0, 3, 4]
    assert sorted(item_calls("y-1") - before["y-1"]) == [1, 3, 4]
    assert (
        x.vars["square"]["results"]
        == y.vars["square"]["results"]
        == [{"sq": i * i} for i in range(5)]
    )
