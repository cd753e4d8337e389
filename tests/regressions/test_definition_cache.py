"""The stored definition a resume reads is decoded once per stored bytes (``Locator``) and
compiled once per decoded record (``RunStore.load_stored``). A cache must never answer for
bytes it did not see: a definition record replaced after a warm resume (another document, a
lying hash, garbage) is judged exactly as a process that never saw the good one judges it.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from blokrun import Runner
from blokrun.config import DatasourceSettings
from blokrun.datasources import Datasource, build_datasource
from blokrun.errors import StepFailed
from blokrun.persistence.keys import definition_key
from blokrun.persistence.locate import Locator
from blokrun.persistence.records import DefinitionRecord, decode_record, encode_record
from blokrun.spec.loader import definition_hash
from tests.integration import wfnodes

NODE = "tests.integration.wfnodes"


def linear(n: int) -> dict[str, Any]:
    return {
        "name": "cached",
        "version": "1",
        "steps": [
            {"name": f"s{i}", "node": f"{NODE}:add", "inputs": {"n": i}} for i in range(1, n + 1)
        ],
    }


def calls(rid: str) -> list[str]:
    return [step for r, step in wfnodes.CALLS if r == rid]


async def _failed_runs(runner: Runner, ids: list[str]) -> str:
    """Runs of ``linear(3)`` failed at s2; the key of their (shared) definition record."""
    wfnodes.FAIL_AT.add("s2")
    try:
        for rid in ids:
            with pytest.raises(StepFailed):
                await runner.run(linear(3), request_id=rid)
    finally:
        wfnodes.FAIL_AT.clear()
    return definition_key(definition_hash(linear(3)))


def _tampered(kind: str, raw: bytes, key: str) -> bytes:
    good = decode_record(raw, DefinitionRecord, bind=key)
    if kind == "garbage":
        flipped = bytearray(raw)
        flipped[-5] ^= 0xFF
        return bytes(flipped)
    other = linear(3)
    other["steps"][2]["inputs"] = {"n": 300}  # s3 adds 300, not 3
    if kind == "lying-hash":  # another document under the good one's hash
        return encode_record(msgspec.structs.replace(good, document=other), bind=key)
    assert kind == "another-document"
    record = DefinitionRecord(definition_hash=definition_hash(other), document=other)
    return encode_record(record, bind=key)


async def _outcome(runner: Runner, rid: str) -> str:
    try:
        result = await runner.resume(rid)
    except Exception as exc:  # the outcome is compared, whatever it is
        return f"{type(exc).__name__}: {exc}"
    return f"completed: total={result.vars['total']} ran={calls(rid)}"


@pytest.mark.parametrize("kind", ["garbage", "lying-hash", "another-document"])
async def test_a_definition_replaced_after_a_warm_resume_is_judged_as_cold(kind: str) -> None:
    warm_ds = build_datasource(DatasourceSettings(name="default", type="memory"))
    cold_ds = build_datasource(DatasourceSettings(name="default", type="memory"))
    outcomes: dict[str, str] = {}
    for label, ds, warm in (("warm", warm_ds, True), ("cold", cold_ds, False)):
        async with Runner([ds]) as runner:
            rid = f"{label}-{kind}-b"
            key = await _failed_runs(runner, [f"{label}-{kind}-a", rid])
            if warm:  # the caches now hold the good record's bytes and its workflow
                assert (await runner.resume(f"{label}-{kind}-a")).vars["total"] == 6
            await _replace(ds, key, kind)
            outcomes[label] = (await _outcome(runner, rid)).replace(label, "<runner>")
    assert outcomes["warm"] == outcomes["cold"]
    # none of them is driven with the replaced document (s3 adding 300)
    assert outcomes["warm"].startswith("ResumeError") and "definition" in outcomes["warm"]


async def _replace(ds: Datasource, key: str, kind: str) -> None:
    raw = await ds.load(key)
    assert raw is not None
    await ds.save(key, _tampered(kind, raw, key))


async def test_the_cache_serves_every_run_of_a_definition_and_its_bytes_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Warm resumes of many runs decode the stored definition once; a definition of other
    bytes (another workflow) is decoded on its own."""
    seen: list[int] = []
    original = Locator.decode

    def counting(self: Locator, raw: bytes | None, cls: type[Any], *args: Any) -> Any:
        if cls is DefinitionRecord:
            seen.append(1)
        return original(self, raw, cls, *args)

    monkeypatch.setattr(Locator, "decode", counting)
    async with Runner([build_datasource(DatasourceSettings(name="default", type="memory"))]) as r:
        await _failed_runs(r, [f"many-{i}" for i in range(5)])
        for i in range(5):
            assert (await r.resume(f"many-{i}")).vars["total"] == 6
        assert len(seen) == 1
        other = linear(3)
        other["name"] = "other"
        wfnodes.FAIL_AT.add("s2")
        with pytest.raises(StepFailed):
            await r.run(other, request_id="other-1")
        wfnodes.FAIL_AT.clear()
        assert (await r.resume("other-1")).vars["total"] == 6
        assert len(seen) == 2
