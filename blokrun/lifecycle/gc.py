"""Deleting old runs, and the large values no run refers to any more.

:func:`collect_garbage` works in three passes:

1. **Blob listing.** The ``_blokrun.blob.*`` keys of every datasource are listed *first*, so
   a blob written while the collection runs is never a candidate.
2. **Runs.** Runs are found by their head records (:func:`~blokrun.lifecycle.runs.iter_runs`).
   A completed run whose head was last updated more than ``completed_older_than`` seconds
   ago, or a failed, cancelled or dead-lettered one older than ``failed_older_than``, is a
   candidate. gc then **takes the run's lease** -- a run being run or resumed holds it, so it
   is kept -- and, holding it, reads the run's heads again (a resume that finished just
   before would have changed them): only a run still eligible under the lease is deleted,
   from every datasource holding it: its checkpoints
   (``_blokrun.ckpt.<id>/``), the aliases it owns (read from its checkpoints; an alias that
   another run owns is left alone), its run records, its blob marks, then its head (last, so
   an interrupted collection leaves a run the next one still finds), and its lease; and
   whatever of the run the other datasources hold without a head (a write or a repair cut
   short there): it goes too, or a later run under the same id would find it. Running
   and suspended runs are never deleted. A checkpoint that cannot be read is skipped and
   reported, never a reason to stop.
3. **Blobs.** A blob is kept while any run has a mark for it (``_blokrun.blobref.<id>/<sha>``,
   written by a run *before* it checks whether the blob exists; see
   :mod:`blokrun.persistence.state`). An unmarked blob is read, deleted, and the marks are
   listed again: if a run marked it meanwhile, it is written back. So a run that found the
   blob present (and did not write it) marked it before looking, the second listing sees
   that mark, and the blob is restored; a run that looked after the deletion found it missing
   and wrote it itself. No interleaving leaves a checkpoint referring to a deleted blob.

Workflow definitions (``_blokrun.def.<hash>``) are shared by runs and small: never deleted.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from blokrun.errors import (
    ArgumentError,
    BlokrunError,
    DatasourceError,
    RecordError,
    RunBusy,
    RunError,
)
from blokrun.lifecycle.runs import BATCH, decode_head, iter_runs, newer
from blokrun.persistence.keys import (
    BLOB_PREFIX,
    BLOBREF_PREFIX,
    HEAD_PREFIX,
    alias_key,
    definition_key,
    head_key,
    items_prefix,
    lease_key,
    run_keys_prefix,
    runs_checkpoints_prefix,
    timers_prefix,
)
from blokrun.persistence.leases import acquire
from blokrun.persistence.records import (
    CheckpointRecord,
    DefinitionRecord,
    RunRecord,
    alias_owner,
    decode_record,
    encode_record,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from blokrun.datasources import Datasource
    from blokrun.lifecycle.runs import RunSummary
    from blokrun.persistence.leases import Lease
    from blokrun.persistence.records import HeadRecord
    from blokrun.persistence.store import RunStore

__all__ = ["BLOB_PREFIX", "GcReport", "GcRun", "collect_garbage"]

#: what gc deletes on one datasource, in order
Plan = tuple["Datasource", list[str]]

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
    keys: int  # checkpoints + aliases + run records + marks + head, over all its datasources
    checkpoints: int
    bytes: int  # stored size of those keys


@dataclass(frozen=True, slots=True)
class GcReport:
    """What :func:`collect_garbage` deleted -- or, with ``dry_run``, would delete."""

    dry_run: bool
    runs: tuple[GcRun, ...] = ()
    runs_kept: int = 0  # runs looked at and kept (too recent, running, suspended, changed)
    keys_deleted: int = 0  # run keys: checkpoints, aliases, run records, heads (not blobs)
    checkpoints_deleted: int = 0
    bytes_deleted: int = 0  # stored bytes of those keys (blob sizes are not read)
    blobs_deleted: int = 0
    blob_keys: tuple[tuple[str, str], ...] = ()  # (datasource, key) of the blobs deleted
    blobs_kept: int = 0
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
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def warn(self, note: str) -> None:
        self.warnings.append(note)
        log.warning("%s", note)


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


# -- one run --------------------------------------------------------------------------------------


async def _lease(state: _State, run: RunSummary, holders: list[Datasource]) -> Lease | None:
    """Take the run's lease where runs of its workflow take it (RunBusy if it is held)."""
    store = state.store
    key = definition_key(run.definition_hash)
    for ds in holders:
        raw = await ds.load(key)
        if raw is None:
            continue
        try:
            record = decode_record(
                raw,
                DefinitionRecord,
                datasource=ds.name,
                key=key,
                envelope=store.envelope,
                bind=key,
            )
        except RecordError:
            continue
        return await store.acquire(run.request_id, store.load_stored(record))
    # The definition is gone: the one holder that keeps leases is where its runs take it.
    # With several, gc cannot tell which one a resume would lock: it keeps the run rather
    # than hold a lease no run of it takes.
    keeping = [ds for ds in holders if ds.supports_leases]
    if not keeping or store.lease_ttl is None:
        return None
    if len(keeping) > 1:
        names = ", ".join(repr(ds.name) for ds in keeping)
        raise RunError(
            f"its stored definition is missing and several of its datasources keep leases "
            f"({names}): gc cannot tell which one its runs lock; kept (pass its workflow to "
            "'blokrun resume' once to store the definition again)",
            request_id=run.request_id,
        )
    return await acquire(keeping[0], run.request_id, store.lease_ttl)


