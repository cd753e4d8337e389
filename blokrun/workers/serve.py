"""``await serve(runner, concurrency=16, stop=stop)``: be a worker inside a service."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from blokrun.errors import WorkflowError
from blokrun.workers.scheduler import Scheduler
from blokrun.workers.worker import Worker

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from typing import Any

    from blokrun.runner import Runner
    from blokrun.spec.loader import Workflow
    from blokrun.workers.worker import WorkerStats

__all__ = ["scheduled_workflows", "serve"]


def scheduled_workflows(
    runner: Runner, schedules: Sequence[str | Path | Mapping[str, Any] | Workflow]
) -> list[Workflow]:
    """Load ``schedules``; each must have a ``schedule`` (WorkflowError otherwise)."""
    scheduled = [runner.load(wf) for wf in schedules]
    for wf in scheduled:
        if wf.schedule is None:
            raise WorkflowError(
                "has no 'schedule' (a worker's --schedule needs one)", source=wf.source, path="$"
            )
    return scheduled


async def serve(
    runner: Runner,
    *,
    concurrency: int = 8,
    per_workflow: Mapping[str, int] | None = None,
    stop: anyio.Event | None = None,
    grace: float = 30.0,
    max_runs: int | None = None,
    schedules: Sequence[str | Path | Mapping[str, Any] | Workflow] = (),
    sleep_after: float | None = None,
) -> WorkerStats:
    """Run queued runs with ``runner``, ``concurrency`` at a time, until ``stop`` is set
    (or ``max_runs`` ended); what the worker did.

    ``per_workflow``: ``{workflow name: N}`` caps across every worker of the queue (slot
    leases in the queue's datasource; see :mod:`blokrun.workers.worker`). ``grace``:
    seconds running runs get to finish once ``stop`` is set, before they are cancelled.
    ``schedules``: workflows with a ``schedule`` this worker submits the due ticks of (give
    every worker the same; each tick runs once, see :mod:`blokrun.workers.scheduler`).
    ``sleep_after``: a timer step with more seconds left than this parks its run until it
    is due, freeing the slot (default: the claim TTL; see :mod:`blokrun.workers.worker`).
    """
    scheduled = scheduled_workflows(runner, schedules)
    worker = Worker(
        runner,
        await runner.queue(),
        concurrency=concurrency,
        per_workflow=per_workflow,
        claim_ttl=runner.lease_ttl or 30.0,
        grace=grace,
        sleep_after=sleep_after,
    )
    stop = stop or anyio.Event()
    watch = getattr(runner.tracing, "watch", None)  # queue gauges (blokrun.otel)
    async with anyio.create_task_group() as tg:
        if scheduled:
            tg.start_soon(Scheduler(runner, scheduled).run, stop)
        if watch is not None:
            tg.start_soon(watch, worker)
        await worker.serve(stop, max_runs=max_runs)
        tg.cancel_scope.cancel()
    return worker.stats
