"""Scale-out: workers that take runs from the run queue (:mod:`blokrun.queues`) and drive
them with a :class:`~blokrun.runner.Runner`.

::

    async with Runner.from_env() as runner:
        await serve(runner, concurrency=16, stop=stop_event)
"""

from __future__ import annotations

from blokrun.workers.scheduler import Scheduler, read_schedules
from blokrun.workers.serve import scheduled_workflows, serve
from blokrun.workers.worker import Worker, WorkerStats

__all__ = [
    "Scheduler",
    "Worker",
    "WorkerStats",
    "read_schedules",
    "scheduled_workflows",
    "serve",
]
