"""Driving an attempt of a run: the executor, the run store's recorder, the run's lease.

:class:`RunDriver` starts a run or resumes one. Either way it takes the run's lease (with
its fencing token), keeps it alive with a heartbeat beside the executor, hands the executor
the store's :class:`~blokrun.persistence.recorder.RunRecorder` as the first hook (then the
user's hooks), and returns how the attempt ended as a :class:`RunResult`. Checkpoints
written with durability ``async`` are saved in the same task group while the next step
runs, and flushed before the attempt ends.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from blokrun.errors import LeaseLost
from blokrun.execution.engine import Attempt, emit_end, run_attempt
from blokrun.persistence.planner import accept_input

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from blokrun.execution.hooks import Hook
    from blokrun.persistence.leases import Lease
    from blokrun.persistence.planner import Prepared, ResumePlan
    from blokrun.persistence.recorder import RunRecorder
    from blokrun.persistence.store import RunStore
    from blokrun.spec.loader import Workflow
    from blokrun.types import Durability, RunStatus

__all__ = ["RunDriver", "RunResult"]

log = logging.getLogger("blokrun")


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run (or a resume) ended."""

    request_id: str
    status: RunStatus
    vars: dict[str, Any]
    steps_run: tuple[str, ...]
    steps_skipped: tuple[str, ...]
    resumed: bool
    duration: float
    #: for a suspended run: the await-input step, the resume token (shown once), the prompt
    waiting_step: str | None = None
    token: str | None = None
    prompt: str | None = None


class RunDriver:
    """Runs and resumes workflows on a :class:`~blokrun.persistence.store.RunStore`.

    ``hooks``: the user's hooks, after the recorder in every run. ``durability``: for
    workflows that do not set ``persistence.durability``.
    """

    __slots__ = ("durability", "hooks", "store")

    def __init__(self, store: RunStore, hooks: Sequence[Hook], durability: Durability) -> None:
        self.store = store
        self.hooks = list(hooks)
        self.durability: Durability = durability

    def _hooks(self, recorder: RunRecorder) -> list[Hook]:
        return [recorder, *self.hooks] if recorder.targets else self.hooks

    async def run(self, wf: Workflow, inputs: Mapping[str, Any], request_id: str) -> RunResult:
        """Run ``wf`` from its first step as run ``request_id``."""
        started_at = time.time()
        attempt = Attempt(
            request_id=request_id, workflow=wf, vars=dict(inputs), started_at=started_at
        )
        lease = await self.store.acquire(request_id, wf)
        try:
            recorder = self.store.recorder(
                request_id=request_id,
                workflow=wf,
                inputs=inputs,
                started_at=started_at,
                durability=wf.durability or self.durability,
                lease=lease,
            )
            return await self._drive(attempt, recorder, lease)
        finally:
            if lease is not None:
                await self.store.release(lease)

    async def _drive(self, run: Attempt, recorder: RunRecorder, lease: Lease | None) -> RunResult:
        """Drive one attempt: the executor with the recorder first among the hooks, the
        lease's heartbeat beside it, write-behind saves in the same task group."""
        hooks = self._hooks(recorder)
        reads = self.store.reads
        started = time.perf_counter()
        skipped = tuple(run.done)
        if lease is None and recorder.durability != "async":
            outcome = await run_attempt(run, hooks=hooks, reader=reads)
        else:
            error: BaseException | None = None
            async with anyio.create_task_group() as tg:
                if lease is not None:
                    tg.start_soon(lease.heartbeat, tg.cancel_scope)
                recorder.background = tg  # write-behind saves; flushed by the run's end
                try:
                    outcome = await run_attempt(run, hooks=hooks, reader=reads)
                except BaseException as exc:  # re-raised below, outside the task group
                    error = exc
                finally:
                    recorder.background = None
                tg.cancel_scope.cancel()
            if lease is not None and lease.lost and not isinstance(error, LeaseLost):
                raise lease.lost_error() from error
            if error is not None:
                raise error
        suspension = outcome.suspension
        return RunResult(
            request_id=run.request_id,
            status="suspended" if suspension is not None else "completed",
            vars=run.vars,
            steps_run=tuple(run.steps_run),
            steps_skipped=skipped,
            resumed=run.resumed,
            duration=time.perf_counter() - started,
            waiting_step=suspension.step if suspension is not None else None,
            token=outcome.token,
            prompt=suspension.prompt if suspension is not None else None,
        )

    async def resume(
        self,
        request_id: str,
        given: Workflow | None,
        *,
        force: bool,
        from_step: str | None,
        set_vars: Mapping[str, Any] | None,
        input: Any,
        token: str | None,
    ) -> RunResult:
        """Continue ``request_id`` after its latest checkpoint (see ``Runner.resume``)."""
        store = self.store

        async def prepare() -> Prepared:
            return await store.planner.plan(
                request_id, given, force=force, from_step=from_step, set_vars=set_vars
            )

        prepared = await prepare()
        lease = await store.acquire(request_id, prepared.workflow)
        try:
            if lease is not None and not await store.planner.unchanged(lease, prepared.plan.head):
                # Another process moved the run on between our read and our lease: read again.
                prepared = await prepare()
            head = prepared.plan.head
            if head is not None and head.status not in ("completed", "suspended") and not force:
                # Only the lease holder may judge (and mark) a run dead: a run being driven
                # elsewhere gets RunBusy above, never a dead head over its live one.
                await store.check_dead_letter(prepared.workflow, head, lease)
            return await self._resume(prepared, lease, input, token)
        finally:
            if lease is not None:
                await store.release(lease)

    async def _resume(
        self, prepared: Prepared, lease: Lease | None, value: Any, token: str | None
    ) -> RunResult:
        plan = prepared.plan
        wf = prepared.workflow
        run = Attempt(
            request_id=plan.request_id,
            workflow=wf,
            vars=prepared.vars,
            started_at=prepared.started_at,
            attempt=prepared.attempt,
            resumed=True,
            done=prepared.done,
            provided=accept_input(prepared, value, token),
        )
        recorder = self.store.recorder(
            request_id=plan.request_id,
            workflow=wf,
            inputs=prepared.inputs,
            started_at=prepared.started_at,
            durability=wf.durability or self.durability,
            lease=lease,
            prepared=prepared,
        )
        if not plan.run:
            if plan.head_status != "completed":
                await emit_end(run, self._hooks(recorder), "completed")
            return RunResult(
                request_id=plan.request_id,
                status="completed",
                vars=run.vars,
                steps_run=(),
                steps_skipped=plan.skip,
                resumed=True,
                duration=0.0,
            )
        log.info(
            "resuming run %s after %s (%d steps done)",
            plan.request_id,
            plan.after or "its start",
            len(plan.skip),
        )
        return await self._drive(run, recorder, lease)

    async def plan(
        self, request_id: str, given: Workflow | None, *, force: bool, from_step: str | None
    ) -> ResumePlan:
        """What :meth:`resume` would do, without doing it."""
        prepared = await self.store.planner.plan(
            request_id, given, force=force, from_step=from_step
        )
        return prepared.plan
