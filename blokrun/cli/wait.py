"""``blokrun wait REQUEST_ID [--timeout S]``: wait until a (submitted) run ends.

Prints its final vars like ``blokrun run`` (exit 0); exit 1 when it failed or did not end
within ``--timeout`` seconds, 3 when it is suspended waiting for input.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from blokrun.cli.common import EXIT_FAILED, EXIT_OK, EXIT_SUSPENDED, with_runner

if TYPE_CHECKING:
    import argparse

    from blokrun.runner import Runner

__all__ = ["add_parser", "handle", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``wait`` to the ``blokrun`` subcommands (``subparsers``: ``add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "wait", help="wait until a submitted run ends; print its vars"
    )
    p.add_argument("request_id", metavar="REQUEST_ID", help="the run (its request id)")
    p.add_argument("--timeout", type=float, default=None, help="give up after S seconds")
    p.set_defaults(handler=handle)
    return p


async def handle(args: argparse.Namespace) -> int:
    """Wait for the run ``args`` name; the exit code."""
    return await with_runner(lambda runner: run(args, runner))


async def run(args: argparse.Namespace, runner: Runner) -> int:
    """Wait for the run on a started ``runner`` and print its vars; the exit code."""
    import anyio

    from blokrun.cli.output import dump_json

    try:
        with anyio.fail_after(args.timeout):
            result = await runner.wait(args.request_id)
    except TimeoutError:
        sys.stderr.write(f"blokrun: run {args.request_id} did not end within {args.timeout:g}s\n")
        return EXIT_FAILED
    if result.status == "suspended":
        sys.stderr.write(
            f"blokrun: run {args.request_id} is suspended at step {result.waiting_step!r}\n"
        )
        return EXIT_SUSPENDED
    dump_json(result.vars, sys.stdout)
    return EXIT_OK
