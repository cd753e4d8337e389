"""Corrupt, truncated and encrypted checkpoints, on every driver."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest

from blokrun import Runner, StepFailed
from blokrun.config import envelope_from_env
from blokrun.errors import FormatVersionError, ResumeError
from tests import records
from tests.integration import wfnodes
from tests.servers.base import ThrowawayServer

NODE = "tests.integration.wfnodes"


def linear(n: int) -> dict[str, Any]:
    return {
        "name": "integrity",
        "persistence": {"targets": ["store"]},
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i}} for i in range(1, n + 1)
        ],
    }


def calls(rid: str) -> list[str]:
    return [step for r, step in wfnodes.CALLS if r == rid]


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
async def test_a_damaged_latest_checkpoint_is_detected_and_the_previous_one_used(
    server: ThrowawayServer, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = server.settings("store", timeout=30.0)
    rid = f"dmg-{damage[0]}"
    wfnodes.FAIL_AT.add("s3")
    async with Runner([settings]) as runner:
        with pytest.raises(StepFailed):
            await runner.run(linear(3), {"total": 0}, request_id=rid)
        store = runner.datasources["store"]
        key = (await records.checkpoint(store, f"{rid}-s2")).key
        raw = await store.load(key)
        assert raw is not None
        if damage == "flipped byte":
            broken = bytearray(raw)
            broken[len(broken) // 2 + 5] ^= 0x40
            await store.save(key, bytes(broken))
        else:
            await store.save(key, raw[: len(raw) - 7])
        wfnodes.FAIL_AT.clear()
        caplog.set_level(logging.WARNING, logger="blokrun")
        result = await runner.resume(rid)
    assert result.vars["total"] == 6
    assert calls(rid) == ["s1", "s2", "s3", "s2", "s3"]  # s2 ran again: its checkpoint was bad
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert key in warned and ("checksum" in warned or "corrupt" in warned)


def key_b64(byte: int) -> str:
    return base64.b64encode(bytes([byte]) * 32).decode()


async def test_encrypted_checkpoints_round_trip_and_a_wrong_key_is_refused(tmp_path: Any) -> None:
    env = {
        "BLOKRUN_HOME": str(tmp_path),
        "BLOKRUN_ENCRYPTION_KEY": f"k1:{key_b64(1)}",
    }
    wfnodes.FAIL_AT.add("s3")
    async with Runner.from_env(env) as runner:
        with pytest.raises(StepFailed):
            await runner.run(
                linear(3) | {"persistence": {}},
                {"total": 0, "secret": "hunter2-plain"},
                request_id="enc-1",
            )
    stored = b"".join(p.read_bytes() for p in (tmp_path / "checkpoints").iterdir())
    assert b"hunter2-plain" not in stored  # nothing readable without the key

    wrong = env | {"BLOKRUN_ENCRYPTION_KEY": f"k1:{key_b64(2)}"}
    async with Runner.from_env(wrong) as runner:
        with pytest.raises(ResumeError) as info:
            await runner.resume("enc-1")
    assert "authentication failed" in str(info.value)

    # Rotation: a new active key, the old one kept for reading.
    rotated = env | {
        "BLOKRUN_ENCRYPTION_KEY": f"k2:{key_b64(3)}",
        "BLOKRUN_ENCRYPTION_OLD_KEYS": f"k1:{key_b64(1)}",
    }
    wfnodes.FAIL_AT.clear()
    async with Runner.from_env(rotated) as runner:
        result = await runner.resume("enc-1")
    assert result.vars["total"] == 6 and result.vars["secret"] == "hunter2-plain"
    assert envelope_from_env(rotated).encrypted


async def test_a_record_from_a_newer_blokrun_asks_for_an_upgrade(tmp_path: Any) -> None:
    from blokrun.persistence.keys import head_key

    async with Runner.from_env({"BLOKRUN_HOME": str(tmp_path)}) as runner:
        await runner.run(linear(1) | {"persistence": {}}, request_id="new-1")
        store = runner.datasources["default"]
        key = (await records.checkpoint(store, "new-1-s1")).key
        raw = bytearray(await store.load(key) or b"")
        raw[3] = 99  # format version
        await store.save(key, bytes(raw))
        await store.delete(head_key("new-1"))
        with pytest.raises(FormatVersionError, match="upgrade blokrun"):
            await runner.resume("new-1")


@pytest.mark.parametrize("server", ["filesystem", "redis", "postgresql"], indirect=True)
@pytest.mark.parametrize("damage", ["flipped", "deleted", "replayed", "replayed-encrypted"])
async def test_a_completed_run_whose_final_record_fails_never_reports_older_vars(
    server: ThrowawayServer, damage: str
) -> None:
    """Issue 13, class 3: the latest checkpoint of a completed run flipped, deleted, or
    replaced by an authentic older record of the same run copied under its key."""
    from blokrun.persistence.envelope import Envelope

    envelope = (
        Envelope(keys={"k1": bytes([7]) * 32}, active_key="k1")
        if damage.endswith("encrypted")
        else None
    )
    rid = f"final-{damage}-{server.settings('x').type}"
    async with Runner([server.settings("store")], envelope=envelope) as runner:
        done = await runner.run(linear(3), {"total": 0}, request_id=rid)
        assert done.vars["total"] == 6
        store = runner.datasources["store"]
        env = runner.envelope
        last = (await records.checkpoint(store, f"{rid}-s3", env)).key
        before = (await records.checkpoint(store, f"{rid}-s2", env)).key
        if damage == "flipped":
            raw = bytearray(await store.load(last) or b"")
            raw[len(raw) // 2] ^= 0x01
            await store.save(last, bytes(raw))
        elif damage == "deleted":
            await store.delete(last)
        else:  # an authentic record of the same run, one step older, under the latest key
            await store.save(last, await store.load(before) or b"")
        calls_before = len(wfnodes.CALLS)
        with pytest.raises(ResumeError) as info:
            await runner.resume(rid)
        assert last in str(info.value)
        assert len(wfnodes.CALLS) == calls_before  # nothing ran
