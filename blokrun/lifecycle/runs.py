"""Finding runs: every run's head, across datasources, filtered and paged.

Every run keeps a head record (``_blokrun.head.<id>``: status, workflow, latest step,
attempt, times, last error) on each of its checkpoint datasources. :func:`iter_runs` lists
those keys on every datasource of the runner, reads the heads in batches of 500 and, for a
run found on several datasources, keeps the head with the highest sequence number (then the
latest ``updated_at``). Unreadable heads are skipped with a warning; nothing else is read.

:func:`list_runs` filters and pages that stream, newest first, with an opaque cursor.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

import orjson

from blokrun.datasources.index import IndexQuery, IndexRow, order_key
from blokrun.errors import ArgumentError, KeyMissing, RecordError
from blokrun.persistence.indexing import head_row
from blokrun.persistence.keys import HEAD_PREFIX, head_key, lease_key
from blokrun.persistence.leases import shown_status
from blokrun.persistence.records import HeadRecord, decode_record
from blokrun.types import RunStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence

    from blokrun.datasources import Datasource
    from blokrun.persistence.store import RunStore

__all__ = [
    "HEAD_PREFIX",
    "count_runs",
    "RunPage",
    "RunSummary",
    "decode_head",
    "iter_runs",
    "list_runs",
    "run_order",
    "runs_by_id",
]

log = logging.getLogger("blokrun.lifecycle")

BATCH = 500
STATUSES: frozenset[str] = frozenset((*get_args(RunStatus), "interrupted"))
_CURSOR_VERSION = 1


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One run as its head record describes it.

    ``datasource`` holds the head that was used (the most advanced one); ``datasources``
    every checkpoint datasource that has a head for this run. ``status`` is the head's,
    except ``"interrupted"``: the head says running but the run's lease has expired or its
    holder's process is gone (a crash) -- nobody is running it; resume it.
    """

    request_id: str
    workflow: str
    version: str
    status: RunStatus | Literal["interrupted"]
    #: the last step whose checkpoint is stored
    last_done: str | None
    #: the step it stopped at: the one that failed, or the one waiting for input
    stopped_at: str | None
    attempt: int
    seq: int
    started_at: float
    updated_at: float
    error: str | None
    failed_step: str | None
    definition_hash: str
    datasource: str
    datasources: tuple[str, ...]
    #: ``{datasource: "status at #seq"}`` when the run's heads disagree between datasources
    disagreement: Mapping[str, str] = field(default_factory=dict)
    incarnation: int = 1
    #: the user's tags (``Runner.run(tags=...)``, ``blokrun run --tag``)
    tags: Mapping[str, str] = field(default_factory=dict)
    #: gc is deleting it (a collection began; one cut short is finished by the next gc)
    collecting: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``datasources`` as a list)."""
        return {
            "request_id": self.request_id,
            "workflow": self.workflow,
            "version": self.version,
            "status": self.status,
            "last_done": self.last_done,
            "stopped_at": self.stopped_at,
            "attempt": self.attempt,
            "seq": self.seq,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "error": self.error,
            "failed_step": self.failed_step,
            "definition_hash": self.definition_hash,
            "datasource": self.datasource,
            "datasources": list(self.datasources),
            "disagreement": dict(self.disagreement),
            "incarnation": self.incarnation,
            "tags": dict(self.tags),
        }


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of :func:`list_runs`; ``cursor`` fetches the next one (``None``: last page)."""

    runs: list[RunSummary]
    cursor: str | None

    def __iter__(self) -> Iterator[RunSummary]:
        """The page's runs: ``for run in await runner.runs(): ...``."""
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)


# -- scanning -----------------------------------------------------------------------------------


