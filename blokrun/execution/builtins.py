"""Built-in nodes, used by name (``"node": "set"``) with no import.

``set``    copy every input into ``ctx.vars`` (returns nothing)
``log``    log ``message`` at ``level`` (debug, info, warning, error; default info)
``sleep``  wait ``seconds``
``echo``   return the inputs (stored as ``ctx.vars[<step name>]``)
``fail``   raise :class:`NodeFailure` with ``message`` (guards, demos, tests)
``await-input``  suspend the run until someone resumes it with input (and its token);
           ``prompt`` says what is wanted, ``schema`` what the input must look like
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from blokrun.execution.context import Context

__all__ = ["BUILTINS", "NodeFailure", "Suspend"]

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


async def await_input(ctx: Context, inputs: dict[str, Any]) -> None:
    raise Suspend(ctx.step, str(inputs.get("prompt", "")))


async def set_vars(ctx: Context, inputs: dict[str, Any]) -> None:
    ctx.vars.update(inputs)


async def log(ctx: Context, inputs: dict[str, Any]) -> None:
    level = inputs.get("level", "info")
    if level not in _LEVELS:
        raise ValueError(f"log: level must be one of {', '.join(_LEVELS)}, got {level!r}")
    ctx.logger.log(_LEVELS[level], "%s", inputs.get("message", ""))


async def sleep(ctx: Context, inputs: dict[str, Any]) -> None:
    seconds = inputs.get("seconds", 0)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise ValueError(f"sleep: seconds must be a non-negative number, got {seconds!r}")
    await anyio.sleep(seconds)


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
    "echo": (echo, None, frozenset()),
    "fail": (fail, frozenset({"message"}), frozenset()),
    "await-input": (await_input, frozenset({"prompt", "schema"}), frozenset()),
}
