"""The run record's guarantee as a stateful property on Redis, one target: the same model,
rules and invariants as ``test_run_record_machine.py`` (colliding ids and step names, the
same id again, failures, resumes, crashes at any write, tampering, gc), on the paths only a
driver with ``Capabilities.lease_writes`` and ``lease_matches`` takes: a new run's start
record written with its lease, a resume's start written as a compare-and-set on its head.

A crash here is all or nothing per write, as Redis runs each script whole: the write that
dies lands whole (``keep`` > 0) or not at all -- the lease's acquire with a start record
included. Budget: ``BUDGET_REDIS`` sequences (``BLOKRUN_PROPERTY_EXAMPLES`` overrides).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast
from uuid import uuid4

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from blokrun.datasources import Store, create_store
from tests.properties.test_run_record_machine import STEPS, Died, Mortal, RunRecordMachine

if TYPE_CHECKING:
    from blokrun.config import DatasourceSettings
    from tests.conftest import ServerPool
    from tests.servers.base import ThrowawayServer

BUDGET_REDIS = int(os.environ.get("BLOKRUN_PROPERTY_EXAMPLES", "150"))
#: the throwaway server of the running test (hypothesis builds the machine itself)
SERVER: dict[str, ThrowawayServer] = {}


class WholeWrites(Mortal):
    """A store whose every write lands whole or not at all when its process dies."""

    async def save_batch(self, entries: Sequence[Any]) -> None:
        keep = self._crash.write(len(entries))
        if keep == 0:
            raise Died("the process died before this write")
        await self._inner.save_batch(entries)
        if keep > 0:
            raise Died("the process died as this write landed")

    async def save_batch_fenced(self, entries: Sequence[Any], lease_key: str, token: int) -> bool:
        keep = self._crash.write(len(entries))
        if keep == 0:
            raise Died("the process died before this write")
        ok: bool = await self._inner.save_batch_fenced(entries, lease_key, token)
        if keep > 0:
            raise Died("the process died as this write landed")
        return ok

    async def save_groups(self, groups: Sequence[Any]) -> list[bool]:
        keep = self._crash.write(len(groups))
        if keep == 0:
            raise Died("the process died before this write")
        written: list[bool] = await self._inner.save_groups(groups)
        if keep > 0:
            raise Died("the process died as this write landed")
        return written

    async def acquire_lease_reading(self, *args: Any) -> Any:
        if self._crash.dead:
            raise Died("the process is dead")
        return await self._inner.acquire_lease_reading(*args)

    async def acquire_lease_writing(self, *args: Any, **kwargs: Any) -> Any:
        """The lease with a start record: a write like any other (and the crash may come
        just before it, or just as it landed)."""
        keep = self._crash.write(1)
        if keep == 0:
            raise Died("the process died before this write")
        answer = await self._inner.acquire_lease_writing(*args, **kwargs)
        if keep > 0:
            raise Died("the process died as this write landed")
        return answer


class RedisRunRecordMachine(RunRecordMachine):
    TARGETS = ("a",)

    def __init__(self) -> None:
        # a store of this sequence's own, the same for each of its "processes"
        self.store_settings = SERVER["redis"].settings("a", prefix=f"m{uuid4().hex[:10]}/")
        super().__init__()

    def _settings(self, name: str) -> DatasourceSettings:
        assert name == "a"
        return self.store_settings

    def _mortal(self, settings: DatasourceSettings) -> Store:
        return cast("Store", WholeWrites(create_store(settings), self.fate))


def test_the_run_record_keeps_its_promise_on_redis(server_pool: ServerPool) -> None:
    SERVER["redis"] = server_pool.get("redis")
    try:
        run_state_machine_as_test(
            RedisRunRecordMachine,
            settings=settings(
                max_examples=BUDGET_REDIS,
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        SERVER.clear()
