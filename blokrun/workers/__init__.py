"""Scale-out: workers that take runs from the run queue (:mod:`blokrun.queues`) and drive
them with a :class:`~blokrun.runner.Runner`.

::

    async with Runner.from_env() as runner:
        await serve(runner, concurrency=16, stop=stop_event)
"""

from __future__ import annotations

from blokrun.workers.serve import serve
from blokrun.workers.worker import Worker, WorkerStats

__all__ = ["Worker", "WorkerStats", "serve"]
