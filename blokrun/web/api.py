"""The dashboard's JSON API: the same data as its pages, and its actions.

Errors have the project's HTTP shape, ``{"error": "<message>", "type": "<class>"}``: 400
for bad input, 403 for a refused action (read-only, CSRF), 404 for an unknown run, 409 when
the run's state forbids it (driven elsewhere, dead-lettered, changed definition), 500 else.
Actions are the same operations as the CLI and the Python API, with the same checks.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from blokrun.errors import (
    ArgumentError,
    BlokrunError,
    ExpressionError,
    ResumeError,
    RunBusy,
    RunError,
    RunNotFound,
    WorkflowError,
)
from blokrun.lifecycle.runs import runs_by_id
from blokrun.web.views import counts, diff, run_detail, runs_page, shorten
from blokrun.workers.presence import read_workers

if TYPE_CHECKING:
    from blokrun.runner import Runner

__all__ = ["ApiError", "actions", "error_status", "read"]

log = logging.getLogger("blokrun.web")


class ApiError(Exception):
    """A refusal with its HTTP status (raised by the app's own checks)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_status(exc: BaseException) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, RunNotFound):
        return 404
    if isinstance(exc, ArgumentError | WorkflowError | ExpressionError | ValueError):
        return 400
    if isinstance(exc, RunBusy | ResumeError):
        return 409
    if isinstance(exc, RunError | BlokrunError):
        return 409
    return 500


def _number(params: Any, name: str, default: float | None = None) -> float | None:
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, f"{name}: expected a number, got {raw!r}") from None


async def read(runner: Runner, route: str, rid: str | None, params: Any) -> Any:
    """A read-only view: ``route`` is runs, run, state, diff, counts, gc or queue."""
    if route == "runs":
        raw_limit = _number(params, "limit", 50)
        limit = int(50 if raw_limit is None else raw_limit)
        if not 1 <= limit <= 500:
            raise ApiError(400, f"limit: expected 1 to 500, got {limit}")
        return await runs_page(
            runner,
            status=params.get("status") or None,
            workflow=params.get("workflow") or None,
            query=params.get("q") or None,
            since=_number(params, "since"),
            limit=limit,
            cursor=params.get("cursor") or None,
            tags=_tags(params),
        )
    if route == "counts":
        return await counts(runner)
    if route == "gc":
        report = await runner.collect_garbage(dry_run=True)
        return {"dry_run": True, "runs": [r.request_id for r in report.runs],
                "keys": report.keys_deleted, "bytes": report.bytes_deleted}  # fmt: skip
    if route == "queue":
        return await _queue(runner)
    if route == "statuses":
        return await _statuses(runner, params)
    assert rid is not None
    if route == "run":
        return run_detail(await runner.inspect(rid))
    if route == "state":
        seq = int(_number(params, "seq") or 0)
        info, state = await runner.state_at(rid, seq=seq)
        return {"seq": info.seq, "step": info.step, "vars": shorten(state)}
    if route == "diff":
        a, b = int(_number(params, "a") or 0), int(_number(params, "b") or 0)
        return await diff(runner, rid, a, b)
    raise ApiError(404, f"no view {route!r}")


#: Most runs one ``/api/statuses`` call looks up (a page of the runs table).
MAX_STATUSES = 200


async def _statuses(runner: Runner, params: Any) -> dict[str, Any]:
    """The current status of the runs named (``id=...`` repeated): what a page showing them
    polls -- one head read per run, whatever the number of runs stored."""
    ids = params.getlist("id") if hasattr(params, "getlist") else []
    if len(ids) > MAX_STATUSES:
        raise ApiError(400, f"id: at most {MAX_STATUSES} runs at once, got {len(ids)}")
    return {
        run.request_id: {
            "status": run.status,
            "step": run.stopped_at or run.last_done,
            "error": run.error,
            "updated_at": run.updated_at,
        }
        for run in await runs_by_id(runner.store, ids)
    }


async def _queue(runner: Runner) -> dict[str, Any]:
    """The queue's counts and the workers seen recently (what each drives and parks)."""
    try:
        queue = await runner.queue()
    except BlokrunError as exc:
        return {"configured": False, "why": str(exc)}
    stats = await queue.stats()
    ds = runner.queue_datasource
    workers = await read_workers(ds) if ds is not None else []
    return {
        "configured": True,
        "datasource": ds.name if ds is not None else None,
        "waiting": stats.waiting,
        "claimed": stats.claimed,
        "parked": sum(len(w.parked) for w in workers),
        "workers": [msgspec.structs.asdict(w) for w in workers],
    }


def _tags(params: Any) -> dict[str, str] | None:
    """``tag=k=v`` parameters (repeatable; an empty one is ignored)."""
    items = params.getlist("tag") if hasattr(params, "getlist") else [params.get("tag", "")]
    tags: dict[str, str] = {}
    for item in items:
        if not item:
            continue
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise ApiError(400, f"tag: expected key=value, got {item!r}")
        tags[key] = value
    return tags or None


def _sets(value: Any) -> dict[str, Any]:
    """``set`` as an object, or lines ``key=value`` (value JSON, else text)."""
    if isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for line in str(value or "").splitlines():
        if not line.strip():
            continue
        key, sep, raw = line.partition("=")
        if not sep or not key.strip():
            raise ApiError(400, f"set: expected key=value lines, got {line!r}")
        try:
            out[key.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[key.strip()] = raw
    return out


async def actions(runner: Runner, route: str, rid: str, body: Any) -> Any:
    """An action: ``resume`` (``from_step``, ``set``, ``dry_run``) or ``input``
    (``input``, ``token``): the run's outcome as the API returns it."""
    if route == "resume":
        from_step = body.get("from_step") or None
        if str(body.get("dry_run", "")).lower() in ("1", "true", "on", "yes"):
            plan = await runner.plan_resume(rid, from_step=from_step)
            return {"dry_run": True, "after": plan.after, "skip": list(plan.skip),
                    "run": list(plan.run), "attempt": plan.attempt}  # fmt: skip
        result = await runner.resume(rid, from_step=from_step, set_vars=_sets(body.get("set")))
    elif route == "input":
        value = body.get("input")
        if isinstance(value, str):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise ApiError(400, "input: expected JSON") from None
        result = await runner.resume(rid, input=value, token=str(body.get("token") or ""))
    else:
        raise ApiError(404, f"no action {route!r}")
    log.info("dashboard: %s of run %s ended %s", route, rid, result.status)
    return {"request_id": rid, "status": result.status, "steps_run": list(result.steps_run)}
