"""Results of a map step's items, stored as they complete and found again on resume.

Items finish concurrently; storing each alone would cost one round trip per item. The
:class:`ItemLog` of a step commits them in groups instead: an item whose result arrives
while a batch is being written waits for the next batch, which carries every result that
arrived meanwhile. ``add`` returns only once the item's batch is stored on every target,
so an item counts as done only when its result is durable. Batches are records of their
own (``_blokrun.items.<id>/<incarnation>/<step>/<attempt>.<n>``), sealed for their key;
a resume reads them back (:func:`load_items`) and verifies each belongs to the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from blokrun.errors import RecordError
from blokrun.persistence.keys import items_key, items_prefix
from blokrun.persistence.records import ItemsRecord, decode_record, encode_record

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from blokrun.datasources import Datasource, Entry
    from blokrun.persistence.envelope import Envelope

__all__ = ["ItemLog", "load_items"]

log = logging.getLogger("blokrun")

#: At most this many results in one batch record.
MAX_BATCH = 1000


@dataclass(slots=True)
class _Batch:
    items: list[tuple[int, Any]] = field(default_factory=list)
    stored: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class ItemLog:
    """The group commit of one map step's item results in one attempt."""

    def __init__(
        self,
        *,
        request_id: str,
        incarnation: int,
        started_at: float,
        step: str,
        attempt: int,
        of: str,
        ttl: float | None,
        envelope: Envelope,
        save: Callable[[list[Entry]], Awaitable[None]],
    ) -> None:
        self._record = ItemsRecord(
            request_id=request_id,
            incarnation=incarnation,
            started_at=started_at,
            step=step,
            attempt=attempt,
            n=0,
            of=of,
            items=[],
        )
        self._ttl = ttl
        self._envelope = envelope
        self._save = save
        self._queue: list[_Batch] = []  # waiting to be written; the last one still open
        self._writing = False
        self.written: list[str] = []  # keys of the batches stored so far

    async def add(self, index: int, value: Any) -> None:
        """Store ``value`` as item ``index``'s result; return once it is stored."""
        if not self._queue or len(self._queue[-1].items) >= MAX_BATCH:
            self._queue.append(_Batch())
        batch = self._queue[-1]
        batch.items.append((index, value))
        if self._writing:
            await batch.stored.wait()
        else:
            await self._write_all()
        if batch.error is not None:
            raise batch.error

    async def _write_all(self) -> None:
        """Be the writer: store batches until none is waiting."""
        self._writing = True
        try:
            while self._queue:
                await self._write(self._queue.pop(0))
        except BaseException as exc:  # the batches still waiting fail with it
            for batch in self._queue:
                batch.error = exc
                batch.stored.set()
            self._queue.clear()
            raise
        finally:
            self._writing = False

    async def _write(self, batch: _Batch) -> None:
        record = self._record
        n = len(self.written) + 1
        key = items_key(record.request_id, record.incarnation, record.step, record.attempt, n)
        sealed = encode_record(
            msgspec.structs.replace(record, n=n, items=batch.items),
            self._envelope,
            bind=key,
        )
        try:
            with anyio.CancelScope(shield=True):
                await self._save([(key, sealed, self._ttl)])
        except BaseException as exc:
            batch.error = exc
            raise
        finally:
            batch.stored.set()
        self.written.append(key)


async def load_items(
    targets: Sequence[Datasource],
    *,
    request_id: str,
    incarnation: int,
    started_at: float,
    steps: Sequence[str],
    envelope: Envelope,
) -> tuple[dict[tuple[str, str], dict[int, Any]], list[str]]:
    """The stored item results of ``steps`` ((step, list fingerprint) -> index -> result),
    merged over every target, and the keys they were read from. A batch that does not
    verify, or belongs to another run (another start time), is skipped with a warning: its
    items run again."""
    found: dict[tuple[str, str], dict[int, Any]] = {}
    keys_read: set[str] = set()
    for ds in targets:
        for step in steps:
            keys = await ds.keys(items_prefix(request_id, incarnation, step))
            if not keys:
                continue
            loaded = await ds.load_batch(keys)
            for key, raw in sorted(loaded.items()):
                keys_read.add(key)
                try:
                    rec = decode_record(
                        raw,
                        ItemsRecord,
                        datasource=ds.name,
                        key=key,
                        envelope=envelope,
                        bind=key,
                    )
                except RecordError as exc:
                    log.warning("run %s: map items in %r skipped: %s", request_id, key, exc)
                    continue
                if (rec.request_id, rec.incarnation, rec.step, rec.started_at) != (
                    request_id,
                    incarnation,
                    step,
                    started_at,
                ):
                    log.warning(
                        "run %s: map items in %r skipped: they belong to another run",
                        request_id,
                        key,
                    )
                    continue
                results = found.setdefault((step, rec.of), {})
                for index, value in rec.items:
                    results.setdefault(index, value)
    return found, sorted(keys_read)
