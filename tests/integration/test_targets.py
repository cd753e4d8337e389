"""Targets that diverge (issue 13, class 5): a run's datasources lose data, lag, or freeze.

Resume reads every target, takes the most advanced *verified* state and writes back what a
target lost (a logged repair); ``inspect`` and ``runs`` show targets that disagree; a
long-lived process never assumes what it wrote earlier is still there; a frozen datasource
(SIGSTOP, not just stopped) ends a run within one TIMEOUT plus a small bound.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # asyncpg ships no type hints
import pytest
import redis

from blokrun import CheckpointError, Runner
from blokrun.config import DatasourceSettings
from blokrun.datasources.postgresql import lease_table
from blokrun.persistence.keys import head_key
from tests import records
from tests.integration import wfnodes
from tests.servers.redis import RedisServer, launch

if TYPE_CHECKING:
    from tests.conftest import ServerPool

pytestmark = pytest.mark.server

NODE = "tests.integration.wfnodes"


def workflow(steps: int = 3, targets: tuple[str, ...] = ("local", "cache")) -> dict[str, object]:
    return {
        "name": "two-targets",
        "persistence": {"targets": list(targets)},
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i}}
            for i in range(1, steps + 1)
        ],
    }


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: it is frozen and emptied."""
    server = launch(tmp_path / "redis")
    try:
        yield server
    finally:
        pid = server._proc.pid if server._proc is not None else None
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        server.stop()


def flush(server: RedisServer) -> None:
    """Empty every database: a server that restarted with no persistence."""
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        client.flushall()
    finally:
        client.close()


def settings(tmp_path: Path, server: RedisServer, timeout: float = 5.0) -> list[DatasourceSettings]:
    return [
        DatasourceSettings(name="local", type="filesystem", path=str(tmp_path / "fs")),
        DatasourceSettings(name="cache", type="redis", url=server.url, timeout=timeout),
    ]


@dataclass
class Lossy:
    """The second target, named ``cache``, on a server that can lose everything it holds."""

    cache: DatasourceSettings
    lose_everything: Callable[[], Awaitable[None]]  # the server came back empty

    def targets(self, tmp_path: Path) -> list[DatasourceSettings]:
        local = DatasourceSettings(name="local", type="filesystem", path=str(tmp_path / "fs"))
        return [local, self.cache]


@pytest.fixture(params=["redis", "postgresql"])
def lossy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lossy]:
    if request.param == "redis":
        server = launch(tmp_path / "redis")
        cache = DatasourceSettings(name="cache", type="redis", url=server.url)

        async def flush_redis() -> None:
            flush(server)

        try:
            yield Lossy(cache, flush_redis)
        finally:
            server.stop()
        return
    pool: ServerPool = request.getfixturevalue("server_pool")
    table = f"lossy_{uuid.uuid4().hex[:8]}"
    cache = pool.get("postgresql").settings("cache", table=table)

    async def truncate() -> None:  # a database restored from an empty backup
        conn = await asyncpg.connect(cache.url)
        try:
            await conn.execute(f'TRUNCATE "{table}", "{lease_table(table)}"')
        finally:
            await conn.close()

    yield Lossy(cache, truncate)


async def test_a_target_that_lost_its_data_is_healed_by_resume(
    tmp_path: Path, lossy: Lossy
) -> None:
    async with Runner(lossy.targets(tmp_path)) as runner:
        done = await runner.run(workflow(), {"total": 0}, request_id="lost-1")
        assert done.vars["total"] == 6
        await lossy.lose_everything()  # came back empty: the filesystem copy is whole
        info = await runner.inspect("lost-1")
        assert info.datasource == "local" and len(info.checkpoints) == 3
        again = await runner.resume("lost-1")
        assert again.status == "completed" and again.vars["total"] == 6 and not again.steps_run
        # repaired: the lossy target holds the run again, and a resume from it alone works
        cache = runner.datasources["cache"]
        assert await cache.exists(head_key("lost-1"))
    async with Runner([lossy.cache]) as alone:
        result = await alone.resume("lost-1", workflow=workflow(targets=("cache",)), force=True)
        assert result.vars["total"] == 6
    assert wfnodes.CALLS.count(("lost-1", "s1")) <= 1


async def test_a_target_that_lost_its_data_mid_run_does_not_decide_the_resume(
    tmp_path: Path, lossy: Lossy
) -> None:
    wfnodes.FAIL_AT.add("s3")
    async with Runner(lossy.targets(tmp_path)) as runner:
        with pytest.raises(Exception, match="s3"):
            await runner.run(workflow(), {"total": 0}, request_id="lost-2")
        await lossy.lose_everything()
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("lost-2")
    assert result.vars["total"] == 6
    assert result.steps_run == ("s3",)  # s1 and s2 came from the filesystem's copy


