"""``blokrun export``: every checkpoint of a run in seed 000's shape, in sequence order, with
the run's status -- from the command line, and from an encrypted, compressed run whose large
values are stored by reference (what the store holds there is not readable without it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from blokrun import Context, Runner, StepFailed
from blokrun.cli.export import export
from blokrun.config import DatasourceSettings
from blokrun.persistence.envelope import Envelope
from tests.integration.test_cli import REPO, cli_env

FAIL: set[str] = set()


async def grow(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    if ctx.step in FAIL:
        raise RuntimeError(f"{ctx.step} failed on purpose")
    return {"n": inputs["n"], "pad": "x" * inputs["pad"]}


def three_steps() -> dict[str, Any]:
    return {
        "name": "grown",
        "datasources": ["db"],
        "persistence": {"enabled": True, "targets": ["db"]},
        "steps": [
            {"name": "a", "node": "grow", "inputs": {"n": 1, "pad": 0}},
            {"name": "b", "node": "grow", "inputs": {"n": 2, "pad": 20_000}},
            {"name": "c", "node": "grow", "inputs": {"n": 3, "pad": 0}},
        ],
    }


def blokrun(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blokrun", *args],
        cwd=REPO, env=cli_env(home), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


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
    assert blokrun(home, "run", str(wf), "--request-id", "e-1").returncode == 0

    whole = json.loads(blokrun(home, "export", "e-1").stdout)
    assert {k: v for k, v in whole.items() if k != "checkpoints"} == {
        "requestId": "e-1", "workflowId": "exported", "status": "completed"
    }  # fmt: skip
    assert [c["stepName"] for c in whole["checkpoints"]] == ["a", "b"]
    first, second = whole["checkpoints"]
    assert set(first) == {"stepName", "timestamp", "vars", "metadata"}
    assert first["vars"] == {"x": 1}
    assert second["vars"] == {"x": 1, "b": {"y": 1}}  # the whole vars, not the delta
    assert second["timestamp"].endswith("+00:00") and second["timestamp"] >= first["timestamp"]
    assert second["metadata"] == {
        "workflowId": "exported", "requestId": "e-1", "seq": 2, "status": "completed",
        "runStatus": "completed",
    }  # fmt: skip

    lines = blokrun(home, "export", "e-1", "--format", "jsonl").stdout.splitlines()
    assert [json.loads(line) for line in lines] == whole["checkpoints"]
    one = blokrun(home, "export", "e-1", "--format", "jsonl", "--step", "b").stdout
    assert [json.loads(line)["stepName"] for line in one.splitlines()] == ["b"]


def test_export_of_an_unknown_run_or_step_says_so_and_exits_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"name": "w", "steps": [{"name": "a", "node": "set", "inputs": {}}]}))
    assert blokrun(home, "run", str(wf), "--request-id", "e-2").returncode == 0
    missing = blokrun(home, "export", "nope")
    assert missing.returncode == 2 and missing.stdout == ""
    assert "run nope" in missing.stderr and "found" in missing.stderr
    no_step = blokrun(home, "export", "e-2", "--step", "zz")
    assert no_step.returncode == 2 and no_step.stdout == ""
    assert "run e-2 has no checkpoint of step 'zz'; its steps: a" in no_step.stderr


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
async def test_export_of_an_encrypted_compressed_run_with_blobs(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = Envelope(keys={"k1": bytes(range(32))}, active_key="k1", threshold=1024)
    datasources = [
        DatasourceSettings(name="db", type="memory"),
        DatasourceSettings(name="blobs", type="filesystem", path=str(tmp_path / "blobs")),
    ]
    async with Runner(
        datasources, nodes={"grow": grow}, envelope=envelope,
        blob_datasource="blobs", blob_threshold=10_000,
    ) as runner:  # fmt: skip
        FAIL.add("c")
        try:
            with pytest.raises(StepFailed):
                await runner.run(three_steps(), request_id="x-1")
        finally:
            FAIL.clear()
        assert (await runner.resume("x-1")).status == "completed"
        await runner.resume("x-1", from_step="b")  # time travel: b and c again, seq 4 and 5
        stored = await runner.datasources["db"].load_batch(
            [k for k in await runner.datasources["db"].keys() if k.startswith("_blokrun.ckpt.")]
        )
        capsys.readouterr()
        await export(runner, "x-1", None, fmt)
        out = capsys.readouterr().out
        await export(runner, "x-1", "b", "jsonl")
        only_b = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    assert stored and not any(b"xxxx" in raw or b'"pad"' in raw for raw in stored.values())
    assert any(p.name.startswith("_blokrun.blob.") for p in (tmp_path / "blobs").iterdir())
    if fmt == "json":
        whole = json.loads(out)
        assert whole["status"] == "completed" and whole["workflowId"] == "grown"
        found = whole["checkpoints"]
    else:
        found = [json.loads(line) for line in out.splitlines()]
    assert [(c["metadata"]["seq"], c["stepName"]) for c in found] == [
        (1, "a"), (2, "b"), (3, "c"), (4, "b"), (5, "c")
    ]  # fmt: skip
    a, b = {"n": 1, "pad": ""}, {"n": 2, "pad": "x" * 20_000}
    assert [c["vars"] for c in found] == [
        {"a": a}, {"a": a, "b": b}, {"a": a, "b": b, "c": {"n": 3, "pad": ""}},
        {"a": a, "b": b}, {"a": a, "b": b, "c": {"n": 3, "pad": ""}},
    ]  # fmt: skip
    assert {c["metadata"]["runStatus"] for c in found} == {"completed"}
    assert only_b == [found[1], found[3]]
