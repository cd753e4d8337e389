"""Finding runs (list_runs), resuming the failed ones in bulk, and ``blokrun runs``."""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from blokrun import ArgumentError, Runner, StepFailed
from blokrun.cli import runs as runs_cli
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource
from blokrun.persistence.keys import head_key
from blokrun.persistence.records import HeadRecord
from tests import records
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"


def mem(name: str) -> Datasource:
    return build_datasource(DatasourceSettings(name=name, type="memory"))


def fs(name: str, path: Path) -> Datasource:
    return build_datasource(DatasourceSettings(name=name, type="filesystem", path=str(path)))


def wf(name: str, targets: list[str], steps: tuple[str, ...] = ("s1", "s2")) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1",
        "persistence": {"targets": targets},
        "steps": [{"name": s, "node": f"{NODE}:add", "inputs": {"n": 1}} for s in steps],
    }


async def read_head(ds: Datasource, rid: str) -> HeadRecord:
    return await records.head(ds, rid)


async def rewrite_head(ds: Datasource, rid: str, **changes: Any) -> None:
    await records.put_head(ds, msgspec.structs.replace(await read_head(ds, rid), **changes))


@pytest.fixture
async def runner(tmp_path: Path) -> Any:
    async with Runner([mem("a"), fs("b", tmp_path / "b")]) as r:
        yield r


async def make_runs(runner: Runner) -> list[str]:
    """25 runs: on 'a', on 'b' and on both; 5 of them failed; started 1 s apart (faked)."""
    rids = []
    for i in range(25):
        targets = [["a"], ["b"], ["a", "b"]][i % 3]
        name = "alpha" if i % 2 == 0 else "beta"
        rid = f"run-{i:02d}"
        if i % 5 == 4:
            wfnodes.FAIL_AT.add("s2")
            with pytest.raises(StepFailed):
                await runner.run(wf(name, targets), request_id=rid)
            wfnodes.FAIL_AT.clear()
        else:
            await runner.run(wf(name, targets), request_id=rid)
        for t in targets:  # distinct, known start times: run-00 oldest
            await rewrite_head(runner.datasources[t], rid, started_at=1_700_000_000.0 + i)
        rids.append(rid)
    return rids


async def test_lists_every_run_once_newest_first_with_filters(runner: Runner) -> None:
    rids = await make_runs(runner)
    page = await runner.list_runs()
    assert [r.request_id for r in page.runs] == rids[::-1]
    assert page.cursor is None
    both = next(r for r in page.runs if r.request_id == "run-02")
    assert both.datasources == ("a", "b")
    assert both.status == "completed" and both.workflow == "alpha" and both.last_done == "s2"
    failed = await runner.list_runs(status="failed")
    assert [r.request_id for r in failed.runs] == ["run-24", "run-19", "run-14", "run-09", "run-04"]
    assert all(
        r.failed_step == "s2" and "failed on purpose" in (r.error or "") for r in failed.runs
    )
    assert {r.status for r in (await runner.list_runs(status=["completed"])).runs} == {"completed"}
    beta = await runner.list_runs(workflow="beta")
    assert [r.request_id for r in beta.runs] == [f"run-{i:02d}" for i in range(23, 0, -2)]
    since = await runner.list_runs(since=1_700_000_020.0)
    assert [r.request_id for r in since.runs] == [f"run-{i:02d}" for i in range(24, 19, -1)]
    as_dt = await runner.list_runs(since=datetime.fromtimestamp(1_700_000_020, UTC))
    assert as_dt == since
    naive = datetime.fromtimestamp(1_700_000_020, UTC).replace(tzinfo=None)
    assert await runner.list_runs(since=naive) == since
    combined = await runner.list_runs(status="failed", workflow="alpha", since=1_700_000_010)
    assert [r.request_id for r in combined.runs] == ["run-24", "run-14"]


