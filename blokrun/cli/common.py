"""What every command shares: the exit codes, the bad-usage error, the Runner it works on.

Exit codes: 0 done; 1 the run failed (the message says which step, why, and the exact
``blokrun resume`` command); 2 bad input, workflow or configuration (nothing ran); 3 the run
is suspended waiting for input; 75 another process holds the run; 130 interrupted (SIGINT;
SIGTERM gives 143). :mod:`blokrun.cli.main` maps exceptions to them.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from blokrun.runner import Runner

__all__ = [
    "EXIT_BUSY",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SUSPENDED",
    "EXIT_USAGE",
    "Usage",
    "make_runner",
    "with_runner",
]

from blokrun.cli.exits import (
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SUSPENDED,
    EXIT_USAGE,
)


class Usage(Exception):
    """Bad command-line input: printed, exit 2."""


def make_runner(*, progress: bool = False) -> Runner:
    """A Runner for the environment, finding workflow files from the current directory.

    ``progress``: show live progress on stderr when it is a terminal (``run``, ``resume``).
    """
    from blokrun.cli.output import Progress
    from blokrun.runner import Runner

    hooks = [Progress(sys.stderr)] if sys.stderr.isatty() and progress else []
    return Runner.from_env(hooks=hooks, search_paths=[os.getcwd()])


async def with_runner(
    body: Callable[[Runner], Awaitable[int]],
    runner: Runner | None = None,
    *,
    progress: bool = False,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> int:
    """Start ``runner`` (by default :func:`make_runner`), run ``body`` on it, stop it.

    OpenTelemetry is set up when ``OTEL_*`` variables or ``metrics_port`` ask for it
    (:func:`blokrun.cli.telemetry.enable`), and flushed when the command ends."""
    from blokrun.cli.telemetry import enable

    runner = runner or make_runner(progress=progress)
    shutdown = enable(runner, metrics_port=metrics_port, metrics_host=metrics_host)
    try:
        async with runner:
            return await body(runner)
    finally:
        shutdown()
