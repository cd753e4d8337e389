"""The queue in process memory (the memory datasource): one process, for tests and embedding."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from anyio.lowlevel import checkpoint

from blokrun.queues.queue import Claim, Job, QueueStats

if TYPE_CHECKING:
    from collections.abc import Sequence

    from blokrun.datasources import Datasource

__all__ = ["MemoryQueue", "create"]


class MemoryQueue:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._claims: dict[str, tuple[str, float]] = {}  # request id -> (worker, until)
        self._deliveries: dict[str, int] = {}
        self._seq = 0
        self._order: dict[str, int] = {}

    async def setup(self) -> None:
        return None

    async def enqueue(self, job: Job) -> bool:
        await checkpoint()
        if job.request_id in self._jobs:
            return False
        self._seq += 1
        self._jobs[job.request_id] = job
        self._order[job.request_id] = self._seq
        return True

    def _free(self, rid: str, now: float) -> bool:
        claim = self._claims.get(rid)
        return claim is None or claim[1] <= now

    async def claim(self, worker: str, n: int, ttl: float) -> list[Claim]:
        await checkpoint()
        now = time.time()
        ready = [rid for rid in self._jobs if self._free(rid, now)]
        ready.sort(key=lambda rid: (-self._jobs[rid].priority, self._order[rid]))
        out = []
        for rid in ready[:n]:
            self._claims[rid] = (worker, now + ttl)
            self._deliveries[rid] = self._deliveries.get(rid, 0) + 1
            out.append(Claim(self._jobs[rid], self._deliveries[rid]))
        return out

    async def renew(self, worker: str, request_ids: Sequence[str], ttl: float) -> set[str]:
        now = time.time()
        held = set()
        for rid in request_ids:
            claim = self._claims.get(rid)
            if rid in self._jobs and claim is not None and claim[0] == worker:
                self._claims[rid] = (worker, now + ttl)
                held.add(rid)
        return held

    async def ack(self, worker: str, request_id: str) -> None:
        self._jobs.pop(request_id, None)
        self._claims.pop(request_id, None)
        self._order.pop(request_id, None)
        self._deliveries.pop(request_id, None)

    async def release(self, worker: str, request_id: str) -> None:
        claim = self._claims.get(request_id)
        if claim is not None and claim[0] == worker:
            del self._claims[request_id]

    async def holds(self, request_id: str) -> bool:
        return request_id in self._jobs

    async def stats(self) -> QueueStats:
        now = time.time()
        claimed = sum(1 for rid in self._jobs if not self._free(rid, now))
        return QueueStats(waiting=len(self._jobs) - claimed, claimed=claimed)


def create(datasource: Datasource) -> MemoryQueue:
    """One queue per memory store (kept on the store object, like its data)."""
    from blokrun.datasources.memory import MemoryStore

    store = datasource.store
    if not isinstance(store, MemoryStore):
        raise TypeError(f"not a memory store: {type(store).__name__}")
    queue = store.extras.get("queue")
    if not isinstance(queue, MemoryQueue):
        queue = MemoryQueue()
        store.extras["queue"] = queue
    return queue