def decode_head(store: RunStore, ds: Datasource, key: str, raw: bytes) -> HeadRecord | None:
    """The head stored under ``key``, or ``None`` (with a warning) if it cannot be used."""
    try:
        head = decode_record(
            raw, HeadRecord, datasource=ds.name, key=key, envelope=store.envelope, bind=key
        )
    except KeyMissing:
        raise
    except RecordError as exc:
        log.warning("skipped an unreadable run head: %s", exc)
        return None
    if head_key(head.request_id) != key:
        log.warning(
            "skipped the head under %r on %r: it belongs to run %r",
            key,
            ds.name,
            head.request_id,
        )
        return None
    return head


def newer(candidate: HeadRecord, than: HeadRecord) -> bool:
    """Whether ``candidate`` is a more advanced head of its run than ``than``."""
    return (candidate.incarnation, candidate.seq, candidate.updated_at) > (
        than.incarnation,
        than.seq,
        than.updated_at,
    )


def _shown(head: HeadRecord) -> str:
    shown = f"{head.status} at #{head.seq} (incarnation {head.incarnation})"
    return shown + ", being deleted by gc" if head.collecting else shown


async def iter_runs(store: RunStore, *, batch_size: int = BATCH) -> AsyncIterator[RunSummary]:
    """Every run with a readable head on any datasource of ``store``, once each.

    Head keys are listed per datasource; the heads themselves are read ``batch_size`` runs
    at a time, so memory holds the key names and one batch of records. Order: unspecified.
    """
    store.require_started()
    where = await _head_locations(store)
    rids = list(where)
    for start in range(0, len(rids), batch_size):
        chunk = rids[start : start + batch_size]
        for summary in await _summaries(store, chunk, where):
            yield summary


async def runs_by_id(store: RunStore, request_ids: Sequence[str]) -> list[RunSummary]:
    """The runs named (those with a readable head), as :func:`iter_runs` shows them: one
    batch read of their heads per datasource, however many runs are stored. (Their
    ``datasources`` names every datasource looked at: for display, not for gc.)"""
    store.require_started()
    names = list(store.datasources)
    return await _summaries(
        store, list(dict.fromkeys(request_ids)), dict.fromkeys(request_ids, names)
    )


async def _summaries(
    store: RunStore,
    chunk: list[str],
    where: Mapping[str, list[str]],
    by_ds: dict[str, dict[str, HeadRecord | None]] | None = None,
) -> list[RunSummary]:
    best, shown = await _read_heads(store, chunk, dict(where), by_ds)
    interrupted = await _interrupted(store, best)
    out = []
    for rid in chunk:
        if rid not in best:
            continue
        head, name = best[rid]
        views = shown.get(rid, {})
        out.append(
            RunSummary(
                request_id=head.request_id,
                workflow=head.workflow,
                version=head.version,
                status="interrupted" if rid in interrupted else head.status,
                last_done=head.last_done,
                stopped_at=head.failed_step or head.waiting_step,
                attempt=head.attempt,
                seq=head.seq,
                started_at=head.started_at,
                updated_at=head.updated_at,
                error=head.error,
                failed_step=head.failed_step,
                definition_hash=head.definition_hash,
                datasource=name,
                datasources=tuple(
                    where[rid]
                    if by_ds is None
                    else (n for n in where[rid] if rid in by_ds.get(n, {}))
                ),
                disagreement=views if len(set(views.values())) > 1 else {},
                incarnation=head.incarnation,
                tags=head.tags,
                # any head of it says so (gc marks one, on its lease's datasource)
                collecting=any("being deleted by gc" in v for v in views.values()),
            )
        )
    return out


async def _head_locations(store: RunStore) -> dict[str, list[str]]:
    """Request id -> names of the datasources that hold its head."""
    where: dict[str, list[str]] = {}
    for ds in store.datasources.values():
        for key in await ds.keys(HEAD_PREFIX):
            rid = key[len(HEAD_PREFIX) :]
            if rid:
                where.setdefault(rid, []).append(ds.name)
    return where


