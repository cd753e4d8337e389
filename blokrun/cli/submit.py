"""``blokrun submit FILE [--input JSON | --input-file FILE] [--request-id ID] [--priority N]``.

Puts a run in the queue (``BLOKRUN_QUEUE_DATASOURCE``, else the first Redis or PostgreSQL
datasource) for a ``blokrun worker`` and prints its request id; exit 0.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import EXIT_OK, with_runner
from blokrun.cli.inputs import add_new_run_arguments, parse_tags, read_inputs

if TYPE_CHECKING:
    import argparse

    from blokrun.runner import Runner

__all__ = ["add_parser", "handle"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``submit`` to the ``blokrun`` subcommands (``subparsers``: ``add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "submit", help="queue a run for a worker; prints its request id"
    )
    add_new_run_arguments(p)
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    p.set_defaults(handler=handle)
    return p


async def handle(args: argparse.Namespace) -> int:
    """Queue the run ``args`` describe and print its request id; the exit code."""
    inputs = read_inputs(args)

    async def submit(runner: Runner) -> int:
        rid = await runner.submit(
            args.file,
            inputs,
            request_id=args.request_id,
            priority=args.priority,
            tags=parse_tags(args.tag),
        )
        sys.stdout.write(rid + "\n")
        return EXIT_OK

    return await with_runner(submit)
