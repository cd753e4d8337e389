"""``python -m benchmarks.ab_step REDIS_URL``: the checkpoint overhead of one 50-step run on
Redis, persistence on minus off, median of 7 -- small and quick, to compare two checkouts
back to back (run it from each tree with ``PYTHONPATH=.``) on a server you started."""

from __future__ import annotations

import statistics
import sys
import time
import uuid

import anyio

from benchmarks.runner_overhead import workflow
from blokrun import Runner
from blokrun.config import DatasourceSettings


async def main(url: str) -> None:
    settings = DatasourceSettings(
        name="tp", type="redis", url=url, prefix=f"ab-{uuid.uuid4().hex[:6]}/"
    )
    async with Runner([settings]) as runner:
        on = runner.load(workflow(50, persistence=True, target="tp"))
        off = runner.load(workflow(50, persistence=False, target="tp"))
        await runner.run(on)
        costs = []
        for _ in range(7):
            started = time.perf_counter()
            await runner.run(on)
            with_checkpoints = time.perf_counter() - started
            started = time.perf_counter()
            await runner.run(off)
            costs.append((with_checkpoints - (time.perf_counter() - started)) / 50 * 1e6)
    print(f"checkpoint overhead: {statistics.median(costs):.0f} µs per step (median of 7)")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0")
