"""A run that kills its own process (SIGKILL) at a chosen point; used by the crash harness.

python -m tests.integration.crash_child HOME REQUEST_ID POINT N

POINT is where the save of step N's checkpoint dies: ``before`` (nothing of it written),
``between`` (the checkpoint and its alias written, not the head record), ``after`` (all
written, killed before the next step), or ``in-step`` (inside the node of step N, after its
side effect). With POINT ``none`` the run is resumed instead.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import anyio

from blokrun import Runner
from blokrun.config import settings_from_env
from blokrun.datasources import Datasource, create_store
from blokrun.persistence.keys import CHECKPOINT_PREFIX, HEAD_PREFIX

STEPS = 8


def workflow() -> dict[str, object]:
    return {
        "name": "crashy",
        "steps": [
            {"name": f"s{i}", "node": "tests.integration.wfnodes:add", "inputs": {"n": i}}
            for i in range(1, STEPS + 1)
        ],
    }


class Faulty:
    """Wraps any store; the save of the N-th checkpoint kills the process at POINT."""

    def __init__(self, inner: Any, point: str, n: int, prefix: str) -> None:
        self.inner, self.point, self.n, self.calls = inner, point, n, 0
        self.prefix = prefix  # the datasource's: the store sees prefixed keys

    def bare(self, key: str) -> str:
        return key.removeprefix(self.prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def save_batch(self, entries: Sequence[tuple[str, bytes, float | None]]) -> None:
        await self._fault(entries, self.inner.save_batch)
        await self.inner.save_batch(entries)

    async def save_batch_fenced(
        self, entries: Sequence[tuple[str, bytes, float | None]], lease_key: str, token: int
    ) -> bool:
        """The run's writes to its lease datasource: the same faults."""

        async def write(part: Sequence[tuple[str, bytes, float | None]]) -> None:
            assert await self.inner.save_batch_fenced(part, lease_key, token)

        await self._fault(entries, write)
        return bool(await self.inner.save_batch_fenced(entries, lease_key, token))

    async def save_groups(self, groups: Sequence[Any]) -> list[bool]:
        """Group commit (Redis, PostgreSQL): one run here, so one group per save."""
        assert len(groups) == 1, groups
        entries, lease_key, token = groups[0]

        async def write(part: Sequence[tuple[str, bytes, float | None]]) -> None:
            assert await self.inner.save_groups([(part, lease_key, token)]) == [True]

        await self._fault(entries, write)
        return list(await self.inner.save_groups(groups))

    async def _fault(self, entries: Sequence[Any], write: Any) -> None:
        if not any(self.bare(key).startswith(CHECKPOINT_PREFIX) for key, _, _ in entries):
            return  # the definition, the run's start, an end record: not counted
        self.calls += 1
        if self.calls == self.n and self.point in ("before", "between", "after"):
            if self.point == "between":
                await write([e for e in entries if not self.bare(e[0]).startswith(HEAD_PREFIX)])
            elif self.point == "after":
                await write(entries)
            os.kill(os.getpid(), signal.SIGKILL)


async def main(home: str, rid: str, point: str, n: int) -> None:
    """The datasource is ``default`` from DATASOURCE_DEFAULT_* (the filesystem under HOME
    when unset), wrapped so it can kill the process."""
    environ = dict(os.environ)
    environ.setdefault("BLOKRUN_HOME", home)
    settings = settings_from_env(environ).datasources["default"]
    if settings.type == "filesystem":
        settings = replace(settings, path=f"{home}/ck")
    if point == "in-step":
        os.environ["WF_KILL_AT"] = f"s{n}"
    store = Faulty(create_store(settings), point, n, settings.prefix)
    async with Runner([Datasource(settings, store)]) as runner:
        if point == "none":
            result = await runner.resume(rid)
        else:
            result = await runner.run(workflow(), {"total": 0}, request_id=rid)
        print(result.vars["total"])


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
