"""collect_garbage and ``blokrun gc``: old runs and unreferenced blobs go, the rest stays."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from blokrun import ArgumentError, Runner, StepFailed
from blokrun.cli import gc as gc_cli
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource
from blokrun.lifecycle import collect_garbage
from blokrun.persistence.keys import checkpoint_key, head_key, run_key
from blokrun.persistence.records import HeadRecord, decode_record, encode_record
from tests import records
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"
DAY = 86400.0


def mem(name: str) -> Datasource:
    return build_datasource(DatasourceSettings(name=name, type="memory"))


def fs(name: str, path: Path) -> Datasource:
    return build_datasource(DatasourceSettings(name=name, type="filesystem", path=str(path)))


def wf(targets: list[str], **persistence: Any) -> dict[str, Any]:
    return {
        "name": "adder",
        "version": "1",
        "persistence": {"targets": targets, **persistence},
        "steps": [{"name": s, "node": f"{NODE}:add", "inputs": {"n": 1}} for s in ("s1", "s2")],
    }


def blob_wf(seed: int) -> dict[str, Any]:
    return {
        "name": "blobby",
        "version": "1",
        "persistence": {"targets": ["a"]},
        "steps": [
            {"name": "make", "node": f"{NODE}:big", "inputs": {"seed": seed, "size": 5000}},
            {"name": "after", "node": f"{NODE}:add", "inputs": {"n": 1}},
        ],
    }


async def age(runner: Runner, rid: str, days: float, **changes: Any) -> None:
    """Make every stored head of ``rid`` look last updated ``days`` ago."""
    for ds in runner.datasources.values():
        raw = await ds.load(head_key(rid))
        if raw is None:
            continue
        key = head_key(rid)
        head = decode_record(raw, HeadRecord, bind=key)
        head = msgspec.structs.replace(head, updated_at=time.time() - days * DAY, **changes)
        await ds.save(key, encode_record(head, bind=key))


async def snapshot(runner: Runner) -> dict[str, set[str]]:
    return {name: set(await ds.keys()) for name, ds in runner.datasources.items()}


@pytest.fixture
async def runner(tmp_path: Path) -> Any:
    async with Runner([mem("a"), fs("b", tmp_path / "b")]) as r:
        yield r


async def populate(runner: Runner) -> None:
    await runner.run(wf(["a", "b"]), request_id="old-done")
    await age(runner, "old-done", 10)
    await runner.run(wf(["b"]), request_id="new-done")
    await age(runner, "new-done", 1)
    await runner.run(wf(["a"]), request_id="old-running")
    await age(runner, "old-running", 100, status="running")
    await runner.run(wf(["a"]), request_id="old-susp")
    await age(runner, "old-susp", 100, status="suspended")
    wfnodes.FAIL_AT.add("s2")
    for rid, days in (("fail-20", 20), ("fail-40", 40)):
        with pytest.raises(StepFailed):
            await runner.run(wf(["a"]), request_id=rid)
        await age(runner, rid, days)
    wfnodes.FAIL_AT.clear()
    await runner.run(wf(["b"]), request_id="cancel-40")
    await age(runner, "cancel-40", 40, status="cancelled")
    await runner.run(wf(["a"]), request_id="job")  # 'job-' is a prefix of job-2's keys
    await age(runner, "job", 8)
    await runner.run(wf(["a"]), request_id="job-2")


def run_keys(rid: str, steps: tuple[str, ...] = ("s1", "s2")) -> set[str]:
    """Everything a run of ``steps`` stores: head, run record, a checkpoint and an alias per
    step (the definition is shared by content and stays)."""
    checkpoints = {checkpoint_key(rid, 1, seq) for seq in range(1, len(steps) + 1)}
    aliases = {f"{rid}-{s}" for s in steps}
    return {head_key(rid), run_key(rid, 1), *checkpoints, *aliases}


async def test_old_runs_go_recent_running_and_suspended_stay(runner: Runner) -> None:
    await populate(runner)
    before = await snapshot(runner)
    report = await runner.collect_garbage(
        completed_older_than=7 * DAY, failed_older_than=30 * DAY, dry_run=False
    )
    assert sorted(r.request_id for r in report.runs) == ["cancel-40", "fail-40", "job", "old-done"]
    assert report.runs_deleted == 4 and report.runs_kept == 5
    assert report.checkpoints_deleted == 2 * 2 + 1 + 2 + 2
    # a checkpoint and an alias per step, and a head and a run record per run and target
    assert report.keys_deleted == 2 * report.checkpoints_deleted + 2 * 5
    assert report.bytes_deleted > 0 and report.blobs_deleted == 0 and report.errors == ()
    old_done = next(r for r in report.runs if r.request_id == "old-done")
    assert old_done.datasources == ("a", "b") and old_done.keys == 12
    after = await snapshot(runner)
    gone = {
        "a": run_keys("old-done") | run_keys("fail-40", ("s1",)) | run_keys("job"),
        "b": run_keys("old-done") | run_keys("cancel-40"),
    }
    for name in ("a", "b"):
        assert gone[name] <= before[name]
        assert after[name] == before[name] - gone[name]
    assert "job-2-s1" in after["a"]  # run 'job' never took job-2's keys
    assert any(k.startswith("_blokrun.def.") for k in after["a"])  # definitions are kept
    left = {r.request_id for r in (await runner.list_runs()).runs}
    assert left == {"new-done", "old-running", "old-susp", "fail-20", "job-2"}
    assert (await runner.resume("job-2")).vars["total"] == 2  # still whole
    again = await runner.collect_garbage(
        completed_older_than=7 * DAY, failed_older_than=30 * DAY, dry_run=False
    )
    assert again.runs_deleted == 0 and again.keys_deleted == 0


async def test_thresholds_apply_per_status(runner: Runner) -> None:
    await populate(runner)
    report = await runner.collect_garbage(
        completed_older_than=None, failed_older_than=15 * DAY, dry_run=False
    )
    assert sorted(r.request_id for r in report.runs) == ["cancel-40", "fail-20", "fail-40"]
    report = await runner.collect_garbage(
        completed_older_than=0, failed_older_than=None, dry_run=False
    )
    assert sorted(r.request_id for r in report.runs) == ["job", "job-2", "new-done", "old-done"]
    left = {r.request_id: r.status for r in (await runner.list_runs()).runs}
    # its head says running but its lease was released: listed as interrupted, never collected
    assert left == {"old-running": "interrupted", "old-susp": "suspended"}


async def test_clock_decides_the_age(runner: Runner) -> None:
    await runner.run(wf(["a"]), request_id="fresh")
    kept = await runner.collect_garbage(
        completed_older_than=7 * DAY, failed_older_than=None, dry_run=False
    )
    assert kept.runs_deleted == 0 and kept.runs_kept == 1
    later = await collect_garbage(
        runner.store,
        completed_older_than=7 * DAY,
        failed_older_than=None,
        dry_run=False,
        clock=lambda: time.time() + 8 * DAY,
    )
    assert [r.request_id for r in later.runs] == ["fresh"]


async def test_dry_run_deletes_nothing_and_reports_the_same(runner: Runner) -> None:
    await populate(runner)
    before = await snapshot(runner)
    kw: dict[str, Any] = {"completed_older_than": 7 * DAY, "failed_older_than": 30 * DAY}
    dry = await runner.collect_garbage(dry_run=True, **kw)
    assert await snapshot(runner) == before
    real = await runner.collect_garbage(dry_run=False, **kw)
    assert dry.dry_run and not real.dry_run
    for field in (
        "runs",
        "runs_kept",
        "keys_deleted",
        "checkpoints_deleted",
        "bytes_deleted",
        "blobs_deleted",
        "blob_keys",
        "blobs_kept",
    ):
        assert getattr(dry, field) == getattr(real, field), field
    assert await snapshot(runner) != before


async def test_a_run_resumed_meanwhile_is_kept(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blokrun.lifecycle import gc as gc_module

    wfnodes.FAIL_AT.add("s2")
    with pytest.raises(StepFailed):
        await runner.run(wf(["a"]), request_id="racy")
    wfnodes.FAIL_AT.clear()
    await age(runner, "racy", 40)
    real = gc_module.iter_runs  # type: ignore[attr-defined]  # gc's own import, patched

    async def listed_then_resumed(r: Any) -> Any:
        async for run in real(r):
            yield run
        await age(runner, "racy", 0, status="running")  # someone resumes it meanwhile

    monkeypatch.setattr(gc_module, "iter_runs", listed_then_resumed)
    report = await runner.collect_garbage(
        completed_older_than=None, failed_older_than=30 * DAY, dry_run=False
    )
    assert report.runs_deleted == 0 and report.runs_kept == 1
    assert "racy-s1" in await runner.datasources["a"].keys()


async def test_custom_key_pattern_with_the_start_date(runner: Runner) -> None:
    pattern = "ck/${ctx.date}/${ctx.request.id}/${stepName}"
    await runner.run(wf(["a"], keyPattern=pattern), request_id="dated")
    await runner.run(wf(["a"], keyPattern=pattern), request_id="dated-2")
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert f"ck/{day}/dated/s1" in await runner.datasources["a"].keys()
    await age(runner, "dated", 9)
    report = await runner.collect_garbage(
        completed_older_than=7 * DAY, failed_older_than=None, dry_run=False
    )
    assert report.checkpoints_deleted == 2 and report.warnings == ()
    left = set(await runner.datasources["a"].keys("ck/"))
    assert left == {f"ck/{day}/dated-2/s1", f"ck/{day}/dated-2/s2"}


async def test_a_run_whose_definition_is_missing_is_still_collected_whole(
    runner: Runner,
) -> None:
    """gc needs no definition: a run's keys are found under its id, its aliases are named in
    its checkpoints."""
    await runner.run(wf(["a"]), request_id="nodef")
    for key in await runner.datasources["a"].keys("_blokrun.def."):
        await runner.datasources["a"].delete(key)
    await age(runner, "nodef", 9)
    report = await runner.collect_garbage(
        completed_older_than=7 * DAY, failed_older_than=None, dry_run=False
    )
    assert report.checkpoints_deleted == 2 and report.keys_deleted == 6
    assert await runner.datasources["a"].keys() == []


# -- blobs -------------------------------------------------------------------------------------------


@pytest.fixture
async def blob_runner(tmp_path: Path) -> Any:
    async with Runner(
        [mem("a"), fs("blobs", tmp_path / "blobs")], blob_datasource="blobs", blob_threshold=1000
    ) as r:
        yield r


async def blob_keys(runner: Runner) -> set[str]:
    return set(await runner.datasources["blobs"].keys("_blokrun.blob."))


async def test_unreferenced_blobs_go_referenced_ones_stay(blob_runner: Runner) -> None:
    runner = blob_runner
    await runner.run(blob_wf(1), request_id="old-1")
    await runner.run(blob_wf(2), request_id="old-2")
    await runner.run(blob_wf(2), request_id="new-2")  # same value: the same blob
    await age(runner, "old-1", 10)
    await age(runner, "old-2", 10)
    # data that is not a checkpoint must not stop the collection
    await runner.datasources["a"].save("some-user-key", b'{"not": "a record"}')
    blobs = await blob_keys(runner)
    assert len(blobs) == 2
    kw: dict[str, Any] = {"completed_older_than": 7 * DAY, "failed_older_than": None}
    dry = await runner.collect_garbage(dry_run=True, **kw)
    assert dry.blobs_deleted == 1 and dry.blobs_kept == 1 and await blob_keys(runner) == blobs
    report = await runner.collect_garbage(dry_run=False, **kw)
    assert report.runs_deleted == 2 and report.blobs_deleted == 1 and report.blobs_kept == 1
    assert report.blob_keys == dry.blob_keys
    (survivor,) = await blob_keys(runner)
    assert report.blob_keys == (("blobs", next(iter(blobs - {survivor}))),)
    result = await runner.resume("new-2")  # its blob is still there
    assert result.vars["make"] == wfnodes._text(2, 5000)
    # once the last run referring to it is gone, so is the blob
    await age(runner, "new-2", 10)
    final = await runner.collect_garbage(dry_run=False, **kw)
    assert final.blobs_deleted == 1 and await blob_keys(runner) == set()


async def test_an_unreadable_checkpoint_keeps_its_runs_blobs_only(blob_runner: Runner) -> None:
    """A kept run's blobs are kept by their marks, whatever its records say: one unreadable
    checkpoint neither loses them nor stops the sweep of the others."""
    runner = blob_runner
    await runner.run(blob_wf(1), request_id="old-1")
    await runner.run(blob_wf(3), request_id="new-3")
    await age(runner, "old-1", 10)
    ds = runner.datasources["a"]
    key = (await records.checkpoint(ds, "new-3-make")).key  # the one that refers to the blob
    raw = await ds.load(key)
    assert raw is not None
    await ds.save(key, raw[:-1] + bytes([raw[-1] ^ 0xFF]))  # checksum fails
    report = await runner.collect_garbage(
        completed_older_than=7 * DAY, failed_older_than=None, dry_run=False
    )
    assert report.runs_deleted == 1
    assert report.blobs_deleted == 1 and report.blobs_kept == 1  # old-1's went, new-3's stays
    assert len(await blob_keys(runner)) == 1


async def test_bad_ages_are_config_errors(runner: Runner) -> None:
    with pytest.raises(ArgumentError, match="completed_older_than"):
        await runner.collect_garbage(completed_older_than=-1, failed_older_than=None, dry_run=True)
    with pytest.raises(ArgumentError, match="failed_older_than"):
        await runner.collect_garbage(
            completed_older_than=None, failed_older_than=float("nan"), dry_run=True
        )


# -- CLI ------------------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="blokrun")
    sub = parser.add_subparsers(dest="command", required=True)
    gc_cli.add_parser(sub)
    return parser.parse_args(["gc", *argv])


def test_cli_defaults_and_forms() -> None:
    args = parse()
    assert args.completed_older_than == 7 * DAY and args.failed_older_than == 30 * DAY
    assert not args.dry_run
    args = parse("--completed-older-than", "12h", "--failed-older-than", "never", "--dry-run")
    assert args.completed_older_than == 12 * 3600 and args.failed_older_than is None
    assert args.dry_run


@pytest.mark.parametrize("option", ["--completed-older-than", "--failed-older-than"])
def test_cli_bad_age_exits_2(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(option, "soon")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "invalid duration 'soon'" in err


async def test_cli_output(runner: Runner, capsys: pytest.CaptureFixture[str]) -> None:
    await populate(runner)
    assert await gc_cli.run(parse("--dry-run"), runner) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert sorted(line.split()[3] for line in lines if line.startswith("would delete run")) == [
        "cancel-40",
        "fail-40",
        "job",
        "old-done",
    ]
    assert "would delete run old-done  workflow adder  completed" in out
    assert "12 key(s) on 'a', 'b'" in out  # a head, run record, checkpoint and alias x2, on each
    assert lines[-1].startswith("gc (dry run): would delete 4 run(s) (28 keys, ")
    assert "kept 5 run(s) and 0 blob(s)" in lines[-1]
    assert await gc_cli.run(parse("--json"), runner) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["dry_run"] is False and doc["runs_deleted"] == 4 and doc["keys_deleted"] == 28
    assert {r["request_id"] for r in doc["runs"]} == {"cancel-40", "fail-40", "job", "old-done"}
    assert await gc_cli.run(parse(), runner) == 0
    out = capsys.readouterr().out
    assert (
        out
        == "gc: deleted 0 run(s) (0 keys, 0B) and 0 unreferenced blob(s); kept 5 run(s) and 0 blob(s)\n"
    )


async def test_gc_keeps_a_run_whose_lease_is_live_and_forgets_the_lease_of_a_removed_one() -> None:
    from blokrun.persistence.keys import lease_key

    async with Runner([mem("a")]) as runner:
        for rid in ("old", "busy"):
            await runner.run(wf(["a"]), {}, request_id=rid)
            await age(runner, rid, 30)
        ds = runner.datasources["a"]
        assert (await ds.read_lease(lease_key("old"))) is not None  # released, kept
        held = await ds.acquire_lease(lease_key("busy"), "someone-else", 60)
        assert held.owner == "someone-else"
        report = await runner.collect_garbage(completed_older_than=DAY)
        assert [r.request_id for r in report.runs] == ["old"]
        assert await ds.read_lease(lease_key("old")) is None
        assert await ds.load(head_key("busy")) is not None