async def _read_heads(
    store: RunStore,
    chunk: list[str],
    where: dict[str, list[str]],
    by_ds: dict[str, dict[str, HeadRecord | None]] | None = None,
) -> tuple[dict[str, tuple[HeadRecord, str]], dict[str, dict[str, str]]]:
    """The most advanced readable head of each run of ``chunk`` (and where it is), and what
    every datasource's head says (to show targets that disagree). ``by_ds``, if given,
    receives every datasource's readable heads (``{datasource: {request id: head}}``)."""
    per_ds: dict[str, list[str]] = {}
    for rid in chunk:
        for name in where[rid]:
            per_ds.setdefault(name, []).append(head_key(rid))
    best: dict[str, tuple[HeadRecord, str]] = {}
    shown: dict[str, dict[str, str]] = {}
    for name, keys in per_ds.items():
        ds = store.datasources[name]
        found = await ds.load_batch(keys)
        for key, raw in found.items():  # a key missing was deleted or expired meanwhile
            head = decode_head(store, ds, key, raw)
            if by_ds is not None:  # None: stored but unreadable
                by_ds.setdefault(name, {})[key[len(HEAD_PREFIX) :]] = head
            if head is None:
                continue
            shown.setdefault(head.request_id, {})[name] = _shown(head)
            known = best.get(head.request_id)
            if known is None or newer(head, known[0]):
                best[head.request_id] = (head, name)
    return best, shown


async def _interrupted(store: RunStore, best: dict[str, tuple[HeadRecord, str]]) -> set[str]:
    """Runs whose head says running but whose lease says nobody is: crashed."""
    out: set[str] = set()
    now = time.time()
    for rid, (head, name) in best.items():
        ds = store.datasources[name]
        if head.status != "running" or not ds.supports_leases:
            continue
        lease = await ds.read_lease(lease_key(rid))
        if shown_status(head.status, lease, now) == "interrupted":
            out.add(rid)
    return out


# -- listing --------------------------------------------------------------------------------------


def run_order(run: RunSummary) -> tuple[float, str]:
    """Sort key: newest first, ties by request id."""
    return (-run.started_at, run.request_id)


def _statuses(status: str | Iterable[str] | None) -> frozenset[str] | None:
    if status is None:
        return None
    wanted = frozenset([status] if isinstance(status, str) else status)
    unknown = sorted(wanted - STATUSES)
    if unknown:
        raise ArgumentError(
            f"unknown run status {', '.join(map(repr, unknown))}; "
            f"expected one of: {', '.join(sorted(STATUSES))}",
            argument="status",
        )
    return wanted


def since_timestamp(since: float | datetime | None) -> float | None:
    """Unix seconds for ``since`` (a naive datetime is taken as UTC)."""
    if since is None:
        return None
    if isinstance(since, datetime):
        return (since if since.tzinfo else since.replace(tzinfo=UTC)).timestamp()
    if isinstance(since, bool) or not isinstance(since, int | float):
        raise ArgumentError(
            f"since: expected unix seconds or a datetime, got {type(since).__name__}",
            argument="since",
        )
    return float(since)


