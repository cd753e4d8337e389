"""The after-step hook that records one attempt of a run: start record, checkpoints, status.

One :class:`RunRecorder` per attempt, made by the run store with the position the attempt
starts from (its incarnation and sequence numbers, the checkpoint it stands on) and owning
every piece of per-run checkpoint state as typed fields. Per checkpointed step it encodes
the record **once** and sends ``[checkpoint, head, alias]`` as one batch to every target at
the same time (:func:`~blokrun.persistence.fanout.save_everywhere`); a failed save fails the
run at once with :class:`~blokrun.errors.CheckpointError` naming the datasource and key, and
no later step runs. The head record is written after the checkpoint within the batch, so a
crash between the two leaves a head one step behind, which resume rolls forward.

Every attempt writes the workflow definition again at its start (in the start batch, or
before it on a target whose batches are not atomic): a target may have lost it since, and a
process never assumes that what it wrote earlier is still there. A target that could not be
reached during the attempt is not waited for again by its failure path: a frozen datasource
costs one ``TIMEOUT``, not one per write the failure path still wants.

Durability (``persistence.durability`` or the runner's default): ``sync`` stores a step's
checkpoint before the next step starts; ``async`` encodes it at once and stores it while
the next step runs (in order: the next save first waits for it); ``exit`` stores one
checkpoint when the attempt ends.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec

from blokrun.datasources.protocol import OWNED_MARK, RELEASE_ENTRY, owned_key
from blokrun.errors import CheckpointError, DatasourceError, DatasourceUnavailable
from blokrun.execution.hooks import Hook
from blokrun.persistence.codec import Kind, dumps_value
from blokrun.persistence.fanout import save_everywhere
from blokrun.persistence.hints import RecentRuns, Spot
from blokrun.persistence.indexing import head_index_entry
from blokrun.persistence.items import ItemLog
from blokrun.persistence.keys import (
    KeyScope,
    alias_key,
    checkpoint_key,
    definition_key,
    head_key,
    items_prefix,
    run_key,
)
from blokrun.persistence.records import (
    LAYOUT,
    AliasRecord,
    DefinitionRecord,
    HeadRecord,
    RunRecord,
    TimerRecord,
    alias_holder,
    alias_owner,
    encode_alias,
    encode_checkpoint,
    encode_record,
)
from blokrun.persistence.state import BlobPolicy, StateWriter
from blokrun.persistence.timers import timer_entry

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anyio.abc import TaskGroup

    from blokrun.datasources import Datasource, Entry
    from blokrun.execution.events import (
        ItemFinished,
        RunEnded,
        RunStarted,
        StepFinished,
        TimerSet,
    )
    from blokrun.persistence.envelope import Envelope
    from blokrun.persistence.leases import Lease
    from blokrun.spec.loader import Step, Workflow
    from blokrun.types import Durability, RunStatus

__all__ = ["Position", "RecorderContext", "RunRecorder"]

log = logging.getLogger("blokrun.persistence")

#: how long the failure path tries again a target that could not be reached during the
#: attempt (seconds): a frozen datasource ends a run within one TIMEOUT plus this
RETRY_BOUND = 1.0
#: how many workflows' sealed definition records a store keeps (RecorderContext)
_DEFINITIONS_KEPT = 256


@dataclass(frozen=True, slots=True)
class Position:
    """Where an attempt starts in the run's record: ``seq`` is the highest sequence number
    used so far, ``last_seq``/``last_step``/``last_key`` the checkpoint it stands on."""

    seq: int = 0
    last_seq: int = 0
    last_step: str | None = None
    last_key: str | None = None


@dataclass(frozen=True, slots=True)
class RecorderContext:
    """What every recorder of one store shares: the datasources, how records are sealed,
    and where large values go."""

    datasources: Mapping[str, Datasource]
    envelope: Envelope
    blobs: BlobPolicy
    #: definition records as sealed for storing, by workflow (hash, source, search paths):
    #: every run of a workflow stores the same record, sealed once (same bytes: a sealed
    #: record may be stored again, encrypted or not)
    definitions: dict[tuple[str, str, tuple[str, ...]], bytes] = field(default_factory=dict)
    #: where each recorder left its run (the head's last word): read early by a resume
    recent: RecentRuns = field(default_factory=RecentRuns)

    def sealed_definition(self, wf: Workflow, key: str) -> bytes:
        """``wf``'s definition record sealed for ``key`` (its definition key)."""
        known = (wf.definition_hash, wf.source, wf.search_paths)
        sealed = self.definitions.get(known)
        if sealed is None:
            record = DefinitionRecord(
                definition_hash=wf.definition_hash,
                document=wf.document,
                source=wf.source,
                search_paths=list(wf.search_paths),
            )
            sealed = encode_record(record, self.envelope, bind=key)
            if len(self.definitions) >= _DEFINITIONS_KEPT:
                self.definitions.pop(next(iter(self.definitions)))  # the oldest
            self.definitions[known] = sealed
        return sealed


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
    skipped: bool = False


