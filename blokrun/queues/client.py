"""Finding and opening the run queue of a set of datasources.

The queue lives in ``BLOKRUN_QUEUE_DATASOURCE`` when it is set, else in the first Redis or
PostgreSQL datasource in the order configured, else (one process only) in a memory one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blokrun.errors import ConfigError
from blokrun.queues.queue import can_hold_queue, open_queue

if TYPE_CHECKING:
    from collections.abc import Mapping

    from blokrun.datasources import Datasource
    from blokrun.queues.queue import Queue

__all__ = ["QueueClient"]


class QueueClient:
    """Opens the run queue once (set-up included) and keeps it."""

    __slots__ = ("_datasources", "_name", "_queue")

    def __init__(self, datasources: Mapping[str, Datasource], datasource: str | None) -> None:
        self._datasources = datasources
        self._name = datasource
        self._queue: Queue | None = None

    def _choose(self) -> str:
        if self._name is not None:
            return self._name
        candidates = sorted(
            (ds.type == "memory", i, ds.name)
            for i, ds in enumerate(self._datasources.values())
            if can_hold_queue(ds)
        )
        if not candidates:
            raise ConfigError(
                "no datasource can hold the run queue: configure a Redis or "
                "PostgreSQL datasource (BLOKRUN_QUEUE_DATASOURCE names which)",
                variable="BLOKRUN_QUEUE_DATASOURCE",
            )
        return candidates[0][2]

    async def queue(self) -> Queue:
        """The run queue, opened and set up on first use."""
        if self._queue is None:
            name = self._choose()
            queue = open_queue(self._datasources[name])
            await queue.setup()
            self._queue, self._name = queue, name
        return self._queue

    @property
    def datasource(self) -> Datasource | None:
        """The datasource holding the run queue, once :meth:`queue` opened it."""
        if self._queue is None or self._name is None:
            return None
        return self._datasources[self._name]
