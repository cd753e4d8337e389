"""Built-in nodes, used by name (``"node": "set"``) with no import.

``set``    copy every input into ``ctx.vars`` (returns nothing)
``log``    log ``message`` at ``level`` (debug, info, warning, error; default info)
``sleep``  wait ``seconds`` -- durably: the wake-up time is stored, a resume waits only
           what is left (see :mod:`blokrun.execution.timers`)
``wait-until``  wait until ``until`` (ISO 8601 with a time zone, or Unix seconds), durably
``echo``   return the inputs (stored as ``ctx.vars[<step name>]``)
``fail``   raise :class:`NodeFailure` with ``message`` (guards, demos, tests)
``await-input``  suspend the run until someone resumes it with input (and its token);
           ``prompt`` says what is wanted, ``schema`` what the input must look like
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import anyio

from blokrun.spec.nodes import TIMERS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from blokrun.execution.context import Context

__all__ = ["BUILTINS", "TIMERS", "NodeFailure", "Sleeping", "Suspend", "wake_time"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class NodeFailure(Exception):
    """Raised by the ``fail`` built-in."""


class Suspend(BaseException):
    """Raised by ``await-input``: not an error, the run stops here and waits.

    A BaseException so that no ``except Exception`` (retries included) swallows it.
    """

    def __init__(self, step: str, prompt: str) -> None:
        super().__init__(step)
        self.step = step
        self.prompt = prompt


class Sleeping(BaseException):
    """A timer step parks the run until ``wake_at`` (a worker frees its slot meanwhile)."""

    def __init__(self, step: str, wake_at: float) -> None:
        super().__init__(step)
        self.step = step
        self.wake_at = wake_at


async def await_input(ctx: Context, inputs: dict[str, Any]) -> None:
    raise Suspend(ctx.step, str(inputs.get("prompt", "")))


async def set_vars(ctx: Context, inputs: dict[str, Any]) -> None:
    ctx.vars.update(inputs)


async def log(ctx: Context, inputs: dict[str, Any]) -> None:
    level = inputs.get("level", "info")
    if level not in _LEVELS:
        raise ValueError(f"log: level must be one of {', '.join(_LEVELS)}, got {level!r}")
    ctx.logger.log(_LEVELS[level], "%s", inputs.get("message", ""))


def _seconds(value: Any, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{what} must be a non-negative number, got {value!r}")
    return float(value)


def wake_time(node: str, inputs: dict[str, Any], now: float) -> float:
    """When a timer node started at ``now`` wakes up (Unix seconds): ``sleep`` waits
    ``seconds``, ``wait-until`` until ``until`` (ISO 8601 with a zone, or Unix seconds)."""
    if node == "sleep":
        return now + _seconds(inputs.get("seconds", 0), "sleep: seconds")
    until = inputs.get("until")
    if isinstance(until, str):
        try:
            moment = datetime.datetime.fromisoformat(until)
        except ValueError:
            raise ValueError(
                f"wait-until: until must be an ISO 8601 time (2027-01-31T09:00:00Z), got {until!r}"
            ) from None
        if moment.tzinfo is None:
            raise ValueError(f"wait-until: until {until!r} needs a time zone (Z or +01:00)")
        return moment.timestamp()
    return _seconds(until, "wait-until: until")


async def sleep(ctx: Context, inputs: dict[str, Any]) -> None:
    """Called only outside the executor's timers (e.g. directly): a plain wait."""
    await anyio.sleep(max(0.0, wake_time("sleep", inputs, 0.0)))


async def wait_until(ctx: Context, inputs: dict[str, Any]) -> None:
    """Called only outside the executor's timers: a plain wait."""
    await anyio.sleep(max(0.0, wake_time("wait-until", inputs, 0.0) - time.time()))


async def echo(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    return inputs


async def fail(ctx: Context, inputs: dict[str, Any]) -> None:
    raise NodeFailure(str(inputs.get("message", "failed on purpose")))


#: name -> (function, allowed input names or None for any, required input names)
BUILTINS: dict[
    str,
    tuple[
        Callable[[Context, dict[str, Any]], Awaitable[Any]], frozenset[str] | None, frozenset[str]
    ],
] = {
    "set": (set_vars, None, frozenset()),
    "log": (log, frozenset({"message", "level"}), frozenset({"message"})),
    "sleep": (sleep, frozenset({"seconds"}), frozenset({"seconds"})),
    "wait-until": (wait_until, frozenset({"until"}), frozenset({"until"})),
    "echo": (echo, None, frozenset()),
    "fail": (fail, frozenset({"message"}), frozenset()),
    "await-input": (await_input, frozenset({"prompt", "schema"}), frozenset()),
}
