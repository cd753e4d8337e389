"""Schedules on workers: each worker started with scheduled workflows submits their due
ticks; a tick's run has a stable request id, so it runs once across every worker.

Each schedule's latest submitted tick is kept beside the queue (``_blokrun.schedule.<id>``
in the queue's datasource) so a worker that starts later, or after an outage, knows what
was missed; two workers racing over one tick both submit the same request id, which the
queue and the run store de-duplicate (``Runner.submit``). A new schedule starts with the
next tick (no backfill).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import msgspec
import orjson

from blokrun.errors import BlokrunError
from blokrun.spec.schedule import Schedule

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from blokrun.datasources import Datasource
    from blokrun.runner import Runner
    from blokrun.spec.loader import Workflow

__all__ = ["SCHEDULE_PREFIX", "ScheduleState", "Scheduler", "read_schedules"]

log = logging.getLogger("blokrun")

SCHEDULE_PREFIX = "_blokrun.schedule."


class ScheduleState(msgspec.Struct, frozen=True, kw_only=True):
    """What the workers keep about a schedule: its latest submitted tick and its run."""

    id: str
    workflow: str
    spec: str
    last_tick: float
    last_run: str | None = None
    updated_at: float = 0.0
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"

    def next_tick(self) -> float:
        """The tick after the latest submitted one."""
        schedule = Schedule(self.id, self.cron, self.every, self.timezone, "skip", {})
        return schedule.next_after(self.last_tick)


@dataclass(slots=True)
class Scheduler:
    """Submits the due ticks of ``workflows`` (each has a ``schedule``) with ``runner``."""

    runner: Runner
    workflows: Sequence[Workflow]
    clock: Callable[[], float] = time.time
    poll: float = 1.0

    async def _store(self) -> Datasource:
        await self.runner.queue()
        ds = self.runner.queue_datasource
        assert ds is not None
        return ds

    async def round(self) -> list[str]:
        """Submit every due tick; the request ids submitted."""
        ds = await self._store()
        submitted: list[str] = []
        for wf in self.workflows:
            schedule = wf.schedule
            assert schedule is not None
            key = SCHEDULE_PREFIX + schedule.id
            state = _decode(key, await ds.load(key))
            now = self.clock()
            if state is None:  # a new schedule: it starts with the next tick
                start = schedule.latest_at_or_before(now) or now
                await self._save(ds, key, schedule, wf=wf, tick=start, run=None)
                continue
            ticks = schedule.due(state.last_tick, now)
            for tick in ticks:
                rid = schedule.request_id(tick)
                await self.runner.submit(wf, schedule.inputs, request_id=rid)
                submitted.append(rid)
                log.info("schedule %s: submitted tick %s", schedule.id, rid)
            if ticks:
                await self._save(ds, key, schedule, wf=wf, tick=ticks[-1], run=submitted[-1])
        return submitted

    async def _save(
        self,
        ds: Datasource,
        key: str,
        schedule: Schedule,
        *,
        wf: Workflow,
        tick: float,
        run: str | None,
    ) -> None:
        state = ScheduleState(
            id=schedule.id,
            workflow=wf.name,
            spec=schedule.describe(),
            last_tick=tick,
            last_run=run,
            updated_at=self.clock(),
            cron=schedule.cron,
            every=schedule.every,
            timezone=schedule.timezone,
        )
        await ds.save(key, orjson.dumps(msgspec.to_builtins(state)))

    def _next_due(self) -> float:
        now = self.clock()
        soonest = min(wf.schedule.next_after(now) for wf in self.workflows if wf.schedule)
        return max(0.01, min(self.poll, soonest - now))

    async def run(self, stop: anyio.Event) -> None:
        """Submit due ticks until ``stop`` is set (an outage is logged, not fatal)."""
        while not stop.is_set():
            try:
                await self.round()
            except BlokrunError as exc:
                log.warning("scheduler: %s; trying again", exc)
            with anyio.move_on_after(self._next_due()):
                await stop.wait()


def _decode(key: str, raw: bytes | None) -> ScheduleState | None:
    """A stored schedule state; a damaged one is logged and read as none (the schedule
    then starts again with its next tick: no tick runs twice, their ids are stable)."""
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=ScheduleState)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        log.warning("schedule record %r cannot be read (%s); starting it afresh", key, exc)
        return None


async def read_schedules(ds: Datasource) -> list[ScheduleState]:
    """Every schedule the workers keep in ``ds`` (the queue's datasource), by id."""
    keys = await ds.keys(SCHEDULE_PREFIX)
    loaded = await ds.load_batch(keys)
    states = [_decode(key, raw) for key, raw in sorted(loaded.items())]
    return [state for state in states if state is not None]
