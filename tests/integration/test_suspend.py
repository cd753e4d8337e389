"""Suspend for input (await-input): token, schema, the run stays suspended when refused."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest

from blokrun import ResumeError, Runner, WorkflowError
from blokrun.config import DatasourceSettings
from blokrun.execution.engine import new_resume_token
from tests.integration import wfnodes
from tests.integration.test_cli import blokrun, write_wf

NODE = "tests.integration.wfnodes"
SCHEMA = {
    "type": "object",
    "required": ["approved"],
    "properties": {"approved": {"type": "boolean"}, "by": {"type": "string", "minLength": 2}},
    "additionalProperties": False,
}


def approval() -> dict[str, Any]:
    return {
        "name": "approval",
        "steps": [
            {"name": "prepare", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {
                "name": "approve",
                "node": "await-input",
                "inputs": {"prompt": "approve the refund?", "schema": SCHEMA},
            },
            {
                "name": "pay",
                "node": f"{NODE}:echo",
                "inputs": {
                    "ok": "${ctx.vars.approve.approved}",
                    "by": "${ctx.vars.approve.by ?? 'nobody'}",
                },
            },
        ],
    }


def calls(rid: str) -> list[str]:
    return [step for r, step in wfnodes.CALLS if r == rid]


async def test_a_run_suspends_and_resumes_with_input_and_token() -> None:
    async with Runner([DatasourceSettings(name="default", type="memory")]) as runner:
        result = await runner.run(approval(), request_id="sus-1")
        assert result.status == "suspended" and result.waiting_step == "approve"
        assert result.prompt == "approve the refund?"
        token = result.token
        assert token is not None and re.fullmatch("[0-9a-f]{32}", token)  # 128 random bits
        head = await runner.head("sus-1")
        assert head is not None and head.status == "suspended" and head.waiting_step == "approve"
        assert head.token_hash and token not in head.token_hash  # stored hashed

        with pytest.raises(ResumeError, match="waiting for input"):
            await runner.resume("sus-1")
        with pytest.raises(ResumeError, match="wrong token"):
            await runner.resume("sus-1", input={"approved": True}, token="x" * 22)
        with pytest.raises(ResumeError, match=r"\$\.input\.approved: expected boolean"):
            await runner.resume("sus-1", input={"approved": "yes"}, token=token)
        with pytest.raises(ResumeError, match=r"\$\.input\.extra: not allowed"):
            await runner.resume("sus-1", input={"approved": True, "extra": 1}, token=token)
        head = await runner.head("sus-1")
        assert head is not None and head.status == "suspended"  # refused input: still waiting

        done = await runner.resume("sus-1", input={"approved": True, "by": "ada"}, token=token)
    assert done.status == "completed"
    assert done.vars["approve"] == {"approved": True, "by": "ada"}
    assert done.vars["pay"] == {"ok": True, "by": "ada"}
    assert calls("sus-1") == ["prepare", "pay"]  # prepare did not run again


async def test_a_token_is_valid_only_for_its_run() -> None:
    async with Runner([DatasourceSettings(name="default", type="memory")]) as runner:
        one = await runner.run(approval(), request_id="sus-a")
        await runner.run(approval(), request_id="sus-b")
        with pytest.raises(ResumeError, match="wrong token"):
            await runner.resume("sus-b", input={"approved": True}, token=one.token)


def test_a_bad_schema_is_a_load_error() -> None:
    wf = approval()
    wf["steps"][1]["inputs"]["schema"] = {"type": "object", "properties": {"a": {"type": "strnig"}}}
    with pytest.raises(WorkflowError) as info:
        Runner([DatasourceSettings(name="default", type="memory")]).load(wf)
    assert "$.steps[1].inputs.schema.properties.a.type" in str(info.value)
    assert "unknown type 'strnig'" in str(info.value)


def test_a_resume_token_never_reads_as_an_option() -> None:
    """The printed ``--token TOKEN`` must parse as shown: a token starting with '-' (as 1 in
    64 did when tokens were URL-safe base64) was taken by argparse for an option."""
    tokens = {new_resume_token() for _ in range(5000)}
    assert len(tokens) == 5000
    assert all(re.fullmatch("[0-9a-f]{32}", t) for t in tokens)
    parser = argparse.ArgumentParser()
    parser.add_argument("--token")
    for token in list(tokens)[:200]:
        assert parser.parse_args(["--token", token]).token == token


def test_cli_suspends_with_exit_3_and_resumes_with_input_and_token(tmp_path: Path) -> None:
    wf = write_wf(tmp_path, approval())
    proc = blokrun(tmp_path, "run", str(wf), "--request-id", "cli-sus")
    assert proc.returncode == 3, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "suspended" and doc["step"] == "approve"
    assert f"blokrun resume cli-sus --input '<JSON>' --token {doc['token']}" in proc.stderr
    refused = blokrun(
        tmp_path, "resume", "cli-sus", "--input", '{"approved": 1}', "--token", doc["token"]
    )
    assert refused.returncode == 2 and "expected boolean" in refused.stderr
    ok = blokrun(
        tmp_path, "resume", "cli-sus", "--input", '{"approved": false}', "--token", doc["token"]
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["pay"] == {"ok": False, "by": "nobody"}
