"""Scale-out: runs/s and checkpointed steps/s with 1, 2 and 4 ``blokrun worker`` processes.

The workers start first and sit idle on the queue; then this process submits ``RUNS`` runs
of a 10-step workflow (trivial ``set`` steps, a checkpoint after each) as fast as it can,
and the clock runs from the first submit until the queue is empty and the last run's head
says completed. Each worker runs 16 runs at once. On this 2-core machine the workers, the
server and this process share two cores, so the figures show the design's overhead, not a
cluster's capacity (docs/workers.md explains how it grows on real machines).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio

from blokrun import Runner
from tests.servers.base import settings_env

if TYPE_CHECKING:
    from benchmarks.harness import Report

SECTION = "Scale-out: blokrun worker processes on one queue"
REPO = Path(__file__).resolve().parents[1]
STEPS = 10


def _workflow() -> dict[str, Any]:
    return {
        "name": "scale",
        "steps": [
            {"name": f"s{i}", "node": "set", "inputs": {f"k{i}": "x" * 40}} for i in range(STEPS)
        ],
    }


async def _one(driver: str, server: Any, workers: int, runs: int) -> float:
    settings = server.settings("default", prefix=f"wk-{uuid4().hex[:8]}/", timeout=30.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATASOURCE_", "BLOKRUN_"))}
    env.update(settings_env("default", settings))
    env["PYTHONPATH"] = str(REPO)
    logs = [
        Path(tempfile.mkstemp(prefix="blokrun-worker-", suffix=".log")[1]) for _ in range(workers)
    ]
    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - started and left running; nothing awaited on it
            [sys.executable, "-m", "blokrun", "worker", "--concurrency", "16", "--grace", "5"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )
        for log in logs
    ]
    try:
        async with Runner.from_env(env) as runner:
            queue = await runner.queue()
            with anyio.fail_after(60):  # every worker started (imports, connections), idle
                while not all("ready" in log.read_text() for log in logs):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            wf = runner.load(_workflow())
            t0 = time.perf_counter()
            ids = [await runner.submit(wf) for _ in range(runs)]
            while True:
                stats = await queue.stats()
                if stats.waiting == 0 and stats.claimed == 0:
                    break
                await anyio.sleep(0.02)
            elapsed = time.perf_counter() - t0
            for rid in ids[-5:]:
                head = await runner.head(rid)
                assert head is not None and head.status == "completed", (rid, head)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.communicate(timeout=30)
        for log in logs:
            log.unlink()
    return runs / elapsed


async def run_all(report: Report, servers: dict[str, Any], quick: bool) -> None:
    runs = 600 if not quick else 150
    for driver in ("redis", "postgresql"):
        if driver not in servers:
            continue
        base = None
        for n in (1, 2, 4):
            try:
                rate = await _one(driver, servers[driver], n, runs)
            except Exception as exc:  # a backend that is not there: say so
                report.add(
                    SECTION, f"{driver}: {n} worker(s)", float("nan"), "/s", f"skipped: {exc}"
                )
                break
            base = base or rate
            report.add(
                SECTION,
                f"{driver}: {n} worker(s), runs/s",
                rate,
                "/s",
                f"{rate * STEPS:,.0f} checkpointed steps/s; {rate / base:.2f}x one worker; "
                f"{runs} runs of {STEPS} steps, 16 at once per worker",
            )