async def test_pages_are_stable_and_complete(runner: Runner) -> None:
    rids = await make_runs(runner)
    seen: list[str] = []
    cursor = None
    sizes = []
    while True:
        page = await runner.list_runs(limit=7, cursor=cursor)
        sizes.append(len(page.runs))
        seen += [r.request_id for r in page.runs]
        if page.cursor is None:
            break
        # a run started after the first page sorts before the cursor: later pages unchanged
        if len(sizes) == 1:
            await runner.run(wf("alpha", ["a"]), request_id="late-run")
        cursor = page.cursor
    assert sizes == [7, 7, 7, 4]
    assert seen == rids[::-1]
    first = await runner.list_runs(limit=7)
    assert first.runs[0].request_id == "late-run"
    exact = await runner.list_runs(limit=26)
    assert len(exact.runs) == 26 and exact.cursor is None


async def test_ties_on_started_at_are_ordered_by_request_id(runner: Runner) -> None:
    for rid in ("t-c", "t-a", "t-b"):
        await runner.run(wf("alpha", ["a"]), request_id=rid)
        await rewrite_head(runner.datasources["a"], rid, started_at=1_600_000_000.0)
    page1 = await runner.list_runs(limit=2)
    page2 = await runner.list_runs(limit=2, cursor=page1.cursor)
    assert [r.request_id for r in page1.runs + page2.runs] == ["t-a", "t-b", "t-c"]
    assert page2.cursor is None


async def test_most_advanced_head_wins_across_datasources(runner: Runner) -> None:
    await runner.run(wf("alpha", ["a", "b"]), request_id="dup")
    # 'b' kept a stale head (left behind, e.g. by an earlier failure)
    await rewrite_head(runner.datasources["b"], "dup", seq=1, status="failed", error="old")
    (run,) = (await runner.list_runs()).runs
    assert run.status == "completed" and run.seq == 2 and run.datasource == "a"
    assert (await runner.list_runs(status="failed")).runs == []
    # same seq: the later update wins
    head = await read_head(runner.datasources["a"], "dup")
    await rewrite_head(
        runner.datasources["b"], "dup", seq=2, status="failed", updated_at=head.updated_at + 5
    )
    (run,) = (await runner.list_runs()).runs
    assert run.status == "failed" and run.datasource == "b"