def encode_cursor(run: RunSummary) -> str:
    data = orjson.dumps([_CURSOR_VERSION, run.started_at, run.request_id])
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The sort key of the last run of the previous page."""
    try:
        data = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, started_at, rid = orjson.loads(data)
        if version != _CURSOR_VERSION or not isinstance(rid, str):
            raise ValueError
        if isinstance(started_at, bool) or not isinstance(started_at, int | float):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        shown = cursor if len(cursor) <= 60 else cursor[:57] + "..."
        raise ArgumentError(
            f"invalid cursor {shown!r}: pass the cursor of a previous page unchanged",
            argument="cursor",
        ) from None
    return (-float(started_at), rid)


def _top(
    items: list[tuple[tuple[float, str], RunSummary]], n: int
) -> list[tuple[tuple[float, str], RunSummary]]:
    items.sort(key=lambda item: item[0])
    del items[n:]
    return items


async def list_runs(
    store: RunStore,
    *,
    status: str | Iterable[str] | None = None,
    workflow: str | None = None,
    since: float | datetime | None = None,
    limit: int = 100,
    cursor: str | None = None,
    tags: Mapping[str, str] | None = None,
    search: str | None = None,
) -> RunPage:
    """Runs stored on the store's datasources, newest first (by ``started_at``, ties by id).

    When every datasource keeps a run index (:mod:`blokrun.datasources.index`: the
    filesystem, Redis, PostgreSQL and memory drivers do), a page costs what the page holds:
    the index gives the candidates, their heads are read and checked (a row that disagrees
    with its head is repaired, never shown). Otherwise every head is read.

    ``search``: runs whose request id contains this text. ``tags``: runs carrying every one
    of these tags (checked on the heads). ``status``: one status or several;
    ``workflow``: a workflow name; ``since``: runs started
    at or after it (unix seconds or a datetime, naive = UTC). At most ``limit`` runs are
    returned; ``RunPage.cursor`` (opaque) gives the next page when there are more. Paging is
    stable: runs started after the first page was read sort before the cursor, so they never
    shift later pages.
    """
    statuses = _statuses(status)
    since_ts = since_timestamp(since)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ArgumentError(f"limit {limit!r}: expected a whole number >= 1", argument="limit")
    after = decode_cursor(cursor) if cursor else None
    store.require_started()
    where = _Filter(statuses, workflow, since_ts, dict(tags or {}), search or None)
    if await _indexed(store):
        return await _list_indexed(store, where, limit, after)
    keep: list[tuple[tuple[float, str], RunSummary]] = []
    pending = 0
    async for run in iter_runs(store):
        if not where.keeps(run):
            continue
        key = run_order(run)
        if after is not None and key <= after:
            continue
        keep.append((key, run))
        pending += 1
        if pending >= BATCH:  # memory: never more than limit + 1 + BATCH summaries
            keep, pending = _top(keep, limit + 1), 0
    keep = _top(keep, limit + 1)
    runs = [run for _, run in keep[:limit]]
    return RunPage(runs, encode_cursor(runs[-1]) if len(keep) > limit else None)


# -- listing through the run index ---------------------------------------------------------------


#: "interrupted" is a running head nobody drives: the index knows it as running
_INDEXED_AS = {"interrupted": "running"}


@dataclass(frozen=True, slots=True)
class _Filter:
    statuses: frozenset[str] | None
    workflow: str | None
    since: float | None
    tags: Mapping[str, str]
    search: str | None

    def keeps(self, run: RunSummary) -> bool:
        if self.statuses is not None and run.status not in self.statuses:
            return False
        if self.workflow is not None and run.workflow != self.workflow:
            return False
        if self.since is not None and run.started_at < self.since:
            return False
        if self.search and self.search not in run.request_id:
            return False
        return not any(run.tags.get(k) != v for k, v in self.tags.items())

    def query(self, after: tuple[int, str] | None, limit: int) -> IndexQuery:
        statuses = None
        if self.statuses is not None:
            statuses = tuple(
                sorted({"running" if s == "interrupted" else s for s in self.statuses})
            )
        return IndexQuery(
            statuses=statuses,
            workflow=self.workflow,
            since=self.since,
            contains=self.search,
            after=after,
            limit=limit,
        )


async def _indexed(store: RunStore) -> bool:
    """Whether every datasource of ``store`` keeps a run index, built."""
    for ds in store.datasources.values():
        if not ds.indexed or not await ds.index_built():
            return False
    return True


#: Rows asked of each index per round: enough for a page and the rows a filter on tags or
#: a stale row may drop, never more than a head batch.
_MIN_CHUNK = 25


async def _list_indexed(
    store: RunStore, where: _Filter, limit: int, after: tuple[float, str] | None
) -> RunPage:
    """:func:`list_runs` through the indexes: rows in order from every datasource, merged;
    each candidate's heads read and checked; rounds until the page is full."""
    datasources = list(store.datasources.values())
    pos = None if after is None else (round(after[0] * 1_000_000), after[1])
    chunk = min(max(limit + 1, _MIN_CHUNK), BATCH)
    out: list[RunSummary] = []
    while len(out) <= limit:
        answers = [await ds.index_query(where.query(pos, chunk)) for ds in datasources]
        # Rows up to the first full answer's last row are complete on every datasource.
        bound: tuple[int, str] | None = None
        for rows in answers:
            if len(rows) >= chunk:
                last = order_key(rows[-1].request_id, rows[-1].started_at)
                bound = last if bound is None or last < bound else bound
        seen: dict[str, tuple[int, str]] = {}
        rows_of: dict[str, dict[str, IndexRow]] = {}
        for ds, rows in zip(datasources, answers, strict=True):
            for row in rows:
                key = order_key(row.request_id, row.started_at)
                if bound is not None and key > bound:
                    continue
                seen[row.request_id] = min(key, seen.get(row.request_id, key))
                rows_of.setdefault(ds.name, {})[row.request_id] = row
        order = sorted(seen, key=seen.__getitem__)
        # Placed by their heads: a row that disagreed was repaired, and its run is shown
        # here if its head puts it in this window, or found in a later one
        found = []
        for run in await _checked(store, order, rows_of):
            key = order_key(run.request_id, run.started_at)
            if (pos is None or key > pos) and (bound is None or key <= bound):
                found.append((key, run))
        found.sort(key=lambda item: item[0])
        out += (run for _, run in found if where.keeps(run))
        if bound is None:
            break
        pos = bound
        chunk = min(chunk * 2, BATCH)
    runs = out[:limit]
    return RunPage(runs, encode_cursor(runs[-1]) if len(out) > limit else None)


