"""The Runner end to end on the memory and filesystem drivers: run, checkpoint, resume."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from blokrun import (
    CheckpointError,
    DatasourceAccessError,
    DatasourceError,
    DefinitionChanged,
    Hook,
    RunEnded,
    Runner,
    RunNotFound,
    StepFailed,
    StepFinished,
    StepStarted,
)
from blokrun.config import DatasourceSettings
from blokrun.datasources import Capabilities, Datasource, build_datasource
from blokrun.datasources.memory import MemoryStore
from blokrun.persistence.keys import checkpoint_key, head_key
from blokrun.persistence.records import CheckpointRecord, HeadRecord
from tests import records
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"


def mem(name: str = "default", **kw: Any) -> Datasource:
    return build_datasource(DatasourceSettings(name=name, type="memory", **kw))


def linear(n: int, *, name: str = "linear", node: str = "add", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1",
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:{node}", "inputs": {"n": i}} for i in range(1, n + 1)
        ],
        **extra,
    }


def calls(rid: str) -> list[str]:
    return [step for r, step in wfnodes.CALLS if r == rid]


async def load_ckpt(ds: Datasource, key: str) -> CheckpointRecord:
    """The checkpoint the step's key under the user's pattern points at."""
    return await records.checkpoint(ds, key)


# -- running -------------------------------------------------------------------------------------


async def test_run_returns_final_vars_with_outputs_under_step_names() -> None:
    async with Runner([mem()]) as runner:
        result = await runner.run(linear(3), {"total": 10}, request_id="r-1")
    assert result.status == "completed"
    assert result.vars["total"] == 16
    assert result.vars["s1"] == {"seen_total": 11}
    assert result.vars["s3"] == {"seen_total": 16}
    assert result.steps_run == ("s1", "s2", "s3")
    assert calls("r-1") == ["s1", "s2", "s3"]


async def test_sync_nodes_run_in_a_worker_thread() -> None:
    wf = linear(2, node="sync_add")
    async with Runner([mem()]) as runner:
        result = await runner.run(wf, request_id="r-sync")
    assert result.vars["total"] == 3
    assert wfnodes.THREADS["s1"] != threading.get_ident()


async def test_a_node_returning_none_stores_nothing_but_may_change_vars() -> None:
    wf = {"name": "n", "steps": [{"name": "touch", "node": f"{NODE}:nothing"}]}
    async with Runner([mem()]) as runner:
        result = await runner.run(wf)
    assert "touch" not in result.vars
    assert result.vars["touched"] is True


async def test_inputs_are_evaluated_against_the_context() -> None:
    wf = {
        "name": "exprs",
        "version": "2.1",
        "steps": [
            {"name": "first", "node": "set", "inputs": {"a": {"b": [5, 6]}}},
            {
                "name": "show",
                "node": f"{NODE}:echo",
                "inputs": {
                    "id": "${ctx.request.id}",
                    "wf": "${ctx.workflow.name}@${ctx.workflow.version}",
                    "step": "${stepName}",
                    "whole": "${ctx.vars.a}",
                    "item": "${ctx.vars.a.b[1]}",
                    "text": "n=${ctx.vars.a.b[0]}",
                    "ts": "${ctx.timestamp}",
                    "date": "${ctx.date}",
                    "input": "${ctx.vars.who}",
                    "fallback": "${ctx.vars.missing ?? 'none'}",
                },
            },
        ],
    }
    before = time.time()
    async with Runner([mem()]) as runner:
        result = await runner.run(wf, {"who": "ada"}, request_id="exprs-1")
    shown = result.vars["show"]
    assert shown["id"] == "exprs-1"
    assert shown["wf"] == "exprs@2.1"
    assert shown["step"] == "show"
    assert shown["whole"] == {"b": [5, 6]}
    assert shown["item"] == 6
    assert shown["text"] == "n=5"
    assert isinstance(shown["ts"], int) and abs(shown["ts"] / 1000 - before) < 5
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", shown["date"])
    assert shown["input"] == "ada"
    assert shown["fallback"] == "none"


async def test_generated_request_ids_are_url_safe_with_128_random_bits() -> None:
    async with Runner([mem()]) as runner:
        ids = {(await runner.run(linear(1))).request_id for _ in range(50)}
    assert len(ids) == 50
    for rid in ids:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{21}", rid), rid  # 22 chars of base64url


@pytest.mark.parametrize(
    "bad", ["", "../../etc/passwd", "a\x00b", "x" * 201, "_internal", "sp ace"]
)
async def test_a_bad_request_id_is_refused_before_anything_runs(bad: str) -> None:
    from blokrun import ArgumentError

    async with Runner([mem()]) as runner:
        with pytest.raises(ArgumentError, match="invalid request id"):
            await runner.run(linear(1), request_id=bad)
    assert wfnodes.CALLS == []


async def test_failures_carry_request_id_and_step_and_the_cause() -> None:
    wfnodes.FAIL_AT.add("s2")
    async with Runner([mem()]) as runner:
        with pytest.raises(StepFailed) as info:
            await runner.run(linear(3), request_id="fails-1")
    assert info.value.request_id == "fails-1"
    assert info.value.step == "s2"
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "s2 failed on purpose" in str(info.value)
    assert calls("fails-1") == ["s1", "s2"]


# -- checkpoints ------------------------------------------------------------------------------------


async def test_a_checkpoint_is_written_after_every_step() -> None:
    ds = mem()
    async with Runner([ds]) as runner:
        result = await runner.run(linear(3), {"total": 0}, request_id="ck-1")
        wf = runner.load(linear(3))
    for seq, step in enumerate(["s1", "s2", "s3"], start=1):
        rec = await load_ckpt(ds, f"ck-1-{step}")
        assert rec.request_id == "ck-1"
        assert rec.workflow == "linear"
        assert rec.version == "1"
        assert rec.definition_hash == wf.definition_hash
        assert rec.step == step
        assert rec.seq == seq
        assert rec.status == "completed"
        assert rec.done == ["s1", "s2", "s3"][:seq]
        assert rec.vars["total"] == sum(range(1, seq + 1))
        assert rec.time > 0
    head = await records.head(ds, "ck-1")
    assert head.status == "completed"
    assert head.seq == 3
    assert head.key == checkpoint_key("ck-1", 1, 3)
    assert head.key == rec.key
    assert result.vars["total"] == 6


async def test_step_persistence_disabled_skips_that_checkpoint() -> None:
    wf = linear(3)
    wf["steps"][1]["persistence"] = {"enabled": False}
    ds = mem()
    async with Runner([ds]) as runner:
        await runner.run(wf, request_id="skip-1")
    assert await ds.exists("skip-1-s1")
    assert not await ds.exists("skip-1-s2")
    assert (await load_ckpt(ds, "skip-1-s3")).seq == 2


async def test_autosave_off_checkpoints_only_the_steps_that_ask() -> None:
    wf = linear(3, persistence={"autoSave": False})
    wf["steps"][1]["persistence"] = {"enabled": True}
    ds = mem()
    async with Runner([ds]) as runner:
        await runner.run(wf, request_id="auto-1")
    assert [await ds.exists(f"auto-1-s{i}") for i in (1, 2, 3)] == [False, True, False]


async def test_persistence_disabled_writes_nothing() -> None:
    ds = mem()
    async with Runner([ds]) as runner:
        result = await runner.run(linear(2, persistence={"enabled": False}), request_id="off-1")
    assert result.vars["total"] == 3
    assert await ds.size() == 0


class SlowStore(MemoryStore):
    """A memory store whose saves take ``delay`` seconds (and can be told to fail)."""

    def __init__(self, delay: float, fail: bool = False) -> None:
        super().__init__()
        self.delay = delay
        self.fail = fail
        self.ttls: list[tuple[str, float | None]] = []

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_batch=True)

    async def save_batch(self, entries: Sequence[tuple[str, bytes, float | None]]) -> None:
        await anyio.sleep(self.delay)
        if self.fail:
            raise DatasourceError("disk full (simulated)")
        self.ttls.extend((k, t) for k, _, t in entries)
        await super().save_batch(entries)


def slow(name: str, delay: float, fail: bool = False, **kw: Any) -> tuple[Datasource, SlowStore]:
    store = SlowStore(delay, fail)
    return Datasource(DatasourceSettings(name=name, type="memory", **kw), store), store


async def test_checkpoints_go_to_every_target_concurrently() -> None:
    a, _ = slow("a", 0.3)
    b, _ = slow("b", 0.3)
    c, _ = slow("c", 0.3)
    wf = linear(2, persistence={"targets": ["a", "b", "c"]})
    async with Runner([a, b, c]) as runner:
        t0 = time.perf_counter()
        await runner.run(wf, request_id="fan-1")
        elapsed = time.perf_counter() - t0
    for ds in (a, b, c):
        assert (await load_ckpt(ds, "fan-1-s2")).seq == 2
    # start + 2 checkpoints = 3 saves per target: concurrent ~0.9 s, sequential ~2.7 s
    assert elapsed < 1.8, elapsed


async def test_a_failed_save_fails_the_run_at_once_naming_datasource_and_key() -> None:
    good, _ = slow("good", 0)
    bad, bad_store = slow("bad", 0)
    wf = linear(3, persistence={"targets": ["good", "bad"]})
    bad_store.fail = False

    # Fail from the second checkpoint on.
    class FailSecond(Hook):
        async def before_step(self, event: StepStarted) -> None:
            if event.step.name == "s2":
                bad_store.fail = True

    async with Runner([good, bad], hooks=[FailSecond()]) as runner:
        with pytest.raises(CheckpointError) as info:
            await runner.run(wf, request_id="sf-1")
    err = info.value
    assert err.datasource == "bad"
    assert err.key == checkpoint_key("sf-1", 1, 2)  # the run's own checkpoint key
    assert err.step == "s2"
    assert "'bad'" in str(err) and err.key in str(err) and "disk full" in str(err)
    assert calls("sf-1") == ["s1", "s2"]  # s3 never ran


async def test_user_after_step_hooks_see_every_step_after_its_checkpoint() -> None:
    ds = mem()
    seen: list[tuple[str, int, bool]] = []

    async def metrics(event: StepFinished) -> None:
        stored = await ds.exists(f"{event.request_id}-{event.step.name}")
        seen.append((event.step.name, len(event.done), stored))

    class Timer(Hook):
        def __init__(self) -> None:
            self.ends: list[str | None] = []

        async def on_run_end(self, event: RunEnded) -> None:
            self.ends.append(event.status)

    timer = Timer()
    async with Runner([ds], hooks=[metrics, timer]) as runner:
        await runner.run(linear(2), request_id="hook-1")
    assert seen == [("s1", 1, True), ("s2", 2, True)]
    assert timer.ends == ["completed"]


async def test_a_value_that_cannot_be_stored_fails_its_step_with_the_path() -> None:
    wf = {"name": "bad", "steps": [{"name": "report", "node": f"{NODE}:bad_value"}]}
    async with Runner([mem()]) as runner:
        with pytest.raises(StepFailed) as info:
            await runner.run(wf, request_id="bv-1")
    assert info.value.step == "report"
    assert "vars.report.report.rows[3]" in str(info.value)
    assert "object" in str(info.value)


# -- datasources seen from steps --------------------------------------------------------------------


async def test_ctx_datasource_reads_only_the_listed_datasources() -> None:
    cache = mem("cache")
    other = mem("other")
    wf = {
        "name": "reader",
        "datasources": ["cache"],
        "steps": [
            {"name": "get", "node": f"{NODE}:read_ds", "inputs": {"name": "cache", "key": "k1"}},
            {
                "name": "expr",
                "node": f"{NODE}:echo",
                "inputs": {"v": "${ctx.datasource('cache', 'k-${ctx.request.id}')}"},
            },
            {"name": "sneak", "node": f"{NODE}:read_ds", "inputs": {"name": "other", "key": "k1"}},
        ],
    }
    async with Runner([mem(), cache, other]) as runner:
        await cache.save("k1", b'{"hello": "world"}')
        await cache.save("k-rd-1", b"[1, 2]")
        await other.save("k1", b'"secret"')
        with pytest.raises(StepFailed) as info:
            await runner.run(wf, request_id="rd-1")
    assert isinstance(info.value.__cause__, DatasourceAccessError)
    message = str(info.value)
    assert "'other'" in message and "available: cache" in message
    assert wfnodes.CALLS[:2] == [("rd-1", "get"), ("rd-1", "expr")]


async def test_ctx_datasource_values_are_copies_and_there_is_no_write_access() -> None:
    cache = mem("cache")
    wf = {
        "name": "ro",
        "datasources": ["cache"],
        "steps": [
            {"name": "get", "node": f"{NODE}:read_ds", "inputs": {"name": "cache", "key": "k"}}
        ],
    }
    async with Runner([mem(), cache]) as runner:
        await cache.save("k", b'{"a": 1}')
        result = await runner.run(wf)
        result.vars["get"]["a"] = 2
        assert await cache.load("k") == b'{"a": 1}'
    from blokrun import Context

    public = {n for n in dir(Context) if not n.startswith("_")}
    assert not public & {"save", "write", "delete", "put", "set"}


async def test_a_step_publishes_its_output_for_another_workflow() -> None:
    cache = mem("cache")
    extractor = {
        "name": "data-extractor",
        "persistence": {"enabled": True, "targets": ["default"]},
        "steps": [
            {
                "name": "extract",
                "node": f"{NODE}:echo",
                "inputs": {"rows": [1, 2, 3]},
                "persistence": {"target": "cache", "key": "latest-extraction-${ctx.date}"},
            }
        ],
    }
    processor = {
        "name": "data-processor",
        "datasources": ["cache"],
        "steps": [
            {
                "name": "process",
                "node": f"{NODE}:echo",
                "inputs": {"latest": "${ctx.datasource('cache', 'latest-extraction-${ctx.date}')}"},
            }
        ],
    }
    async with Runner([mem(), cache]) as runner:
        await runner.run(extractor)
        result = await runner.run(processor)
    assert result.vars["process"]["latest"] == {"rows": [1, 2, 3]}


async def test_ttl_comes_from_the_step_then_the_workflow_then_the_datasource() -> None:
    ds, store = slow("default", 0, ttl=1000)
    wf = linear(3, persistence={"ttl": 60})
    wf["steps"][1]["persistence"] = {"ttl": 5}
    async with Runner([ds]) as runner:
        await runner.run(wf, request_id="ttl-1")
        await runner.run(linear(1, name="plain"), request_id="ttl-2")
    ttls = dict(store.ttls)
    assert ttls["ttl-1-s1"] == 60
    assert ttls["ttl-1-s2"] == 5
    assert ttls["ttl-1-s3"] == 60
    assert ttls["ttl-2-s1"] == 1000  # the datasource's own TTL


# -- resume -----------------------------------------------------------------------------------------


async def test_resume_after_a_failure_skips_completed_steps() -> None:
    ds = mem()
    wfnodes.FAIL_AT.add("s3")
    async with Runner([ds]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(linear(4), {"total": 100}, request_id="res-1")
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("res-1")
    assert calls("res-1") == ["s1", "s2", "s3", "s3", "s4"]
    assert result.vars["total"] == 110
    assert result.steps_skipped == ("s1", "s2")
    assert result.steps_run == ("s3", "s4")
    assert result.resumed
    head = await runner_head(ds, "res-1")
    assert head.status == "completed" and head.attempt == 2 and head.seq == 4


async def runner_head(ds: Datasource, rid: str) -> HeadRecord:
    return await records.head(ds, rid)


async def test_resume_of_a_run_that_failed_in_its_first_step_starts_from_its_inputs() -> None:
    wfnodes.FAIL_AT.add("s1")
    async with Runner([mem()]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(linear(2), {"total": 7}, request_id="first-1")
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("first-1")
    assert result.vars["total"] == 10


async def test_latest_checkpoint_is_by_sequence_not_key_order_s10_after_s9() -> None:
    ds = mem()
    wfnodes.FAIL_AT.add("s11")
    async with Runner([ds]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(linear(12), request_id="order-1")
        await ds.delete(head_key("order-1"))  # force the scan fallback too
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("order-1")
    assert calls("order-1").count("s10") == 1
    assert calls("order-1")[-2:] == ["s11", "s12"]
    assert result.vars["total"] == sum(range(1, 13))


async def test_runs_job_and_job_2_never_mix() -> None:
    ds = mem()
    async with Runner([ds]) as runner:
        wfnodes.FAIL_AT.add("s2")
        with pytest.raises(StepFailed):
            await runner.run(linear(3), {"total": 0}, request_id="job")
        wfnodes.FAIL_AT.clear()
        await runner.run(
            linear(3), {"total": 1000}, request_id="job-2"
        )  # keys job-2-s1.. match job-*
        await ds.delete(head_key("job"))
        result = await runner.resume("job")
    assert result.vars["total"] == 6  # job's own s1 checkpoint (1) + s2 + s3
    assert calls("job") == ["s1", "s2", "s2", "s3"]


async def test_another_workflows_checkpoints_are_never_taken() -> None:
    ds = mem()
    async with Runner([ds]) as runner:
        wfnodes.FAIL_AT.add("s2")
        with pytest.raises(StepFailed):
            await runner.run(linear(3, name="mine"), request_id="shared-id")
        wfnodes.FAIL_AT.clear()
        # Another workflow wrote a later checkpoint under a key of the same shape.
        theirs = runner.load(linear(3, name="theirs"))
        from blokrun.persistence.records import encode_checkpoint

        await ds.save(
            "shared-id-s3",
            encode_checkpoint(
                request_id="shared-id",
                workflow="theirs",
                version="1",
                definition_hash=theirs.definition_hash,
                step="s3",
                seq=9,
                done=["s1", "s2", "s3"],
                vars={"total": -1},
                started_at=0.0,
                time=0.0,
                duration=0.0,
                attempt=1,
            ),
        )
        await ds.delete(head_key("shared-id"))
        result = await runner.resume("shared-id")
    assert result.vars["total"] == 6


async def test_a_head_left_one_step_behind_by_a_crash_is_rolled_forward() -> None:
    ds = mem()
    wfnodes.FAIL_AT.add("s3")
    async with Runner([ds]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(linear(4), request_id="roll-1")
        # Put back the head as it was after s1: the crash hit between checkpoint s2 and its head.
        head = await runner_head(ds, "roll-1")
        stale = HeadRecord(
            **{
                **{f: getattr(head, f) for f in head.__struct_fields__},
                "seq": 1,
                "last_done": "s1",
                "key": checkpoint_key("roll-1", 1, 1),
                "status": "running",
            }
        )
        await records.put_head(ds, stale)
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("roll-1")
    assert calls("roll-1") == ["s1", "s2", "s3", "s3", "s4"]
    assert result.vars["total"] == 10


async def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one() -> None:
    ds = mem()
    wfnodes.FAIL_AT.add("s3")
    async with Runner([ds]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(linear(3), request_id="corrupt-1")
        key = (await records.checkpoint(ds, "corrupt-1-s2")).key
        raw = bytearray(await ds.load(key) or b"")
        raw[-3] ^= 0xFF
        await ds.save(key, bytes(raw))
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("corrupt-1")
    assert calls("corrupt-1") == ["s1", "s2", "s3", "s2", "s3"]
    assert result.vars["total"] == 6


async def test_resume_needs_no_file_the_definition_is_stored(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = DatasourceSettings(name="default", type="filesystem", path=str(home))
    wfnodes.FAIL_AT.add("s2")
    async with Runner([settings]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(linear(3), request_id="nofile-1")
    wfnodes.FAIL_AT.clear()
    async with Runner([settings]) as fresh:  # a new Runner, as after a restart
        result = await fresh.resume("nofile-1")
    assert result.vars["total"] == 6
    assert calls("nofile-1") == ["s1", "s2", "s2", "s3"]


async def test_resume_refuses_a_workflow_that_changed_steps_that_ran_unless_forced() -> None:
    ds = mem()
    wfnodes.FAIL_AT.add("s3")
    async with Runner([ds]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(linear(3), request_id="chg-1")
        wfnodes.FAIL_AT.clear()
        changed = linear(3)
        changed["steps"][0]["inputs"] = {"n": 1000}
        with pytest.raises(DefinitionChanged) as info:
            await runner.resume("chg-1", workflow=changed)
        assert "'s1' (changed)" in str(info.value) and "--force" in str(info.value)
        # Changing only steps that did not run yet is fine.
        later = linear(3)
        later["steps"][2]["inputs"] = {"n": 300}
        result = await runner.resume("chg-1", workflow=later)
        assert result.vars["total"] == 1 + 2 + 300
    ds2 = mem()
    wfnodes.FAIL_AT.add("s3")
    async with Runner([ds2]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(linear(3), request_id="chg-2")
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("chg-2", workflow=changed, force=True)
    assert result.vars["total"] == 6  # s1's stored result is kept; only s3 ran


async def test_resuming_a_completed_run_runs_nothing_and_returns_its_vars() -> None:
    async with Runner([mem()]) as runner:
        first = await runner.run(linear(2), request_id="done-1")
        again = await runner.resume("done-1")
    assert again.vars == first.vars
    assert again.steps_run == ()
    assert calls("done-1") == ["s1", "s2"]


async def test_resuming_an_unknown_run_says_where_it_looked() -> None:
    async with Runner([mem(), mem("other")]) as runner:
        with pytest.raises(RunNotFound) as info:
            await runner.resume("never-ran")
    assert "never-ran" in str(info.value) and "'default'" in str(info.value)


async def test_inspect_lists_the_checkpoints_in_order() -> None:
    async with Runner([mem()]) as runner:
        await runner.run(linear(11), request_id="ins-1")
        info = await runner.inspect("ins-1")
    assert [c.step for c in info.checkpoints] == [f"s{i}" for i in range(1, 12)]
    assert [c.seq for c in info.checkpoints] == list(range(1, 12))
    assert all(c.size > 0 and c.status == "completed" for c in info.checkpoints)
    assert info.head is not None and info.head.status == "completed"


async def test_a_custom_key_pattern_is_used_and_resume_finds_its_keys() -> None:
    ds = mem()
    wf = linear(
        3, persistence={"keyPattern": "runs/${ctx.workflow.name}/${ctx.request.id}/${stepName}"}
    )
    wfnodes.FAIL_AT.add("s3")
    async with Runner([ds]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(wf, request_id="kp-1")
        assert await ds.exists("runs/linear/kp-1/s2")
        await ds.delete(head_key("kp-1"))
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("kp-1", workflow=wf)
    assert result.vars["total"] == 6
    assert calls("kp-1") == ["s1", "s2", "s3", "s3"]


# -- start-up -----------------------------------------------------------------------------------------


async def test_an_unusable_datasource_fails_at_start_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    broken = DatasourceSettings(name="local", type="filesystem", path=str(blocker / "sub"))
    runner = Runner([DatasourceSettings(name="default", type="memory"), broken])
    with pytest.raises(DatasourceError) as info:
        async with runner:
            pass
    message = str(info.value)
    assert "local" in message and "configured datasources: default, local" in message


async def test_the_runner_must_be_started() -> None:
    from blokrun import BlokrunError

    with pytest.raises(BlokrunError, match="not started"):
        await Runner([mem()]).run(linear(1))


async def test_a_run_that_keeps_failing_in_recovery_is_dead_lettered() -> None:
    ds = mem()
    wfnodes.FAIL_AT.add("s2")
    runner = Runner([ds], max_resumes=2)
    async with runner:
        with pytest.raises(StepFailed):
            await runner.run(linear(3), request_id="dead-1")
        for _ in range(2):
            with pytest.raises(StepFailed):
                await runner.resume("dead-1")
        from blokrun import ResumeError

        with pytest.raises(
            ResumeError, match=r"gave up after 2 resume attempt\(s\).*dead-lettered"
        ):
            await runner.resume("dead-1")
        head = await runner_head(ds, "dead-1")
        assert head.status == "dead"
        with pytest.raises(ResumeError, match="dead-lettered"):
            await runner.resume("dead-1")  # stays dead
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("dead-1", force=True)  # a human fixed the cause
    assert result.vars["total"] == 6
    assert calls("dead-1").count("s2") == 4
