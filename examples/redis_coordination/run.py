"""Run seed query 2: one extraction, N processor runs at once, one merge.

By default ``cache`` is the filesystem under ``.blokrun/cache``; point it at Redis with
``DATASOURCE_CACHE_TYPE=redis DATASOURCE_CACHE_URL=redis://host:6379/0``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from blokrun import Runner

HERE = Path(__file__).resolve().parent


def environment(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    if "DATASOURCE_CACHE_TYPE" not in env:
        home = env.get("BLOKRUN_HOME", ".blokrun")
        env.update(DATASOURCE_CACHE_TYPE="filesystem", DATASOURCE_CACHE_PATH=f"{home}/cache")
    return env


async def main(
    environ: Mapping[str, str] = os.environ, partitions: int = 8, items: int = 10_000
) -> dict[str, Any]:
    batch = uuid.uuid4().hex[:12]
    async with Runner.from_env(environment(environ), search_paths=[str(HERE)]) as runner:
        await runner.run(
            HERE / "extract.json", {"batch": batch, "partitions": partitions, "items": items}
        )
        process = runner.load(HERE / "process.json")
        async with anyio.create_task_group() as tg:
            for p in range(partitions):
                tg.start_soon(runner.run, process, {"batch": batch, "partition": p})
        merged = await runner.run(HERE / "merge.json", {"batch": batch, "partitions": partitions})
    summary = merged.vars["merge"]
    print(f"batch {batch}: {partitions} runs at once; merged {summary}")
    return {
        "batch": batch,
        "summary": summary,
        "expected": {"count": items, "sum": items * (items - 1) // 2},
    }


if __name__ == "__main__":
    anyio.run(main)
