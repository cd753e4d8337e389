"""Durable timers: ``sleep`` and ``wait-until`` store their wake-up time before waiting, so a
run stopped during a wait (cancelled, or its process killed) waits only what is left."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from blokrun import Runner, StepFailed
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource
from blokrun.persistence.keys import TIMER_PREFIX
from tests.integration import wfnodes
from tests.integration.test_cli import REPO, cli_env, write_wf
from tests.processes import reaped

NODE = "tests.integration.wfnodes"


def fs(root: Path) -> Datasource:
    return build_datasource(DatasourceSettings(name="default", type="filesystem", path=str(root)))


def napper(**timer: Any) -> dict[str, Any]:
    node = "sleep" if "seconds" in timer else "wait-until"
    return {
        "name": "napper",
        "steps": [
            {"name": "before", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "nap", "node": node, "inputs": timer},
            {"name": "after", "node": f"{NODE}:add", "inputs": {"n": 2}},
        ],
    }


def calls(rid: str) -> list[str]:
    return [step for r, step in wfnodes.CALLS if r == rid]


async def test_a_cancelled_sleep_resumes_with_what_is_left(tmp_path: Path) -> None:
    async with Runner([fs(tmp_path)]) as runner:
        t0 = time.monotonic()
        with anyio.move_on_after(1.0):
            await runner.run(napper(seconds=2.5), {"total": 0}, request_id="z-1")
        assert (await runner.inspect("z-1")).status == "cancelled"
        t1 = time.monotonic()
        result = await runner.resume("z-1")
        waited = time.monotonic() - t1
    assert result.vars["total"] == 3
    assert calls("z-1") == ["before", "after"]
    assert 1.0 < waited < 2.0, waited  # ~1.5 s left of 2.5, not 2.5 again
    assert time.monotonic() - t0 < 3.5


async def test_a_three_day_sleep_keeps_its_wake_up_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three days later (the clock moved; the process was replaced) the run wakes at once."""
    ds = fs(tmp_path)
    async with Runner([ds]) as runner:
        started = time.time()
        with anyio.move_on_after(0.5):
            await runner.run(napper(seconds=3 * 86400), {"total": 0}, request_id="d-3")
        [key] = await ds.keys(TIMER_PREFIX)
        assert key.startswith(f"{TIMER_PREFIX}d-3/1/nap")
        # still 3 days to go: a resume now would wait (the wait is not started over)
        with anyio.move_on_after(0.5):
            await runner.resume("d-3")
        assert calls("d-3") == ["before"]
    later = started + 3 * 86400 + 1
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - started + later)
    async with Runner([ds]) as runner:
        t0 = time.monotonic()
        result = await runner.resume("d-3")
    assert time.monotonic() - t0 < 1.0
    assert result.vars["total"] == 3
    assert calls("d-3") == ["before", "after"]


async def test_wait_until_a_time_in_the_past_does_not_wait(tmp_path: Path) -> None:
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.6)).isoformat()
    async with Runner([fs(tmp_path)]) as runner:
        t0 = time.monotonic()
        await runner.run(napper(until=past), {"total": 0}, request_id="w-1")
        assert time.monotonic() - t0 < 0.5
        await runner.run(napper(until=soon), {"total": 0}, request_id="w-2")
        assert 0.4 < time.monotonic() - t0 < 1.5


@pytest.mark.parametrize(
    ("timer", "message"),
    [
        ({"seconds": -1}, "sleep: seconds must be a non-negative number"),
        ({"until": "tomorrow"}, "until must be an ISO 8601 time"),
        ({"until": "2030-01-01T09:00:00"}, "needs a time zone"),
        ({"until": True}, "until must be a non-negative number"),
    ],
)
async def test_bad_timer_inputs_fail_the_step(
    tmp_path: Path, timer: dict[str, Any], message: str
) -> None:
    async with Runner([fs(tmp_path)]) as runner:
        with pytest.raises(StepFailed, match=message):
            await runner.run(napper(**timer), {"total": 0})


def test_a_process_killed_during_a_sleep_resumes_with_what_is_left(tmp_path: Path) -> None:
    home = tmp_path / "home"
    wf = write_wf(tmp_path, napper(seconds=3))
    child = subprocess.Popen(
        [sys.executable, "-m", "blokrun", "run", str(wf), "--request-id", "k-1",
         "--input", '{"total": 0}'],
        cwd=REPO, env=cli_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    with reaped(child):
        deadline = time.monotonic() + 10
        while not any("timer" in p.name for p in home.rglob("*")):  # the wake-up time is stored
            assert time.monotonic() < deadline, sorted(p.name for p in home.rglob("*"))
            time.sleep(0.05)
        time.sleep(1.0)
        child.send_signal(signal.SIGKILL)
        child.wait()
    t0 = time.monotonic()
    resumed = subprocess.run(
        [sys.executable, "-m", "blokrun", "resume", "k-1"],
        cwd=REPO, env=cli_env(home), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    waited = time.monotonic() - t0
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["total"] == 3
    assert waited < 2.6, waited  # at most ~2 s left of 3 (plus a process start)


async def test_a_long_timer_can_park_the_run_as_sleeping(tmp_path: Path) -> None:
    """What workers do: a timer with more left than ``park_timers_after`` ends the attempt
    with status "sleeping" and its wake-up time; a resume once it is due finishes the run."""
    async with Runner([fs(tmp_path)]) as runner:
        t0 = time.time()
        result = await runner.run(
            napper(seconds=1.0), {"total": 0}, request_id="p-1", park_timers_after=0.5
        )
        assert result.status == "sleeping"
        assert result.wake_at is not None and 0.9 < result.wake_at - t0 < 1.5
        info = await runner.inspect("p-1")
        assert info.status == "sleeping"
        assert info.head is not None and info.head.waiting_step == "nap"
        assert info.head.wake_at == result.wake_at
        listed = await runner.list_runs(status="sleeping")
        assert [r.request_id for r in listed] == ["p-1"]
        # resumed with the same rule before it is due: still sleeping, the same wake-up time
        again = await runner.resume("p-1", park_timers_after=0.5)
        assert again.status == "sleeping" and again.wake_at == result.wake_at
        await anyio.sleep(max(0.0, result.wake_at - time.time()))
        done = await runner.resume("p-1", park_timers_after=0.5)
    assert done.status == "completed" and done.vars["total"] == 3
    assert calls("p-1") == ["before", "after"]
