"""Timer steps' wake-up times: stored before the wait starts, found again on resume.

A ``sleep`` of 3 days started on Monday wakes on Thursday, whatever happens to the process
in between: its wake-up time is a record of its own (``_blokrun.timer.<id>/<inc>/<step>``),
written under the run's lease before the wait starts and read by the resume, which waits
only what is left.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from blokrun.errors import RecordError
from blokrun.persistence.keys import timer_key
from blokrun.persistence.records import TimerRecord, decode_record, encode_record

if TYPE_CHECKING:
    from collections.abc import Sequence

    from blokrun.datasources import Datasource, Entry
    from blokrun.persistence.envelope import Envelope

__all__ = ["load_timers", "timer_entry"]

log = logging.getLogger("blokrun")


def timer_entry(record: TimerRecord, envelope: Envelope, ttl: float | None) -> Entry:
    key = timer_key(record.request_id, record.incarnation, record.step)
    return key, encode_record(record, envelope, bind=key), ttl


async def load_timers(
    targets: Sequence[Datasource],
    *,
    request_id: str,
    incarnation: int,
    started_at: float,
    steps: Sequence[str],
    envelope: Envelope,
) -> dict[str, float]:
    """The stored wake-up times of ``steps`` (step -> Unix seconds). A record that does
    not verify or belongs to another run (another start time) is skipped with a warning:
    that timer starts again."""
    keys = {timer_key(request_id, incarnation, step): step for step in steps}
    found: dict[str, float] = {}
    for ds in targets:
        loaded = await ds.load_batch(sorted(keys))
        for key, raw in loaded.items():
            try:
                rec = decode_record(
                    raw, TimerRecord, datasource=ds.name, key=key, envelope=envelope, bind=key
                )
            except RecordError as exc:
                log.warning("run %s: timer in %r skipped: %s", request_id, key, exc)
                continue
            if (rec.request_id, rec.started_at, rec.step) != (request_id, started_at, keys[key]):
                log.warning("run %s: timer in %r belongs to another run", request_id, key)
                continue
            found.setdefault(rec.step, rec.wake_at)
    return found
