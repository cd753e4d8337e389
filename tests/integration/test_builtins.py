"""The built-in nodes: set, log, sleep, echo, fail."""

from __future__ import annotations

import logging
import time

import pytest

from blokrun import Runner, StepFailed
from blokrun.config import DatasourceSettings


def runner() -> Runner:
    return Runner([DatasourceSettings(name="default", type="memory")])


async def test_set_echo_sleep_log(caplog: pytest.LogCaptureFixture) -> None:
    wf = {
        "name": "builtins",
        "steps": [
            {"name": "init", "node": "set", "inputs": {"a": 1, "who": "${ctx.request.id}"}},
            {"name": "wait", "node": "sleep", "inputs": {"seconds": 0.2}},
            {
                "name": "say",
                "node": "log",
                "inputs": {"message": "hi ${ctx.vars.who}", "level": "warning"},
            },
            {"name": "copy", "node": "echo", "inputs": {"a": "${ctx.vars.a}"}},
        ],
    }
    caplog.set_level(logging.INFO, logger="blokrun")
    async with runner() as rt:
        started = time.perf_counter()
        result = await rt.run(wf, request_id="b-1")
        elapsed = time.perf_counter() - started
    assert result.vars == {"a": 1, "who": "b-1", "copy": {"a": 1}}
    assert elapsed >= 0.2
    said = [r for r in caplog.records if r.getMessage() == "hi b-1"]
    assert said and said[0].levelno == logging.WARNING and said[0].step == "say"  # type: ignore[attr-defined]


async def test_fail_raises_with_its_message() -> None:
    wf = {"name": "f", "steps": [{"name": "guard", "node": "fail", "inputs": {"message": "nope"}}]}
    async with runner() as rt:
        with pytest.raises(StepFailed, match="NodeFailure: nope"):
            await rt.run(wf)


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [({"seconds": -1}, "non-negative number"), ({"seconds": "soon"}, "non-negative number")],
)
async def test_sleep_checks_its_input_at_run_time(inputs: dict[str, object], expected: str) -> None:
    wf = {"name": "s", "steps": [{"name": "z", "node": "sleep", "inputs": inputs}]}
    async with runner() as rt:
        with pytest.raises(StepFailed, match=expected):
            await rt.run(wf)


async def test_log_rejects_an_unknown_level() -> None:
    wf = {
        "name": "l",
        "steps": [{"name": "z", "node": "log", "inputs": {"message": "m", "level": "loud"}}],
    }
    async with runner() as rt:
        with pytest.raises(StepFailed, match="level must be one of"):
            await rt.run(wf)
