"""Two Runners of one process race for one new run: the one whose lease answer arrives
first but is resumed second must not be taken for a dead holder (it once was: the other
"took over" a live lease and the first lost its run with LeaseLost)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource
from blokrun.datasources.memory import MemoryStore
from blokrun.errors import RunBusy
from blokrun.persistence.leases import acquire


class SlowFirstAnswer(MemoryStore):
    """The first acquire is granted at once but answered late (its caller resumes after
    the second caller has run)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> Any:
        self.calls += 1
        state = await super().acquire_lease(key, owner, ttl)
        if self.calls == 1:
            await anyio.sleep(0.05)
        return state


async def test_a_lease_being_granted_in_this_process_is_not_a_dead_holders() -> None:
    store = SlowFirstAnswer()
    ds = Datasource(DatasourceSettings(name="default", type="memory"), store)
    outcomes: list[Any] = []

    async def take() -> None:
        try:
            outcomes.append(await acquire(ds, "r", 30.0))
        except RunBusy as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        await anyio.sleep(0.01)  # the first is granted, its answer still on the way
        tg.start_soon(take)
    busy = [o for o in outcomes if isinstance(o, RunBusy)]
    held = [o for o in outcomes if not isinstance(o, RunBusy)]
    assert len(busy) == 1 and len(held) == 1, outcomes
    assert store.calls == 2  # no takeover: no re-acquire under the holder's name
    assert await held[0].renew()  # the first still holds it
    await held[0].release()


async def test_a_failed_acquire_leaves_nothing_held_here() -> None:
    from blokrun.persistence import leases

    ds = Datasource(DatasourceSettings(name="default", type="memory"), MemoryStore())
    first = await acquire(ds, "x", 30.0)
    before = set(leases._HELD_HERE)
    with pytest.raises(RunBusy):
        await acquire(ds, "x", 30.0)
    assert before == leases._HELD_HERE
    await first.release()
    assert first.owner not in leases._HELD_HERE
