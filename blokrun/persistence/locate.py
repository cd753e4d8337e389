"""Finding a run's latest good checkpoint, and the state it stands for.

The fast path is O(1): read the run's head record (``_blokrun.head.<id>``) and the checkpoint
it points at -- two reads, whatever the number of steps -- plus, when that checkpoint is a
delta, one batched read of its chain. The head is only a hint, though:

* it is written after its checkpoint, so after a crash between the two it can be one step
  behind: :meth:`Locator.roll_forward` probes the next step's key and adopts a newer record
  of the same run;
* if it is missing or unreadable, the ``<request_id>-*`` keys are scanned. Unlike sorting
  key strings (where ``s10`` < ``s9`` and run ``job`` would take ``job-2``'s keys), every
  candidate is decoded and kept only if its ``request_id`` (and workflow) match, and the
  highest sequence number wins.

A record that fails its checksum or cannot be decoded is never used silently: the previous
good checkpoint is taken and a warning says so; a delta whose chain is broken likewise falls
back to an earlier checkpoint whose chain is whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec

from blokrun.errors import BlokrunError, FormatVersionError, RecordError, ResumeError
from blokrun.persistence.keys import definition_key, head_key, run_key
from blokrun.persistence.records import (
    CheckpointRecord,
    DefinitionRecord,
    HeadRecord,
    RunRecord,
    decode_record,
)
from blokrun.persistence.state import rebuild_vars

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from blokrun.datasources import Datasource
    from blokrun.persistence.envelope import Envelope

__all__ = ["FoundRun", "Locator"]

log = logging.getLogger("blokrun.resume")
T = TypeVar("T", bound=msgspec.Struct)


@dataclass(slots=True)
class FoundRun:
    """What is stored about a run on the datasource that knows it best."""

    request_id: str
    datasource: Datasource
    head: HeadRecord | None = None
    run: RunRecord | None = None
    checkpoint: CheckpointRecord | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def definition_hash(self) -> str | None:
        for rec in (self.head, self.run, self.checkpoint):
            if rec is not None:
                return rec.definition_hash
        return None

    @property
    def seq(self) -> int:
        return self.checkpoint.seq if self.checkpoint is not None else 0


class Locator:
    """Reads what a run stored, through one envelope (the store's)."""

    __slots__ = ("envelope",)

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope

    def decode(
        self, raw: bytes | None, cls: type[T], ds: Datasource, key: str, warnings: list[str]
    ) -> T | None:
        if raw is None:
            return None
        try:
            return decode_record(raw, cls, datasource=ds.name, key=key, envelope=self.envelope)
        except FormatVersionError:
            raise  # never resume around records a newer blokrun wrote
        except RecordError as exc:
            warnings.append(f"ignored an unreadable record: {exc}")
            return None

    async def scan(
        self,
        ds: Datasource,
        request_id: str,
        prefix: str,
        *,
        below_seq: int | None = None,
        workflow: str | None = None,
        warnings: list[str] | None = None,
        stored: dict[int, tuple[str, int]] | None = None,
    ) -> list[CheckpointRecord]:
        """This run's checkpoints among keys starting with ``prefix``, highest seq first.

        Records of another run (``job-2`` under the prefix ``job-``) or, when ``workflow``
        is given, of another workflow are skipped. ``stored`` (when given) receives each
        kept record's key and stored size by sequence number.
        """
        warnings = warnings if warnings is not None else []
        keys = await ds.keys(prefix)
        found: list[CheckpointRecord] = []
        for start in range(0, len(keys), 500):
            for key, raw in (await ds.load_batch(keys[start : start + 500])).items():
                try:
                    rec = decode_record(
                        raw, CheckpointRecord, datasource=ds.name, key=key, envelope=self.envelope
                    )
                except FormatVersionError:
                    raise
                except RecordError as exc:
                    if "found a" not in exc.detail:  # another kind of record is no warning
                        warnings.append(f"ignored an unreadable checkpoint: {exc}")
                    continue
                if rec.request_id != request_id:
                    continue  # run 'job' never takes the keys of run 'job-2'
                if workflow is not None and rec.workflow != workflow:
                    continue
                if below_seq is not None and rec.seq >= below_seq:
                    continue
                found.append(rec)
                if stored is not None:
                    stored[rec.seq] = (key, len(raw))
        found.sort(key=lambda r: r.seq, reverse=True)
        return found

    async def _probe(
        self, ds: Datasource, request_id: str, scan_prefix: str, workflow: str | None
    ) -> FoundRun:
        found = FoundRun(request_id, ds)
        hk, rk = head_key(request_id), run_key(request_id)
        raw = await ds.load_batch([hk, rk])
        found.head = self.decode(raw.get(hk), HeadRecord, ds, hk, found.warnings)
        found.run = self.decode(raw.get(rk), RunRecord, ds, rk, found.warnings)
        head = found.head
        if head is not None and head.request_id == request_id and head.seq > 0 and head.key:
            raw_ckpt = await ds.load(head.key)
            rec = self.decode(raw_ckpt, CheckpointRecord, ds, head.key, found.warnings)
            if rec is not None and rec.request_id == request_id and rec.seq == head.seq:
                found.checkpoint = rec
                return found
            if raw_ckpt is None:
                found.warnings.append(
                    f"the head of run {request_id} on {ds.name!r} points at {head.key!r}, "
                    "which is missing; using the previous checkpoint"
                )
            older = await self.scan(
                ds,
                request_id,
                scan_prefix,
                below_seq=head.seq,
                workflow=head.workflow,
                warnings=found.warnings,
            )
            found.checkpoint = older[0] if older else None
        elif head is None:
            wf = found.run.workflow if found.run is not None else workflow
            older = await self.scan(
                ds, request_id, scan_prefix, workflow=wf, warnings=found.warnings
            )
            found.checkpoint = older[0] if older else None
        return found

    async def locate(
        self,
        request_id: str,
        datasources: Sequence[Datasource],
        *,
        scan_prefix: str,
        workflow: str | None = None,
    ) -> FoundRun | None:
        """Find the run on whichever datasource holds its latest checkpoint; None if nowhere."""
        results: list[FoundRun | BaseException] = []

        async def probe(ds: Datasource) -> None:
            try:
                results.append(await self._probe(ds, request_id, scan_prefix, workflow))
            except BlokrunError as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            for ds in datasources:
                tg.start_soon(probe, ds)
        for r in results:
            if isinstance(r, FormatVersionError):
                raise r
        known = [
            r
            for r in results
            if isinstance(r, FoundRun) and (r.head or r.run or r.checkpoint) is not None
        ]
        if not known:
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
            unreadable = [w for r in results if isinstance(r, FoundRun) for w in r.warnings]
            if unreadable:  # records exist but none can be used: say why, not "not found"
                raise ResumeError(
                    f"its records exist but cannot be read: {unreadable[0]}",
                    request_id=request_id,
                )
            return None
        best = max(known, key=lambda f: (f.seq, f.head is not None))
        for warning in best.warnings:
            log.warning("%s", warning)
        best.warnings.clear()
        return best

    async def definition(self, found: FoundRun) -> DefinitionRecord | None:
        digest = found.definition_hash
        if digest is None:
            return None
        key = definition_key(digest)
        raw = await found.datasource.load(key)
        return self.decode(raw, DefinitionRecord, found.datasource, key, found.warnings)

    async def roll_forward(
        self, found: FoundRun, step_names: Sequence[str], key_for: Callable[[str], str]
    ) -> None:
        """Adopt checkpoints newer than the one found (a head left behind by a crash).

        Every step not done yet is probed in one batched read (a step that is not
        checkpointed, or parallel branches that finished out of file order, must not hide
        a newer record); the newest record of this run wins, until nothing newer is found.
        """
        workflow = next(
            (r.workflow for r in (found.head, found.run, found.checkpoint) if r is not None), None
        )
        while True:
            done = set(found.checkpoint.done) if found.checkpoint is not None else set()
            keys = [key_for(s) for s in step_names if s not in done]
            if not keys:
                return
            raw = await found.datasource.load_batch(keys)
            newer = [
                rec
                for key, data in raw.items()
                if (
                    rec := self.decode(
                        data, CheckpointRecord, found.datasource, key, found.warnings
                    )
                )
                is not None
                and rec.request_id == found.request_id
                and rec.workflow == workflow  # another workflow's records are never taken
                and rec.seq > found.seq
            ]
            if not newer:
                return
            found.checkpoint = max(newer, key=lambda r: r.seq)

    async def _chain(self, ds: Datasource, rec: CheckpointRecord) -> list[CheckpointRecord] | None:
        """The records of ``rec``'s chain in order, or None if any is missing or foreign."""
        if rec.snapshot:
            return []
        raw = await ds.load_batch(rec.chain)
        chain: list[CheckpointRecord] = []
        previous = rec.base - 1
        for i, key in enumerate(rec.chain):
            link = self.decode(raw.get(key), CheckpointRecord, ds, key, [])
            if (
                link is None
                or link.request_id != rec.request_id
                or link.seq <= previous
                or link.seq >= rec.seq
                or link.base != rec.base
                or (i == 0) != link.snapshot
            ):
                return None
            previous = link.seq
            chain.append(link)
        return chain

    async def state(
        self, found: FoundRun, scan_prefix: str
    ) -> tuple[CheckpointRecord | None, dict[str, Any], set[str]]:
        """The latest checkpoint whose chain is whole, and the vars it stands for.

        Falls back to earlier checkpoints (with a warning) when a delta's chain is broken.
        ``(None, {})`` when no usable checkpoint is left.
        """
        rec = found.checkpoint
        ds = found.datasource
        older: list[CheckpointRecord] | None = None
        while rec is not None:
            chain = await self._chain(ds, rec)
            if chain is not None:
                state, refs = rebuild_vars(rec, chain)
                return rec, state, refs
            log.warning(
                "checkpoint %s of run %s (seq %d) has a broken chain; using an earlier one",
                rec.step,
                rec.request_id,
                rec.seq,
            )
            if older is None:
                workflow = rec.workflow
                older = await self.scan(
                    ds, rec.request_id, scan_prefix, below_seq=rec.seq, workflow=workflow
                )
            else:
                older = [r for r in older if r.seq < rec.seq]
            rec = older[0] if older else None
        return None, {}, set()
