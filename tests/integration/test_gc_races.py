"""gc never deletes what is in use (issue 13, classes 6 and 8): a blob a live run has just
referenced, a run being resumed, a run that changed between gc's listing and its delete; and
one unreadable record does not stop the blob sweep. On the filesystem, Redis and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest

from blokrun import Runner, StepFailed
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, create_store
from blokrun.lifecycle import gc as gc_module
from blokrun.persistence.keys import BLOB_PREFIX
from tests import records
from tests.integration import wfnodes

if TYPE_CHECKING:
    from blokrun.datasources import Store
    from tests.servers.base import ThrowawayServer

pytestmark = pytest.mark.parametrize("server", ["filesystem", "redis", "postgresql"], indirect=True)

NODE = "tests.integration.wfnodes"
DAY = 86400.0
OLD = {"completed_older_than": 7 * DAY, "failed_older_than": 7 * DAY}


def blob_wf(seed: int, *, gate: bool = False) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"name": "make", "node": f"{NODE}:big", "inputs": {"seed": seed, "size": 5000}},
        {"name": "after", "node": f"{NODE}:add", "inputs": {"n": 1}},
    ]
    if gate:
        steps.insert(1, {"name": "gate", "node": f"{NODE}:wait_gate"})
    return {"name": "blobby", "version": "1", "persistence": {"targets": ["a"]}, "steps": steps}


async def age(runner: Runner, rid: str, days: float) -> None:
    import msgspec

    ds = runner.datasources["a"]
    head = await records.head(ds, rid)
    await records.put_head(ds, msgspec.structs.replace(head, updated_at=time.time() - days * DAY))


class PausingStore:
    """Any driver's store, whose deletes of blobs wait for ``go`` once ``armed``."""

    armed = False

    def __init__(self, inner: Store, prefix: str) -> None:
        self._inner = inner
        self._prefix = prefix  # the datasource's: the store sees prefixed keys
        self.paused = anyio.Event()
        self.go = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def delete_batch(self, keys: Sequence[str]) -> int:
        cut = len(self._prefix)
        if self.armed and any(k[cut:].startswith(BLOB_PREFIX) for k in keys):
            self.armed = False
            self.paused.set()
            await self.go.wait()
        n: int = await self._inner.delete_batch(keys)
        return n


def settings(server: ThrowawayServer, name: str) -> DatasourceSettings:
    """``name`` on the server, under a prefix no other test uses."""
    return server.settings(name, prefix=f"gr{uuid.uuid4().hex[:8]}.")


def runner_with(server: ThrowawayServer, blobs: Datasource) -> Runner:
    return Runner([settings(server, "a"), blobs], blob_datasource="blobs", blob_threshold=1000)


async def test_a_blob_referenced_while_gc_deletes_it_survives(server: ThrowawayServer) -> None:
    blob_settings = settings(server, "blobs")
    store = PausingStore(create_store(blob_settings), blob_settings.prefix)
    blobs = Datasource(blob_settings, cast("Store", store))
    async with runner_with(server, blobs) as runner:
        await runner.run(blob_wf(1), request_id="old-1")
        await age(runner, "old-1", 10)  # gc will delete old-1, and its blob is unmarked
        store.armed = True
        report: list[Any] = []

        async def collect() -> None:
            report.append(await runner.collect_garbage(dry_run=False, **OLD))

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            with anyio.fail_after(10):
                await store.paused.wait()  # gc decided the blob is unmarked, about to delete
            # a new run produces the same value: the blob exists, so it only refers to it
            result = await runner.run(blob_wf(1), request_id="new-1")
            assert result.vars["make"] == wfnodes._text(1, 5000)
            store.go.set()
        assert report[0].runs_deleted == 1
        again = await runner.resume("new-1")  # completed: read back from its checkpoints
        assert again.vars["make"] == wfnodes._text(1, 5000)
        assert len(await blobs.keys(BLOB_PREFIX)) == 1


