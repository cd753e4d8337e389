"""The run index: which runs a datasource holds, by status and start time, kept by the driver.

Listing runs by reading every head grows with the store (343 ms for 10,000 runs on the
filesystem). A driver that is an :class:`IndexStore` keeps, beside the records, one small
row per run -- its request id, status, start time and workflow -- in a structure it can read
a page of, newest first, at a cost that grows with the page: sorted sets in Redis, a table
with indexes in PostgreSQL, an SQLite file beside the files of a folder.

How rows get there: whoever writes a run's head adds an **index entry** to the same batch
(:func:`index_entry`): its key is :data:`INDEX_KEY`, which no stored key can equal (keys
never hold control characters), and its value the encoded :class:`IndexRow`. The
:class:`~blokrun.datasources.datasource.Datasource` wrapper gives it to an indexing driver
with the datasource's key prefix as its *space* (two prefixes on one server keep two
indexes), and drops it for a driver that keeps no index. A driver writes the row in the same
atomic step as the rest of the batch where its batches are atomic (a Lua script, one SQL
statement); the filesystem, whose batches are not atomic, first writes the row marked
*pending*, then the files, then clears the mark, so a crash in between leaves a row that
every query returns for checking, never a run that no query finds.

Rows are hints checked against the heads: the layer above reads the head of every row it
shows (a cost that grows with the page too) and repairs a row that disagrees
(:meth:`IndexStore.index_fix`, compare-and-set, so a repair never undoes a newer write).
An index not yet built (a store written before it existed, an SQLite file deleted) is
built from the heads the first time runs are listed (:meth:`IndexStore.index_fill`).

Order: newest first by start time in whole microseconds, ties by request id
(:func:`order_key`), the same order ``blokrun runs`` always had.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from blokrun.datasources.protocol import Entry

__all__ = [
    "INDEX_KEY",
    "IndexQuery",
    "IndexRow",
    "IndexStore",
    "decode_row",
    "encode_row",
    "index_entry",
    "is_index_key",
    "micros",
    "order_key",
    "ordered",
    "split_index",
]

#: The key of an index entry in a batch. Starts with a control character, which
#: :func:`~blokrun.datasources.datasource.validate_key` refuses in every stored key.
INDEX_KEY = "\x1eblokrun.index"
_MARK = "\x1e"


class IndexRow(msgspec.Struct, frozen=True, array_like=True):
    """One run as the index keeps it. ``pending``: written before the records it describes
    and not yet confirmed (filesystem only; set by the driver when it returns rows)."""

    request_id: str
    status: str
    started_at: float
    workflow: str
    pending: bool = False

    def same(self, other: IndexRow) -> bool:
        """Whether two rows describe the run alike (``pending`` aside)."""
        return (self.request_id, self.status, micros(self.started_at), self.workflow) == (
            other.request_id,
            other.status,
            micros(other.started_at),
            other.workflow,
        )


class IndexQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A page of rows, newest first.

    statuses
        Rows with one of these statuses (``None``: any). Pending rows are returned whatever
        their status or workflow, for the caller to check.
    workflow
        Rows of this workflow (``None``: any).
    since
        Rows started at or after it (unix seconds).
    contains
        Rows whose request id contains this text.
    after
        The :func:`order_key` of the last row of the previous page: rows strictly after it.
    limit
        At most this many rows.
    """

    statuses: tuple[str, ...] | None = None
    workflow: str | None = None
    since: float | None = None
    contains: str | None = None
    after: tuple[int, str] | None = None
    limit: int = 100


def micros(t: float) -> int:
    """Unix seconds as whole microseconds, the index's unit of time."""
    return round(t * 1_000_000)


def order_key(request_id: str, started_at: float) -> tuple[int, str]:
    """The index's sort key: newest first, then by request id."""
    return (-micros(started_at), request_id)


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(IndexRow)


def encode_row(row: IndexRow) -> bytes:
    return _ENCODER.encode(row)


def decode_row(data: bytes) -> IndexRow:
    return _DECODER.decode(data)


def index_entry(request_id: str, status: str, started_at: float, workflow: str) -> Entry:
    """The batch entry that keeps a run's row current (add it where its head is written)."""
    return (INDEX_KEY, encode_row(IndexRow(request_id, status, started_at, workflow)), None)


