"""Finding a run's latest *verified* checkpoint on every target, and choosing among them.

A run's records are written to all its targets; any target may lag (it was down), lose its
data (a server restarted empty), or hold a damaged or replaced record. :meth:`Locator.locate`
reads every target concurrently and builds a :class:`TargetView` of each:

* the **head** (``_blokrun.head.<id>``) says the incarnation and the latest sequence number;
  it is a hint: it is written after its checkpoint, so a crash between the two leaves it one
  step behind, and the records after it are probed and adopted (*rolled forward*);
* the **latest checkpoint** is the highest-numbered record of the incarnation that
  *verifies*: it opens under its own key (records are sealed for the key they are stored
  under, so a record copied from elsewhere does not open), names this run, incarnation and
  sequence, and its delta chain is whole and verifies too. A record that does not verify is
  never used: the view steps back to the previous one and says so in its warnings;
* without a head, the keys of the run's checkpoints (``_blokrun.ckpt.<id>/``) are listed --
  the keys carry incarnation and sequence, so nothing is guessed from key strings.

The **best** view is the most advanced: the newest incarnation, then the highest verified
sequence. :class:`FoundRun` keeps every view, so callers can tell where targets disagree
(:meth:`FoundRun.disagreement`) and write back what a lagging target lacks
(:meth:`Locator.repairs`). A record encrypted with a key this process lacks
(:class:`~blokrun.errors.KeyMissing`) or written by a newer blokrun stops everything: it is
never read around.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec

from blokrun.errors import (
    BlokrunError,
    FormatVersionError,
    KeyMissing,
    RecordError,
    ResumeError,
    RunBusy,
)
from blokrun.persistence.hints import RecentRuns, Spot
from blokrun.persistence.indexing import head_index_entry
from blokrun.persistence.keys import (
    checkpoint_key,
    definition_key,
    head_key,
    parse_checkpoint_key,
    run_key,
    run_keys_prefix,
    runs_checkpoints_prefix,
)
from blokrun.persistence.records import (
    LAYOUT,
    CheckpointRecord,
    DefinitionRecord,
    HeadRecord,
    RunRecord,
    decode_record,
)
from blokrun.persistence.state import rebuild_vars

if TYPE_CHECKING:
    from collections.abc import Sequence

    from blokrun.datasources import Datasource, Entry
    from blokrun.persistence.envelope import Envelope

__all__ = ["FoundRun", "Locator", "StoredCheckpoint", "TargetView", "first_keys"]

log = logging.getLogger("blokrun.resume")
T = TypeVar("T", bound=msgspec.Struct)

#: Records after the head probed in one read when rolling forward.
_PROBE = 8
#: Keys read per batch when listing.
_BATCH = 500


@dataclass(slots=True)
class TargetView:
    """What one datasource holds of a run (``error``: it could not be read)."""

    datasource: Datasource
    head: HeadRecord | None = None
    run: RunRecord | None = None
    checkpoint: CheckpointRecord | None = None  # the latest verified one, chain whole
    chain: list[CheckpointRecord] = field(default_factory=list)
    raw: dict[str, bytes] = field(default_factory=dict)  # run, head, checkpoint + chain
    warnings: list[str] = field(default_factory=list)
    error: BlokrunError | None = None
    probed: dict[str, bytes] = field(default_factory=dict, repr=False)  # verified, read
    #: the stored definition named by the head, read with the first roll-forward probe
    #: (key, bytes or None when absent), so that a resume does not read it on its own
    definition: tuple[str, bytes | None] | None = field(default=None, repr=False)

    @property
    def incarnation(self) -> int:
        if self.head is not None:
            return self.head.incarnation
        if self.checkpoint is not None:
            return self.checkpoint.incarnation
        return self.run.incarnation if self.run is not None else 0

    @property
    def seq(self) -> int:
        return self.checkpoint.seq if self.checkpoint is not None else 0

    @property
    def known(self) -> bool:
        return (self.head or self.run or self.checkpoint) is not None

    def rank(self) -> tuple[int, int, int, float]:
        """How advanced this view is: incarnation, verified sequence, the head's sequence
        (-1 without a head), the head's time."""
        if self.head is None:
            return (self.incarnation, self.seq, -1, 0.0)
        return (self.incarnation, self.seq, self.head.seq, self.head.updated_at)


