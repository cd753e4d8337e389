"""Schedules on workers: due ticks submitted with stable ids, missed ticks skipped or caught
up, a tick run once however many workers see it -- two worker processes on Redis at once,
one of them killed -- and ``blokrun schedules``."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest

from blokrun import Runner
from blokrun.config import DatasourceSettings
from blokrun.workers import serve
from blokrun.workers.scheduler import SCHEDULE_PREFIX, Scheduler, read_schedules
from tests.conftest import ServerPool
from tests.integration import wfnodes
from tests.integration.test_cli import REPO
from tests.servers.base import settings_env

NODE = "tests.integration.wfnodes"


def ticking(every: float = 60, missed: str = "skip") -> dict[str, Any]:
    return {
        "name": "ticker",
        "schedule": {"every": every, "missed": missed, "inputs": {"total": 0}},
        "steps": [{"name": "tick", "node": f"{NODE}:add", "inputs": {"n": 1}}],
    }


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def runner(tmp_path: Path) -> Runner:
    return Runner(
        [
            DatasourceSettings(name="default", type="filesystem", path=str(tmp_path / "ck")),
            DatasourceSettings(name="q", type="memory"),
        ],
        queue_datasource="q",
    )


@pytest.mark.parametrize(("missed", "expected"), [("skip", 1), ("catch-up", 5)])
async def test_missed_ticks_are_skipped_or_caught_up(
    tmp_path: Path, missed: str, expected: int
) -> None:
    clock = Clock(1_800_000_030.0)
    async with runner(tmp_path) as rt:
        wf = rt.load(ticking(60, missed))
        scheduler = Scheduler(rt, [wf], clock=clock)
        assert await scheduler.round() == []  # a new schedule starts with its next tick
        clock.t += 60
        assert await scheduler.round() == ["ticker:20270115T080100Z"]
        assert await scheduler.round() == []  # the same tick is not submitted twice
        clock.t += 5 * 60  # the workers were down for 5 ticks
        submitted = await scheduler.round()
        assert len(submitted) == expected
        assert submitted[-1] == "ticker:20270115T080600Z"
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def until_done() -> None:
                for rid in ["ticker:20270115T080100Z", *submitted]:
                    assert (await rt.wait(rid)).status == "completed"
                stop.set()

            tg.start_soon(until_done)
            await serve(rt, stop=stop, grace=1)
        states = await read_schedules(rt.datasources["q"])
    assert [s.last_run for s in states] == ["ticker:20270115T080600Z"]
    assert Counter(r for r, _ in wfnodes.CALLS) == {
        rid: 1 for rid in ["ticker:20270115T080100Z", *submitted]
    }


async def test_a_lost_schedule_record_never_runs_a_tick_twice(tmp_path: Path) -> None:
    clock = Clock(1_800_000_030.0)
    async with runner(tmp_path) as rt:
        wf = rt.load(ticking(60, "catch-up"))
        scheduler = Scheduler(rt, [wf], clock=clock)
        await scheduler.round()
        clock.t += 60
        [first] = await scheduler.round()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(rt, stop=stop, grace=1))
            assert (await rt.wait(first)).status == "completed"
            # the record is lost (or tampered with): the schedule starts again; the
            # completed tick, submitted again by a worker that still had it, is not re-run
            await rt.datasources["q"].save(SCHEDULE_PREFIX + "ticker", b"\x00garbage")
            assert await scheduler.round() == []
            assert await rt.submit(wf, {"total": 0}, request_id=first) == first
            stop.set()
        assert [r for r, _ in wfnodes.CALLS].count(first) == 1


def test_a_worker_without_the_schedule_is_told(tmp_path: Path) -> None:
    wf = tmp_path / "plain.json"
    wf.write_text(json.dumps({"name": "plain", "steps": [{"name": "a", "node": "echo"}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "BLOKRUN_"))}
    env.update(
        PYTHONPATH=str(REPO),
        BLOKRUN_HOME=str(tmp_path / "home"),
        DATASOURCE_Q_TYPE="memory",
        BLOKRUN_QUEUE_DATASOURCE="q",
    )
    out = subprocess.run(
        [sys.executable, "-m", "blokrun", "worker", "--schedule", str(wf)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "has no 'schedule'" in out.stderr


@pytest.mark.slow
def test_two_workers_on_redis_run_each_tick_once_even_when_one_is_killed(
    tmp_path: Path, server_pool: ServerPool
) -> None:
    settings = server_pool.get("redis").settings(
        "default", prefix=f"sch-{uuid4().hex[:8]}/", timeout=30.0
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "WF_", "BLOKRUN_"))
    }
    env.update(settings_env("default", settings))
    env.update(PYTHONPATH=str(REPO), BLOKRUN_LEASE_TTL="2", WF_LEDGER=str(tmp_path / "ledger"))
    wf = tmp_path / "ticker.json"
    wf.write_text(json.dumps(ticking(every=1)))
    cmd = [sys.executable, "-m", "blokrun", "worker", "--schedule", str(wf), "--grace", "5"]
    workers = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    try:
        time.sleep(4.5)
        workers[0].send_signal(signal.SIGKILL)
        time.sleep(3.5)
    finally:
        for w in workers[1:]:
            w.send_signal(signal.SIGTERM)
        outs = [w.communicate(timeout=30) for w in workers]
    assert workers[1].returncode == 0, outs[1][1][-2000:]
    ran = Counter(line.split()[0] for line in (tmp_path / "ledger").read_text().splitlines())
    ticks = sorted(ran)
    assert len(ticks) >= 6, ticks  # ~8 s of a 1 s schedule, with a worker start in between
    stamps = [time.mktime(time.strptime(t.split(":")[1], "%Y%m%dT%H%M%SZ")) for t in ticks]
    assert all(b - a == 1 for a, b in itertools.pairwise(stamps)), ticks  # no gap
    # each tick ran once -- but a tick whose worker was killed inside its step may run twice
    twice = [t for t, n in ran.items() if n > 1]
    assert len(twice) <= 1 and all(n <= 2 for n in ran.values()), ran

    async def listed() -> list[Any]:
        async with Runner.from_env(env) as rt:
            await rt.queue()
            assert rt.queue_datasource is not None
            return await read_schedules(rt.queue_datasource)

    [state] = anyio.run(listed)
    assert state.id == "ticker" and state.last_run is not None
    assert state.last_run >= ticks[-1]  # the latest submitted (it may not have run yet)
    shown = subprocess.run(
        [sys.executable, "-m", "blokrun", "schedules"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "ticker" in shown.stdout and "every 1s" in shown.stdout
