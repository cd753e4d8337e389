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

import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from blokrun.errors import BlokrunError, DatasourceError, ResumeError
from blokrun.persistence.fanout import save_everywhere
from blokrun.persistence.history import History
from blokrun.persistence.keys import head_key
from blokrun.persistence.leases import Lease, acquire
from blokrun.persistence.locate import Locator
from blokrun.persistence.planner import Planner
from blokrun.persistence.reader import DatasourceReads
from blokrun.persistence.recorder import Position, RecorderContext, RunRecorder
from blokrun.persistence.records import encode_record
from blokrun.spec.loader import definition_hash

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from blokrun.datasources import Datasource
    from blokrun.persistence.envelope import Envelope
    from blokrun.persistence.planner import Prepared
    from blokrun.persistence.records import DefinitionRecord, HeadRecord
    from blokrun.persistence.state import BlobPolicy
    from blokrun.spec.loader import Workflow
    from blokrun.types import Durability

__all__ = ["RunStore"]

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
        compile: Callable[[Mapping[str, Any], str | None], Workflow],
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
        self.locator = Locator(envelope)
        self.planner = Planner(self.locator, datasources, envelope, self.load_stored)
        self.history = History(self.planner, datasources, envelope, self.load_stored)
        self.reads = DatasourceReads(datasources, envelope)

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
        key = (definition_hash(stored.document), stored.source or "")
        wf = self._compiled.get(key)
        if wf is None:
            wf = self._compile(stored.document, stored.source)
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

    async def acquire(self, request_id: str, wf: Workflow) -> Lease | None:
        """Take the run's lease (:class:`~blokrun.errors.RunBusy` if another holds it);
        ``None`` when leases are off or no target keeps them."""
        ds = self.lease_datasource(wf)
        if ds is None or self.lease_ttl is None:
            return None
        stale = self._unreleased.pop(request_id, None)
        if stale is not None and not await stale.release():
            self._unreleased[request_id] = stale
        return await acquire(ds, request_id, self.lease_ttl)

    async def release(self, lease: Lease) -> None:
        if not await lease.release():
            self._unreleased[lease.request_id] = lease

    # -- reading -------------------------------------------------------------------------

    async def head(self, request_id: str) -> HeadRecord | None:
        """The stored head record of a run, or ``None``."""
        return (await self.planner.locate(request_id, None)).head

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
    ) -> RunRecorder:
        """The hook that records an attempt: a new run's first, or a planned resume."""
        if prepared is None:
            return RunRecorder(
                self._recording,
                request_id=request_id,
                workflow=workflow,
                inputs=inputs,
                started_at=started_at,
                attempt=1,
                resumed=False,
                recoveries=0,
                position=Position(),
                durability=durability,
                lease=lease,
            )
        return RunRecorder(
            self._recording,
            request_id=request_id,
            workflow=workflow,
            inputs=inputs,
            started_at=started_at,
            attempt=prepared.attempt,
            resumed=True,
            recoveries=prepared.recoveries,
            position=prepared.position,
            durability=durability,
            lease=lease,
            edited=prepared.edited,
        )

    async def check_dead_letter(self, wf: Workflow, head: HeadRecord, lease: Lease | None) -> None:
        """Refuse a run that keeps failing in recovery: mark it dead instead of looping.
        Called holding the run's lease: the mark is a fenced write like a checkpoint."""
        resumes = head.recoveries  # waiting for input and answering it does not count
        if head.status != "dead" and resumes < self.max_resumes:
            return
        if head.status != "dead":
            dead = msgspec.structs.replace(head, status="dead", updated_at=time.time())
            targets = [self._datasources[n] for n in wf.targets if n in self._datasources]
            if targets:
                entry = (head_key(head.request_id), encode_record(dead, self._envelope), wf.ttl)
                await save_everywhere(
                    targets,
                    [entry],
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
