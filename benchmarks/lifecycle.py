"""Suspended runs: 10,000 runs waiting for input hold no memory; resuming one is fast.

Each run is ``prepare`` (a built-in ``set``) then ``approve`` (``await-input``): it
checkpoints, suspends, and ``runner.run`` returns. The process's resident memory is read
(``/proc/self/statm``) before and after creating the suspended runs, with a full garbage
collection each time; the suspended runs live only in Redis (a throwaway ``redis-server``).
Then the time to resume one of them with its input and token (median over 50 runs).
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from blokrun import Runner
from blokrun.config import DatasourceSettings

if TYPE_CHECKING:
    from benchmarks.harness import Report

SECTION = "Suspend and resume"
WORKFLOW: dict[str, Any] = {
    "name": "approval",
    "persistence": {"targets": ["redis"]},
    "steps": [
        {"name": "prepare", "node": "set", "inputs": {"amount": 42, "note": "x" * 40}},
        {"name": "approve", "node": "await-input", "inputs": {"prompt": "approve?"}},
        {"name": "done", "node": "echo", "inputs": {"by": "${ctx.vars.approve.by}"}},
    ],
}


def rss() -> int:
    gc.collect()
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def live() -> tuple[int, int]:
    """(Python objects tracked by the collector, memory blocks the allocator holds)."""
    gc.collect()
    return len(gc.get_objects()), sys.getallocatedblocks()


async def run(report: Report, quick: bool = False) -> None:
    count = 1000 if quick else 10_000
    try:
        from tests.servers import redis as redis_server

        tmp = tempfile.mkdtemp(prefix="blokrun-bench-life-")
        server = redis_server.launch(Path(tmp))
    except Exception as exc:
        report.add(SECTION, "suspended runs", float("nan"), "s", f"skipped: {exc}")
        return
    try:
        settings = server.settings("redis", timeout=30.0)
        async with Runner([settings, DatasourceSettings(name="default", type="memory")]) as runner:
            wf = runner.load(WORKFLOW)
            for i in range(20):  # warm up: connections, caches, lazy imports
                await runner.run(wf, request_id=f"warm-{i}")
            before = rss()
            objects_before, blocks_before = live()
            tokens: dict[str, str] = {}
            limiter = anyio.CapacityLimiter(64)

            async def one(i: int) -> None:
                async with limiter:
                    result = await runner.run(wf, request_id=f"s-{i}")
                    assert result.status == "suspended" and result.token
                    if i < 50:
                        tokens[result.request_id] = result.token

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(count):
                    tg.start_soon(one, i)
            created = time.perf_counter() - t0
            objects_after, blocks_after = live()
            after = rss()
            report.add(
                SECTION,
                f"create {count:,} suspended runs",
                created,
                "s",
                f"{count / created:,.0f} runs/s, 64 at a time, Redis",
            )
            report.add(
                SECTION,
                f"Python objects held after {count:,} suspended runs",
                objects_after - objects_before,
                "objects",
                f"allocator blocks {blocks_after - blocks_before:+,}: nothing per run "
                "stays in the process",
            )
            report.add(
                SECTION,
                "process RSS growth while creating them",
                (after - before) / 1e6,
                "MB",
                f"RSS {before / 1e6:.0f} -> {after / 1e6:.0f} MB: the 64-at-a-time "
                "peak and pooled connections, which the allocator keeps, not per-run state",
            )
            samples = []
            for rid, token in tokens.items():
                t0 = time.perf_counter()
                done = await runner.resume(rid, input={"by": "ops"}, token=token)
                samples.append(time.perf_counter() - t0)
                assert done.status == "completed"
            report.add(
                SECTION,
                "resume one suspended run (input + token)",
                statistics.median(samples),
                "s",
                f"median of {len(samples)}, among {count:,} suspended; Redis",
            )
    finally:
        server.stop()
