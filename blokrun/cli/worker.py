"""``blokrun worker [--concurrency N] [--workflow-limit NAME=N]... [--grace S] [--max-runs N]``.

Takes runs from the queue (``BLOKRUN_QUEUE_DATASOURCE``, else the first Redis or PostgreSQL
datasource) and runs them, ``--concurrency`` at a time, until SIGTERM/SIGINT: it then stops
taking runs, lets running ones finish for ``--grace`` seconds, cancels the rest (their
completed steps stay checkpointed, their jobs go back to the queue for another worker) and
exits 0. ``blokrun submit`` fills the queue, ``blokrun wait`` waits for a run to end.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import EXIT_OK, with_runner
from blokrun.cli.telemetry import add_metrics_options

if TYPE_CHECKING:
    import argparse

    from blokrun.runner import Runner

__all__ = ["add_parser", "handle", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``worker`` to the ``blokrun`` subcommands (``subparsers``: ``add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "worker", help="run queued runs until SIGTERM"
    )
    p.add_argument("--concurrency", type=int, default=8, help="runs at once (default 8)")
    p.add_argument(
        "--workflow-limit",
        metavar="NAME=N",
        action="append",
        default=[],
        help="at most N runs of workflow NAME at once across all workers (repeatable; give "
        "every worker the same limits)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds running runs may take to finish after SIGTERM (default 30)",
    )
    p.add_argument("--max-runs", type=int, default=None, help="exit after this many runs ended")
    p.add_argument(
        "--schedule",
        metavar="FILE",
        action="append",
        default=[],
        help="a workflow file with a 'schedule': submit its due ticks (repeatable; give every "
        "worker the same: each tick runs once)",
    )
    add_metrics_options(p)
    p.set_defaults(handler=handle)
    return p


async def handle(args: argparse.Namespace) -> int:
    """Serve the queue as ``args`` ask until a signal (or ``--max-runs``); the exit code."""
    return await with_runner(
        lambda runner: run(args, runner),
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )


async def run(args: argparse.Namespace, runner: Runner) -> int:
    """Serve the queue on a started ``runner``; the exit code."""
    import os
    import signal

    import anyio

    from blokrun.errors import ConfigError

    if args.concurrency < 1:
        raise ConfigError(f"--concurrency {args.concurrency}: expected a whole number >= 1")
    limits = _limits(args.workflow_limit)
    stop = anyio.Event()

    async def watch() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                sys.stderr.write(f"blokrun worker: {name}: finishing running runs, then exit\n")
                stop.set()
                return

    from blokrun.workers import scheduled_workflows, serve

    scheduled = scheduled_workflows(runner, args.schedule)  # every mistake before "ready"

    await runner.queue()  # connect to the queue (and create it) before saying ready
    held = runner.queue_datasource
    where = held.settings.describe() if held is not None else "?"
    sys.stderr.write(
        f"blokrun worker: ready (pid {os.getpid()}, {args.concurrency} runs at once); "
        f"queue in datasource {where}; SIGTERM stops it\n"
    )
    sys.stderr.flush()
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        stats = await serve(
            runner,
            concurrency=args.concurrency,
            per_workflow=limits,
            stop=stop,
            grace=args.grace,
            max_runs=args.max_runs,
            schedules=scheduled,
        )
        tg.cancel_scope.cancel()
    ended = ", ".join(f"{n} {what}" for what, n in sorted(stats.outcomes.items())) or "none"
    sys.stderr.write(
        f"blokrun worker: {stats.claimed} claimed, {stats.started} started, "
        f"{stats.resumed} resumed, {stats.released} released; ended: {ended}\n"
    )
    return EXIT_OK


def _limits(values: list[str]) -> dict[str, int]:
    from blokrun.errors import ConfigError

    out: dict[str, int] = {}
    for item in values:
        name, sep, raw = item.partition("=")
        if not sep or not name or not raw.isdigit() or int(raw) < 1:
            raise ConfigError(
                f"--workflow-limit {item!r}: expected NAME=N with N a whole number >= 1"
            )
        out[name] = int(raw)
    return out
