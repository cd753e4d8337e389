"""Seed 000 read as written: its own example workflows load unchanged (nodes named as in
the seed, registered by name), and a step's key reads back as the seed stores a checkpoint
(``blokrun export``, which gives every checkpoint in that shape: tests/integration/test_export.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from blokrun import Context, Runner, WorkflowError
from blokrun.config import DatasourceSettings, settings_from_env
from blokrun.persistence.envelope import Envelope
from blokrun.persistence.records import ALIAS_MAGIC
from tests.integration.test_cli import REPO

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


def objects(text: str) -> list[Any]:
    """The JSON values written one after another in ``text``."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        value, at = decoder.raw_decode(text, at)
        found.append(value)
    return found


@pytest.mark.skipif(not SEED.exists(), reason=f"the seed documents are not here ({SEED})")
def test_the_fixtures_are_the_seeds_own_json_unchanged() -> None:
    blocks = re.findall(r"```json\n(.*?)```", SEED.read_text(), re.S)
    workflows, not_one_document = {}, []
    for block in blocks:
        try:
            doc = json.loads(block)
        except ValueError:
            not_one_document.append([d["name"] for d in objects(block)])
            continue
        if isinstance(doc, dict) and "steps" in doc:
            workflows[doc["name"]] = block
    # the one block that is not valid JSON: pattern 2, two workflows written one after the
    # other (each a sketch whose steps name no node, so neither would load on its own)
    assert not_one_document == [["data-extractor", "data-processor"]]
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(workflows)
    for name, block in workflows.items():
        assert (FIXTURES / f"{name}.json").read_text() == block


@pytest.mark.parametrize("name", ["advanced-data-pipeline", "large-dataset-pipeline"])
def test_each_seed_workflow_loads_with_its_datasources_and_nodes(name: str, tmp_path: Path) -> None:
    path = FIXTURES / f"{name}.json"
    named = json.loads(path.read_text())["datasources"]
    # configured as the seed says, by environment variables (memory driver); blokrun adds
    # its embedded 'default' checkpoint store, as for every command
    env = {f"DATASOURCE_{n.upper()}_TYPE": "memory" for n in named}
    settings = settings_from_env({**env, "BLOKRUN_HOME": str(tmp_path)})
    assert sorted(settings.datasources) == sorted([*named, "default"])
    wf = Runner(settings.datasources.values(), nodes=NODES).load(path)
    assert wf.name == name and [s.node.name for s in wf.steps] == [
        s["node"] for s in json.loads(path.read_text())["steps"]
    ]


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
    assert 'Runner(nodes={"data-loader": data_loader})' in text
    assert '"node": "your_package.your_module:data_loader"' in text
    assert "$.steps[1].node: node 'parallel-processor'" in text


def test_a_runner_missing_one_seed_node_names_it_and_how() -> None:
    runner = Runner(mem("cache", "db", "storage"), nodes={"data-loader": data_loader})
    with pytest.raises(WorkflowError) as info:
        runner.load(FIXTURES / "advanced-data-pipeline.json")
    text = str(info.value)
    assert "$.steps[0]" not in text  # data-loader is registered
    assert (
        "$.steps[1].node: node 'parallel-processor' is neither a built-in nor registered in "
        "this process; registered: data-loader -- register it: "
        'Runner(nodes={"parallel-processor": parallel_processor}) in every process that runs '
        'or resumes it (workers too); or, for the blokrun command, name the function: "node": '
        '"your_package.your_module:parallel_processor"'
    ) in text


async def step_output(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    ctx.vars[f"set_by_{ctx.step}"] = inputs["n"]
    return {"n": inputs["n"], "pad": "x" * inputs["pad"]}


def three_steps() -> dict[str, Any]:
    return {
        "name": "three-steps",
        "datasources": ["cache", "db"],
        "persistence": {"enabled": True, "targets": ["cache", "db"]},
        "steps": [
            {"name": "step1", "node": "step-output", "inputs": {"n": 1, "pad": 0}},
            {"name": "step2", "node": "step-output", "inputs": {"n": 2, "pad": 20_000}},
            {"name": "step3", "node": "step-output", "inputs": {"n": 3, "pad": 0}},
        ],
    }


def reader(*datasources: str) -> dict[str, Any]:
    return {
        "name": "reader",
        "datasources": list(datasources),
        "persistence": {"enabled": False},
        "steps": [
            {"name": "read", "node": "echo",
             "inputs": {"step2": "${ctx.datasource('db', 'r3-step2')}"}},
        ],
    }  # fmt: skip


@pytest.mark.parametrize("sealed", ["plain", "encrypted-compressed-blobs"])
async def test_a_steps_key_reads_back_the_whole_vars_at_that_step(
    sealed: str, tmp_path: Path
) -> None:
    settings = mem("cache", "db")
    options: dict[str, Any] = {"envelope": Envelope(compression="none")}
    if sealed != "plain":
        settings.append(DatasourceSettings("blobs", "filesystem", path=str(tmp_path)))
        options = {
            "envelope": Envelope(keys={"k1": bytes(range(32))}, active_key="k1", threshold=512),
            "blob_datasource": "blobs",
            "blob_threshold": 10_000,
        }
    async with Runner(settings, nodes={"step-output": step_output}, **options) as runner:
        await runner.run(three_steps(), request_id="r3")
        stored = await runner.datasources["db"].load("r3-step2")
        read = (await runner.run(reader("db"), request_id="reader-r3")).vars["read"]["step2"]
        with pytest.raises(WorkflowError, match=r"datasources are: cache \(add it"):
            await runner.run(reader("cache"), request_id="reader-r3-cache")  # not its 'db'
        assert await runner.datasources["db"].load("r3-step2") == stored  # read-only
    assert stored is not None and stored.startswith(ALIAS_MAGIC)  # stored: a pointer
    assert set(read) == {"stepName", "timestamp", "vars", "metadata"}  # read: the seed's shape
    assert read["stepName"] == "step2"
    assert read["metadata"] == {"workflowId": "three-steps", "requestId": "r3"}
    assert read["vars"] == {
        "set_by_step1": 1,
        "step1": {"n": 1, "pad": ""},
        "set_by_step2": 2,
        "step2": {"n": 2, "pad": "x" * 20_000},
    }  # step 1's vars too, the large value resolved; nothing of step 3
    assert read["timestamp"].endswith("+00:00") and read["timestamp"][:4].isdigit()
