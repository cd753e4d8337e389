"""The public entry point: ``async with Runner.from_env() as runner: await runner.run(...)``.

A Runner is a thin facade. It builds its datasources (from the environment or given) and
three parts over them, and delegates to them: the run store
(:class:`~blokrun.persistence.store.RunStore`, everything runs keep in the datasources:
locating, planning resumes, history, leases), the driver (:class:`~blokrun.driver.RunDriver`:
the executor, the store's recorder and the run's lease for one attempt), and the run queue
(:class:`~blokrun.queues.QueueClient`). It holds no global state: several Runners can live in
one process. Workers (:mod:`blokrun.workers`) are built on a Runner, not inside it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
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
    envelope_from_env,
    settings_from_env,
)
from blokrun.datasources import Datasource, build_datasource
from blokrun.driver import RunDriver, RunResult
from blokrun.errors import ArgumentError, ConfigError, RunBusy, RunError, RunNotFound
from blokrun.execution.hooks import CallableHook, Hook
from blokrun.execution.nodes import NodeRegistry
from blokrun.execution.workflows import load_workflow
from blokrun.lifecycle import collect_garbage, iter_runs, list_runs, resume_failed
from blokrun.lifecycle.runs import count_runs
from blokrun.persistence.records import DEFAULT_ENVELOPE, new_request_id, validate_request_id
from blokrun.persistence.state import BlobPolicy
from blokrun.persistence.store import RunStore
from blokrun.queues import Job, QueueClient
from blokrun.spec.loader import Workflow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime
    from types import TracebackType

    from blokrun.execution.events import StepFinished
    from blokrun.lifecycle import GcReport, ResumeOutcome, RunPage, RunSummary
    from blokrun.persistence.envelope import Envelope
    from blokrun.persistence.history import CheckpointInfo, RunInfo
    from blokrun.persistence.planner import ResumePlan
    from blokrun.persistence.records import HeadRecord
    from blokrun.persistence.store import Repair
    from blokrun.queues import Queue
    from blokrun.tracing import JobTracing
    from blokrun.types import Durability

__all__ = ["RunResult", "Runner"]

log = logging.getLogger("blokrun.queue")

HookLike = Hook | Callable[["StepFinished"], Awaitable[None]]
WorkflowLike = str | Path | Mapping[str, Any] | Workflow


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
    when the run ends (a crash loses the whole attempt's progress). ``nodes``: functions
    (``async def f(ctx, inputs)`` or plain ``def``) that workflow files name by these names
    (``"node": "charge"``) -- every process that runs, resumes or works on such a workflow
    registers the same names; a name it lacks is a load error listing those it has.
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
        nodes: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        self._nodes = NodeRegistry(nodes)
        built: dict[str, Datasource] = {}
        if datasources is None:
            datasources = [embedded_default(Path(".blokrun"))]
        for item in datasources:
            ds = item if isinstance(item, Datasource) else build_datasource(item)
            if ds.name in built:
                raise ArgumentError(f"datasource {ds.name!r} given twice", argument="datasources")
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
            compile=lambda document, source, paths: self.load(
                document, name=source, search_paths=paths
            ),
            lease_ttl=check_lease_ttl(lease_ttl),
            max_resumes=max_resumes,
        )
        self._driver = RunDriver(
            self._store,
            [hook if isinstance(hook, Hook) else CallableHook(hook) for hook in hooks],
            check_durability(durability),
        )
        self._queues = QueueClient(
            built, check_datasource("BLOKRUN_QUEUE_DATASOURCE", queue_datasource, built)
        )
        self._search_paths = tuple(search_paths)
        #: carries traces through the queue when a tracing integration set it (blokrun.otel)
        self.tracing: JobTracing | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        hooks: Iterable[HookLike] = (),
        search_paths: Iterable[str] = (),
        nodes: Mapping[str, Callable[..., Any]] | None = None,
    ) -> Runner:
        """A Runner for the ``DATASOURCE_*`` and ``BLOKRUN_*`` variables of ``environ``.

        ``environ`` defaults to ``os.environ``; ``nodes``: functions workflow files name
        by a registered name (see :class:`Runner`).
        """
        settings = settings_from_env(environ)
        return cls(
            settings.datasources.values(),
            hooks=hooks,
            search_paths=search_paths,
            envelope=envelope_from_env(settings.environ),
            blob_datasource=settings.blob_datasource,
            blob_threshold=settings.blob_threshold,
            max_resumes=settings.max_resumes,
            lease_ttl=settings.lease_ttl,
            durability=settings.durability,
            queue_datasource=settings.queue_datasource,
            nodes=nodes,
        )

    @property
    def datasources(self) -> Mapping[str, Datasource]:
        return self._datasources

    def add_hook(self, hook: HookLike) -> None:
        """Add a hook to every run this runner starts or resumes from now on."""
        self._driver.hooks.append(hook if isinstance(hook, Hook) else CallableHook(hook))

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

    @property
    def durability(self) -> Durability:
        """Checkpoint durability for workflows that do not set ``persistence.durability``."""
        return self._driver.durability

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

    def load(
        self, source: WorkflowLike, *, name: str | None = None, search_paths: Iterable[str] = ()
    ) -> Workflow:
        """Load and validate a workflow against this runner's datasources (``search_paths``:
        more folders to import its ``module`` nodes from, after the runner's own)."""
        if isinstance(source, Workflow):
            return source
        return load_workflow(
            source,
            available_datasources=self._datasources.keys(),
            default_targets=(DEFAULT_DATASOURCE,)
            if DEFAULT_DATASOURCE in self._datasources
            else (),
            search_paths=[*self._search_paths, *search_paths],
            name=name,
            nodes=self._nodes,
        )

    async def run(
        self,
        workflow: WorkflowLike,
        inputs: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        restart: bool = False,
        park_timers_after: float | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run a workflow from its first step; :class:`~blokrun.errors.RunError` on failure.

        A request id names one run. Given the id of a run that exists: if it completed with
        the same workflow and inputs, its stored result comes back (``existing=True``) and
        nothing runs, as a de-duplicated request should; otherwise
        :class:`~blokrun.errors.RunExists` (continue it with :meth:`resume`). ``restart``
        starts it over instead, as a new incarnation: every step runs again, and the old
        incarnation's records are never read by it (they stay until gc deletes the run).

        ``tags``: ``{key: value}`` strings kept with the run, to filter runs on
        (:meth:`list_runs`, ``blokrun runs --tag``, the dashboard).

        ``park_timers_after`` (what workers pass): a timer step with more than this many
        seconds left ends the attempt with status ``sleeping`` (``wake_at`` set) instead of
        waiting in this process; resuming it after ``wake_at`` continues the run.
        """
        self._store.require_started()
        wf = self.load(workflow)
        rid = new_request_id() if request_id is None else _checked_request_id(request_id)
        return await self._driver.run(
            wf,
            _checked_inputs(inputs),
            rid,
            restart=restart,
            park_after=park_timers_after,
            tags=checked_tags(tags),
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
        park_timers_after: float | None = None,
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
        self._store.require_started()
        given = self.load(workflow) if workflow is not None else None
        resume = self._driver.resume(
            request_id,
            given,
            force=force,
            from_step=from_step,
            set_vars=set_vars,
            input=input,
            token=token,
            park_after=park_timers_after,
        )
        if self.tracing is None:
            return await resume
        with self.tracing.resuming(request_id):
            return await resume

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
        return await self._driver.plan(request_id, given, force=force, from_step=from_step)

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

    async def repair(self, request_id: str) -> Repair:
        """Heal a run on demand: under its lease, write to every reachable target what it
        lacks of the most advanced verified state (``blokrun repair ID``)."""
        self._store.require_started()
        return await self._store.repair(request_id)

    # -- scale-out (blokrun.workers) -------------------------------------------------------

    async def queue(self) -> Queue:
        """The run queue: in ``BLOKRUN_QUEUE_DATASOURCE``, else the first Redis or
        PostgreSQL datasource configured (else a memory one, for one process)."""
        self._store.require_started()
        return await self._queues.queue()

    @property
    def queue_datasource(self) -> Datasource | None:
        """The datasource holding the run queue, once :meth:`queue` opened it."""
        return self._queues.datasource

    async def submit(
        self,
        workflow: str | Path | Mapping[str, Any] | Workflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        priority: int = 0,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Put a run in the queue for a worker (``blokrun worker``, :mod:`blokrun.workers`).

        De-duplicated by request id: if a run with this id is queued, running or stored,
        nothing is added and the id is returned.
        """
        queue = await self.queue()
        wf = self.load(workflow)
        rid = new_request_id() if request_id is None else _checked_request_id(request_id)
        initial = _checked_inputs(inputs)
        if request_id is not None:
            try:
                await self._store.planner.locate(rid, wf)
            except RunNotFound:
                pass
            else:
                log.warning("run %s exists already: not queued again (de-duplicated)", rid)
                return rid  # that run exists already
        job = Job(
            request_id=rid,
            workflow=wf.name,
            document=wf.document,
            inputs=initial,
            priority=priority,
            tags=checked_tags(tags),
            enqueued_at=time.time(),
            source=wf.source,
            context=self.tracing.inject() if self.tracing is not None else {},
        )
        if not await queue.enqueue(job):
            log.warning("run %s is in the queue already: not queued again (de-duplicated)", rid)
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
            if head is None and not await self._queued(request_id):
                raise RunNotFound(
                    "no such run: it has no record on "
                    f"{', '.join(repr(n) for n in self._store.datasources)} and no job in the "
                    "queue",
                    request_id=request_id,
                )
            if head is not None and head.status == "completed":
                try:
                    # runs nothing: the stored final vars (no resume to trace)
                    return await self._driver.resume(
                        request_id, None, force=False, from_step=None, set_vars=None,
                        input=None, token=None,
                    )  # fmt: skip
                except RunBusy:
                    pass  # its worker is still letting go of it
            elif head is not None and head.status == "suspended":
                return RunResult(
                    request_id=request_id,
                    status="suspended",
                    vars={},
                    steps_run=(),
                    steps_skipped=(),
                    resumed=False,
                    duration=0.0,
                    waiting_step=head.waiting_step,
                )
            elif head is not None and head.status == "dead":
                raise RunError(
                    f"dead-lettered after {head.recoveries} recovery attempt(s): "
                    f"{head.error or 'gave up after too many recoveries'} (after fixing the "
                    f"cause: blokrun resume {request_id} --force)",
                    request_id=request_id,
                    step=head.failed_step,
                )
            elif head is not None and head.status == "failed":
                raise RunError(
                    f"{head.status}: {head.error or 'no error recorded'}",
                    request_id=request_id,
                    step=head.failed_step,
                )
            await anyio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    async def _queued(self, request_id: str) -> bool:
        """Whether a job for ``request_id`` waits in (or is claimed from) the run queue; False
        when no datasource here can hold a queue."""
        try:
            queue = await self.queue()
        except ConfigError:  # no datasource here can hold the queue: nothing was submitted
            return False
        return await queue.holds(request_id)

    # -- run lifecycle (blokrun.lifecycle) ---------------------------------------------------

    async def list_runs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        workflow: str | None = None,
        since: float | datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
        tags: Mapping[str, str] | None = None,
        search: str | None = None,
    ) -> RunPage:
        """Stored runs, newest first, a page at a time (:func:`blokrun.lifecycle.list_runs`)."""
        return await list_runs(
            self._store,
            status=status,
            workflow=workflow,
            since=since,
            limit=limit,
            cursor=cursor,
            tags=tags,
            search=search,
        )

    runs = list_runs  # the name the CLI uses too: ``blokrun runs``

    async def count_runs(self) -> dict[str, int]:
        """Stored runs per status (:func:`blokrun.lifecycle.runs.count_runs`)."""
        return await count_runs(self._store)

    def iter_runs(self, *, batch_size: int = 500) -> AsyncIterator[RunSummary]:
        """Every stored run, once each, in no order (:func:`blokrun.lifecycle.iter_runs`)."""
        return iter_runs(self._store, batch_size=batch_size)

    async def fork(
        self,
        request_id: str,
        *,
        new_id: str | None = None,
        from_step: str | None = None,
        set_vars: Mapping[str, Any] | None = None,
        workflow: WorkflowLike | None = None,
        force: bool = False,
    ) -> RunResult:
        """Start a new run from a checkpoint of run ``request_id``, leaving that run and
        its history untouched: the state before ``from_step`` ran (default: its latest
        checkpoint), with ``set_vars`` applied (``{"a.b": 1}``), continued under
        ``new_request_id`` (default: a new id). ``workflow``: run the fork with this
        definition instead of the stored one (one that changed steps already done is
        refused unless ``force``). Its result names the new run's id."""
        self._store.require_started()
        given = self.load(workflow) if workflow is not None else None
        return await self._driver.fork(
            request_id,
            new_request_id() if new_id is None else _checked_request_id(new_id),
            given,
            from_step=from_step,
            set_vars=set_vars,
            force=force,
        )

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


def _checked_inputs(inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    if inputs is not None and not isinstance(inputs, Mapping):
        raise ArgumentError(
            f"inputs must be a JSON object, got {type(inputs).__name__}", argument="inputs"
        )
    return dict(inputs or {})


def _checked_request_id(request_id: str) -> str:
    try:
        return validate_request_id(request_id)
    except ValueError as exc:
        raise ArgumentError(str(exc), argument="request_id") from None


_TAG_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_TAGS = 20


def checked_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    """Tags as given, checked: at most 20, keys of 1-64 characters from A-Z a-z 0-9 _ . -,
    values strings of at most 256 characters."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping) or len(tags) > MAX_TAGS:
        raise ArgumentError(f"tags: expected at most {MAX_TAGS} key/value pairs", argument="tags")
    for key, value in tags.items():
        if not isinstance(key, str) or not _TAG_KEY.fullmatch(key):
            raise ArgumentError(
                f"tag key {key!r}: expected 1-64 characters from A-Z a-z 0-9 _ . -",
                argument="tags",
            )
        if not isinstance(value, str) or len(value) > 256:
            raise ArgumentError(
                f"tag {key!r}: expected a string of at most 256 characters", argument="tags"
            )
    return dict(tags)
