"""The queue contract: jobs (runs to start) waiting in a datasource, claimed by workers.

A **job** is a run to start: its request id, the workflow document, the inputs, a priority.
Workers **claim** jobs; a claim lasts ``ttl`` seconds and the worker renews it while the run
goes on (the run's own lease, in :mod:`blokrun.persistence.leases`, is what keeps two
processes from driving it; the claim is what hands it to a worker). A claim that is not
renewed -- the worker died -- expires, and the job is handed to another worker, which
resumes the run from its last checkpoint. When the run ends (completed, failed for good,
dead-lettered) the worker **acks** the job and it leaves the queue.

Rules every backend follows (``tests/contract/test_queue.py`` checks them):

* ``enqueue`` is idempotent by request id: a second job with the id of a job still in the
  queue (waiting or claimed) is not added, and ``enqueue`` returns ``False``.
* ``claim(worker, n, ttl)`` returns at most ``n`` jobs, highest ``priority`` first, then
  oldest first; each job goes to one worker at a time, also when many claim at once
  (``SKIP LOCKED``, consumer groups). A job whose claim expired is claimable again, with
  ``deliveries`` one higher.
* **Delayed jobs.** A job whose ``not_before`` (Unix seconds) is in the future is not handed
  out by ``claim`` until then; it waits, counted as ``delayed`` by ``stats()``, and ``holds``
  and ``enqueue``'s dedup see it like any other job. Among the claimable jobs the order is
  priority, then *age*: the time a job became claimable, i.e. when it was enqueued (or
  deferred) or its ``not_before`` if that is later -- a job due at 12:00 comes after one
  enqueued at 11:59 and before one enqueued at 12:01. An expired claim keeps its place.
* ``defer(worker, request_id, not_before)`` gives a claimed job back to be claimed again
  from ``not_before`` on (a run sleeping on a timer frees its slot). Only the worker
  holding the claim can defer (same rule as ``renew``), else it gets ``False``. A deferral
  is not a failed delivery: the next claim has ``deliveries == 1`` again and
  ``deferrals`` one higher (``deliveries`` counts the claims since the job was enqueued
  or last deferred; a claim with ``deferrals > 0`` is of a job that was claimed before).
* **Clocks.** "Now" is the backend's clock: the Redis server's ``TIME`` (inside the Lua
  scripts) and PostgreSQL's ``now()``, not the workers'; the memory queue's clock is
  ``time.time()`` of its process. ``not_before`` is compared with that clock as it is, so a
  client whose clock is ahead of the server's sees its delayed jobs claimed that much late
  (keep the machines on NTP; claim TTLs are not affected, they are relative).
* ``renew(worker, request_ids, ttl)`` extends the worker's claims; it returns the ids it
  still held (a claim that expired and was taken by another worker is not renewed).
* ``ack(worker, request_id)`` removes the job; ``release(worker, request_id)`` puts it back
  without waiting for the claim to expire (a worker stopping, a run busy elsewhere).
* ``stats()`` counts waiting (claimable now), claimed and delayed (not due yet) jobs.
"""

from __future__ import annotations

import importlib
import math
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

from blokrun.datasources.registry import DRIVERS
from blokrun.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from blokrun.datasources import Datasource

__all__ = [
    "MAX_NOT_BEFORE",
    "Claim",
    "Job",
    "Queue",
    "QueueStats",
    "can_hold_queue",
    "check_not_before",
    "open_queue",
]

#: The latest ``not_before`` a queue takes (9999-12-31, Unix seconds).
MAX_NOT_BEFORE = 253_402_300_799.0


class Job(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A run to start. ``document`` is the workflow as loaded (workers may run elsewhere).

    ``not_before`` (Unix seconds, the queue's clock) delays the job: it is not claimed
    before that time; ``0`` (or any time already past) means now. A claimed job is the job
    as enqueued: a deferral does not change its ``not_before`` here."""

    request_id: str
    workflow: str
    document: dict[str, Any]
    inputs: dict[str, Any]
    priority: int = 0
    enqueued_at: float = 0.0
    source: str = "<queue>"
    not_before: float = 0.0


class Claim(msgspec.Struct, frozen=True):
    """A job handed to a worker. ``deliveries`` counts the claims since the job was enqueued
    or last deferred, this one included; ``deferrals`` how often it was deferred (``> 0``:
    the job was claimed before, its run has started)."""

    job: Job
    deliveries: int
    deferrals: int = 0


class QueueStats(msgspec.Struct, frozen=True):
    """``waiting``: claimable now; ``claimed``: held by a worker; ``delayed``: not due yet."""

    waiting: int
    claimed: int
    delayed: int = 0


def check_not_before(not_before: float) -> float:
    """``not_before`` as a queue takes it: ``0.0`` for any time up to the epoch; a NaN, an
    infinity or a time past :data:`MAX_NOT_BEFORE` is a ``ValueError``."""
    if not math.isfinite(not_before) or not_before > MAX_NOT_BEFORE:
        raise ValueError(f"not_before {not_before!r}: expected Unix seconds up to year 9999")
    return max(0.0, float(not_before))


#: Backend module per datasource type; imported on first use.
def can_hold_queue(datasource: Datasource) -> bool:
    """Whether ``datasource``'s driver can keep the run queue (the driver table says)."""
    driver = DRIVERS.get(datasource.type)
    return driver is not None and driver.queue is not None


@runtime_checkable
class Queue(Protocol):
    """A queue of jobs kept in a datasource. See the module docstring for the rules."""

    async def setup(self) -> None:
        """Create what the backend needs (consumer group, table). Idempotent."""

    async def enqueue(self, job: Job) -> bool: ...

    async def claim(self, worker: str, n: int, ttl: float) -> list[Claim]: ...

    async def renew(self, worker: str, request_ids: Sequence[str], ttl: float) -> set[str]: ...

    async def ack(self, worker: str, request_id: str) -> None: ...

    async def release(self, worker: str, request_id: str) -> None: ...

    async def defer(self, worker: str, request_id: str, not_before: float) -> bool:
        """Give the claimed job of ``request_id`` back, claimable again from ``not_before``
        (Unix seconds, the queue's clock; a time past means at once). ``True`` if done;
        ``False`` if ``worker`` does not hold its claim (never claimed it, released, acked,
        or it expired and another worker took it). The next claim has ``deliveries == 1``
        and ``deferrals`` one higher: a deferral is not a failed delivery."""
        ...

    async def stats(self) -> QueueStats: ...

    async def holds(self, request_id: str) -> bool:
        """Whether the job of ``request_id`` is in the queue (waiting or claimed)."""
        ...


def open_queue(datasource: Datasource) -> Queue:
    """The queue kept in ``datasource`` (connected): its driver's queue backend."""
    driver = DRIVERS.get(datasource.type)
    if driver is None or driver.queue is None:
        able = [d.name for d in DRIVERS if d.queue is not None and d.name != "memory"]
        raise ConfigError(
            f"datasource {datasource.name!r} ({datasource.type}) cannot hold the run queue; "
            f"expected one of: {', '.join(able)} (BLOKRUN_QUEUE_DATASOURCE)",
            variable="BLOKRUN_QUEUE_DATASOURCE",
        )
    module_name, _, attr = driver.queue.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    queue: Queue = factory(datasource)
    return queue


encode_job = msgspec.json.Encoder().encode
decode_job = msgspec.json.Decoder(Job).decode
