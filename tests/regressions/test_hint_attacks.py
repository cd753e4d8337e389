"""Hostile review of the one-read resume hint (commit 2d9d0c2, blokrun/persistence/hints.py).

The claim under attack: a hint (where this process last left a run) only chooses keys to
read early, with the head; it never changes what a look at a run finds, plans or resumes,
compared with a runner that never saw the run. Every case below builds a hint (or plants
a wrong one), changes the run behind the hint's back, and judges the hinted runner against
a stranger on the same store: ``planner.find``, ``plan_resume`` (or the very same error),
and the resume's result (vars, steps run, every step run once).

Also attacked: the single-target path of ``Locator.locate`` that no longer spawns a task.
"""

from __future__ import annotations

from collections import Counter
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import pytest

from blokrun import Runner, StepFailed
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource
from blokrun.persistence.envelope import Envelope
from blokrun.persistence.hints import Spot
from blokrun.persistence.keys import checkpoint_key, definition_key, head_key
from tests.integration import wfnodes
from tests.regressions.hinting import fail_at, resume_failing_at, seen

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from tests.conftest import ServerPool

NODE = "tests.integration.wfnodes"


def flow(
    n: int = 10,
    name: str = "attacked",
    targets: tuple[str, ...] = ("default",),
    bump: int = 0,
) -> dict[str, Any]:
    return {
        "name": name,
        "persistence": {"targets": list(targets)},
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i + bump}}
            for i in range(1, n + 1)
        ],
    }


def mapped(n: int) -> dict[str, Any]:
    return {
        "name": "mapped-hint",
        "persistence": {"targets": ["default"]},
        "steps": [
            {"name": "s1", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "make", "node": "set", "inputs": {"xs": list(range(n))}},
            {
                "name": "square",
                "node": f"{NODE}:map_item",
                "map": {"items": "${ctx.vars.xs}", "concurrency": 1},
                "inputs": {"x": "${ctx.item}"},
            },
            {"name": "s2", "node": f"{NODE}:add", "inputs": {"n": 2}},
        ],
    }


def approval() -> dict[str, Any]:
    return {
        "name": "approval-hint",
        "persistence": {"targets": ["default"]},
        "steps": [
            {"name": "s1", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "s2", "node": f"{NODE}:add", "inputs": {"n": 2}},
            {"name": "ask", "node": "await-input", "inputs": {"prompt": "ok?"}},
            {"name": "s3", "node": f"{NODE}:add", "inputs": {"n": 3}},
        ],
    }


def napper(seconds: float) -> dict[str, Any]:
    return {
        "name": "napper-hint",
        "persistence": {"targets": ["default"]},
        "steps": [
            {"name": "s1", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "s2", "node": f"{NODE}:add", "inputs": {"n": 2}},
            {"name": "nap", "node": "sleep", "inputs": {"seconds": seconds}},
            {"name": "s3", "node": f"{NODE}:add", "inputs": {"n": 3}},
        ],
    }


def fs_settings(root: Path, name: str = "default") -> DatasourceSettings:
    return DatasourceSettings(name=name, type="filesystem", path=str(root / name), fsync=False)