async def _keys_of(state: _State, ds: Datasource, run: RunSummary) -> tuple[list[str], int, int]:
    """The keys of ``run`` on ``ds`` to delete (head last), how many are checkpoints, and
    their stored size."""
    rid = run.request_id
    envelope = state.store.envelope
    checkpoints = await ds.keys(runs_checkpoints_prefix(rid))
    aliases: set[str] = set()
    size = 0
    for start in range(0, len(checkpoints), BATCH):
        chunk = checkpoints[start : start + BATCH]
        loaded = await ds.load_batch(chunk)
        for key, raw in loaded.items():
            size += len(raw)
            try:
                rec = decode_record(
                    raw,
                    CheckpointRecord,
                    datasource=ds.name,
                    key=key,
                    envelope=envelope,
                    bind=key,
                )
            except RecordError as exc:  # deleted all the same; its alias found below
                state.warn(f"run {rid}: {key!r} on {ds.name!r} cannot be read ({exc})")
                continue
            if rec.alias and rec.request_id == rid:
                aliases.add(rec.alias)
    runs = await ds.keys(run_keys_prefix(rid))
    aliases |= await _rendered_aliases(state, ds, run, runs)
    owned: list[str] = []
    if aliases:
        values = await ds.load_batch(sorted(aliases))
        owner = alias_owner(rid)
        owned = [key for key, raw in values.items() if raw.startswith(owner)]
    marks = await ds.keys(f"{BLOBREF_PREFIX}{rid}/")
    items = await ds.keys(items_prefix(rid)) + await ds.keys(timers_prefix(rid))
    heads = [head_key(rid)] if await ds.exists(head_key(rid)) else []
    keys = [*checkpoints, *items, *owned, *runs, *marks, *heads]
    return keys, len(checkpoints), size


