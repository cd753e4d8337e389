"""A ``map`` step: its node called once per item of a list, with a concurrency limit.

Each item that returns is reported to the hooks (``after_item``) and counts as done only
once every hook returned -- the run recorder stores the item's result there, so a resume
after a crash at item 7,000 of 10,000 runs only the items whose result was not stored.
Items are independent: one item's retries (the step's retry policy, per item) and timeout
are its own. A failure policy says how many items may fail for good (``tolerate``); one
more cancels the items still running and fails the step, after the results of those that
finished were stored. The step's output lists the results in item order::

    {"results": [r0, r1, null, r3, ...], "failed": [{"index": 2, "error": "..."}]}
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from blokrun.errors import RunError, StepFailed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

__all__ = ["MapRun", "fingerprint", "run_map"]

log = logging.getLogger("blokrun")


def fingerprint(items: Any) -> str:
    """What identifies a list of items (a stored item result is reused only for the same
    list): sha256 of its canonical JSON (a value JSON cannot hold counts by its repr)."""
    data = orjson.dumps(items, option=orjson.OPT_SORT_KEYS, default=repr)
    return hashlib.sha256(data).hexdigest()[:32]


@dataclass(slots=True)
class MapRun:
    """One map step of one attempt: what it needs and what it found."""

    request_id: str
    step: str
    items: list[Any]
    #: results of items done before this attempt (index -> result), not run again
    done: Mapping[int, Any]
    concurrency: int
    tolerate: int
    #: ``await call(index, item)``: the item's result (retries and timeout inside)
    call: Callable[[int, Any], Awaitable[Any]]
    #: ``await stored(index, result)``: tell the hooks; returns once the result is stored
    stored: Callable[[int, Any], Awaitable[None]]
    results: list[Any] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0


async def run_map(m: MapRun) -> dict[str, Any]:
    """Run every item not done; return ``{"results": [...], "failed": [...]}``."""
    m.results = [None] * len(m.items)
    for index, value in m.done.items():
        if 0 <= index < len(m.items):
            m.results[index] = value
    todo = [i for i in range(len(m.items)) if i not in m.done]
    if todo:
        await _fan_out(m, todo)
    m.failed.sort(key=lambda f: int(f["index"]))
    return {"results": m.results, "failed": m.failed}


async def _fan_out(m: MapRun, todo: list[int]) -> None:
    limiter = anyio.CapacityLimiter(m.concurrency)
    errors: list[StepFailed | RunError] = []

    async def one(index: int) -> None:
        async with limiter:
            try:
                result = await m.call(index, m.items[index])
            except StepFailed as exc:
                m.failed.append({"index": index, "error": exc.detail})
                if len(m.failed) > m.tolerate:
                    errors.append(exc)
                    tg.cancel_scope.cancel()
                return
            m.results[index] = result
            with anyio.CancelScope(shield=True):  # a finished item keeps its result
                await m.stored(index, result)
            m.ran += 1

    try:
        async with anyio.create_task_group() as tg:
            for index in todo:
                tg.start_soon(one, index, name=f"blokrun map {m.step}[{index}]")
    except BaseExceptionGroup as group:
        # a hook (the recorder) failed to store a result: the run cannot go on
        failure = next(
            (e for e in group.exceptions if isinstance(e, RunError)), group.exceptions[0]
        )
        raise failure from failure.__cause__
    if errors:
        first = min((f for f in m.failed), key=lambda f: int(f["index"]))
        raise StepFailed(
            f"{len(m.failed)} of {len(m.items)} items failed (tolerated {m.tolerate}); "
            f"item {first['index']}: {first['error']}",
            request_id=m.request_id,
            step=m.step,
        )
