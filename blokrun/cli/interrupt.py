"""SIGINT and SIGTERM during ``run`` or ``resume``: cancel the run, keep its checkpoints.

:func:`cancellable` runs the command; a signal cancels it (the run records itself as
cancelled) and raises :class:`Interrupted`, which :mod:`blokrun.cli.main` turns into exit
128 + the signal's number with the ``blokrun resume`` command on stderr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blokrun.cli.common import EXIT_INTERRUPTED

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Interrupted", "cancellable"]


class Interrupted(Exception):
    """SIGINT or SIGTERM cancelled a run; its checkpoints are intact."""

    def __init__(self, signum: int, request_id: str) -> None:
        super().__init__(signum)
        self.signum = signum
        self.request_id = request_id


async def cancellable(request_id: str, body: Callable[[], Awaitable[int]]) -> int:
    """Run ``body``; SIGINT/SIGTERM cancel it (the run records itself as cancelled)."""
    import signal

    import anyio

    from blokrun.execution.groups import first_failure

    received: list[int] = []
    result = EXIT_INTERRUPTED
    try:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        received.append(signum)
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch)
            result = await body()
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        failure = first_failure(group)
        raise failure from failure.__cause__  # its own cause kept: BLOKRUN_TRACEBACK shows it
    if received:
        raise Interrupted(received[0], request_id)
    return result
