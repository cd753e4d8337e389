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
* ``renew(worker, request_ids, ttl)`` extends the worker's claims; it returns the ids it
  still held (a claim that expired and was taken by another worker is not renewed).
* ``ack(worker, request_id)`` removes the job; ``release(worker, request_id)`` puts it back
  without waiting for the claim to expire (a worker stopping, a run busy elsewhere).
* ``stats()`` counts waiting and claimed jobs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

from blokrun.datasources.registry import DRIVERS
from blokrun.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from blokrun.datasources import Datasource

__all__ = ["Claim", "Job", "Queue", "QueueStats", "can_hold_queue", "open_queue"]


class Job(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A run to start. ``document`` is the workflow as loaded (workers may run elsewhere)."""

    request_id: str
    workflow: str
    document: dict[str, Any]
    inputs: dict[str, Any]
    priority: int = 0
    enqueued_at: float = 0.0
    source: str = "<queue>"
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    #: the submitter's trace context (propagation headers; see blokrun.tracing)
    context: dict[str, str] = msgspec.field(default_factory=dict)


class Claim(msgspec.Struct, frozen=True):
    """A job handed to a worker. ``deliveries`` counts the claims, this one included."""

    job: Job
    deliveries: int


class QueueStats(msgspec.Struct, frozen=True):
    waiting: int
    claimed: int


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
