"""``await serve(runner, concurrency=16, stop=stop)``: be a worker inside a service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from blokrun.workers.worker import Worker

if TYPE_CHECKING:
    from collections.abc import Mapping

    import anyio

    from blokrun.runner import Runner
    from blokrun.workers.worker import WorkerStats

__all__ = ["serve"]


async def serve(
    runner: Runner,
    *,
    concurrency: int = 8,
    per_workflow: Mapping[str, int] | None = None,
    stop: anyio.Event | None = None,
    grace: float = 30.0,
    max_runs: int | None = None,
) -> WorkerStats:
    """Run queued runs with ``runner``, ``concurrency`` at a time, until ``stop`` is set
    (or ``max_runs`` ended); what the worker did.

    ``per_workflow``: ``{workflow name: N}`` caps across every worker of the queue (slot
    leases in the queue's datasource; see :mod:`blokrun.workers.worker`). ``grace``:
    seconds running runs get to finish once ``stop`` is set, before they are cancelled.
    """
    worker = Worker(
        runner,
        await runner.queue(),
        concurrency=concurrency,
        per_workflow=per_workflow,
        claim_ttl=runner.lease_ttl or 30.0,
        grace=grace,
    )
    await worker.serve(stop, max_runs=max_runs)
    return worker.stats
