"""Deleting old runs and the large values nothing refers to any more.

:func:`collect_garbage` works in three passes:

1. **Blob listing.** The ``_blokrun.blob.*`` keys of every datasource are listed *first*, so
   a blob written while the collection runs (its checkpoint not yet stored) is never a
   candidate.
2. **Runs.** Runs are found by their head records (:func:`~blokrun.lifecycle.runs.iter_runs`).
   A completed run whose head was last updated more than ``completed_older_than`` seconds
   ago, or a failed, cancelled or dead-lettered one older than ``failed_older_than``, is
   deleted from every datasource holding it: its checkpoints, then its run record, then its
   head (last, so an interrupted collection leaves a run the next one still finds). Running
   and suspended runs are never deleted. The heads are read again just before deleting, so
   a run resumed meanwhile is left alone. Checkpoints are found under the prefix of the run's
   key pattern (from its stored definition, rendered with the run's start time; ``<id>-``
   when the definition is gone) and deleted only when the decoded record names this run --
   run ``job`` never takes ``job-2``'s checkpoints.
3. **Blobs.** Every remaining checkpoint on every datasource is read and the blob references
   in its vars collected; listed blobs that no remaining checkpoint refers to are deleted.
   This is conservative: if any checkpoint cannot be read (corrupt, encrypted with a key this
   runner lacks, written by a newer blokrun) or a datasource cannot be scanned, every blob
   is kept and the report says why.

Workflow definitions (``_blokrun.def.<hash>``) are shared by runs and small, and a process
that wrote one remembers it: they are never deleted.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blokrun.errors import ArgumentError, BlokrunError, DatasourceError, RecordError
from blokrun.expressions import compile_template, render_key
from blokrun.lifecycle.runs import BATCH, decode_head, iter_runs
from blokrun.persistence.codec import MAGIC, Kind
from blokrun.persistence.envelope import FORMAT_VERSION
from blokrun.persistence.keys import (
    BLOB_PREFIX,
    INTERNAL_PREFIXES,
    KeyScope,
    definition_key,
    head_key,
    lease_key,
    run_key,
)
from blokrun.persistence.records import CheckpointRecord, DefinitionRecord, decode_record
from blokrun.spec.model import DEFAULT_KEY_PATTERN

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from blokrun.datasources import Datasource
    from blokrun.lifecycle.runs import RunSummary
    from blokrun.persistence.store import RunStore

__all__ = ["BLOB_PREFIX", "GcReport", "GcRun", "collect_garbage"]

log = logging.getLogger("blokrun.lifecycle")

_FAILED_LIKE = ("failed", "cancelled", "dead")


@dataclass(frozen=True, slots=True)
class GcRun:
    """A run that was deleted (or would be, in a dry run)."""

    request_id: str
    workflow: str
    status: str
    updated_at: float
    datasources: tuple[str, ...]
    keys: int  # checkpoints + run record + head, over all its datasources
    checkpoints: int
    bytes: int  # stored size of those keys


@dataclass(frozen=True, slots=True)
class GcReport:
    """What :func:`collect_garbage` deleted -- or, with ``dry_run``, would delete."""

    dry_run: bool
    runs: tuple[GcRun, ...] = ()
    runs_kept: int = 0  # runs looked at and kept (too recent, running, suspended, changed)
    keys_deleted: int = 0  # run keys: checkpoints, run records, heads (blobs not included)
    checkpoints_deleted: int = 0
    bytes_deleted: int = 0  # stored bytes of those keys (blob sizes are not read)
    blobs_deleted: int = 0
    blob_keys: tuple[tuple[str, str], ...] = ()  # (datasource, key) of the blobs deleted
    blobs_kept: int = 0
    blobs_note: str | None = None  # why every blob was kept, when it was
    errors: tuple[str, ...] = ()  # runs that could not be deleted (datasource errors)
    warnings: tuple[str, ...] = ()

    @property
    def runs_deleted(self) -> int:
        return len(self.runs)


@dataclass(slots=True)
class _State:
    store: RunStore
    cutoffs: Mapping[str, float]
    dry_run: bool
    deleted: set[tuple[str, str]] = field(default_factory=set)  # (datasource, key)
    patterns: dict[tuple[str, str], str | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _check_age(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ArgumentError(f"{name} {value!r}: expected seconds or None", argument=name)
    if value < 0:
        raise ArgumentError(f"{name} {value!r}: expected seconds >= 0", argument=name)


def _eligible(status: str, updated_at: float, cutoffs: Mapping[str, float]) -> bool:
    cutoff = cutoffs.get(status)
    return cutoff is not None and updated_at < cutoff


# -- finding a run's checkpoints ------------------------------------------------------------------


async def _key_pattern(state: _State, ds: Datasource, run: RunSummary) -> str | None:
    """The run's keyPattern from its stored definition on ``ds``; None when it is gone."""
    cache_key = (ds.name, run.definition_hash)
    if cache_key not in state.patterns:
        key = definition_key(run.definition_hash)
        raw = await ds.load(key)
        pattern: str | None = None
        if raw is not None:
            try:
                rec = decode_record(
                    raw,
                    DefinitionRecord,
                    datasource=ds.name,
                    key=key,
                    envelope=state.store.envelope,
                )
                persistence = rec.document.get("persistence") or {}
                value = persistence.get("keyPattern", DEFAULT_KEY_PATTERN)
                pattern = value if isinstance(value, str) else None
            except RecordError as exc:
                log.warning("cannot read a workflow definition: %s", exc)
        state.patterns[cache_key] = pattern
    return state.patterns[cache_key]


