"""``python -m benchmarks.ab_step URL [N]``: one checkout's cost per step of an N-step run
(default 50) on the Redis or PostgreSQL server at ``URL`` -- small and quick, to compare two
checkouts back to back (run it from each tree with ``PYTHONPATH=.``, interleaved).

Prints the median over 7+ runs of the wall time of one ``runner.run`` / N (per-run costs
included: the lease, the start record) and of the checkpoint overhead (the same minus a run
with persistence off)."""

from __future__ import annotations

import statistics
import sys
import time
import uuid

import anyio

from benchmarks.runner_overhead import workflow
from blokrun import Runner
from blokrun.config import DatasourceSettings


def _settings(url: str) -> DatasourceSettings:
    tag = uuid.uuid4().hex[:6]
    if url.startswith(("postgresql://", "postgres://")):
        return DatasourceSettings(name="tp", type="postgresql", url=url, table=f"ab_{tag}")
    return DatasourceSettings(name="tp", type="redis", url=url, prefix=f"ab-{tag}/")


async def main(url: str, n: int) -> None:
    async with Runner([_settings(url)]) as runner:
        on = runner.load(workflow(n, persistence=True, target="tp"))
        off = runner.load(workflow(n, persistence=False, target="tp"))
        for _ in range(5):
            await runner.run(on)
        walls, costs = [], []
        for _ in range(max(7, 700 // n)):
            started = time.perf_counter()
            await runner.run(on)
            with_checkpoints = time.perf_counter() - started
            started = time.perf_counter()
            await runner.run(off)
            walls.append(with_checkpoints / n * 1e6)
            costs.append((with_checkpoints - (time.perf_counter() - started)) / n * 1e6)
    print(
        f"N={n}: {statistics.median(walls):.0f} µs per step (wall / N), checkpoint overhead "
        f"{statistics.median(costs):.0f} µs per step (medians of {len(walls)})"
    )


if __name__ == "__main__":
    anyio.run(
        main,
        sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0",
        int(sys.argv[2]) if len(sys.argv) > 2 else 50,
    )
