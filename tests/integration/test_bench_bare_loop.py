"""``make bench`` takes a checkpointed step apart with a bare loop (``benchmarks/bare.py``):
blokrun's records written straight onto the driver, fenced and not. Its figures only mean
something if those are the records blokrun writes and the fenced write really is fenced --
checked here on the real servers -- and the goals quote them (``benchmarks/goals.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest

from benchmarks import bare, goals
from benchmarks.harness import Row
from benchmarks.peers.common import VALUE
from blokrun import Runner
from blokrun.persistence.keys import checkpoint_key, head_key, lease_key
from blokrun.persistence.records import (
    AliasRecord,
    CheckpointRecord,
    HeadRecord,
    decode_alias,
    decode_record,
)
from tests.conftest import ServerPool


@pytest.fixture(params=["redis", "postgresql"])
async def runner(request: pytest.FixtureRequest, server_pool: ServerPool) -> AsyncIterator[Runner]:
    server = server_pool.get(request.param)
    settings = server.settings(request.param, prefix=f"bare-{uuid4().hex[:6]}/")
    async with Runner([settings]) as r:
        yield r


@pytest.mark.parametrize("fenced", [True, False])
async def test_the_bare_loop_writes_the_records_blokrun_reads(runner: Runner, fenced: bool) -> None:
    driver = next(iter(runner.datasources))
    ds = runner.datasources[driver]
    rid = uuid4().hex
    assert await bare.bare_run(runner, driver, 10, fenced=fenced, request_id=rid) > 0
    env = runner.envelope
    head = decode_record(
        await ds.load(head_key(rid)) or b"", HeadRecord, envelope=env, bind=head_key(rid)
    )
    assert (head.status, head.seq, head.last_done) == ("completed", 10, "s9")
    key = checkpoint_key(rid, 1, 10)
    assert head.key == key
    record = decode_record(await ds.load(key) or b"", CheckpointRecord, envelope=env, bind=key)
    assert record.vars == {f"k{i}": VALUE for i in range(10)}
    assert record.done == [f"s{i}" for i in range(10)]
    alias = f"{rid}-s9"
    pointer = decode_alias(await ds.load(alias) or b"", datasource=None, key=alias, envelope=env)
    assert pointer == AliasRecord(request_id=rid, incarnation=1, seq=10, step="s9", key=key)


async def test_the_fenced_bare_write_is_refused_once_its_lease_moved_on(runner: Runner) -> None:
    """The fenced variant pays for a real fence: a lease taken over makes it fail."""
    driver = next(iter(runner.datasources))
    ds = runner.datasources[driver]
    rid = uuid4().hex
    inner: Any = ds.store

    class TakenOver:
        """The driver, whose lease another owner takes before the second step's write."""

        calls = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        async def save_batch_fenced(self, entries: Any, lease: str, token: int) -> bool:
            TakenOver.calls += 1
            if TakenOver.calls == 2:  # deleted (as if expired), then taken anew
                assert await ds.delete_lease(lease_key(rid))
                await ds.acquire_lease(lease_key(rid), "someone else", 30.0)
            held: bool = await inner.save_batch_fenced(entries, lease, token)
            return held

    ds.store = TakenOver()
    try:
        with pytest.raises(AssertionError, match="fence no longer holds"):
            await bare.bare_run(runner, driver, 3, fenced=True, request_id=rid)
    finally:
        ds.store = inner
    assert TakenOver.calls == 2
    head = decode_record(
        await ds.load(head_key(rid)) or b"", HeadRecord, envelope=runner.envelope,
        bind=head_key(rid),
    )  # fmt: skip
    assert head.seq == 1  # the first step's write landed, the second's did not


def test_a_missed_per_step_goal_quotes_the_bare_loops_of_the_same_run() -> None:
    section = "s"
    rows = {
        r.name: r
        for r in (
            Row(section, "redis: floor per step, N=10", 100e-6, "s"),
            Row(section, "redis: blokrun per step, N=10", 250e-6, "s"),
            Row(section, "redis: bare loop, fenced, N=10", 150e-6, "s"),
            Row(section, "redis: bare loop, unfenced, N=10", 95e-6, "s"),
        )
    }
    (goal,) = [g for g in goals.GOALS if g.text.startswith("redis: per step at N=10 ")]
    met, _ = goal.judge(rows) or (None, None)
    assert met is False
    why = goal.why(rows)
    assert "this run, N=10:" in why and "1.50x the floor (over the bar by itself)" in why
    assert "unfenced 0.95x" in why
    del rows["redis: bare loop, unfenced, N=10"]  # not measured: the cause alone
    assert goal.why(rows) == goal.cause
