"""Resuming the failed runs in bulk: every failed or interrupted run, a few at a time.

The resume itself is the runner's (passed in); this module finds the runs, bounds the
concurrency and reports one :class:`ResumeOutcome` per run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio

from blokrun.errors import ArgumentError, BlokrunError, RunError
from blokrun.lifecycle.runs import iter_runs, run_order

if TYPE_CHECKING:
    from blokrun.persistence.store import RunStore

__all__ = ["ResumeOutcome", "resume_failed"]

log = logging.getLogger("blokrun.lifecycle")


class Resumed(Protocol):
    """What a resume returns that the outcome reports."""

    @property
    def status(self) -> str: ...

    @property
    def steps_run(self) -> tuple[str, ...]: ...


Resume = Callable[[str], Awaitable[Resumed]]


@dataclass(frozen=True, slots=True)
class ResumeOutcome:
    """How resuming one run ended. On failure ``steps_run`` is empty and ``error`` says why
    (``failed_step`` names the step when a step failed again)."""

    request_id: str
    ok: bool
    status: str
    error: str | None
    steps_run: tuple[str, ...]
    failed_step: str | None = None


async def _resume_one(store: RunStore, resume: Resume, request_id: str) -> ResumeOutcome:
    try:
        result = await resume(request_id)
    except Exception as exc:  # one run's failure must not stop the others
        if isinstance(exc, BlokrunError):
            log.warning("resuming run %s failed: %s", request_id, exc)
        else:
            log.exception("resuming run %s failed unexpectedly", request_id)
        status = "failed"
        try:
            head = await store.head(request_id)
        except BlokrunError:
            head = None
        if head is not None:
            status = head.status
        step = exc.step if isinstance(exc, RunError) else None
        message = str(exc) or type(exc).__name__
        return ResumeOutcome(request_id, False, status, message, (), step)
    return ResumeOutcome(request_id, True, result.status, None, result.steps_run)


#: What resume_failed picks up: runs that failed, and runs whose process died mid-run.
_RESUMABLE = frozenset({"failed", "interrupted"})


async def resume_failed(
    store: RunStore,
    resume: Resume,
    *,
    workflow: str | None = None,
    concurrency: int = 4,
    limit: int | None = None,
) -> list[ResumeOutcome]:
    """Resume (with ``resume``, the runner's) every failed or interrupted run (of
    ``workflow`` if given), at most
    ``concurrency`` at once (interrupted: its process died and its lease ran out).

    Runs are taken newest first; ``limit`` caps how many. Each run's error is caught and
    reported in its :class:`ResumeOutcome` (``ok=False``), so one failure does not stop the
    others; outcomes come back in the order the runs were taken. Cancelled and dead-lettered
    runs are not failed runs and are left alone, and so are runs gc is deleting.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ArgumentError(
            f"concurrency {concurrency!r}: expected a whole number >= 1", argument="concurrency"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ArgumentError(f"limit {limit!r}: expected a whole number >= 0", argument="limit")
    failed = [
        run
        async for run in iter_runs(store)
        if run.status in ("failed", "interrupted")
        and not run.collecting  # gc is deleting it: never resumed
        and (workflow is None or run.workflow == workflow)
    ]
    failed.sort(key=run_order)
    if limit is not None:
        del failed[limit:]
    outcomes: list[ResumeOutcome | None] = [None] * len(failed)
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(index: int, request_id: str) -> None:
        async with limiter:
            outcomes[index] = await _resume_one(store, resume, request_id)

    async with anyio.create_task_group() as tg:
        for index, run in enumerate(failed):
            tg.start_soon(one, index, run.request_id)
    return [outcome for outcome in outcomes if outcome is not None]
