"""A run's history as stored: its checkpoints in order, and the vars at any one of them.

Checkpoints are immutable and numbered; a step re-run by a later attempt is stored beside
the earlier one (a new sequence number). :meth:`History.inspect` lists the checkpoints of
the run's current incarnation on its most advanced target (``blokrun inspect``), and where
its targets disagree; :meth:`History.state_at` rebuilds the vars of one (``inspect --step``,
``diff``). Records that do not verify are listed with what is wrong, never used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blokrun.errors import BlokrunError, ResumeError
from blokrun.persistence.keys import head_key, lease_key
from blokrun.persistence.leases import shown_status
from blokrun.persistence.records import HeadRecord, decode_record
from blokrun.persistence.state import resolve_blobs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from blokrun.datasources import Datasource, LeaseState
    from blokrun.persistence.envelope import Envelope
    from blokrun.persistence.planner import Planner
    from blokrun.persistence.records import CheckpointRecord

__all__ = ["CheckpointInfo", "History", "RunInfo"]


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
    alias: str | None = None  # the step's key under the key pattern


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """A child run a sub-workflow step of the run started (``<id>:<step>``)."""

    step: str
    request_id: str
    status: str


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What ``blokrun inspect`` shows: the head and every checkpoint of a run, in order."""

    request_id: str
    datasource: str
    head: HeadRecord | None
    checkpoints: tuple[CheckpointInfo, ...]
    #: the run's lease as stored (who holds it, until when), if its datasource keeps leases
    lease: LeaseState | None = None
    incarnation: int = 1
    #: ``{datasource: what it holds}`` when the run's targets disagree
    disagreement: Mapping[str, str] = field(default_factory=dict)
    #: records that were found but do not verify (what is wrong with each)
    damaged: tuple[str, ...] = ()
    #: the status every command shows: the head's, or ``"interrupted"`` when it says running
    #: but nobody holds the run's lease any more (:func:`.leases.shown_status`)
    status: str | None = None
    #: the run that started this one (it is a sub-workflow's child run)
    parent: str | None = None
    #: the run this one was forked from
    forked_from: str | None = None
    #: the child runs its sub-workflow steps started (the tree below it)
    children: tuple[ChildInfo, ...] = ()


class History:
    """Reads runs' histories (see the module docstring)."""

    __slots__ = ("_datasources", "_envelope", "_planner")

    def __init__(
        self, planner: Planner, datasources: Mapping[str, Datasource], envelope: Envelope
    ) -> None:
        self._planner = planner
        self._datasources = datasources
        self._envelope = envelope

    async def inspect(self, request_id: str) -> RunInfo:
        """The run's head and every checkpoint, ordered by sequence number."""
        found = await self._planner.locate(request_id, None, reading=True)
        ds = found.datasource
        listed = await self._planner.locator.history(ds, request_id, found.incarnation, found.upto)
        infos = tuple(
            CheckpointInfo(
                key=s.key,
                step=s.record.step,
                seq=s.record.seq,
                status=s.record.status,
                time=s.record.time,
                duration=s.record.duration,
                size=s.size,
                attempt=s.record.attempt,
                alias=s.record.alias,
            )
            for s in listed
            if s.record is not None
        )
        damaged = tuple(
            f"{s.key}: {s.problem}" for s in listed if s.record is None and s.problem
        ) + tuple(found.warnings)
        lease = await ds.read_lease(lease_key(request_id)) if ds.supports_leases else None
        head = found.head
        steps = {c.step for c in infos} | (
            {head.failed_step} if head and head.failed_step else set()
        )
        children = await self._children(ds, request_id, sorted(steps))
        record = found.run
        return RunInfo(
            request_id,
            ds.name,
            head,
            infos,
            lease,
            found.incarnation,
            found.disagreement(),
            damaged,
            shown_status(head.status, lease, time.time()) if head is not None else None,
            parent=record.parent if record is not None else None,
            forked_from=record.forked_from if record is not None else None,
            children=children,
        )

    async def _children(
        self, ds: Datasource, request_id: str, steps: list[str]
    ) -> tuple[ChildInfo, ...]:
        """The child runs of ``steps`` (one read of their heads, no key listing)."""
        keys = {head_key(f"{request_id}:{step}"): step for step in steps}
        if not keys:
            return ()
        found: list[ChildInfo] = []
        for key, raw in sorted((await ds.load_batch(sorted(keys))).items()):
            try:
                head = decode_record(raw, HeadRecord, envelope=self._envelope, bind=key)
            except BlokrunError:
                continue
            found.append(ChildInfo(keys[key], head.request_id, head.status))
        return tuple(found)

    async def state_at(
        self, request_id: str, *, step: str | None = None, seq: int | None = None
    ) -> tuple[CheckpointInfo, dict[str, Any]]:
        """The vars as they were at a checkpoint: the latest one of ``step``, or number ``seq``."""
        found = await self._planner.locate(request_id, None, reading=True)
        ds = found.datasource
        locator = self._planner.locator
        one = None
        if seq is not None and step is None:  # one record, read by its key
            one = await locator.stored(ds, request_id, found.incarnation, seq)
        if one is not None and one.record is not None and one.record.seq == seq:
            history = [one]
        else:  # every record (a step's latest, or to name those there are)
            history = await locator.history(ds, request_id, found.incarnation, found.upto)
        listed = [s.record for s in history if s.record is not None]
        if step is not None:
            chosen = next((r for r in reversed(listed) if r.step == step), None)
            what = f"step {step!r}"
        else:
            chosen = next((r for r in listed if r.seq == seq), None)
            what = f"checkpoint #{seq}"
        if chosen is None:
            have = ", ".join(f"#{r.seq} {r.step}" for r in listed)
            raise ResumeError(
                f"no checkpoint for {what}; checkpoints: {have or 'none'}", request_id=request_id
            )
        return await self._state(ds, chosen, what, request_id)

    async def states(
        self, request_id: str, *, step: str | None = None
    ) -> AsyncIterator[tuple[CheckpointInfo, dict[str, Any]]]:
        """Every checkpoint (of ``step`` only, if given) and the vars at it, in sequence
        order: the run located and its history listed once (``blokrun export``)."""
        found = await self._planner.locate(request_id, None, reading=True)
        ds = found.datasource
        history = await self._planner.locator.history(ds, request_id, found.incarnation, found.upto)
        for s in history:
            if s.record is not None and step in (None, s.record.step):
                yield await self._state(ds, s.record, f"checkpoint #{s.record.seq}", request_id)

    async def _state(
        self, ds: Datasource, chosen: CheckpointRecord, what: str, request_id: str
    ) -> tuple[CheckpointInfo, dict[str, Any]]:
        rebuilt = await self._planner.locator.rebuild(ds, chosen)
        if rebuilt is None:
            raise ResumeError(
                f"the checkpoint for {what} cannot be rebuilt (its chain is broken)",
                request_id=request_id,
            )
        state, refs = rebuilt
        state = await resolve_blobs(
            state, refs, self._datasources, self._envelope, request_id=request_id
        )
        info = CheckpointInfo(
            chosen.key,
            chosen.step,
            chosen.seq,
            chosen.status,
            chosen.time,
            chosen.duration,
            0,
            chosen.attempt,
            chosen.alias,
        )
        return info, state
