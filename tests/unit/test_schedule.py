"""Schedule arithmetic: cron (in a time zone) and intervals, missed ticks, tick ids, and
mistakes in a workflow's schedule caught at load with their JSON path."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blokrun import WorkflowError
from blokrun.execution.workflows import load_workflow
from blokrun.spec.model import ScheduleSpec
from blokrun.spec.schedule import MAX_CATCH_UP, compile_schedule


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def test_cron_ticks_in_a_time_zone() -> None:
    s = compile_schedule(ScheduleSpec(cron="0 9 * * 1-5", timezone="Europe/Amsterdam"), "w", "f")
    friday_evening = at("2027-01-15T18:00:00+00:00")
    # the next weekday 09:00 in Amsterdam (winter: UTC+1) is Monday 08:00 UTC
    assert s.next_after(friday_evening) == at("2027-01-18T08:00:00+00:00")
    assert s.latest_at_or_before(friday_evening) == at("2027-01-15T08:00:00+00:00")
    assert s.latest_at_or_before(at("2027-01-15T08:00:00+00:00")) == at("2027-01-15T08:00:00+00:00")
    assert s.request_id(at("2027-01-18T08:00:00+00:00")) == "w:20270118T080000Z"


def test_missed_ticks_skip_or_catch_up() -> None:
    now = at("2027-01-01T12:00:30+00:00")
    last = at("2027-01-01T11:00:00+00:00")
    skip = compile_schedule(ScheduleSpec(cron="*/10 * * * *"), "w", "f")
    catch = compile_schedule(ScheduleSpec(cron="*/10 * * * *", missed="catch-up"), "w", "f")
    assert skip.due(last, now) == [at("2027-01-01T12:00:00+00:00")]
    assert catch.due(last, now) == [
        at(f"2027-01-01T11:{m}:00+00:00") for m in (10, 20, 30, 40, 50)
    ] + [at("2027-01-01T12:00:00+00:00")]
    assert skip.due(at("2027-01-01T12:00:00+00:00"), now) == []  # taken already
    assert skip.due(None, now) == []  # a new schedule waits for its next tick
    years = compile_schedule(ScheduleSpec(every=1, missed="catch-up"), "w", "f")
    assert len(years.due(0.0, 10_000_000.0)) == MAX_CATCH_UP  # bounded


@settings(max_examples=200, deadline=None)
@given(
    every=st.integers(1, 7200),
    last=st.floats(1e9, 2e9, allow_nan=False),
    gap=st.floats(0, 50_000, allow_nan=False),
)
def test_property_catch_up_ticks_are_every_tick_between_last_and_now(
    every: int, last: float, gap: float
) -> None:
    s = compile_schedule(ScheduleSpec(every=every, missed="catch-up"), "w", "f")
    last = s.latest_at_or_before(last) or last
    now = last + gap
    ticks = s.due(last, now)
    assert all(last < t <= now for t in ticks)
    assert all(b - a == every for a, b in itertools.pairwise(ticks))
    skipped = compile_schedule(ScheduleSpec(every=every), "w", "f").due(last, now)
    if len(ticks) < MAX_CATCH_UP:
        assert s.next_after(ticks[-1] if ticks else last) > now
        assert skipped == ticks[-1:]  # skip runs the latest of them only
    else:  # the oldest MAX_CATCH_UP now, the rest in the next rounds
        assert s.due(ticks[-1], now)[0] == ticks[-1] + every
    assert len({s.request_id(t) for t in ticks}) == len(ticks)  # one run per tick


@pytest.mark.parametrize(
    ("schedule", "name", "at_", "message"),
    [
        ({}, "w", "$.schedule", "exactly one of 'cron'"),
        ({"cron": "* * * * *", "every": 5}, "w", "$.schedule", "exactly one of 'cron'"),
        ({"cron": "61 * * * *"}, "w", "$.schedule.cron", "invalid cron expression"),
        ({"every": 0.5}, "w", "$.schedule.every", "1 second to a year"),
        (
            {"every": 60, "timezone": "Mars/Olympus"},
            "w",
            "$.schedule.timezone",
            "unknown time zone",
        ),
        ({"every": 60, "missed": "sometimes"}, "w", "$.schedule.missed", "invalid enum value"),
        ({"every": 60}, "nightly report", "$.schedule", "set 'id'"),
        ({"every": 60, "id": "a/b"}, "w", "$.schedule.id", "schedule id 'a/b'"),
        ({"every": 60, "when": 1}, "w", "$.schedule.when", "unknown field 'when'"),
    ],
)
def test_schedule_mistakes_are_caught_at_load(
    schedule: dict[str, Any], name: str, at_: str, message: str
) -> None:
    doc = {"name": name, "schedule": schedule, "steps": [{"name": "a", "node": "echo"}]}
    with pytest.raises(WorkflowError) as info:
        load_workflow(doc)
    assert info.value.path == at_, str(info.value)
    assert message in str(info.value), str(info.value)