async def _checked(
    store: RunStore, order: list[str], rows_of: Mapping[str, Mapping[str, IndexRow]]
) -> list[RunSummary]:
    """The runs of ``order`` that have a head, as their heads say. Rows that disagree with
    their datasource's head are repaired (compare-and-set)."""
    if not order:
        return []
    names = list(store.datasources)
    by_ds: dict[str, dict[str, HeadRecord | None]] = {}
    runs = await _summaries(store, order, dict.fromkeys(order, names), by_ds)
    for name, rows in rows_of.items():
        heads = by_ds.get(name, {})
        for rid, row in rows.items():
            if rid in heads and heads[rid] is None:
                continue  # a head there but unreadable (warned): its row stays
            head = heads.get(rid)
            actual = None if head is None else head_row(head)
            if actual is not None and actual.same(row) and not row.pending:
                continue
            if row.pending and (actual is None or not actual.same(row)):
                continue  # being written now, or a write that crashed: checked every time
            await store.datasources[name].index_fix(row, actual)
    return runs


async def count_runs(store: RunStore) -> dict[str, int]:
    """Runs per status. Through the run indexes when every datasource keeps one (with
    several datasources: the largest count any of them holds per status); ``interrupted`` is
    told from ``running`` when at most 200 runs are running. Otherwise every head is read."""
    store.require_started()
    if not await _indexed(store):
        tally: dict[str, int] = {}
        async for run in iter_runs(store):
            tally[run.status] = tally.get(run.status, 0) + 1
        return dict(sorted(tally.items()))
    counts: dict[str, int] = {}
    for ds in store.datasources.values():
        for status, n in (await ds.index_counts()).items():
            counts[status] = max(counts.get(status, 0), n)
    running = counts.get("running", 0)
    if 0 < running <= _SPLIT_RUNNING:
        page = await list_runs(store, status=("running", "interrupted"), limit=_SPLIT_RUNNING)
        counts.pop("running")
        for run in page:
            counts[run.status] = counts.get(run.status, 0) + 1
    return dict(sorted((s, n) for s, n in counts.items() if n))


_SPLIT_RUNNING = 200
