"""The hook interface: the executor emits events (:mod:`blokrun.execution.events`), hooks
act on them.

Checkpointing is one hook among others (the run recorder of
:mod:`blokrun.persistence.recorder`, first in every run's list); users add their own
(metrics, tracing, notifications) by subclassing :class:`Hook` and overriding what they
need, or by passing a plain ``async def hook(event: StepFinished)`` as an after-step hook.
Hooks run in order, in the run's task; a hook that raises fails the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from blokrun.execution.events import (
        ItemFinished,
        RunEnded,
        RunStarted,
        StepFinished,
        StepStarted,
        TimerSet,
    )

__all__ = ["CallableHook", "Hook"]


class Hook:
    """Subclass and override any of these; every method is awaited in the run's task.

    ``first``: run before the recorder (which stores each step's checkpoint in its
    ``after_step``) instead of after it, and hear of the run's end after it -- for hooks
    that wrap what the recorder does, such as tracing: its ``on_run_start`` puts the trace
    context in ``RunStarted.context`` for the run's head to keep, and its ``on_run_end``
    comes once the final status is stored."""

    first: ClassVar[bool] = False

    async def on_run_start(self, event: RunStarted) -> None:
        """Before the first step of a run (or of a resume)."""

    async def before_step(self, event: StepStarted) -> None:
        """Before a step's inputs are evaluated."""

    async def after_step(self, event: StepFinished) -> None:
        """After a step returned and its output was merged into the run's vars."""

    async def after_item(self, event: ItemFinished) -> None:
        """After an item of a map step returned (items of one step may overlap)."""

    async def on_timer(self, event: TimerSet) -> None:
        """A timer step set its wake-up time (before it waits)."""

    async def on_run_end(self, event: RunEnded) -> None:
        """After the attempt completed, failed, was cancelled or suspended."""


class CallableHook(Hook):
    """Adapts a plain ``async def hook(event: StepFinished)`` to the :class:`Hook` interface."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[StepFinished], Awaitable[None]]) -> None:
        self._fn = fn

    async def after_step(self, event: StepFinished) -> None:
        await self._fn(event)