async def test_one_unreadable_record_does_not_stop_the_blob_sweep(
    server: ThrowawayServer,
) -> None:
    blob_settings = settings(server, "blobs")
    blobs = Datasource(blob_settings, create_store(blob_settings))
    async with runner_with(server, blobs) as runner:
        ds = runner.datasources["a"]
        for rid, seed in (("old-1", 1), ("old-2", 2), ("new-3", 3)):
            await runner.run(blob_wf(seed), request_id=rid)
        await age(runner, "old-1", 10)
        await age(runner, "old-2", 10)
        for rid in ("old-2", "new-3"):  # a corrupt checkpoint in a doomed and in a kept run
            key = (await records.checkpoint(ds, f"{rid}-after")).key
            raw = await ds.load(key) or b""
            await ds.save(key, raw[:-1] + bytes([raw[-1] ^ 0xFF]))
        await ds.save("_blokrun.blobref.bogus", b"not a mark")  # a malformed mark key
        report = await runner.collect_garbage(dry_run=False, **OLD)
        assert sorted(r.request_id for r in report.runs) == ["old-1", "old-2"]
        assert report.blobs_deleted == 2 and report.blobs_kept == 1  # new-3's stays
        assert any("old-2" in w for w in report.warnings)  # the unreadable record is named
        (left,) = await blobs.keys(BLOB_PREFIX)
        (mark,) = await blobs.keys("_blokrun.blobref.new-3/")
        assert left.removeprefix(BLOB_PREFIX) == mark.rpartition("/")[2]
        assert await blobs.keys("_blokrun.blobref.old-") == []  # the deleted runs' marks went
        leftover = [k for k in await ds.keys() if "old-" in k]
        assert leftover == [], (
            leftover
        )  # nothing of a deleted run stays, its damaged record included


async def test_gc_keeps_a_run_that_is_being_resumed(server: ThrowawayServer) -> None:
    a = settings(server, "a")
    wf = {
        "name": "held",
        "persistence": {"targets": ["a"]},
        "steps": [
            {"name": "s1", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "gate", "node": f"{NODE}:wait_gate"},
            {"name": "s3", "node": f"{NODE}:add", "inputs": {"n": 3}},
        ],
    }
    async with Runner([a]) as runner:
        wfnodes.FAIL_AT.add("gate")
        with pytest.raises(StepFailed):
            await runner.run(wf, {"total": 0}, request_id="busy-1")
        wfnodes.FAIL_AT.clear()
        await age(runner, "busy-1", 60)
        results: list[Any] = []

        async def resume() -> None:
            results.append(await runner.resume("busy-1"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(resume)
            with anyio.fail_after(10):
                await wfnodes.wait_for_gate_waiters(1)
            report = await runner.collect_garbage(dry_run=False, **OLD)
            wfnodes.GATE.set()
        assert report.runs_deleted == 0 and report.runs_kept == 1
        assert results[0].vars["total"] == 4
        info = await runner.inspect("busy-1")
        assert info.head is not None and info.head.status == "completed"


async def test_gc_keeps_a_run_resumed_between_its_listing_and_its_delete(
    server: ThrowawayServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = settings(server, "a")
    wf = {
        "name": "late",
        "persistence": {"targets": ["a"]},
        "steps": [{"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i}} for i in (1, 2)],
    }
    async with Runner([a]) as runner:
        wfnodes.FAIL_AT.add("s2")
        with pytest.raises(StepFailed):
            await runner.run(wf, {"total": 0}, request_id="late-1")
        wfnodes.FAIL_AT.clear()
        await age(runner, "late-1", 60)
        original = gc_module._collect_run

        async def resumed_first(state: Any, run: Any) -> Any:
            # gc listed the run as old and failed; it is resumed before gc takes its lease
            await runner.resume(run.request_id)
            return await original(state, run)

        monkeypatch.setattr(gc_module, "_collect_run", resumed_first)
        report = await runner.collect_garbage(dry_run=False, **OLD)
        assert report.runs_deleted == 0
        again = await runner.resume("late-1")
        assert again.vars["total"] == 3 and again.steps_run == ()