async def _scan_prefix(state: _State, ds: Datasource, run: RunSummary) -> str:
    pattern = await _key_pattern(state, ds, run)
    if pattern is None:
        note = (
            f"run {run.request_id}: its workflow definition is missing on {ds.name!r}; "
            f"looking for checkpoints under {run.request_id + '-'!r} only"
        )
        state.warnings.append(note)
        log.warning("%s", note)
        return f"{run.request_id}-"
    sentinel = "\x00"
    try:
        compiled = compile_template(pattern, path="$.persistence.keyPattern")
        scope = KeyScope(
            request_id=run.request_id,
            started_at=run.started_at,
            workflow=run.workflow,
            version=run.version,
            definition_hash=run.definition_hash,
            step=sentinel,
            vars={},
        )
        return render_key(compiled, scope).split(sentinel, 1)[0]
    except BlokrunError:
        # A pattern that reads ctx.vars cannot be rendered without the run's vars: fall back
        # on its literal text (decoded records are checked, so a short prefix is only slower).
        return pattern.split("${", 1)[0]


def _may_be_checkpoint(key: str) -> bool:
    return not key.startswith(INTERNAL_PREFIXES)


async def _run_checkpoints(state: _State, ds: Datasource, run: RunSummary) -> tuple[list[str], int]:
    """Keys (and their stored size) of the checkpoints of ``run`` on ``ds``."""
    prefix = await _scan_prefix(state, ds, run)
    keys = [k for k in await ds.keys(prefix) if _may_be_checkpoint(k)]
    found: list[str] = []
    size = 0
    for start in range(0, len(keys), BATCH):
        chunk = keys[start : start + BATCH]
        loaded = await ds.load_batch(chunk)
        for key in chunk:
            raw = loaded.get(key)
            if raw is None or _record_kind(raw) != Kind.CHECKPOINT:
                continue
            try:
                rec = decode_record(
                    raw,
                    CheckpointRecord,
                    datasource=ds.name,
                    key=key,
                    envelope=state.store.envelope,
                )
            except RecordError as exc:
                note = f"run {run.request_id}: kept {key!r} on {ds.name!r}, unreadable: {exc}"
                state.warnings.append(note)
                log.warning("%s", note)
                continue
            if rec.request_id == run.request_id:
                found.append(key)
                size += len(raw)
    return found, size


