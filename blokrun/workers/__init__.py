"""Scale-out: a queue of runs in Redis or PostgreSQL, and workers that take from it.

This package imports no driver library; :func:`blokrun.workers.queue.open_queue` imports
the backend for the queue datasource's type on first use.
"""

from __future__ import annotations

from blokrun.workers.queue import Claim, Job, Queue, QueueStats

__all__ = ["Claim", "Job", "Queue", "QueueStats"]
