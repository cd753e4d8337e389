"""Parallel steps (depends_on), retries and timeouts."""

from __future__ import annotations

import time
from typing import Any

import pytest

from blokrun import Runner, StepFailed, WorkflowError
from blokrun.config import DatasourceSettings
from tests import records
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"


def mem() -> DatasourceSettings:
    return DatasourceSettings(name="default", type="memory")


def calls(rid: str) -> list[str]:
    return [step for r, step in wfnodes.CALLS if r == rid]


def diamond(seconds: float = 0.3, fail: bool = False) -> dict[str, Any]:
    """start -> (a, b, c in parallel) -> join."""
    nap = f"{NODE}:nap"
    return {
        "name": "diamond",
        "steps": [
            {"name": "start", "node": nap},
            {"name": "a", "node": nap, "depends_on": ["start"], "inputs": {"seconds": seconds}},
            {
                "name": "b",
                "node": nap,
                "depends_on": ["start"],
                "inputs": {"seconds": seconds * 2, "fail": fail},
            },
            {"name": "c", "node": nap, "depends_on": ["start"], "inputs": {"seconds": seconds * 4}},
            {"name": "join", "node": nap, "depends_on": ["a", "b", "c"]},
        ],
    }


async def test_independent_steps_run_at_the_same_time() -> None:
    async with Runner([mem()]) as runner:
        t0 = time.monotonic()
        result = await runner.run(diamond(0.2), request_id="par-1")
        elapsed = time.monotonic() - t0
    t = {step: wfnodes.TIMES[("par-1", step)] for step in ("a", "b", "c", "join")}
    assert max(t[s][0] for s in "abc") < min(t[s][1] for s in "abc")  # all three overlapped
    assert t["join"][0] >= max(t[s][1] for s in "abc")  # join waited for all of them
    assert elapsed < 0.2 + 0.4 + 0.8 - 0.2  # less than the sum of the branches
    assert set(result.vars) >= {"start", "a", "b", "c", "join"}


async def test_each_parallel_step_is_checkpointed_with_its_own_sequence_number() -> None:
    settings = mem()
    async with Runner([settings]) as runner:
        await runner.run(diamond(0.05), request_id="par-seq")
        ds = runner.datasources["default"]
        seqs = {}
        for step in ("start", "a", "b", "c", "join"):
            rec = await records.checkpoint(ds, f"par-seq-{step}")
            seqs[step] = rec.seq
            assert step in rec.done
    assert sorted(seqs.values()) == [1, 2, 3, 4, 5]
    assert seqs["start"] == 1 and seqs["join"] == 5


async def test_a_failing_branch_cancels_its_siblings_and_resume_skips_finished_branches() -> None:
    wfnodes.FAIL_AT.add("b")
    async with Runner([mem()]) as runner:
        with pytest.raises(StepFailed) as info:
            await runner.run(diamond(0.2, fail=True), request_id="par-fail")
        assert info.value.step == "b"
        # a finished before b failed; c (slowest) was cancelled, so it is not done.
        assert sorted(calls("par-fail")) == ["a", "b", "c", "start"]
        assert ("par-fail", "c") in wfnodes.TIMES  # it started, then was cancelled
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("par-fail")
    assert set(result.steps_skipped) == {"start", "a"}
    assert sorted(result.steps_run) == ["b", "c", "join"]
    assert calls("par-fail").count("a") == 1 and calls("par-fail").count("start") == 1