async def _collect_run(state: _State, run: RunSummary) -> GcRun | None:
    store = state.store
    holders = [store.datasources[name] for name in run.datasources]
    hk, rk = head_key(run.request_id), run_key(run.request_id)
    plans: list[tuple[Datasource, list[str], list[str]]] = []
    total_bytes = checkpoints = keys = 0
    lk = lease_key(run.request_id)
    for ds in holders:
        if ds.supports_leases:
            lease = await ds.read_lease(lk)
            if lease is not None and lease.live(time.time()):
                log.info("run %s is being run or resumed (its lease is live); kept", run.request_id)
                return None
        loaded = await ds.load_batch([hk, rk])
        raw_head = loaded.get(hk)
        if raw_head is not None:
            head = decode_head(store, ds, hk, raw_head)
            if head is None or not _eligible(head.status, head.updated_at, state.cutoffs):
                log.info("run %s changed since it was listed; kept", run.request_id)
                return None
        found, size = await _run_checkpoints(state, ds, run)
        records = [k for k in (rk, hk) if k in loaded]  # the head goes last
        total_bytes += size + sum(len(loaded[k]) for k in records)
        checkpoints += len(found)
        keys += len(found) + len(records)
        plans.append((ds, found, records))
    for ds, found, records in plans:
        state.deleted.update((ds.name, k) for k in (*found, *records))
        if state.dry_run:
            continue
        doomed = [*found, *(k for k in records if k != hk)]
        for start in range(0, len(doomed), BATCH):
            await ds.delete_batch(doomed[start : start + BATCH])
        if hk in records:
            await ds.delete(hk)
        if ds.supports_leases:
            await ds.delete_lease(lk)  # and the run's fencing-token count with it
    return GcRun(
        request_id=run.request_id,
        workflow=run.workflow,
        status=run.status,
        updated_at=run.updated_at,
        datasources=run.datasources,
        keys=keys,
        checkpoints=checkpoints,
        bytes=total_bytes,
    )


# -- blobs --------------------------------------------------------------------------------------


def _record_kind(raw: bytes) -> int | None:
    """The kind byte of a sealed record (same offset in format v1 and v2); None if foreign."""
    if len(raw) < 6 or raw[:3] != MAGIC:
        return None
    return raw[5]


def _refs(vars_: Mapping[str, Any]) -> list[str]:
    out = []
    for value in vars_.values():
        if isinstance(value, dict) and value.get("$blokrun") == "ref" and len(value) == 2:
            ref = value.get("v")
            if isinstance(ref, dict) and isinstance(ref.get("key"), str):
                out.append(ref["key"])
    return out


async def _referenced_blobs(state: _State) -> tuple[set[str], str | None]:
    """Blob keys referenced by the remaining checkpoints, or a reason to keep every blob."""
    referenced: set[str] = set()
    envelope = state.store.envelope
    for ds in state.store.datasources.values():
        try:
            keys = [
                k
                for k in await ds.keys()
                if _may_be_checkpoint(k) and (ds.name, k) not in state.deleted
            ]
            for start in range(0, len(keys), BATCH):
                loaded = await ds.load_batch(keys[start : start + BATCH])
                for key, raw in loaded.items():
                    kind = _record_kind(raw)
                    if kind is None:
                        continue  # not a blokrun record: data the steps published or read
                    if raw[3] > FORMAT_VERSION:
                        return referenced, (
                            f"{key!r} on {ds.name!r} was written by a newer blokrun"
                        )
                    if kind != Kind.CHECKPOINT:
                        continue
                    try:
                        rec = decode_record(
                            raw, CheckpointRecord, datasource=ds.name, key=key, envelope=envelope
                        )
                    except RecordError as exc:
                        reason = f"checkpoint {key!r} on {ds.name!r} cannot be read: {exc}"
                        return referenced, reason
                    referenced.update(_refs(rec.vars))
        except DatasourceError as exc:
            return referenced, f"cannot scan {ds.name!r} for references: {exc}"
    return referenced, None


