"""Run lifecycle: find runs across the checkpoint datasources, resume the failed ones in bulk,
and collect the garbage old runs leave behind.

::

    page = await list_runs(store, status="failed", limit=50)
    outcomes = await resume_failed(store, runner.resume, concurrency=4)
    report = await collect_garbage(
        store, completed_older_than=7 * 86400, failed_older_than=30 * 86400, dry_run=True
    )

Every function takes a started :class:`~blokrun.persistence.store.RunStore` (``runner.store``;
the :class:`~blokrun.runner.Runner` has a method for each) and reads only what runs stored
(head records ``_blokrun.head.<id>``, checkpoints, blobs); nothing is kept in memory between
calls.
"""

from __future__ import annotations

from blokrun.lifecycle.gc import GcReport, GcRun, collect_garbage
from blokrun.lifecycle.recovery import ResumeOutcome, resume_failed
from blokrun.lifecycle.runs import RunPage, RunSummary, iter_runs, list_runs

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
