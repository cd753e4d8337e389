"""``blokrun worker``, ``blokrun submit FILE``, ``blokrun wait ID``: the run queue.

* ``submit`` puts a run in the queue (``BLOKRUN_QUEUE_DATASOURCE``, else the first Redis or
  PostgreSQL datasource) and prints its request id; exit 0.
* ``worker`` takes runs from the queue and runs them, ``--concurrency`` at a time, until
  SIGTERM/SIGINT: it then stops taking runs, lets running ones finish for ``--grace``
  seconds, cancels the rest (their completed steps stay checkpointed, their jobs go back to
  the queue for another worker) and exits 0.
* ``wait`` waits until a run ends and prints its final vars like ``blokrun run`` (exit 0;
  1 failed; 3 suspended), or exits 1 after ``--timeout`` seconds.
Wired into ``blokrun.cli.main`` with :func:`add_parsers` and the ``cmd_*`` functions.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from blokrun.runner import Runner

__all__ = ["add_parsers", "cmd_submit", "cmd_wait", "cmd_worker"]


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


def add_parsers(subparsers: Any) -> None:
    """Add ``submit``, ``worker`` and ``wait`` to the ``blokrun`` subcommands."""
    sub: argparse.ArgumentParser = subparsers.add_parser(
        "submit", help="queue a run for a worker; prints its request id"
    )
    sub.add_argument("file", help="the workflow JSON file")
    src = sub.add_mutually_exclusive_group()
    src.add_argument("--input", metavar="JSON", help="the run's inputs as a JSON object")
    src.add_argument("--input-file", metavar="FILE", help="a file holding the inputs (JSON object)")
    sub.add_argument("--request-id", metavar="ID", help="the run's id (default: a random one)")
    sub.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")

    wrk: argparse.ArgumentParser = subparsers.add_parser(
        "worker", help="run queued runs until SIGTERM"
    )
    wrk.add_argument("--concurrency", type=int, default=8, help="runs at once (default 8)")
    wrk.add_argument(
        "--workflow-limit",
        metavar="NAME=N",
        action="append",
        default=[],
        help="at most N runs of workflow NAME at once across all workers (repeatable; give "
        "every worker the same limits)",
    )
    wrk.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds running runs may take to finish after SIGTERM (default 30)",
    )
    wrk.add_argument("--max-runs", type=int, default=None, help="exit after this many runs ended")

    wait: argparse.ArgumentParser = subparsers.add_parser(
        "wait", help="wait until a submitted run ends; print its vars"
    )
    wait.add_argument("request_id", metavar="REQUEST_ID")
    wait.add_argument("--timeout", type=float, default=None, help="give up after S seconds")


async def cmd_submit(args: argparse.Namespace, runner: Runner, inputs: dict[str, Any]) -> int:
    rid = await runner.submit(args.file, inputs, request_id=args.request_id, priority=args.priority)
    sys.stdout.write(rid + "\n")
    return 0


async def cmd_worker(args: argparse.Namespace, runner: Runner) -> int:
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

    import os

    from blokrun.workers import serve

    await runner.queue()  # connect to the queue (and create it) before saying ready
    sys.stderr.write(
        f"blokrun worker: ready (pid {os.getpid()}, {args.concurrency} runs at once); "
        "SIGTERM stops it\n"
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
        )
        tg.cancel_scope.cancel()
    ended = ", ".join(f"{n} {what}" for what, n in sorted(stats.outcomes.items())) or "none"
    sys.stderr.write(
        f"blokrun worker: {stats.claimed} claimed, {stats.started} started, "
        f"{stats.resumed} resumed, {stats.released} released; ended: {ended}\n"
    )
    return 0


async def cmd_wait(args: argparse.Namespace, runner: Runner) -> int:
    import anyio

    from blokrun.cli.output import dump_json

    try:
        with anyio.fail_after(args.timeout):
            result = await runner.wait(args.request_id)
    except TimeoutError:
        sys.stderr.write(f"blokrun: run {args.request_id} did not end within {args.timeout:g}s\n")
        return 1
    if result.status == "suspended":
        sys.stderr.write(
            f"blokrun: run {args.request_id} is suspended at step {result.waiting_step!r}\n"
        )
        return 3
    dump_json(result.vars, sys.stdout)
    return 0
