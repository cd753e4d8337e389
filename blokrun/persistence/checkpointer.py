"""The after-step hook that checkpoints a run to every target, concurrently.

Per checkpointed step it encodes the record **once** and sends ``[checkpoint, head]`` as one
``save_batch`` to each target at the same time (one round trip per target on drivers with
native batches), so a step's save costs about the slowest target, not the sum. A failed save
fails the run at once with :class:`~blokrun.errors.CheckpointError` naming the datasource and
key; no later step runs. The head record is written after the checkpoint within the batch,
so a crash between the two leaves a head one step behind, which the resumer rolls forward.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio
import msgspec

from blokrun.errors import BlokrunError, CheckpointError, DatasourceError, LeaseLost
from blokrun.execution.builtins import Suspend
from blokrun.execution.hooks import Hook
from blokrun.persistence.codec import Kind, dumps_value
from blokrun.persistence.records import (
    DEFAULT_ENVELOPE,
    DefinitionRecord,
    HeadRecord,
    RunRecord,
    definition_key,
    encode_checkpoint,
    encode_record,
    head_key,
    run_key,
)
from blokrun.persistence.state import BlobPolicy, StateWriter

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from blokrun.datasources import Datasource, Entry
    from blokrun.execution.hooks import RunState, StepOutcome
    from blokrun.persistence.envelope import Envelope
    from blokrun.persistence.records import RunStatus
    from blokrun.spec.loader import Step

__all__ = ["Checkpointer", "KeyScope", "save_everywhere"]

log = logging.getLogger("blokrun.persistence")


_Entries: TypeAlias = "tuple[list[Entry], list[Entry]]"  # (large values, records)


class _Pending:
    """One write-behind save of a run: done when it landed or failed (``error``)."""

    __slots__ = ("before", "done", "error")

    def __init__(self, before: tuple[int, int, str | None, str | None]) -> None:
        self.done = anyio.Event()
        self.error: BaseException | None = None
        self.before = before  # the run's (seq, last_seq, last_step, last_key) until it lands


class KeyScope:
    """The expression scope for key patterns: ``ctx.request.id``, ``stepName``, dates."""

    __slots__ = ("_ctx", "_step")

    def __init__(self, run: RunState, step: str) -> None:
        started = run.started_at
        self._step = step
        self._ctx = {
            "request": {"id": run.request_id, "started_at": started},
            "workflow": {
                "name": run.workflow.name,
                "version": run.workflow.version,
                "hash": run.workflow.definition_hash,
            },
            "vars": run.vars,
            "timestamp": int(started * 1000),
            "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
            "step": step,
            "idempotency_key": f"{run.request_id}:{step}",
        }

    def lookup_root(self, name: str) -> Any:
        if name == "stepName":
            return self._step
        return self._ctx

    async def call_datasource(self, name: Any, key: Any) -> Any:
        raise DatasourceError("ctx.datasource cannot be used in a key")


async def save_everywhere(
    targets: Sequence[Datasource],
    entries: Sequence[Entry],
    *,
    run: RunState,
    step: str | None,
    what: str,
) -> None:
    """``save_batch(entries)`` on every target at once; raise one CheckpointError on failure."""

    def failure(ds: Datasource, exc: BaseException) -> CheckpointError:
        key = getattr(exc, "key", None) or entries[0][0]
        return CheckpointError(
            f"saving {what} to datasource {ds.name!r} failed (key {key!r}): {exc}",
            request_id=run.request_id,
            step=step,
            datasource=ds.name,
            key=key,
        )

    lease = run.lease

    async def write(ds: Datasource) -> None:
        if lease is not None and ds is lease.datasource:
            # Fenced: stored only while this run's lease token is the latest.
            if lease.lost or not await ds.save_batch_fenced(entries, lease.key, lease.token):
                raise lease.lost_error(step)
        else:
            await ds.save_batch(entries)

    if len(targets) == 1:
        ds = targets[0]
        try:
            await write(ds)
        except LeaseLost:
            raise
        except BlokrunError as exc:
            raise failure(ds, exc) from exc
        return
    errors: list[tuple[Datasource, BaseException]] = []

    async def one(ds: Datasource) -> None:
        try:
            await write(ds)
        except BlokrunError as exc:
            errors.append((ds, exc))

    async with anyio.create_task_group() as tg:
        for ds in targets:
            tg.start_soon(one, ds)
    if errors:
        for _, err in errors:
            if isinstance(err, LeaseLost):
                raise err
        first = failure(*errors[0])
        if len(errors) > 1:
            others = ", ".join(repr(ds.name) for ds, _ in errors[1:])
            first = CheckpointError(
                f"{first.detail}; also failed: {others}",
                request_id=run.request_id,
                step=step,
                datasource=first.datasource,
                key=first.key,
            )
        raise first from errors[0][1]


class Checkpointer(Hook):
    """Writes the run record, checkpoints and head records of runs to their targets."""

    __slots__ = ("_datasources", "_definitions_written", "blobs", "envelope")

    def __init__(
        self,
        datasources: Mapping[str, Datasource],
        *,
        envelope: Envelope = DEFAULT_ENVELOPE,
        blobs: BlobPolicy | None = None,
    ) -> None:
        self._datasources = datasources
        self._definitions_written: set[tuple[str, str]] = set()
        self.envelope = envelope
        self.blobs = blobs or BlobPolicy()

    def _seal(self, record: msgspec.Struct) -> bytes:
        return encode_record(record, self.envelope)

    def _writer(self, run: RunState) -> StateWriter:
        writer = run.extras.get("state_writer")
        if not isinstance(writer, StateWriter):
            # Known blobs are remembered per run, not per process: a blob that gc removed
            # meanwhile is found missing (one exists() per large value per run) and written.
            writer = StateWriter(self.envelope, self.blobs, set())
            run.extras["state_writer"] = writer
        return writer

    def targets(self, run: RunState) -> list[Datasource]:
        return [self._datasources[name] for name in run.workflow.targets]

    def _head(
        self,
        run: RunState,
        status: RunStatus,
        *,
        error: str | None = None,
        failed_step: str | None = None,
        seq: int | None = None,
        step: str | None = None,
        key: str | None = None,
    ) -> HeadRecord:
        """A head record; by default it points at the run's latest stored checkpoint."""
        if seq is None:
            seq, step, key = run.last_seq, run.last_step, run.last_key
        return HeadRecord(
            request_id=run.request_id,
            workflow=run.workflow.name,
            version=run.workflow.version,
            definition_hash=run.workflow.definition_hash,
            status=status,
            seq=seq,
            step=step,
            key=key,
            started_at=run.started_at,
            updated_at=time.time(),
            attempt=run.attempt,
            error=error,
            failed_step=failed_step,
            high_seq=max(run.seq, seq),
            recoveries=run.recoveries,
        )

    def checkpoint_key(self, run: RunState, step: str) -> str:
        """The key pattern's key; from the second attempt on, ``~<attempt>`` is appended so
        a re-run step is recorded beside its earlier checkpoint, not over it (history)."""
        from blokrun.expressions import render_key

        key = render_key(run.workflow.key_template, KeyScope(run, step))
        return key if run.attempt <= 1 else f"{key}~{run.attempt}"

    async def on_run_start(self, run: RunState) -> None:
        targets = self.targets(run)
        if not targets:
            return
        wf = run.workflow
        ttl = wf.ttl
        head = self._head(run, "running")
        entries: list[Entry] = []
        if not run.resumed:
            entries.append(
                (
                    run_key(run.request_id),
                    self._seal(
                        RunRecord(
                            request_id=run.request_id,
                            workflow=wf.name,
                            version=wf.version,
                            definition_hash=wf.definition_hash,
                            inputs=run.inputs,
                            started_at=run.started_at,
                            source=wf.source,
                        )
                    ),
                    ttl,
                )
            )
        todo = [
            ds for ds in targets if (ds.name, wf.definition_hash) not in self._definitions_written
        ]
        if todo:
            definition = (
                definition_key(wf.definition_hash),
                self._seal(
                    DefinitionRecord(
                        definition_hash=wf.definition_hash, document=wf.document, source=wf.source
                    )
                ),
                ttl,
            )
            # The definition goes first: a head must never point at a missing definition.
            await save_everywhere(
                todo, [definition], run=run, step=None, what="the workflow definition"
            )
            if ttl is None:
                self._definitions_written.update((ds.name, wf.definition_hash) for ds in todo)
        entries.append((head_key(run.request_id), self._seal(head), ttl))
        await save_everywhere(targets, entries, run=run, step=None, what="the run's start")
        if run.extras.pop("edited", False) and run.last_step is not None:
            # vars were edited before this attempt (resume --set): store the edit as a new
            # version of the checkpoint it started from, so it survives a failure.
            await self._checkpoint(run, wf.step(run.last_step), 0.0, 1, last=False)

    async def after_step(self, run: RunState, outcome: StepOutcome) -> None:
        step = outcome.step
        targets = self.targets(run)
        if step.publish is not None:
            from blokrun.expressions import render_key

            pub = step.publish
            key = render_key(pub.key, KeyScope(run, step.name))
            value = self.envelope.seal(
                Kind.VALUE, dumps_value(outcome.output, path=f"vars.{step.name}")
            )
            await save_everywhere(
                [self._datasources[pub.target]],
                [(key, value, pub.ttl)],
                run=run,
                step=step.name,
                what="the step's published output",
            )
        if not step.checkpoint or not targets:
            return
        if run.durability == "exit":
            run.extras["deferred"] = (step, outcome.duration, outcome.attempts, outcome.last)
            return
        await self._checkpoint(
            run,
            step,
            outcome.duration,
            outcome.attempts,
            last=outcome.last,
            behind=run.durability == "async" and run.background is not None,
        )

    async def flush(self, run: RunState) -> None:
        """Wait for the run's write-behind save, if one is in flight; raise its error."""
        pending: _Pending | None = run.extras.pop("pending_write", None)
        if pending is None:
            return
        with anyio.CancelScope(shield=True):
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    async def _write_behind(
        self, run: RunState, writer: StateWriter, step: str, entries: _Entries, pending: _Pending
    ) -> None:
        blobs, records = entries
        try:
            with anyio.CancelScope(shield=True):  # a started save is finished, not torn
                await self._store(run, writer, step, blobs, records)
        except BaseException as exc:
            pending.error = exc
            # The run stands on the last checkpoint that was stored, not on this one.
            run.seq, run.last_seq, run.last_step, run.last_key = pending.before
            run.extras.pop("head_completed", None)
            if not isinstance(exc, Exception):
                raise
        finally:
            pending.done.set()

    async def _store(
        self,
        run: RunState,
        writer: StateWriter,
        step: str,
        blobs: list[Entry],
        entries: list[Entry],
    ) -> None:
        """Large values first (a checkpoint never refers to a missing blob), then the
        checkpoint and head on every target."""
        try:
            if blobs and self.blobs.datasource is not None:
                await save_everywhere(
                    [self.blobs.datasource], blobs, run=run, step=step, what="large values"
                )
                for blob, _, _ in blobs:
                    writer.blob_written(blob)
            await save_everywhere(
                self.targets(run), entries, run=run, step=step, what="the checkpoint"
            )
        except BaseException:
            writer.forget()
            raise

    async def _checkpoint(
        self,
        run: RunState,
        step: Step,
        duration: float,
        attempts: int,
        *,
        last: bool,
        behind: bool = False,
    ) -> None:
        """Write the run's state as it is now as ``step``'s checkpoint, then the head.

        ``behind`` (durability "async"): encode now -- the state may change as soon as
        this returns -- and store in the background while the next step runs; the next
        checkpoint (or the run's end) first waits for it, so saves stay in order.
        """
        if behind:
            await self.flush(run)
        wf = run.workflow
        ttl = step.ttl
        seq = run.seq + 1
        key = self.checkpoint_key(run, step.name)
        writer = self._writer(run)
        try:
            state = await writer.encode(run.vars, seq, key)
        except BaseException:
            writer.forget()
            raise
        now = time.time()
        record = encode_checkpoint(
            request_id=run.request_id,
            workflow=wf.name,
            version=wf.version,
            definition_hash=wf.definition_hash,
            step=step.name,
            seq=seq,
            done=run.done,
            vars=state.vars,
            started_at=run.started_at,
            time=now,
            duration=duration,
            attempt=run.attempt,
            attempts=attempts,
            snapshot=state.snapshot,
            removed=state.removed,
            base=state.base,
            chain=state.chain,
            key=key,
            refs=state.refs,
            envelope=self.envelope,
        )
        status: RunStatus = "completed" if last else "running"
        head = self._head(run, status, seq=seq, step=step.name, key=key)
        blobs: list[Entry] = [(k, v, None) for k, v in state.blobs]
        entries: list[Entry] = [
            (key, record, ttl),
            (head_key(run.request_id), self._seal(head), wf.ttl),
        ]
        if behind and run.background is not None:
            pending = _Pending((run.seq, run.last_seq, run.last_step, run.last_key))
            run.extras["pending_write"] = pending
            run.background.start_soon(
                self._write_behind, run, writer, step.name, (blobs, entries), pending
            )
        else:
            await self._store(run, writer, step.name, blobs, entries)
        run.seq, run.last_seq, run.last_step, run.last_key = seq, seq, step.name, key
        if last:
            run.extras["head_completed"] = True

    async def on_run_end(self, run: RunState, error: BaseException | None) -> None:
        targets = self.targets(run)
        if not targets or (run.lease is not None and run.lease.lost):
            return  # another process owns the run now: its status is theirs to write
        final: CheckpointError | None = None
        try:
            await self.flush(run)  # write-behind: the last save lands before the run ends
            deferred = run.extras.pop("deferred", None)
            if deferred is not None:  # durability "exit": the one checkpoint of this attempt
                step, duration, attempts, last = deferred
                with anyio.CancelScope(shield=True):
                    await self._checkpoint(run, step, duration, attempts, last=last)
        except CheckpointError as exc:
            if error is None or isinstance(error, Suspend):
                # The run did not complete (or suspend) after all: record it as failed on
                # the checkpoint it stands on, then report the save's error.
                final = error = exc
            else:
                log.warning("run %s: its last checkpoint was not stored: %s", run.request_id, exc)
        if error is None:
            if run.extras.get("head_completed"):
                return  # the last checkpoint already marked the head completed
            head = self._head(run, "completed")
            await save_everywhere(
                targets,
                [(head_key(run.request_id), self._seal(head), run.workflow.ttl)],
                run=run,
                step=None,
                what="the run's completion",
            )
            return
        if isinstance(error, Suspend):
            step, token_hash = run.extras["suspension"]
            head = msgspec.structs.replace(
                self._head(run, "suspended"), waiting_step=step, token_hash=token_hash
            )
            await save_everywhere(
                targets,
                [(head_key(run.request_id), self._seal(head), run.workflow.ttl)],
                run=run,
                step=step,
                what="the run's suspension",
            )
            return
        status: RunStatus = (
            "cancelled" if isinstance(error, anyio.get_cancelled_exc_class()) else "failed"
        )
        failed_step = getattr(error, "step", None)
        if status == "cancelled":
            message = "cancelled (SIGINT, SIGTERM or the caller) while the step ran"
        else:
            message = getattr(error, "detail", None) or str(error) or type(error).__name__
        head = self._head(run, status, error=message[:2000], failed_step=failed_step)
        try:
            with anyio.CancelScope(shield=True):
                await save_everywhere(
                    targets,
                    [(head_key(run.request_id), self._seal(head), run.workflow.ttl)],
                    run=run,
                    step=None,
                    what="the run's failure status",
                )
        except CheckpointError as exc:
            # The checkpoints are intact; only the status could not be recorded.
            log.warning("could not record the failure of run %s: %s", run.request_id, exc)
        if final is not None:
            raise final