async def _delete_blobs(state: _State, doomed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Delete ``doomed`` blobs; the ones actually handled (a failing datasource is reported)."""
    done: list[tuple[str, str]] = []
    for name in dict.fromkeys(ds_name for ds_name, _ in doomed):
        mine = [key for ds_name, key in doomed if ds_name == name]
        try:
            for start in range(0, len(mine), BATCH):
                chunk = mine[start : start + BATCH]
                await state.store.datasources[name].delete_batch(chunk)
                done.extend((name, key) for key in chunk)
        except DatasourceError as exc:
            state.errors.append(f"blobs on {name!r}: {exc}")
            log.warning("could not delete blobs on %r: %s", name, exc)
    return done


# -- entry point --------------------------------------------------------------------------------


async def collect_garbage(
    store: RunStore,
    *,
    completed_older_than: float | None,
    failed_older_than: float | None,
    dry_run: bool,
    clock: Callable[[], float] = time.time,
) -> GcReport:
    """Delete old runs and unreferenced blobs from every datasource of ``store``.

    ``completed_older_than``: seconds since a completed run's head was last updated before
    it is deleted (``None``: keep completed runs); ``failed_older_than`` likewise for failed,
    cancelled and dead-lettered runs. Running and suspended runs are never deleted. With
    ``dry_run`` nothing is deleted and the report counts what would be. ``clock`` gives "now"
    (unix seconds). See the module docstring for the order of deletion and the blob rules.
    """
    store.require_started()
    _check_age("completed_older_than", completed_older_than)
    _check_age("failed_older_than", failed_older_than)
    now = clock()
    cutoffs: dict[str, float] = {}
    if completed_older_than is not None:
        cutoffs["completed"] = now - completed_older_than
    if failed_older_than is not None:
        cutoffs.update(dict.fromkeys(_FAILED_LIKE, now - failed_older_than))
    state = _State(store, cutoffs, dry_run)

    # 1. Blobs that exist now; any written later belongs to a checkpoint still being saved.
    blobs: dict[str, list[str]] = {}
    for ds in store.datasources.values():
        listed = await ds.keys(BLOB_PREFIX)
        if listed:
            blobs[ds.name] = listed

    # 2. Old runs.
    gone: list[GcRun] = []
    kept = 0
    candidates: list[RunSummary] = []
    async for run in iter_runs(store):
        if _eligible(run.status, run.updated_at, cutoffs):
            candidates.append(run)
        else:
            kept += 1
    for run in candidates:
        try:
            result = await _collect_run(state, run)
        except DatasourceError as exc:
            state.errors.append(f"run {run.request_id}: {exc}")
            log.warning("could not delete run %s: %s", run.request_id, exc)
            continue
        if result is None:
            kept += 1
        else:
            gone.append(result)

    # 3. Blobs no remaining checkpoint refers to.
    blob_count = sum(len(keys) for keys in blobs.values())
    doomed: list[tuple[str, str]] = []
    note: str | None = None
    if blob_count:
        referenced, reason = await _referenced_blobs(state)
        if reason is not None:
            note = f"kept all {blob_count} blob(s): {reason}"
            state.warnings.append(note)
            log.warning("%s", note)
        else:
            doomed = [
                (name, key) for name, keys in blobs.items() for key in keys if key not in referenced
            ]
            if not dry_run:
                doomed = await _delete_blobs(state, doomed)
    return GcReport(
        dry_run=dry_run,
        runs=tuple(gone),
        runs_kept=kept,
        keys_deleted=sum(r.keys for r in gone),
        checkpoints_deleted=sum(r.checkpoints for r in gone),
        bytes_deleted=sum(r.bytes for r in gone),
        blobs_deleted=len(doomed),
        blob_keys=tuple(doomed),
        blobs_kept=blob_count - len(doomed),
        blobs_note=note,
        errors=tuple(state.errors),
        warnings=tuple(state.warnings),
    )
