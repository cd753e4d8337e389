"""Runner overhead per step: a linear workflow of trivial steps, checkpointing off and on.

Each step is the built-in ``set`` node with one constant input (~50 bytes added to the
state), so what is measured is blokrun: input evaluation, the node call, hooks, record
encoding and the datasource write. Median of several runs of N steps, divided by N.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from benchmarks.harness import Report, median_of
from blokrun import Runner
from blokrun.config import DatasourceSettings


def workflow(n: int, *, persistence: bool, target: str = "default") -> dict[str, Any]:
    return {
        "name": f"bench-{n}",
        "persistence": {"enabled": persistence, **({"targets": [target]} if persistence else {})},
        "steps": [
            {"name": f"s{i}", "node": "set", "inputs": {f"k{i}": "x" * 40}} for i in range(n)
        ],
    }


async def per_step(runner: Runner, wf: Any, n: int, repeats: int) -> float:
    async def once() -> float:
        t0 = time.perf_counter()
        await runner.run(wf)
        return (time.perf_counter() - t0) / n

    return await median_of(once, repeats)


async def run(report: Report, quick: bool = False) -> None:
    section = "Runner overhead per step"
    n = 100
    with tempfile.TemporaryDirectory(prefix="blokrun-bench-") as tmp:
        datasources = [
            DatasourceSettings(name="default", type="memory"),
            DatasourceSettings(name="fs", type="filesystem", path=f"{tmp}/fsync"),
            DatasourceSettings(
                name="fs_nosync", type="filesystem", path=f"{tmp}/nosync", fsync=False
            ),
        ]
        async with Runner(datasources) as runner:
            off = runner.load(workflow(n, persistence=False))
            base = await per_step(runner, off, n, 30 if not quick else 5)
            report.add(section, f"persistence off ({n} steps)", base, "s", "median per step")
            for target, label, reps in (
                ("default", "memory", 20),
                ("fs_nosync", "filesystem, fsync off", 5),
                ("fs", "filesystem, fsync on (durable)", 3),
            ):
                wf = runner.load(workflow(n, persistence=True, target=target))
                value = await per_step(runner, wf, n, reps if not quick else 2)
                report.add(
                    section,
                    f"checkpoint to {label}",
                    value,
                    "s",
                    f"{value / base:.1f}x the persistence-off cost",
                )
