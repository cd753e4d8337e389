"""A checkpointed step taken apart: the records blokrun writes for one step, written by a
bare loop straight onto the driver, fenced and not (issue 18's per-step bar).

``benchmarks.bars`` interleaves these runs with blokrun's and the floor's in the same
rounds, so the three ratios to the floor come from one run:

- **fenced**: per step, the bytes blokrun writes -- the checkpoint record (the whole state,
  sealed and compressed as blokrun seals it), the head record and the owned alias --
  through the driver's ``save_batch_fenced`` under a lease the loop took, on the driver's
  own path (Redis: one ``EVALSHA`` of the fenced script on the direct path; PostgreSQL: one
  fenced statement on the kept connection). No engine, recorder, group commit or
  datasource wrapper: what is left of blokrun is the encoding and the conditional write.
- **unfenced**: the same three records in one plain write on the same connection path
  (Redis: ``MSET``; PostgreSQL: the driver's plain multi-row upsert), no lease check and
  no owned alias -- a write no second process could be kept out of.

So ``blokrun - fenced`` is what blokrun's layers cost, and ``fenced - unfenced`` what the
conditional write costs on the server and in the client.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import orjson

from benchmarks.peers.common import VALUE
from blokrun.datasources.protocol import OWNED_MARK, RELEASE_ENTRY
from blokrun.persistence.keys import checkpoint_key, head_key, lease_key
from blokrun.persistence.records import (
    LAYOUT,
    AliasRecord,
    HeadRecord,
    encode_alias,
    encode_checkpoint,
    encode_record,
)

if TYPE_CHECKING:
    from blokrun import Runner
    from blokrun.datasources.protocol import Entry

__all__ = ["bare_run"]

_HASH = "0" * 64


async def bare_run(
    runner: Runner, driver: str, n: int, *, fenced: bool, request_id: str | None = None
) -> float:
    """Wall time of an N-step bare run (see the module); a new request id each run unless
    ``request_id`` is given."""
    ds = runner.datasources[driver]
    store: Any = ds.store
    prefix = ds.settings.prefix or ""
    envelope = runner.envelope
    rid = request_id or uuid4().hex
    t0 = time.perf_counter()
    lease = prefix + lease_key(rid)
    token = (await store.acquire_lease(lease, "bare", 30.0)).token if fenced else 0
    started = time.time()
    state: dict[str, Any] = {}
    done: list[str] = []
    for i in range(n):
        step, seq = f"s{i}", i + 1
        state[f"k{i}"] = VALUE  # the step: the floor's and blokrun's `set` of one entry
        done.append(step)
        key, head, alias = checkpoint_key(rid, 1, seq), head_key(rid), f"{rid}-{step}"
        record = encode_checkpoint(
            request_id=rid, workflow="bare", version="1", definition_hash=_HASH, step=step,
            seq=seq, done=done, vars=orjson.Fragment(orjson.dumps(state)),
            started_at=started, time=time.time(), duration=0.0, attempt=1, key=key,
            alias=alias, envelope=envelope,
        )  # fmt: skip
        pointer = HeadRecord(
            request_id=rid, workflow="bare", version="1", definition_hash=_HASH,
            status="completed" if seq == n else "running", seq=seq, last_done=step, key=key,
            started_at=started, updated_at=time.time(), high_seq=seq, layout=LAYOUT,
        )  # fmt: skip
        named = encode_alias(
            AliasRecord(request_id=rid, incarnation=1, seq=seq, step=step, key=key),
            envelope,
            key=alias,
        )
        sealed = encode_record(pointer, envelope, bind=head)
        if fenced:
            entries: list[Entry] = [
                (prefix + key, record, None),
                (prefix + head, sealed, None),
                (OWNED_MARK + prefix + alias, named, None),
            ]
            if seq == n:  # blokrun's last checkpoint ends its lease in the same write
                entries.append(RELEASE_ENTRY)
            if not await store.save_batch_fenced(entries, lease, token):
                raise AssertionError(f"bare run {rid}: its fence no longer holds")
        elif driver == "redis":  # the direct path the fenced script takes, one plain command
            command = ("MSET", prefix + key, record, prefix + head, sealed, prefix + alias, named)
            await store._direct(store.client(), command)
        else:
            await store.save_batch(
                [(prefix + key, record, None), (prefix + head, sealed, None),
                 (prefix + alias, named, None)]
            )  # fmt: skip
    return time.perf_counter() - t0