async def _rendered_aliases(
    state: _State, ds: Datasource, run: RunSummary, run_records: list[str]
) -> set[str]:
    """The aliases the run's key pattern names for each step of its workflow, where the
    pattern needs no vars: so the alias of a checkpoint that cannot be read is found too.
    (Only those this run owns are deleted: the caller checks each one's owner.)"""
    envelope = state.store.envelope
    digests: set[str] = set()
    for key, raw in (await ds.load_batch(run_records)).items():
        try:
            record = decode_record(
                raw, RunRecord, datasource=ds.name, key=key, envelope=envelope, bind=key
            )
        except RecordError:
            continue
        digests.add(record.definition_hash)
    out: set[str] = set()
    for digest in digests:
        dkey = definition_key(digest)
        found = await ds.load(dkey)
        if found is None:
            continue
        try:
            stored = decode_record(
                found, DefinitionRecord, datasource=ds.name, key=dkey, envelope=envelope, bind=dkey
            )
            wf = state.store.load_stored(stored)
        except BlokrunError:
            continue  # its nodes cannot be loaded here, say: the checkpoints named the rest
        for step in wf.steps:
            try:
                out.add(alias_key(wf, run.request_id, run.started_at, step.name, {}))
            except BlokrunError:
                continue  # the pattern uses the vars: only the checkpoint knows its alias
    return out


async def _collect_run(state: _State, run: RunSummary) -> GcRun | None:
    store = state.store
    rid = run.request_id
    holders = [store.datasources[name] for name in run.datasources]
    try:
        lease = await _lease(state, run, holders)
    except RunBusy:
        log.info("run %s is being run or resumed (its lease is held); kept", rid)
        return None
    try:
        # Under the lease: every other datasource is looked at too. One with a head of the
        # run is a holder that the listing missed; one without may still hold records of
        # it (a write or a repair cut short, a target that lost the rest): they go with it,
        # or a later run under this id would find them and take them for its own.
        others = [ds for ds in store.datasources.values() if ds not in holders]
        holders += [ds for ds in others if await ds.exists(head_key(rid))]
        if not await _still_eligible(state, rid, holders):
            log.info("run %s changed since it was listed; kept", rid)
            return None
        strays = [ds for ds in others if ds not in holders]
        plans, checkpoints, size = await _plan(state, run, [*holders, *strays])
        if not state.dry_run:
            if lease is not None:
                await _mark_collecting(state, rid, holders, lease, plans)
                # the lease's datasource last: its mark stays until the rest is gone
                marked = lease.datasource
                plans.sort(key=lambda plan: plan[0] is marked)
            await _delete(plans, rid, lease)
            if lease is not None:
                # only while gc's token is the latest: never a new run's lease
                gone = await lease.datasource.delete_lease(lease_key(rid), lease.token)
                lease.abandon()
                if not gone:
                    lease = None
                    raise _taken_over(rid)
                lease = None  # a later run's token still comes from the clock: higher
        return GcRun(
            request_id=rid,
            workflow=run.workflow,
            status=run.status,
            updated_at=run.updated_at,
            datasources=run.datasources,
            keys=sum(len(keys) for _, keys in plans),
            checkpoints=checkpoints,
            bytes=size,
        )
    finally:
        if lease is not None:
            await store.release(lease)


async def _still_eligible(state: _State, rid: str, holders: list[Datasource]) -> bool:
    """Read the heads again, now that nobody else can drive the run."""
    best: HeadRecord | None = None
    for ds in holders:
        raw = await ds.load(head_key(rid))
        head = decode_head(state.store, ds, head_key(rid), raw) if raw is not None else None
        if head is None:
            return False
        if head.collecting:
            return True  # a collection cut short: this gc finishes it
        if best is None or newer(head, best):
            best = head
    # Judged as listings and resumes judge it: by its most advanced head. A target whose
    # head fell behind (a write cut short there) does not keep a completed run for ever.
    return best is not None and _eligible(best.status, best.updated_at, state.cutoffs)


