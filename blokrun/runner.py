"""The public entry point: ``async with Runner.from_env() as runner: await runner.run(...)``.

A Runner is a thin facade over two parts: the executor (:mod:`blokrun.execution`), which
runs steps and emits events, and the run store (:class:`~blokrun.persistence.store.RunStore`),
which owns everything a run keeps in its datasources. The Runner loads workflows against
its datasources, and drives an attempt of a run: it takes the run's lease, keeps it alive
with a heartbeat, hands the executor the store's recorder as the first hook, and returns
how the attempt ended. It holds no global state: several Runners can live in one process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import anyio

from blokrun.config import (
    DEFAULT_DATASOURCE,
    DatasourceSettings,
    check_datasource,
    check_durability,
    check_lease_ttl,
    embedded_default,
    settings_from_env,
)
from blokrun.datasources import Datasource, build_datasource
from blokrun.errors import ConfigError, LeaseLost, RunBusy, RunError, RunNotFound
from blokrun.execution.engine import Attempt, emit_end, run_attempt
from blokrun.execution.hooks import CallableHook, Hook
from blokrun.execution.workflows import load_workflow
from blokrun.lifecycle import collect_garbage, iter_runs, list_runs, resume_failed
from blokrun.persistence.envelope import Envelope
from blokrun.persistence.planner import accept_input
from blokrun.persistence.records import DEFAULT_ENVELOPE, new_request_id, validate_request_id
from blokrun.persistence.state import BlobPolicy
from blokrun.persistence.store import RunStore
from blokrun.spec.loader import Workflow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime
    from types import TracebackType

    from blokrun.execution.events import StepFinished
    from blokrun.lifecycle import GcReport, ResumeOutcome, RunPage, RunSummary
    from blokrun.persistence.history import CheckpointInfo, RunInfo
    from blokrun.persistence.leases import Lease
    from blokrun.persistence.planner import Prepared, ResumePlan
    from blokrun.persistence.recorder import RunRecorder
    from blokrun.persistence.records import HeadRecord
    from blokrun.types import Durability, RunStatus
    from blokrun.workers.queue import Queue
    from blokrun.workers.worker import WorkerStats

__all__ = ["RunResult", "Runner"]

log = logging.getLogger("blokrun")

HookLike = Hook | Callable[["StepFinished"], Awaitable[None]]
WorkflowLike = str | Path | Mapping[str, Any] | Workflow


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


class Runner:
    """Runs and resumes workflows, checkpointing to its datasources.

    ``datasources``: :class:`Datasource` objects or :class:`DatasourceSettings` (a service
    that builds its own config), or nothing for the embedded default under ``./.blokrun``.
    ``hooks``: extra :class:`Hook` objects or ``async def hook(event: StepFinished)``
    after-step functions, run after the checkpoint of each step. ``envelope``: compression
    and encryption of stored records (default: zstd above 4 KiB, no encryption).
    ``blob_datasource``: where top-level values of at least ``blob_threshold`` bytes are
    stored once, content-addressed, and referenced from checkpoints (default: inline).
    ``lease_ttl``: how long a run's lease outlives a holder that stopped renewing it (see
    :mod:`blokrun.persistence.leases`); ``None`` turns leases off (one process per run is
    then the caller's promise). ``durability``: when checkpoints are stored, for workflows
    that do not say (``persistence.durability``): ``"sync"`` before the next step starts,
    ``"async"`` while the next step runs (in order; all stored before the run returns;
    a crash can lose the last step's checkpoint, which then runs again), ``"exit"`` once
    when the run ends (a crash loses the whole attempt's progress).
    """

    def __init__(
        self,
        datasources: Iterable[Datasource | DatasourceSettings] | None = None,
        *,
        hooks: Iterable[HookLike] = (),
        search_paths: Iterable[str] = (),
        envelope: Envelope | None = None,
        blob_datasource: str | None = None,
        blob_threshold: int = 256 * 1024,
        max_resumes: int = 10,
        lease_ttl: float | None = 30.0,
        durability: Durability = "sync",
        queue_datasource: str | None = None,
    ) -> None:
        built: dict[str, Datasource] = {}
        if datasources is None:
            datasources = [embedded_default(Path(".blokrun"))]
        for item in datasources:
            ds = item if isinstance(item, Datasource) else build_datasource(item)
            if ds.name in built:
                raise ConfigError(f"datasource {ds.name!r} given twice")
            built[ds.name] = ds
        self._datasources = built
        check_datasource("BLOKRUN_BLOB_DATASOURCE", blob_datasource, built)
        if blob_threshold < 1:
            raise ConfigError(
                f"BLOKRUN_BLOB_THRESHOLD={blob_threshold}: expected a positive number of bytes",
                variable="BLOKRUN_BLOB_THRESHOLD",
            )
        self._store = RunStore(
            built,
            envelope=envelope or DEFAULT_ENVELOPE,
            blobs=BlobPolicy(built[blob_datasource] if blob_datasource else None, blob_threshold),
            compile=lambda document, source: self.load(document, name=source),
            lease_ttl=check_lease_ttl(lease_ttl),
            max_resumes=max_resumes,
        )
        self.durability: Durability = check_durability(durability)
        self._queue_datasource = check_datasource(
            "BLOKRUN_QUEUE_DATASOURCE", queue_datasource, built
        )
        self._queue: Queue | None = None
        self._hooks: list[Hook] = [
            hook if isinstance(hook, Hook) else CallableHook(hook) for hook in hooks
        ]
        self._search_paths = tuple(search_paths)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        hooks: Iterable[HookLike] = (),
        search_paths: Iterable[str] = (),
    ) -> Runner:
        """A Runner for the ``DATASOURCE_*`` and ``BLOKRUN_*`` variables of ``environ``.

        ``environ`` defaults to ``os.environ``.
        """
        settings = settings_from_env(environ)
        return cls(
            settings.datasources.values(),
            hooks=hooks,
            search_paths=search_paths,
            envelope=Envelope.from_env(settings.environ),
            blob_datasource=settings.blob_datasource,
            blob_threshold=settings.blob_threshold,
            max_resumes=settings.max_resumes,
            lease_ttl=settings.lease_ttl,
            durability=settings.durability,
            queue_datasource=settings.queue_datasource,
        )

    @property
    def datasources(self) -> Mapping[str, Datasource]:
        return self._datasources

    @property
    def store(self) -> RunStore:
        """The run store: everything this runner's runs keep in its datasources."""
        return self._store

    @property
    def envelope(self) -> Envelope:
        """How this runner seals stored records (compression, encryption)."""
        return self._store.envelope

    @property
    def lease_ttl(self) -> float | None:
        return self._store.lease_ttl

    @property
    def max_resumes(self) -> int:
        return self._store.max_resumes

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect every datasource at once; fail with one error naming each that failed."""
        await self._store.connect()

    async def close(self) -> None:
        await self._store.close()

    # -- workflows -----------------------------------------------------------------------------

    def load(self, source: WorkflowLike, *, name: str | None = None) -> Workflow:
        """Load and validate a workflow against this runner's datasources."""
        if isinstance(source, Workflow):
            return source
        return load_workflow(
            source,
            available_datasources=self._datasources.keys(),
            default_targets=(DEFAULT_DATASOURCE,)
            if DEFAULT_DATASOURCE in self._datasources
            else (),
            search_paths=self._search_paths,
            name=name,
        )

    async def run(
        self,
        workflow: WorkflowLike,
        inputs: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
    ) -> RunResult:
        """Run a workflow from its first step; :class:`~blokrun.errors.RunError` on failure."""
        self._store.require_started()
        wf = self.load(workflow)
        rid = new_request_id() if request_id is None else _checked_request_id(request_id)
        if inputs is not None and not isinstance(inputs, Mapping):
            raise ConfigError(
                f"inputs must be a JSON object, got {type(inputs).__name__}", variable="inputs"
            )
        initial = dict(inputs or {})
        started_at = time.time()
        attempt = Attempt(request_id=rid, workflow=wf, vars=dict(initial), started_at=started_at)
        lease = await self._store.acquire(rid, wf)
        try:
            recorder = self._store.recorder(
                request_id=rid,
                workflow=wf,
                inputs=initial,
                started_at=started_at,
                durability=wf.durability or self.durability,
                lease=lease,
            )
            return await self._drive(attempt, recorder, lease)
        finally:
            if lease is not None:
                await self._store.release(lease)

    async def _drive(self, run: Attempt, recorder: RunRecorder, lease: Lease | None) -> RunResult:
        """Drive one attempt: the executor with the recorder first among the hooks, the
        lease's heartbeat beside it, write-behind saves in the same task group."""
        hooks = [recorder, *self._hooks] if recorder.targets else self._hooks
        started = time.perf_counter()
        skipped = tuple(run.done)
        if lease is None and recorder.durability != "async":
            outcome = await run_attempt(run, hooks=hooks, reader=self._store.reads)
        else:
            error: BaseException | None = None
            async with anyio.create_task_group() as tg:
                if lease is not None:
                    tg.start_soon(lease.heartbeat, tg.cancel_scope)
                recorder.background = tg  # write-behind saves; flushed by the run's end
                try:
                    outcome = await run_attempt(run, hooks=hooks, reader=self._store.reads)
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

    # -- resume ----------------------------------------------------------------------------------

    async def resume(
        self,
        request_id: str,
        *,
        workflow: WorkflowLike | None = None,
        force: bool = False,
        from_step: str | None = None,
        set_vars: Mapping[str, Any] | None = None,
        input: Any = None,
        token: str | None = None,
    ) -> RunResult:
        """Continue a failed or crashed run after its latest checkpoint.

        Idempotent: completed steps never run again, and resuming a completed run returns
        its final vars without running anything. The definition comes from the checkpoint
        datasource unless ``workflow`` is given; a given workflow that changed steps which
        already ran is refused (:class:`~blokrun.errors.DefinitionChanged`) unless ``force``.

        ``from_step`` restarts from the checkpoint before that step ran (time travel; the
        new attempt is recorded beside the old checkpoints, which stay). ``set_vars`` edits
        vars first: ``{"a.b": 1}`` sets ``vars["a"]["b"]``.

        A suspended run (an ``await-input`` step) continues only with ``input`` and the
        ``token`` its suspension returned; a wrong token or input that fails the step's
        schema is refused and the run stays suspended.
        """
        store = self._store
        store.require_started()
        given = self.load(workflow) if workflow is not None else None

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
        recorder = self._store.recorder(
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
                hooks = [recorder, *self._hooks] if recorder.targets else self._hooks
                await emit_end(run, hooks, "completed")
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

    async def plan_resume(
        self,
        request_id: str,
        *,
        workflow: WorkflowLike | None = None,
        force: bool = False,
        from_step: str | None = None,
    ) -> ResumePlan:
        """What :meth:`resume` would do, without doing it (``blokrun resume --dry-run``)."""
        self._store.require_started()
        given = self.load(workflow) if workflow is not None else None
        prepared = await self._store.planner.plan(
            request_id, given, force=force, from_step=from_step
        )
        return prepared.plan

    # -- inspection -------------------------------------------------------------------------------

    async def inspect(self, request_id: str) -> RunInfo:
        """The run's head and every checkpoint, ordered by sequence number."""
        self._store.require_started()
        return await self._store.history.inspect(request_id)

    async def state_at(
        self, request_id: str, *, step: str | None = None, seq: int | None = None
    ) -> tuple[CheckpointInfo, dict[str, Any]]:
        """The vars as they were at a checkpoint: the latest one of ``step``, or number ``seq``."""
        self._store.require_started()
        return await self._store.history.state_at(request_id, step=step, seq=seq)

    async def head(self, request_id: str) -> HeadRecord | None:
        """The stored head record of a run, or ``None``."""
        return await self._store.head(request_id)

    # -- scale-out (blokrun.workers) -------------------------------------------------------

    async def queue(self) -> Queue:
        """The run queue: in ``BLOKRUN_QUEUE_DATASOURCE``, else the first Redis or
        PostgreSQL datasource configured (else a memory one, for one process)."""
        self._store.require_started()
        if self._queue is None:
            from blokrun.workers.queue import BACKENDS, open_queue

            name = self._queue_datasource
            if name is None:  # the first Redis or PostgreSQL one as configured, else memory
                candidates = sorted(
                    (ds.type == "memory", i, ds.name)
                    for i, ds in enumerate(self._datasources.values())
                    if ds.type in BACKENDS
                )
                if not candidates:
                    raise ConfigError(
                        "no datasource can hold the run queue: configure a Redis or "
                        "PostgreSQL datasource (BLOKRUN_QUEUE_DATASOURCE names which)",
                        variable="BLOKRUN_QUEUE_DATASOURCE",
                    )
                name = candidates[0][2]
            queue = open_queue(self._datasources[name])
            await queue.setup()
            self._queue = queue
            self._queue_datasource = name
        return self._queue

    @property
    def queue_datasource(self) -> Datasource | None:
        """The datasource holding the run queue, once :meth:`queue` opened it."""
        if self._queue is None or self._queue_datasource is None:
            return None
        return self._datasources[self._queue_datasource]

    async def submit(
        self,
        workflow: str | Path | Mapping[str, Any] | Workflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        priority: int = 0,
    ) -> str:
        """Put a run in the queue for a worker (:meth:`serve`, ``blokrun worker``); its id.

        De-duplicated by request id: if a run with this id is queued, running or stored,
        nothing is added and the id is returned.
        """
        from blokrun.workers.queue import Job

        queue = await self.queue()
        wf = self.load(workflow)
        rid = new_request_id() if request_id is None else _checked_request_id(request_id)
        if inputs is not None and not isinstance(inputs, Mapping):
            raise ConfigError(
                f"inputs must be a JSON object, got {type(inputs).__name__}", variable="inputs"
            )
        if request_id is not None:
            try:
                await self._store.planner.locate(rid, wf)
            except RunNotFound:
                pass
            else:
                return rid  # that run exists already
        job = Job(
            request_id=rid,
            workflow=wf.name,
            document=wf.document,
            inputs=dict(inputs or {}),
            priority=priority,
            enqueued_at=time.time(),
            source=wf.source,
        )
        await queue.enqueue(job)
        return rid

    async def wait(self, request_id: str, *, poll: float = 0.05) -> RunResult:
        """Wait until a submitted run ends; its result (completed or suspended), or the
        :class:`~blokrun.errors.RunError` it failed with. Bound it with ``anyio.fail_after``."""
        self._store.require_started()
        delay = poll
        while True:
            try:
                head = await self._store.head(request_id)
            except RunNotFound:
                head = None
            if head is not None and head.status == "completed":
                try:
                    return await self.resume(request_id)  # runs nothing: the final vars
                except RunBusy:
                    pass  # its worker is still letting go of it
            elif head is not None and head.status == "suspended":
                return RunResult(
                    request_id=request_id, status="suspended", vars={}, steps_run=(),
                    steps_skipped=(), resumed=False, duration=0.0,
                    waiting_step=head.waiting_step,
                )  # fmt: skip
            elif head is not None and head.status in ("failed", "dead"):
                raise RunError(
                    f"{head.status}: {head.error or 'no error recorded'}",
                    request_id=request_id,
                    step=head.failed_step,
                )
            await anyio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    async def serve(
        self,
        *,
        concurrency: int = 8,
        per_workflow: Mapping[str, int] | None = None,
        stop: anyio.Event | None = None,
        grace: float = 30.0,
        max_runs: int | None = None,
    ) -> WorkerStats:
        """Be a worker: run queued runs, ``concurrency`` at a time, until ``stop`` is set.

        ``per_workflow``: ``{workflow name: N}`` caps across every worker of the queue
        (slot leases in the queue's datasource; see :mod:`blokrun.workers.worker`)."""
        from blokrun.workers.worker import Worker

        worker = Worker(
            self,
            await self.queue(),
            concurrency=concurrency,
            per_workflow=per_workflow,
            claim_ttl=self.lease_ttl or 30.0,
            grace=grace,
        )
        await worker.serve(stop, max_runs=max_runs)
        return worker.stats

    # -- run lifecycle (blokrun.lifecycle) ---------------------------------------------------

    async def list_runs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        workflow: str | None = None,
        since: float | datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        """Stored runs, newest first, a page at a time (:func:`blokrun.lifecycle.list_runs`)."""
        return await list_runs(
            self._store, status=status, workflow=workflow, since=since, limit=limit, cursor=cursor
        )

    runs = list_runs  # the name the CLI uses too: ``blokrun runs``

    def iter_runs(self, *, batch_size: int = 500) -> AsyncIterator[RunSummary]:
        """Every stored run, once each, in no order (:func:`blokrun.lifecycle.iter_runs`)."""
        return iter_runs(self._store, batch_size=batch_size)

    async def resume_failed(
        self, *, workflow: str | None = None, concurrency: int = 4, limit: int | None = None
    ) -> list[ResumeOutcome]:
        """Resume every failed or interrupted run, ``concurrency`` at a time; one outcome
        per run (:func:`blokrun.lifecycle.resume_failed`)."""
        return await resume_failed(
            self._store, self.resume, workflow=workflow, concurrency=concurrency, limit=limit
        )

    async def collect_garbage(
        self,
        *,
        completed_older_than: float | None = 7 * 86400,
        failed_older_than: float | None = 30 * 86400,
        dry_run: bool = False,
    ) -> GcReport:
        """Delete old completed / failed runs and unreferenced blobs (``blokrun gc``)."""
        return await collect_garbage(
            self._store,
            completed_older_than=completed_older_than,
            failed_older_than=failed_older_than,
            dry_run=dry_run,
        )


def _checked_request_id(request_id: str) -> str:
    try:
        return validate_request_id(request_id)
    except ValueError as exc:
        raise ConfigError(str(exc), variable="request_id") from None
