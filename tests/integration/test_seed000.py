"""Seed 000 read as written: its own example workflows load unchanged (nodes named as in
the seed, registered by name), a step's key reads back as the seed stores a checkpoint, and
``blokrun export`` gives every checkpoint in that shape."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from blokrun import Context, Runner, WorkflowError
from blokrun.config import DatasourceSettings
from tests.integration.test_cli import REPO, cli_env

FIXTURES = REPO / "tests" / "fixtures" / "seed000"
SEED = REPO.parent / "shared" / "seeds" / "000_a9a171e9344b0cee.txt"
LOADED: list[str] = []


async def data_loader(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    LOADED.append(ctx.id)
    return {"rows": [1, 2, 3], "source": "seed"}


async def parallel_processor(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": inputs["cached_metadata"], "previous": inputs["previous_results"]}


async def batch_processor(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": inputs["dataset_url"]}


NODES = {
    "data-loader": data_loader,
    "parallel-processor": parallel_processor,
    "s3-uploader": data_loader,
    "batch-processor": batch_processor,
}


def mem(*names: str) -> list[DatasourceSettings]:
    return [DatasourceSettings(name=n, type="memory") for n in names]


@pytest.mark.skipif(not SEED.exists(), reason=f"the seed documents are not here ({SEED})")
def test_the_fixtures_are_the_seeds_own_json_unchanged() -> None:
    blocks = re.findall(r"```json\n(.*?)```", SEED.read_text(), re.S)
    workflows = {}
    for block in blocks:
        try:
            doc = json.loads(block)
        except ValueError:  # the seed's pattern 2 holds two objects in one block
            continue
        if isinstance(doc, dict) and "steps" in doc:
            workflows[doc["name"]] = block
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(workflows)
    for name, block in workflows.items():
        assert (FIXTURES / f"{name}.json").read_text() == block


async def test_the_seeds_pipeline_runs_unchanged_with_its_nodes_registered() -> None:
    async with Runner(mem("cache", "db", "storage"), nodes=NODES) as runner:
        result = await runner.run(FIXTURES / "advanced-data-pipeline.json", request_id="seed-1")
        # seed pattern: the published output, and the checkpoint key read back as stored
        reader = {
            "name": "reader",
            "datasources": ["cache", "db", "storage"],
            "persistence": {"enabled": False},
            "steps": [
                {
                    "name": "read",
                    "node": "echo",
                    "inputs": {
                        "published": "${ctx.datasource('storage', 'raw-data-seed-1')}",
                        "checkpoint": "${ctx.datasource('cache', 'seed-1-load-data')}",
                        "from_db": "${ctx.datasource('db', 'seed-1-process-chunks')}",
                    },
                }
            ],
        }
        read = (await runner.run(reader, request_id="reader-1")).vars["read"]
    assert result.status == "completed"
    assert result.vars["process-chunks"] == {"metadata": None, "previous": None}
    assert read["published"] == {"rows": [1, 2, 3], "source": "seed"}
    checkpoint = read["checkpoint"]
    assert set(checkpoint) == {"stepName", "timestamp", "vars", "metadata"}
    assert checkpoint["stepName"] == "load-data"
    assert checkpoint["metadata"] == {"workflowId": "advanced-data-pipeline", "requestId": "seed-1"}
    assert checkpoint["vars"] == {"load-data": {"rows": [1, 2, 3], "source": "seed"}}
    assert checkpoint["timestamp"].endswith("+00:00")
    # the db copy of the last step holds the whole vars at that step, not a delta
    assert set(read["from_db"]["vars"]) == {"load-data", "process-chunks"}


async def test_the_large_dataset_pattern_runs_unchanged() -> None:
    async with Runner(mem("default", "storage", "cache"), nodes=NODES) as runner:
        result = await runner.run(FIXTURES / "large-dataset-pipeline.json", request_id="big-1")
    assert result.vars["process-batch"] == {"dataset": {"rows": [1, 2, 3], "source": "seed"}}
    assert result.vars["upload-data"]["rows"] == [1, 2, 3]


def test_the_seeds_fragment_is_refused_naming_what_is_missing() -> None:
    from blokrun.execution.workflows import load_workflow

    with pytest.raises(WorkflowError) as info:
        load_workflow(FIXTURES / "my-pipeline.json", available_datasources=["cache", "db"])
    assert "$.steps[0]" in str(info.value) and "'name'" in str(info.value)


def test_unregistered_seed_nodes_say_how_to_register_them() -> None:
    from blokrun.execution.workflows import load_workflow

    with pytest.raises(WorkflowError) as info:
        load_workflow(
            FIXTURES / "advanced-data-pipeline.json",
            available_datasources=["cache", "db", "storage"],
        )
    text = str(info.value)
    assert "$.steps[0].node: node 'data-loader': expected 'package.module:function'" in text
    assert "Runner(nodes={'data-loader': your_function})" in text
    assert "$.steps[1].node: node 'parallel-processor'" in text


def test_export_prints_every_checkpoint_as_the_seed_stores_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({
        "name": "exported",
        "steps": [
            {"name": "a", "node": "set", "inputs": {"x": 1}},
            {"name": "b", "node": "echo", "inputs": {"y": "${ctx.vars.x}"}},
        ],
    }))  # fmt: skip

    def blokrun(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "blokrun", *args],
            cwd=REPO, env=cli_env(home), capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert blokrun("run", str(wf), "--request-id", "e-1").returncode == 0
    whole = json.loads(blokrun("export", "e-1").stdout)
    assert whole["requestId"] == "e-1" and whole["status"] == "completed"
    assert [c["stepName"] for c in whole["checkpoints"]] == ["a", "b"]
    assert whole["checkpoints"][0]["vars"] == {"x": 1}
    assert whole["checkpoints"][1]["vars"] == {"x": 1, "b": {"y": 1}}
    assert whole["checkpoints"][1]["metadata"] == {
        "workflowId": "exported", "requestId": "e-1", "seq": 2, "status": "completed"
    }  # fmt: skip
    lines = blokrun("export", "e-1", "--format", "jsonl", "--step", "b").stdout.splitlines()
    assert [json.loads(line)["stepName"] for line in lines] == ["b"]
    missing = blokrun("export", "nope")
    assert missing.returncode == 2 and "nope" in missing.stderr
    no_step = blokrun("export", "e-1", "--step", "zz")
    assert no_step.returncode == 2 and "has no checkpoint of step 'zz'" in no_step.stderr
