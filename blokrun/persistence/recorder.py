"""The after-step hook that records one attempt of a run: start record, checkpoints, status.

One :class:`RunRecorder` per attempt, made by the run store with the position the attempt
starts from (its sequence numbers, the checkpoint it stands on) and owning every piece of
per-run checkpoint state as typed fields. Per checkpointed step it encodes the record
**once** and sends ``[checkpoint, head]`` as one batch to every target at the same time
(:func:`~blokrun.persistence.fanout.save_everywhere`); a failed save fails the run at once
with :class:`~blokrun.errors.CheckpointError` naming the datasource and key, and no later
step runs. The head record is written after the checkpoint within the batch, so a crash
between the two leaves a head one step behind, which resume rolls forward.

Durability (``persistence.durability`` or the runner's default): ``sync`` stores a step's
checkpoint before the next step starts; ``async`` encodes it at once and stores it while
the next step runs (in order: the next save first waits for it); ``exit`` stores one
checkpoint when the attempt ends.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from blokrun.errors import CheckpointError
from blokrun.execution.hooks import Hook
from blokrun.persistence.codec import Kind, dumps_value
from blokrun.persistence.fanout import save_everywhere
from blokrun.persistence.keys import (
    KeyScope,
    checkpoint_key,
    definition_key,
    head_key,
    run_key,
)
from blokrun.persistence.records import (
    DefinitionRecord,
    HeadRecord,
    RunRecord,
    encode_checkpoint,
    encode_record,
)
from blokrun.persistence.state import BlobPolicy, StateWriter

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anyio.abc import TaskGroup

    from blokrun.datasources import Datasource, Entry
    from blokrun.execution.events import RunEnded, RunStarted, StepFinished
    from blokrun.persistence.envelope import Envelope
    from blokrun.persistence.leases import Lease
    from blokrun.spec.loader import Step, Workflow
    from blokrun.types import Durability, RunStatus

__all__ = ["Position", "RecorderContext", "RunRecorder"]

log = logging.getLogger("blokrun.persistence")


@dataclass(frozen=True, slots=True)
class Position:
    """Where an attempt starts in the run's record: ``seq`` is the highest sequence number
    used so far, ``last_seq``/``last_step``/``last_key`` the checkpoint it stands on."""

    seq: int = 0
    last_seq: int = 0
    last_step: str | None = None
    last_key: str | None = None


@dataclass(slots=True)
class RecorderContext:
    """What every recorder of one store shares: the datasources, how records are sealed,
    where large values go, and which definitions this process already stored (with no
    TTL) per datasource."""

    datasources: Mapping[str, Datasource]
    envelope: Envelope
    blobs: BlobPolicy
    definitions_written: set[tuple[str, str]] = field(default_factory=set)


@dataclass(slots=True)
class _Pending:
    """One write-behind save: done when it landed or failed (``error``)."""

    before: Position  # where the run stands until it lands
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class _Deferred:
    """Durability ``exit``: the one checkpoint of the attempt, stored when it ends."""

    step: Step
    duration: float
    attempts: int
    last: bool
    done: tuple[str, ...]


class RunRecorder(Hook):
    """Records one attempt of one run on its workflow's checkpoint targets."""

    def __init__(
        self,
        shared: RecorderContext,
        *,
        request_id: str,
        workflow: Workflow,
        inputs: Mapping[str, Any],
        started_at: float,
        attempt: int,
        resumed: bool,
        recoveries: int,
        position: Position,
        durability: Durability,
        lease: Lease | None,
        edited: bool = False,
    ) -> None:
        self._shared = shared
        self.request_id = request_id
        self.workflow = workflow
        self.inputs = inputs
        self.started_at = started_at
        self.attempt = attempt
        self.resumed = resumed
        self.recoveries = recoveries
        self.seq = position.seq
        self.position = position
        self.durability: Durability = durability
        self.lease = lease
        #: vars were edited before this attempt (resume --set): stored at its start
        self.edited = edited
        #: where write-behind saves run (durability "async"); set by whoever drives the run
        self.background: TaskGroup | None = None
        self.targets = [shared.datasources[name] for name in workflow.targets]
        self._writer: StateWriter | None = None
        self._pending: _Pending | None = None
        self._deferred: _Deferred | None = None
        self._head_completed = False

    # -- records ---------------------------------------------------------------------------

    def _seal(self, record: msgspec.Struct) -> bytes:
        return encode_record(record, self._shared.envelope)

    def _writer_for_run(self) -> StateWriter:
        if self._writer is None:
            # Known blobs are remembered per run, not per process: a blob that gc removed
            # meanwhile is found missing (one exists() per large value per run) and written.
            self._writer = StateWriter(self._shared.envelope, self._shared.blobs, set())
        return self._writer

    def _head(
        self,
        status: RunStatus,
        *,
        error: str | None = None,
        failed_step: str | None = None,
        at: Position | None = None,
    ) -> HeadRecord:
        """A head record; by default it points at the run's latest stored checkpoint."""
        at = at or self.position
        wf = self.workflow
        return HeadRecord(
            request_id=self.request_id,
            workflow=wf.name,
            version=wf.version,
            definition_hash=wf.definition_hash,
            status=status,
            seq=at.last_seq,
            step=at.last_step,
            key=at.last_key,
            started_at=self.started_at,
            updated_at=time.time(),
            attempt=self.attempt,
            error=error,
            failed_step=failed_step,
            high_seq=max(self.seq, at.last_seq),
            recoveries=self.recoveries,
        )

    async def _save(
        self, targets: Sequence[Datasource], entries: Sequence[Entry], step: str | None, what: str
    ) -> None:
        await save_everywhere(
            targets, entries, request_id=self.request_id, lease=self.lease, step=step, what=what
        )

    async def _save_head(self, head: HeadRecord, step: str | None, what: str) -> None:
        entry = (head_key(self.request_id), self._seal(head), self.workflow.ttl)
        await self._save(self.targets, [entry], step, what)

    # -- hook events -----------------------------------------------------------------------

    async def on_run_start(self, event: RunStarted) -> None:
        if not self.targets:
            return
        wf = self.workflow
        ttl = wf.ttl
        entries: list[Entry] = []
        if not self.resumed:
            record = RunRecord(
                request_id=self.request_id,
                workflow=wf.name,
                version=wf.version,
                definition_hash=wf.definition_hash,
                inputs=dict(self.inputs),
                started_at=self.started_at,
                source=wf.source,
            )
            entries.append((run_key(self.request_id), self._seal(record), ttl))
        written = self._shared.definitions_written
        todo = [ds for ds in self.targets if (ds.name, wf.definition_hash) not in written]
        if todo:
            definition = DefinitionRecord(
                definition_hash=wf.definition_hash, document=wf.document, source=wf.source
            )
            # The definition goes first: a head must never point at a missing definition.
            await self._save(
                todo,
                [(definition_key(wf.definition_hash), self._seal(definition), ttl)],
                None,
                "the workflow definition",
            )
            if ttl is None:
                written.update((ds.name, wf.definition_hash) for ds in todo)
        entries.append((head_key(self.request_id), self._seal(self._head("running")), ttl))
        await self._save(self.targets, entries, None, "the run's start")
        if self.edited and self.position.last_step is not None:
            # vars were edited before this attempt (resume --set): store the edit as a new
            # version of the checkpoint it started from, so it survives a failure.
            self.edited = False
            step = wf.step(self.position.last_step)
            await self._checkpoint(step, 0.0, 1, event.done, event.vars, last=False)

    async def after_step(self, event: StepFinished) -> None:
        step = event.step
        if step.publish is not None:
            await self._publish(event)
        if not step.checkpoint or not self.targets:
            return
        if self.durability == "exit":
            self._deferred = _Deferred(step, event.duration, event.attempts, event.last, event.done)
            return
        await self._checkpoint(
            step,
            event.duration,
            event.attempts,
            event.done,
            event.vars,
            last=event.last,
            behind=self.durability == "async" and self.background is not None,
        )

    async def _publish(self, event: StepFinished) -> None:
        from blokrun.expressions import render_key

        pub = event.step.publish
        assert pub is not None
        scope = KeyScope.of(
            self.workflow, self.request_id, self.started_at, event.step.name, event.vars
        )
        key = render_key(pub.key, scope)
        value = self._shared.envelope.seal(
            Kind.VALUE, dumps_value(event.output, path=f"vars.{event.step.name}")
        )
        await self._save(
            [self._shared.datasources[pub.target]],
            [(key, value, pub.ttl)],
            event.step.name,
            "the step's published output",
        )

    async def flush(self) -> None:
        """Wait for the write-behind save in flight, if any; raise its error."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        with anyio.CancelScope(shield=True):
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    async def _write_behind(
        self, step: str, blobs: list[Entry], entries: list[Entry], pending: _Pending
    ) -> None:
        try:
            with anyio.CancelScope(shield=True):  # a started save is finished, not torn
                await self._store(step, blobs, entries)
        except BaseException as exc:
            pending.error = exc
            # The run stands on the last checkpoint that was stored, not on this one.
            self.position = pending.before
            self.seq = pending.before.seq
            self._head_completed = False
            if not isinstance(exc, Exception):
                raise
        finally:
            pending.done.set()

    async def _store(self, step: str, blobs: list[Entry], entries: list[Entry]) -> None:
        """Large values first (a checkpoint never refers to a missing blob), then the
        checkpoint and head on every target."""
        writer = self._writer_for_run()
        try:
            blob_ds = self._shared.blobs.datasource
            if blobs and blob_ds is not None:
                await self._save([blob_ds], blobs, step, "large values")
                for blob, _, _ in blobs:
                    writer.blob_written(blob)
            await self._save(self.targets, entries, step, "the checkpoint")
        except BaseException:
            writer.forget()
            raise

    async def _checkpoint(
        self,
        step: Step,
        duration: float,
        attempts: int,
        done: Sequence[str],
        vars: Mapping[str, Any],
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
            await self.flush()
        wf = self.workflow
        seq = self.seq + 1
        key = checkpoint_key(wf, self.request_id, self.started_at, step.name, self.attempt, vars)
        writer = self._writer_for_run()
        try:
            state = await writer.encode(vars, seq, key)
        except BaseException:
            writer.forget()
            raise
        record = encode_checkpoint(
            request_id=self.request_id,
            workflow=wf.name,
            version=wf.version,
            definition_hash=wf.definition_hash,
            step=step.name,
            seq=seq,
            done=list(done),
            vars=state.vars,
            started_at=self.started_at,
            time=time.time(),
            duration=duration,
            attempt=self.attempt,
            attempts=attempts,
            snapshot=state.snapshot,
            removed=state.removed,
            base=state.base,
            chain=state.chain,
            key=key,
            refs=state.refs,
            envelope=self._shared.envelope,
        )
        at = Position(seq, seq, step.name, key)
        head = self._head("completed" if last else "running", at=at)
        blobs: list[Entry] = [(k, v, None) for k, v in state.blobs]
        entries: list[Entry] = [
            (key, record, step.ttl),
            (head_key(self.request_id), self._seal(head), wf.ttl),
        ]
        before = self.position
        if behind and self.background is not None:
            pending = _Pending(
                Position(self.seq, before.last_seq, before.last_step, before.last_key)
            )
            self._pending = pending
            self.background.start_soon(self._write_behind, step.name, blobs, entries, pending)
        else:
            await self._store(step.name, blobs, entries)
        self.seq = seq
        self.position = at
        if last:
            self._head_completed = True

    async def on_run_end(self, event: RunEnded) -> None:
        if not self.targets or (self.lease is not None and self.lease.lost):
            return  # another process owns the run now: its status is theirs to write
        error = event.error
        status = event.status
        final: CheckpointError | None = None
        try:
            await self.flush()  # write-behind: the last save lands before the run ends
            deferred, self._deferred = self._deferred, None
            if deferred is not None:  # durability "exit": the one checkpoint of this attempt
                with anyio.CancelScope(shield=True):
                    await self._checkpoint(
                        deferred.step,
                        deferred.duration,
                        deferred.attempts,
                        deferred.done,
                        event.vars,
                        last=deferred.last,
                    )
        except CheckpointError as exc:
            if status in ("completed", "suspended"):
                # The run did not complete (or suspend) after all: record it as failed on
                # the checkpoint it stands on, then report the save's error.
                final = exc
                error, status = exc, "failed"
            else:
                log.warning("run %s: its last checkpoint was not stored: %s", self.request_id, exc)
        if status == "completed":
            if not self._head_completed:  # else the last checkpoint marked it completed
                await self._save_head(self._head("completed"), None, "the run's completion")
            return
        if status == "suspended":
            suspension = event.suspension
            assert suspension is not None
            head = msgspec.structs.replace(
                self._head("suspended"),
                waiting_step=suspension.step,
                token_hash=suspension.token_hash,
            )
            await self._save_head(head, suspension.step, "the run's suspension")
            return
        if status == "cancelled":
            message = "cancelled (SIGINT, SIGTERM or the caller) while the step ran"
        else:
            message = getattr(error, "detail", None) or str(error) or type(error).__name__
        failed_step = getattr(error, "step", None)
        head = self._head(status, error=message[:2000], failed_step=failed_step)
        try:
            with anyio.CancelScope(shield=True):
                await self._save_head(head, None, "the run's failure status")
        except CheckpointError as exc:
            # The checkpoints are intact; only the status could not be recorded.
            log.warning("could not record the failure of run %s: %s", self.request_id, exc)
        if final is not None:
            raise final
