"""Scale-out in one file: submit runs to the queue, serve them with a worker, wait for results.

The queue lives in ``DATASOURCE_QUEUE_*`` -- Redis or PostgreSQL for real use, so that any
number of ``blokrun worker`` processes on any machines share it::

    export DATASOURCE_QUEUE_TYPE=redis DATASOURCE_QUEUE_URL=redis://localhost:6379/0
    export DATASOURCE_DEFAULT_TYPE=redis DATASOURCE_DEFAULT_URL=redis://localhost:6379/0
    blokrun worker --concurrency 16 &              # as many as you like
    blokrun submit examples/workers/workflow.json --input '{"image": "cat.png"}'
    blokrun wait <printed id>

Without ``DATASOURCE_QUEUE_TYPE`` this script keeps the queue in process memory and runs one
worker in-process (``blokrun.workers.serve``) -- the same code path, no server needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from blokrun import Runner
from blokrun.workers import serve

HERE = Path(__file__).resolve().parent


def environment(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    env.setdefault("DATASOURCE_QUEUE_TYPE", "memory")
    env.setdefault("BLOKRUN_QUEUE_DATASOURCE", "queue")
    return env


async def main(environ: Mapping[str, str] = os.environ, images: int = 20) -> dict[str, Any]:
    async with Runner.from_env(environment(environ), search_paths=[str(HERE)]) as runner:
        wf = runner.load(HERE / "workflow.json")
        ids = [
            await runner.submit(wf, {"image": f"img-{i}.png"}, priority=1 if i < 5 else 0)
            for i in range(images)
        ]
        stop = anyio.Event()
        results: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(runner, concurrency=8, stop=stop, grace=5))
            with anyio.fail_after(60):
                for rid in ids:
                    results[rid] = (await runner.wait(rid)).vars["publish"]["url"]
            stop.set()
    print(f"{len(results)} runs done by the worker; first: {next(iter(results.values()))}")
    return results


if __name__ == "__main__":
    anyio.run(main)
