"""Workers seen recently: each worker keeps a small record of itself beside the queue.

``_blokrun.worker.<name>`` in the queue's datasource, rewritten with every heartbeat (a
third of a claim's TTL) and expiring after three of them: who it is, when it last beat,
which runs it drives and which it keeps parked. A worker that stops deletes its record; one
that dies is forgotten when the record expires. Read by the dashboard.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

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
    record = WorkerPresence(
        name=name,
        host=socket.gethostname(),
        pid=os.getpid(),
        seen=time.time(),
        concurrency=concurrency,
        running=sorted(running),
        parked=sorted(parked),
    )
    try:
        await ds.save(WORKER_PREFIX + name, msgspec.json.encode(record), ttl)
    except BlokrunError as exc:
        log.warning("worker %s: could not record itself: %s", name, exc)


async def forget(ds: Datasource, name: str) -> None:
    try:
        await ds.delete(WORKER_PREFIX + name)
    except BlokrunError as exc:  # it expires by itself
        log.warning("worker %s: could not remove its record: %s", name, exc)


async def read_workers(ds: Datasource) -> list[WorkerPresence]:
    """The workers whose record has not expired, by name (a damaged record is skipped)."""
    keys = await ds.keys(WORKER_PREFIX)
    found = []
    for key, raw in sorted((await ds.load_batch(keys)).items()):
        try:
            found.append(msgspec.json.decode(raw, type=WorkerPresence))
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("worker record %r cannot be read; skipped", key)
    return found
