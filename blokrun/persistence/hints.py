"""Where this process last left each run: which keys a look at the run reads first.

Finding a run's latest checkpoint takes two reads in a row: its head, then the records the
head points at (:mod:`blokrun.persistence.locate`), because the second read's keys are
named by the first one's content. A process that has just driven the run knows what its
head said when the attempt ended; a resume in the same process (a service retrying a
failed run, a worker) reads those records *with* the head, in one round trip. Only runs
that did not complete are noted (a completed run's hint is dropped): those are the runs
that get resumed, and the thousands that complete leave nothing behind.

A hint picks keys to read early, nothing more. What was read is judged exactly as it would
be when read afterwards: the early records are used only if the head, read in the same
batch, names the very keys they were read from (same incarnation, sequence and
definition); else they are dropped and read again where the head points. A hint that went
stale (another process moved the run on, gc deleted it, a new run took its id) costs a few
keys read for nothing, never a wrong answer. Hints live per store, in memory, and are
bounded: the oldest is forgotten first.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RecentRuns", "Spot"]

#: How many runs a store keeps a hint for.
KEPT = 1024


@dataclass(frozen=True, slots=True)
class Spot:
    """What a run's head said when this process last wrote it: the incarnation, the
    sequence number of the checkpoint it points at, and the definition it names."""

    incarnation: int
    seq: int
    definition_hash: str


class RecentRuns:
    """The :class:`Spot` of the runs this process drove last (see the module docstring)."""

    __slots__ = ("_kept", "_most")

    def __init__(self, most: int = KEPT) -> None:
        self._kept: dict[str, Spot] = {}
        self._most = most

    def note(self, request_id: str, spot: Spot) -> None:
        """Remember where ``request_id`` was left (the newest note wins)."""
        kept = self._kept
        kept.pop(request_id, None)
        if len(kept) >= self._most:
            kept.pop(next(iter(kept)))  # the oldest
        kept[request_id] = spot

    def forget(self, request_id: str) -> None:
        self._kept.pop(request_id, None)

    def get(self, request_id: str) -> Spot | None:
        return self._kept.get(request_id)

    def __len__(self) -> int:
        return len(self._kept)