async def test_a_long_lived_process_rewrites_the_definition_a_target_lost(
    tmp_path: Path, lossy: Lossy
) -> None:
    async with Runner(lossy.targets(tmp_path)) as runner:
        await runner.run(workflow(), {"total": 0}, request_id="before")
        await lossy.lose_everything()
        wfnodes.FAIL_AT.add("s2")
        with pytest.raises(Exception, match="s2"):
            await runner.run(workflow(), {"total": 0}, request_id="after")
        wfnodes.FAIL_AT.clear()
    # Only the lossy target configured: the run started after the loss resumes from it.
    async with Runner([lossy.cache, DatasourceSettings(name="local", type="memory")]) as other:
        result = await other.resume("after")
    assert result.vars["total"] == 6


async def test_inspect_and_runs_show_targets_that_disagree(tmp_path: Path, lossy: Lossy) -> None:
    async with Runner(lossy.targets(tmp_path)) as runner:
        await runner.run(workflow(), {"total": 0}, request_id="split-1")
        # The filesystem copy falls behind: its head says the run failed at s2.
        local = runner.datasources["local"]
        cache = runner.datasources["cache"]
        key = head_key("split-1")
        from blokrun.persistence.records import HeadRecord, decode_record, encode_record

        head = decode_record(await cache.load(key) or b"", HeadRecord, bind=key)
        import msgspec

        stale = msgspec.structs.replace(head, status="failed", error="boom", seq=2)
        await local.save(key, encode_record(stale, bind=key))
        info = await runner.inspect("split-1")
        assert set(info.disagreement) == {"local", "cache"}
        assert "failed" in info.disagreement["local"] and "completed" in info.disagreement["cache"]
        (summary,) = (await runner.list_runs()).runs
        assert summary.status == "completed" and set(summary.disagreement) == {"local", "cache"}
        report = await runner.repair("split-1")
        assert any("'local'" in line for line in report.repaired)
        assert not (await runner.inspect("split-1")).disagreement


async def test_a_frozen_datasource_ends_the_run_within_one_timeout(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    """SIGSTOP the checkpoint server during a step: the save times out once; the failure
    path (failure status, lease release) does not wait for the frozen server again."""
    assert own_redis._proc is not None
    pid = own_redis._proc.pid
    timeout = 1.0
    wf = {
        "name": "freeze",
        "persistence": {"targets": ["cache", "local"]},
        "steps": [
            {"name": "s1", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "freeze", "node": f"{NODE}:signal_pid", "inputs": {"pid": pid}},
            {"name": "s3", "node": f"{NODE}:add", "inputs": {"n": 3}},
        ],
    }
    async with Runner(settings(tmp_path, own_redis, timeout=timeout)) as runner:
        started = time.monotonic()
        try:
            with pytest.raises(CheckpointError) as info:
                await runner.run(wf, {"total": 0}, request_id="frozen-1")
            elapsed = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
    assert info.value.datasource == "cache"
    assert elapsed < timeout + 1.5, elapsed  # one TIMEOUT plus a small bound, not three
    time.sleep(0.5)  # a write the frozen server had buffered lands now, if any
    async with Runner(settings(tmp_path, own_redis)) as runner:
        stored = {
            name: await records.head(ds, "frozen-1") for name, ds in runner.datasources.items()
        }
        info_after = await runner.inspect("frozen-1")
        listed = {r.request_id: r for r in (await runner.list_runs()).runs}["frozen-1"]
        # What was reported (failed) is what every target says -- or the disagreement shows.
        statuses = {h.status for h in stored.values()}
        assert "completed" not in statuses  # s3 never ran
        if statuses != {"failed"}:
            assert set(info_after.disagreement) == set(stored)
            assert set(listed.disagreement) == set(stored)
        result = await runner.resume("frozen-1")
    assert result.vars["total"] == 4
    assert wfnodes.CALLS.count(("frozen-1", "s1")) == 1
    assert wfnodes.CALLS.count(("frozen-1", "freeze")) == 1


async def test_a_datasource_that_is_not_a_target_is_read_but_never_written(
    tmp_path: Path,
) -> None:
    """Resume and repair look for a run on every datasource, but copy it only onto the run's
    own targets: a datasource the workflow does not name gets nothing."""
    mine = DatasourceSettings(name="local", type="filesystem", path=str(tmp_path / "mine"))
    other = DatasourceSettings(name="other", type="filesystem", path=str(tmp_path / "other"))
    wf = workflow(targets=("local",))
    async with Runner([mine, other]) as runner:
        wfnodes.FAIL_AT.add("s3")
        with pytest.raises(Exception, match="s3"):
            await runner.run(wf, {"total": 0}, request_id="own-1")
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("own-1")  # no workflow given: found by looking everywhere
        assert result.vars["total"] == 6
        report = await runner.repair("own-1")
        assert report.repaired == ()
        assert await runner.datasources["other"].keys() == []
