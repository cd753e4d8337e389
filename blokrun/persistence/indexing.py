"""A run's row in the run index (:mod:`blokrun.datasources.index`), taken from its head.

Every head write carries the run's index entry where the row may have changed (see
:meth:`~blokrun.persistence.recorder.Recorder._head_entries`), so a driver that keeps an
index keeps it in the same write as the head.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from blokrun.datasources.index import IndexRow, index_entry
from blokrun.errors import KeyMissing, RecordError
from blokrun.persistence.keys import HEAD_PREFIX, head_key
from blokrun.persistence.records import HeadRecord, decode_record

if TYPE_CHECKING:
    from blokrun.datasources import Datasource, Entry
    from blokrun.persistence.envelope import Envelope

__all__ = ["build_index", "head_index_entry", "head_row"]

log = logging.getLogger("blokrun.index")


def head_row(head: HeadRecord) -> IndexRow:
    """The index row ``head`` stands for."""
    return IndexRow(head.request_id, head.status, head.started_at, head.workflow)


def head_index_entry(head: HeadRecord) -> Entry:
    """The batch entry that keeps ``head``'s run's index row current."""
    return index_entry(head.request_id, head.status, head.started_at, head.workflow)


async def build_index(ds: Datasource, envelope: Envelope, *, batch: int = 500) -> int:
    """Make ``ds``'s run index whole, if the driver keeps one and it is not built yet: a
    row for every readable head (a store written before the index existed, an index file
    deleted). Rows written meanwhile are kept (:meth:`IndexStore.index_fill` adds only
    missing ones). Returns how many heads were read (0 when there was nothing to do)."""
    if not ds.indexed or await ds.index_built():
        return 0
    keys = await ds.keys(HEAD_PREFIX)
    read = locked = 0
    for start in range(0, len(keys), batch):
        found = await ds.load_batch(keys[start : start + batch])
        rows = []
        for key, raw in found.items():
            try:
                head = decode_record(
                    raw, HeadRecord, datasource=ds.name, key=key, envelope=envelope, bind=key
                )
            except KeyMissing:
                locked += 1
                continue
            except RecordError as exc:
                log.warning("run index of %r: skipped an unreadable head: %s", ds.name, exc)
                continue
            if head_key(head.request_id) == key:
                rows.append(head_row(head))
        read += len(found)
        if rows:
            await ds.index_fill(rows)
    if locked:  # left unbuilt: listing reads the heads, and says why it cannot
        log.warning(
            "run index of %r not built: %d head(s) are sealed with a key this process lacks",
            ds.name,
            locked,
        )
        return read
    await ds.index_fill([], built=True)
    if read:
        log.info("run index of %r built from %d head(s)", ds.name, read)
    return read
