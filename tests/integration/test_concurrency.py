"""Many runs at once in one process, and memory that stays flat over many runs."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import pytest

from blokrun import Runner
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource
from blokrun.datasources.memory import MemoryStore
from blokrun.persistence.keys import CHECKPOINT_PREFIX, parse_checkpoint_key
from blokrun.persistence.records import (
    DEFAULT_ENVELOPE,
    CheckpointRecord,
    decode_alias,
    decode_record,
)

if TYPE_CHECKING:
    from tests.conftest import ServerPool

NODE = "tests.integration.wfnodes"


def workflow(n: int = 5) -> dict[str, Any]:
    return {
        "name": "many",
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i}} for i in range(1, n + 1)
        ],
    }


@pytest.mark.parametrize("kind", ["memory", "filesystem"])
async def test_100_runs_at_once_all_complete_and_keep_their_own_checkpoints(
    kind: str, tmp_path: Path
) -> None:
    settings = DatasourceSettings(
        name="default",
        type=kind,
        path=str(tmp_path / "ck") if kind == "filesystem" else None,
        fsync=False,
    )
    results: dict[str, int] = {}
    async with Runner([settings]) as runner:
        wf = runner.load(workflow())

        async def one(i: int) -> None:
            result = await runner.run(wf, {"total": i * 1000}, request_id=f"run-{i}")
            results[result.request_id] = result.vars["total"]

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(one, i)
        ds = runner.datasources["default"]
        await each_checkpoint_belongs_to_its_run(ds, 100)
    assert results == {f"run-{i}": i * 1000 + 15 for i in range(100)}


async def each_checkpoint_belongs_to_its_run(ds: Datasource, n: int) -> None:
    """``n`` runs of 5 steps: every checkpoint is there, under its run's own key, holds its
    run's values, and the alias of each step points at it."""
    keys = await ds.keys(CHECKPOINT_PREFIX)
    assert len(keys) == n * 5  # none lost
    stored = await ds.load_batch(keys)
    aliases = await ds.load_batch(await ds.keys("run-"))
    assert len(aliases) == n * 5
    for key, raw in stored.items():
        rec = decode_record(raw, CheckpointRecord, bind=key)  # sealed for this key
        assert parse_checkpoint_key(key) == (rec.request_id, 1, rec.seq)
        assert rec.vars["total"] == int(rec.request_id.split("-")[1]) * 1000 + sum(
            range(1, rec.seq + 1)
        )
        alias = f"{rec.request_id}-{rec.step}"
        pointer = decode_alias(
            aliases[alias], datasource=ds.name, key=alias, envelope=DEFAULT_ENVELOPE
        )
        assert pointer is not None and pointer.request_id == rec.request_id and pointer.key == key


class DiscardStore(MemoryStore):
    """Accepts every write and keeps nothing: what remains in memory is the runner's."""

    async def save(self, key: str, data: bytes, ttl: float | None = None) -> None:
        return None

    async def save_batch(self, entries: Sequence[tuple[str, bytes, float | None]]) -> None:
        return None

    async def release_lease(self, key: str, owner: str, token: int) -> None:
        self._leases.pop(key, None)  # a real store keeps a released lease; this one keeps nothing


@pytest.mark.slow
async def test_memory_stays_flat_over_10000_runs() -> None:
    ds = Datasource(DatasourceSettings(name="default", type="memory"), DiscardStore())
    async with Runner([ds]) as runner:
        wf = runner.load(workflow(3))
        for _ in range(500):  # warm up caches, pools and lazy imports
            await runner.run(wf, {"total": 0})
        gc.collect()
        before = len(gc.get_objects())
        for i in range(10_000):
            await runner.run(wf, {"total": i})
        gc.collect()
        after = len(gc.get_objects())
    assert after - before < 500, (before, after)  # nothing per run (10,000 runs)


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["redis", "postgresql"])
async def test_1000_concurrent_runs_on_a_network_datasource(
    driver: str, server_pool: ServerPool
) -> None:
    """1,000 runs at once, each with its lease, 5 fenced checkpoints and a head record,
    through one pool of connections: no error, nothing lost, nothing crossed."""
    n = 1000
    settings = server_pool.get(driver).settings(
        "default", prefix=f"c1k-{uuid4().hex[:8]}/", timeout=60.0
    )
    results: dict[str, int] = {}
    errors: list[BaseException] = []
    async with Runner([settings]) as runner:
        wf = runner.load(workflow())

        async def one(i: int) -> None:
            try:
                result = await runner.run(wf, {"total": i * 1000}, request_id=f"run-{i}")
                results[result.request_id] = result.vars["total"]
            except Exception as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        ds = runner.datasources["default"]
        await each_checkpoint_belongs_to_its_run(ds, n)
        heads = await ds.keys("_blokrun.head.")
        page = await runner.runs(status="completed", limit=n)
    assert errors == []
    assert results == {f"run-{i}": i * 1000 + 15 for i in range(n)}
    assert len(heads) == n
    assert len(page.runs) == n
