"""Run state and the hook interface: the executor emits events, hooks act on them.

Persistence is one hook among others (:class:`blokrun.persistence.Checkpointer`); users add
their own (metrics, tracing, notifications) by subclassing :class:`Hook` and overriding what
they need, or by passing a plain ``async def hook(run, outcome)`` as an after-step hook.
Hooks run in order, checkpointing first; a hook that raises fails the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskGroup

    from blokrun.persistence.leases import Lease
    from blokrun.persistence.records import RunStatus
    from blokrun.spec.loader import Step, Workflow
    from blokrun.spec.model import Durability

__all__ = ["CallableHook", "Hook", "RunState", "StepOutcome"]


@dataclass(slots=True, eq=False)
class RunState:
    """One run as the executor and the hooks see it. Owned by the executor."""

    request_id: str
    workflow: Workflow
    vars: dict[str, Any]
    inputs: dict[str, Any]
    started_at: float
    attempt: int = 1
    seq: int = 0  # the highest sequence number used by this run so far (allocation)
    last_seq: int = 0  # the sequence number of the checkpoint the run stands on
    recoveries: int = 0  # resumes of this run after a failure, cancellation or crash
    last_step: str | None = None  # the step of that checkpoint
    last_key: str | None = None  # and its key
    done: list[str] = field(default_factory=list)
    status: RunStatus = "running"
    resumed: bool = False
    steps_run: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)  # per-run state of hooks
    lease: Lease | None = None  # the run's lease, when the runner holds one
    durability: Durability = "sync"  # when checkpoints are stored (PersistenceSpec)
    background: TaskGroup | None = None  # where write-behind saves run ("async")


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What a finished step produced. ``last`` is true for the run's final step;
    ``attempts`` counts the tries its retry policy took."""

    step: Step
    output: Any
    duration: float
    last: bool
    attempts: int = 1


class Hook:
    """Subclass and override any of these; every method is awaited in the run's task."""

    async def on_run_start(self, run: RunState) -> None:
        """Before the first step of a run (or of a resume)."""

    async def before_step(self, run: RunState, step: Step) -> None:
        """Before a step's inputs are evaluated."""

    async def after_step(self, run: RunState, outcome: StepOutcome) -> None:
        """After a step returned and its output was merged into ``run.vars``."""

    async def on_run_end(self, run: RunState, error: BaseException | None) -> None:
        """After the run completed (``error is None``) or failed."""


class CallableHook(Hook):
    """Adapts a plain ``async def hook(run, outcome)`` to the :class:`Hook` interface."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[RunState, StepOutcome], Awaitable[None]]) -> None:
        self._fn = fn

    async def after_step(self, run: RunState, outcome: StepOutcome) -> None:
        await self._fn(run, outcome)
