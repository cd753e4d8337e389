"""What the executor tells hooks: one frozen event per moment of a run.

Events are values: a hook does not change the run through them. ``vars`` is the run's live
state, typed as a read-only mapping (it is not copied per event: hooks must not change it)
-- read it while the hook runs (a checkpoint encodes it then); it keeps changing after the
hook returns. ``attempt`` counts the run's attempts (1 for the
first run, +1 for every resume); ``attempts`` on :class:`StepFinished` counts the tries of
that step's retry policy within this attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping

    from blokrun.spec.loader import Step, Workflow

__all__ = [
    "Ending",
    "ItemFinished",
    "RunEnded",
    "RunStarted",
    "StepFinished",
    "TimerSet",
    "StepStarted",
    "Suspension",
]

#: How an attempt of a run ended.
Ending = Literal["completed", "failed", "cancelled", "suspended", "sleeping"]


@dataclass(frozen=True, slots=True)
class Suspension:
    """An ``await-input`` step stopped the run: which step, what it asks, and the hash of
    the resume token (the token itself goes only to the caller, never to hooks)."""

    step: str
    prompt: str
    token_hash: str


@dataclass(frozen=True, slots=True)
class RunStarted:
    """An attempt begins: the first run (``resumed`` false) or a resume. ``done`` lists
    the steps completed before it (they will not run)."""

    request_id: str
    workflow: Workflow
    attempt: int
    resumed: bool
    started_at: float
    done: tuple[str, ...]
    vars: Mapping[str, Any]
    #: the attempt's trace context: a hook that runs before the recorder (``Hook.first``)
    #: may put its propagation headers here; they are stored with the run's head
    context: dict[str, str] = field(default_factory=dict)
    #: a resume: what the attempt it continues put in its ``context``
    previous: Mapping[str, str] = field(default_factory=dict)
    #: a resume: the step and sequence number of the checkpoint it continues from
    from_step: str | None = None
    from_seq: int = 0


@dataclass(frozen=True, slots=True)
class StepStarted:
    """A step is about to evaluate its inputs and call its node."""

    request_id: str
    workflow: Workflow
    attempt: int
    step: Step


@dataclass(frozen=True, slots=True)
class StepFinished:
    """A step returned; its output is merged into ``vars``. ``last`` is true for the
    attempt's final step; ``done`` includes this step. ``skipped``: it did not run (its
    ``when`` did not hold, or its branch was not chosen); ``output`` is then None."""

    request_id: str
    workflow: Workflow
    attempt: int
    step: Step
    output: Any
    duration: float
    attempts: int
    last: bool
    done: tuple[str, ...]
    vars: Mapping[str, Any]
    skipped: bool = False


@dataclass(frozen=True, slots=True)
class ItemFinished:
    """An item of a ``map`` step returned ``output`` (the step itself is still running;
    its own :class:`StepFinished` follows when every item is done). ``of``: the fingerprint
    of the list of items (``index`` is a position in that list)."""

    request_id: str
    workflow: Workflow
    attempt: int
    step: Step
    index: int
    output: Any
    of: str


@dataclass(frozen=True, slots=True)
class TimerSet:
    """A timer step (``sleep``, ``wait-until``) will wake up at ``wake_at`` (Unix seconds);
    told once per timer, before the wait starts, so the wake-up time can be stored."""

    request_id: str
    workflow: Workflow
    attempt: int
    step: Step
    wake_at: float


@dataclass(frozen=True, slots=True)
class RunEnded:
    """An attempt ended. ``error`` is set when it failed or was cancelled; ``suspension``
    when an ``await-input`` step suspended it."""

    request_id: str
    workflow: Workflow
    attempt: int
    status: Ending
    error: BaseException | None
    done: tuple[str, ...]
    steps_run: tuple[str, ...]
    vars: Mapping[str, Any]
    suspension: Suspension | None = None
    #: "sleeping": the timer step that parked the run, and when it wakes (Unix seconds)
    sleeping: tuple[str, float] | None = None
