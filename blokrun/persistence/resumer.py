"""Finding a run's latest good checkpoint.

The fast path is O(1): read the run's head record (``_blokrun.head.<id>``) and the checkpoint
it points at -- two reads, whatever the number of steps. The head is only a hint, though:

* it is written after its checkpoint, so after a crash between the two it can be one step
  behind: :func:`roll_forward` then probes the next step's key and adopts a newer record
  of the same run;
* if it is missing or unreadable, the ``<request_id>-*`` keys are scanned. Unlike sorting
  key strings (where ``s10`` < ``s9`` and run ``job`` would take ``job-2``'s keys), every
  candidate is decoded and kept only if its ``request_id`` is this run's, and the highest
  sequence number wins.

A record that fails its checksum or cannot be decoded is never used: the previous good one
is taken and a warning says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import anyio
import msgspec

from blokrun.errors import BlokrunError, RecordError
from blokrun.persistence.records import (
    CheckpointRecord,
    DefinitionRecord,
    HeadRecord,
    RunRecord,
    decode_record,
    definition_key,
    head_key,
    run_key,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from blokrun.datasources import Datasource

__all__ = ["FoundRun", "latest_by_scan", "locate_run", "roll_forward"]

log = logging.getLogger("blokrun.resume")
T = TypeVar("T", bound=msgspec.Struct)


@dataclass(slots=True)
class FoundRun:
    """What is stored about a run on the datasource that knows it best."""

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


def _decode(
    raw: bytes | None, cls: type[T], ds: Datasource, key: str, warnings: list[str]
) -> T | None:
    if raw is None:
        return None
    try:
        return decode_record(raw, cls, datasource=ds.name, key=key)
    except RecordError as exc:
        warnings.append(f"ignored an unreadable record: {exc}")
        return None


async def _read_head(ds: Datasource, request_id: str) -> FoundRun:
    found = FoundRun(ds)
    hk, rk = head_key(request_id), run_key(request_id)
    raw = await ds.load_batch([hk, rk])
    found.head = _decode(raw.get(hk), HeadRecord, ds, hk, found.warnings)
    found.run = _decode(raw.get(rk), RunRecord, ds, rk, found.warnings)
    return found


async def latest_by_scan(
    ds: Datasource,
    request_id: str,
    prefix: str,
    *,
    below_seq: int | None = None,
    workflow: str | None = None,
    warnings: list[str] | None = None,
) -> CheckpointRecord | None:
    """The highest-sequence checkpoint of ``request_id`` among keys starting with ``prefix``.

    Records of another run (``job-2`` under the prefix ``job-``) or, when ``workflow`` is
    given, of another workflow are skipped.
    """
    warnings = warnings if warnings is not None else []
    keys = await ds.keys(prefix)
    best: CheckpointRecord | None = None
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        for key, raw in (await ds.load_batch(chunk)).items():
            try:
                rec = decode_record(raw, CheckpointRecord, datasource=ds.name, key=key)
            except RecordError as exc:
                if "found a" not in exc.detail:  # another kind of record is not a warning
                    warnings.append(f"ignored an unreadable checkpoint: {exc}")
                continue
            if rec.request_id != request_id:
                continue  # run 'job' never takes the keys of run 'job-2'
            if workflow is not None and rec.workflow != workflow:
                continue
            if below_seq is not None and rec.seq >= below_seq:
                continue
            if best is None or rec.seq > best.seq:
                best = rec
    return best


async def locate_run(
    request_id: str,
    datasources: Sequence[Datasource],
    *,
    scan_prefix: str,
    workflow: str | None = None,
) -> FoundRun | None:
    """Find the run on whichever datasource holds its latest checkpoint; ``None`` if nowhere."""
    results: list[FoundRun | BaseException] = []

    async def probe(ds: Datasource) -> None:
        try:
            found = await _read_head(ds, request_id)
            head = found.head
            if head is not None and head.request_id == request_id and head.seq > 0 and head.key:
                raw = await ds.load(head.key)
                rec = _decode(raw, CheckpointRecord, ds, head.key, found.warnings)
                if rec is not None and rec.request_id == request_id and rec.seq == head.seq:
                    found.checkpoint = rec
                else:
                    if rec is None and raw is None:
                        found.warnings.append(
                            f"the head of run {request_id} on {ds.name!r} points at "
                            f"{head.key!r}, which is missing; scanning for the previous checkpoint"
                        )
                    found.checkpoint = await latest_by_scan(
                        ds,
                        request_id,
                        scan_prefix,
                        below_seq=head.seq,
                        workflow=head.workflow,
                        warnings=found.warnings,
                    )
            elif head is None:
                found.checkpoint = await latest_by_scan(
                    ds,
                    request_id,
                    scan_prefix,
                    workflow=found.run.workflow if found.run is not None else workflow,
                    warnings=found.warnings,
                )
            results.append(found)
        except BlokrunError as exc:
            results.append(exc)

    async with anyio.create_task_group() as tg:
        for ds in datasources:
            tg.start_soon(probe, ds)
    candidates = [r for r in results if isinstance(r, FoundRun)]
    known = [
        f for f in candidates if f.head is not None or f.run is not None or f.checkpoint is not None
    ]
    if not known:
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return None
    best = max(known, key=lambda f: (f.seq, f.head is not None))
    for warning in best.warnings:
        log.warning("%s", warning)
    return best


async def load_definition(found: FoundRun) -> DefinitionRecord | None:
    digest = found.definition_hash
    if digest is None:
        return None
    key = definition_key(digest)
    raw = await found.datasource.load(key)
    return _decode(raw, DefinitionRecord, found.datasource, key, found.warnings)


async def roll_forward(
    found: FoundRun, step_names: Sequence[str], key_for: Callable[[str], str]
) -> None:
    """Adopt checkpoints newer than the one found (a head left behind by a crash)."""
    while True:
        done = set(found.checkpoint.done) if found.checkpoint is not None else set()
        nxt = next((s for s in step_names if s not in done), None)
        if nxt is None:
            return
        key = key_for(nxt)
        raw = await found.datasource.load(key)
        rec = _decode(raw, CheckpointRecord, found.datasource, key, found.warnings)
        if rec is None or rec.request_id != found_request_id(found) or rec.seq <= found.seq:
            return
        found.checkpoint = rec


def found_request_id(found: FoundRun) -> str:
    for rec in (found.head, found.run, found.checkpoint):
        if rec is not None:
            return rec.request_id
    raise AssertionError("a found run has at least one record")
