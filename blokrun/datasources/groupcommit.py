"""Group commit: the saves of concurrent runs share one round trip.

A save that finds no flush in flight is sent at once, alone (no added latency). Saves that
arrive while a flush is in flight wait for it, then the first of them sends all of them in
one ``save_groups`` call -- one pipeline script or one statement -- and each caller gets
its own answer. A run still has its checkpoint stored before its next step starts: only
the waiting is shared. Under load the batch grows by itself to what arrived during one
round trip, so the cost per save falls as concurrency rises.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import anyio

from blokrun.errors import DatasourceError

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable, Sequence

    from blokrun.datasources.protocol import Entry, Group

__all__ = ["GroupCommit"]

#: Most groups per flush: bounds one statement's size (and one failure's reach).
MAX_GROUPS = 256


def _own_error(exc: Exception, group: Group) -> Exception:
    """A failed flush's error as one caller's own: a copy (the datasource wrapper fills in
    each caller's name and key on it) that names no key of another caller's group."""
    try:
        own = copy.copy(exc)
        own.__cause__, own.__context__ = exc.__cause__, exc.__context__
    except Exception:  # a type that cannot be copied: one of ours, naming no key
        own = DatasourceError(f"the shared save failed: {type(exc).__name__}")
        own.__cause__ = exc
    key = getattr(own, "key", None)
    if key is not None and key not in {k for k, _, _ in group[0]}:
        own.key = None  # type: ignore[attr-defined]
    return own


def _future() -> asyncio.Future[None]:
    import asyncio  # here, not at import: `blokrun validate` starts no event loop machinery

    return asyncio.get_running_loop().create_future()


class _Slot:
    """One caller's save in the queue; ``wake`` resolves when it is served or promoted.

    A bare asyncio future, not an ``anyio.Event`` (two wrappers and a waiter deque over a
    future: ~5% of a checkpointed step's client CPU at 100 runs at once, PROFILE.md); the
    drivers behind group commit are asyncio's anyway."""

    __slots__ = ("error", "group", "result", "served", "wake")

    def __init__(self, group: Group) -> None:
        self.group = group
        self.wake: asyncio.Future[None] = _future()
        self.served = False
        self.result = False
        self.error: BaseException | None = None

    def set(self) -> None:
        if not self.wake.done():  # a waiter cancelled meanwhile cancelled its future
            self.wake.set_result(None)


class GroupCommit:
    """Coalesces concurrent saves into ``flush(groups) -> list[bool]`` calls."""

    __slots__ = ("_busy", "_flush", "_one", "_queue", "flushes", "groups")

    def __init__(
        self,
        flush: Callable[[Sequence[Group]], Awaitable[list[bool]]],
        one: Callable[[Group], Awaitable[bool]] | None = None,
    ) -> None:
        self._flush = flush
        self._one = one  # a lone save: the driver's plain (cheaper) statement or script
        self._queue: list[_Slot] = []
        self._busy = False
        self.flushes = 0  # counters, for benchmarks and tests
        self.groups = 0

    async def save(self, entries: Sequence[Entry], lease_key: str | None, token: int) -> bool:
        """Store ``entries`` (fenced by ``lease_key``/``token`` when given); see the module."""
        if not self._busy and not self._queue and self._one is not None:  # alone: at once
            return await self._alone((entries, lease_key, token))
        slot = _Slot((entries, lease_key, token))
        self._queue.append(slot)
        while True:
            if not self._busy:
                await self._lead()
            else:
                try:
                    await slot.wake
                except BaseException:  # cancelled while waiting: hand the turn on
                    if not slot.served:
                        self._withdraw(slot)
                    raise
            if slot.served:
                break
            slot.wake = _future()  # promoted: sends next
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _withdraw(self, slot: _Slot) -> None:
        """A waiter left (cancelled): drop its save, and wake the next one if it was due."""
        if slot in self._queue:
            self._queue.remove(slot)
        if not self._busy and self._queue:
            self._queue[0].set()

    async def _alone(self, group: Group) -> bool:
        """A save that found no flush in flight: :meth:`_lead` for one group, without the
        slot (its answer and error are its own)."""
        assert self._one is not None and not self._queue
        self._busy = True
        try:
            with anyio.CancelScope(shield=True):  # the others that queue meanwhile wait on it
                result = await self._one(group)
        finally:
            self._busy = False
            if self._queue:
                self._queue[0].set()  # the next waiter sends what queued meanwhile
        self.flushes += 1
        self.groups += 1
        return result

    async def _lead(self) -> None:
        self._busy = True
        batch, self._queue = self._queue[:MAX_GROUPS], self._queue[MAX_GROUPS:]
        try:
            with anyio.CancelScope(shield=True):  # the others wait on this flush
                if len(batch) == 1 and self._one is not None:
                    results = [await self._one(batch[0].group)]
                else:
                    results = await self._flush([slot.group for slot in batch])
            self.flushes += 1
            self.groups += len(batch)
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
        except BaseException as exc:
            for slot in batch:
                slot.error = _own_error(exc, slot.group) if isinstance(exc, Exception) else exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self._busy = False
            for slot in batch:
                slot.served = True
                slot.set()
            if self._queue:
                self._queue[0].set()  # the next waiter sends what queued meanwhile
