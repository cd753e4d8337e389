"""The public entry point: ``async with Runner.from_env() as runner: await runner.run(...)``.

A Runner owns a set of datasources (built from the environment or given directly), connects
them all at start-up -- so bad config fails before step 1 -- and runs and resumes workflows
on them. It holds no global state: several Runners can live in one process.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import anyio
import msgspec
import orjson

from blokrun.config import (
    DEFAULT_DATASOURCE,
    DatasourceSettings,
    check_datasource,
    check_durability,
    check_lease_ttl,
    envelope_from_env,
    settings_from_env,
)
from blokrun.datasources import Datasource, build_datasource
from blokrun.errors import (
    BlokrunError,
    CheckpointError,
    ConfigError,
    DatasourceError,
    DefinitionChanged,
    LeaseLost,
    ResumeError,
    RunBusy,
    RunError,
    RunNotFound,
)
from blokrun.execution.builtins import Suspend
from blokrun.execution.engine import execute
from blokrun.execution.hooks import CallableHook, Hook, RunState, StepOutcome
from blokrun.persistence.checkpointer import Checkpointer, KeyScope, save_everywhere
from blokrun.persistence.leases import Lease, acquire, lease_key
from blokrun.persistence.records import (
    DEFAULT_ENVELOPE,
    HeadRecord,
    RunStatus,
    decode_record,
    encode_record,
    head_key,
    new_request_id,
    validate_request_id,
)
from blokrun.persistence.resumer import FoundRun, Resumer
from blokrun.persistence.state import BlobPolicy, resolve_blobs
from blokrun.spec.loader import Workflow, definition_hash, load_workflow

if TYPE_CHECKING:
    from datetime import datetime
    from types import TracebackType

    from blokrun.datasources import LeaseState
    from blokrun.lifecycle import GcReport, ResumeOutcome, RunPage
    from blokrun.persistence.envelope import Envelope
    from blokrun.persistence.records import DefinitionRecord
    from blokrun.spec.model import Durability
    from blokrun.workers.queue import Queue
    from blokrun.workers.worker import WorkerStats

__all__ = ["CheckpointInfo", "ResumePlan", "RunInfo", "RunResult", "Runner"]

log = logging.getLogger("blokrun")

HookLike = Hook | Callable[[RunState, StepOutcome], Awaitable[None]]


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


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """Which steps a resume skips (done at the checkpoint it starts from) and runs."""

    request_id: str
    workflow: str
    after: str | None  # the step of that checkpoint (None: from the run's start)
    from_seq: int
    skip: tuple[str, ...]
    run: tuple[str, ...]
    attempt: int  # the attempt number the resume will have
    head_status: str | None
    head: HeadRecord | None = None


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    key: str
    step: str
    seq: int
    status: str
    time: float
    duration: float
    size: int
    attempt: int


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What ``blokrun inspect`` shows: the head and every checkpoint of a run, in order."""

    request_id: str
    datasource: str
    head: HeadRecord | None
    checkpoints: tuple[CheckpointInfo, ...]
    #: the run's lease as stored (who holds it, until when), if its datasource keeps leases
    lease: LeaseState | None = None


