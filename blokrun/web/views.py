"""What the dashboard shows, as plain data: one shape for the JSON API and the pages.

Nothing here renders HTML or reads a request; every value is JSON-safe. Datasource
settings (URLs, passwords) are never part of it: runs name their datasource only.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from blokrun.lifecycle.diff import diff_vars

if TYPE_CHECKING:
    from blokrun.lifecycle.runs import RunSummary
    from blokrun.persistence.history import RunInfo
    from blokrun.runner import Runner

__all__ = [
    "MAX_TEXT",
    "counts",
    "definition_steps",
    "diff",
    "run_detail",
    "run_row",
    "runs_page",
    "shorten",
]

#: Longest string shown whole in a state tree; longer ones are cut and their size given.
MAX_TEXT = 2000
#: Most items of a list or object shown in a state tree.
MAX_ITEMS = 200


def run_row(run: RunSummary) -> dict[str, Any]:
    return {
        "request_id": run.request_id,
        "workflow": run.workflow,
        "version": run.version,
        "status": run.status,
        "last_done": run.last_done,
        "stopped_at": run.stopped_at,
        "attempt": run.attempt,
        "started_at": run.started_at,
        "updated_at": run.updated_at,
        "error": run.error,
        "tags": dict(run.tags),
    }


async def runs_page(
    runner: Runner,
    *,
    status: str | None,
    workflow: str | None,
    query: str | None,
    since: float | None,
    limit: int,
    cursor: str | None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A page of runs, newest first; ``query`` keeps ids containing it; ``tags``: runs
    with every one of them."""
    page = await runner.list_runs(
        status=status,
        workflow=workflow,
        since=since,
        limit=limit,
        cursor=cursor,
        tags=tags,
        search=query or None,
    )
    return {"runs": [run_row(r) for r in page], "cursor": page.cursor}


async def counts(runner: Runner) -> dict[str, int]:
    """Runs per status (over every stored run; through the run index where there is one)."""
    return await runner.count_runs()


def shorten(value: Any, depth: int = 0) -> Any:
    """``value`` for display: long strings cut (with their size), long lists/objects cut."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return {"$truncated": value[:MAX_TEXT], "$size": len(value.encode("utf-8"))}
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k): shorten(v, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            out["$more"] = len(items) - MAX_ITEMS
        return out
    if isinstance(value, list | tuple):
        shown = [shorten(v, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            shown.append({"$more": len(value) - MAX_ITEMS})
        return shown
    return value


def _timeline(info: RunInfo) -> list[dict[str, Any]]:
    """One bar per stored step attempt: start and end (Unix seconds), attempt, status."""
    head = info.head
    bars = [
        {
            "step": c.step,
            "seq": c.seq,
            "attempt": c.attempt,
            "status": c.status,
            "start": c.time - c.duration,
            "end": c.time,
        }
        for c in info.checkpoints
    ]
    if head is not None and head.failed_step and head.status in ("failed", "dead"):
        bars.append(
            {
                "step": head.failed_step,
                "seq": None,
                "attempt": head.attempt,
                "status": "failed",
                "start": head.updated_at,
                "end": head.updated_at,
            }
        )
    return bars


def run_detail(info: RunInfo) -> dict[str, Any]:
    head = info.head
    lease = info.lease
    now = time.time()
    held = lease is not None and lease.expires_at > now and bool(lease.owner)
    return {
        "request_id": info.request_id,
        "status": info.status,
        "workflow": head.workflow if head else None,
        "version": head.version if head else None,
        "attempt": head.attempt if head else None,
        "error": head.error if head else None,
        "trace": head.trace if head else None,
        "failed_step": head.failed_step if head else None,
        "waiting_step": head.waiting_step if head else None,
        "wake_at": head.wake_at if head else None,
        "started_at": head.started_at if head else None,
        "updated_at": head.updated_at if head else None,
        "held_by": {"owner": lease.owner, "until": lease.expires_at} if held and lease else None,
        "parent": info.parent,
        "forked_from": info.forked_from,
        "children": [
            {"step": c.step, "request_id": c.request_id, "status": c.status} for c in info.children
        ],
        "checkpoints": [
            {
                "seq": c.seq,
                "step": c.step,
                "status": c.status,
                "attempt": c.attempt,
                "time": c.time,
                "duration": c.duration,
                "size": c.size,
            }
            for c in info.checkpoints
        ],
        "timeline": _timeline(info),
        "damaged": list(info.damaged),
        "disagreement": dict(info.disagreement),
    }


async def diff(runner: Runner, request_id: str, a: int, b: int) -> dict[str, Any]:
    _, old = await runner.state_at(request_id, seq=a)
    _, new = await runner.state_at(request_id, seq=b)
    return {"a": a, "b": b, "lines": diff_vars(old, new)}


async def definition_steps(runner: Runner, request_id: str) -> dict[str, dict[str, Any]]:
    """The run's stored definition, step by step (``{name: step}``): for the forms."""
    planner = runner.store.planner
    found = await planner.locate(request_id, None)
    wf, _ = await planner.workflow(request_id, found, None, False)
    return {s.name: dict(s.spec.inputs) | {"$node": s.spec.node} for s in wf.steps}
