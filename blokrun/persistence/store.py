"""The run store: the one owner of everything a run keeps in its datasources.

A :class:`RunStore` holds the datasources (and connects them), the envelope records are
sealed with, where large values go, the compiled definitions of stored workflows, and the
run leases this process holds. Everything that reads or writes a run's record goes through
it: starting a run and recording its attempts (:meth:`RunStore.recorder`), locating a run
and planning its resume (:attr:`RunStore.planner`), its history (:attr:`RunStore.history`),
its lease (:meth:`RunStore.acquire`), the dead-letter mark. Listing runs and collecting
garbage (:mod:`blokrun.lifecycle`) read through it too. It runs nothing: the
:class:`~blokrun.runner.Runner` drives runs with the executor and this store.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from blokrun.errors import BlokrunError, DatasourceError, ResumeError
from blokrun.persistence.fanout import save_everywhere
from blokrun.persistence.history import History
from blokrun.persistence.indexing import build_index, head_index_entry
from blokrun.persistence.keys import (
    CHECKPOINT_PREFIX,
    RUN_PREFIX,
    definition_key,
    head_key,
    run_key,
)
from blokrun.persistence.leases import Lease, acquire
from blokrun.persistence.locate import Locator
from blokrun.persistence.planner import Planner
from blokrun.persistence.reader import DatasourceReads
from blokrun.persistence.recorder import Position, RecorderContext, RunRecorder
from blokrun.persistence.records import (
    LAYOUT,
    DefinitionRecord,
    HeadRecord,
    RunRecord,
    encode_record,
)
from blokrun.spec.loader import definition_hash

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from blokrun.datasources import Datasource, Entry
    from blokrun.persistence.envelope import Envelope
    from blokrun.persistence.planner import Prepared
    from blokrun.persistence.state import BlobPolicy
    from blokrun.spec.loader import Workflow
    from blokrun.types import Durability

__all__ = ["Repair", "RunStore"]

log = logging.getLogger("blokrun.persistence")


@dataclass(frozen=True, slots=True)
class Repair:
    """What :meth:`RunStore.repair` found and did. ``seq`` is the latest checkpoint that
    verifies (on ``best``); ``claimed`` the latest any head says was stored: when it is
    higher, checkpoints were lost or damaged on every target and cannot be repaired."""

    request_id: str
    best: str
    seq: int
    claimed: int
    disagreement: dict[str, str]
    repaired: tuple[str, ...]
    warnings: tuple[str, ...]


def _what(request_id: str, entries: Sequence[Entry]) -> str:
    """``head, run record, 2 checkpoint(s), definition``: what a repair wrote."""
    kinds = {"head": 0, "run record": 0, "checkpoint(s)": 0, "definition": 0}
    for key, _, _ in entries:
        if key == head_key(request_id):
            kinds["head"] += 1
        elif key.startswith(RUN_PREFIX):
            kinds["run record"] += 1
        elif key.startswith(CHECKPOINT_PREFIX):
            kinds["checkpoint(s)"] += 1
        else:
            kinds["definition"] += 1
    return ", ".join(
        (f"{n} {kind}" if kind == "checkpoint(s)" else kind) for kind, n in kinds.items() if n
    )


#: Compiled stored definitions kept per store (a resume should not recompile 100 steps).
_COMPILED_MAX = 256


class RunStore:
    """Owns the stored record of runs on a set of datasources (see the module docstring).

    ``compile(document, source)`` turns a stored workflow definition back into a
    :class:`~blokrun.spec.loader.Workflow` (the runner's loader: its datasources, its node
    resolver). ``lease_ttl``: seconds a run's lease outlives a holder that stopped renewing
    it; ``None`` turns leases off. ``max_resumes``: recoveries before a run is dead-lettered.
    """

    def __init__(
        self,
        datasources: Mapping[str, Datasource],
        *,
        envelope: Envelope,
        blobs: BlobPolicy,
        compile: Callable[[Mapping[str, Any], str | None, Sequence[str]], Workflow],
        lease_ttl: float | None,
        max_resumes: int,
    ) -> None:
        self._datasources = datasources
        self._envelope = envelope
        self._compile = compile
        self._compiled: dict[tuple[str, str], Workflow] = {}
        self.lease_ttl = lease_ttl
        self.max_resumes = max_resumes
        #: Leases this store could not release (the datasource was down): released before
        #: it next takes that run, so a resume after an outage does not wait out the TTL.
        self._unreleased: dict[str, Lease] = {}
        self._stack: AsyncExitStack | None = None
        self._recording = RecorderContext(datasources, envelope, blobs)
        self.locator = Locator(envelope, self._recording.recent)
        self.planner = Planner(self.locator, datasources, envelope, self.load_stored)
        self.history = History(self.planner, datasources, envelope)
        self.reads = DatasourceReads(datasources, envelope, self.locator)

    @property
    def datasources(self) -> Mapping[str, Datasource]:
        return self._datasources

    @property
    def envelope(self) -> Envelope:
        return self._envelope

    @property
    def blobs(self) -> BlobPolicy:
        return self._recording.blobs

    # -- connections ---------------------------------------------------------------------

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
            raise DatasourceError(
                f"cannot start: {detail} (configured datasources: {names})",
                datasource=failures[0][0].name,
            ) from failures[0][1]
        self._stack = stack
        try:
            for ds in self._datasources.values():
                await build_index(ds, self._envelope)  # a no-op once built
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    @property
    def started(self) -> bool:
        return self._stack is not None

    def require_started(self) -> None:
        if self._stack is None:
            raise BlokrunError(
                "the Runner is not started: use 'async with runner:' or await runner.connect()"
            )

    # -- definitions ---------------------------------------------------------------------

    def load_stored(self, stored: DefinitionRecord) -> Workflow:
        """The workflow of a stored definition, compiled once per store (by its hash)."""
        # a record read from a datasource was checked to hash to its definition_hash
        # (decode_record); one built here comes from a workflow's own document and hash
        key = (stored.definition_hash, stored.source or "")
        wf = self._compiled.get(key)
        if wf is None:
            wf = self._compile(stored.document, stored.source, stored.search_paths)
            if len(self._compiled) >= _COMPILED_MAX:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[key] = wf
        return wf

    # -- leases --------------------------------------------------------------------------

    def lease_datasource(self, wf: Workflow) -> Datasource | None:
        """Where a run's lease lives: its first target that keeps leases."""
        if self.lease_ttl is None:
            return None
        for name in wf.targets:
            ds = self._datasources.get(name)
            if ds is not None and ds.supports_leases:
                return ds
        return None

    async def acquire(
        self,
        request_id: str,
        wf: Workflow,
        reading: Sequence[str] = (),
        writing: Sequence[Entry] = (),
        match: Mapping[str, bytes] | None = None,
    ) -> Lease | None:
        """Take the run's lease (:class:`~blokrun.errors.RunBusy` if another holds it);
        ``None`` when leases are off or no target keeps them. ``reading``: keys to read
        from the lease's datasource with it (``Lease.read``); ``writing``: entries to write
        there with it if all of ``reading`` are free, or hold what ``match`` gives
        (``Lease.wrote``; see :meth:`writes_with_lease`)."""
        ds = self.lease_datasource(wf)
        if ds is None or self.lease_ttl is None:
            return None
        stale = self._unreleased.pop(request_id, None)
        if stale is not None and not await stale.release():
            self._unreleased[request_id] = stale
        return await acquire(
            ds, request_id, self.lease_ttl, reading=reading, writing=writing, match=match
        )

    def writes_with_lease(self, wf: Workflow, *, matching: bool = False) -> bool:
        """Whether an attempt of ``wf`` can write its start record with its lease, in one
        round trip: its only target keeps its leases and can (``Capabilities.lease_writes``;
        ``matching``: where a key must hold given bytes, ``Capabilities.lease_matches``)."""
        ds = self.lease_datasource(wf)
        if ds is None or list(wf.targets) != [ds.name]:
            return False
        return ds.lease_matches if matching else ds.lease_writes

    async def release(self, lease: Lease, *, deadline: float = math.inf) -> None:
        if not await lease.release(deadline=deadline):
            self._unreleased[lease.request_id] = lease

    # -- reading -------------------------------------------------------------------------

    async def head(self, request_id: str) -> HeadRecord | None:
        """The stored head record of a run, or ``None`` (a run gc is deleting too: its head
        says ``collecting``)."""
        return (await self.planner.locate(request_id, None, reading=True)).head

    # -- repairing -----------------------------------------------------------------------

    async def write_repairs(
        self,
        request_id: str,
        repairs: Sequence[tuple[Datasource, Sequence[Entry]]],
        lease: Lease | None,
    ) -> list[str]:
        """Write back what lagging targets lack (under the run's lease, fenced where it
        lives); one line per target repaired, also logged as a warning."""
        done: list[str] = []
        for ds, entries in repairs:
            await save_everywhere(
                [ds], entries, request_id=request_id, lease=lease, step=None, what="a repair"
            )
            line = f"repaired run {request_id} on {ds.name!r}: wrote {_what(request_id, entries)}"
            log.warning("%s", line)
            done.append(line)
        return done

    async def repair(self, request_id: str) -> Repair:
        """Heal run ``request_id`` on demand (``blokrun repair ID``): under its lease, write
        to every reachable target what it lacks of the most advanced verified state."""
        found = await self.planner.locate(request_id, None)
        stored = await self.locator.definition(found)
        wf = self.load_stored(stored[0]) if stored is not None else None
        lease = await self.acquire(request_id, wf) if wf is not None else None
        try:
            if lease is not None:  # read again under the lease: nobody moves it now
                found = await self.planner.locate(request_id, wf)
            repairs = await self.locator.repairs(
                found,
                stored[1] if stored is not None else None,
                wf.ttl if wf else None,
                wf.targets if wf else None,
            )
            written = await self.write_repairs(request_id, repairs, lease)
        finally:
            if lease is not None:
                await self.release(lease)
        return Repair(
            request_id=request_id,
            best=found.datasource.name,
            seq=found.seq,
            claimed=found.claimed_seq(),
            disagreement=dict(found.disagreement()),
            repaired=tuple(written),
            warnings=tuple(found.warnings),
        )

    # -- writing -------------------------------------------------------------------------

    def recorder(
        self,
        *,
        request_id: str,
        workflow: Workflow,
        inputs: Mapping[str, Any],
        started_at: float,
        durability: Durability,
        lease: Lease | None,
        prepared: Prepared | None = None,
        incarnation: int = 1,
        fork_of: tuple[str, Prepared] | None = None,
        parent: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> RunRecorder:
        """The hook that records an attempt: a new run's first (of ``incarnation``), a
        planned resume, or (``fork_of``: the source run and its planned state) a fork."""
        common: dict[str, Any] = {
            "request_id": request_id,
            "workflow": workflow,
            "inputs": inputs,
            "started_at": started_at,
            "durability": durability,
            "lease": lease,
        }
        if fork_of is not None:
            source, state = fork_of
            head = state.plan.head
            return RunRecorder(
                self._recording,
                **common,
                incarnation=1,
                attempt=1,
                resumed=False,
                recoveries=0,
                position=Position(0, 0, state.position.last_step, None),
                forked=(source, state.plan.run[0] if state.plan.run else None),
                tags=head.tags if head is not None else None,
            )
        if prepared is None:
            return RunRecorder(
                self._recording,
                **common,
                incarnation=incarnation,
                attempt=1,
                resumed=False,
                recoveries=0,
                position=Position(),
                parent=parent,
                tags=tags,
            )
        head = prepared.plan.head
        return RunRecorder(
            self._recording,
            **common,
            incarnation=prepared.incarnation,
            attempt=prepared.attempt,
            resumed=True,
            recoveries=prepared.recoveries,
            position=prepared.position,
            edited=prepared.edited,
            tags=head.tags if head is not None else None,
        )

    async def mark_unloadable(
        self,
        request_id: str,
        document: Mapping[str, Any],
        reason: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> None:
        """Record that run ``request_id`` was dead-lettered before it could start (its
        workflow cannot be loaded): its definition, its run record (the inputs) and a head
        with status ``dead`` and ``reason``, on the targets its document names that are
        configured (else the first datasource), unless the run exists already. Once the
        cause is fixed, ``resume ID --force`` starts it from its first step with its inputs:
        nothing of the job is lost with its ack."""
        if await self.planner.find(request_id, None) is not None:
            return
        persistence = document.get("persistence")
        named = persistence.get("targets") if isinstance(persistence, dict) else None
        names = [n for n in named if n in self._datasources] if isinstance(named, list) else []
        if not names:
            names = [next(iter(self._datasources))]
        now = time.time()
        digest = definition_hash(document)
        workflow, version = str(document.get("name", "?")), str(document.get("version", ""))
        head = HeadRecord(
            request_id=request_id,
            workflow=workflow,
            version=version,
            definition_hash=digest,
            status="dead",
            started_at=now,
            updated_at=now,
            error=reason[:2000],
            layout=LAYOUT,
            key_id=self._envelope.key_id,
        )
        run = RunRecord(
            request_id=request_id,
            workflow=workflow,
            version=version,
            definition_hash=digest,
            inputs=dict(inputs or {}),
            started_at=now,
            source=source,
        )
        definition = DefinitionRecord(
            definition_hash=digest, document=dict(document), source=source
        )
        entries: list[Entry] = []
        for key, record in (
            (definition_key(digest), definition),
            (run_key(request_id, run.incarnation), run),
            (head_key(request_id), head),  # last: it must not point at records not there
        ):
            entries.append((key, encode_record(record, self._envelope, bind=key), None))
        entries.append(head_index_entry(head))
        await save_everywhere(
            [self._datasources[n] for n in names],
            entries,
            request_id=request_id,
            lease=None,
            step=None,
            what="the dead mark",
        )

    def dead_letter_due(self, head: HeadRecord) -> bool:
        """Whether :meth:`check_dead_letter` would refuse a resume from ``head``."""
        # waiting for input and answering it does not count as a recovery
        return head.status == "dead" or head.recoveries >= self.max_resumes

    async def check_dead_letter(self, wf: Workflow, head: HeadRecord, lease: Lease | None) -> None:
        """Refuse a run that keeps failing in recovery: mark it dead instead of looping.
        Called holding the run's lease: the mark is a fenced write like a checkpoint."""
        resumes = head.recoveries
        if not self.dead_letter_due(head):
            return
        if head.status != "dead":
            dead = msgspec.structs.replace(head, status="dead", updated_at=time.time())
            targets = [self._datasources[n] for n in wf.targets if n in self._datasources]
            if targets:
                key = head_key(head.request_id)
                entry = (key, encode_record(dead, self._envelope, bind=key), wf.ttl)
                await save_everywhere(
                    targets,
                    [entry, head_index_entry(dead)],
                    request_id=head.request_id,
                    lease=lease,
                    step=None,
                    what="the dead mark",
                )
        raise ResumeError(
            f"gave up after {resumes} resume attempt(s) (the limit is {self.max_resumes}): "
            "the run is dead-lettered; fix the cause, then resume with force "
            "(blokrun resume ID --force)",
            request_id=head.request_id,
        )