async def _mark_collecting(
    state: _State, rid: str, holders: list[Datasource], lease: Lease, plans: list[Plan]
) -> None:
    """Before gc deletes anything of the run: its head on the lease's datasource says so
    (``collecting``), written fenced by gc's token -- also where that datasource held no
    head (it lost it), with the run's most advanced head. From then on no run or resume
    takes the id (the locator refuses it whichever target it reads it on, and a resume
    planned before sees that head changed), so a collection cut short -- a crash, a pause
    past the lease -- leaves a run nobody resumes from half its records, which the next gc
    finishes (it is eligible whatever its age). Only the lease's datasource is marked: a
    mark written unfenced elsewhere could land late, over a new run of the id."""
    key = head_key(rid)
    ds = lease.datasource
    best: HeadRecord | None = None
    for holder in sorted(holders, key=lambda d: d is not ds):
        raw = await holder.load(key)
        head = decode_head(state.store, holder, key, raw) if raw is not None else None
        if head is not None and (best is None or newer(head, best)):
            best = head
    if best is None or best.collecting:
        return
    marked = msgspec.structs.replace(best, collecting=True, updated_at=time.time())
    entry = [(key, encode_record(marked, state.store.envelope, bind=key), None)]
    if not await ds.save_batch_fenced(entry, lease.key, lease.token):
        lease.lost = True
        raise _taken_over(rid)
    for where, doomed in plans:
        if where is ds:
            if key not in doomed:
                doomed.append(key)  # the mark goes last, with the rest of the run there
            return
    plans.append((ds, [key]))


async def _plan(
    state: _State, run: RunSummary, holders: list[Datasource]
) -> tuple[list[tuple[Datasource, list[str]]], int, int]:
    """What to delete where (heads last on each holder, the blob marks after them), how
    many checkpoints that is and their stored size."""
    plans: list[tuple[Datasource, list[str]]] = []
    checkpoints = size = 0
    for ds in holders:
        doomed, n, stored = await _keys_of(state, ds, run)
        plans.append((ds, doomed))
        checkpoints, size = checkpoints + n, size + stored
    blob_ds = state.store.blobs.datasource
    if blob_ds is not None and blob_ds not in holders:
        # The run's blob marks, last: a crash before them leaves marks that keep blobs
        # (safe), never a run whose blobs could be swept.
        plans.append((blob_ds, await blob_ds.keys(f"{BLOBREF_PREFIX}{run.request_id}/")))
    return plans, checkpoints, size


async def _delete(plans: list[tuple[Datasource, list[str]]], rid: str, lease: Lease | None) -> None:
    """Delete in batches, stopping if the run's lease was taken over meanwhile: gc renews
    it before each batch, and on the lease's datasource each batch is fenced by its token
    -- a gc that outlived its lease (a pause, a slow store) never deletes a run that was
    resumed meanwhile."""
    for ds, doomed in plans:
        for start in range(0, len(doomed), BATCH):
            await _delete_batch(ds, doomed[start : start + BATCH], rid, lease)
        if ds.indexed and any(key.startswith(HEAD_PREFIX) for key in doomed):
            # After the head: a crash before this leaves a row with no head, which the
            # next listing drops; never a head without its row. Fenced where the lease is:
            # a new run of this id may hold it by now, and its row stays.
            fence = None
            if lease is not None and ds is lease.datasource:
                fence = (lease.key, lease.token)
            if not await ds.index_remove([rid], fence=fence):
                raise _taken_over(rid)


async def _delete_batch(ds: Datasource, chunk: list[str], rid: str, lease: Lease | None) -> None:
    """One batch: fenced on the lease's datasource; elsewhere checked by a renewal before
    and after it."""
    if lease is None:
        await ds.delete_batch(chunk)
        return
    if lease.lost or not await lease.renew():
        raise _taken_over(rid)
    if ds is lease.datasource:
        if not await ds.delete_batch_fenced(chunk, lease.key, lease.token):
            lease.lost = True
            raise _taken_over(rid)
        return
    await ds.delete_batch(chunk)
    if not await lease.renew():
        # Lost while this unfenced batch was on its way: a run of this id may have marked
        # a blob meanwhile. A mark kept too many only keeps a blob alive.
        marks = [key for key in chunk if key.startswith(BLOBREF_PREFIX)]
        if marks:
            await ds.save_batch([(key, b"\x01", None) for key in marks])
        raise _taken_over(rid)


def _taken_over(rid: str) -> RunBusy:
    return RunBusy(
        "its lease was taken over while gc deleted it; stopped",
        request_id=rid,
        owner="",
        expires_at=0.0,
    )


# -- blobs ----------------------------------------------------------------------------------------