@pytest.fixture(params=["redis", "postgresql", "filesystem"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> DatasourceSettings:
    if request.param == "filesystem":
        return fs_settings(tmp_path)
    pool: ServerPool = request.getfixturevalue("server_pool")
    return pool.get(request.param).settings("default", prefix=f"atk-{uuid4().hex[:8]}/")


@pytest.fixture(autouse=True)
def _clean_nodes() -> Any:
    wfnodes.reset()
    yield
    wfnodes.reset()


def key(byte: int) -> bytes:
    return bytes([byte]) * 32


def envelope(active: str, **keys: int) -> Envelope:
    return Envelope(keys={k: key(v) for k, v in keys.items()}, active_key=active)


@asynccontextmanager
async def runner_on(
    sets: Sequence[DatasourceSettings], env: Envelope | None = None, **kw: Any
) -> AsyncIterator[Runner]:
    kw.setdefault("lease_ttl", 5.0)
    async with Runner([build_datasource(s) for s in sets], envelope=env, **kw) as runner:
        yield runner


async def _outcome(call: Any) -> Any:
    """What ``call()`` returns, or the type and message of what it raises."""
    try:
        return ("ok", await call())
    except Exception as exc:  # compared, not handled
        return ("raised", type(exc).__name__, str(exc))


async def same_as_stranger(
    here: Runner,
    rid: str,
    sets: Sequence[DatasourceSettings],
    env: Envelope | None = None,
    *,
    need_hint: bool = True,
    **plan: Any,
) -> Any:
    """The hinted runner finds and plans exactly what a runner that never saw ``rid`` does.
    Returns the (common) plan outcome."""
    if need_hint:
        assert here.store.locator.recent.get(rid) is not None, "the case needs a hint"
    async with runner_on(sets, env) as stranger:
        assert len(stranger.store.locator.recent) == 0
        mine = await _outcome(lambda: here.store.planner.find(rid, None))
        theirs = await _outcome(lambda: stranger.store.planner.find(rid, None))
        if mine[0] == "ok" and theirs[0] == "ok":
            assert seen(mine[1], detail=True) == seen(theirs[1], detail=True)
        else:
            assert mine == theirs
        mine_plan = await _outcome(lambda: here.plan_resume(rid, **plan))
        theirs_plan = await _outcome(lambda: stranger.plan_resume(rid, **plan))
        assert mine_plan == theirs_plan
        return mine_plan


async def hint_matches(runner: Runner, rid: str) -> bool:
    """Whether the look reads its first probe window early (the hint names the keys the
    run's head does now)."""
    spot = runner.store.locator.recent.get(rid)
    head = await runner.store.head(rid)
    if spot is None or head is None:
        return False
    now = (head.incarnation, max(head.seq, 1), head.definition_hash)
    return now == (spot.incarnation, max(spot.seq, 1), spot.definition_hash)


def calls(rid: str) -> Counter[str]:
    return Counter(step for r, step in wfnodes.CALLS if r == rid)


# -- encryption ------------------------------------------------------------------------


async def test_an_encrypted_run_moved_on_under_a_rotated_key(
    settings: DatasourceSettings,
) -> None:
    """The hint is taken under key k1; another process (k2 active, k1 kept for reading)
    moves the run on past the window. The hinted runner holds k1 only: it must refuse the
    run exactly as a stranger holding k1 only does (the k2 records cannot be opened), and
    a runner with both keys resumes as a stranger with both keys does."""
    old = envelope("k1", k1=1)
    rotated = envelope("k2", k1=1, k2=3)
    async with runner_on([settings], old) as here, runner_on([settings], rotated) as there:
        await fail_at(here, "s3", flow(20), "enc")
        assert here.store.locator.recent.get("enc") is not None
        await resume_failing_at(there, "s15", "enc")
        outcome = await same_as_stranger(here, "enc", [settings], old)
        assert outcome[0] == "raised" and "k2" in outcome[2], outcome
        # both keys: the rotated runner's own hint (#14) vs a stranger with both keys
        plan = await same_as_stranger(there, "enc", [settings], rotated)
        assert plan[0] == "ok" and plan[1].run[0] == "s15"
        result = await there.resume("enc")
    assert result.vars["total"] == sum(range(1, 21))
    assert result.steps_run == tuple(f"s{i}" for i in range(15, 21))
    assert calls("enc") == Counter({f"s{i}": 2 if i in (3, 15) else 1 for i in range(1, 21)})


async def test_a_hint_under_encryption_where_the_head_names_it_exactly(
    settings: DatasourceSettings,
) -> None:
    """The hint matches the head (early records used): same plan as a stranger; the early
    records open under the key they were sealed for (bound to their key)."""
    env = envelope("k1", k1=5)
    async with runner_on([settings], env) as here:
        await fail_at(here, "s7", flow(), "enc-same")
        assert await hint_matches(here, "enc-same")
        await same_as_stranger(here, "enc-same", [settings], env)
        result = await here.resume("enc-same")
    assert result.steps_run == ("s7", "s8", "s9", "s10")
    assert result.vars["total"] == sum(range(1, 11))


async def test_a_clear_hint_then_an_encrypted_restart(settings: DatasourceSettings) -> None:
    """Hint taken in clear; another process restarts the id encrypted (incarnation 2): a
    runner without the key refuses as a stranger without the key does."""
    env = envelope("k1", k1=9)
    async with runner_on([settings]) as here, runner_on([settings], env) as there:
        await fail_at(here, "s4", flow(), "enc-restart")
        await fail_at(there, "s4", flow(), "enc-restart", restart=True)
        outcome = await same_as_stranger(here, "enc-restart", [settings])
        assert outcome[0] == "raised", outcome
        await same_as_stranger(there, "enc-restart", [settings], env)


# -- time travel, fork, restart, definitions -----------------------------------------


async def test_time_travel_after_the_hint(settings: DatasourceSettings) -> None:
    """The run failed at s8 (hint #7); a resume from s3 failed at s5 in this very process
    (the hint moves), then again elsewhere from s2 failing at s9. Plans equal a stranger's,
    also for a time travel planned now."""
    async with runner_on([settings]) as here, runner_on([settings]) as there:
        await fail_at(here, "s8", flow(), "tt")
        await resume_failing_at(here, "s5", "tt", from_step="s3")
        assert await hint_matches(here, "tt")
        await same_as_stranger(here, "tt", [settings])
        await same_as_stranger(here, "tt", [settings], from_step="s2")
        await resume_failing_at(there, "s9", "tt", from_step="s2")
        await same_as_stranger(here, "tt", [settings])
        await same_as_stranger(here, "tt", [settings], from_step="s4")
        result = await here.resume("tt")
    assert result.steps_run == ("s9", "s10")
    assert result.vars["total"] == sum(range(1, 11))


async def test_a_fork_of_a_hinted_run_and_a_hinted_fork(settings: DatasourceSettings) -> None:
    async with runner_on([settings]) as here:
        await fail_at(here, "s6", flow(), "src")
        wfnodes.FAIL_AT.add("s8")
        try:
            with pytest.raises(StepFailed):
                await here.fork("src", new_id="forked", from_step="s3", set_vars={"total": 100})
        finally:
            wfnodes.FAIL_AT.discard("s8")
        assert await hint_matches(here, "src") and await hint_matches(here, "forked")
        await same_as_stranger(here, "src", [settings])
        await same_as_stranger(here, "forked", [settings])
        result = await here.resume("forked")
        assert result.steps_run == ("s8", "s9", "s10")
        assert result.vars["total"] == 100 + sum(range(3, 11))
        result = await here.resume("src")
        assert result.vars["total"] == sum(range(1, 11))


async def test_a_restart_elsewhere_at_the_very_sequence(settings: DatasourceSettings) -> None:
    """Incarnation 2 started elsewhere (restart=True) failing at the same step: the head
    names the hinted sequence and definition but another incarnation."""
    async with runner_on([settings]) as here, runner_on([settings]) as there:
        await fail_at(here, "s6", flow(), "inc")
        await fail_at(there, "s6", flow(), "inc", inputs={"total": 1000}, restart=True)
        assert not await hint_matches(here, "inc")
        await same_as_stranger(here, "inc", [settings])
        result = await here.resume("inc")
    assert result.steps_run == ("s6", "s7", "s8", "s9", "s10")
    assert result.vars["total"] == 1000 + sum(range(1, 11))


async def test_a_restart_here_then_the_old_incarnation_head_is_put_back(
    settings: DatasourceSettings,
) -> None:
    """The hint names incarnation 2 at #5; the head is put back to incarnation 1's (a
    restored backup): a look follows the head, as a stranger's does."""
    async with runner_on([settings]) as here:
        await fail_at(here, "s6", flow(), "back")
        ds = here.datasources["default"]
        first_head = await ds.load(head_key("back"))
        assert first_head is not None
        await fail_at(here, "s6", flow(), "back", inputs={"total": 1000}, restart=True)
        assert here.store.locator.recent.get("back").incarnation == 2  # type: ignore[union-attr]
        await ds.save(head_key("back"), first_head)
        await same_as_stranger(here, "back", [settings])


async def test_a_resume_with_another_definition_forced(settings: DatasourceSettings) -> None:
    """resume(workflow=other, force=True) fails again: its head names the other definition
    (the hint too). The plan with and without a given workflow equals a stranger's."""
    other = flow(bump=100)
    async with runner_on([settings]) as here, runner_on([settings]) as there:
        await fail_at(here, "s4", flow(), "redef")
        await resume_failing_at(here, "s7", "redef", workflow=other, force=True)
        assert await hint_matches(here, "redef")
        await same_as_stranger(here, "redef", [settings])
        await same_as_stranger(here, "redef", [settings], workflow=flow(), force=True)
        await same_as_stranger(here, "redef", [settings], workflow=flow())
        # moved on elsewhere with the original definition again
        await resume_failing_at(there, "s9", "redef", workflow=flow(), force=True)
        await same_as_stranger(here, "redef", [settings])
        result = await here.resume("redef")
    assert result.steps_run == ("s9", "s10")
    assert result.vars["total"] == 1 + 2 + 3 + 104 + 105 + 106 + 7 + 8 + 9 + 10


async def test_a_resume_refused_before_its_first_step_leaves_plans_alone(
    settings: DatasourceSettings,
) -> None:
    """A resume refused while planning (another definition, no force) and a resume that
    fails on its very first step: the hint stays truthful."""
    async with runner_on([settings]) as here:
        await fail_at(here, "s5", flow(), "refused")
        spot = here.store.locator.recent.get("refused")
        outcome = await _outcome(lambda: here.resume("refused", workflow=flow(bump=1)))
        assert outcome[0] == "raised"
        assert here.store.locator.recent.get("refused") == spot
        await resume_failing_at(here, "s5", "refused")
        assert await hint_matches(here, "refused")
        await same_as_stranger(here, "refused", [settings])
        await same_as_stranger(here, "refused", [settings], workflow=flow(bump=1))
        result = await here.resume("refused")
    assert result.steps_run == ("s5", "s6", "s7", "s8", "s9", "s10")
    assert calls("refused") == Counter({f"s{i}": 3 if i == 5 else 1 for i in range(1, 11)})


# -- suspended, sleeping, maps --------------------------------------------------------


async def test_a_suspended_run_is_hinted_and_planned_as_by_a_stranger(
    settings: DatasourceSettings,
) -> None:
    async with runner_on([settings]) as here:
        first = await here.run(approval(), request_id="sus")
        assert first.status == "suspended" and first.token is not None
        assert await hint_matches(here, "sus")
        await same_as_stranger(here, "sus", [settings])
        done = await here.resume("sus", input={"yes": 1}, token=first.token)
    assert done.status == "completed" and done.vars["total"] == 6
    assert calls("sus") == Counter({"s1": 1, "s2": 1, "s3": 1})
    assert here.store.locator.recent.get("sus") is None


async def test_a_sleeping_run_is_hinted_and_planned_as_by_a_stranger(
    settings: DatasourceSettings,
) -> None:
    async with runner_on([settings]) as here:
        first = await here.run(napper(0.3), request_id="nap", park_timers_after=0.0)
        assert first.status == "sleeping", first.status
        assert await hint_matches(here, "nap")
        await same_as_stranger(here, "nap", [settings])
        done = await here.resume("nap")
    assert done.status == "completed" and done.vars["total"] == 6
    assert calls("nap") == Counter({"s1": 1, "s2": 1, "s3": 1})


async def test_a_map_failing_midway_resumes_each_item_once(
    settings: DatasourceSettings,
) -> None:
    async with runner_on([settings]) as here:
        wfnodes.FAIL_AT.add("item:6")
        try:
            with pytest.raises(StepFailed):
                await here.run(mapped(10), request_id="map")
        finally:
            wfnodes.FAIL_AT.discard("item:6")
        assert await hint_matches(here, "map")
        await same_as_stranger(here, "map", [settings])
        done = await here.resume("map")
    assert done.status == "completed"
    assert done.vars["square"]["results"] is not None
    items = Counter(step for r, step in wfnodes.CALLS if r == "map" and "[" in step)
    assert items == Counter({f"square[{i}]": 2 if i == 6 else 1 for i in range(10)})
    assert calls("map")["s1"] == 1 and calls("map")["s2"] == 1


# -- the probe window ------------------------------------------------------------------


async def test_the_head_names_the_hint_exactly_but_records_run_far_beyond_it(
    settings: DatasourceSettings,
) -> None:
    """The early window is used (the head is put back to exactly what the hint names) and
    it is full: the roll-forward must go on probing past it, as a stranger's does."""
    async with runner_on([settings]) as here, runner_on([settings]) as there:
        await fail_at(here, "s4", flow(30), "far")
        ds = here.datasources["default"]
        hinted_head = await ds.load(head_key("far"))
        assert hinted_head is not None
        await resume_failing_at(there, "s27", "far")  # checkpoints #4..#26 beyond the hint
        await ds.save(head_key("far"), hinted_head)  # the head lags: names #3 again
        assert await hint_matches(here, "far")
        plan = await same_as_stranger(here, "far", [settings])
        assert plan[0] == "ok" and plan[1].run[0] == "s27", plan
        result = await here.resume("far")
    assert result.steps_run == tuple(f"s{i}" for i in range(27, 31))
    assert result.vars["total"] == sum(range(1, 31))
    assert calls("far") == Counter({f"s{i}": 2 if i in (4, 27) else 1 for i in range(1, 31)})


async def test_a_hole_inside_the_early_window(settings: DatasourceSettings) -> None:
    """The hint matches; a record inside the window read early is deleted before the look
    (after the hint was taken): the early read sees the hole as a later read would."""
    async with runner_on([settings]) as here, runner_on([settings]) as there:
        await fail_at(here, "s3", flow(20), "hole")
        ds = here.datasources["default"]
        hinted_head = await ds.load(head_key("hole"))
        assert hinted_head is not None
        await resume_failing_at(there, "s12", "hole")
        await ds.save(head_key("hole"), hinted_head)
        await ds.delete(checkpoint_key("hole", 1, 6))
        assert await hint_matches(here, "hole")
        await same_as_stranger(here, "hole", [settings])
        result = await here.resume("hole")
    assert result.vars["total"] == sum(range(1, 21))


# -- planted hints ------------------------------------------------------------------------


def _bogus(kind: str, here: Runner, rid: str, right: Spot) -> Spot:
    other_hash = here.load(flow(name="someone-else")).definition_hash
    return {
        "other incarnation": Spot(right.incarnation + 1, right.seq, right.definition_hash),
        "seq zero": Spot(right.incarnation, 0, right.definition_hash),
        "seq negative": Spot(right.incarnation, -7, right.definition_hash),
        "seq far ahead": Spot(right.incarnation, right.seq + 1000, right.definition_hash),
        "seq one behind": Spot(right.incarnation, right.seq - 1, right.definition_hash),
        "other definition": Spot(right.incarnation, right.seq, other_hash),
        "not a hash": Spot(right.incarnation, right.seq, "x"),
    }[kind]


@pytest.mark.parametrize(
    "kind",
    [
        "other incarnation",
        "seq zero",
        "seq negative",
        "seq far ahead",
        "seq one behind",
        "other definition",
        "not a hash",
    ],
)
async def test_a_planted_wrong_hint_changes_nothing(tmp_path: Path, kind: str) -> None:
    sets = [fs_settings(tmp_path)]
    async with runner_on(sets) as here:
        await fail_at(here, "s6", flow(), "planted")
        right = here.store.locator.recent.get("planted")
        assert right is not None
        here.store.locator.recent.note("planted", _bogus(kind, here, "planted", right))
        await same_as_stranger(here, "planted", sets)
        result = await here.resume("planted")
    assert result.steps_run == ("s6", "s7", "s8", "s9", "s10")


async def test_a_full_hint_map_with_colliding_ids(tmp_path: Path) -> None:
    """The bound reached (the store's map bounded at 2): ids that are prefixes
    of one another (``r``, ``r-1``, ``r-10``, ``r1``) evict and re-note; each id's plan stays a
    stranger's."""
    sets = [fs_settings(tmp_path)]
    async with runner_on(sets) as here:
        small = here.store.locator.recent  # the recorder notes where the locator reads
        small._most = 2  # the bound, brought within reach
        ids = ["r", "r-1", "r-10", "r1"]
        for i, rid in enumerate(ids):
            await fail_at(here, f"s{3 + i}", flow(), rid)
        assert len(small) == 2 and small.get("r") is None and small.get("r1") is not None
        # wrong neighbours planted for the evicted ids: another id's spot
        small.note("r", small.get("r1"))  # type: ignore[arg-type]
        small.note("r-1", small.get("r-10"))  # type: ignore[arg-type]
        for rid in ids:
            await same_as_stranger(here, rid, sets, need_hint=False)
        for i, rid in enumerate(ids):
            result = await here.resume(rid)
            assert result.steps_run[0] == f"s{3 + i}", (rid, result.steps_run)
            assert result.vars["total"] == sum(range(1, 11))


# -- targets ------------------------------------------------------------------------------


async def test_two_targets_only_one_holding_the_head(tmp_path: Path) -> None:
    sets = [fs_settings(tmp_path, "a"), fs_settings(tmp_path, "b")]
    wf = flow(targets=("a", "b"))
    async with runner_on(sets) as here:
        await fail_at(here, "s6", wf, "onehead")
        await here.datasources["a"].delete(head_key("onehead"))
        await same_as_stranger(here, "onehead", sets)
        result = await here.resume("onehead")
        assert result.steps_run == ("s6", "s7", "s8", "s9", "s10")
        info = await here.inspect("onehead")
        assert not info.disagreement, info.disagreement


async def test_two_targets_the_second_lagging_and_the_first_moved_on(tmp_path: Path) -> None:
    """The hint matches ``b``'s (restored) head only; ``a`` moved far on."""
    sets = [fs_settings(tmp_path, "a"), fs_settings(tmp_path, "b")]
    wf = flow(25, targets=("a", "b"))
    async with runner_on(sets) as here, runner_on(sets) as there:
        await fail_at(here, "s4", wf, "lagb")
        b = here.datasources["b"]
        hinted = await b.load(head_key("lagb"))
        assert hinted is not None
        await resume_failing_at(there, "s20", "lagb")
        await b.save(head_key("lagb"), hinted)
        for seq in range(5, 20):
            await b.delete(checkpoint_key("lagb", 1, seq))
        await same_as_stranger(here, "lagb", sets)
        result = await here.resume("lagb")
    assert result.steps_run[0] == "s20"
    assert result.vars["total"] == sum(range(1, 26))


# -- new runs (scan=False existence checks, leases off) -----------------------------------


async def test_a_new_run_under_an_id_hinted_elsewhere_with_leases_off(
    settings: DatasourceSettings,
) -> None:
    """Leases off: the existence check of a new run reads with the hint. The id was
    collected and taken again with another definition: a second ``run`` of it is refused
    as an existing run (same outcome as a stranger's)."""
    async with (
        runner_on([settings], lease_ttl=None) as here,
        runner_on([settings], lease_ttl=None) as there,
    ):
        await fail_at(here, "s3", flow(), "newid")
        await there.collect_garbage(failed_older_than=0.0)
        await fail_at(there, "s3", flow(name="other"), "newid")
        mine = await _outcome(lambda: here.run(flow(), request_id="newid"))
        async with runner_on([settings], lease_ttl=None) as stranger:
            theirs = await _outcome(lambda: stranger.run(flow(), request_id="newid"))
        assert mine == theirs and mine[0] == "raised", (mine, theirs)


# -- read errors on keys only the hint names ---------------------------------------------


def _tear(root: Path, key: str) -> None:
    """The file of ``key`` left empty, as a crash with fsync off leaves a renamed file
    whose data never reached the disk."""
    from blokrun.datasources.filesystem import encode_name

    (root / encode_name(key)).write_bytes(b"")


async def test_a_torn_record_of_an_old_incarnation_only_the_hint_names(tmp_path: Path) -> None:
    """Failed on 2d9d0c2 (fixed: Locator._first_read). A record the hinted look reads only because of a stale
    hint (incarnation 1's, after a restart elsewhere): a stranger never reads it, so a torn
    file there must not keep the hinted runner from finding, planning or resuming the run."""
    sets = [fs_settings(tmp_path)]
    async with runner_on(sets) as here, runner_on(sets) as there:
        await fail_at(here, "s4", flow(), "torn")  # hint: incarnation 1, #3
        await fail_at(there, "s6", flow(), "torn", inputs={"total": 1000}, restart=True)
        _tear(tmp_path / "default", checkpoint_key("torn", 1, 3))
        await same_as_stranger(here, "torn", sets)
        result = await here.resume("torn")
    assert result.vars["total"] == 1000 + sum(range(1, 11))


async def test_a_torn_leftover_at_a_hinted_key_and_a_new_run(tmp_path: Path) -> None:
    """Failed on 2d9d0c2 (fixed: Locator._first_read). Leases off; the run was collected, a torn leftover stays at
    a key the stale hint names. A stranger starts a new run under the id; the hinted runner
    must too."""
    sets = [fs_settings(tmp_path)]
    async with runner_on(sets, lease_ttl=None) as here:
        await fail_at(here, "s3", flow(), "torn-new")
        await here.collect_garbage(failed_older_than=0.0)
        _tear(tmp_path / "default", checkpoint_key("torn-new", 1, 4))
        assert here.store.locator.recent.get("torn-new") is not None
        async with runner_on(sets, lease_ttl=None) as stranger:
            assert (await stranger.store.planner.find("torn-new", None, scan=False)) is None
        result = await here.run(flow(), request_id="torn-new")
    assert result.status == "completed" and not result.resumed


async def test_a_torn_old_definition_only_the_hint_names(tmp_path: Path) -> None:
    """Failed on 2d9d0c2 (fixed: Locator._first_read). The hint names definition A; the run was restarted elsewhere
    with definition B, and A's record (no run uses it any more) is torn: a stranger never
    reads it."""
    sets = [fs_settings(tmp_path)]
    async with runner_on(sets) as here, runner_on(sets) as there:
        await fail_at(here, "s4", flow(), "torndef")
        spot = here.store.locator.recent.get("torndef")
        assert spot is not None
        await fail_at(there, "s4", flow(name="b-def"), "torndef", restart=True)
        _tear(tmp_path / "default", definition_key(spot.definition_hash))
        await same_as_stranger(here, "torndef", sets)


# -- the single-target path without a task --------------------------------------------


class Exploding(Datasource):
    """A datasource whose ``load_batch`` raises what a driver bug would (not a
    BlokrunError) once ``armed``."""

    __slots__ = ()
    armed = False

    async def load_batch(self, keys: Sequence[str]) -> dict[str, bytes]:
        if Exploding.armed:
            raise ZeroDivisionError("driver bug")
        return await super().load_batch(keys)


def _exploding(s: DatasourceSettings) -> Datasource:
    plain = build_datasource(s)
    plain.__class__ = Exploding
    return plain


async def _surfaced(tmp_path: Path, names: tuple[str, ...]) -> BaseException:
    sets = [fs_settings(tmp_path / "-".join(names), n) for n in names]
    async with Runner([_exploding(s) for s in sets], lease_ttl=None) as runner:
        await fail_at(runner, "s3", flow(targets=names), "boom")
        Exploding.armed = True
        try:
            with pytest.raises(BaseException) as info:
                await runner.store.planner.find("boom", None)
        finally:
            Exploding.armed = False
    return info.value


async def test_a_driver_bug_inside_locate_is_never_swallowed(tmp_path: Path) -> None:
    """An unexpected exception (not a BlokrunError) from a driver's load_batch while a run
    is located is raised, never read around: with one target as itself (no task group,
    as ``save_everywhere`` does with one target), with two in the task group's
    ExceptionGroup, one per target."""
    one = await _surfaced(tmp_path, ("a",))
    two = await _surfaced(tmp_path, ("a", "b"))
    assert type(one) is ZeroDivisionError, repr(one)
    assert isinstance(two, BaseExceptionGroup), repr(two)
    assert [type(e) for e in two.exceptions] == [ZeroDivisionError] * 2


async def test_cancelled_mid_locate_with_one_target(tmp_path: Path) -> None:
    """A look cancelled while its (single, task-less) batch is in flight leaves nothing
    behind: the next look, and a stranger's, find the same."""
    sets = [fs_settings(tmp_path)]
    gate = anyio.Event()

    class Slow(Datasource):
        __slots__ = ()
        hold = False

        async def load_batch(self, keys: Sequence[str]) -> dict[str, bytes]:
            if Slow.hold:
                gate.set()
                await anyio.sleep(10)
            return await super().load_batch(keys)

    ds = build_datasource(sets[0])
    ds.__class__ = Slow
    async with Runner([ds], lease_ttl=5.0) as here:
        await fail_at(here, "s5", flow(), "cx")
        assert await hint_matches(here, "cx")
        Slow.hold = True
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(here.store.planner.find, "cx", None)
                await gate.wait()
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        Slow.hold = False
        await same_as_stranger(here, "cx", sets)
        result = await here.resume("cx")
    assert result.steps_run == ("s5", "s6", "s7", "s8", "s9", "s10")