class Runner:
    """Runs and resumes workflows, checkpointing to its datasources.

    ``datasources``: :class:`Datasource` objects or :class:`DatasourceSettings` (a service
    that builds its own config), or nothing for the embedded default under ``./.blokrun``.
    ``hooks``: extra :class:`Hook` objects or ``async def hook(run, outcome)`` after-step
    functions, run after the checkpoint of each step. ``envelope``: compression and
    encryption of stored records (default: zstd above 4 KiB, no encryption).
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
            from blokrun.config import embedded_default

            datasources = [embedded_default(Path(".blokrun"))]
        for item in datasources:
            ds = item if isinstance(item, Datasource) else build_datasource(item)
            if ds.name in built:
                raise ConfigError(f"datasource {ds.name!r} given twice")
            built[ds.name] = ds
        self._datasources = built
        self._envelope = envelope or DEFAULT_ENVELOPE
        check_datasource("BLOKRUN_BLOB_DATASOURCE", blob_datasource, built)
        if blob_threshold < 1:
            raise ConfigError(
                f"BLOKRUN_BLOB_THRESHOLD={blob_threshold}: expected a positive number of bytes",
                variable="BLOKRUN_BLOB_THRESHOLD",
            )
        blobs = BlobPolicy(built[blob_datasource] if blob_datasource else None, blob_threshold)
        self._checkpointer = Checkpointer(built, envelope=self._envelope, blobs=blobs)
        self._resumer = Resumer(self._envelope)
        self.max_resumes = max_resumes
        self.lease_ttl = check_lease_ttl(lease_ttl)
        #: Leases this runner could not release (the datasource was down): released before
        #: it next takes that run, so a resume after an outage does not wait out the TTL.
        self._unreleased: dict[str, Lease] = {}
        self.durability: Durability = check_durability(durability)
        self._queue_datasource = check_datasource(
            "BLOKRUN_QUEUE_DATASOURCE", queue_datasource, built
        )
        self._queue: Queue | None = None
        self._compiled: dict[tuple[str, str], Workflow] = {}
        self._hooks: list[Hook] = [self._checkpointer]
        for hook in hooks:
            self._hooks.append(hook if isinstance(hook, Hook) else CallableHook(hook))
        self._search_paths = tuple(search_paths)
        self._stack: AsyncExitStack | None = None

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
            envelope=envelope_from_env(settings.environ),
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
        if self._stack is not None:
            return
        stack = AsyncExitStack()
        failures: list[tuple[Datasource, BaseException]] = []

        async def one(ds: Datasource) -> None:
            try:
                await ds.connect()
            except BlokrunError as exc:
                failures.append((ds, exc))

        async with anyio.create_task_group() as tg:
            for ds in self._datasources.values():
                tg.start_soon(one, ds)
        for ds in self._datasources.values():
            if ds.is_connected:
                stack.push_async_callback(ds.close)
        if failures:
            await stack.aclose()
            names = ", ".join(sorted(self._datasources))
            detail = "; ".join(
                f"{ds.settings.describe()}: {getattr(exc, 'detail', exc)}" for ds, exc in failures
            )
            first = failures[0][1]
            raise DatasourceError(
                f"cannot start: {detail} (configured datasources: {names})",
                datasource=failures[0][0].name,
            ) from first
        self._stack = stack

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    # -- workflows -----------------------------------------------------------------------------

    def load(
        self, source: str | Path | Mapping[str, Any] | Workflow, *, name: str | None = None
    ) -> Workflow:
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

    def _load_stored(self, stored: DefinitionRecord) -> Workflow:
        """The workflow of a stored definition, compiled once per runner (by its hash):
        resuming a 100-step run should not recompile 100 steps each time."""
        key = (definition_hash(stored.document), stored.source or "")
        wf = self._compiled.get(key)
        if wf is None:
            wf = self.load(stored.document, name=stored.source)
            if len(self._compiled) >= 256:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[key] = wf
        return wf

    def _require_connected(self) -> None:
        if self._stack is None:
            raise BlokrunError(
                "the Runner is not started: use 'async with runner:' or await runner.connect()"
            )

    async def run(
        self,
        workflow: str | Path | Mapping[str, Any] | Workflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
    ) -> RunResult:
        """Run a workflow from its first step; :class:`~blokrun.errors.RunError` on failure."""
        self._require_connected()
        wf = self.load(workflow)
        rid = new_request_id() if request_id is None else _checked_request_id(request_id)
        if inputs is not None and not isinstance(inputs, Mapping):
            raise ConfigError(
                f"inputs must be a JSON object, got {type(inputs).__name__}", variable="inputs"
            )
        initial = dict(inputs or {})
        run = RunState(
            request_id=rid,
            workflow=wf,
            vars=dict(initial),
            inputs=initial,
            started_at=time.time(),
        )
        lease = await self._acquire(rid, wf)
        run.lease = lease
        try:
            return await self._drive(run)
        finally:
            if lease is not None:
                await self._release(lease)

    def _lease_datasource(self, wf: Workflow) -> Datasource | None:
        """Where a run's lease lives: its first target that keeps leases."""
        if self.lease_ttl is None:
            return None
        for name in wf.targets:
            ds = self._datasources.get(name)
            if ds is not None and ds.supports_leases:
                return ds
        return None

    async def _acquire(self, request_id: str, wf: Workflow) -> Lease | None:
        ds = self._lease_datasource(wf)
        if ds is None or self.lease_ttl is None:
            return None
        stale = self._unreleased.pop(request_id, None)
        if stale is not None and not await stale.release():
            self._unreleased[request_id] = stale
        return await acquire(ds, request_id, self.lease_ttl)

    async def _release(self, lease: Lease) -> None:
        if not await lease.release():
            self._unreleased[lease.request_id] = lease

    async def _drive(self, run: RunState) -> RunResult:
        run.durability = run.workflow.durability or self.durability
        lease = run.lease
        if lease is None and run.durability != "async":
            return await self._drive_run(run)
        result: RunResult | None = None
        error: BaseException | None = None
        async with anyio.create_task_group() as tg:
            if lease is not None:
                tg.start_soon(lease.heartbeat, tg.cancel_scope)
            run.background = tg  # write-behind saves; flushed by the run's end
            try:
                result = await self._drive_run(run)
            except BaseException as exc:  # re-raised below, outside the task group
                error = exc
            finally:
                run.background = None
            tg.cancel_scope.cancel()
        if lease is not None and lease.lost and not isinstance(error, LeaseLost):
            raise lease.lost_error() from error
        if error is not None:
            raise error
        assert result is not None
        return result

    async def _drive_run(self, run: RunState) -> RunResult:
        started = time.perf_counter()
        skipped = tuple(run.done)
        try:
            for hook in self._hooks:
                await hook.on_run_start(run)
            await execute(
                run, datasources=self._datasources, hooks=self._hooks, envelope=self._envelope
            )
        except Suspend as sus:
            token = secrets.token_urlsafe(16)
            run.status = "suspended"
            run.extras["suspension"] = (sus.step, _token_hash(run.request_id, sus.step, token))
            for hook in self._hooks:
                with anyio.CancelScope(shield=True):
                    await hook.on_run_end(run, sus)
            return _result(
                run, skipped, started, waiting_step=sus.step, token=token, prompt=sus.prompt
            )
        except BaseException as exc:
            run.status = (
                "cancelled" if isinstance(exc, anyio.get_cancelled_exc_class()) else "failed"
            )
            for hook in self._hooks:
                try:
                    with anyio.CancelScope(shield=True):
                        await hook.on_run_end(run, exc)
                except Exception:  # a failing hook must not hide the run's own error
                    log.exception("on_run_end hook failed for run %s", run.request_id)
            raise
        run.status = "completed"
        try:
            for hook in self._hooks:
                await hook.on_run_end(run, None)
        except CheckpointError:  # the last (write-behind or exit) save failed: not completed
            run.status = "failed"
            raise
        return _result(run, skipped, started)

    # -- resume ----------------------------------------------------------------------------------

    def _scan_prefix(self, request_id: str, wf: Workflow | None) -> str:
        """The literal start of every checkpoint key of a run, for the fallback scan.

        The key pattern is rendered for two very different start times and cut at the step
        name: parts that depend on the time (``${ctx.date}``) end the prefix, so it holds
        whatever the run's start was. Scanned records are matched by request id anyway.
        """
        if wf is None:
            return f"{request_id}-"
        from blokrun.expressions import render_key

        sentinel = "\x00"
        rendered = []
        for started in (0.0, 2_000_000_000.0):
            probe = RunState(
                request_id=request_id, workflow=wf, vars={}, inputs={}, started_at=started
            )
            rendered.append(
                render_key(wf.key_template, KeyScope(probe, sentinel)).split(sentinel, 1)[0]
            )
        return os.path.commonprefix(rendered)  # noqa: RUF071 - a character prefix is meant

    async def _locate(self, request_id: str, wf: Workflow | None) -> FoundRun:
        try:
            validate_request_id(request_id)
        except ValueError as exc:
            raise RunNotFound(str(exc), request_id=str(request_id)[:200]) from None
        candidates = (
            [self._datasources[n] for n in wf.targets]
            if wf is not None and wf.targets
            else list(self._datasources.values())
        )
        found = await self._resumer.locate(
            request_id,
            candidates,
            scan_prefix=self._scan_prefix(request_id, wf),
            workflow=wf.name if wf is not None else None,
        )
        if found is None:
            where = ", ".join(repr(ds.name) for ds in candidates)
            raise RunNotFound(
                f"no checkpoint or run record found on {where}", request_id=request_id
            )
        return found

    async def resume(
        self,
        request_id: str,
        *,
        workflow: str | Path | Mapping[str, Any] | Workflow | None = None,
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
        self._require_connected()
        run, plan = await self._prepare(request_id, workflow, force, from_step, set_vars)
        lease = await self._acquire(request_id, run.workflow)
        try:
            if lease is not None and not await self._unchanged(lease, plan.head):
                # Another process moved the run on between our read and our lease: read again.
                run, plan = await self._prepare(request_id, workflow, force, from_step, set_vars)
            run.lease = lease
            head = plan.head
            if head is not None and head.status not in ("completed", "suspended") and not force:
                # Only the lease holder may judge (and mark) a run dead: a run being driven
                # elsewhere gets RunBusy above, never a dead head over its live one.
                await self._check_dead_letter(run, head)
            return await self._resume(run, plan, input, token)
        finally:
            if lease is not None:
                await self._release(lease)

    async def _unchanged(self, lease: Lease, head: HeadRecord | None) -> bool:
        """Whether the head record under the lease is the one the resume was planned on."""
        raw = await lease.datasource.load(head_key(lease.request_id))
        if raw is None:
            return head is None
        try:
            return decode_record(raw, HeadRecord, envelope=self._envelope) == head
        except BlokrunError:
            return False

    async def _resume(
        self, run: RunState, plan: ResumePlan, input: Any, token: str | None
    ) -> RunResult:
        request_id = run.request_id
        self._accept_input(run, plan, input, token)
        if not plan.run:
            if plan.head_status != "completed":
                for hook in self._hooks:
                    await hook.on_run_end(run, None)
            return RunResult(
                request_id=request_id,
                status="completed",
                vars=run.vars,
                steps_run=(),
                steps_skipped=plan.skip,
                resumed=True,
                duration=0.0,
            )
        log.info(
            "resuming run %s after %s (%d steps done)",
            request_id,
            plan.after or "its start",
            len(plan.skip),
        )
        return await self._drive(run)

    def _accept_input(self, run: RunState, plan: ResumePlan, value: Any, token: str | None) -> None:
        head = plan.head
        rid = run.request_id
        if head is None or head.status != "suspended" or head.waiting_step is None:
            if token is not None or value is not None:
                raise ResumeError("is not waiting for input", request_id=rid)
            return
        step = head.waiting_step
        if token is None or value is None:
            raise ResumeError(
                f"is suspended at step {step!r} waiting for input: resume it with the input "
                "and the token its suspension returned (blokrun resume ID --input JSON "
                "--token TOKEN)",
                request_id=rid,
                step=step,
            )
        if not hmac.compare_digest(_token_hash(rid, step, token), head.token_hash or ""):
            raise ResumeError("wrong token for this run and step", request_id=rid, step=step)
        schema = run.workflow.step(step).spec.inputs.get("schema")
        if isinstance(schema, dict):
            from blokrun.execution.schema import validate

            problems = validate(value, schema, "$.input")
            if problems:
                raise ResumeError(
                    f"input refused, the run stays suspended: {'; '.join(problems[:5])}",
                    request_id=rid,
                    step=step,
                )
        run.extras["provided_input"] = {step: value}

    async def plan_resume(
        self,
        request_id: str,
        *,
        workflow: str | Path | Mapping[str, Any] | Workflow | None = None,
        force: bool = False,
        from_step: str | None = None,
    ) -> ResumePlan:
        """What :meth:`resume` would do, without doing it (``blokrun resume --dry-run``)."""
        self._require_connected()
        _, plan = await self._prepare(request_id, workflow, force, from_step, None, dry=True)
        return plan

    async def _prepare(
        self,
        request_id: str,
        workflow: str | Path | Mapping[str, Any] | Workflow | None,
        force: bool,
        from_step: str | None,
        set_vars: Mapping[str, Any] | None,
        *,
        dry: bool = False,
    ) -> tuple[RunState, ResumePlan]:
        given = self.load(workflow) if workflow is not None else None
        found = await self._locate(request_id, given)
        stored = await self._resumer.definition(found)
        if given is not None:
            wf = given
            if stored is not None and stored.definition_hash != wf.definition_hash and not force:
                self._check_unchanged(request_id, stored.document, wf, found)
        elif stored is not None:
            wf = self._load_stored(stored)
        else:
            raise ResumeError(
                "the workflow definition is not stored with the run; pass the workflow "
                "(blokrun resume ID --workflow FILE)",
                request_id=request_id,
            )
        prefix = self._scan_prefix(request_id, wf)
        if found.head is None and given is None and prefix != f"{request_id}-":
            # Located without a definition, by the seed's <id>-* convention: now that the
            # definition (and its key pattern) is known, scan where the checkpoints really are.
            better = await self._resumer.scan(
                found.datasource, request_id, prefix, workflow=wf.name
            )
            if better and better[0].seq > found.seq:
                found.checkpoint = better[0]
        scope_run = RunState(request_id=request_id, workflow=wf, vars={}, inputs={}, started_at=0.0)
        if found.head is not None:
            scope_run.attempt = found.head.attempt  # a crash left that attempt's keys
        if found.checkpoint is not None:
            scope_run.started_at = found.checkpoint.started_at
        await self._resumer.roll_forward(
            found, wf.step_names, lambda step: self._checkpointer.checkpoint_key(scope_run, step)
        )
        latest_seq = max(
            found.seq,
            found.head.seq if found.head is not None else 0,
            found.head.high_seq if found.head is not None else 0,
        )
        if from_step is not None:
            if from_step not in wf.step_names:
                raise ResumeError(
                    f"--from-step {from_step!r} is not a step of {wf.name!r}; steps: "
                    f"{', '.join(wf.step_names)}",
                    request_id=request_id,
                )
            earlier = await self._resumer.scan(
                found.datasource, request_id, prefix, workflow=found.checkpoint.workflow
                if found.checkpoint is not None else None,
            )  # fmt: skip
            found.checkpoint = next((r for r in earlier if from_step not in r.done), None)
        ckpt, state, refs = await self._resumer.state(found, prefix)
        head = found.head
        if ckpt is not None:
            vars_ = await resolve_blobs(
                state, refs, self._datasources, self._envelope, request_id=request_id
            )
            done = list(ckpt.done)
            started_at = ckpt.started_at
        elif found.run is not None:
            vars_, done = dict(found.run.inputs), []
            started_at = found.run.started_at
        else:
            raise ResumeError(
                "the run's start record is missing and it has no checkpoint: "
                "nothing to resume from",
                request_id=request_id,
            )
        for path, value in (set_vars or {}).items():
            _set_path(vars_, path, value, request_id)
        if head is not None and head.status == "completed" and from_step is None:
            done = list(wf.step_names)  # even a last step that was not checkpointed
        attempt = (head.attempt if head is not None else (ckpt.attempt if ckpt else 1)) + 1
        run = RunState(
            request_id=request_id,
            workflow=wf,
            vars=vars_,
            inputs=dict(found.run.inputs) if found.run is not None else {},
            started_at=started_at,
            attempt=attempt,
            seq=max(latest_seq, ckpt.seq if ckpt is not None else 0),
            last_seq=ckpt.seq if ckpt is not None else 0,
            recoveries=(head.recoveries if head is not None else 0)
            + (
                1
                if head is None or head.status in ("failed", "cancelled", "running", "dead")
                else 0
            ),
            done=done,
            resumed=True,
        )
        if ckpt is not None:
            run.last_step = ckpt.step
            run.last_key = ckpt.key or self._checkpointer.checkpoint_key(scope_run, ckpt.step)
        if set_vars:
            run.extras["edited"] = True
        done_set = set(done)
        plan = ResumePlan(
            request_id=request_id,
            workflow=wf.name,
            after=ckpt.step if ckpt is not None else None,
            from_seq=ckpt.seq if ckpt is not None else 0,
            skip=tuple(s for s in wf.step_names if s in done_set),
            run=tuple(s for s in wf.step_names if s not in done_set),
            attempt=attempt,
            head_status=head.status if head is not None else None,
            head=head,
        )
        return run, plan

    async def _check_dead_letter(self, run: RunState, head: HeadRecord) -> None:
        """Refuse a run that keeps failing in recovery: mark it dead instead of looping.
        Called holding the run's lease: the mark is a fenced write like a checkpoint."""
        resumes = head.recoveries  # waiting for input and answering it does not count
        if head.status != "dead" and resumes < self.max_resumes:
            return
        wf = run.workflow
        if head.status != "dead":
            dead = msgspec.structs.replace(head, status="dead", updated_at=time.time())
            targets = [self._datasources[n] for n in wf.targets if n in self._datasources]
            if targets:
                entry = (head_key(head.request_id), encode_record(dead, self._envelope), wf.ttl)
                await save_everywhere(targets, [entry], run=run, step=None, what="the dead mark")
        raise ResumeError(
            f"gave up after {resumes} resume attempt(s) (the limit is {self.max_resumes}): "
            "the run is dead-lettered; fix the cause, then resume with force "
            "(blokrun resume ID --force)",
            request_id=head.request_id,
        )

    def _check_unchanged(
        self, request_id: str, stored: Mapping[str, Any], wf: Workflow, found: FoundRun
    ) -> None:
        done = found.checkpoint.done if found.checkpoint is not None else []
        old_steps = {s.get("name"): s for s in stored.get("steps", []) if isinstance(s, dict)}
        new_steps = {s.name: s for s in wf.steps}
        changed = []
        for name in done:
            new = new_steps.get(name)
            if new is None:
                changed.append(f"{name!r} (removed)")
            elif orjson.dumps(old_steps.get(name), option=orjson.OPT_SORT_KEYS) != orjson.dumps(
                wf.document["steps"][new.index], option=orjson.OPT_SORT_KEYS
            ):
                changed.append(f"{name!r} (changed)")
        if changed:
            raise DefinitionChanged(
                f"the workflow changed steps that already ran: {', '.join(changed)}; "
                "resume with the original definition (omit --workflow) or pass --force "
                "to continue with the new one anyway",
                request_id=request_id,
            )

    # -- inspection -------------------------------------------------------------------------------

    async def inspect(self, request_id: str) -> RunInfo:
        """The run's head and every checkpoint, ordered by sequence number."""
        self._require_connected()
        found = await self._locate(request_id, None)
        ds = found.datasource
        stored = await self._resumer.definition(found)
        wf = self._load_stored(stored) if stored is not None else None
        where: dict[int, tuple[str, int]] = {}
        records = await self._resumer.scan(
            ds, request_id, self._scan_prefix(request_id, wf), stored=where
        )
        infos = [
            CheckpointInfo(
                where[r.seq][0], r.step, r.seq, r.status, r.time, r.duration, where[r.seq][1],
                r.attempt,
            )
            for r in reversed(records)
        ]  # fmt: skip
        lease = await ds.read_lease(lease_key(request_id)) if ds.supports_leases else None
        return RunInfo(request_id, ds.name, found.head, tuple(infos), lease)

    async def state_at(
        self, request_id: str, *, step: str | None = None, seq: int | None = None
    ) -> tuple[CheckpointInfo, dict[str, Any]]:
        """The vars as they were at a checkpoint: the latest one of ``step``, or number ``seq``."""
        self._require_connected()
        found = await self._locate(request_id, None)
        stored = await self._resumer.definition(found)
        wf = self._load_stored(stored) if stored is not None else None
        prefix = self._scan_prefix(request_id, wf)
        records = await self._resumer.scan(found.datasource, request_id, prefix)
        if step is not None:
            chosen = next((r for r in records if r.step == step), None)
            what = f"step {step!r}"
        else:
            chosen = next((r for r in records if r.seq == seq), None)
            what = f"checkpoint #{seq}"
        if chosen is None:
            have = ", ".join(f"#{r.seq} {r.step}" for r in sorted(records, key=lambda r: r.seq))
            raise ResumeError(f"no checkpoint for {what}; checkpoints: {have or 'none'}",
                              request_id=request_id)  # fmt: skip
        found.checkpoint = chosen
        rec, state, refs = await self._resumer.state(found, prefix)
        if rec is None or rec.seq != chosen.seq:
            raise ResumeError(
                f"the checkpoint for {what} cannot be rebuilt (its chain is broken)",
                request_id=request_id,
            )
        state = await resolve_blobs(
            state, refs, self._datasources, self._envelope, request_id=request_id
        )
        info = CheckpointInfo(
            rec.key, rec.step, rec.seq, rec.status, rec.time, rec.duration, 0, rec.attempt
        )
        return info, state

    async def head(self, request_id: str) -> HeadRecord | None:
        """The stored head record of a run, or ``None``."""
        found = await self._locate(request_id, None)
        return found.head

    # -- scale-out (blokrun.workers) -------------------------------------------------------

    async def queue(self) -> Queue:
        """The run queue: in ``BLOKRUN_QUEUE_DATASOURCE``, else the first Redis or
        PostgreSQL datasource configured (else a memory one, for one process)."""
        self._require_connected()
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
                await self._locate(rid, wf)
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
        self._require_connected()
        delay = poll
        while True:
            try:
                head = (await self._locate(request_id, None)).head
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

    @property
    def envelope(self) -> Envelope:
        """How this runner seals stored records (compression, encryption)."""
        return self._envelope

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
        from blokrun.lifecycle import list_runs

        return await list_runs(
            self, status=status, workflow=workflow, since=since, limit=limit, cursor=cursor
        )

    runs = list_runs  # the name the CLI uses too: ``blokrun runs``

    async def resume_failed(
        self, *, workflow: str | None = None, concurrency: int = 4, limit: int | None = None
    ) -> list[ResumeOutcome]:
        """Resume every failed run, ``concurrency`` at a time; one outcome per run."""
        from blokrun.lifecycle import resume_failed

        return await resume_failed(self, workflow=workflow, concurrency=concurrency, limit=limit)

    async def collect_garbage(
        self,
        *,
        completed_older_than: float | None = 7 * 86400,
        failed_older_than: float | None = 30 * 86400,
        dry_run: bool = False,
    ) -> GcReport:
        """Delete old completed / failed runs and unreferenced blobs (``blokrun gc``)."""
        from blokrun.lifecycle import collect_garbage

        return await collect_garbage(
            self,
            completed_older_than=completed_older_than,
            failed_older_than=failed_older_than,
            dry_run=dry_run,
        )


def _set_path(vars_: dict[str, Any], path: str, value: Any, request_id: str) -> None:
    """``vars_["a"]["b"] = value`` for ``path="a.b"``, creating objects on the way."""
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ResumeError(f"--set {path!r}: expected a dotted name like a.b", request_id=request_id)
    target: Any = vars_
    for i, part in enumerate(parts[:-1]):
        nxt = target.get(part) if isinstance(target, dict) else None
        if nxt is None:
            nxt = target[part] = {}
        if not isinstance(nxt, dict):
            where = ".".join(parts[: i + 1])
            raise ResumeError(
                f"--set {path!r}: vars.{where} is a {type(nxt).__name__}, not an object",
                request_id=request_id,
            )
        target = nxt
    target[parts[-1]] = value


def _checked_request_id(request_id: str) -> str:
    try:
        return validate_request_id(request_id)
    except ValueError as exc:
        raise ConfigError(str(exc), variable="request_id") from None


def _token_hash(request_id: str, step: str, token: str) -> str:
    """Tokens are stored hashed, bound to their run and step."""
    return hashlib.sha256(f"{request_id}:{step}:{token}".encode()).hexdigest()


def _result(
    run: RunState, skipped: tuple[str, ...], started: float, **suspension: Any
) -> RunResult:
    """How a driven run ended (``suspension``: waiting_step, token, prompt)."""
    return RunResult(
        request_id=run.request_id,
        status=run.status,
        vars=run.vars,
        steps_run=tuple(run.steps_run),
        steps_skipped=skipped,
        resumed=run.resumed,
        duration=time.perf_counter() - started,
        **suspension,
    )
