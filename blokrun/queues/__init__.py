"""The run queue: jobs (runs to start) waiting in a Redis or PostgreSQL datasource.

This package imports no driver library; :func:`blokrun.queues.queue.open_queue` imports
the backend for the queue datasource's type on first use. Workers that take from it are in
:mod:`blokrun.workers`.
"""

from __future__ import annotations

from blokrun.queues.client import QueueClient
from blokrun.queues.queue import Claim, Job, Queue, QueueStats, open_queue

__all__ = ["Claim", "Job", "Queue", "QueueClient", "QueueStats", "open_queue"]
