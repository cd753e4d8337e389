"""A resume in the process that last drove the run reads the records its head points at
*with* the head (:mod:`blokrun.persistence.hints`): one round trip instead of two. The
hint picks keys; it must never decide anything. Attacked here: the run moved on by another
process after the hint was taken, deleted by gc and started again under its id (same or
another definition, reaching the very sequence number the hint names), a record of the old
run copied over the new one's at the hinted key, a target that lost the run's head, a target
that lags behind. Every case is judged against a runner that never saw the run (no hint):
both must plan the same resume, and the resume must run each step once.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import pytest

from blokrun import Runner
from blokrun.config import DatasourceSettings
from blokrun.datasources import build_datasource
from blokrun.persistence.hints import RecentRuns, Spot
from blokrun.persistence.keys import checkpoint_key, head_key
from tests.integration import wfnodes
from tests.regressions.hinting import fail_at, resume_failing_at, seen

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.conftest import ServerPool

NODE = "tests.integration.wfnodes"


def flow(
    n: int = 10, name: str = "hinted", targets: tuple[str, ...] = ("default",)
) -> dict[str, Any]:
    return {
        "name": name,
        "persistence": {"targets": list(targets)},
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i}} for i in range(1, n + 1)
        ],
    }


@pytest.fixture(params=["redis", "postgresql", "filesystem"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> DatasourceSettings:
    if request.param == "filesystem":
        return DatasourceSettings(
            name="default", type="filesystem", path=str(tmp_path / "fs"), fsync=False
        )
    pool: ServerPool = request.getfixturevalue("server_pool")
    return pool.get(request.param).settings("default", prefix=f"hint-{uuid4().hex[:8]}/")


class Pair:
    """Two runners on one store, as two processes would be: each keeps its own hints."""

    def __init__(self, here: Runner, there: Runner) -> None:
        self.here = here
        self.there = there


@pytest.fixture
async def pair(settings: DatasourceSettings) -> AsyncIterator[Pair]:
    wfnodes.reset()
    async with (
        Runner([build_datasource(settings)], lease_ttl=5.0) as here,
        Runner([build_datasource(settings)], lease_ttl=5.0) as there,
    ):
        yield Pair(here, there)
    wfnodes.reset()


async def same_plan_as_a_stranger(pair: Pair, rid: str, settings: DatasourceSettings) -> None:
    """The hinted runner finds and plans exactly what a runner that never saw ``rid`` does."""
    assert pair.here.store.locator.recent.get(rid) is not None, "the case needs a hint"
    async with Runner([build_datasource(settings)], lease_ttl=5.0) as stranger:
        assert len(stranger.store.locator.recent) == 0
        mine = await pair.here.store.planner.find(rid, None)
        theirs = await stranger.store.planner.find(rid, None)
        assert seen(mine) == seen(theirs)
        assert await pair.here.plan_resume(rid) == await stranger.plan_resume(rid)


def completed_once(rid: str) -> Counter[str]:
    return Counter(step for r, step in wfnodes.CALLS if r == rid)


async def test_a_run_moved_on_elsewhere_resumes_from_where_it_stands_now(
    pair: Pair, settings: DatasourceSettings
) -> None:
    """The hint says #3; another process resumed the run to #15 and it failed again (past
    the records the hint reads early)."""
    await fail_at(pair.here, "s4", flow(20), "moved")
    await resume_failing_at(pair.there, "s16", "moved")
    await same_plan_as_a_stranger(pair, "moved", settings)
    result = await pair.here.resume("moved")
    assert result.steps_run == tuple(f"s{i}" for i in range(16, 21))
    assert result.vars["total"] == sum(range(1, 21))
    calls = completed_once("moved")
    assert calls == Counter({f"s{i}": 2 if i in (4, 16) else 1 for i in range(1, 21)})


@pytest.mark.parametrize("definition", ["the same definition", "another definition"])
async def test_a_new_run_under_the_id_at_the_hinted_sequence_is_not_mixed_with_the_old(
    pair: Pair, settings: DatasourceSettings, definition: str
) -> None:
    """gc deleted the run the hint is about; a new run under its id failed at the same
    step, so its head names the very checkpoint key the hint does (or another
    definition's). The new run's state is what resumes, from its own inputs."""
    await fail_at(pair.here, "s6", flow(), "again")
    report = await pair.there.collect_garbage(failed_older_than=0.0)
    assert [r.request_id for r in report.runs] == ["again"]
    wf = flow() if definition == "the same definition" else flow(name="other")
    await fail_at(pair.there, "s6", wf, "again", inputs={"total": 1000})
    await same_plan_as_a_stranger(pair, "again", settings)
    result = await pair.here.resume("again")
    assert result.steps_run == ("s6", "s7", "s8", "s9", "s10")
    assert result.vars["total"] == 1000 + sum(range(1, 11))


async def test_an_old_record_copied_over_the_hinted_key_is_not_taken(
    pair: Pair, settings: DatasourceSettings
) -> None:
    """A record of the collected run, copied back over the new run's checkpoint at the
    hinted key (same key, same sequence, another life): refused as it is without the
    hint, and the resume steps back to the new run's previous checkpoint."""
    await fail_at(pair.here, "s6", flow(), "copied")
    ds = pair.here.datasources["default"]
    key = checkpoint_key("copied", 1, 5)
    old = await ds.load(key)
    assert old is not None
    await pair.there.collect_garbage(failed_older_than=0.0)
    await fail_at(pair.there, "s6", flow(), "copied", inputs={"total": 1000})
    await ds.save(key, old)  # same key, the old life's bytes
    await same_plan_as_a_stranger(pair, "copied", settings)
    result = await pair.here.resume("copied")
    assert result.steps_run == ("s5", "s6", "s7", "s8", "s9", "s10")
    assert result.vars["total"] == 1000 + sum(range(1, 11))


async def test_a_target_that_lost_the_head_is_read_as_without_a_hint(
    pair: Pair, settings: DatasourceSettings
) -> None:
    await fail_at(pair.here, "s6", flow(), "headless")
    await pair.here.datasources["default"].delete(head_key("headless"))
    await same_plan_as_a_stranger(pair, "headless", settings)
    result = await pair.here.resume("headless")
    assert result.steps_run == ("s6", "s7", "s8", "s9", "s10")
    assert result.vars["total"] == sum(range(1, 11))


async def test_a_lagging_target_is_repaired_as_without_a_hint(tmp_path: Path) -> None:
    """Two targets; ``b`` lost the run's last checkpoints and its head fell back. The
    hint matches ``a``'s head only: ``b`` is read the slow way, and repaired."""
    wfnodes.reset()
    sets = [
        DatasourceSettings(name=n, type="filesystem", path=str(tmp_path / n), fsync=False)
        for n in ("a", "b")
    ]
    wf = flow(targets=("a", "b"))
    async with Runner([build_datasource(s) for s in sets], lease_ttl=5.0) as here:
        await fail_at(here, "s3", wf, "lag")
        b = here.datasources["b"]
        early_head = await b.load(head_key("lag"))
        assert early_head is not None
        await fail_at(here, "s7", wf, "lag-2")  # another run: the hint map holds two
        await resume_failing_at(here, "s6", "lag")  # the run goes on to #5 on both
        await b.save(head_key("lag"), early_head)  # b's head falls back to #2
        for seq in (3, 4, 5):
            await b.delete(checkpoint_key("lag", 1, seq))
        async with Runner([build_datasource(s) for s in sets], lease_ttl=5.0) as stranger:
            assert await here.plan_resume("lag") == await stranger.plan_resume("lag")
        result = await here.resume("lag")
        assert result.steps_run == ("s6", "s7", "s8", "s9", "s10")
        assert result.vars["total"] == sum(range(1, 11))
        info = await here.inspect("lag")
        assert not info.disagreement, info.disagreement
    wfnodes.reset()


def test_hints_are_bounded_and_the_newest_note_wins() -> None:
    recent = RecentRuns(most=3)
    for i in range(5):
        recent.note(f"r{i}", Spot(1, i, "h"))
    assert len(recent) == 3
    assert recent.get("r0") is None and recent.get("r1") is None
    recent.note("r2", Spot(2, 9, "h2"))  # noted again: the newest now
    recent.note("r5", Spot(1, 1, "h"))
    assert recent.get("r3") is None  # the oldest went, not r2
    assert recent.get("r2") == Spot(2, 9, "h2")
    assert len(recent) == 3


async def test_only_runs_that_did_not_complete_keep_a_hint(pair: Pair) -> None:
    """Thousands of completed runs leave nothing behind; a failed run's hint goes when a
    resume completes it."""
    recent = pair.here.store.locator.recent
    for i in range(20):
        await pair.here.run(flow(3), request_id=f"done-{i}")
    assert len(recent) == 0
    await fail_at(pair.here, "s2", flow(3), "once")
    assert recent.get("once") == Spot(1, 1, pair.here.load(flow(3)).definition_hash)
    await pair.here.resume("once")
    assert recent.get("once") is None and len(recent) == 0


async def test_a_hint_costs_nothing_when_the_run_is_new(settings: DatasourceSettings) -> None:
    """A new run under an id this process collected: the existence check reads the head
    and first run record, as without a hint -- a record left at a hinted key does not make
    the id look taken."""
    wfnodes.reset()
    async with Runner([build_datasource(settings)], lease_ttl=None) as runner:
        await fail_at(runner, "s3", flow(), "free")
        ds = runner.datasources["default"]
        key = checkpoint_key("free", 1, 2)  # in the hinted window
        left = await ds.load(key)
        assert left is not None
        await runner.collect_garbage(failed_older_than=0.0)
        await ds.save(key, left)  # a leftover gc missed, or a copy put there
        assert runner.store.locator.recent.get("free") is not None
        result = await runner.run(flow(), request_id="free")
        assert result.status == "completed" and not result.resumed
    wfnodes.reset()
