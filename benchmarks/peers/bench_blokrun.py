"""blokrun: a linear workflow of built-in ``set`` steps, one ~50-byte var each.

Backends: ``redis``, ``postgresql``, ``filesystem`` (fsync on, the default; blokrun has no
SQLite driver) and ``off`` (``persistence.enabled: false``). One :class:`blokrun.Runner`
per process with the drivers' default pools (PostgreSQL 10, Redis 32 connections).
100 runs at once: ``asyncio.gather`` of ``runner.run`` on one loaded workflow. Resume:
the 100th step (``blokrun_nodes:last``) fails, then ``runner.resume(id)``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import blokrun_nodes
from common import RESUME_STEPS, VALUE, Unavailable, main

from blokrun import Runner
from blokrun.config import DatasourceSettings
from blokrun.errors import StepFailed

if TYPE_CHECKING:
    import argparse


def workflow(n: int, *, persistence: bool, fail_last: bool = False) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"name": f"s{i}", "node": "set", "inputs": {f"k{i}": VALUE}} for i in range(n)
    ]
    if fail_last:
        steps[-1]["node"] = "blokrun_nodes:last"
    return {
        "name": f"peers-{n}{'-resume' if fail_last else ''}",
        "persistence": {"enabled": persistence, **({"targets": ["bench"]} if persistence else {})},
        "steps": steps,
    }


def settings(args: argparse.Namespace) -> list[DatasourceSettings]:
    memory = DatasourceSettings(name="default", type="memory")
    if args.backend == "off":
        return [memory]
    if args.backend == "redis":
        target = DatasourceSettings(name="bench", type="redis", url=f"{args.redis_url}/1")
    elif args.backend == "postgresql":
        target = DatasourceSettings(
            name="bench", type="postgresql", url=args.pg_url, table="blokrun_peers"
        )
    elif args.backend == "filesystem":
        target = DatasourceSettings(
            name="bench", type="filesystem", path=f"{args.data_dir}/blokrun-fs"
        )
    else:
        raise Unavailable(f"blokrun has no {args.backend} driver")
    return [memory, target]


class Blokrun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.runner = Runner(settings(args))
        self.persistence = args.backend != "off"
        self.workflows: dict[int, Any] = {}

    async def start(self) -> Blokrun:
        await self.runner.connect()
        return self

    async def run(self, n: int) -> None:
        if n not in self.workflows:
            self.workflows[n] = self.runner.load(workflow(n, persistence=self.persistence))
        result = await self.runner.run(self.workflows[n], request_id=uuid.uuid4().hex)
        assert len(result.vars) == n, result.vars

    async def prepare(self, k: int) -> list[str]:
        ids = [uuid.uuid4().hex for _ in range(k)]
        wf = self.runner.load(workflow(RESUME_STEPS, persistence=True, fail_last=True))
        blokrun_nodes.FAIL = True
        try:
            for rid in ids:
                try:
                    await self.runner.run(wf, request_id=rid)
                except StepFailed:
                    pass
                else:
                    raise AssertionError("the last step did not fail")
        finally:
            blokrun_nodes.FAIL = False
        return ids

    async def resume(self, run_id: str) -> None:
        result = await self.runner.resume(run_id)
        assert result.status == "completed" and len(result.vars) == RESUME_STEPS, result
        assert result.steps_run == (f"s{RESUME_STEPS - 1}",), result.steps_run

    async def close(self) -> None:
        await self.runner.close()


async def connect(args: argparse.Namespace) -> Blokrun:
    return await Blokrun(args).start()


if __name__ == "__main__":
    main(connect, "blokrun", ["blokrun", "redis", "hiredis", "asyncpg", "orjson", "anyio"])