@dataclass(slots=True)
class FoundRun:
    """A run as its targets hold it; ``best`` is the most advanced verified view."""

    request_id: str
    views: list[TargetView]
    best: TargetView
    warnings: list[str] = field(default_factory=list)

    @property
    def datasource(self) -> Datasource:
        return self.best.datasource

    @property
    def head(self) -> HeadRecord | None:
        return self.best.head

    @property
    def run(self) -> RunRecord | None:
        return self.best.run

    @property
    def checkpoint(self) -> CheckpointRecord | None:
        return self.best.checkpoint

    @property
    def seq(self) -> int:
        return self.best.seq

    @property
    def incarnation(self) -> int:
        return self.best.incarnation

    @property
    def definition_hash(self) -> str | None:
        for rec in (self.best.head, self.best.run, self.best.checkpoint):
            if rec is not None:
                return rec.definition_hash
        return None

    @property
    def upto(self) -> int:
        """The highest sequence number any head or verified checkpoint of the best
        incarnation names (time travel keeps the history above its own head: ``high_seq``)."""
        heads = [
            max(v.head.seq, v.head.high_seq)
            for v in self.views
            if v.head is not None and v.head.incarnation == self.incarnation
        ]
        return max([self.seq, *heads])

    def claimed_seq(self) -> int:
        """The highest sequence any head of the best incarnation says was stored."""
        return max(
            (
                v.head.seq
                for v in self.views
                if v.head is not None and v.head.incarnation == self.incarnation
            ),
            default=0,
        )

    def disagreement(self) -> dict[str, str]:
        """``{datasource: what it holds}`` when the targets do not hold the same state."""
        shown = {
            v.datasource.name: _describe(v) for v in self.views if v.known or v.error is not None
        }
        return shown if len(set(shown.values())) > 1 else {}


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A checkpoint as listed for history: its key and size, its record or why not."""

    key: str
    size: int
    record: CheckpointRecord | None
    problem: str | None = None


def _describe(view: TargetView) -> str:
    if view.error is not None:
        return f"unreadable ({view.error})"
    status = view.head.status if view.head is not None else "no head"
    return f"{status} at #{view.seq} (incarnation {view.incarnation})"


def _not_collecting(views: Sequence[TargetView], request_id: str) -> None:
    """Refuse a run gc began deleting (under its lease): what is left may lack checkpoints,
    and must never be resumed or taken for a new run. Reads (``reading``) show it."""
    for view in views:
        if view.head is not None and view.head.collecting:
            raise RunBusy(
                f"is being deleted by gc (its head on {view.datasource.name!r} says so); if "
                "no gc is running any more, 'blokrun gc' finishes the deletion",
                request_id=request_id,
                owner="gc",
                expires_at=0.0,
            )


def _usable(head: HeadRecord, ds: Datasource, request_id: str) -> None:
    """Refuse a head no run may go on from."""
    if head.layout < LAYOUT:
        raise ResumeError(
            f"its records on {ds.name!r} were written by an older blokrun (store layout "
            f"{head.layout}; this one reads layout {LAYOUT}): finish or resume it with the "
            "blokrun that started it",
            request_id=request_id,
        )


def first_keys(request_id: str) -> tuple[str, str]:
    """What every look at a run reads first: its head and its first run record."""
    return head_key(request_id), run_key(request_id, 1)


def _window(request_id: str, spot: Spot) -> list[str]:
    """The keys the first roll-forward probe reads if the head says what ``spot`` does."""
    first = max(spot.seq, 1)
    keys = [checkpoint_key(request_id, spot.incarnation, n) for n in range(first, first + _PROBE)]
    return [*keys, definition_key(spot.definition_hash)]


#: How many decoded definition records a locator keeps, and the largest it keeps.
_DEFINITION_CACHE_MAX = 32
_DEFINITION_CACHE_BYTES = 1 << 20


class Locator:
    """Reads what a run stored, through one envelope (the store's)."""

    __slots__ = ("_definitions", "envelope", "recent")

    def __init__(self, envelope: Envelope, recent: RecentRuns | None = None) -> None:
        self.envelope = envelope
        #: where this process last left runs: their latest records are read with the head
        self.recent = recent if recent is not None else RecentRuns()
        #: definition records decoded before, by (key, stored bytes): a definition's key is
        #: its hash, so every run of a workflow stores the same bytes there, and the same
        #: bytes under the same key always decode the same (the envelope is the store's)
        self._definitions: dict[tuple[str, bytes], DefinitionRecord] = {}

    # -- decoding ------------------------------------------------------------------------

    def decode(
        self, raw: bytes | None, cls: type[T], ds: Datasource, key: str, warnings: list[str]
    ) -> T | None:
        """The record under ``key``, or ``None`` (absent, or unusable: said in ``warnings``).
        A missing key or a newer format is never read around: it raises."""
        if raw is None:
            return None
        try:
            return decode_record(
                raw, cls, datasource=ds.name, key=key, envelope=self.envelope, bind=key
            )
        except (FormatVersionError, KeyMissing):
            raise
        except RecordError as exc:
            warnings.append(f"ignored a record that does not verify: {exc}")
            return None

    def checkpoint(
        self, raw: bytes | None, ds: Datasource, key: str, warnings: list[str]
    ) -> CheckpointRecord | None:
        """The checkpoint stored under ``key`` if it verifies there: it opens under its key
        and names the run, incarnation and sequence the key does."""
        rec = self.decode(raw, CheckpointRecord, ds, key, warnings)
        parsed = parse_checkpoint_key(key)
        if rec is None or parsed is None:
            return None
        if (rec.request_id, rec.incarnation, rec.seq) != parsed or rec.key != key:
            warnings.append(
                f"ignored {key!r} on {ds.name!r}: it holds checkpoint #{rec.seq} of run "
                f"{rec.request_id!r} (incarnation {rec.incarnation}), not the one its key names"
            )
            return None
        return rec

    # -- one target ----------------------------------------------------------------------

    async def view(
        self,
        ds: Datasource,
        request_id: str,
        *,
        scan: bool = True,
        first: dict[str, bytes] | None = None,
    ) -> TargetView:
        """What ``ds`` holds of run ``request_id`` (see the module docstring). ``scan=False``:
        a target with neither the run's head nor its first run record is taken not to hold
        it, without listing keys (a new request id costs one read, not a key scan).
        ``first``: the values of :func:`first_keys` on ``ds``, if already read."""
        view = TargetView(ds)
        try:
            await self._fill(view, request_id, scan, first)
        except (FormatVersionError, KeyMissing, RunBusy):
            raise
        except BlokrunError as exc:
            view.error = exc
        return view

    async def _fill(
        self, view: TargetView, request_id: str, scan: bool, known: dict[str, bytes] | None
    ) -> None:
        ds = view.datasource
        hk, first = first_keys(request_id)
        early: list[str] = []
        if known is not None:
            loaded = known
        else:
            loaded, early = await self._first_read(ds, request_id, [hk, first])
        if not scan and hk not in loaded and first not in loaded:
            return  # neither head nor run record: every write of a run begins with them
        if hk in loaded:
            view.head = self.decode(loaded[hk], HeadRecord, ds, hk, view.warnings)
            if view.head is not None:
                _usable(view.head, ds, request_id)
                view.raw[hk] = loaded[hk]
        incarnation = view.head.incarnation if view.head is not None else None
        start = view.head.seq if view.head is not None else 0
        listed: list[int] | None = None
        if incarnation is None:  # no usable head: what do the keys say?
            found = await self._listed(ds, request_id)
            if not found:
                await self._read_run(view, request_id, None)
                return
            incarnation = max(inc for inc, _ in found)
            listed = sorted(seq for inc, seq in found if inc == incarnation)
            start = listed[-1]
        await self._read_run(view, request_id, incarnation, (first, loaded.get(first)))
        latest = await self._roll_forward(view, request_id, incarnation, start, (early, loaded))
        if latest is None and start > 0:
            if view.head is not None:
                view.warnings.append(
                    f"the head of run {request_id} on {ds.name!r} points at checkpoint "
                    f"#{start}, which is missing or does not verify; using an earlier one"
                )
            if listed is None:
                listed = sorted(
                    seq for inc, seq in await self._listed(ds, request_id) if inc == incarnation
                )
            latest = await self._latest_listed(view, request_id, incarnation, listed, start)
        await self._settle(view, request_id, incarnation, latest)

    async def _read_run(
        self,
        view: TargetView,
        request_id: str,
        incarnation: int | None,
        read: tuple[str, bytes | None] | None = None,
    ) -> None:
        """The run record of ``incarnation`` (the latest listed if None); ``read``: a run
        record key already read and what it held (the first incarnation's comes with the
        head), not read again."""
        ds = view.datasource
        if incarnation is None:
            keys = [
                k
                for k in await ds.keys(run_keys_prefix(request_id))
                if k.rsplit("/", 1)[1].isdigit()
            ]
            if not keys:
                return
            key = max(keys, key=lambda k: int(k.rsplit("/", 1)[1]))
        else:
            key = run_key(request_id, incarnation)
        raw = read[1] if read is not None and read[0] == key else await ds.load(key)
        view.run = self.decode(raw, RunRecord, ds, key, view.warnings)
        if view.run is not None and raw is not None:
            if view.run.request_id != request_id:
                view.run = None
            else:
                view.raw[key] = raw

    async def _listed(self, ds: Datasource, request_id: str) -> list[tuple[int, int]]:
        """``(incarnation, seq)`` of every checkpoint key of the run on ``ds``."""
        out = []
        for key in await ds.keys(runs_checkpoints_prefix(request_id)):
            parsed = parse_checkpoint_key(key)
            if parsed is not None and parsed[0] == request_id:
                out.append(parsed[1:])
        return out

    async def _first_read(
        self, ds: Datasource, request_id: str, keys: list[str]
    ) -> tuple[dict[str, bytes], list[str]]:
        """The head and first run record, with the keys a hint names for the first probe
        (and those keys); without them if reading them failed -- a damaged record the
        head may not even point at is never read where a look without the hint would not."""
        spot = self.recent.get(request_id)
        if spot is not None:
            early = _window(request_id, spot)
            try:
                return await ds.load_batch([*keys, *early]), early
            except BlokrunError:
                pass  # read as without the hint: the probe reads them again if it must
        return await ds.load_batch(keys), []

    @staticmethod
    def _same_life(view: TargetView, rec: CheckpointRecord) -> bool:
        """Whether ``rec`` was written by the incarnation the head (or run record) describes:
        same start time. A leftover of an earlier run under the same id and incarnation
        number (its head and run record lost) is never taken for this run's."""
        known = view.head if view.head is not None else view.run
        return known is None or rec.started_at == known.started_at

    async def _roll_forward(
        self,
        view: TargetView,
        request_id: str,
        incarnation: int,
        start: int,
        early: tuple[list[str], dict[str, bytes]] = ([], {}),
    ) -> CheckpointRecord | None:
        """The newest verified record numbered ``start`` or more, probing ahead of it.
        ``early``: keys read with the head (a :class:`~blokrun.persistence.hints.Spot`'s
        window) and what the batch held: the first probe's, if it names the same keys."""
        ds = view.datasource
        latest: CheckpointRecord | None = None
        seq = max(start, 1)
        # the definition the head names rides along with the first probe (no round trip
        # of its own when the run is resumed or inspected)
        extra = [] if view.head is None else [definition_key(view.head.definition_hash)]
        while True:
            keys = [checkpoint_key(request_id, incarnation, n) for n in range(seq, seq + _PROBE)]
            if early[0] and early[0] == keys + extra:
                loaded = early[1]  # read with the head, where this head points
            else:
                loaded = await ds.load_batch(keys + extra)
            early = ([], {})
            if extra:
                view.definition = (extra[0], loaded.get(extra[0]))
                extra = []
            newest = None
            for key in keys:
                rec = self.checkpoint(loaded.get(key), ds, key, view.warnings)
                if rec is not None and self._same_life(view, rec):
                    newest = rec
                    view.probed[key] = loaded[key]
            if newest is None:
                return latest
            latest = newest
            if newest.seq < seq + _PROBE - 1:  # the window was not full: nothing after it
                return latest
            seq = newest.seq + 1

    async def _latest_listed(
        self,
        view: TargetView,
        request_id: str,
        incarnation: int,
        listed: Sequence[int],
        below: int,
    ) -> CheckpointRecord | None:
        """The newest record numbered below ``below`` that verifies."""
        ds = view.datasource
        candidates = [seq for seq in reversed(listed) if seq < below]
        for start in range(0, len(candidates), _BATCH):
            keys = [checkpoint_key(request_id, incarnation, s) for s in candidates[start:][:_BATCH]]
            loaded = await ds.load_batch(keys)
            for key in keys:
                rec = self.checkpoint(loaded.get(key), ds, key, view.warnings)
                if rec is not None and self._same_life(view, rec):
                    view.probed[key] = loaded[key]
                    return rec
        return None

    async def _settle(
        self,
        view: TargetView,
        request_id: str,
        incarnation: int,
        latest: CheckpointRecord | None,
    ) -> None:
        """Keep ``latest`` if its chain is whole; else step back until one is."""
        ds = view.datasource
        listed: list[int] | None = None
        while latest is not None:
            chain = await self._chain(view, latest)
            if not isinstance(chain, str):
                view.checkpoint, view.chain = latest, chain
                for rec in (*chain, latest):
                    if rec.key in view.probed:
                        view.raw[rec.key] = view.probed[rec.key]
                return
            view.warnings.append(
                f"checkpoint #{latest.seq} of run {request_id} on {ds.name!r} has a broken "
                f"chain: {chain!r}, a record it builds on, is missing or does not verify; "
                "using an earlier one"
            )
            if listed is None:
                listed = sorted(
                    seq for inc, seq in await self._listed(ds, request_id) if inc == incarnation
                )
            latest = await self._latest_listed(view, request_id, incarnation, listed, latest.seq)

    async def _chain(self, view: TargetView, rec: CheckpointRecord) -> list[CheckpointRecord] | str:
        """The records of ``rec``'s chain in order, or the key of the first one that is
        missing, does not verify, or belongs elsewhere."""
        if rec.snapshot:
            return []
        ds = view.datasource
        raw = await ds.load_batch(rec.chain)
        chain: list[CheckpointRecord] = []
        previous = rec.base - 1
        for i, key in enumerate(rec.chain):
            link = self.checkpoint(raw.get(key), ds, key, [])
            if (
                link is None
                or link.request_id != rec.request_id
                or link.incarnation != rec.incarnation
                or link.seq <= previous
                or link.seq >= rec.seq
                or link.base != rec.base
                or (i == 0) != link.snapshot
            ):
                return key
            previous = link.seq
            chain.append(link)
            view.probed[key] = raw[key]
        return chain

    # -- every target --------------------------------------------------------------------

    async def locate(
        self,
        request_id: str,
        datasources: Sequence[Datasource],
        *,
        scan: bool = True,
        read: tuple[Datasource, dict[str, bytes]] | None = None,
        reading: bool = False,
    ) -> FoundRun | None:
        """The run as every one of ``datasources`` holds it; ``None`` if none knows it
        (``scan``: see :meth:`view`; ``read``: a datasource's :func:`first_keys`, already
        read). A run gc is deleting raises :class:`~blokrun.errors.RunBusy`, unless
        ``reading`` (a look that writes nothing and resumes nothing: it is shown)."""
        views = await self._views(request_id, datasources, scan, read)
        if not reading:
            _not_collecting(views, request_id)
        known = [v for v in views if v.known]
        if not known:
            errors = [v.error for v in views if v.error is not None]
            if errors:
                raise errors[0]
            unusable = [w for v in views for w in v.warnings]
            if unusable:  # records exist but none can be used: say why, not "not found"
                raise ResumeError(
                    f"its records exist but cannot be used: {unusable[0]}", request_id=request_id
                )
            return None
        best = max(known, key=TargetView.rank)
        found = FoundRun(request_id, views, best)
        for view in views:
            found.warnings.extend(view.warnings)
        for warning in found.warnings:
            log.warning("%s", warning)
        return found

    async def _views(
        self,
        request_id: str,
        datasources: Sequence[Datasource],
        scan: bool,
        read: tuple[Datasource, dict[str, bytes]] | None,
    ) -> list[TargetView]:
        """Every target's view, read at once, in the order of ``datasources``."""
        views: list[TargetView] = []
        fatal: list[BaseException] = []

        async def one(ds: Datasource) -> None:
            first = read[1] if read is not None and read[0] is ds else None
            try:
                views.append(await self.view(ds, request_id, scan=scan, first=first))
            except BlokrunError as exc:  # a key missing, a newer format, an old layout
                fatal.append(exc)

        if len(datasources) == 1:
            await one(datasources[0])  # no task of its own: one target is the common case
        else:
            async with anyio.create_task_group() as tg:
                for ds in datasources:
                    tg.start_soon(one, ds)
        if fatal:
            raise fatal[0]
        order = {ds.name: i for i, ds in enumerate(datasources)}
        views.sort(key=lambda v: order[v.datasource.name])
        return views

    async def definition(self, found: FoundRun) -> tuple[DefinitionRecord, bytes] | None:
        """The run's stored definition (from any target holding it) and its bytes."""
        digest = found.definition_hash
        if digest is None:
            return None
        key = definition_key(digest)
        for view in sorted(found.views, key=lambda v: v is not found.best):
            if view.error is not None:
                continue
            if view.definition is not None and view.definition[0] == key:
                raw = view.definition[1]  # read with the chain (see _roll_forward)
            else:
                try:
                    raw = await view.datasource.load(key)
                except BlokrunError:
                    continue
            record = self._definition(raw, view.datasource, key, found.warnings)
            if record is not None and raw is not None and record.definition_hash == digest:
                return record, raw
        return None

    def _definition(
        self, raw: bytes | None, ds: Datasource, key: str, warnings: list[str]
    ) -> DefinitionRecord | None:
        """:meth:`decode` of a definition record, remembered (a resume decoded the same
        bytes of a large document each time: ~20% of its own cost, PROFILE.md)."""
        if raw is None:
            return None
        known = self._definitions.get((key, raw))
        if known is not None:
            return known
        record = self.decode(raw, DefinitionRecord, ds, key, warnings)
        if record is not None and len(raw) <= _DEFINITION_CACHE_BYTES:
            if len(self._definitions) >= _DEFINITION_CACHE_MAX:
                self._definitions.pop(next(iter(self._definitions)))  # the oldest
            self._definitions[(key, raw)] = record
        return record

    def state(self, found: FoundRun) -> tuple[CheckpointRecord | None, dict[str, Any], set[str]]:
        """The best view's latest checkpoint and the vars it stands for."""
        rec = found.checkpoint
        if rec is None:
            return None, {}, set()
        state, refs = rebuild_vars(rec, found.best.chain)
        return rec, state, refs

    # -- history -------------------------------------------------------------------------

    async def history(
        self, ds: Datasource, request_id: str, incarnation: int, upto: int | None = None
    ) -> list[StoredCheckpoint]:
        """Every checkpoint of one incarnation on ``ds``, in sequence order.

        ``upto``: the highest sequence number the run is known to have used (its heads and
        its latest verified checkpoint say; :attr:`FoundRun.upto`): the records 1..upto (and
        the few a crash may have stored after the head) are read by key, which costs what
        the run holds, not what the datasource holds. Without it the keys are listed.
        """
        if upto is not None:
            keys = [checkpoint_key(request_id, incarnation, s) for s in range(1, upto + _PROBE + 1)]
        else:
            keys = sorted(await ds.keys(runs_checkpoints_prefix(request_id, incarnation)))
        out: list[StoredCheckpoint] = []
        for start in range(0, len(keys), _BATCH):
            chunk = keys[start : start + _BATCH]
            loaded = await ds.load_batch(chunk)
            for key in chunk:
                raw = loaded.get(key)
                if raw is None:
                    continue
                problems: list[str] = []
                rec = self.checkpoint(raw, ds, key, problems)
                out.append(StoredCheckpoint(key, len(raw), rec, problems[0] if problems else None))
        return out

    async def stored(
        self, ds: Datasource, request_id: str, incarnation: int, seq: int
    ) -> StoredCheckpoint | None:
        """Checkpoint ``seq`` of one incarnation on ``ds``, or None if there is none."""
        key = checkpoint_key(request_id, incarnation, seq)
        raw = await ds.load(key)
        if raw is None:
            return None
        problems: list[str] = []
        rec = self.checkpoint(raw, ds, key, problems)
        return StoredCheckpoint(key, len(raw), rec, problems[0] if problems else None)

    async def rebuild(
        self, ds: Datasource, rec: CheckpointRecord
    ) -> tuple[dict[str, Any], set[str]] | None:
        """The vars ``rec`` stands for (its chain read from ``ds``), or None if broken."""
        view = TargetView(ds)
        chain = await self._chain(view, rec)
        if isinstance(chain, str):
            return None
        return rebuild_vars(rec, chain)

    # -- repair --------------------------------------------------------------------------

    async def repairs(
        self,
        found: FoundRun,
        definition: bytes | None,
        ttl: float | None,
        targets: Sequence[str] | None,
    ) -> list[tuple[Datasource, list[Entry]]]:
        """What each reachable target lacks of the best view: the entries to write there.

        Only the run's ``targets`` are repaired -- a datasource the run never wrote to is read
        (the run may be anywhere) but never written. With the targets unknown (no definition
        stored anywhere), only datasources that already hold part of the run are.

        The records are copied as stored: they are bound to their keys, which are the same
        on every target, so a copy verifies wherever it lands.
        """
        wanted = dict(found.best.raw)
        if definition is not None and found.definition_hash is not None:
            wanted[definition_key(found.definition_hash)] = definition
        out: list[tuple[Datasource, list[Entry]]] = []
        for view in found.views:
            if view is found.best or view.error is not None:
                continue
            if targets is not None and view.datasource.name not in targets:
                continue
            if targets is None and view.head is None and view.run is None:
                continue
            have = await view.datasource.load_batch(list(wanted))
            entries: list[Entry] = [
                (key, raw, ttl) for key, raw in wanted.items() if have.get(key) != raw
            ]
            if entries:  # the head last: it must not point at records not there yet
                entries.sort(key=lambda e: e[0] == head_key(found.request_id))
                head = found.best.head
                if head is not None and entries[-1][0] == head_key(found.request_id):
                    entries.append(head_index_entry(head))
                out.append((view.datasource, entries))
        return out
