"""Workers seen recently: each worker keeps a small record of itself beside the queue.

``_blokrun.worker.<name>`` in the queue's datasource, rewritten with every heartbeat (a
third of a claim's TTL) and expiring after three of them: who it is, when it last beat,
which runs it drives and which it keeps parked. A worker that stops deletes its record; one
that dies is forgotten when the record expires. Read by the dashboard.

On Redis the records are fields of one hash, ``_blokrun.workers`` (each with the time it
expires, dropped by the reader once past it): finding the workers is one ``HGETALL``, where
finding ``_blokrun.worker.*`` keys would ``SCAN`` the whole keyspace -- a cost that grows
with the runs stored, not with the workers.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import msgspec

from blokrun.errors import BlokrunError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from blokrun.datasources import Datasource

__all__ = ["WORKER_PREFIX", "WorkerPresence", "forget", "read_workers", "tell"]

log = logging.getLogger("blokrun.worker")

WORKER_PREFIX = "_blokrun.worker."


class WorkerPresence(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    host: str
    pid: int
    seen: float
    concurrency: int
    running: list[str]
    parked: list[str]
    #: when the record expires (Unix seconds; the Redis hash, which has no per-field TTL)
    until: float = 0.0


WORKERS_HASH = "_blokrun.workers"


def _redis(ds: Datasource) -> Any | None:
    """The redis-py client of a Redis datasource (None for any other driver)."""
    if ds.type != "redis":
        return None
    client = getattr(ds.store, "client", None)
    return client() if callable(client) else None


async def tell(
    ds: Datasource,
    name: str,
    *,
    concurrency: int,
    running: Sequence[str],
    parked: Sequence[str],
    ttl: float,
) -> None:
    """Write (or refresh) the worker's record; an outage is logged, not raised."""
    now = time.time()
    record = WorkerPresence(
        name=name,
        host=socket.gethostname(),
        pid=os.getpid(),
        seen=now,
        concurrency=concurrency,
        running=sorted(running),
        parked=sorted(parked),
        until=now + ttl,
    )
    try:
        client = _redis(ds)
        if client is None:
            await ds.save(WORKER_PREFIX + name, msgspec.json.encode(record), ttl)
        else:
            with ds.store.errors("worker presence"):  # type: ignore[attr-defined]
                await client.hset(
                    ds.settings.prefix + WORKERS_HASH, name, msgspec.json.encode(record)
                )
    except BlokrunError as exc:
        log.warning("worker %s: could not record itself: %s", name, exc)


async def forget(ds: Datasource, name: str) -> None:
    try:
        client = _redis(ds)
        if client is None:
            await ds.delete(WORKER_PREFIX + name)
        else:
            with ds.store.errors("worker presence"):  # type: ignore[attr-defined]
                await client.hdel(ds.settings.prefix + WORKERS_HASH, name)
    except BlokrunError as exc:  # it expires by itself
        log.warning("worker %s: could not remove its record: %s", name, exc)


async def read_workers(ds: Datasource) -> list[WorkerPresence]:
    """The workers whose record has not expired, by name (a damaged record is skipped)."""
    client = _redis(ds)
    if client is None:
        keys = await ds.keys(WORKER_PREFIX)
        stored = await ds.load_batch(keys)
    else:
        key = ds.settings.prefix + WORKERS_HASH
        with ds.store.errors("worker presence"):  # type: ignore[attr-defined]
            raw = await client.hgetall(key)
        stored = {k.decode("utf-8", "replace"): v for k, v in raw.items()}
    found = []
    now = time.time()
    gone = []
    for name, data in sorted(stored.items()):
        try:
            record = msgspec.json.decode(data, type=WorkerPresence)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("worker record %r cannot be read; skipped", name)
            continue
        if client is not None and record.until and record.until <= now:
            gone.append(name)  # a worker that died: its field outlived it
            continue
        found.append(record)
    if gone and client is not None:
        with ds.store.errors("worker presence"):  # type: ignore[attr-defined]
            await client.hdel(ds.settings.prefix + WORKERS_HASH, *gone)
    return found