def split_index(entries: Sequence[Entry]) -> tuple[list[Entry], list[tuple[str, IndexRow]]]:
    """A driver's view of a batch: the entries to store, and the ``(space, row)`` pairs of
    its index entries (the wrapper set their key to :data:`INDEX_KEY`'s mark + the space)."""
    data: list[Entry] = []
    rows: list[tuple[str, IndexRow]] = []
    for entry in entries:
        key = entry[0]
        if key.startswith(_MARK):
            rows.append((key[1:], decode_row(entry[1])))
        else:
            data.append(entry)
    return data, rows


def is_index_key(key: str) -> bool:
    """Whether a key a driver got is an index entry's (see :func:`split_index`)."""
    return key.startswith(_MARK)


def space_key(space: str) -> str:
    """The key the wrapper gives an index entry of datasource prefix ``space``."""
    return _MARK + space


@runtime_checkable
class IndexStore(Protocol):
    """A driver that keeps a run index (optional). ``space`` is the datasource's prefix.

    Rules (the contract suite checks them):

    * index entries in ``save_batch``, ``save_batch_fenced`` and ``save_groups`` are written
      with the batch: not at all when a fence refuses it, all or nothing where the batch is;
      a later entry for the same run replaces its row (the last one in a batch wins);
    * :meth:`index_query` returns rows in :func:`order_key` order, filtered as
      :class:`IndexQuery` says, at a cost that grows with ``limit``, not with the store;
    * :meth:`index_fix` replaces the row of ``expected.request_id`` by ``actual`` (or
      removes it when ``actual`` is ``None``) only if the stored row is still ``expected``
      (pending flag included); returns whether it did;
    * :meth:`index_fill` adds rows for runs that have none (never replaces one), and with
      ``built`` marks the index built (every run's row is there); :meth:`index_built`
      says whether that happened;
    * :meth:`index_remove` forgets the rows of these runs;
    * :meth:`index_counts` gives rows per status.
    """

    async def index_query(self, space: str, query: IndexQuery) -> list[IndexRow]: ...

    async def index_counts(self, space: str) -> dict[str, int]: ...

    async def index_fix(self, space: str, expected: IndexRow, actual: IndexRow | None) -> bool: ...

    async def index_fill(
        self, space: str, rows: Sequence[IndexRow], *, built: bool = False
    ) -> None: ...

    async def index_built(self, space: str) -> bool: ...

    async def index_remove(
        self, space: str, request_ids: Sequence[str], *, fence: tuple[str, int] | None = None
    ) -> bool:
        """Drop the rows of ``request_ids``; with ``fence`` (a lease key and token of this
        store), only while that token is the lease's latest. Whether it removed them."""
        ...


def ordered(rows: Iterable[IndexRow], limit: int) -> list[IndexRow]:
    """``rows`` in index order, each run once, at most ``limit`` (drivers that merge the
    answers of several ranges)."""
    unique = {row.request_id: row for row in rows}
    return sorted(unique.values(), key=lambda r: order_key(r.request_id, r.started_at))[:limit]


def matches(row: IndexRow, query: IndexQuery) -> bool:
    """Whether ``row`` belongs in ``query``'s answer (drivers that filter in Python)."""
    if query.since is not None and micros(row.started_at) < micros(query.since):
        return False
    if query.contains and query.contains not in row.request_id:
        return False
    if query.after is not None and order_key(row.request_id, row.started_at) <= query.after:
        return False
    if row.pending:
        return True
    if query.statuses is not None and row.status not in query.statuses:
        return False
    return query.workflow is None or row.workflow == query.workflow


class MemoryIndex:
    """A run index in a dict, sorted on query: the reference the drivers are tested against
    (and the memory driver's). Its cost grows with the store; it is not for production."""

    __slots__ = ("built", "rows")

    def __init__(self) -> None:
        self.rows: dict[str, IndexRow] = {}
        self.built = False

    def put(self, row: IndexRow) -> None:
        self.rows[row.request_id] = row

    def query(self, query: IndexQuery) -> list[IndexRow]:
        return ordered((row for row in self.rows.values() if matches(row, query)), query.limit)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows.values():
            out[row.status] = out.get(row.status, 0) + 1
        return out

    def fix(self, expected: IndexRow, actual: IndexRow | None) -> bool:
        if self.rows.get(expected.request_id) != expected:
            return False
        if actual is None:
            del self.rows[expected.request_id]
        else:
            self.rows[expected.request_id] = actual
        return True

    def fill(self, rows: Sequence[IndexRow], built: bool) -> None:
        for row in rows:
            self.rows.setdefault(row.request_id, row)
        self.built = self.built or built

    def remove(self, request_ids: Sequence[str]) -> None:
        for rid in request_ids:
            self.rows.pop(rid, None)