async def _marked(store: RunStore, ignore: frozenset[str] = frozenset()) -> set[str]:
    """The sha256 of every blob some run (not in ``ignore``) has marked, anywhere."""
    out: set[str] = set()
    for ds in store.datasources.values():
        for key in await ds.keys(BLOBREF_PREFIX):
            rid, _, sha = key[len(BLOBREF_PREFIX) :].rpartition("/")
            if rid not in ignore:
                out.add(sha)
    return out


async def _sweep(
    state: _State, listed: dict[str, list[str]], gone: frozenset[str]
) -> tuple[list[tuple[str, str]], int]:
    """Delete unmarked blobs (restoring any marked meanwhile); (deleted, kept). In a dry
    run the marks of the runs that would be deleted (``gone``) do not count."""
    store = state.store
    marked = await _marked(store, gone if state.dry_run else frozenset())
    total = sum(len(keys) for keys in listed.values())
    deleted: list[tuple[str, str]] = []
    for name, keys in listed.items():
        ds = store.datasources[name]
        doomed = [key for key in keys if key[len(BLOB_PREFIX) :] not in marked]
        for start in range(0, len(doomed), BATCH):
            chunk = doomed[start : start + BATCH]
            if state.dry_run:
                deleted.extend((name, key) for key in chunk)
                continue
            try:
                contents = await ds.load_batch(chunk)
                await ds.delete_batch(chunk)
                now_marked = await _marked(store)
                back = [
                    (key, data, None)
                    for key, data in contents.items()
                    if key[len(BLOB_PREFIX) :] in now_marked
                ]
                if back:  # a run marked it while we deleted: it may refer to it
                    await ds.save_batch(back)
                restored = {key for key, _, _ in back}
                deleted.extend((name, key) for key in chunk if key not in restored)
            except DatasourceError as exc:
                state.errors.append(f"blobs on {name!r}: {exc}")
                log.warning("could not delete blobs on %r: %s", name, exc)
                break
    return deleted, total - len(deleted)


# -- entry point ----------------------------------------------------------------------------------


async def collect_garbage(
    store: RunStore,
    *,
    completed_older_than: float | None,
    failed_older_than: float | None,
    dry_run: bool,
    clock: Callable[[], float] = time.time,
) -> GcReport:
    """Delete old runs and unmarked blobs from every datasource of ``store``.

    ``completed_older_than``: seconds since a completed run's head was last updated before
    it is deleted (``None``: keep completed runs); ``failed_older_than`` likewise for failed,
    cancelled and dead-lettered runs. Running and suspended runs are never deleted, nor a
    run whose lease someone holds. With ``dry_run`` nothing is deleted and the report counts
    what would be. ``clock`` gives "now" (unix seconds). See the module docstring.
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

    # 1. Blobs that exist now; any written later belongs to a run still being written.
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
        if run.collecting or _eligible(run.status, run.updated_at, cutoffs):
            candidates.append(run)
        else:
            kept += 1
    for run in candidates:
        try:
            result = await _collect_run(state, run)
        except BlokrunError as exc:
            state.errors.append(f"run {run.request_id}: {exc}")
            log.warning("could not delete run %s: %s", run.request_id, exc)
            continue
        if result is None:
            kept += 1
        else:
            gone.append(result)

    # 3. Blobs no run has marked.
    deleted_runs = frozenset(r.request_id for r in gone)
    doomed, blobs_kept = await _sweep(state, blobs, deleted_runs) if blobs else ([], 0)
    return GcReport(
        dry_run=dry_run,
        runs=tuple(gone),
        runs_kept=kept,
        keys_deleted=sum(r.keys for r in gone),
        checkpoints_deleted=sum(r.checkpoints for r in gone),
        bytes_deleted=sum(r.bytes for r in gone),
        blobs_deleted=len(doomed),
        blob_keys=tuple(doomed),
        blobs_kept=blobs_kept,
        errors=tuple(state.errors),
        warnings=tuple(state.warnings),
    )
