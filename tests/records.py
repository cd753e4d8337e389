"""Reading and writing a run's stored records in tests, through the internal key layout.

A run's checkpoints live under ``_blokrun.ckpt.<id>/<incarnation>/<seq>``; the user's key
pattern (``<id>-<step>`` by default) names an *alias* that points at the step's latest
checkpoint. Tests that look at what was stored go through these helpers, so they say what
they mean ("the checkpoint of step s1", "the head") rather than spelling keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blokrun.persistence.envelope import Envelope
from blokrun.persistence.keys import head_key, parse_checkpoint_key, runs_checkpoints_prefix
from blokrun.persistence.records import (
    DEFAULT_ENVELOPE,
    AliasRecord,
    CheckpointRecord,
    HeadRecord,
    decode_alias,
    decode_record,
    encode_record,
)

if TYPE_CHECKING:
    from blokrun.datasources import Datasource

__all__ = [
    "alias",
    "checkpoint",
    "checkpoint_keys",
    "checkpoints",
    "head",
    "load_checkpoint",
    "put_head",
]


async def head(
    ds: Datasource, request_id: str, envelope: Envelope = DEFAULT_ENVELOPE
) -> HeadRecord:
    key = head_key(request_id)
    raw = await ds.load(key)
    assert raw is not None, f"no head record for {request_id!r} on {ds.name}"
    return decode_record(raw, HeadRecord, bind=key, envelope=envelope)


async def put_head(
    ds: Datasource, record: HeadRecord, envelope: Envelope = DEFAULT_ENVELOPE
) -> None:
    key = head_key(record.request_id)
    await ds.save(key, encode_record(record, envelope, bind=key))


async def alias(
    ds: Datasource, key: str, envelope: Envelope = DEFAULT_ENVELOPE
) -> AliasRecord | None:
    """The alias stored under the user's ``key``, or ``None`` when there is none."""
    raw = await ds.load(key)
    if raw is None:
        return None
    return decode_alias(raw, datasource=ds.name, key=key, envelope=envelope)


async def load_checkpoint(
    ds: Datasource, key: str, envelope: Envelope = DEFAULT_ENVELOPE
) -> CheckpointRecord:
    """The checkpoint stored under the internal ``key``."""
    raw = await ds.load(key)
    assert raw is not None, f"no checkpoint under {key!r} on {ds.name}"
    return decode_record(raw, CheckpointRecord, bind=key, envelope=envelope)


async def checkpoint(
    ds: Datasource, user_key: str, envelope: Envelope = DEFAULT_ENVELOPE
) -> CheckpointRecord:
    """The checkpoint the alias ``user_key`` (e.g. ``"r1-s1"``) points at."""
    pointer = await alias(ds, user_key, envelope)
    assert pointer is not None, f"no alias {user_key!r} on {ds.name}"
    return await load_checkpoint(ds, pointer.key, envelope)


async def checkpoint_keys(
    ds: Datasource, request_id: str, incarnation: int | None = None
) -> list[str]:
    """The internal keys of the run's checkpoints, in sequence order."""
    prefix = runs_checkpoints_prefix(request_id, incarnation)
    found = [k for k in await ds.keys(prefix) if parse_checkpoint_key(k) is not None]
    return sorted(found, key=lambda k: (parse_checkpoint_key(k) or ("", 0, 0))[1:])


async def checkpoints(
    ds: Datasource,
    request_id: str,
    incarnation: int | None = None,
    envelope: Envelope = DEFAULT_ENVELOPE,
) -> list[CheckpointRecord]:
    """Every checkpoint of the run (of one incarnation, or all), in sequence order."""
    return [
        await load_checkpoint(ds, key, envelope)
        for key in await checkpoint_keys(ds, request_id, incarnation)
    ]