async def test_unreadable_heads_are_skipped_with_a_warning(
    runner: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    await runner.run(wf("alpha", ["a"]), request_id="good")
    await runner.datasources["a"].save(head_key("broken"), b"not a record")
    await runner.run(wf("alpha", ["b"]), request_id="other")
    raw = await runner.datasources["b"].load(head_key("other"))
    assert raw is not None
    await runner.datasources["b"].save(head_key("impostor"), raw)  # names another run
    with caplog.at_level(logging.WARNING, logger="blokrun.lifecycle"):
        page = await runner.list_runs()
        assert sorted(r.request_id for r in page.runs) == ["good", "other"]
        # heads written behind blokrun's back have no index row: a full scan finds them
        assert sorted([r.request_id async for r in runner.iter_runs()]) == ["good", "other"]
    assert "broken" in caplog.text and "impostor" in caplog.text
    # a run whose head became unreadable is skipped with a warning, and its index row kept:
    # once the head is readable again, the run is listed again
    good = await runner.datasources["a"].load(head_key("good"))
    assert good is not None
    await runner.datasources["a"].save(head_key("good"), good[:-3])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blokrun.lifecycle"):
        assert [r.request_id for r in await runner.list_runs()] == ["other"]
    assert "good" in caplog.text
    await runner.datasources["a"].save(head_key("good"), good)
    assert sorted(r.request_id for r in await runner.list_runs()) == ["good", "other"]


async def test_batches_of_heads_cover_every_run(runner: Runner) -> None:
    for i in range(7):
        await runner.run(wf("alpha", ["a", "b"] if i % 2 else ["b"]), request_id=f"b-{i}")
    found = [r.request_id async for r in runner.iter_runs(batch_size=2)]
    assert sorted(found) == [f"b-{i}" for i in range(7)]


async def test_bad_arguments_are_config_errors(runner: Runner) -> None:
    with pytest.raises(ArgumentError, match="invalid cursor"):
        await runner.list_runs(cursor="garbage!")
    with pytest.raises(ArgumentError, match="unknown run status 'done'"):
        await runner.list_runs(status="done")
    with pytest.raises(ArgumentError, match="limit"):
        await runner.list_runs(limit=0)
    with pytest.raises(ArgumentError, match="concurrency"):
        await runner.resume_failed(concurrency=0)


async def test_needs_a_started_runner(tmp_path: Path) -> None:
    from blokrun import BlokrunError

    with pytest.raises(BlokrunError, match="not started"):
        await Runner([mem("a")]).list_runs()


# -- resume_failed -----------------------------------------------------------------------------


def napping(name: str, failing: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1",
        "persistence": {"targets": ["a"]},
        "steps": [
            {"name": "s1", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": failing, "node": f"{NODE}:nap", "inputs": {"seconds": 0.05, "fail": True}},
            {"name": "s3", "node": f"{NODE}:add", "inputs": {"n": 1}},
        ],
    }


async def test_resume_failed_bounded_and_isolated(runner: Runner) -> None:
    await runner.run(wf("alpha", ["a"]), request_id="fine")  # completed: not touched
    wfnodes.FAIL_AT.update({"s2", "t2"})
    for i in range(5):
        with pytest.raises(StepFailed):
            await runner.run(napping("batch", "s2"), request_id=f"f-{i}")
    with pytest.raises(StepFailed):
        await runner.run(napping("stubborn", "t2"), request_id="f-stubborn")
    wfnodes.FAIL_AT.discard("s2")  # the cause of five failures is fixed; t2 still fails
    wfnodes.TIMES.clear()
    wfnodes.CALLS.clear()

    outcomes = await runner.resume_failed(concurrency=2)

    by_id = {o.request_id: o for o in outcomes}
    assert sorted(by_id) == ["f-0", "f-1", "f-2", "f-3", "f-4", "f-stubborn"]
    for i in range(5):
        o = by_id[f"f-{i}"]
        assert o.ok and o.status == "completed" and o.error is None
        assert o.steps_run == ("s2", "s3")
    bad = by_id["f-stubborn"]
    assert not bad.ok and bad.status == "failed" and bad.steps_run == ()
    assert bad.failed_step == "t2" and "t2 failed on purpose" in (bad.error or "")
    assert not any(rid == "fine" for rid, _ in wfnodes.CALLS)
    # never more than 2 resumes at once, and they did overlap
    spans = sorted(wfnodes.TIMES.values())
    assert len(spans) == 6
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap == 2
    statuses = {r.request_id: r.status for r in (await runner.list_runs()).runs}
    assert statuses["f-stubborn"] == "failed"
    assert all(statuses[f"f-{i}"] == "completed" for i in range(5))
    # the stubborn one again, alone, by workflow
    again = await runner.resume_failed(workflow="stubborn")
    assert [(o.request_id, o.ok) for o in again] == [("f-stubborn", False)]
    wfnodes.FAIL_AT.clear()
    assert await runner.resume_failed(workflow="batch") == []
    assert [o.ok for o in await runner.resume_failed(limit=1)] == [True]


async def test_resume_failed_limit_takes_the_newest(runner: Runner) -> None:
    wfnodes.FAIL_AT.add("s2")
    for i in range(3):
        with pytest.raises(StepFailed):
            await runner.run(wf("alpha", ["a"]), request_id=f"L-{i}")
        await rewrite_head(runner.datasources["a"], f"L-{i}", started_at=1_700_000_000.0 + i)
    wfnodes.FAIL_AT.clear()
    outcomes = await runner.resume_failed(limit=2)
    assert [o.request_id for o in outcomes] == ["L-2", "L-1"]
    assert all(o.ok for o in outcomes)


# -- CLI --------------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="blokrun")
    sub = parser.add_subparsers(dest="command", required=True)
    runs_cli.add_parser(sub)
    return parser.parse_args(["runs", *argv])


async def test_cli_table(runner: Runner, capsys: pytest.CaptureFixture[str]) -> None:
    await make_runs(runner)
    assert await runs_cli.run(parse("--limit", "3"), runner) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[:7] == [
        "REQUEST",
        "ID",
        "WORKFLOW",
        "STATUS",
        "LAST",
        "DONE",
        "STOPPED",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["run-24", "run-23", "run-22"]
    assert "failed" in lines[1] and "s2" in lines[1] and "failed on purpose" in lines[1]
    assert "2023-11-14 22:13:44" in lines[1]  # started_at 1_700_000_024 in UTC
    assert "--cursor " in err
    cursor = err.split("--cursor ", 1)[1].strip()
    assert await runs_cli.run(parse("--limit", "3", "--cursor", cursor), runner) == 0
    out, _ = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["run-21", "run-20", "run-19"]
    assert await runs_cli.run(parse("--status", "running"), runner) == 0
    empty = capsys.readouterr().out
    assert empty.startswith("(no runs in 'a' (memory), 'b' (filesystem /")


async def test_cli_json(runner: Runner, capsys: pytest.CaptureFixture[str]) -> None:
    await make_runs(runner)
    code = await runs_cli.run(parse("--json", "--status", "failed", "--workflow", "alpha"), runner)
    assert code == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["cursor"] is None
    assert [r["request_id"] for r in doc["runs"]] == ["run-24", "run-14", "run-04"]
    first = doc["runs"][0]
    assert first["status"] == "failed" and first["failed_step"] == "s2"
    assert first["started_at"] == 1_700_000_024.0 and first["datasources"] == ["a"]
    code = await runs_cli.run(parse("--json", "--search", "-1"), runner)
    assert code == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert [r["request_id"] for r in doc["runs"]] == [f"run-1{i}" for i in range(9, -1, -1)]
    code = await runs_cli.run(parse("--json", "--since", "2023-11-14T22:13:40Z"), runner)
    assert code == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert [r["request_id"] for r in doc["runs"]] == [
        "run-24",
        "run-23",
        "run-22",
        "run-21",
        "run-20",
    ]


async def test_cli_since_relative(runner: Runner, capsys: pytest.CaptureFixture[str]) -> None:
    await make_runs(runner)  # started in 2023
    await runner.run(wf("alpha", ["a"]), request_id="today")
    assert await runs_cli.run(parse("--json", "--since", "12h"), runner) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert [r["request_id"] for r in doc["runs"]] == ["today"]


@pytest.mark.parametrize("value", ["7x", "yesterday", "2024-13-01", "-3d", ""])
def test_cli_bad_since_exits_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(f"--since={value}")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --since" in err and "expected an age" in err


def test_cli_bad_limit_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("--limit", "0")
    assert exc.value.code == 2
    assert "argument --limit" in capsys.readouterr().err


def test_parse_since_forms() -> None:
    now = 1_000_000.0
    assert runs_cli.parse_since("7d", now=now) == now - 7 * 86400
    assert runs_cli.parse_since("12h", now=now) == now - 12 * 3600
    assert runs_cli.parse_since("30m", now=now) == now - 1800
    assert runs_cli.parse_since("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC).timestamp()
    assert (
        runs_cli.parse_since("2024-05-01T12:00:00")
        == datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()
    )
    assert (
        runs_cli.parse_since("2024-05-01T14:00:00+02:00")
        == datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()
    )


async def test_a_page_of_runs_iterates_and_every_run_comes_by_async_iteration(
    runner: Runner,
) -> None:
    for i in range(3):
        await runner.run(wf("alpha", ["a"]), request_id=f"it-{i}")
    page = await runner.runs(limit=2)
    assert len(page) == 2 and [r.request_id for r in page] == [r.request_id for r in page.runs]
    every = sorted([r.request_id async for r in runner.iter_runs()])
    assert every == ["it-0", "it-1", "it-2"]
