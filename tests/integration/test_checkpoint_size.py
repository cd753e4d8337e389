"""Checkpoints stay small: deltas with periodic snapshots, large values stored once."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest

from blokrun import Runner, StepFailed
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource
from blokrun.datasources.memory import MemoryStore
from blokrun.errors import ResumeError
from blokrun.persistence.codec import dumps_value
from blokrun.persistence.envelope import Envelope
from tests import records
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"
PLAIN = Envelope(compression="none")


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.writes: list[str] = []

    async def save(self, key: str, data: bytes, ttl: float | None = None) -> None:
        self.written += len(data)
        self.writes.append(key)
        await super().save(key, data, ttl)

    async def save_batch(self, entries: Sequence[tuple[str, bytes, float | None]]) -> None:
        self.written += sum(len(d) for _, d, _ in entries)
        self.writes.extend(k for k, _, _ in entries)
        await super().save_batch(entries)


def counting(name: str = "default") -> tuple[Datasource, CountingStore]:
    store = CountingStore()
    return Datasource(DatasourceSettings(name=name, type="memory"), store), store


def growing(steps: int, size: int) -> dict[str, Any]:
    return {
        "name": "growing",
        "steps": [
            {"name": f"s{i:03d}", "node": f"{NODE}:grow", "inputs": {"size": size}}
            for i in range(steps)
        ],
    }


async def test_a_200_step_run_accumulating_10_mb_writes_at_most_twice_what_it_produces() -> None:
    ds, store = counting()
    async with Runner([ds], envelope=PLAIN) as runner:  # no compression: the design alone
        result = await runner.run(growing(200, 50_000), request_id="grow-1")
    produced = len(dumps_value(result.vars))
    assert 9_500_000 < produced < 10_500_000
    ratio = store.written / produced
    print(f"produced {produced:,} B, wrote {store.written:,} B, ratio {ratio:.2f}")
    assert ratio <= 2.0, ratio
    # Full snapshots at every step would have written about N/2 times the final state.
    assert store.written < produced * 200 / 2 / 20


async def test_resume_rebuilds_the_state_from_a_snapshot_and_its_deltas() -> None:
    ds, _ = counting()
    wf = growing(30, 20_000)
    wf["steps"].insert(
        20,
        {
            "name": "forget",
            "node": f"{NODE}:drop",
            "inputs": {"names": ["chunk-s003", "chunk-s010"]},
        },
    )
    wfnodes.FAIL_AT.add("s025")
    wf["steps"][26]["node"] = f"{NODE}:add"  # s025 fails the first time
    async with Runner([ds], envelope=PLAIN) as runner:
        with pytest.raises(StepFailed):
            await runner.run(wf, request_id="rebuild-1")
        latest = await records.checkpoint(ds, "rebuild-1-s024", PLAIN)
        assert not latest.snapshot and latest.chain  # the latest checkpoint is a delta
        wfnodes.FAIL_AT.clear()
        resumed = await runner.resume("rebuild-1")
        fresh = await runner.run(wf, request_id="rebuild-2")  # the same run without a failure
    assert resumed.vars == fresh.vars
    assert "chunk-s003" not in resumed.vars and "chunk-s010" not in resumed.vars
    assert resumed.steps_skipped[-1] == "s024"


async def test_a_broken_delta_chain_falls_back_to_an_earlier_whole_checkpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds, _ = counting()
    wf = growing(10, 20_000)
    async with Runner([ds], envelope=PLAIN) as runner:
        await runner.run(wf, request_id="chain-1")
        latest = await records.checkpoint(ds, "chain-1-s009", PLAIN)
        assert not latest.snapshot and len(latest.chain) >= 2
        await ds.delete(latest.chain[1])  # lose a delta in the middle of the chain
        from blokrun.persistence.keys import head_key

        await ds.delete(head_key("chain-1"))
        with caplog.at_level(logging.WARNING, logger="blokrun"):
            result = await runner.resume("chain-1")
    assert latest.chain[1] in caplog.text  # never silently: the missing record is named
    # Steps after the last whole checkpoint ran again; the final state is right.
    fresh_ds, _ = counting()
    async with Runner([fresh_ds], envelope=PLAIN) as runner:
        expected = await runner.run(wf, request_id="chain-2")
    assert result.vars == expected.vars
    assert result.steps_run  # something had to run again


def big_wf(seed: int = 1, size: int = 300_000) -> dict[str, Any]:
    return {
        "name": "big",
        "steps": [
            {"name": "make", "node": f"{NODE}:big", "inputs": {"seed": seed, "size": size}},
            {"name": "a", "node": f"{NODE}:add", "inputs": {"n": 1}},
            {"name": "b", "node": f"{NODE}:add", "inputs": {"n": 2}},
            {"name": "c", "node": f"{NODE}:add", "inputs": {"n": 3}},
        ],
    }


async def test_a_large_value_is_written_once_and_restored_on_resume() -> None:
    ckpt, ckpt_store = counting()
    blobs, blob_store = counting("blobs")
    async with Runner(
        [ckpt, blobs], envelope=PLAIN, blob_datasource="blobs", blob_threshold=100_000
    ) as runner:
        wfnodes.FAIL_AT.add("c")
        with pytest.raises(StepFailed):
            await runner.run(big_wf(), request_id="blob-1")
        wfnodes.FAIL_AT.clear()
        result = await runner.resume("blob-1")
        await runner.run(big_wf(), request_id="blob-2")  # another run, the same large value
    blob_keys = [k for k in blob_store.writes if k.startswith("_blokrun.blob.")]
    assert len(blob_keys) == 1  # written once: not by later steps, not by the resume, not by run 2
    assert result.vars["make"] == wfnodes._text(1, 300_000)
    assert ckpt_store.written < 60_000  # checkpoints hold a reference, not 300 KB each


async def test_a_large_value_already_stored_by_another_process_is_not_written_again() -> None:
    blobs, blob_store = counting("blobs")
    for rid in ("p1", "p2"):  # two Runners = two processes' worth of caches
        async with Runner(
            [counting()[0], blobs], envelope=PLAIN, blob_datasource="blobs", blob_threshold=100_000
        ) as runner:
            await runner.run(big_wf(seed=7), request_id=rid)
    assert len([k for k in blob_store.writes if k.startswith("_blokrun.blob.")]) == 1


async def test_a_missing_blob_fails_the_resume_naming_the_value_and_the_blob() -> None:
    ckpt, _ = counting()
    blobs, blob_store = counting("blobs")
    async with Runner(
        [ckpt, blobs], envelope=PLAIN, blob_datasource="blobs", blob_threshold=100_000
    ) as runner:
        wfnodes.FAIL_AT.add("c")
        with pytest.raises(StepFailed):
            await runner.run(big_wf(), request_id="gone-1")
        wfnodes.FAIL_AT.clear()
        (blob,) = [k for k in blob_store.writes if k.startswith("_blokrun.blob.")]
        await blobs.delete(blob)
        with pytest.raises(ResumeError) as info:
            await runner.resume("gone-1")
    message = str(info.value)
    assert "vars.make" in message and blob in message and "missing" in message