@pytest.mark.parametrize(
    ("steps", "path", "message"),
    [
        (
            [{"name": "a", "node": "set", "depends_on": ["zz"]}],
            "$.steps[0].depends_on[0]",
            "unknown step 'zz'",
        ),
        (
            [{"name": "a", "node": "set", "depends_on": ["a"]}],
            "$.steps[0].depends_on[0]",
            "cannot depend on itself",
        ),
        (
            [
                {"name": "a", "node": "set", "depends_on": ["b"]},
                {"name": "b", "node": "set", "depends_on": ["a"]},
            ],
            "depends_on",
            "dependency cycle: a -> b -> a",
        ),
        (
            [{"name": "a", "node": "set", "retry": {"attempts": 0}}],
            "$.steps[0].retry.attempts",
            "expected 1 to 1000",
        ),
        (
            [{"name": "a", "node": "set", "retry": {"jitter": 2}}],
            "$.steps[0].retry.jitter",
            "fraction",
        ),
        (
            [{"name": "a", "node": "set", "retry": {"on": ["not a name"]}}],
            "$.steps[0].retry.on[0]",
            "not an exception",
        ),
        ([{"name": "a", "node": "set", "timeout": 0}], "$.steps[0].timeout", "positive number"),
    ],
)
def test_bad_dependencies_and_policies_are_load_errors(
    steps: list[dict[str, Any]], path: str, message: str
) -> None:
    with pytest.raises(WorkflowError) as info:
        Runner([mem()]).load({"name": "bad", "steps": steps})
    assert path in (info.value.path or "") and message in str(info.value)


def flaky_wf(
    times: int, retry: dict[str, Any] | None, error: str = "ConnectionError"
) -> dict[str, Any]:
    step: dict[str, Any] = {
        "name": "call",
        "node": f"{NODE}:flaky",
        "inputs": {"times": times, "error": error},
    }
    if retry is not None:
        step["retry"] = retry
    return {"name": "flaky", "steps": [step]}


async def test_a_step_is_retried_with_backoff_and_its_attempts_recorded() -> None:
    retry = {"attempts": 4, "delay": 0.05, "backoff": 2, "jitter": 0}
    async with Runner([mem()]) as runner:
        t0 = time.monotonic()
        result = await runner.run(flaky_wf(2, retry), request_id="retry-1")
        elapsed = time.monotonic() - t0
        rec = await records.checkpoint(runner.datasources["default"], "retry-1-call")
    assert result.vars["call"] == "ok"
    assert calls("retry-1") == ["call", "call", "call"]
    assert elapsed >= 0.05 + 0.1  # waited delay, then delay * backoff
    assert rec.attempts == 3


async def test_retries_stop_after_the_last_attempt_and_only_for_the_listed_errors() -> None:
    async with Runner([mem()]) as runner:
        with pytest.raises(StepFailed, match=r"after 3 attempts"):
            await runner.run(flaky_wf(5, {"attempts": 3, "delay": 0}), request_id="retry-2")
        with pytest.raises(StepFailed, match="ValueError"):
            await runner.run(
                flaky_wf(1, {"attempts": 3, "delay": 0, "on": ["ConnectionError"]}, "ValueError"),
                request_id="retry-3",
            )
    assert len(calls("retry-2")) == 3
    assert len(calls("retry-3")) == 1  # ValueError is not in 'on': no retry


async def test_workflow_defaults_apply_to_every_step() -> None:
    wf = flaky_wf(1, None) | {"defaults": {"retry": {"attempts": 2, "delay": 0}}}
    async with Runner([mem()]) as runner:
        result = await runner.run(wf, request_id="defaults-1")
    assert result.vars["call"] == "ok" and len(calls("defaults-1")) == 2


@pytest.mark.parametrize("node", ["nap", "slow_sync"])
async def test_a_step_that_runs_too_long_times_out(node: str) -> None:
    wf = {
        "name": "slow",
        "steps": [
            {"name": "wait", "node": f"{NODE}:{node}", "inputs": {"seconds": 2}, "timeout": 0.2}
        ],
    }
    async with Runner([mem()]) as runner:
        t0 = time.monotonic()
        with pytest.raises(StepFailed, match=r"timed out after 0.2s"):
            await runner.run(wf, request_id=f"timeout-{node}")
    assert time.monotonic() - t0 < 1.5


async def test_a_failed_parallel_step_keeps_the_nodes_error_as_its_cause() -> None:
    from blokrun import StepFailed

    wfnodes.FAIL_AT.add("b")
    async with Runner([mem()]) as runner:
        with pytest.raises(StepFailed) as info:
            await runner.run(diamond(0.01, fail=True), request_id="cause-1")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "b failed on purpose" in str(info.value.__cause__)
