"""Run lifecycle: find runs across the checkpoint datasources, resume the failed ones in bulk,
and collect the garbage old runs leave behind.

::

    page = await list_runs(runner, status="failed", limit=50)
    outcomes = await resume_failed(runner, concurrency=4)
    report = await collect_garbage(
        runner, completed_older_than=7 * 86400, failed_older_than=30 * 86400, dry_run=True
    )

Every function takes a started :class:`~blokrun.runner.Runner` and reads only what runs
stored (head records ``_blokrun.head.<id>``, checkpoints, blobs); nothing is kept in memory
between calls.
"""

from __future__ import annotations

from blokrun.lifecycle.gc import GcReport, GcRun, collect_garbage
from blokrun.lifecycle.runs import (
    ResumeOutcome,
    RunPage,
    RunSummary,
    iter_runs,
    list_runs,
    resume_failed,
)

__all__ = [
    "GcReport",
    "GcRun",
    "ResumeOutcome",
    "RunPage",
    "RunSummary",
    "collect_garbage",
    "iter_runs",
    "list_runs",
    "resume_failed",
]
