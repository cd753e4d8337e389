"""Small types every layer shares, so none has to import a higher one for them."""

from __future__ import annotations

from typing import Literal

__all__ = ["DURABILITIES", "Durability", "RunStatus", "STATUSES"]

#: When a step's checkpoint is stored: before the next step starts (``sync``), while it
#: runs (``async``), or once when the run ends (``exit``).
Durability = Literal["sync", "async", "exit"]
DURABILITIES: tuple[Durability, ...] = ("sync", "async", "exit")

#: The status a run's head record holds.
#: "sleeping": a durable timer parked the run until its wake-up time (on workers).
RunStatus = Literal["running", "completed", "failed", "cancelled", "suspended", "sleeping", "dead"]
STATUSES: tuple[RunStatus, ...] = (
    "running",
    "completed",
    "failed",
    "cancelled",
    "suspended",
    "sleeping",
    "dead",
)
