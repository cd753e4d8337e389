"""Decoding a large value (issue 18): the cyclic collector is paused while it is built and
restored after, whatever happens; what was built is moved to the oldest generation unless
the program froze objects of its own; and the tagged-type check still finds every tag."""

from __future__ import annotations

import datetime as dt
import gc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from blokrun.persistence import codec
from blokrun.persistence.codec import bulk_decoding, dumps_value, loads_value
from blokrun.persistence.records import (
    DEFAULT_ENVELOPE,
    CheckpointRecord,
    decode_record,
    encode_checkpoint,
)

BIG = 1 << 20


def records(n: int = 20_000) -> list[dict[str, Any]]:
    return [{"id": i, "sku": f"alpha-{i:05d}", "tags": ["beta", "gamma"]} for i in range(n)]


@pytest.fixture(autouse=True)
def collector() -> Iterator[None]:
    """Each test starts with the collector on and leaves it as it found it."""
    was = gc.isenabled()
    gc.enable()
    yield
    if gc.get_freeze_count():
        gc.unfreeze()
    if not was:
        gc.disable()


def test_paused_while_building_and_restored_after() -> None:
    with bulk_decoding(BIG):
        assert not gc.isenabled()
    assert gc.isenabled()
    with bulk_decoding(BIG - 1):  # small: nothing to gain
        assert gc.isenabled()


def test_restored_when_the_decode_fails() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        loads_value(b"[" + b"1," * BIG)
    assert gc.isenabled()


def test_a_collector_the_program_turned_off_stays_off() -> None:
    gc.disable()
    with bulk_decoding(BIG):
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_nested_decodes_restore_once() -> None:
    with bulk_decoding(BIG):
        with bulk_decoding(BIG):
            pass
        assert not gc.isenabled()  # the inner one did not turn it back on
    assert gc.isenabled()


@pytest.mark.skipif(not codec._PROMOTE, reason="promotion is off on this interpreter")
def test_what_was_built_is_in_the_oldest_generation() -> None:
    value = loads_value(dumps_value(records()))
    young = {id(o) for o in gc.get_objects(generation=0)}
    young |= {id(o) for o in gc.get_objects(generation=1)}
    assert id(value) not in young
    assert id(value[0]) not in young and id(value[-1]["tags"]) not in young


def test_objects_the_program_froze_stay_frozen() -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    loads_value(dumps_value(records()))
    assert gc.get_freeze_count() == frozen


@pytest.mark.skipif(not codec._PROMOTE, reason="promotion is off on this interpreter")
def test_no_young_collection_scans_a_decoded_checkpoint() -> None:
    """Neither while orjson builds the vars nor during the record checks after it."""
    key = "_blokrun.ckpt.r1/1/00000001"
    data = records()
    raw = encode_checkpoint(
        request_id="r1",
        workflow="w",
        version="1",
        definition_hash="x",
        step="make",
        seq=1,
        done=["make"],
        vars={"make": data},
        started_at=0.0,
        time=0.0,
        duration=0.0,
        attempt=1,
        key=key,
    )
    starts: list[int] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            starts.append(info["generation"])

    gc.collect()
    gc.callbacks.append(watch)
    try:
        rec = decode_record(raw, CheckpointRecord, envelope=DEFAULT_ENVELOPE, bind=key)
    finally:
        gc.callbacks.remove(watch)
    assert rec.vars == {"make": data}
    assert 0 not in starts  # no young collection ran over the values being built


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"$",
        b'"$blokrun"',
        b'$ "$blokrun"',
        b'"$blokrun',
        b'$"$blokrun"',
        b'{"price": "$5", "x": {"$blokrun": "date", "v": "2024-01-02"}}',
    ],
)
def test_tag_bytes_found_wherever_they_are(raw: bytes) -> None:
    assert codec._has_tag_bytes(raw) == (b'"$blokrun"' in raw)


def test_large_tagged_value_comes_back_as_it_went_in() -> None:
    value = [*records(), {"when": dt.date(2024, 1, 2), "price": "$5"}, {"s": {1, 2}}]
    raw = dumps_value(value)
    assert len(raw) >= BIG
    assert loads_value(raw) == value
    assert gc.isenabled()
