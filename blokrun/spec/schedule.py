"""When a workflow runs by itself: a cron expression (croniter) or an interval.

A schedule's *ticks* are the moments it is due. Each tick becomes one run whose request id
is the schedule's id and the tick's time (``nightly:20261204T020000Z``): workers that see
the same tick submit the same id, and a request id names one run, so a tick runs once
however many workers there are. Missed ticks (no worker was up) are ``skip``-ped -- only a
the latest tick runs, as with Airflow's ``catchup=False`` -- or all run (``catch-up``, oldest first,
at most :data:`MAX_CATCH_UP`).
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from croniter import croniter

from blokrun.errors import WorkflowError

if TYPE_CHECKING:
    from blokrun.spec.model import ScheduleSpec

__all__ = ["MAX_CATCH_UP", "Schedule", "compile_schedule"]

#: Most missed ticks a ``catch-up`` schedule runs at once.
MAX_CATCH_UP = 1000
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,100}$")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A compiled schedule (see the module docstring)."""

    id: str
    cron: str | None
    every: float | None
    timezone: str
    missed: Literal["skip", "catch-up"]
    inputs: dict[str, Any]

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron!r} ({self.timezone})"
        return f"every {self.every:g}s"

    def next_after(self, t: float) -> float:
        """The first tick strictly after ``t`` (Unix seconds)."""
        if self.every is not None:
            return (t // self.every + 1) * self.every
        assert self.cron is not None
        start = dt.datetime.fromtimestamp(t, zoneinfo.ZoneInfo(self.timezone))
        nxt: float = croniter(self.cron, start).get_next(float)
        return nxt

    def latest_at_or_before(self, t: float) -> float | None:
        """The last tick at or before ``t``, or None when there is none in sight."""
        if self.every is not None:
            return (t // self.every) * self.every
        assert self.cron is not None
        start = dt.datetime.fromtimestamp(t, zoneinfo.ZoneInfo(self.timezone))
        it = croniter(self.cron, start)
        prev: float = it.get_prev(float)
        return t if self.next_after(prev) == t else prev

    def due(self, last: float | None, now: float) -> list[float]:
        """The ticks to run now, after ``last`` (the latest tick already taken; None: the
        schedule is new, and starts with the next tick)."""
        latest = self.latest_at_or_before(now)
        if latest is None or last is None or latest <= last:
            return []
        if self.missed == "skip":  # the current tick only, as Airflow's catchup=False
            return [latest]
        ticks: list[float] = []
        t = last
        while len(ticks) < MAX_CATCH_UP:
            t = self.next_after(t)
            if t > now:
                break
            ticks.append(t)
        return ticks

    def request_id(self, tick: float) -> str:
        """The run of tick ``tick``: ``<id>:<UTC time>``, the same on every worker."""
        return f"{self.id}:{dt.datetime.fromtimestamp(tick, dt.UTC):%Y%m%dT%H%M%SZ}"


def compile_schedule(spec: ScheduleSpec, workflow: str, source: str) -> Schedule:
    """Check a workflow's ``schedule``; every problem names its JSON path."""

    def err(message: str, at: str) -> WorkflowError:
        return WorkflowError(message, source=source, path=f"$.schedule{at}")

    if (spec.cron is None) == (spec.every is None):
        raise err("expected exactly one of 'cron' (an expression) or 'every' (seconds)", "")
    sid = spec.id if spec.id is not None else workflow
    if not _ID.fullmatch(sid):
        where = ".id" if spec.id is not None else ""
        raise err(
            f"schedule id {sid!r}: expected 1-101 characters from A-Z a-z 0-9 . _ ~ - "
            "(it names each tick's run; set 'id' when the workflow's name has others)",
            where,
        )
    if spec.every is not None and not (1 <= spec.every <= 366 * 86400):
        raise err("expected 1 second to a year", ".every")
    try:
        zoneinfo.ZoneInfo(spec.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise err(f"unknown time zone {spec.timezone!r} (an IANA name: UTC, Europe/Amsterdam)",
                  ".timezone") from None  # fmt: skip
    if spec.cron is not None and not croniter.is_valid(spec.cron):
        raise err(
            f"invalid cron expression {spec.cron!r} (5 fields: minute hour day month weekday)",
            ".cron",
        )
    return Schedule(sid, spec.cron, spec.every, spec.timezone, spec.missed, dict(spec.inputs))
