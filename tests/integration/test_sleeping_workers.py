"""Durable timers on workers: a run whose timer has long to go sleeps -- its slot serves
other runs meanwhile -- and a worker resumes it when it is due (on Redis, another worker
process, after the first one was killed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio

from blokrun import Runner, RunNotFound
from blokrun.config import DatasourceSettings
from blokrun.workers import Worker
from tests.conftest import ServerPool
from tests.integration import wfnodes
from tests.integration.test_cli import REPO
from tests.processes import reaped
from tests.servers.base import settings_env

NODE = "tests.integration.wfnodes"


def napping(seconds: float) -> dict[str, Any]:
    return {
        "name": "napping",
        "steps": [
            {"name": "before", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "nap", "node": "sleep", "inputs": {"seconds": seconds}},
            {"name": "after", "node": f"{NODE}:add", "inputs": {"n": 2}},
        ],
    }


def quick() -> dict[str, Any]:
    return {"name": "quick", "steps": [{"name": "q", "node": f"{NODE}:add", "inputs": {"n": 5}}]}


async def status(rt: Runner, rid: str) -> str | None:
    try:
        return (await rt.inspect(rid)).status
    except RunNotFound:  # not started yet
        return None


async def test_a_sleeping_run_frees_its_slot_and_is_resumed_when_due() -> None:
    async with Runner([DatasourceSettings(name="default", type="memory")], lease_ttl=5) as rt:
        sleeper = await rt.submit(napping(1.5), {"total": 0}, request_id="sleeper")
        t0 = time.monotonic()
        worker = Worker(rt, await rt.queue(), concurrency=1, claim_ttl=5, sleep_after=0.5)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.serve, stop)
            with anyio.fail_after(10):
                while await status(rt, sleeper) != "sleeping":  # noqa: ASYNC110 (a store)
                    await anyio.sleep(0.02)
                # one slot, and it is free: a run submitted now ends before the sleeper wakes
                other = await rt.submit(quick(), {"total": 0}, request_id="other")
                assert (await rt.wait(other)).status == "completed"
                quick_done = time.monotonic() - t0
                result = await rt.wait(sleeper)
            stop.set()
        slept_for = time.monotonic() - t0
    assert quick_done < 1.2, quick_done
    assert result.status == "completed" and result.vars["total"] == 3
    assert 1.4 < slept_for < 4.0, slept_for
    assert worker.stats.slept == 1 and worker.stats.resumed == 1
    assert [s for r, s in wfnodes.CALLS if r == "sleeper"] == ["before", "after"]


def test_a_sleeping_run_is_woken_by_another_worker_process_on_redis(
    tmp_path: Path, server_pool: ServerPool
) -> None:
    settings = server_pool.get("redis").settings(
        "default", prefix=f"zz-{uuid4().hex[:8]}/", timeout=30.0
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "WF_", "BLOKRUN_"))
    }
    env.update(settings_env("default", settings))
    env.update(PYTHONPATH=str(REPO), BLOKRUN_LEASE_TTL="1", WF_LEDGER=str(tmp_path / "ledger"))

    async def submit() -> str:
        async with Runner.from_env(env) as rt:
            return await rt.submit(napping(3.0), {"total": 0}, request_id="nap-1")

    rid = anyio.run(submit)
    cmd = [sys.executable, "-m", "blokrun", "worker", "--grace", "2"]
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip

    async def shown() -> str | None:
        async with Runner.from_env(env) as rt:
            return await status(rt, rid)

    with reaped(first):
        deadline = time.monotonic() + 20
        while anyio.run(shown) != "sleeping":
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)  # the worker that parked it is gone
        first.communicate(timeout=10)
    second = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:

        async def wait() -> Any:
            async with Runner.from_env(env) as rt:
                with anyio.fail_after(30):
                    return await rt.wait(rid)

        result = anyio.run(wait)
    finally:
        with reaped(second):
            second.send_signal(signal.SIGTERM)
            second.communicate(timeout=30)
    assert result.status == "completed" and result.vars["total"] == 3
    ran = (tmp_path / "ledger").read_text().split()
    assert ran == ["nap-1", "before", "nap-1", "after"]