def _trace(error: BaseException) -> str:
    """The traceback of what failed: the node's own exception (a StepFailed's cause)."""
    cause = error.__cause__ if error.__cause__ is not None else error
    text = "".join(traceback.format_exception(cause))
    return text[-8000:]


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
        incarnation: int,
        attempt: int,
        resumed: bool,
        recoveries: int,
        position: Position,
        durability: Durability,
        lease: Lease | None,
        edited: bool = False,
        forked: tuple[str, str | None] | None = None,
        parent: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self._shared = shared
        self.request_id = request_id
        self.workflow = workflow
        self.inputs = inputs
        self.started_at = started_at
        self.incarnation = incarnation
        self.attempt = attempt
        self.resumed = resumed
        self.recoveries = recoveries
        self.seq = position.seq
        self.position = position
        self.durability: Durability = durability
        self.lease = lease
        #: vars were edited before this attempt (resume --set): stored at its start
        self.edited = edited
        #: a fork of (run, from step): its starting state is stored at its start
        self.forked = forked
        #: the run that started this one (a sub-workflow's child run)
        self.parent = parent
        #: the user's tags, kept on every head record of the run
        self.tags = dict(tags or {})
        #: where write-behind saves run (durability "async"); set by whoever drives the run
        self.background: TaskGroup | None = None
        self.targets = [shared.datasources[name] for name in workflow.targets]
        #: every target keeps an alias's first writer itself (Capabilities.owned_writes):
        #: an alias is written with its checkpoint, not read first
        self._owned_aliases = bool(self.targets) and all(
            ds.capabilities.owned_writes for ds in self.targets
        )
        #: the run's last checkpoint ends its lease in the same write, where the lease's
        #: datasource can (Capabilities.release_in_batch): no release round trip after it
        self._release_with_last = (
            lease is not None
            and lease.datasource.capabilities.release_in_batch
            and len(self.targets) == 1  # else the lease would end before the others' writes
        )
        #: datasources that could not be reached during this attempt
        self.unreachable: set[str] = set()
        #: until when the failure path may try unreachable targets again (one bound shared
        #: by every write it still attempts, the lease's release included)
        self.retry_deadline: float | None = None
        self._writer: StateWriter | None = None
        self._pending: _Pending | None = None
        self._deferred: _Deferred | None = None
        self._head_completed = False
        #: the attempt's trace context (a tracing hook's propagation headers), on its heads
        self.context: dict[str, str] = {}
        #: the index row (status, started_at, workflow) last sent with a head, if all went
        self._indexed: tuple[str, float, str] | None = None
        #: alias key -> whether this run may write it (see _may_write_alias)
        self._aliases: dict[str, bool] = {}
        #: targets the alias of the step being checkpointed could not be read from
        self._unread: tuple[frozenset[str], CheckpointError] | None = None
        #: map steps: the group commit of their items' results, by step
        self._item_logs: dict[str, ItemLog] = {}
        #: item batches stored by earlier attempts (set on resume), deleted once their
        #: step's checkpoint holds every result
        self.stale_items: list[str] = []
        #: this attempt's start record was written with its lease (:meth:`held`)
        self._started = False

    # -- records ---------------------------------------------------------------------------

    def _writer_for_run(self) -> StateWriter:
        if self._writer is None:
            self._writer = StateWriter(
                self._shared.envelope,
                self._shared.blobs,
                request_id=self.request_id,
                mark_ttl=self.workflow.ttl,
            )
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
            last_done=at.last_step,
            key=at.last_key,
            started_at=self.started_at,
            updated_at=time.time(),
            attempt=self.attempt,
            error=error,
            failed_step=failed_step,
            high_seq=max(self.seq, at.last_seq),
            recoveries=self.recoveries,
            incarnation=self.incarnation,
            layout=LAYOUT,
            key_id=self._shared.envelope.key_id,
            tags=self.tags,
            context=self.context,
        )

    async def _save(
        self, targets: Sequence[Datasource], entries: Sequence[Entry], step: str | None, what: str
    ) -> None:
        try:
            await save_everywhere(
                targets,
                entries,
                request_id=self.request_id,
                lease=self.lease,
                step=step,
                what=what,
            )
        except CheckpointError as exc:
            self.unreachable.update(exc.unreachable)
            self._indexed = None  # some target may lack the row: send it again
            raise
        except BaseException:
            self._indexed = None
            raise

    def _head_entries(self, head: HeadRecord) -> list[Entry]:
        """The head's entry, and the run index's when its row changes (its status, a new
        attempt): a run's index row is sent on its first write and at every status
        change, not with every checkpoint."""
        key = head_key(self.request_id)
        entries = [(key, encode_record(head, self._shared.envelope, bind=key), self.workflow.ttl)]
        row = (head.status, head.started_at, head.workflow)
        if row != self._indexed:
            entries.append(head_index_entry(head))
            self._indexed = row
        return entries

    async def _save_head(
        self, head: HeadRecord, step: str | None, what: str, *, bounded: bool = False
    ) -> None:
        """Save ``head`` on every target. ``bounded`` (the failure path): a target that could
        not be reached during this attempt is tried once more for at most
        :data:`RETRY_BOUND` seconds -- a transient outage still gets the status, a frozen
        server costs the run one ``TIMEOUT`` (already spent) plus that bound, not another."""
        entries = self._head_entries(head)
        if not bounded:
            await self._save(self.targets, entries, step, what)
            return
        down = [ds for ds in self.targets if ds.name in self.unreachable]
        up = [ds for ds in self.targets if ds.name not in self.unreachable]
        errors: list[CheckpointError] = []

        if self.retry_deadline is None:
            self.retry_deadline = anyio.current_time() + RETRY_BOUND
        deadline = self.retry_deadline

        async def retry() -> None:
            with anyio.CancelScope(deadline=deadline) as scope:
                try:
                    await self._save(down, entries, step, what)
                except CheckpointError as exc:
                    errors.append(exc)
            if scope.cancelled_caught:
                names = ", ".join(repr(ds.name) for ds in down)
                log.warning(
                    "run %s: %s not recorded on %s: still unreachable after %.1f s",
                    self.request_id,
                    what,
                    names,
                    RETRY_BOUND,
                )

        async with anyio.create_task_group() as tg:
            if down:
                tg.start_soon(retry)
            if up:
                try:
                    await self._save(up, entries, step, what)
                except CheckpointError as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]

    # -- hook events -----------------------------------------------------------------------

    def start_batch(self) -> list[Entry]:
        """A new run's start record as one batch -- its definition, run record, head and
        index row -- to be written with its lease (``RunStore.acquire(..., writing=...)``,
        then :meth:`held`)."""
        definition, entries = self._start_entries()
        return [definition, *entries]

    def held(self, lease: Lease) -> None:
        """The run's lease, taken with :meth:`start_batch` written: this attempt's start
        is stored, and :meth:`on_run_start` writes it no more."""
        self.lease = lease
        self._release_with_last = (
            lease.datasource.capabilities.release_in_batch and len(self.targets) == 1
        )
        self._started = True

    def _start_entries(self) -> tuple[Entry, list[Entry]]:
        wf = self.workflow
        ttl = wf.ttl
        envelope = self._shared.envelope
        dkey = definition_key(wf.definition_hash)
        definition = (dkey, self._shared.sealed_definition(wf, dkey), ttl)
        entries: list[Entry] = []
        if not self.resumed:
            rkey = run_key(self.request_id, self.incarnation)
            record = RunRecord(
                request_id=self.request_id,
                workflow=wf.name,
                version=wf.version,
                definition_hash=wf.definition_hash,
                inputs=dict(self.inputs),
                started_at=self.started_at,
                source=wf.source,
                incarnation=self.incarnation,
                forked_from=self.forked[0] if self.forked else None,
                forked_at=self.forked[1] if self.forked else None,
                parent=self.parent,
            )
            entries.append((rkey, encode_record(record, envelope, bind=rkey), ttl))
        entries += self._head_entries(self._head("running"))
        return definition, entries

    async def on_run_start(self, event: RunStarted) -> None:
        if not self.targets:
            return
        if not self._started:
            await self._save_start()
        if (self.edited or self.forked) and self.position.last_step is not None:
            # vars were edited before this attempt (resume --set), or a fork starts from
            # another run's state: store it as a version of the checkpoint it starts from,
            # so it survives a failure.
            self.edited = False
            step = self.workflow.step(self.position.last_step)
            status: Literal["edited", "forked"] = "forked" if self.forked else "edited"
            self.forked = None
            await self._checkpoint(step, 0.0, 1, event.done, event.vars, last=False, status=status)

    async def _save_start(self) -> None:
        definition, entries = self._start_entries()
        # The definition goes first: a head must never point at a missing definition. In
        # one batch where batches are atomic; a separate save before it elsewhere.
        atomic = [ds for ds in self.targets if ds.capabilities.atomic_batch]
        loose = [ds for ds in self.targets if not ds.capabilities.atomic_batch]
        if loose:
            await self._save(loose, [definition], None, "the workflow definition")
        errors: list[CheckpointError] = []

        async def start(targets: list[Datasource], batch: list[Entry]) -> None:
            try:
                await self._save(targets, batch, None, "the run's start")
            except CheckpointError as exc:  # raised as itself below, not in an ExceptionGroup
                errors.append(exc)

        if atomic and loose:
            async with anyio.create_task_group() as tg:
                tg.start_soon(start, atomic, [definition, *entries])
                tg.start_soon(start, loose, entries)
        elif atomic:  # the common case: no task group for one save
            await start(atomic, [definition, *entries])
        else:
            await start(loose, entries)
        if errors:
            raise errors[0]

    async def after_item(self, event: ItemFinished) -> None:
        """Store a map item's result (grouped with the others arriving meanwhile)."""
        step = event.step
        if not step.checkpoint or not self.targets or self.durability == "exit":
            return
        item_log = self._item_logs.get(step.name)
        if item_log is None:
            item_log = self._item_logs[step.name] = ItemLog(
                request_id=self.request_id,
                incarnation=self.incarnation,
                started_at=self.started_at,
                step=step.name,
                attempt=self.attempt,
                of=event.of,
                ttl=step.ttl,
                envelope=self._shared.envelope,
                save=lambda entries: self._save(
                    self.targets, entries, step.name, "a map item's result"
                ),
            )
        await item_log.add(event.index, event.output)

    async def on_timer(self, event: TimerSet) -> None:
        """Store a timer's wake-up time before it starts waiting."""
        if not self.targets or self.durability == "exit":
            return
        record = TimerRecord(
            request_id=self.request_id,
            incarnation=self.incarnation,
            started_at=self.started_at,
            step=event.step.name,
            wake_at=event.wake_at,
        )
        entry = timer_entry(record, self._shared.envelope, event.step.ttl or self.workflow.ttl)
        await self._save(self.targets, [entry], event.step.name, "a timer's wake-up time")

    async def _drop_items(self, step: str) -> None:
        """After a map step's checkpoint: its item batches are no longer needed."""
        item_log = self._item_logs.pop(step, None)
        prefix = items_prefix(self.request_id, self.incarnation, step)
        keys = [k for k in self.stale_items if k.startswith(prefix)]
        keys += item_log.written if item_log is not None else []
        if not keys:
            return
        for ds in self.targets:
            try:
                await ds.delete_batch(keys)
            except DatasourceError as exc:  # left for gc
                log.warning("run %s: map items of %r not deleted: %s", self.request_id, step, exc)

    async def after_step(self, event: StepFinished) -> None:
        step = event.step
        if step.publish is not None and not event.skipped:
            await self._publish(event)
        if not step.checkpoint or not self.targets:
            return
        if self.durability == "exit":
            self._deferred = _Deferred(
                step, event.duration, event.attempts, event.last, event.done, event.skipped
            )
            return
        await self._checkpoint(
            step,
            event.duration,
            event.attempts,
            event.done,
            event.vars,
            last=event.last,
            behind=self.durability == "async" and self.background is not None,
            status="skipped" if event.skipped else "completed",
        )
        if step.map is not None and self.durability == "sync":
            await self._drop_items(step.name)

    async def _publish(self, event: StepFinished) -> None:
        from blokrun.expressions import render_key

        pub = event.step.publish
        assert pub is not None
        scope = KeyScope.of(
            self.workflow, self.request_id, self.started_at, event.step.name, event.vars
        )
        key = render_key(pub.key, scope)
        value = self._shared.envelope.seal(
            Kind.VALUE, dumps_value(event.output, path=f"vars.{event.step.name}"), bind=key
        )
        await self._save(
            [self._shared.datasources[name] for name in pub.targets],
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
        self,
        step: str,
        blobs: list[Entry],
        entries: list[Entry],
        pending: _Pending,
        unread: tuple[frozenset[str], CheckpointError] | None,
    ) -> None:
        try:
            with anyio.CancelScope(shield=True):  # a started save is finished, not torn
                await self._store(step, blobs, entries, unread)
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

    async def _store(
        self,
        step: str,
        blobs: list[Entry],
        entries: list[Entry],
        unread: tuple[frozenset[str], CheckpointError] | None = None,
    ) -> None:
        """Large values first (a checkpoint never refers to a missing blob), then the
        checkpoint and head on every target; ``unread``: targets that already failed this
        step (and the error to raise for them once the others have the checkpoint)."""
        writer = self._writer_for_run()
        try:
            blob_ds = self._shared.blobs.datasource
            if blobs and blob_ds is not None:
                await self._save([blob_ds], blobs, step, "large values")
                for blob, _, _ in blobs:
                    writer.blob_written(blob)
            if unread is None:
                await self._save(self.targets, entries, step, "the checkpoint")
                await self._owned_refused(entries, step)
                return
            skip, error = unread
            rest = [ds for ds in self.targets if ds.name not in skip]
            if rest:
                await self._save(rest, entries, step, "the checkpoint")
            raise error
        except BaseException:
            writer.forget()
            raise

    async def _may_write_alias(self, alias: str, step: str) -> bool:
        """Whether this run may write its alias ``alias``: the first run that wrote an alias
        owns it, and a key that holds anything but this run's alias (another run's alias,
        data written by someone else) is never replaced. Checked once per alias and
        attempt; the checkpoint itself is stored under the run's own key either way."""
        known = self._aliases.get(alias)
        if known is not None:
            return known
        owner = alias_owner(self.request_id)
        found = dict.fromkeys((ds.name for ds in self.targets), b"")

        failed: list[tuple[Datasource, DatasourceError]] = []

        async def read(ds: Datasource) -> None:
            try:
                found[ds.name] = await ds.load(alias) or b""
            except DatasourceError as exc:
                failed.append((ds, exc))

        if len(self.targets) == 1:  # the common case: no task group for one read
            await read(self.targets[0])
        else:
            async with anyio.create_task_group() as tg:
                for ds in self.targets:
                    tg.start_soon(read, ds)
        if failed:
            # The checkpoint cannot be stored there either: it goes to the other targets,
            # and the step fails now for this one rather than one TIMEOUT later.
            ds, exc = failed[0]
            down = tuple(d.name for d, e in failed if isinstance(e, DatasourceUnavailable))
            self.unreachable.update(down)
            error = CheckpointError(
                f"saving the checkpoint to datasource {ds.name!r} failed (key {alias!r}): {exc}",
                request_id=self.request_id,
                step=step,
                datasource=ds.name,
                key=alias,
                unreachable=down,
            )
            error.__cause__ = exc
            self._unread = (frozenset(d.name for d, _ in failed), error)
            return False  # not cached: the next step checks again
        taken = {name: raw for name, raw in found.items() if raw and not raw.startswith(owner)}
        if taken:
            name, raw = next(iter(taken.items()))
            holder = alias_holder(raw)
            log.warning(
                "run %s: key %r (step %s under the key pattern) already holds %s on %r; it is "
                "left as it is, and the step's checkpoint is stored under the run's own key",
                self.request_id,
                alias,
                step,
                f"an alias of run {holder!r}" if holder else "data blokrun did not write",
                name,
            )
        self._aliases[alias] = not taken
        return not taken

    async def _owned_refused(self, entries: Sequence[Entry], step: str) -> None:
        """Warn (once per alias and attempt) where a target kept what another run or
        program wrote under the alias (read only then, to name it)."""
        if not any(ds.refusing for ds in self.targets):  # the hot path: nothing refused
            return
        for key, _, _ in entries:
            if key[:1] != OWNED_MARK:
                continue
            alias = key[1:]
            refused = [ds for ds in self.targets if ds.refused(alias)]
            if not refused or self._aliases.get(alias) is False:
                continue
            self._aliases[alias] = False
            try:
                holder = alias_holder(await refused[0].load(alias) or b"")
            except DatasourceError:
                holder = None
            log.warning(
                "run %s: key %r (step %s under the key pattern) already holds %s on %r; it "
                "is left as it is, and the step's checkpoint is stored under the run's own key",
                self.request_id,
                alias,
                step,
                f"an alias of run {holder!r}" if holder else "data blokrun did not write",
                refused[0].name,
            )

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
        status: Literal["completed", "edited", "skipped", "forked"] = "completed",
    ) -> None:
        """Write the run's state as it is now as ``step``'s checkpoint, then the head
        (``status`` "edited": the vars edited before a resume, stored as a version of that
        step; "skipped": the step did not run).

        ``behind`` (durability "async"): encode now -- the state may change as soon as
        this returns -- and store in the background while the next step runs; the next
        checkpoint (or the run's end) first waits for it, so saves stay in order.
        """
        if behind:
            await self.flush()
        wf = self.workflow
        seq = self.seq + 1
        key = checkpoint_key(self.request_id, self.incarnation, seq)
        alias = alias_key(wf, self.request_id, self.started_at, step.name, vars)
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
            incarnation=self.incarnation,
            attempts=attempts,
            snapshot=state.snapshot,
            removed=state.removed,
            base=state.base,
            chain=state.chain,
            key=key,
            refs=state.refs,
            alias=alias,
            envelope=self._shared.envelope,
            status=status,
        )
        at = Position(seq, seq, step.name, key)
        head = self._head("completed" if last else "running", at=at)
        blobs: list[Entry] = [(k, v, None) for k, v in state.blobs]
        pointer = AliasRecord(
            request_id=self.request_id,
            incarnation=self.incarnation,
            seq=seq,
            step=step.name,
            key=key,
        )
        entries: list[Entry] = [(key, record, step.ttl), *self._head_entries(head)]
        self._unread = None
        value = encode_alias(pointer, self._shared.envelope, key=alias)
        if self._owned_aliases:
            # the stores keep the first writer's alias themselves, checked in the write
            entries.append((owned_key(alias), value, step.ttl))
        elif await self._may_write_alias(alias, step.name):
            entries.append((alias, value, step.ttl))
        if last and self._release_with_last:
            entries.append(RELEASE_ENTRY)  # kept last: fanout looks for it there
        before = self.position
        if behind and self.background is not None:
            pending = _Pending(
                Position(self.seq, before.last_seq, before.last_step, before.last_key)
            )
            self._pending = pending
            self.background.start_soon(
                self._write_behind, step.name, blobs, entries, pending, self._unread
            )
        else:
            await self._store(step.name, blobs, entries, self._unread)
        self.seq = seq
        self.position = at
        if last:
            self._head_completed = True

    async def on_run_end(self, event: RunEnded) -> None:
        if not self.targets or (self.lease is not None and self.lease.lost):
            return  # another process owns the run now: its status is theirs to write
        error: BaseException | None = event.error
        status = event.status
        final = await self._last_save(event)
        if status == "completed" and final is None:
            self._shared.recent.forget(self.request_id)  # runs resumed are the others
        else:
            at = self.position
            spot = Spot(self.incarnation, at.last_seq, self.workflow.definition_hash)
            self._shared.recent.note(self.request_id, spot)
        if final is not None:
            if status in ("completed", "suspended", "sleeping"):
                # The run did not complete (or suspend) after all: record it as failed on
                # the checkpoint it stands on, then report the save's error.
                error, status = final, "failed"
            else:
                log.warning(
                    "run %s: its last checkpoint was not stored: %s", self.request_id, final
                )
                final = None
        if status == "completed":
            if not self._head_completed:  # else the last checkpoint marked it completed
                await self._save_head(self._head("completed"), None, "the run's completion")
        elif status == "suspended":
            suspension = event.suspension
            assert suspension is not None
            head = msgspec.structs.replace(
                self._head("suspended"),
                waiting_step=suspension.step,
                token_hash=suspension.token_hash,
            )
            await self._save_head(head, suspension.step, "the run's suspension")
        elif status == "sleeping":
            assert event.sleeping is not None
            step, wake_at = event.sleeping
            head = msgspec.structs.replace(
                self._head("sleeping"), waiting_step=step, wake_at=wake_at
            )
            await self._save_head(head, step, "the run's sleep")
        else:
            await self._record_failure(status, error)
        if final is not None:
            raise final

    async def _last_save(self, event: RunEnded) -> CheckpointError | None:
        """Land what the attempt still owes: the write-behind save in flight, or durability
        "exit"'s one checkpoint. Its error, if it failed."""
        try:
            await self.flush()  # write-behind: the last save lands before the run ends
            deferred, self._deferred = self._deferred, None
            if deferred is not None:
                with anyio.CancelScope(shield=True):
                    await self._checkpoint(
                        deferred.step,
                        deferred.duration,
                        deferred.attempts,
                        deferred.done,
                        event.vars,
                        last=deferred.last,
                        status="skipped" if deferred.skipped else "completed",
                    )
        except CheckpointError as exc:
            return exc
        return None

    async def _record_failure(self, status: RunStatus, error: BaseException | None) -> None:
        """The head of a failed or cancelled attempt, within the failure path's bound."""
        if status == "cancelled":
            message = "cancelled (SIGINT, SIGTERM or the caller) while the step ran"
        else:
            message = getattr(error, "detail", None) or str(error) or type(error).__name__
        failed_step = getattr(error, "step", None)
        head = self._head(status, error=message[:2000], failed_step=failed_step)
        if status == "failed" and error is not None:
            head = msgspec.structs.replace(head, trace=_trace(error))
        if isinstance(error, CheckpointError):
            self.unreachable.update(error.unreachable)
        try:
            with anyio.CancelScope(shield=True):
                await self._save_head(head, None, "the run's failure status", bounded=True)
        except CheckpointError as exc:
            # The checkpoints are intact; only the status could not be recorded.
            log.warning("could not record the failure of run %s: %s", self.request_id, exc)
