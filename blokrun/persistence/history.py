"""A run's history as stored: its checkpoints in order, and the vars at any one of them.

Checkpoints are immutable and numbered; a step re-run by a later attempt is stored beside
the earlier one. :meth:`History.inspect` lists them (``blokrun inspect``),
:meth:`History.state_at` rebuilds the vars of one (``blokrun inspect --step``, ``diff``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blokrun.errors import ResumeError
from blokrun.persistence.keys import lease_key, scan_prefix
from blokrun.persistence.state import resolve_blobs

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from blokrun.datasources import Datasource, LeaseState
    from blokrun.persistence.envelope import Envelope
    from blokrun.persistence.locate import FoundRun
    from blokrun.persistence.planner import Planner
    from blokrun.persistence.records import DefinitionRecord, HeadRecord
    from blokrun.spec.loader import Workflow

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


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What ``blokrun inspect`` shows: the head and every checkpoint of a run, in order."""

    request_id: str
    datasource: str
    head: HeadRecord | None
    checkpoints: tuple[CheckpointInfo, ...]
    #: the run's lease as stored (who holds it, until when), if its datasource keeps leases
    lease: LeaseState | None = None


class History:
    """Reads runs' histories (see the module docstring)."""

    __slots__ = ("_datasources", "_envelope", "_load_stored", "_planner")

    def __init__(
        self,
        planner: Planner,
        datasources: Mapping[str, Datasource],
        envelope: Envelope,
        load_stored: Callable[[DefinitionRecord], Workflow],
    ) -> None:
        self._planner = planner
        self._datasources = datasources
        self._envelope = envelope
        self._load_stored = load_stored

    async def _located(self, request_id: str) -> tuple[FoundRun, str]:
        found = await self._planner.locate(request_id, None)
        stored = await self._planner.locator.definition(found)
        wf = self._load_stored(stored) if stored is not None else None
        return found, scan_prefix(wf, request_id)

    async def inspect(self, request_id: str) -> RunInfo:
        """The run's head and every checkpoint, ordered by sequence number."""
        found, prefix = await self._located(request_id)
        ds = found.datasource
        where: dict[int, tuple[str, int]] = {}
        records = await self._planner.locator.scan(ds, request_id, prefix, stored=where)
        infos = [
            CheckpointInfo(
                key=where[r.seq][0],
                step=r.step,
                seq=r.seq,
                status=r.status,
                time=r.time,
                duration=r.duration,
                size=where[r.seq][1],
                attempt=r.attempt,
            )
            for r in reversed(records)
        ]
        lease = await ds.read_lease(lease_key(request_id)) if ds.supports_leases else None
        return RunInfo(request_id, ds.name, found.head, tuple(infos), lease)

    async def state_at(
        self, request_id: str, *, step: str | None = None, seq: int | None = None
    ) -> tuple[CheckpointInfo, dict[str, Any]]:
        """The vars as they were at a checkpoint: the latest one of ``step``, or number ``seq``."""
        found, prefix = await self._located(request_id)
        records = await self._planner.locator.scan(found.datasource, request_id, prefix)
        if step is not None:
            chosen = next((r for r in records if r.step == step), None)
            what = f"step {step!r}"
        else:
            chosen = next((r for r in records if r.seq == seq), None)
            what = f"checkpoint #{seq}"
        if chosen is None:
            have = ", ".join(f"#{r.seq} {r.step}" for r in sorted(records, key=lambda r: r.seq))
            raise ResumeError(
                f"no checkpoint for {what}; checkpoints: {have or 'none'}", request_id=request_id
            )
        found.checkpoint = chosen
        rec, state, refs = await self._planner.locator.state(found, prefix)
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
