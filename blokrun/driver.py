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

from blokrun.errors import LeaseLost, RunError, RunExists
from blokrun.execution.engine import Attempt, ChildRunner, emit_end, run_attempt
from blokrun.persistence.codec import dumps_value, loads_value
from blokrun.persistence.items import load_items
from blokrun.persistence.keys import head_key, items_prefix, timers_prefix
from blokrun.persistence.locate import first_keys
from blokrun.persistence.planner import accept_input
from blokrun.persistence.recorder import RETRY_BOUND
from blokrun.persistence.timers import load_timers

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from blokrun.execution.hooks import Hook
    from blokrun.persistence.leases import Lease
    from blokrun.persistence.locate import FoundRun
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
    #: ``run`` found this request id completed with the same workflow and inputs: nothing
    #: ran, ``vars`` are the stored final vars
    existing: bool = False
    #: a sleeping run (status "sleeping", on workers): when its timer wakes (Unix seconds)
    wake_at: float | None = None


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
        """The hooks of one attempt: a copy, so a hook added meanwhile (``add_hook``) joins
        the runs started after it, as documented, not this one half-way."""
        if not recorder.targets:
            return list(self.hooks)
        first = [hook for hook in self.hooks if hook.first]
        return [*first, recorder, *(hook for hook in self.hooks if not hook.first)]

    async def run(
        self,
        wf: Workflow,
        inputs: Mapping[str, Any],
        request_id: str,
        *,
        restart: bool = False,
        parent: str | None = None,
        park_after: float | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run ``wf`` from its first step as run ``request_id``.

        A request id names one run. If run ``request_id`` exists: completed with the same
        workflow and inputs, its stored result is returned and nothing runs; otherwise
        :class:`~blokrun.errors.RunExists` -- unless ``restart``, which starts it over as a
        new incarnation (the old one's records are never read by it).
        """
        # the lease datasource's part of the existence check is read with the lease, and
        # where the driver can, a new run's start record is written with it too
        folded = self._folded(wf, inputs, request_id, parent, tags)
        lease = await self.store.acquire(
            request_id,
            wf,
            first_keys(request_id) if wf.targets else (),
            folded.start_batch() if folded is not None else (),
        )
        recorder: RunRecorder | None = None
        try:
            if folded is not None and lease is not None and lease.wrote:
                # the id was free and the run's start is stored: no run to find
                folded.held(lease)
                recorder = folded
            else:
                # a new id costs one read per target, not a key scan; a run lost but for
                # stray checkpoints is never mixed with this one (another start time)
                found = (
                    await self.store.planner.find(request_id, wf, scan=False, lease=lease)
                    if wf.targets  # nothing of a run without persistence is ever stored
                    else None
                )
                incarnation = 1
                if found is not None:
                    if not restart:
                        return await self._existing(found, wf, inputs)
                    incarnation = max(v.incarnation for v in found.views) + 1
                    self.store.planner.check_encryption(found)
                recorder = self._new_recorder(
                    wf, inputs, request_id, parent, tags, lease=lease, incarnation=incarnation
                )
            attempt = Attempt(
                request_id=request_id,
                workflow=wf,
                vars=dict(inputs),
                started_at=recorder.started_at,
                park_after=park_after,
            )
            return await self._drive(attempt, recorder, lease)
        finally:
            if lease is not None:
                await self._release(lease, recorder)

    def _new_recorder(
        self,
        wf: Workflow,
        inputs: Mapping[str, Any],
        request_id: str,
        parent: str | None,
        tags: Mapping[str, str] | None,
        *,
        lease: Lease | None,
        incarnation: int = 1,
    ) -> RunRecorder:
        """The recorder of a new run (of ``incarnation``), starting now."""
        return self.store.recorder(
            request_id=request_id,
            workflow=wf,
            inputs=inputs,
            started_at=time.time(),
            durability=wf.durability or self.durability,
            lease=lease,
            incarnation=incarnation,
            parent=parent,
            tags=tags,
        )

    def _folded(
        self,
        wf: Workflow,
        inputs: Mapping[str, Any],
        request_id: str,
        parent: str | None,
        tags: Mapping[str, str] | None,
    ) -> RunRecorder | None:
        """The recorder of a new run whose start record can be written with its lease
        (``RunStore.writes_with_lease``), or ``None``. Not when a hook runs before the
        recorder: it may fill the head's trace context at the run's start."""
        if not wf.targets or any(hook.first for hook in self.hooks):
            return None
        if not self.store.writes_with_lease(wf):
            return None
        return self._new_recorder(wf, inputs, request_id, parent, tags, lease=None)

    async def fork(
        self,
        source_id: str,
        request_id: str,
        given: Workflow | None,
        *,
        from_step: str | None,
        set_vars: Mapping[str, Any] | None,
        force: bool,
    ) -> RunResult:
        """Start run ``request_id`` from a checkpoint of run ``source_id``: the state before
        ``from_step`` ran (or its latest), with ``set_vars`` applied. The source run's
        record is only read; the fork is a run of its own (its first checkpoint holds the
        state it started from, marked "forked")."""
        if request_id == source_id:
            raise RunExists("a fork needs a new request id", request_id=request_id)
        state = await self.store.planner.plan(
            source_id, given, force=force, from_step=from_step, set_vars=set_vars
        )
        wf = state.workflow
        lease = await self.store.acquire(
            request_id, wf, first_keys(request_id) if wf.targets else ()
        )
        recorder: RunRecorder | None = None
        try:
            if wf.targets and await self.store.planner.find(
                request_id, wf, scan=False, lease=lease
            ):
                raise RunExists(
                    "exists: a fork starts a new run; choose another request id",
                    request_id=request_id,
                )
            started_at = time.time()
            attempt = Attempt(
                request_id=request_id,
                workflow=wf,
                vars=state.vars,
                started_at=started_at,
                done=list(state.done),
            )
            # with no step done, the fork's start record holds its (edited) vars as inputs
            inputs = state.inputs if state.done else dict(state.vars)
            recorder = self.store.recorder(
                request_id=request_id,
                workflow=wf,
                inputs=inputs,
                started_at=started_at,
                durability=wf.durability or self.durability,
                lease=lease,
                fork_of=(source_id, state),
            )
            log.info(
                "forking run %s as %s after %s (%d steps done)",
                source_id,
                request_id,
                state.plan.after or "its start",
                len(state.done),
            )
            return await self._drive(attempt, recorder, lease)
        finally:
            if lease is not None:
                await self._release(lease, recorder)

    def _children(self, parent: str) -> ChildRunner:
        """How run ``parent`` runs its sub-workflow steps: each as a run of its own, under
        an id derived from the parent's. A resumed parent finds its child: completed with
        the same inputs, its stored result (nothing runs); started and not finished, it is
        resumed; completed with other inputs (the parent's vars were edited), started
        over as a new incarnation."""

        async def child(wf: Workflow, request_id: str, inputs: dict[str, Any]) -> dict[str, Any]:
            try:
                result = await self.run(wf, inputs, request_id, parent=parent)
            except RunExists:
                found = await self.store.planner.find(request_id, wf, scan=False)
                head = found.head if found is not None else None
                started_by = found.run.parent if found is not None and found.run else None
                if started_by != parent:  # a run of its own that happens to have this id
                    raise RunExists(
                        f"the id of run {parent}'s child is taken by another run (started "
                        f"by {started_by or 'nobody: not a child run'}); it is left as it is",
                        request_id=request_id,
                    ) from None
                if head is not None and head.status == "completed":
                    result = await self.run(wf, inputs, request_id, restart=True, parent=parent)
                else:
                    result = await self.resume(
                        request_id,
                        None,
                        force=False,
                        from_step=None,
                        set_vars=None,
                        input=None,
                        token=None,
                    )
            if result.status == "suspended":
                raise RunError(
                    f"suspended at step {result.waiting_step!r} (waiting for input): answer it "
                    f"with blokrun resume {request_id} --input '<JSON>' --token {result.token}, "
                    f"then resume {parent}",
                    request_id=request_id,
                )
            return result.vars

        return child

    async def _release(self, lease: Lease, recorder: RunRecorder | None) -> None:
        """Release the lease. If its datasource could not be reached during the run, it is
        tried for at most ``RETRY_BOUND`` seconds and otherwise left to expire (or to be
        taken over by this store on its next try): a frozen datasource costs the run one
        timeout plus a small bound, not one timeout more."""
        if recorder is not None and lease.datasource.name in recorder.unreachable:
            deadline = recorder.retry_deadline or anyio.current_time() + RETRY_BOUND
            await self.store.release(lease, deadline=deadline)
            return
        await self.store.release(lease)

    async def _existing(
        self, found: FoundRun, wf: Workflow, inputs: Mapping[str, Any]
    ) -> RunResult:
        """``run`` of an id that exists: its stored result, or :class:`RunExists`."""
        rid = found.request_id
        head = found.head
        stored = found.run
        same_inputs = stored is not None and stored.inputs == loads_value(dumps_value(dict(inputs)))
        if head is None or head.workflow != wf.name:
            what = f"a run of workflow {head.workflow!r}" if head is not None else "records"
            raise RunExists(
                f"exists ({what} under this id); use another request id, or start it over "
                "with restart (blokrun run ... --restart)",
                request_id=rid,
            )
        same_definition = head.definition_hash == wf.definition_hash
        if head.status == "completed" and same_inputs and same_definition:
            prepared = await self.store.planner.plan(rid, None)
            return RunResult(
                request_id=rid,
                status="completed",
                vars=prepared.vars,
                steps_run=(),
                steps_skipped=prepared.plan.skip,
                resumed=False,
                duration=0.0,
                existing=True,
            )
        status = "interrupted" if head.status == "running" else head.status
        if head.status == "completed":
            why = (
                "completed with other inputs"
                if same_definition
                else ("completed with another definition of the workflow")
            )
        else:
            step = head.failed_step or head.waiting_step or head.last_done
            why = status + (f" at step {step!r}" if step else "")
        raise RunExists(
            f"exists ({why}); continue it with 'blokrun resume {rid}', or start it over "
            "with restart (blokrun run ... --restart: a new incarnation, the old records "
            "are kept apart)",
            request_id=rid,
        )

    async def _drive(self, run: Attempt, recorder: RunRecorder, lease: Lease | None) -> RunResult:
        """Drive one attempt (see :meth:`_attempt`); a failure says whether anything of the
        run is checkpointed, so the CLI does not promise what is not there."""
        try:
            return await self._attempt(run, recorder, lease)
        except RunError as exc:
            exc.checkpointed = recorder.position.last_seq > 0
            raise

    async def _attempt(self, run: Attempt, recorder: RunRecorder, lease: Lease | None) -> RunResult:
        """The executor with the recorder first among the hooks, the lease's heartbeat
        beside it, write-behind saves in the same task group."""
        hooks = self._hooks(recorder)
        recorder.context = run.context  # filled by tracing hooks, kept on the run's head
        reads = self.store.reads
        if run.children is None:
            run.children = self._children(run.request_id)
        started = time.perf_counter()
        skipped = tuple(run.done)
        if lease is None and recorder.durability != "async":
            outcome = await run_attempt(run, hooks=hooks, reader=reads)
        else:
            error: BaseException | None = None
            async with anyio.create_task_group() as tg:
                beat = lease.keep(tg) if lease is not None else None
                recorder.background = tg  # write-behind saves; flushed by the run's end
                try:
                    outcome = await run_attempt(run, hooks=hooks, reader=reads)
                except BaseException as exc:  # re-raised below, outside the task group
                    error = exc
                finally:
                    recorder.background = None
                    if beat is not None:
                        beat.cancel()  # the heartbeat's timer, if it has not started it
                if lease is not None and lease.beating:
                    tg.cancel_scope.cancel()  # the heartbeat (the saves are done by now)
            if lease is not None and lease.lost and not isinstance(error, LeaseLost):
                raise lease.lost_error() from error
            if error is not None:
                raise error
        suspension = outcome.suspension
        return RunResult(
            request_id=run.request_id,
            status=outcome.status if outcome.status != "cancelled" else "completed",
            vars=run.vars,
            steps_run=tuple(run.steps_run),
            steps_skipped=skipped,
            resumed=run.resumed,
            duration=time.perf_counter() - started,
            waiting_step=suspension.step if suspension is not None else None,
            token=outcome.token,
            prompt=suspension.prompt if suspension is not None else None,
            wake_at=outcome.wake_at,
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
        park_after: float | None = None,
    ) -> RunResult:
        """Continue ``request_id`` after its latest checkpoint (see ``Runner.resume``)."""
        store = self.store

        async def prepare() -> Prepared:
            return await store.planner.plan(
                request_id, given, force=force, from_step=from_step, set_vars=set_vars
            )

        prepared = await prepare()
        hk = head_key(request_id)
        answered = input is not None or token is not None
        folded, planned = self._resume_folded(prepared, force=force, answered=answered)
        # the head is read again with the lease (one round trip where the driver can); where
        # the driver can also write, the attempt's start goes with it if the head is still
        # the one planned on, byte for byte
        lease = await store.acquire(
            request_id,
            prepared.workflow,
            (hk,),
            folded.start_batch() if folded is not None else (),
            {hk: planned} if planned is not None else None,
        )
        recorder: RunRecorder | None = None
        try:
            if folded is not None and lease is not None and lease.wrote:
                recorder = folded
                recorder.held(lease)
                return await self._resume(prepared, recorder, lease, (input, token), park_after)
            if lease is not None and not await store.planner.unchanged(lease, prepared.found):
                # Another process moved the run on between our read and our lease: read again.
                prepared = await prepare()
            if prepared.repairs:  # targets that lag behind the state we resume from
                await store.write_repairs(request_id, prepared.repairs, lease)
            head = prepared.plan.head
            if head is not None and head.status not in ("completed", "suspended") and not force:
                # Only the lease holder may judge (and mark) a run dead: a run being driven
                # elsewhere gets RunBusy above, never a dead head over its live one.
                await store.check_dead_letter(prepared.workflow, head, lease)
            recorder = self._recorder(prepared, lease)
            return await self._resume(prepared, recorder, lease, (input, token), park_after)
        finally:
            if lease is not None:
                await self._release(lease, recorder)

    def _resume_folded(
        self, prepared: Prepared, *, force: bool, answered: bool
    ) -> tuple[RunRecorder | None, bytes | None]:
        """The recorder of a resume whose start can be written with its lease, as a
        compare-and-set on the head it was planned on (``RunStore.writes_with_lease``), and
        that head's bytes as stored on the lease's datasource; ``(None, None)`` otherwise.
        Only a plain continuation: a failed, cancelled or interrupted run with steps left,
        not dead-lettered, with nothing to repair, no input to check, no time travel (its
        stored progress is deleted before its start), no timer or map progress to read
        first, and no hook before the recorder -- everything that could still refuse or
        fail the resume is decided before its head says running."""
        wf, plan = prepared.workflow, prepared.plan
        head = plan.head
        if (
            answered
            or head is None
            or head.status not in ("failed", "cancelled", "running")
            or prepared.repairs
            or not plan.run
            or prepared.from_step is not None
            or (not force and self.store.dead_letter_due(head))
            or any(hook.first for hook in self.hooks)
            or not self.store.writes_with_lease(wf, matching=True)
        ):
            return None, None
        if wf.progress_steps and not set(prepared.done).issuperset(
            s.name for s in wf.progress_steps
        ):
            return None, None  # _map_progress reads after the lease
        ds = self.store.lease_datasource(wf)
        view = next((v for v in prepared.found.views if v.datasource is ds), None)
        planned = view.raw.get(head_key(plan.request_id)) if view is not None else None
        if view is None or view.head != head or planned is None:
            return None, None
        return self._recorder(prepared, None), planned

    def _recorder(self, prepared: Prepared, lease: Lease | None) -> RunRecorder:
        wf = prepared.workflow
        return self.store.recorder(
            request_id=prepared.plan.request_id,
            workflow=wf,
            inputs=prepared.inputs,
            started_at=prepared.started_at,
            durability=wf.durability or self.durability,
            lease=lease,
            prepared=prepared,
        )

    async def _resume(
        self,
        prepared: Prepared,
        recorder: RunRecorder,
        lease: Lease | None,
        answer: tuple[Any, str | None],
        park_after: float | None,
    ) -> RunResult:
        plan = prepared.plan
        value, token = answer
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
            park_after=park_after,
            from_step=plan.after,
            from_seq=plan.from_seq,
        )
        if plan.head is not None:
            run.previous = dict(plan.head.context)
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
        await self._map_progress(prepared, run, recorder)
        log.info(
            "resuming run %s after %s (%d steps done)",
            plan.request_id,
            plan.after or "its start",
            len(plan.skip),
        )
        return await self._drive(run, recorder, lease)

    async def _map_progress(self, prepared: Prepared, run: Attempt, recorder: RunRecorder) -> None:
        """What steps still to finish stored before: timers' wake-up times (a resume waits
        only what is left), map items' results (not run again)."""
        wf = prepared.workflow
        if prepared.from_step is not None:
            await self._forget_progress(prepared, recorder)
            return
        if not wf.progress_steps:
            return
        done = set(prepared.done)
        timers = [s.name for s in wf.progress_steps if s.node.timer and s.name not in done]
        if timers and recorder.targets:
            run.timers = await load_timers(
                recorder.targets,
                request_id=run.request_id,
                incarnation=prepared.incarnation,
                started_at=prepared.started_at,
                steps=timers,
                envelope=self.store.envelope,
            )
        pending = [s.name for s in wf.progress_steps if s.map is not None and s.name not in done]
        if not pending or not recorder.targets:
            return
        run.items, recorder.stale_items = await load_items(
            recorder.targets,
            request_id=run.request_id,
            incarnation=prepared.incarnation,
            started_at=prepared.started_at,
            steps=pending,
            envelope=self.store.envelope,
        )
        if run.items:
            log.info(
                "run %s: %d map item(s) already done, not run again",
                run.request_id,
                sum(len(found) for found in run.items.values()),
            )

    async def _forget_progress(self, prepared: Prepared, recorder: RunRecorder) -> None:
        """Time travel runs its steps again: the timers and map items an earlier attempt
        stored for them are deleted (under the run's lease) so no later resume mixes them in."""
        rid = prepared.plan.request_id
        prefixes = [items_prefix(rid, prepared.incarnation), timers_prefix(rid)]
        for ds in recorder.targets:
            stale = [k for prefix in prefixes for k in await ds.keys(prefix)]
            if stale:
                await ds.delete_batch(stale)
                log.info("run %s: %d stored timer/item record(s) of steps run again deleted",
                         rid, len(stale))  # fmt: skip

    async def plan(
        self, request_id: str, given: Workflow | None, *, force: bool, from_step: str | None
    ) -> ResumePlan:
        """What :meth:`resume` would do, without doing it."""
        prepared = await self.store.planner.plan(
            request_id, given, force=force, from_step=from_step
        )
        return prepared.plan
